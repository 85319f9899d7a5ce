"""`lmforge speedrun`: the verb that runs every stage end to end (see `lmforge.speedrun`), and `lmforge report`, the
verb that rebuilds a run folder's report card."""

from __future__ import annotations

import argparse
from pathlib import Path

import lmforge.speedrun
from lmforge.speedrun import run_speedrun
from lmforge.speedrun.settings import PRESETS


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "speedrun",
        help="run every stage end to end on the embedded default (stdlib docs crawled from a local pydoc server)",
        description=lmforge.speedrun.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", type=Path, default=Path("runs/speedrun"), help="run folder (resumes if it exists)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    p.add_argument("--preset", default="default", metavar="NAME",
                   help=f"sizes of every stage: {', '.join(PRESETS)} (smoke: a few minutes, what CI runs; default: "
                        "about 30 minutes on 2 cores; gpu: one H100/H200; node: 8 GPUs under torchrun)")
    p.add_argument("--plan", action="store_true",
                   help="print the per-stage plan, training tokens and expected time and cost, and run nothing")
    p.add_argument("--input", nargs="+", default=None, metavar="FILE",
                   help="train on your own documents instead of crawling the documentation site: text (.txt, .md), "
                        "WARC, JSONL or parquet files, or folders of them (FineWeb's filters; text is cut into "
                        "documents of at most 20,000 characters at paragraph breaks)")
    p.add_argument("--only", nargs="+", default=None, metavar="STAGE", help="run only these stages")
    p.add_argument("--from", dest="first", default=None, metavar="STAGE", help="start at this stage")
    p.add_argument("--until", dest="last", default=None, metavar="STAGE", help="stop after this stage")
    p.set_defaults(func=_cmd_speedrun)

    r = sub.add_parser("report", help="rebuild a speedrun folder's report card (report.md and report.html)")
    r.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a speedrun's run folder (finished or not)")
    r.set_defaults(func=_cmd_report)


def _cmd_speedrun(args: argparse.Namespace) -> int:
    if args.plan:
        from lmforge.speedrun.plan import format_plan, plan
        from lmforge.speedrun.runner import selected_stages

        selected_stages(args.threads, args.preset, args.only, args.first, args.last)  # the same checks as a run
        if args.input:
            from lmforge.speedrun.corpus import own_input_files

            own_input_files(args.input)
        print(format_plan(plan(args.preset)))
        return 0
    run_speedrun(args.out, args.threads, args.preset, args.only, args.first, args.last, args.input)
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from lmforge.speedrun.report import build_report, write_report
    from lmforge.speedrun.runner import STAGES

    names = [stage.name for stage in STAGES]
    _, missing = build_report(args.run_dir, names)
    md_path, html_path = write_report(args.run_dir, names)
    if missing:
        print(f"stages not run in {args.run_dir}: {', '.join(missing)}")
    print(f"wrote {md_path} and {html_path}")
    return 0

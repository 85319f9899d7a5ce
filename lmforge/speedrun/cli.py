"""`lmforge speedrun`: the verb that runs every stage end to end (see `lmforge.speedrun`)."""

from __future__ import annotations

import argparse
from pathlib import Path

import lmforge.speedrun
from lmforge.speedrun import run_speedrun


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "speedrun",
        help="run every stage end to end on the embedded default (stdlib docs crawled from a local pydoc server)",
        description=lmforge.speedrun.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", type=Path, default=Path("runs/speedrun"), help="run folder (resumes if it exists)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    p.add_argument("--quick", action="store_true", help="smaller data and fewer steps (used by the tests)")
    p.add_argument("--only", nargs="+", default=None, metavar="STAGE", help="run only these stages")
    p.set_defaults(func=_cmd_speedrun)


def _cmd_speedrun(args: argparse.Namespace) -> int:
    run_speedrun(args.out, args.threads, args.quick, args.only)
    return 0

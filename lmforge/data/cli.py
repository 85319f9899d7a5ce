"""`lmforge crawl` and `lmforge data`: crawl pages into WARC files; run the web data pipeline, or one part alone.

  lmforge crawl SEED_URL... | --pydoc --out DIR [--max-pages N]
  lmforge data run --input CRAWL_DIR --out DIR [--config FILE] [--workers N] [--blocklist DIR]
  lmforge data step NAME --input FILE... --out DIR [--set PARAM=VALUE ...]
  lmforge data dedup --input FILE... --out DIR
  lmforge data report DIR
  lmforge data steps

The kept documents go on to `lmforge tokenizer train` and then `lmforge tokenize` (the tokenizer stage's verbs).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

RUN_HELP = """Run the chain over many input files in parallel worker processes (one task per file): the steps before
`dedup` per file, MinHash deduplication across all files, the steps after it (PII) per file. Writes
OUT/documents/*.jsonl.gz (kept documents: text, id, url, metadata), OUT/excluded/*.jsonl.gz (dropped ones with the
step and reason), OUT/report.json and OUT/report.md. Running it again with the same --out skips the finished
files; `lmforge tokenize --input OUT/documents` turns the kept documents into token shards. Default config:
FineWeb's chain with its published thresholds."""


def _config(args):
    from lmforge.data.pipeline import PipelineConfig, builtin_config

    cfg = builtin_config(args.config) if args.config else PipelineConfig()
    if getattr(args, "format", None):
        cfg.output.format = args.format
    if getattr(args, "no_excluded", False):
        cfg.output.write_excluded = False
    if getattr(args, "blocklist", None):
        from lmforge.data.filters.configs import add_blocklists

        add_blocklists(cfg.steps, args.blocklist)
    if args.text_separator is not None:
        cfg.reader["text_separator"] = unescape(args.text_separator)
    if args.text_max_chars is not None:
        cfg.reader["text_max_chars"] = args.text_max_chars
    return cfg


def unescape(text: str) -> str:
    """`\\n\\n` typed in a shell as the two-character escapes it means (non-ASCII text is kept as it is)."""
    return text.encode("latin-1", "backslashreplace").decode("unicode_escape")


TEXT_RULE = ("Plain text (.txt, .md, or a folder of them): one file is one document, unless --text-separator splits "
             "it (e.g. '\\n\\n\\n' between chapters) or --text-max-chars cuts long documents into pieces (at a "
             "paragraph, line or word break), so a book is kept as many documents instead of dropped as too long.")


def add_text_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--text-separator", default=None, metavar="SEP",
                   help="plain text: split each file into documents at SEP (escapes such as \\n are read)")
    p.add_argument("--text-max-chars", type=int, default=None, metavar="N",
                   help="plain text: cut documents longer than N characters into pieces (default: never)")


def _run(args) -> int:
    from lmforge.data.pipeline import run_pipeline

    cfg = _config(args)
    if args.engine == "dask":
        from lmforge.data.dask_runner import run_pipeline_dask

        report = run_pipeline_dask(args.input, args.out, cfg, scheduler=args.scheduler, workers=args.workers,
                                   min_tasks=args.min_tasks)
    else:
        report = run_pipeline(args.input, args.out, cfg, workers=args.workers, min_tasks=args.min_tasks)
    _summary(report, Path(args.out))
    return 0


def _summary(report: dict, out: Path) -> None:
    kept = report["kept"]
    print(f"kept {kept['documents']} documents ({kept['bytes']} bytes) in {out / 'documents'}; "
          f"report: {out / 'report.md'}")
    for s in report["steps"]:
        drops = ", ".join(f"{k} {v}" for k, v in sorted(s["dropped"].items(), key=lambda kv: -kv[1]))
        print(f"  {s['name']:<20} {s['docs_in']:>8} in {s['docs_out']:>8} out  {drops}")
    if report.get("problems"):
        print("counts do not add up: " + "; ".join(report["problems"]))


def _parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _step(args) -> int:
    from lmforge.data.pipeline import PipelineConfig, run_pipeline
    from lmforge.utils import LmforgeError

    spec = {"step": args.name}
    for item in args.set or []:
        if "=" not in item:
            raise LmforgeError(f"--set expects PARAM=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        spec[key] = _parse_value(value)
    cfg = PipelineConfig(steps=[spec], name=f"step {args.name}")
    cfg.validate("--set")
    report = run_pipeline(args.input, args.out, cfg, workers=args.workers)
    _summary(report, Path(args.out))
    return 0


def _dedup(args) -> int:
    from lmforge.data.pipeline import PipelineConfig, run_pipeline

    spec = {"step": "dedup", "exact": not args.no_exact, "minhash": not args.no_minhash}
    report = run_pipeline(args.input, args.out, PipelineConfig(steps=[spec], name="dedup"), workers=args.workers)
    _summary(report, Path(args.out))
    return 0


def _report(args) -> int:
    from lmforge.data.report import read_report, to_markdown

    print(to_markdown(read_report(Path(args.dir) / "report.json")), end="")
    return 0


def _steps(args) -> int:
    import dataclasses

    from lmforge.data.dedup import DedupConfig
    from lmforge.data.filters import STEPS

    for name, cls in [*STEPS.items(), ("dedup", DedupConfig)]:
        doc = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        print(f"{name}: {doc}")
        if dataclasses.is_dataclass(cls):
            for f in dataclasses.fields(cls):
                default = f.default if f.default is not dataclasses.MISSING else (
                    f.default_factory() if f.default_factory is not dataclasses.MISSING else "required")
                print(f"    {f.name} = {default!r}")
    return 0


CRAWL_EPILOG = """examples:
  lmforge crawl --pydoc --out runs/crawl --max-pages 1000     # the embedded default: all ~860 stdlib doc pages
  lmforge crawl https://example.org/ --out crawl/ --max-pages 100 --delay 2
  lmforge crawl https://a.org/ https://b.org/ --out crawl/ --allow-host a.org --allow-host b.org

Running the same command again on the same --out resumes the crawl from its saved frontier (a larger
--max-pages extends a finished one). The WARC files are read by `lmforge data run --input DIR`."""


def _register_crawl(sub: argparse._SubParsersAction) -> None:
    from lmforge.data.crawl import CrawlConfig

    d = CrawlConfig()
    p = sub.add_parser("crawl", help="crawl web pages breadth-first into WARC files (resumable; --pydoc: local docs)",
                       description="Crawl websites (or the embedded pydoc site) into gzipped WARC files, resumably. Only HTML pages are archived; robots.txt and a per-host delay are "
                       "honoured; pages stay within the seeds' hosts unless --allow-host widens the scope.",
                       epilog=CRAWL_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("seeds", nargs="*", metavar="SEED_URL", help="start pages (http or https)")
    p.add_argument("--pydoc", action="store_true",
                   help="serve the standard library's pydoc pages on 127.0.0.1 and crawl them (no seeds needed)")
    p.add_argument("--out", type=Path, required=True, help="output folder for WARC files and the crawl state")
    p.add_argument("--max-pages", type=int, default=d.max_pages, help=f"HTML pages to archive (default {d.max_pages})")
    p.add_argument("--allow-host", action="append", default=None, metavar="HOST",
                   help="host (with :port if not default) in scope; repeat; default: the seeds' hosts")
    p.add_argument("--max-depth", type=int, default=None, help="links to follow from a seed (default: no limit)")
    p.add_argument("--workers", type=int, default=d.workers, help=f"concurrent fetches (default {d.workers})")
    p.add_argument("--delay", type=float, default=None,
                   help=f"seconds between requests to one host (default {d.delay}; 0 with --pydoc)")
    p.add_argument("--timeout", type=float, default=d.timeout, help=f"seconds per connect/read (default {d.timeout})")
    p.add_argument("--max-page-mb", type=float, default=d.max_page_bytes / 2**20,
                   help="skip pages larger than this (MiB)")
    p.add_argument("--max-redirects", type=int, default=d.max_redirects, help="longest redirect chain followed")
    p.add_argument("--ignore-robots", action="store_true", help="do not read robots.txt (only for your own sites)")
    p.add_argument("--user-agent", default=d.user_agent, help="User-Agent header sent")
    p.add_argument("--warc-max-mb", type=float, default=d.warc_max_bytes / 2**20, help="rotate WARC files at this size")
    p.add_argument("--checkpoint-pages", type=int, default=d.checkpoint_pages,
                   help="close the WARC file and save the frontier every N pages (what a crash can lose)")
    p.add_argument("--checkpoint-seconds", type=float, default=d.checkpoint_seconds,
                   help=f"... or every S seconds, whichever comes first (default {d.checkpoint_seconds:.0f})")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_crawl)


def _crawl(args: argparse.Namespace) -> int:
    from lmforge.data.crawl import CrawlConfig, crawl, crawl_pydoc
    from lmforge.data.writers import check_output_folder
    from lmforge.utils import LmforgeError

    if args.pydoc == bool(args.seeds):
        raise LmforgeError("give seed URLs or --pydoc (one of the two)")
    cfg = CrawlConfig(seeds=list(args.seeds), out=str(args.out), max_pages=args.max_pages,
                      allowed_hosts=args.allow_host, max_depth=args.max_depth, workers=args.workers,
                      delay=args.delay if args.delay is not None else (0.0 if args.pydoc else CrawlConfig.delay),
                      timeout=args.timeout, max_page_bytes=args.max_page_mb * 2**20,
                      max_redirects=args.max_redirects, respect_robots=not args.ignore_robots,
                      user_agent=args.user_agent, warc_max_bytes=args.warc_max_mb * 2**20,
                      checkpoint_pages=args.checkpoint_pages, checkpoint_seconds=args.checkpoint_seconds,
                      progress=not args.quiet)
    check_output_folder(args.out)
    result = crawl_pydoc(cfg) if args.pydoc else crawl(cfg)
    print(json.dumps({k: v for k, v in result.items() if k != "warc_files"}, indent=2))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    _register_crawl(sub)
    p = sub.add_parser("data", help="filter and deduplicate web documents (FineWeb's chain)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    verbs = p.add_subparsers(dest="data_command", metavar="SUBVERB", required=True)

    r = verbs.add_parser("run", help="the whole chain over many files in parallel, with a report", description=RUN_HELP + " " + TEXT_RULE)
    r.add_argument("--input", nargs="+", required=True,
                   help="WARC/WET, JSONL, parquet, plain-text (.txt/.md) files, folders or globs")
    r.add_argument("--out", type=Path, required=True, help="output directory (a rerun resumes it)")
    r.add_argument("--config", default=None, help="pipeline config: a JSON/TOML file, or a built-in name "
                                                   "('fineweb', the default; 'pydoc', the embedded corpus)")
    r.add_argument("--workers", type=int, default=None, help="worker processes (default: all cores)")
    r.add_argument("--min-tasks", type=int, default=8,
                   help="split the input files into at least this many tasks (a file shared by several tasks, every "
                        "k-th document each), so few large WARC files still use every worker")
    r.add_argument("--blocklist", action="append", default=None, metavar="DIR",
                   help="UT1 blocklist folder (adult/domains, malware/urls, ...) or list file for the URL filter, on "
                        "top of lmforge's short default lists; repeat for more (the report lists every list used)")
    r.add_argument("--format", choices=["jsonl", "parquet"], default=None, help="kept documents' file format")
    add_text_flags(r)
    r.add_argument("--no-excluded", action="store_true", help="do not write the dropped documents")
    r.add_argument("--engine", choices=["local", "dask"], default="local",
                   help="local process pool, or Dask (needs lmforge[dist]) for several machines")
    r.add_argument("--scheduler", default=None, help="Dask scheduler address (default: a local cluster)")
    r.set_defaults(func=_run)

    s = verbs.add_parser("step", help="run one step alone (e.g. pii on clean text)",
                         description="Run one step over documents; see `lmforge data steps` for names and parameters.")
    s.add_argument("name", help="step name, e.g. url_filter, extract, language, gopher_quality, pii")
    s.add_argument("--input", nargs="+", required=True)
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--set", nargs="*", metavar="PARAM=VALUE", help="step parameters (values parsed as JSON)")
    s.add_argument("--workers", type=int, default=None)
    s.set_defaults(func=_step)

    d = verbs.add_parser("dedup", help="exact and MinHash near-duplicate removal across all input files",
                         description="Deduplicate documents across all input files (FineWeb: 5-grams, 14x8 bands).")
    d.add_argument("--input", nargs="+", required=True)
    d.add_argument("--out", type=Path, required=True)
    d.add_argument("--no-exact", action="store_true", help="skip exact (content hash) deduplication")
    d.add_argument("--no-minhash", action="store_true", help="skip near-duplicate (MinHash) deduplication")
    d.add_argument("--workers", type=int, default=None)
    d.set_defaults(func=_dedup)

    rp = verbs.add_parser("report", help="print a finished run's report")
    rp.add_argument("dir", type=Path, help="the --out directory of a run")
    rp.set_defaults(func=_report)

    st = verbs.add_parser("steps", help="list the steps and their parameters with defaults")
    st.set_defaults(func=_steps)

"""`lmforge crawl`: crawl websites (or the embedded pydoc site) into gzipped WARC files, resumably."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

EPILOG = """examples:
  lmforge crawl --pydoc --out runs/crawl --max-pages 1000     # the embedded default: all ~860 stdlib doc pages
  lmforge crawl https://example.org/ --out crawl/ --max-pages 100 --delay 2
  lmforge crawl https://a.org/ https://b.org/ --out crawl/ --allow-host a.org --allow-host b.org

Running the same command again on the same --out resumes the crawl from its saved frontier (a larger
--max-pages extends a finished one). The WARC files are read by `lmforge data run --input DIR`."""


def register(sub: argparse._SubParsersAction) -> None:
    from lmforge.data.crawl import CrawlConfig

    d = CrawlConfig()
    p = sub.add_parser("crawl", help="crawl web pages breadth-first into WARC files (resumable; --pydoc: local docs)",
                       description=__doc__ + " Only HTML pages are archived; robots.txt and a per-host delay are "
                       "honoured; pages stay within the seeds' hosts unless --allow-host widens the scope.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
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
    p.set_defaults(func=run_crawl_cli)


def run_crawl_cli(args: argparse.Namespace) -> int:
    from lmforge.data.crawl import CrawlConfig, crawl, crawl_pydoc
    from lmforge.utils import LmforgeError

    if args.pydoc == bool(args.seeds):
        raise LmforgeError("give seed URLs or --pydoc (one of the two)")
    if args.max_pages < 1:
        raise LmforgeError("--max-pages must be at least 1")
    cfg = CrawlConfig(seeds=list(args.seeds), out=str(args.out), max_pages=args.max_pages,
                      allowed_hosts=args.allow_host, max_depth=args.max_depth, workers=max(1, args.workers),
                      delay=args.delay if args.delay is not None else (0.0 if args.pydoc else CrawlConfig.delay),
                      timeout=args.timeout, max_page_bytes=int(args.max_page_mb * 2**20),
                      max_redirects=args.max_redirects, respect_robots=not args.ignore_robots,
                      user_agent=args.user_agent, warc_max_bytes=int(args.warc_max_mb * 2**20),
                      checkpoint_pages=max(1, args.checkpoint_pages),
                      checkpoint_seconds=max(1.0, args.checkpoint_seconds), progress=not args.quiet)
    result = crawl_pydoc(cfg) if args.pydoc else crawl(cfg)
    print(json.dumps({k: v for k, v in result.items() if k != "warc_files"}, indent=2))
    return 0

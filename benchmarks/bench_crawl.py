"""Benchmark: WARC reading against warcio and FastWARC, and crawling the local pydoc site.

    .venv/bin/python benchmarks/bench_crawl.py [--quick]

1. Crawl the embedded pydoc site (pages/s, MB of HTML), and, as the ceiling the server allows, fetch the same URLs
   again with a plain sequential urllib loop (no parsing, no WARC writing).
2. Read WARC files (the shared Common Crawl and dolma samples, and the WARCs just crawled) with
   - lmforge `read_documents` (records -> decoded HTML Documents: what the pipeline consumes),
   - lmforge `iter_warc_records` (raw record iteration),
   - warcio `ArchiveIterator` (raw iteration, payload read; and with HTML decoding, the same work as ours),
   - FastWARC `ArchiveIterator` (raw iteration, payload read; and with HTML decoding).
   All in the same run, several passes each, best pass reported; ratios are against warcio and FastWARC.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lmforge.data.crawl import CrawlConfig, crawl_pydoc, iter_crawled_urls  # noqa: E402
from lmforge.data.readers import decode_html, iter_warc_records, read_documents  # noqa: E402
from lmforge.utils import shared_data_dir  # noqa: E402


def _best(fn, files, passes):
    best = None
    for _ in range(passes):
        t0 = time.perf_counter()
        n = fn(files)
        dt = time.perf_counter() - t0
        best = dt if best is None or dt < best else best
    return n, best


def ours_docs(files):
    return sum(1 for _ in read_documents(files))


def ours_raw(files):
    n = 0
    for f in files:
        for _h, block in iter_warc_records(f):
            n += 1
    return n


def warcio_raw(files):
    from warcio.archiveiterator import ArchiveIterator

    n = 0
    for f in files:
        with open(f, "rb") as fh:
            for rec in ArchiveIterator(fh):
                rec.content_stream().read()
                n += 1
    return n


def warcio_docs(files):
    from warcio.archiveiterator import ArchiveIterator

    n = 0
    for f in files:
        with open(f, "rb") as fh:
            for rec in ArchiveIterator(fh):
                if rec.rec_type != "response":
                    continue
                ctype = rec.http_headers.get_header("Content-Type") or ""
                body = rec.content_stream().read()
                if "html" in ctype:
                    decode_html(body, ctype)
                    n += 1
    return n


def fastwarc_raw(files):
    from fastwarc.warc import ArchiveIterator

    n = 0
    for f in files:
        with open(f, "rb") as fh:
            for rec in ArchiveIterator(fh, parse_http=False):
                rec.reader.read()
                n += 1
    return n


def fastwarc_docs(files):
    from fastwarc.warc import ArchiveIterator, WarcRecordType

    n = 0
    for f in files:
        with open(f, "rb") as fh:
            for rec in ArchiveIterator(fh, record_types=WarcRecordType.response):
                ctype = rec.http_headers.get("Content-Type", "") if rec.http_headers else ""
                body = rec.reader.read()  # note: FastWARC does not undo chunked transfer coding
                if "html" in ctype:
                    decode_html(body, ctype)
                    n += 1
    return n


def bench_readers(name, files, passes):
    size = sum(f.stat().st_size for f in files)
    print(f"\n== reading {name}: {len(files)} files, {size / 1e6:.2f} MB compressed, best of {passes} passes")
    rows = {}
    for label, fn in [("lmforge read_documents", ours_docs), ("lmforge raw records", ours_raw),
                      ("warcio raw records", warcio_raw), ("warcio + HTML decode", warcio_docs),
                      ("fastwarc raw records", fastwarc_raw), ("fastwarc + HTML decode", fastwarc_docs)]:
        n, dt = _best(fn, files, passes)
        rows[label] = dt
        print(f"{label:26s} {n:6d} items {dt * 1000:8.1f} ms {n / dt:9.0f} items/s {size / dt / 1e6:7.1f} MB/s")
    print(f"ratio raw: lmforge/warcio speed {rows['warcio raw records'] / rows['lmforge raw records']:.2f}x, "
          f"lmforge/fastwarc {rows['fastwarc raw records'] / rows['lmforge raw records']:.2f}x")
    print(f"ratio documents: lmforge read_documents vs warcio + decode "
          f"{rows['warcio + HTML decode'] / rows['lmforge read_documents']:.2f}x, vs fastwarc + decode "
          f"{rows['fastwarc + HTML decode'] / rows['lmforge read_documents']:.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="crawl 60 pages, fewer passes")
    args = ap.parse_args()
    passes = 2 if args.quick else 5
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "pydoc"
        max_pages = 60 if args.quick else 2000
        print(f"== crawling the pydoc site (max {max_pages} pages, 4 fetchers, 2 server processes)")
        r = crawl_pydoc(CrawlConfig(out=str(out), max_pages=max_pages, delay=0.0, workers=4, timeout=60.0,
                                    progress=False))
        print(f"crawl: {r['pages']} pages, {r['html_bytes'] / 1e6:.1f} MB HTML in {r['seconds']:.1f} s = "
              f"{r['pages_per_second']:.1f} pages/s; skipped {({k: v for k, v in r['stats'].items() if k != 'fetched'})}")
        urls = list(iter_crawled_urls(out))
        from lmforge.data.pydoc_site import PydocSite

        with PydocSite() as site:
            t0 = time.perf_counter()
            for u in urls:
                urllib.request.urlopen(site.url + u.split("/", 3)[3], timeout=60).read()
            dt = time.perf_counter() - t0
        print(f"plain sequential urllib fetch of the same {len(urls)} URLs: {len(urls) / dt:.1f} pages/s "
              f"(crawler/plain = {r['pages_per_second'] / (len(urls) / dt):.2f}x)")
        shared = shared_data_dir()
        if shared is not None:
            bench_readers("shared CC + dolma WARCs", sorted((shared / "pretrain" / "warc").glob("*.warc.gz")),
                          passes * 4)
        bench_readers("crawled pydoc WARCs", sorted(out.glob("*.warc.gz")), passes)


if __name__ == "__main__":
    main()

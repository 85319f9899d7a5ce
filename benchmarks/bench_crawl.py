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
3. Robustness: damaged copies of a real WARC (garbage between gzip members, one corrupt member, a truncated file):
   the records each library returns, whether it raises, and whether it hands out a cut-short record unflagged.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lmforge.data.crawl import CrawlConfig, crawl_pydoc, iter_crawled_urls  # noqa: E402
from lmforge.data.charset import decode_html  # noqa: E402
from lmforge.data.readers import read_documents  # noqa: E402
from lmforge.data.warc import iter_warc_records  # noqa: E402
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


def _damaged_variants(src: Path, tmp: Path) -> dict[str, Path]:
    """The same WARC with a garbage member in the middle, a corrupt member, and the file cut in half."""
    import random
    import zlib

    data = src.read_bytes()
    members, pos = [], 0
    while pos < len(data):
        d = zlib.decompressobj(31)
        d.decompress(data[pos:])
        end = len(data) - len(d.unused_data)
        members.append(data[pos:end])
        pos = end
    mid = len(members) // 2
    garbage = bytes(random.Random(0).randrange(256) for _ in range(4000)).replace(b"\x1f\x8b", b"xx")
    big = max(range(mid, len(members)), key=lambda i: len(members[i]))
    bad = bytearray(members[big])
    bad[len(bad) // 2: len(bad) // 2 + 64] = bytes(64)
    variants = {"intact": b"".join(members),
                "garbage between members": b"".join(members[:mid]) + garbage + b"".join(members[mid:]),
                "one corrupt member": b"".join(members[:big]) + bytes(bad) + b"".join(members[big + 1:]),
                "truncated file": data[: len(data) // 2]}
    out = {}
    for name, blob in variants.items():
        out[name] = tmp / (name.replace(" ", "_") + ".warc.gz")
        out[name].write_bytes(blob)
    return out


def _responses_warcio(path):
    from warcio.archiveiterator import ArchiveIterator

    n = 0
    with open(path, "rb") as fh:
        for rec in ArchiveIterator(fh):
            if rec.rec_type == "response":
                rec.raw_stream.read()
                n += 1
                if getattr(rec.raw_stream, "limit", 0) > 0:  # bytes the record promised and did not have
                    return f"{n}, stopped at the first one cut short ({rec.raw_stream.limit} bytes missing, not flagged)"
    return n


def _responses_fastwarc(path):
    from fastwarc.warc import ArchiveIterator, WarcRecordType

    n = 0
    with open(path, "rb") as fh:
        for rec in ArchiveIterator(fh, record_types=WarcRecordType.response, parse_http=False):
            block = rec.reader.read()
            n += 1
            if len(block) != rec.content_length:
                return f"{n}, stopped at the first one cut short ({len(block)} of {rec.content_length} bytes, not flagged)"
    return n


def _responses_ours(path):
    from lmforge.data.base import StepStats

    stats = StepStats("read")
    n = sum(1 for h, _ in iter_warc_records(path, stats) if h.get("warc-type") == "response")
    return f"{n} (counted: {dict(stats.dropped)})" if stats.dropped else n


def bench_robustness(src: Path, tmp: Path) -> None:
    print(f"\n== damaged copies of {src.name}: response records each reader returns (an exception ends it)")
    for name, path in _damaged_variants(src, tmp).items():
        row = []
        for label, fn in [("lmforge", _responses_ours), ("warcio", _responses_warcio),
                          ("fastwarc", _responses_fastwarc)]:
            try:
                with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                    row.append(f"{label}: {fn(path)}")
            except Exception as e:  # what a caller of that library would see
                row.append(f"{label}: raised {type(e).__name__}")
        print(f"{name:24s} " + " | ".join(row))


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
        if shared is not None:
            bench_robustness(shared / "pretrain" / "warc" / "dolma-sample-0000.warc.gz", Path(tmp))


if __name__ == "__main__":
    main()

"""WARC, the web archive format, read and written: the crawler's output and the data pipeline's main input.

Reading. Web archives are damaged in practice: a crawl killed mid-write leaves a truncated gzip member, a disk
error leaves a garbage member in the middle, a server sends bytes that are not in the charset it declares. The
reader must count such a record with its reason and go on with the next one, never stop the run. warcio and
FastWARC both stop at the first bad gzip member (and both silently return a truncated last record), so this module
has its own gzip-member splitter, which resynchronises on the next member's magic bytes, and its own small record
parser, which checks every record's Content-Length against the bytes really present (`benchmarks/bench_crawl.py`
compares it with warcio's and FastWARC's iterators). The same splitter serves gzipped JSONL (`readers.py`).

Writing. The crawler archives each page as a request + response record pair, each record its own gzip member
(warcio's writer), as Common Crawl does, so a reader can skip a damaged one. Files are written under a hidden
temporary name (`.NAME.tmp`) and renamed when complete, so a folder being crawled can be read: its finished files.
"""

from __future__ import annotations

import io
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlsplit, urlunsplit

from lmforge.data.base import StepStats
from lmforge.data.charset import decode_bytes, decode_html
from lmforge.data.document import Document

GZIP_MAGIC = b"\x1f\x8b\x08"
_CHUNK = 1 << 18
HTML_TYPES = ("text/html", "application/xhtml+xml")


# ---------------------------------------------------------------------------------------------------------------
# Byte streams that survive corruption
# ---------------------------------------------------------------------------------------------------------------

class _Discontinuity(Exception):
    """Raised by _Buffer when the byte stream had a gap (a corrupt or truncated gzip member was skipped)."""


def _gzip_chunks(f, stats: StepStats, where: str) -> Iterator[bytes | None]:
    """Decompressed bytes of a (multi-member) gzip file; None marks a gap where damaged bytes were skipped.

    On a decompression error the reader looks for the next member's magic bytes after the damaged one and goes
    on from there; a false match is itself damaged and skipped the same way. One gap (however many false starts
    it takes to cross it) is counted once.
    """
    pending = b""  # compressed bytes not yet given to a decompressor
    d = None
    in_gap = False

    def gap(reason: str, nbytes: int = 0) -> bool:
        nonlocal in_gap
        first = not in_gap
        if first:
            stats.skip(reason, where, nbytes)
        in_gap = True
        return first

    while True:
        if not pending:
            pending = f.read(_CHUNK)
            if not pending:
                if d is not None and not d.eof:
                    gap("truncated_gzip")
                    yield None
                return
        if d is None:  # between members: the next one must start with the magic bytes
            i = pending.find(GZIP_MAGIC)
            junk = pending[:i] if i >= 0 else pending[:-2]
            if junk.strip(b"\x00\r\n\t "):  # padding between members is harmless; anything else is damage
                if gap("garbage_bytes", len(junk)):
                    yield None
            if i < 0:
                more = f.read(_CHUNK)
                if not more:
                    return
                pending = pending[-2:] + more
                continue
            pending = pending[i:]
            d = zlib.decompressobj(31)
        try:
            out = d.decompress(pending)
        except zlib.error:
            if gap("corrupt_gzip"):
                yield None
            d = None
            j = pending.find(GZIP_MAGIC, 1)
            pending = pending[j:] if j >= 0 else b""
            continue
        if d.eof:
            in_gap = False
            pending = d.unused_data
            d = None
        else:
            pending = b""
        if out:
            yield out


def _plain_chunks(f) -> Iterator[bytes]:
    while chunk := f.read(_CHUNK):
        yield chunk


def open_chunks(path: Path, stats: StepStats) -> Iterator[bytes | None]:
    with open(path, "rb") as f:
        gz = f.read(3) == GZIP_MAGIC
        f.seek(0)
        yield from (_gzip_chunks(f, stats, str(path)) if gz else _plain_chunks(f))


class _Buffer:
    """A growing window on a chunk stream; `None` chunks (gaps) raise _Discontinuity and empty the window."""

    def __init__(self, chunks: Iterator[bytes | None]):
        self.chunks = chunks
        self.buf = b""
        self.pos = 0

    def fill(self) -> bool:
        """Append the next chunk; False at the end of the stream."""
        chunk = next(self.chunks, b"")
        if chunk is None:
            self.buf, self.pos = b"", 0
            raise _Discontinuity
        if not chunk:
            return False
        self.buf = self.buf[self.pos:] + chunk
        self.pos = 0
        return True

    def find(self, sep: bytes, max_len: int) -> int:
        """Index (absolute in buf) of `sep` at or after pos, reading more as needed; -1 if absent within max_len."""
        start = self.pos
        while True:
            i = self.buf.find(sep, start)
            if i >= 0:
                return i
            if len(self.buf) - self.pos > max_len:
                return -1
            start = max(self.pos, len(self.buf) - len(sep) + 1)
            shift = self.pos
            if not self.fill():
                return -1
            start -= shift

    def take(self, n: int) -> bytes | None:
        """The next n bytes, or None if the stream ends first."""
        while len(self.buf) - self.pos < n:
            if not self.fill():
                return None
        out = self.buf[self.pos:self.pos + n]
        self.pos += n
        return out

    def skip(self, n: int) -> bool:
        while n > 0:
            have = len(self.buf) - self.pos
            if have >= n:
                self.pos += n
                return True
            n -= have
            self.buf, self.pos = b"", 0
            if not self.fill():
                return False
        return True


# ---------------------------------------------------------------------------------------------------------------
# Reading records
# ---------------------------------------------------------------------------------------------------------------

def _parse_fields(block: bytes) -> dict[str, str]:
    fields: dict[str, str] = {}
    for line in block.decode("latin-1").split("\n"):
        name, sep, value = line.partition(":")
        if sep:
            fields[name.strip().lower()] = value.strip()
    return fields


def _resync(buf: _Buffer, after_gap: bool) -> bool:
    """Move to the next line that starts a WARC record, dropping what lies before it; False at the end of the stream.

    Right after a gap the first bytes begin a new gzip member, which normally begins a record. Memory stays
    bounded: bytes already searched are dropped, but for a short tail in case the marker straddles two chunks.
    """
    while True:
        try:
            if after_gap:
                if len(buf.buf) - buf.pos < 5:
                    if not buf.fill():
                        return False
                    continue
                if buf.buf.startswith(b"WARC/", buf.pos):
                    return True
                after_gap = False
            i = buf.buf.find(b"\nWARC/", buf.pos)
            if i >= 0:
                buf.pos = i + 1
                return True
            buf.pos = max(buf.pos, len(buf.buf) - 6)
            if not buf.fill():
                return False
        except _Discontinuity:
            after_gap = True


def iter_warc_records(path: str | os.PathLike, stats: StepStats | None = None,
                      max_record_bytes: int = 20 << 20) -> Iterator[tuple[dict[str, str], bytes]]:
    """(WARC headers with lower-case names, record block) for every intact record of a WARC file.

    Damaged parts are counted in `stats` ("corrupt_gzip", "truncated_record", "bad_warc_header", ...) and skipped;
    the parser then resynchronises on the next line that starts a WARC record.
    """
    stats = stats if stats is not None else StepStats("read")
    where = str(path)
    buf = _Buffer(open_chunks(Path(path), stats))
    lost = False  # the bytes at the current position are known to be damage already counted
    while True:
        try:
            if lost:
                lost = False
                if not _resync(buf, after_gap=False):
                    return
            # Skip the blank lines between records; anything else before "WARC/" is damage.
            while True:
                while buf.pos < len(buf.buf) and buf.buf[buf.pos] in b"\r\n":
                    buf.pos += 1
                if len(buf.buf) - buf.pos >= 5:
                    break
                if not buf.fill():
                    if buf.buf[buf.pos:].strip():
                        stats.skip("truncated_record", where)
                    return
            if not buf.buf.startswith(b"WARC/", buf.pos):
                stats.skip("garbage_bytes", where)
                lost = True
                continue
            end = buf.find(b"\r\n\r\n", 1 << 16)
            if end < 0:
                if len(buf.buf) - buf.pos > 1 << 16:
                    stats.skip("bad_warc_header", where)
                    buf.pos += 5
                    lost = True
                    continue
                stats.skip("truncated_record", where)
                return
            headers = _parse_fields(buf.buf[buf.pos:end])
            buf.pos = end + 4
            try:
                length = int(headers.get("content-length", ""))
                if length < 0:
                    raise ValueError
            except ValueError:
                stats.skip("bad_warc_header", headers.get("warc-record-id", where))
                lost = True
                continue
            if length > max_record_bytes:
                stats.skip("too_large", headers.get("warc-target-uri") or where, length)
                if not buf.skip(length):
                    return
                continue
            block = buf.take(length)
            if block is None:
                stats.skip("truncated_record", headers.get("warc-target-uri") or where, len(buf.buf) - buf.pos)
                return
            yield headers, block
        except _Discontinuity:  # the byte source has already counted the gap (and the record it cut)
            lost = False
            if not _resync(buf, after_gap=True):
                return


def _dechunk(body: bytes) -> bytes | None:
    """Undo HTTP chunked transfer coding; None if the framing is broken."""
    out = []
    pos = 0
    while True:
        eol = body.find(b"\r\n", pos)
        if eol < 0:
            return None
        try:
            size = int(body[pos:eol].split(b";", 1)[0].strip(), 16)
        except ValueError:
            return None
        if size == 0:
            return b"".join(out)
        start = eol + 2
        if start + size > len(body):
            return None
        out.append(body[start:start + size])
        pos = start + size + 2


def _decode_content(body: bytes, encoding: str) -> bytes | None:
    encoding = encoding.strip().lower()
    if encoding in ("", "identity", "none"):
        return body
    if encoding in ("gzip", "x-gzip", "deflate"):
        for wbits in ((47,) if encoding != "deflate" else (15, -15)):
            try:
                return zlib.decompressobj(wbits).decompress(body)
            except zlib.error:
                continue
        return None
    return None


def _warc_document(headers: dict[str, str], block: bytes, html_only: bool, stats: StepStats,
                   path: Path) -> Document | None:
    """A response (HTTP) or conversion (WET text) record as a Document, or None, counted in `stats` with why."""
    wtype = headers.get("warc-type", "")
    url = headers.get("warc-target-uri", "").strip("<>") or None  # WARC/1.0 writers (wget) bracket it
    rid = headers.get("warc-record-id", "").strip("<>")
    meta: dict[str, Any] = {"warc_record_id": rid, "date": headers.get("warc-date"), "source": path.name}
    where = url or rid or str(path)
    stats.docs_in += 1
    stats.bytes_in += len(block)
    if wtype == "conversion":  # WET: extracted plain text, UTF-8
        meta["content_type"] = headers.get("content-type", "text/plain")
        if headers.get("warc-refers-to"):
            meta["refers_to"] = headers["warc-refers-to"].strip("<>")
        text, enc = decode_bytes(block, "utf-8")
        meta["encoding"] = enc
        return Document(text=text, id=rid or where, url=url, metadata=meta)
    # A response record: an HTTP message (or, from some tools, a bare "resource" payload).
    head_end = block.find(b"\r\n\r\n")
    sep = 4
    if head_end < 0:
        head_end, sep = block.find(b"\n\n"), 2
    if head_end < 0 or not block.startswith(b"HTTP/"):
        stats.drop(Document("", rid, url), "bad_http")
        return None
    status_line, _, header_block = block[:head_end].partition(b"\n")
    parts = status_line.split()
    status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
    http = _parse_fields(header_block)
    body = block[head_end + sep:]
    content_type = http.get("content-type", "")
    meta["http_status"] = status
    meta["content_type"] = content_type
    if not 200 <= status < 300:
        stats.drop(Document("", rid, where), "http_status")
        return None
    mime = content_type.split(";", 1)[0].strip().lower()
    ident = headers.get("warc-identified-payload-type", "").lower()
    if html_only and mime not in HTML_TYPES and not (not mime and ident in HTML_TYPES):
        stats.drop(Document("", rid, where), "non_html")
        return None
    if "chunked" in http.get("transfer-encoding", "").lower():
        dechunked = _dechunk(body)
        if dechunked is not None:  # some archivers store the de-chunked body but keep the header
            body = dechunked
    if http.get("content-encoding"):
        decoded = _decode_content(body, http["content-encoding"])
        if decoded is None:
            # Archivers (Common Crawl among them) often store the decoded body but keep the header.
            if body.lstrip()[:1] == b"<":
                decoded = body
            else:
                stats.drop(Document("", rid, where), "content_encoding")
                return None
        body = decoded
    text, enc = decode_html(body, content_type)
    if text is None:
        stats.drop(Document("", rid, where), "undecodable")
        return None
    meta["encoding"] = enc
    return Document(text=text, id=rid or where, url=url, metadata=meta)


def read_warc(path: Path, stats: StepStats, html_only: bool = True,
              max_record_bytes: int = 20 << 20) -> Iterator[Document]:
    """The documents of a WARC or WET file: HTML responses (any response without `html_only`) and WET texts."""
    for headers, block in iter_warc_records(path, stats, max_record_bytes):
        if headers.get("warc-type") not in ("response", "conversion"):
            continue  # request, metadata, warcinfo, resource, revisit: not documents
        doc = _warc_document(headers, block, html_only, stats, path)
        if doc is not None:
            yield doc


# ---------------------------------------------------------------------------------------------------------------
# Writing records
# ---------------------------------------------------------------------------------------------------------------

@dataclass
class Fetched:
    """One HTTP exchange, as archived: what was sent and what came back."""

    url: str
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes
    request_headers: list[tuple[str, str]]
    ip: str | None = None

    def header(self, name: str) -> str:
        name = name.lower()
        return next((v for k, v in self.headers if k.lower() == name), "")



class WarcFiles:
    """Numbered gzipped WARC files written under a hidden temporary name and renamed when closed.

    Files are closed only at checkpoints (every `checkpoint_pages` pages, or when a file reaches its size limit), so
    that the saved state always lists exactly the finished files.

    Each record is its own gzip member (warcio's writer), as in Common Crawl, so a reader can skip a damaged one.
    """

    def __init__(self, out: Path, prefix: str, next_index: int, max_bytes: int, info: dict[str, str]):
        self.out, self.prefix, self.index, self.max_bytes, self.info = out, prefix, next_index, max_bytes, info
        self.file: io.BufferedWriter | None = None
        self.writer: Any = None
        self.records = 0

    def name(self, index: int) -> str:
        return f"{self.prefix}-{index:05d}.warc.gz"

    def _tmp(self) -> Path:
        return self.out / f".{self.name(self.index)}.tmp"

    def _open(self) -> None:
        from warcio.warcwriter import WARCWriter

        self.file = open(self._tmp(), "wb")
        self.writer = WARCWriter(self.file, gzip=True, warc_version="1.1")
        self.writer.write_record(self.writer.create_warcinfo_record(self.name(self.index), self.info))
        self.records = 0

    def write(self, fetched: Fetched) -> None:
        from warcio.statusandheaders import StatusAndHeaders

        if self.file is None:
            self._open()
        w = self.writer
        parts = urlsplit(fetched.url)
        target = urlunsplit(("", "", parts.path or "/", parts.query, ""))
        req = w.create_warc_record(fetched.url, "request", http_headers=StatusAndHeaders(
            f"GET {target} HTTP/1.1", list(fetched.request_headers), is_http_request=True))
        # http.client has already undone chunked transfer coding: say so the way Common Crawl does.
        headers = [(("X-Crawler-" + k) if k.lower() == "transfer-encoding" else k, v) for k, v in fetched.headers]
        warc_headers = {"WARC-IP-Address": fetched.ip} if fetched.ip else None
        resp = w.create_warc_record(fetched.url, "response", payload=io.BytesIO(fetched.body),
                                    length=len(fetched.body), warc_headers_dict=warc_headers,
                                    http_headers=StatusAndHeaders(f"{fetched.status} {fetched.reason}", headers,
                                                                  protocol="HTTP/1.1"))
        w.write_request_response_pair(req, resp)
        self.records += 1

    @property
    def full(self) -> bool:
        """The open file has reached the rotation size (the crawler then checkpoints, which closes it)."""
        return self.file is not None and self.file.tell() >= self.max_bytes

    def close(self) -> str | None:
        """Finish the current file (rename it into place); its name, or None if nothing was open."""
        if self.file is None:
            return None
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        final = self.out / self.name(self.index)
        os.replace(self._tmp(), final)
        self.file = None
        self.index += 1
        return final.name

    def abandon(self) -> None:
        """Drop the unfinished file (after a crash its pages are fetched again on resume)."""
        if self.file is not None:
            self.file.close()
            self._tmp().unlink(missing_ok=True)
            self.file = None

"""Readers: turn files on disk (WARC/WET, JSONL, parquet, folders of .txt/.html) into a stream of Documents.

Web archives are damaged in practice: a crawl killed mid-write leaves a truncated gzip member, a disk error leaves a
garbage member in the middle, a server sends bytes that are not in the charset it declares. A reader must count
such a record with its reason and go on with the next one, never stop the run. warcio and FastWARC both stop at the
first bad gzip member (and both silently return a truncated last record), so the WARC path here has its own
gzip-member splitter, which resynchronises on the next member's magic bytes, and its own small record parser,
which checks every record's Content-Length against the bytes really present. `benchmarks/bench_crawl.py` measures
it against warcio's and FastWARC's iterators on the same files.

HTML stays raw in `Document.text` (decoded with the declared charset, else UTF-8, else Windows-1252); the
extraction step turns it into text. What each reader skipped, and why, is counted in a `StepStats` named "read".
"""

from __future__ import annotations

import codecs
import json
import os
import re
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

from lmforge.data.base import StepStats
from lmforge.data.document import Document
from lmforge.utils import LmforgeError

FORMATS = ("auto", "warc", "jsonl", "parquet", "text")
_GZIP_MAGIC = b"\x1f\x8b\x08"
_CHUNK = 1 << 18
HTML_TYPES = ("text/html", "application/xhtml+xml")


@dataclass
class ReaderConfig:
    """How files become documents. The defaults read Common Crawl WARC/WET and FineWeb JSONL/parquet as they are."""

    text_field: str = "text"  # JSONL/parquet: the column with the document text
    id_field: str = "id"  # JSONL/parquet: the document id (else `file/line`)
    url_field: str = "url"  # JSONL/parquet: the URL, if any
    html_only: bool = True  # WARC responses: keep only text/html and XHTML payloads
    max_record_bytes: int = 20 << 20  # WARC records larger than this are skipped unread ("too_large")


# ---------------------------------------------------------------------------------------------------------------
# Finding the input files and their formats
# ---------------------------------------------------------------------------------------------------------------

_SUFFIX_FORMATS = [
    ((".warc.gz", ".warc", ".wet.gz", ".wet"), "warc"),
    ((".jsonl.gz", ".jsonl", ".ndjson", ".ndjson.gz", ".json.gz"), "jsonl"),
    ((".parquet",), "parquet"),
    ((".txt", ".html", ".htm", ".xhtml", ".md", ".txt.gz", ".html.gz", ".htm.gz"), "text"),
]


def detect_format(path: str | os.PathLike) -> str:
    """The format of one file, by its name, else by its first bytes (gzip is looked through)."""
    name = Path(path).name.lower()
    for suffixes, fmt in _SUFFIX_FORMATS:
        if name.endswith(suffixes):
            return fmt
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError as e:
        raise LmforgeError(f"cannot read input file {path}: {e}") from e
    if head.startswith(b"PAR1"):
        return "parquet"
    if head.startswith(_GZIP_MAGIC):
        try:
            head = zlib.decompressobj(31).decompress(head)
        except zlib.error:
            head = b""
    stripped = head.lstrip()
    if stripped.startswith(b"WARC/"):
        return "warc"
    if stripped.startswith(b"{"):
        return "jsonl"
    return "text"


def expand_inputs(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Files named by `paths` (files, folders searched recursively, or glob patterns), sorted and de-duplicated.

    Hidden files and our own temporary files (".name.tmp") are left out, so a crawl folder that is still being
    written can be read: its finished WARCs only.
    """
    out: list[Path] = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and not _hidden(f.relative_to(p)))
            out.extend(f for f in found if _known_suffix(f))
        elif p.is_file():
            out.append(p)
        elif any(ch in str(p) for ch in "*?["):
            anchor = Path(p.anchor) if p.is_absolute() else Path(".")
            pattern = str(p.relative_to(p.anchor)) if p.is_absolute() else str(p)
            out.extend(sorted(f for f in anchor.glob(pattern) if f.is_file()))
        else:
            raise LmforgeError(f"input not found: {p}")
    seen: set[Path] = set()
    uniq = []
    for f in out:
        r = f.resolve()
        if r not in seen:
            seen.add(r)
            uniq.append(f)
    return uniq


def _hidden(rel: Path) -> bool:
    return any(part.startswith(".") for part in rel.parts)


def _known_suffix(f: Path) -> bool:
    name = f.name.lower()
    return any(name.endswith(s) for suffixes, _ in _SUFFIX_FORMATS for s in suffixes)


def read_documents(paths: Iterable[str | os.PathLike] | str | os.PathLike, format: str = "auto", *,
                   stats: StepStats | None = None, config: ReaderConfig | None = None,
                   limit: int | None = None, **overrides: Any) -> Iterator[Document]:
    """Every document in `paths` (files, folders, globs), in order; the one entry point the other stages call.

    `format` is one of "auto" (by extension, then magic bytes, per file), "warc" (also WET), "jsonl", "parquet",
    "text" (.txt/.html files). Keyword overrides set `ReaderConfig` fields (e.g. `text_field="content"`).
    `stats` (a StepStats, by convention named "read") receives what was read, kept and skipped with reasons; the
    time counted is the reader's own, not the consumer's.
    """
    if format not in FORMATS:
        raise LmforgeError(f"unknown input format {format!r}; choose one of {', '.join(FORMATS)}")
    cfg = config or ReaderConfig()
    if overrides:
        unknown = set(overrides) - set(ReaderConfig.__dataclass_fields__)
        if unknown:
            raise LmforgeError(f"unknown reader option(s): {', '.join(sorted(unknown))}")
        cfg = ReaderConfig(**{**cfg.__dict__, **overrides})
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    stats = stats if stats is not None else StepStats("read")
    n = 0
    for path in expand_inputs(paths):
        try:
            fmt = detect_format(path) if format == "auto" else format
        except LmforgeError as e:  # unreadable while sniffing its format: counted like any unreadable file
            _skip(stats, "unreadable_file", str(e))
            continue
        reader = _READERS[fmt]
        gen = reader(path, cfg, stats)
        while True:
            t0 = time.perf_counter()
            try:
                doc = next(gen)
            except StopIteration:
                stats.seconds += time.perf_counter() - t0
                break
            except OSError as e:  # unreadable (permissions, I/O error): counted, and the run goes on
                stats.seconds += time.perf_counter() - t0
                _skip(stats, "unreadable_file", f"{path}: {e}")
                break
            stats.seconds += time.perf_counter() - t0
            stats.docs_out += 1
            stats.bytes_out += _utf8_len(doc.text)
            yield doc
            n += 1
            if limit is not None and n >= limit:
                gen.close()
                return


def _utf8_len(text: str) -> int:
    """UTF-8 size of a text without encoding it when it is ASCII (most HTML; the check is much cheaper)."""
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def _skip(stats: StepStats, reason: str, where: str, nbytes: int = 0) -> None:
    """Count one unreadable item (a record, a line, a file) as read and dropped, with an example location."""
    stats.docs_in += 1
    stats.bytes_in += nbytes
    stats.drop(Document(text="", id=where), reason)


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
            _skip(stats, reason, where, nbytes)
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
            i = pending.find(_GZIP_MAGIC)
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
            j = pending.find(_GZIP_MAGIC, 1)
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


def _open_chunks(path: Path, stats: StepStats) -> Iterator[bytes | None]:
    with open(path, "rb") as f:
        gz = f.read(3) == _GZIP_MAGIC
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
# WARC / WET
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
    buf = _Buffer(_open_chunks(Path(path), stats))
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
                        _skip(stats, "truncated_record", where)
                    return
            if not buf.buf.startswith(b"WARC/", buf.pos):
                _skip(stats, "garbage_bytes", where)
                lost = True
                continue
            end = buf.find(b"\r\n\r\n", 1 << 16)
            if end < 0:
                if len(buf.buf) - buf.pos > 1 << 16:
                    _skip(stats, "bad_warc_header", where)
                    buf.pos += 5
                    lost = True
                    continue
                _skip(stats, "truncated_record", where)
                return
            headers = _parse_fields(buf.buf[buf.pos:end])
            buf.pos = end + 4
            try:
                length = int(headers.get("content-length", ""))
                if length < 0:
                    raise ValueError
            except ValueError:
                _skip(stats, "bad_warc_header", headers.get("warc-record-id", where))
                lost = True
                continue
            if length > max_record_bytes:
                _skip(stats, "too_large", headers.get("warc-target-uri") or where, length)
                if not buf.skip(length):
                    return
                continue
            block = buf.take(length)
            if block is None:
                _skip(stats, "truncated_record", headers.get("warc-target-uri") or where, len(buf.buf) - buf.pos)
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


def _warc_document(headers: dict[str, str], block: bytes, cfg: ReaderConfig, stats: StepStats,
                   path: Path) -> Document | None:
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
    if cfg.html_only and mime not in HTML_TYPES and not (not mime and ident in HTML_TYPES):
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


def _read_warc(path: Path, cfg: ReaderConfig, stats: StepStats) -> Iterator[Document]:
    for headers, block in iter_warc_records(path, stats, cfg.max_record_bytes):
        if headers.get("warc-type") not in ("response", "conversion"):
            continue  # request, metadata, warcinfo, resource, revisit: not documents
        doc = _warc_document(headers, block, cfg, stats, path)
        if doc is not None:
            yield doc


# ---------------------------------------------------------------------------------------------------------------
# Character decoding
# ---------------------------------------------------------------------------------------------------------------

# Labels that browsers read as a superset (WHATWG Encoding Standard): decoding with the superset is what the page
# author saw.
_CHARSET_ALIASES = {"iso-8859-1": "cp1252", "latin1": "cp1252", "latin-1": "cp1252", "ascii": "cp1252",
                    "us-ascii": "cp1252", "iso8859-1": "cp1252", "gb2312": "gb18030", "gbk": "gb18030",
                    "x-gbk": "gb18030", "shift_jis": "cp932", "sjis": "cp932", "euc-kr": "cp949",
                    "ks_c_5601-1987": "cp949", "tis-620": "cp874", "windows-874": "cp874"}
_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([a-zA-Z0-9_.:-]+)""", re.I)
_HEADER_CHARSET = re.compile(r"""charset\s*=\s*["']?\s*([a-zA-Z0-9_.:-]+)""", re.I)
_BOMS = [(codecs.BOM_UTF8, "utf-8"), (codecs.BOM_UTF16_LE, "utf-16-le"), (codecs.BOM_UTF16_BE, "utf-16-be")]


def _codec(label: str | None) -> str | None:
    if not label:
        return None
    label = label.strip().lower()
    label = _CHARSET_ALIASES.get(label, label)
    try:
        return codecs.lookup(label).name
    except LookupError:
        return None


def decode_bytes(data: bytes, declared: str | None = None) -> tuple[str, str]:
    """Text and the name of the encoding that produced it: BOM, else declared, else UTF-8, else Windows-1252.

    A page with a few bad bytes in otherwise valid UTF-8 keeps its UTF-8 reading with replacement characters
    ("utf-8+replace"); a page that is mostly not UTF-8 is read as Windows-1252, which cannot fail.
    """
    for bom, name in _BOMS:
        if data.startswith(bom):
            return data[len(bom):].decode(name, "replace"), name
    codec = _codec(declared)
    if codec:
        try:
            return data.decode(codec), codec
        except UnicodeDecodeError:
            pass
    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        pass
    text = data.decode("utf-8", "replace")
    if text.count("\ufffd") <= max(2, len(text) // 200):
        return text, "utf-8+replace"
    return data.decode("cp1252", "replace"), "cp1252"


def _looks_binary(data: bytes) -> bool:
    """NUL bytes in the first 64 KB: text in any 8-bit or multi-byte charset has none (UTF-16 is caught by its BOM)."""
    head = data[:1 << 16]
    return head.count(b"\x00") > max(8, len(head) // 100)


def decode_html(body: bytes, content_type: str = "") -> tuple[str | None, str]:
    """Decode an HTML payload with the charset of its HTTP header or <meta>; None if it is binary, not text."""
    if _looks_binary(body):
        return None, "binary"
    m = _HEADER_CHARSET.search(content_type or "")
    declared = m.group(1) if m else None
    if _codec(declared) is None:
        mm = _META_CHARSET.search(body[:4096])
        declared = mm.group(1).decode("ascii", "replace") if mm else declared
    return decode_bytes(body, declared)


# ---------------------------------------------------------------------------------------------------------------
# JSONL, parquet, text files
# ---------------------------------------------------------------------------------------------------------------

def _lines(path: Path, stats: StepStats) -> Iterator[bytes | None]:
    """Lines of a plain or gzipped file; None marks a gap (the line that straddles it is lost)."""
    rest = b""
    for chunk in _open_chunks(path, stats):
        if chunk is None:
            if rest.strip():
                _skip(stats, "truncated_line", str(path), len(rest))
            rest = b""
            yield None
            continue
        rest += chunk
        lines = rest.split(b"\n")
        rest = lines.pop()
        yield from lines
    if rest.strip():
        yield rest


def _make_doc(row: dict, cfg: ReaderConfig, fallback_id: str, path: Path, stats: StepStats) -> Document | None:
    """The row as a Document, or None (counted as dropped in `stats`) when it has no usable text."""
    text = row.pop(cfg.text_field, None)
    if not isinstance(text, str):
        stats.drop(Document("", fallback_id), "missing_text" if text is None else "text_not_string")
        return None
    doc_id = row.pop(cfg.id_field, None)
    url = row.pop(cfg.url_field, None)
    meta = {k: v for k, v in row.items() if v is not None}
    meta.setdefault("source", path.name)
    return Document(text=text, id=str(doc_id) if doc_id is not None else fallback_id,
                    url=url if isinstance(url, str) else None, metadata=meta)


def _read_jsonl(path: Path, cfg: ReaderConfig, stats: StepStats) -> Iterator[Document]:
    for n, line in enumerate(_lines(path, stats), 1):
        if line is None or not line.strip():
            continue
        where = f"{path.name}:{n}"
        stats.docs_in += 1
        stats.bytes_in += len(line)
        try:
            row = json.loads(line)
        except UnicodeDecodeError:
            stats.drop(Document("", where), "invalid_utf8")
            continue
        except ValueError:
            stats.drop(Document("", where), "bad_json")
            continue
        if not isinstance(row, dict):
            stats.drop(Document("", where), "bad_json")
            continue
        doc = _make_doc(row, cfg, where, path, stats)
        if doc is not None:
            yield doc


def _read_parquet(path: Path, cfg: ReaderConfig, stats: StepStats) -> Iterator[Document]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several types for a damaged file
        _skip(stats, "corrupt_parquet", f"{path}: {e}")
        return
    if cfg.text_field not in pf.schema_arrow.names:
        raise LmforgeError(f"{path}: no column {cfg.text_field!r} (columns: {', '.join(pf.schema_arrow.names)}); "
                           "pass text_field=... / --text-field")
    row_no = 0
    for g in range(pf.num_row_groups):  # one row group at a time: memory stays at one group
        try:
            table = pf.read_row_group(g)
        except Exception as e:
            _skip(stats, "corrupt_parquet", f"{path} row group {g}: {e}")
            continue
        for row in table.to_pylist():
            row_no += 1
            where = f"{path.name}:{row_no}"
            stats.docs_in += 1
            text = row.get(cfg.text_field)
            stats.bytes_in += len(text.encode("utf-8", "replace")) if isinstance(text, str) else 0
            for k, v in list(row.items()):
                if hasattr(v, "isoformat"):
                    row[k] = v.isoformat()
            doc = _make_doc(row, cfg, where, path, stats)
            if doc is not None:
                yield doc


def _read_text_file(path: Path, cfg: ReaderConfig, stats: StepStats) -> Iterator[Document]:
    name = path.name.lower()
    try:
        data = path.read_bytes()
        if name.endswith(".gz"):
            data = zlib.decompressobj(31).decompress(data)
            name = name[:-3]
    except (OSError, zlib.error) as e:
        _skip(stats, "unreadable_file", f"{path}: {e}")
        return
    stats.docs_in += 1
    stats.bytes_in += len(data)
    is_html = name.endswith((".html", ".htm", ".xhtml"))
    if is_html:
        text, enc = decode_html(data)
    elif _looks_binary(data):
        text, enc = None, "binary"
    else:
        text, enc = decode_bytes(data)
    if text is None:
        stats.drop(Document("", str(path)), "undecodable")
        return
    meta = {"source": path.name, "encoding": enc, "content_type": "text/html" if is_html else "text/plain"}
    yield Document(text=text, id=str(path), url=None, metadata=meta)


_READERS = {"warc": _read_warc, "jsonl": _read_jsonl, "parquet": _read_parquet, "text": _read_text_file}

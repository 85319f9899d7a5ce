"""Readers: turn files on disk (WARC/WET, JSONL, parquet, folders of .txt/.html) into a stream of Documents.

A reader counts what it could not read, with the reason, in a `StepStats` named "read", and goes on with the next
record, line or file: one damaged item must not stop a run (the WARC parser that survives damaged archives is in
`warc.py`; gzipped JSONL goes through the same damage-tolerant gzip splitter). HTML stays raw in `Document.text`
(decoded by `charset.py`); the extraction step turns it into text.
"""

from __future__ import annotations

import json
import os
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

from lmforge.data.base import StepStats
from lmforge.data.charset import decode_bytes, decode_html, looks_binary
from lmforge.data.document import Document
from lmforge.data.warc import GZIP_MAGIC, open_chunks, read_warc
from lmforge.utils import LmforgeError

FORMATS = ("auto", "warc", "jsonl", "parquet", "text")


@dataclass
class ReaderConfig:
    """How files become documents. The defaults read Common Crawl WARC/WET and FineWeb JSONL/parquet as they are."""

    text_field: str = "text"  # JSONL/parquet: the column with the document text
    id_field: str = "id"  # JSONL/parquet: the document id (else `file/line`)
    url_field: str = "url"  # JSONL/parquet: the URL, if any
    html_only: bool = True  # WARC responses: keep only text/html and XHTML payloads
    max_record_bytes: int = 20 << 20  # WARC records larger than this are skipped unread ("too_large")
    text_separator: str = ""  # plain text (.txt/.md): split a file into documents here ("" = one file, one document)
    text_max_chars: int = 0  # plain text: cut longer documents into pieces of at most this many characters (0 = never)

    def __post_init__(self) -> None:
        """Checked here, once, naming the flag (and the config field): a zero or negative size would make empty
        documents or none at all."""
        for name, flag, low in (("max_record_bytes", "max_record_bytes", 1), ("text_max_chars", "--text-max-chars", 0)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= 1 << 40:
                raise LmforgeError(f"{flag} (reader.{name}) must be a whole number >= {low}, got {value!r}")
        if not isinstance(self.text_separator, str):
            raise LmforgeError(f"--text-separator (reader.text_separator) must be a string, got {self.text_separator!r}")


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
    if head.startswith(GZIP_MAGIC):
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
            stats.skip("unreadable_file", str(e))
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
                stats.skip("unreadable_file", f"{path}: {e}")
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


# ---------------------------------------------------------------------------------------------------------------
# JSONL, parquet, text files
# ---------------------------------------------------------------------------------------------------------------

def _lines(path: Path, stats: StepStats) -> Iterator[bytes | None]:
    """Lines of a plain or gzipped file; None marks a gap (the line that straddles it is lost)."""
    rest = b""
    for chunk in open_chunks(path, stats):
        if chunk is None:
            if rest.strip():
                stats.skip("truncated_line", str(path), len(rest))
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
        stats.skip("corrupt_parquet", f"{path}: {e}")
        return
    if cfg.text_field not in pf.schema_arrow.names:
        raise LmforgeError(f"{path}: no column {cfg.text_field!r} (columns: {', '.join(pf.schema_arrow.names)}); "
                           "pass text_field=... / --text-field")
    row_no = 0
    for g in range(pf.num_row_groups):  # one row group at a time: memory stays at one group
        try:
            table = pf.read_row_group(g)
        except Exception as e:
            stats.skip("corrupt_parquet", f"{path} row group {g}: {e}")
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
        stats.skip("unreadable_file", f"{path}: {e}")
        return
    stats.docs_in += 1
    stats.bytes_in += len(data)
    is_html = name.endswith((".html", ".htm", ".xhtml"))
    if is_html:
        text, enc = decode_html(data)
    elif looks_binary(data):
        text, enc = None, "binary"
    else:
        text, enc = decode_bytes(data)
    if text is None:
        stats.drop(Document("", str(path)), "undecodable")
        return
    meta = {"source": path.name, "encoding": enc, "content_type": "text/html" if is_html else "text/plain"}
    if is_html or not (cfg.text_separator or cfg.text_max_chars):
        yield Document(text=text, id=str(path), url=None, metadata=meta)
        return
    for k, piece in enumerate(split_text(text, cfg.text_separator, cfg.text_max_chars)):
        yield Document(text=piece, id=f"{path}#{k}", url=None, metadata={**meta, "part": k})


def split_text(text: str, separator: str = "", max_chars: int = 0) -> list[str]:
    """The documents of one plain-text file: pieces between `separator`s (the whole text when it is empty), each
    cut into parts of at most `max_chars` characters (0: uncut) at the last paragraph break, else line break, else
    space before the limit. Whitespace-only pieces are left out. A book is then many documents of a size the
    quality filters accept (Gopher drops documents over 100,000 words) instead of one that is dropped whole."""
    pieces = [p for p in (text.split(separator) if separator else [text]) if p.strip()]
    if not max_chars:
        return pieces
    out = []
    for piece in pieces:
        while len(piece) > max_chars:
            window = piece[:max_chars]
            cut = max(window.rfind("\n\n"), 0) or max(window.rfind("\n"), 0) or max(window.rfind(" "), 0) or max_chars
            head, piece = piece[:cut], piece[cut:]
            if head.strip():
                out.append(head)
        if piece.strip():
            out.append(piece)
    return out


def _read_warc(path: Path, cfg: ReaderConfig, stats: StepStats) -> Iterator[Document]:
    return read_warc(path, stats, cfg.html_only, cfg.max_record_bytes)


_READERS = {"warc": _read_warc, "jsonl": _read_jsonl, "parquet": _read_parquet, "text": _read_text_file}

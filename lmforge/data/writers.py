"""Document files the pipeline writes and reads back: gzipped JSONL (default) and parquet.

A record is `{"text", "id", "url", "metadata"}` (datatrove's layout plus the URL); dropped documents carry two more
fields, `step` and `reason`, so the exclusion files say which rule dropped each page. Every file is written through
`atomic_path`: a crashed worker leaves no half shard, which is what lets a restarted run trust every file it finds.
"""

from __future__ import annotations

import gzip
import json
import zlib
from pathlib import Path
from typing import Iterable, Iterator

from lmforge.data.document import Document
from lmforge.utils import LmforgeError, atomic_path

PARQUET_SUFFIX = ".parquet"
JSONL_SUFFIX = ".jsonl.gz"


def check_output_folder(out: str | Path, flag: str = "--out") -> Path:
    """`out` as a Path, refused (naming the flag) when it exists and is not a folder: a run must not fail halfway
    on it, nor write beside a file the user meant to keep."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise LmforgeError(f"{flag} {out} exists and is not a folder")
    return out


def doc_record(doc: Document) -> dict:
    return {"text": doc.text, "id": doc.id, "url": doc.url, "metadata": doc.metadata}


def record_doc(rec: dict, where: str) -> Document:
    if not isinstance(rec, dict) or not isinstance(rec.get("text"), str):
        raise LmforgeError(f"{where}: record without a string 'text' field")
    meta = rec.get("metadata") or {}
    if isinstance(meta, str):  # parquet stores metadata as a JSON string
        meta = json.loads(meta)
    return Document(text=rec["text"], id=str(rec.get("id", "")), url=rec.get("url"), metadata=meta)


class JsonlGzWriter:
    """Streams documents into one gzipped JSONL file that appears only when `close()` succeeds.

    Compression level 3: these files are rewritten often (every stage, every restart) and level 9 costs about
    4x the CPU for ~10% smaller files.
    """

    def __init__(self, path: str | Path, compresslevel: int = 3):
        self.path = Path(path)
        self._ctx = atomic_path(self.path)
        tmp = self._ctx.__enter__()
        self._raw = open(tmp, "wb")
        self._gz = gzip.GzipFile(fileobj=self._raw, mode="wb", compresslevel=compresslevel, mtime=0)
        self.count = 0

    def write(self, doc: Document, **extra) -> None:
        rec = doc_record(doc)
        rec.update(extra)
        self._gz.write(json.dumps(rec, ensure_ascii=False).encode("utf-8", "surrogatepass") + b"\n")
        self.count += 1

    def close(self) -> None:
        self._gz.close()
        self._raw.close()
        self._ctx.__exit__(None, None, None)

    def abort(self) -> None:
        """Drop the temporary file (the target is left as it was)."""
        self._gz.close()
        self._raw.close()
        try:
            self._ctx.__exit__(RuntimeError, RuntimeError("aborted"), None)
        except RuntimeError:
            pass

    def __enter__(self) -> "JsonlGzWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_parquet(path: str | Path, docs: Iterable[Document], row_group: int = 4096) -> int:
    """Write documents as parquet (text, id, url, metadata as a JSON string: its keys differ between steps), one
    row group at a time so that memory stays at one group whatever the shard size."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([(name, pa.string()) for name in ("text", "id", "url", "metadata")])
    n = 0
    with atomic_path(path) as tmp:
        with pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
            batch: list[Document] = []

            def flush() -> None:
                writer.write_table(pa.table({
                    "text": [d.text for d in batch], "id": [d.id for d in batch], "url": [d.url for d in batch],
                    "metadata": [json.dumps(d.metadata, ensure_ascii=False) for d in batch]}, schema=schema))
                batch.clear()

            for d in docs:
                batch.append(d)
                n += 1
                if len(batch) >= row_group:
                    flush()
            if batch or n == 0:
                flush()
    return n


def read_output_documents(path: str | Path) -> Iterator[Document]:
    """Read back a file this module wrote (`.jsonl.gz`, `.jsonl` or `.parquet`), naming the file on bad input."""
    path = Path(path)
    if not path.is_file():
        raise LmforgeError(f"document file not found: {path}")
    if path.name.endswith(PARQUET_SUFFIX):
        import pyarrow.parquet as pq

        try:
            pf = pq.ParquetFile(path)
        except Exception as e:  # pyarrow raises several types for a damaged file
            raise LmforgeError(f"{path} is not a readable parquet file: {e}") from e
        if "text" not in pf.schema_arrow.names:
            raise LmforgeError(f"{path}: parquet file without a 'text' column")
        row = 0
        for g in range(pf.num_row_groups):
            for rec in pf.read_row_group(g).to_pylist():
                yield record_doc(rec, f"{path} row {row}")
                row += 1
        return
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if line.strip():
                    try:
                        rec = json.loads(line)
                    except json.JSONDecodeError as e:
                        raise LmforgeError(f"{path} line {lineno}: not JSON ({e})") from e
                    yield record_doc(rec, f"{path} line {lineno}")
    except (OSError, EOFError, zlib.error, UnicodeDecodeError) as e:
        raise LmforgeError(f"{path} is corrupt: {e}") from e

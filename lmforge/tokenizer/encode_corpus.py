"""`lmforge tokenize`: clean documents into the token shards pretraining reads (format: `lmforge/tokenizer/shards.py`).

Two passes. First, each document file is tokenized on its own (one task per file, in parallel; the tokens of a file
go to `shards_dir/.work/NNNNN.npz`, atomically, so a restart skips finished files). Second, the validation split
is chosen and the shards are written in input order: documents are ranked by a hash of their split key (the URL
without scheme and port, else the id) and the lowest ranks go to validation until it holds `val_fraction` of the
tokens (at least `min_val_tokens`, at most `max_val_fraction`). The split depends only on the keys and the data,
never on worker count or timing, so it is the same in every run over the same documents, and a page crawled again
(a new WARC record id, a server on another port, as the speedrun's pydoc site) stays on its side of the split. `index.json` is written last: its presence marks a finished run.
"""

from __future__ import annotations

import hashlib
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlsplit

import numpy as np

from lmforge.data.base import StepStats
from lmforge.data.document import Document
from lmforge.data.pool import LocalPool, check_workers
from lmforge.data.readers import ReaderConfig, detect_format, read_documents
from lmforge.data.writers import check_output_folder, read_output_documents
from lmforge.tokenizer.shards import DTYPES, ShardWriter, dtype_for_vocab, make_index
from lmforge.tokenizer.tokenizer import Tokenizer
from lmforge.utils import LmforgeError, atomic_path, read_json, remove_stale_temporaries, write_json

BOS = "<|bos|>"


@dataclass
class TokenizeConfig:
    val_fraction: float = 0.01  # share of tokens held out for validation
    min_val_tokens: int = 50_000  # ... but at least this many (a loss on fewer tokens is too noisy to compare)
    max_val_fraction: float = 0.1  # ... and never more than this share, however small the corpus
    shard_tokens: int = 100_000_000  # tokens per .bin file (200 MB in uint16)
    batch_documents: int = 512  # documents per encode_batch call
    text_separator: str = ""  # plain-text inputs (.txt/.md): where one document ends ("" = one file, one document)
    text_max_chars: int = 0  # plain-text inputs: longer documents are cut into pieces of this size (0 = never)

    def __post_init__(self) -> None:
        """Every field is checked here, once, naming the flag that sets it (a fraction of 2 or -1 tokens would
        otherwise make a silently wrong split)."""
        for name, flag in (("val_fraction", "--val-fraction"), ("max_val_fraction", "max_val_fraction")):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0 <= value < 1:
                raise LmforgeError(f"{flag} must be a fraction in [0, 1), got {value!r}")
        for name, flag, low in (("min_val_tokens", "--min-val-tokens", 0), ("shard_tokens", "shard_tokens", 1),
                                ("batch_documents", "batch_documents", 1)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise LmforgeError(f"{flag} must be a whole number >= {low}, got {value!r}")
        self.reader_config()  # checks the plain-text settings

    def reader_config(self) -> ReaderConfig:
        """How plain-text inputs become documents (the same rule as `data run`'s reader)."""
        return ReaderConfig(text_separator=self.text_separator, text_max_chars=self.text_max_chars)


def split_key(doc: Document) -> str:
    """What decides a document's side of the split: its URL when it has one, without the scheme and port (record
    ids are random per crawl, and the speedrun's local site gets a new port each run), else its id."""
    if not doc.url:
        return doc.id
    try:
        parts = urlsplit(doc.url)
        host = parts.hostname
    except ValueError:  # a malformed URL (e.g. an unclosed IPv6 bracket) is still a stable string
        return doc.url
    if not host:
        return doc.url
    return host + parts.path + ("?" + parts.query if parts.query else "")


def key_hash(key: str) -> int:
    return int.from_bytes(hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")


@dataclass
class TokenizeTask:
    index: int
    input: str
    tokenizer_dir: str
    work_dir: str
    batch_documents: int
    threads: int | None  # encode_batch threads: 1 when each core already runs a worker process
    reader: dict = field(default_factory=dict)  # ReaderConfig fields for plain-text inputs


def tokenize_file(task: TokenizeTask) -> dict[str, Any]:
    """Tokenize one document file into `.work/NNNNN.npz`: tokens with <|bos|> before each document, lengths,
    split-key hashes. Skips a file already done."""
    path = Path(task.work_dir) / f"{task.index:05d}.npz"
    if path.is_file():
        with np.load(path) as z:
            return {"file": task.input, "documents": int(len(z["lengths"])), "tokens": int(z["lengths"].sum()), "seconds": 0.0}
    t0 = time.perf_counter()
    tok = Tokenizer.load(task.tokenizer_dir)
    bos = tok.special_tokens[BOS]
    dtype = DTYPES[dtype_for_vocab(tok.vocab_size)]
    pieces: list[np.ndarray] = []
    lengths: list[int] = []
    hashes: list[int] = []
    batch: list[str] = []

    def flush() -> None:
        for ids in tok.encode_batch(batch, num_threads=task.threads):
            arr = np.empty(len(ids) + 1, dtype=dtype)
            arr[0] = bos
            arr[1:] = ids
            pieces.append(arr)
            lengths.append(len(arr))
        batch.clear()

    for doc in _documents(task.input, ReaderConfig(**task.reader)):
        batch.append(doc.text)
        hashes.append(key_hash(split_key(doc)))
        if len(batch) >= task.batch_documents:
            flush()
    if batch:
        flush()
    tokens = np.concatenate(pieces) if pieces else np.zeros(0, dtype=dtype)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, tokens=tokens, lengths=np.array(lengths, dtype=np.int64), hashes=np.array(hashes, dtype=np.uint64))
    return {"file": task.input, "documents": len(lengths), "tokens": int(tokens.size), "seconds": time.perf_counter() - t0}


def _documents(path: str, reader: ReaderConfig) -> Iterator[Document]:
    """A document file as `data run` writes it (`.jsonl.gz`, `.jsonl`, `.parquet`, read strictly: a damaged line is
    an error naming the file), or plain text (`.txt`, `.md`), cut into documents by the reader's text rule."""
    if detect_format(path) != "text":
        return read_output_documents(path)
    stats = StepStats("read")
    docs = list(read_documents([path], "text", stats=stats, config=reader))
    if stats.dropped:
        raise LmforgeError(f"{path}: cannot read it as text ({', '.join(stats.dropped)})")
    return iter(docs)


def choose_validation(lengths: np.ndarray, hashes: np.ndarray, config: TokenizeConfig) -> np.ndarray:
    """Boolean mask of validation documents: the lowest split-key hashes, until the token target is met."""
    total = int(lengths.sum())
    if len(lengths) < 2:
        return np.zeros(len(lengths), dtype=bool)
    target = min(max(config.val_fraction * total, config.min_val_tokens), config.max_val_fraction * total)
    order = np.argsort(hashes, kind="stable")
    cum = np.cumsum(lengths[order])
    n_val = int(np.searchsorted(cum, target)) + 1  # documents needed to reach the target
    cap = int(np.searchsorted(cum, config.max_val_fraction * total, side="right"))  # documents within the cap
    n_val = min(max(min(n_val, cap), 1), len(lengths) - 1)  # at least one document each side
    mask = np.zeros(len(lengths), dtype=bool)
    mask[order[:n_val]] = True
    return mask


def tokenize_files(inputs: list[str | Path], tokenizer_dir: str | Path, out: str | Path,
                   config: TokenizeConfig | None = None, workers: int = 1) -> dict[str, Any]:
    """Tokenize document files (`.jsonl.gz`/`.jsonl`/`.parquet` as the pipeline writes them) into shards at `out`.

    Returns the token statistics (also kept in `index.json`). A finished `out` with the same inputs, tokenizer and
    config is left as it is, if every file its index lists is still there with its recorded size; else it is
    written again (a deleted shard must not pass for a finished run).
    """
    config = config or TokenizeConfig()
    out = check_output_folder(out)
    workers = check_workers(workers)
    inputs = _checked_inputs(inputs, Path(tokenizer_dir))
    tok = Tokenizer.load(tokenizer_dir)
    request = {"inputs": inputs, "tokenizer_hash": tok.hash, "config": asdict(config)}
    finished = _finished_run(out, request)
    if finished is not None:
        return finished
    remove_stale_temporaries(out)  # what a killed run left beside its shards
    work = _work_dir(out, request)
    t0 = time.perf_counter()
    threads = 1 if workers > 1 and len(inputs) > 1 else None
    tasks = [TokenizeTask(i, p, str(tokenizer_dir), str(work), config.batch_documents, threads,
                          asdict(config.reader_config())) for i, p in enumerate(inputs)]
    with LocalPool(min(workers, len(tasks))) as pool:
        per_file = pool(tokenize_file, tasks, "tokenize")
    parts = [work / f"{t.index:05d}.npz" for t in tasks]
    lengths_of, hashes_of = [], []
    for p in parts:  # the split needs only lengths and key hashes: the tokens stay on disk until written
        with np.load(p) as z:
            lengths_of.append(z["lengths"])
            hashes_of.append(z["hashes"])
    all_lengths = np.concatenate(lengths_of)
    if all_lengths.size == 0:
        raise LmforgeError(f"tokenize: the inputs hold no documents ({', '.join(inputs)})")
    is_val = choose_validation(all_lengths, np.concatenate(hashes_of), config)
    dtype_name = dtype_for_vocab(tok.vocab_size)
    writers = _write_shards(out, parts, lengths_of, is_val, DTYPES[dtype_name], config.shard_tokens)
    with atomic_path(out / "tokenizer") as tmp:
        shutil.copytree(tokenizer_dir, tmp)
    stats = {"shards_dir": str(out), "dtype": dtype_name, "vocab_size": int(tok.vocab_size),
             "train_tokens": int(all_lengths[~is_val].sum()), "val_tokens": int(all_lengths[is_val].sum()),
             "train_documents": int((~is_val).sum()), "val_documents": int(is_val.sum()),
             "train_shards": len(writers["train"].entries), "val_shards": len(writers["val"].entries),
             "seconds": round(time.perf_counter() - t0, 2),
             "tokens_per_second": round(float(all_lengths.sum()) / max(sum(r["seconds"] for r in per_file), 1e-9), 1)}
    index = make_index(dtype_name, tok.vocab_size, tok.special_tokens[BOS], tok.hash,
                       {"train": writers["train"].entries, "val": writers["val"].entries},
                       split_rule="validation = lowest blake2b(url without scheme and port, else id) hashes until "
                                  "val_fraction of tokens (>= min_val_tokens, <= max_val_fraction)",
                       request=request, stats=stats)
    write_json(out / "index.json", index)
    shutil.rmtree(work, ignore_errors=True)
    return stats


def _checked_inputs(inputs: list[str | Path], tokenizer_dir: Path) -> list[str]:
    """The input files as absolute paths (the run record must not depend on the working directory)."""
    if not tokenizer_dir.is_dir():
        raise LmforgeError(f"--tokenizer {tokenizer_dir}: not a tokenizer directory")
    resolved = [str(Path(p).resolve()) for p in inputs]
    if not resolved:
        raise LmforgeError("tokenize: no input document files")
    for p in resolved:
        if not Path(p).is_file():
            raise LmforgeError(f"tokenize: input file not found: {p}")
        if detect_format(p) == "warc" or p.lower().endswith((".html", ".htm", ".xhtml", ".html.gz", ".htm.gz")):
            raise LmforgeError(f"{p} holds web pages, not text: run `lmforge data run` on it first, which extracts "
                               "the text, and tokenize its documents")
    return resolved


def _finished_run(out: Path, request: dict) -> dict | None:
    """The statistics of a finished run of the same request at `out`, or None when there is none or when a file it
    lists is gone or has another size (then its index is removed and the run starts over)."""
    index_path = out / "index.json"
    if not index_path.is_file():
        return None
    index = read_json(index_path, "token shards index")
    if not isinstance(index, dict) or index.get("request") != request:
        raise LmforgeError(f"{out} holds shards of other inputs, tokenizer or settings ({index_path}); "
                           "use a new output directory")
    itemsize = np.dtype(DTYPES.get(index.get("dtype"), np.uint32)).itemsize
    for entry in [e for split in index.get("splits", {}).values() for e in split]:
        path = out / str(entry.get("file"))
        if not path.is_file() or path.stat().st_size != int(entry.get("tokens", -1)) * itemsize:
            print(f"lmforge tokenize: token shard {path} is missing or has the wrong size; writing the shards again",
                  file=sys.stderr)
            index_path.unlink()
            return None
    if not (out / "tokenizer").is_dir():
        print(f"lmforge tokenize: {out / 'tokenizer'} is missing; writing the shards again", file=sys.stderr)
        index_path.unlink()
        return None
    return index["stats"]


def _work_dir(out: Path, request: dict) -> Path:
    """The per-file results folder; a previous attempt with another request must not leave its results in it to be
    mistaken for ours."""
    work = out / ".work"
    work.mkdir(parents=True, exist_ok=True)
    req_path = work / "request.json"
    if req_path.is_file() and read_json(req_path, "tokenize request") != request:
        shutil.rmtree(work)
        work.mkdir(parents=True)
    write_json(req_path, request)
    return work


def _write_shards(out: Path, parts: list[Path], lengths_of: list[np.ndarray], is_val: np.ndarray, dtype,
                  shard_tokens: int) -> dict[str, ShardWriter]:
    """Write every document to its split's shards in input order, one input file's tokens in memory at a time."""
    writers = {s: ShardWriter(out, s, shard_tokens, dtype) for s in ("train", "val")}
    g = 0
    for p, lengths in zip(parts, lengths_of):
        with np.load(p) as z:
            tokens = z["tokens"]
        ends = np.cumsum(lengths)
        for start, end in zip(ends - lengths, ends):
            writers["val" if is_val[g] else "train"].add(tokens[start:end])
            g += 1
    for w in writers.values():
        w.flush()
    return writers

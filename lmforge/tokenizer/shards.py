"""Token shards: the artifact between `lmforge tokenize` and pretraining.

A shards directory holds:

- `train_00000.bin`, `train_00001.bin`, ... and `val_00000.bin`, ...: flat little-endian arrays of token ids,
  `uint16` when the vocabulary fits in 65,536 ids, else `uint32`. Every document starts with `<|bos|>`; documents
  follow each other with nothing in between (no EOS, no padding), so a reader may cut windows anywhere.
- `index.json`: `{"format": "lmforge-token-shards", "version": 1, "dtype", "vocab_size", "bos_id",
  "tokenizer_hash", "splits": {"train": [shard, ...], "val": [shard, ...]}, ...}` where a shard is
  `{"file": "train_00000.bin", "tokens": int, "documents": int, "doc_offsets": [int, ...]}` and `doc_offsets[i]`
  is the position of the i-th document's `<|bos|>` in that file (so `doc_offsets[0] == 0`).
- `tokenizer/`: a copy of the tokenizer directory the shards were written with (`Tokenizer.load` reads it);
  `tokenizer_hash` is its `Tokenizer.hash`, so a trainer can tell that a tokenizer was retrained.

The validation split is fixed by a hash of each document's URL (else its id), so it never changes between runs of
the same data.
`TokenShards` is the reading side: it memory-maps the files (nothing is read until used) and checks the index
against them up front, so a trainer fails at start with a message that names the file, not mid-run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from lmforge.tokenizer.tokenizer import Tokenizer
from lmforge.utils import LmforgeError, atomic_path, read_json

FORMAT = "lmforge-token-shards"
VERSION = 1
DTYPES = {"uint16": np.uint16, "uint32": np.uint32}


def dtype_for_vocab(vocab_size: int) -> str:
    """The smallest dtype that holds every id of the vocabulary (half the disk and bandwidth when it fits)."""
    return "uint16" if vocab_size <= 1 << 16 else "uint32"


@dataclass
class Shard:
    path: Path
    tokens: int
    doc_offsets: np.ndarray  # int64 positions of each document's <|bos|>

    @property
    def documents(self) -> int:
        return len(self.doc_offsets)


class TokenShards:
    """One split (`train` or `val`) of a shards directory, memory-mapped and validated.

    `shards` lists the files in order; `tokens(i)` is shard i as a read-only memmap; `num_tokens` is the split's
    total; `document(i, j)` and `iter_documents()` give document-aligned views (each starting with `bos_id`).
    Opening a split checks everything before use, naming the file: the index's counts, offsets and dtype against
    the file sizes, its vocabulary and <|bos|> against the tokenizer copy (`check_tokenizer`), and every id against
    the vocabulary (`validate(deep=True)`, one pass over the data: memory-mapped, so it costs reading, not memory).
    """

    def __init__(self, directory: str | Path, split: str = "train", check_tokenizer: bool = True):
        self.directory = Path(directory)
        index_path = self.directory / "index.json"
        index = read_json(index_path, "token shards index")
        if not isinstance(index, dict) or index.get("format") != FORMAT:
            raise LmforgeError(f"{index_path} is not an lmforge token shards index (format != {FORMAT!r})")
        if index.get("version") != VERSION:
            raise LmforgeError(f"{index_path}: unsupported version {index.get('version')!r} (this code reads {VERSION})")
        for key in ("dtype", "vocab_size", "bos_id", "tokenizer_hash", "splits"):
            if key not in index:
                raise LmforgeError(f"{index_path}: missing field {key!r}")
        if not isinstance(index["dtype"], str) or index["dtype"] not in DTYPES:
            raise LmforgeError(f"{index_path}: field 'dtype' is {index['dtype']!r}, expected uint16 or uint32")
        self.index = index
        self.split = split
        self.dtype = np.dtype(DTYPES[index["dtype"]])
        if not all(isinstance(index[k], int) and not isinstance(index[k], bool) for k in ("vocab_size", "bos_id")):
            raise LmforgeError(f"{index_path}: fields 'vocab_size' and 'bos_id' must be whole numbers")
        self.vocab_size = int(index["vocab_size"])
        self.bos_id = int(index["bos_id"])
        self.tokenizer_hash = str(index["tokenizer_hash"])
        if self.vocab_size > np.iinfo(self.dtype).max + 1:
            raise LmforgeError(f"{index_path}: vocab_size {self.vocab_size} does not fit dtype {index['dtype']}")
        if not 0 <= self.bos_id < self.vocab_size:
            raise LmforgeError(f"{index_path}: bos_id {self.bos_id} outside the vocabulary of {self.vocab_size}")
        splits = index["splits"]
        if not isinstance(splits, dict) or not all(isinstance(v, list) for v in splits.values()):
            raise LmforgeError(f"{index_path}: field 'splits' must map split names to lists of shards")
        if split not in splits:
            raise LmforgeError(f"{index_path}: no split {split!r} (has {sorted(splits)})")
        self.shards = [self._checked_shard(entry, index_path) for entry in splits[split]]
        self._maps: dict[int, np.ndarray] = {}
        if check_tokenizer:
            self._check_tokenizer(index_path)
        self.validate(deep=True)  # every id in range before use: a damaged shard is refused by name, at start

    def _checked_shard(self, entry: object, index_path: Path) -> Shard:
        """One index entry, checked against its file: a plain file name, counts that are whole numbers, a size
        that matches `tokens` x the dtype, offsets that start at 0 and increase inside the file."""
        if not isinstance(entry, dict) or not isinstance(entry.get("file"), str) or \
                Path(entry["file"]).name != entry["file"] or entry["file"].startswith("."):
            raise LmforgeError(f"{index_path}: a shard entry of split {self.split!r} has no plain 'file' name")
        path = self.directory / entry["file"]
        tokens, documents, offsets = entry.get("tokens"), entry.get("documents"), entry.get("doc_offsets")
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (tokens, documents)) or \
                not isinstance(offsets, list) or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets):
            raise LmforgeError(f"{index_path}: entry {entry['file']}: 'tokens', 'documents' and 'doc_offsets' must "
                               "be whole numbers >= 0")
        if not path.is_file():
            raise LmforgeError(f"token shard {path} listed in {index_path} is missing")
        size = path.stat().st_size
        if size != tokens * self.dtype.itemsize:
            raise LmforgeError(f"token shard {path} has {size} bytes, but {index_path} says {tokens} tokens of "
                               f"{self.dtype.name} ({tokens * self.dtype.itemsize} bytes): wrong dtype or truncated")
        arr = np.asarray(offsets, dtype=np.int64)
        if len(arr) != documents or (len(arr) and (arr[0] != 0 or arr[-1] >= tokens or np.any(np.diff(arr) <= 0))):
            raise LmforgeError(f"{index_path}: document offsets of {entry['file']} are inconsistent")
        return Shard(path, tokens, arr)

    def _check_tokenizer(self, index_path: Path) -> None:
        """The tokenizer copy must be the one the index names, and agree with it on the vocabulary and <|bos|>: an
        index that claims a larger vocabulary would let out-of-range ids through every later check."""
        tok_dir = self.tokenizer_dir
        if not tok_dir.is_dir():
            raise LmforgeError(f"token shards {self.directory} lack their tokenizer copy in {tok_dir}")
        tok = Tokenizer.load(tok_dir)
        if tok.hash != self.tokenizer_hash:
            raise LmforgeError(f"{tok_dir} does not match tokenizer_hash in {index_path} (tokenizer was changed)")
        if tok.vocab_size != self.vocab_size:
            raise LmforgeError(f"{index_path}: vocab_size {self.vocab_size} differs from the tokenizer's "
                               f"{tok.vocab_size} ({tok_dir})")
        if tok.special_tokens.get("<|bos|>") != self.bos_id:
            raise LmforgeError(f"{index_path}: bos_id {self.bos_id} is not the tokenizer's <|bos|> ({tok_dir})")

    @property
    def tokenizer_dir(self) -> Path:
        return self.directory / "tokenizer"

    @property
    def num_tokens(self) -> int:
        return sum(s.tokens for s in self.shards)

    @property
    def num_documents(self) -> int:
        return sum(s.documents for s in self.shards)

    def __len__(self) -> int:
        return len(self.shards)

    def tokens(self, i: int) -> np.ndarray:
        """Shard i as a read-only memmap (opened once, then cached)."""
        if i not in self._maps:
            shard = self.shards[i]
            self._maps[i] = (np.memmap(shard.path, dtype=self.dtype, mode="r", shape=(shard.tokens,))
                             if shard.tokens else np.zeros(0, dtype=self.dtype))
        return self._maps[i]

    def document(self, i: int, j: int) -> np.ndarray:
        """Document j of shard i, starting with its <|bos|>."""
        offsets = self.shards[i].doc_offsets
        end = offsets[j + 1] if j + 1 < len(offsets) else self.shards[i].tokens
        return self.tokens(i)[offsets[j]:end]

    def iter_documents(self) -> Iterator[np.ndarray]:
        for i, shard in enumerate(self.shards):
            for j in range(shard.documents):
                yield self.document(i, j)

    def validate(self, deep: bool = False) -> None:
        """Check that every document starts with <|bos|> and, if `deep`, that every id is inside the vocabulary."""
        for i, shard in enumerate(self.shards):
            arr = self.tokens(i)
            if shard.documents and np.any(arr[shard.doc_offsets] != self.bos_id):
                raise LmforgeError(f"token shard {shard.path}: a document offset does not point at <|bos|> "
                                   "(the shard is corrupt, or not the one its index describes)")
            if deep and shard.tokens:
                top = int(arr.max())
                if top >= self.vocab_size:
                    raise LmforgeError(f"token shard {shard.path}: token id {top} >= vocab_size {self.vocab_size} "
                                       "(the shard is corrupt)")


def write_shard(path: str | Path, tokens: np.ndarray) -> None:
    """Write one .bin shard atomically (a crash leaves no half shard that the index could point at)."""
    with atomic_path(path) as tmp:
        np.ascontiguousarray(tokens, dtype=tokens.dtype.newbyteorder("<")).tofile(tmp)


class ShardWriter:
    """Appends documents to `SPLIT_NNNNN.bin` files of at most `shard_tokens` tokens (a document is never split)."""

    def __init__(self, out: Path, split: str, shard_tokens: int, dtype: type[np.unsignedinteger]):
        self.out, self.split, self.shard_tokens, self.dtype = out, split, shard_tokens, dtype
        self.entries: list[dict] = []
        self.buf: list[np.ndarray] = []
        self.size = 0

    def add(self, doc_tokens: np.ndarray) -> None:
        if self.buf and self.size + len(doc_tokens) > self.shard_tokens:
            self.flush()
        self.buf.append(doc_tokens)
        self.size += len(doc_tokens)

    def flush(self) -> None:
        if not self.buf:
            return
        name = f"{self.split}_{len(self.entries):05d}.bin"
        lengths = np.array([len(b) for b in self.buf], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        write_shard(self.out / name, np.concatenate(self.buf).astype(self.dtype, copy=False))
        self.entries.append(shard_entry(name, int(lengths.sum()), offsets))
        self.buf, self.size = [], 0


def shard_entry(file: str, tokens: int, doc_offsets: list[int] | np.ndarray) -> dict:
    return {"file": file, "tokens": int(tokens), "documents": len(doc_offsets),
            "doc_offsets": [int(x) for x in doc_offsets]}


def make_index(dtype: str, vocab_size: int, bos_id: int, tokenizer_hash: str, splits: dict[str, list[dict]],
               **extra) -> dict:
    """The `index.json` object; `extra` (e.g. the split rule, the source files) is kept for the record."""
    return {"format": FORMAT, "version": VERSION, "dtype": dtype, "vocab_size": int(vocab_size), "bos_id": int(bos_id),
            "tokenizer_hash": tokenizer_hash, "splits": splits, **extra}

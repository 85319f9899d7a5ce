"""Deduplication across the whole dataset: exact (content hash) and near-duplicate MinHash (FineWeb's banding).

It runs in three stages so that it works across worker processes and machines without any of them seeing the
whole dataset at once (the same plan as datatrove's MinHash stages, written for numpy):

1. per shard (`signatures`): each document's 64-bit content hash and a MinHash signature of its word 5-grams,
   112 hashes = 14 bands x 8 rows. FineWeb's banding makes two documents collide in some band with probability
   1 - (1 - J^8)^14: ~50% at Jaccard similarity 0.72, ~92% at 0.8, ~0.1% at 0.4;
2. once, globally (`find_duplicates`): exact duplicates first (equal content hashes), then, for each band, rows of
   equal band values are collisions; union-find over collisions gives the clusters. One document per cluster is
   kept: the first in input order (lowest shard, then lowest position), which is deterministic whatever the number
   of workers;
3. per shard (`DedupFilter`): drop the documents stage 2 marked, recording the kept document each duplicates.

Hashing is vectorised: each word is hashed once (crc32, C speed), 5-grams combine word hashes with a polynomial
rolling hash and a 64-bit mixer in numpy, and the 112 permutations are multiply-add-shift hashes
(Dietzfelbinger), ((a * x + b) mod 2^64) >> 32, applied to all shingles of a document in one array operation.
"""

from __future__ import annotations

import hashlib
import re
import time
import zlib
from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np

from lmforge.data.base import DropHook, Step, StepStats
from lmforge.data.document import Document
from lmforge.utils import LmforgeError

_WORD_RE = re.compile(r"\w+")
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_ROLL = np.uint64(0x100000001B3)  # FNV-1a's 64-bit prime: an odd multiplier with well spread bits
NOT_REMOVED, EXACT, NEAR = 0, 1, 2
REASONS = {EXACT: "exact_duplicate", NEAR: "near_duplicate"}


@dataclass
class DedupConfig:
    """`{"step": "dedup", ...}` in a pipeline config. Defaults are FineWeb's: 5-grams, 14 bands of 8 hashes."""

    exact: bool = True
    minhash: bool = True
    ngram: int = 5
    bands: int = 14
    rows: int = 8
    seed: int = 1
    max_examples: int = 5

    @property
    def num_hashes(self) -> int:
        return self.bands * self.rows


class MinHasher:
    """MinHash signatures of word n-grams; identical parameters give identical signatures in every process."""

    def __init__(self, config: DedupConfig):
        self.config = config
        rng = np.random.default_rng(config.seed)
        # a must be odd for multiply-shift to be universal; b any 64-bit value.
        self.a = (rng.integers(0, 1 << 63, size=config.num_hashes, dtype=np.uint64) * np.uint64(2) + np.uint64(1))[:, None]
        self.b = rng.integers(0, 1 << 63, size=config.num_hashes, dtype=np.uint64)[:, None]
        self._chunk = max(1, (1 << 21) // config.num_hashes)  # bounds the [hashes, shingles] temporary to ~16 MB

    def shingle_hashes(self, text: str) -> np.ndarray:
        """32-bit hashes of the word n-grams of a simplified text (lower case, punctuation dropped)."""
        words = _WORD_RE.findall(text.lower())
        if not words:
            return np.zeros(0, dtype=np.uint64)
        w = np.fromiter(map(zlib.crc32, map(str.encode, words)), dtype=np.uint64, count=len(words))
        n = min(self.config.ngram, len(w))  # a text shorter than n words is one shingle of all its words
        m = len(w) - n + 1
        s = w[:m].copy()
        for k in range(1, n):
            s *= _ROLL
            s += w[k:k + m]
        s ^= s >> np.uint64(31)
        s *= _MIX1
        s ^= s >> np.uint64(29)
        s *= _MIX2
        s ^= s >> np.uint64(32)
        return s >> np.uint64(32)  # repeated shingles need no removal: they cannot change a minimum

    def signature(self, text: str) -> np.ndarray | None:
        """uint32[num_hashes], or None for a text without words (it cannot be compared by content)."""
        x = self.shingle_hashes(text)
        if len(x) == 0:
            return None
        out = np.full(self.config.num_hashes, np.iinfo(np.uint64).max, dtype=np.uint64)
        for i in range(0, len(x), self._chunk):
            h = self.a * x[None, i:i + self._chunk]
            h += self.b
            np.minimum(out, h.min(axis=1), out=out)
        return (out >> np.uint64(32)).astype(np.uint32)


def content_hash(text: str) -> int:
    """64-bit hash of the exact text (blake2b: stable across processes, unlike Python's `hash`)."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")


@dataclass
class ShardSignatures:
    """Stage 1's output for one shard: `STEM.sig.npz` (ids, content hashes) and `STEM.minhash.npy` (signatures).

    The signatures are loaded memory-mapped, and stage 2 reads them one band (8 columns) at a time, so its memory is
    about 32 bytes per document per band instead of 448 for whole signatures.
    """

    ids: np.ndarray  # str, document ids (recorded as `duplicate_of` in the removed documents' metadata)
    exact: np.ndarray  # uint64[n]
    minhash: np.ndarray  # uint32[n, num_hashes]; rows of documents without words are unused
    has_words: np.ndarray  # bool[n]
    labels: np.ndarray | None = None  # str, what the report shows for a document (its URL if it has one)
    seconds: float = 0.0  # time spent hashing (not saved)

    def save(self, stem) -> None:
        from pathlib import Path

        from lmforge.utils import atomic_path

        stem = Path(stem)
        with atomic_path(stem.with_name(stem.name + ".minhash.npy")) as tmp:
            np.save(tmp, self.minhash)
        with atomic_path(stem.with_name(stem.name + ".sig.npz")) as tmp:  # written last: the pair is complete
            with open(tmp, "wb") as f:
                np.savez(f, ids=self.ids, exact=self.exact, has_words=self.has_words,
                         labels=self.ids if self.labels is None else self.labels)

    @classmethod
    def load(cls, stem) -> "ShardSignatures":
        from pathlib import Path

        stem = Path(stem)
        with np.load(stem.with_name(stem.name + ".sig.npz"), allow_pickle=False) as z:
            ids, exact, has_words, labels = z["ids"], z["exact"], z["has_words"], z["labels"]
        minhash = np.load(stem.with_name(stem.name + ".minhash.npy"), mmap_mode="r")
        return cls(ids=ids, exact=exact, minhash=minhash, has_words=has_words, labels=labels)


def signatures(docs: Iterable[tuple[str, ...]], config: DedupConfig) -> ShardSignatures:
    """Stage 1 for one shard, from `(text, id)` or `(text, id, label)` tuples; streams its input (only the
    signatures are kept) and times only the hashing."""
    hasher = MinHasher(config)
    ids, labels, exact, sigs, has = [], [], [], [], []
    empty = np.zeros(config.num_hashes, dtype=np.uint32)
    seconds = 0.0
    for text, doc_id, *label in docs:
        t0 = time.perf_counter()
        ids.append(doc_id)
        labels.append(label[0] if label else doc_id)
        exact.append(content_hash(text) if config.exact else 0)
        sig = hasher.signature(text) if config.minhash else None
        has.append(sig is not None)
        sigs.append(empty if sig is None else sig)
        seconds += time.perf_counter() - t0
    n = len(ids)
    return ShardSignatures(ids=np.array(ids, dtype=str) if n else np.zeros(0, dtype="<U1"),
                           exact=np.array(exact, dtype=np.uint64),
                           minhash=np.stack(sigs) if n else np.zeros((0, config.num_hashes), dtype=np.uint32),
                           has_words=np.array(has, dtype=bool),
                           labels=np.array(labels, dtype=str) if n else np.zeros(0, dtype="<U1"), seconds=seconds)


def connected_components(n: int, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Label of each of n nodes = the smallest node of its component, for edges (x[i], y[i]); all numpy.

    Union-find without a Python loop per edge: hook every edge's larger label onto its smaller one, then jump
    pointers until the labels are stable. Each round at least halves the distance to the minimum, so a handful of
    rounds settle even long chains; near-duplicate clusters are small, so it is usually two or three.
    """
    labels = np.arange(n, dtype=np.int64)
    if len(x) == 0:
        return labels
    while True:
        lx, ly = labels[x], labels[y]
        m = np.minimum(lx, ly)
        new = labels.copy()
        for idx in (lx, ly, x, y):
            np.minimum.at(new, idx, m)
        while True:
            jumped = new[new]
            if np.array_equal(jumped, new):
                break
            new = jumped
        if np.array_equal(new, labels):
            return labels
        labels = new


def _equal_runs(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For a 1-D array, pairs (first index of a group of equal values, another index of that group)."""
    if len(keys) < 2:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    order = np.argsort(keys, kind="stable")
    s = keys[order]
    same = s[1:] == s[:-1]
    # for each sorted position, the position where its group of equal values begins
    starts = np.maximum.accumulate(np.where(np.concatenate([[True], ~same]), np.arange(len(s)), 0))
    dup = np.nonzero(np.concatenate([[False], same]))[0]
    return order[starts[dup]], order[dup]


def _band_collisions(band: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pairs of rows with identical band values. Rows are first folded into one 64-bit key (sorting one column
    is ~50x faster than a lexicographic sort of 8), then candidate pairs are checked on the full rows, so a key
    collision can never merge two different documents."""
    key = np.zeros(len(band), dtype=np.uint64)
    for k in range(band.shape[1]):
        key ^= band[:, k].astype(np.uint64)
        key *= _MIX1
        key ^= key >> np.uint64(29)
    first, other = _equal_runs(key)
    same = np.all(band[first] == band[other], axis=1)
    return first[same], other[same]


@dataclass
class DuplicateResult:
    """Stage 2's output: per global document index (shards in input order), why it is removed and what it duplicates."""

    reason: np.ndarray  # int8[N]: NOT_REMOVED, EXACT or NEAR
    duplicate_of: np.ndarray  # str[N]: id of the kept document of its cluster ("" when kept)
    offsets: np.ndarray  # int64[num_shards + 1]: global index of each shard's first document
    stats: dict

    def shard(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = self.offsets[k], self.offsets[k + 1]
        return self.reason[lo:hi], self.duplicate_of[lo:hi]

    def save_shards(self, directory) -> None:
        """One small file per shard (`NNNNN.npz`), so that each stage-3 task loads only its own decisions."""
        from pathlib import Path

        from lmforge.utils import atomic_path

        for k in range(len(self.offsets) - 1):
            reason, duplicate_of = self.shard(k)
            with atomic_path(Path(directory) / f"{k:05d}.npz") as tmp:
                with open(tmp, "wb") as f:
                    np.savez(f, reason=reason, duplicate_of=duplicate_of)


def load_shard_decisions(path) -> tuple[np.ndarray, np.ndarray]:
    """(reason, duplicate_of) of one shard, as `DuplicateResult.save_shards` wrote them."""
    with np.load(path, allow_pickle=False) as z:
        return z["reason"], z["duplicate_of"]


def find_duplicates(shards: list[ShardSignatures], config: DedupConfig) -> DuplicateResult:
    """Cluster exact and near duplicates over all shards at once and pick one document per cluster."""
    sizes = [len(s.ids) for s in shards]
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    n = int(offsets[-1])
    ids = np.concatenate([s.ids for s in shards]) if n else np.zeros(0, dtype="<U1")
    labels = np.concatenate([s.ids if s.labels is None else s.labels for s in shards]) if n else ids
    reason = np.zeros(n, dtype=np.int8)
    kept_as = np.arange(n, dtype=np.int64)
    examples: list[dict] = []

    def record(kind: str, kept: np.ndarray, removed: np.ndarray) -> int:
        heads, sizes = np.unique(kept, return_counts=True)
        for h in heads[np.argsort(-sizes, kind="stable")][: config.max_examples]:  # the largest clusters
            members = removed[kept == h]
            examples.append({"kind": kind, "size": len(members) + 1, "kept": str(labels[h]),
                             "removed": [str(v) for v in labels[members][: config.max_examples]]})
        return len(heads)

    exact_clusters = near_clusters = 0
    if config.exact and n:
        first, other = _equal_runs(np.concatenate([s.exact for s in shards]))
        reason[other] = EXACT
        kept_as[other] = first
        exact_clusters = record("exact", first, other)

    if config.minhash and n:
        live_mask = np.concatenate([s.has_words for s in shards]) & (reason == NOT_REMOVED)
        live = np.nonzero(live_mask)[0]
        local = [np.nonzero(live_mask[offsets[k]:offsets[k + 1]])[0] for k in range(len(shards))]
        r = config.rows
        edges = []
        for b in range(config.bands):  # one band in memory at a time
            band = np.concatenate([np.asarray(s.minhash[rows, b * r:(b + 1) * r]) if len(rows) else
                                   np.zeros((0, r), np.uint32) for s, rows in zip(shards, local)])
            edges.append(_band_collisions(band))
        x = np.concatenate([e[0] for e in edges])
        y = np.concatenate([e[1] for e in edges])
        roots = connected_components(len(live), x, y)
        removed = np.nonzero(roots != np.arange(len(live)))[0]
        reason[live[removed]] = NEAR
        kept_as[live[removed]] = live[roots[removed]]
        near_clusters = record("near", live[roots[removed]], live[removed])

    kept_as = kept_as[kept_as]  # an exact copy of a document removed as a near duplicate points at the one kept
    duplicate_of = np.where(reason != NOT_REMOVED, ids[kept_as] if n else ids, "")
    stats = {"documents": n, "exact_clusters": exact_clusters, "exact_removed": int((reason == EXACT).sum()),
             "near_clusters": near_clusters, "near_removed": int((reason == NEAR).sum()), "examples": examples}
    return DuplicateResult(reason=reason, duplicate_of=duplicate_of, offsets=offsets, stats=stats)


class DedupFilter(Step):
    """Stage 3: drop the documents of one shard that stage 2 marked, in the order stage 1 wrote them."""

    name = "dedup"

    def __init__(self, reason: np.ndarray, duplicate_of: np.ndarray):
        self.reason = reason
        self.duplicate_of = duplicate_of

    def process(self, docs: Iterable[Document], stats: StepStats, on_drop: DropHook | None) -> Iterator[Document]:
        n = 0
        for i, doc in enumerate(docs):
            n += 1
            if i >= len(self.reason):
                break
            code = int(self.reason[i])
            if code == NOT_REMOVED:
                yield doc
                continue
            label = REASONS[code]
            doc.metadata["duplicate_of"] = str(self.duplicate_of[i])
            stats.drop(doc, label)
            if on_drop is not None:
                on_drop(doc, self.name, label)
        if n != len(self.reason):
            raise LmforgeError(f"dedup: a shard has {n} documents but its signatures {len(self.reason)}: "
                               "the stage 1 output changed after deduplication; delete the run's work/ folder")

"""Batches of token windows from the token shards, deterministic for a seed, sharded across ranks, prefetched.

Micro-batch k is a pure function of (seed, k): a fresh generator seeded with both picks `batch_size * world_size`
window starts over the whole split, and rank r takes rows [r * batch_size, (r + 1) * batch_size). So the loader's
whole state is one counter (exact resume is trivial), and K processes see together exactly the rows that one
process with K times the batch sees (the DDP test relies on it). Windows are random positions (every token is a
possible start) or document-aligned (each window starts at a document's `<|bos|>`).

Any object with `next_batch() -> (x, y)`, `state_dict()` and `load_state_dict()` can feed the trainer (SFT's
packed conversations do); this is the one for pretraining.
"""

from __future__ import annotations

import random
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Iterator

import numpy as np
import torch

from lmforge.tokenizer.shards import TokenShards
from lmforge.utils import LmforgeError


def check_shards_fit(shards: TokenShards, vocab_size: int, seq_len: int, block_size: int) -> None:
    """Refuse, naming the files, shards the model cannot read: ids beyond its vocabulary or a too-long context."""
    where = shards.directory / "index.json"
    if shards.vocab_size > vocab_size:
        raise LmforgeError(f"token shards {where} use a vocabulary of {shards.vocab_size} ids but the model has "
                           f"{vocab_size}: tokenizer and model do not match")
    if seq_len > block_size:
        raise LmforgeError(f"--seq-len {seq_len} is longer than the model's block_size {block_size}")
    if max((s.tokens for s in shards.shards), default=0) < seq_len + 1:
        raise LmforgeError(f"token shards {where}: no {shards.split} shard holds {seq_len + 1} tokens "
                           f"(context {seq_len} + 1); use a shorter context or more data")


class ShardBatches:
    """Random (or document-aligned) training windows; `next_batch()` -> (x, y) int64 tensors of (batch, seq_len)."""

    def __init__(self, shards: TokenShards, batch_size: int, seq_len: int, seed: int = 0, rank: int = 0,
                 world_size: int = 1, align: str = "random", device: str | torch.device = "cpu",
                 prefetch: bool = True) -> None:
        if align not in ("random", "bos"):
            raise LmforgeError(f"unknown window alignment {align!r}; choose 'random' or 'bos'")
        self.shards, self.batch_size, self.seq_len = shards, batch_size, seq_len
        self.seed, self.rank, self.world_size, self.align = seed, rank, world_size, align
        self.device = torch.device(device)
        self.batches = 0  # micro-batches handed out so far: the loader's whole state
        span = seq_len + 1
        if align == "random":
            counts = np.array([max(0, s.tokens - span + 1) for s in shards.shards], dtype=np.int64)
            self._starts = None
        else:
            per_shard = [s.doc_offsets[s.doc_offsets + span <= s.tokens] for s in shards.shards]
            self._starts = [np.asarray(p, dtype=np.int64) for p in per_shard]
            counts = np.array([len(p) for p in per_shard], dtype=np.int64)
        if counts.sum() == 0:
            raise LmforgeError(f"token shards {shards.directory}: split {shards.split!r} has no window of "
                               f"{span} tokens ({align} alignment)")
        self._cum = np.cumsum(counts)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="batches") if prefetch else None
        self._pending: tuple[int, Future] | None = None

    def _make(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.Generator(np.random.PCG64([self.seed, k]))
        picks = rng.integers(0, int(self._cum[-1]), size=self.batch_size * self.world_size)
        picks = picks[self.rank * self.batch_size:(self.rank + 1) * self.batch_size]
        shard_ids = np.searchsorted(self._cum, picks, side="right")
        local = picks - np.concatenate([[0], self._cum[:-1]])[shard_ids]
        span = self.seq_len + 1
        rows = np.empty((self.batch_size, span), dtype=np.int64)
        for r, (s, i) in enumerate(zip(shard_ids, local)):
            start = int(i) if self._starts is None else int(self._starts[s][i])
            rows[r] = self.shards.tokens(int(s))[start:start + span]
        if rows.max() >= self.shards.vocab_size:  # a damaged shard: refuse it by name instead of a CUDA/index error
            bad = int(shard_ids[int(np.argmax(rows.max(axis=1) >= self.shards.vocab_size))])
            raise LmforgeError(f"token shard {self.shards.shards[bad].path} holds an id >= its index's vocab_size "
                               f"{self.shards.vocab_size}: the shard is corrupt")
        t = torch.from_numpy(rows)
        if self.device.type == "cuda":
            t = t.pin_memory()
        return t[:, :-1], t[:, 1:]

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        k = self.batches
        if self._pending is not None and self._pending[0] == k:
            x, y = self._pending[1].result()
        else:
            x, y = self._make(k)
        self.batches = k + 1
        if self._pool is not None:
            self._pending = (k + 1, self._pool.submit(self._make, k + 1))
        return x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    def state_dict(self) -> dict:
        return {"batches": self.batches, "seed": self.seed, "world_size": self.world_size,
                "batch_size": self.batch_size, "seq_len": self.seq_len, "align": self.align}

    def load_state_dict(self, state: dict) -> None:
        for key in ("seed", "world_size", "batch_size", "seq_len", "align"):
            if state.get(key) != getattr(self, key):
                raise LmforgeError(f"cannot resume the data loader: its {key} was {state.get(key)!r}, now "
                                   f"{getattr(self, key)!r} (resume with the settings of the interrupted run)")
        self.batches = int(state["batches"])
        self._pending = None


class ValidationWindows:
    """Consecutive, non-overlapping windows over the validation split, split across ranks; the same every call.

    Consecutive windows make the targets tile the split, so the evaluation counts each token (and its bytes) once.
    `max_batches` bounds the cost in global batches (0 = the whole split, less a last partial batch).
    """

    def __init__(self, shards: TokenShards, batch_size: int, seq_len: int, max_batches: int = 0, rank: int = 0,
                 world_size: int = 1, device: str | torch.device = "cpu") -> None:
        self.shards, self.batch_size, self.seq_len = shards, batch_size, seq_len
        self.max_batches, self.rank, self.world_size = max_batches, rank, world_size
        self.device = torch.device(device)
        self.windows = [(i, start) for i, s in enumerate(shards.shards)
                        for start in range(0, s.tokens - seq_len, seq_len)]
        if not self.windows:
            raise LmforgeError(f"token shards {shards.directory}: split {shards.split!r} has no window of "
                               f"{seq_len + 1} tokens for validation")

    def __call__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        # Global batches of batch_size * world_size windows, rank r taking its slice of each: K processes score
        # exactly the windows one process with K times the batch scores.
        per_global = self.batch_size * self.world_size
        n_batches = max(1, len(self.windows) // per_global)
        if self.max_batches:
            n_batches = min(n_batches, self.max_batches)
        for b in range(n_batches):
            lo = b * per_global + self.rank * self.batch_size
            chunk = self.windows[lo:lo + self.batch_size]
            if not chunk:
                continue
            rows = np.stack([self.shards.tokens(i)[s:s + self.seq_len + 1] for i, s in chunk]).astype(np.int64)
            t = torch.from_numpy(rows).to(self.device)
            yield t[:, :-1], t[:, 1:]


class LengthGroupedBatches:
    """Rows of examples in an order fixed by (seed, epoch), batched by length so little is padding: each epoch
    shuffles, sorts groups of `group_batches` batches by length, and shuffles the batches. Its position (epoch,
    batch) is saved with every checkpoint, so a resume is exact. Subclasses turn the rows into a batch
    (`next_batch`); SFT's conversations and the preference pairs share this order."""

    what = "examples"  # named in the refusal to resume on other data

    def __init__(self, lengths: list[int], batch_size: int, seed: int = 0, group_batches: int = 16) -> None:
        self.lengths, self.batch_size, self.seed, self.group_batches = lengths, batch_size, seed, group_batches
        self.epoch, self.index = 0, 0
        self._order: list[list[int]] | None = None

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        rng = random.Random(self.seed * 1_000_003 + epoch)
        perm = list(range(len(self.lengths)))
        rng.shuffle(perm)
        group = self.batch_size * self.group_batches
        batches: list[list[int]] = []
        for g in range(0, len(perm), group):
            chunk = sorted(perm[g:g + group], key=lambda i: self.lengths[i])
            part = [chunk[i:i + self.batch_size] for i in range(0, len(chunk), self.batch_size)]
            rng.shuffle(part)
            batches.extend(part)
        return batches

    def next_rows(self) -> list[int]:
        if self._order is None:
            self._order = self.epoch_batches(self.epoch)
        if self.index >= len(self._order):
            self.epoch, self.index = self.epoch + 1, 0
            self._order = self.epoch_batches(self.epoch)
        rows = self._order[self.index]
        self.index += 1
        return rows

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "index": self.index, "seed": self.seed, "n": len(self.lengths)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("n") != len(self.lengths) or state.get("seed") != self.seed:
            raise LmforgeError(f"resuming on different data ({state.get('n')} {self.what}, seed "
                               f"{state.get('seed')} in the checkpoint; now {len(self.lengths)}, seed {self.seed})")
        self.epoch, self.index, self._order = int(state["epoch"]), int(state["index"]), None

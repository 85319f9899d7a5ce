"""The server's KV cache: a fixed pool of slot rows, one per running sequence, and a cache of shared prompt prefixes.

The engine's `KVCache` keeps one fill level for a whole batch, which suits a batch that starts together. A server's
batch changes at every step: requests join and leave (continuous batching, the vLLM/SGLang idea), so each row has its
own length. `SlotPool` holds `slots` rows of the model's context; a sequence owns one row from admission to finish and
nothing else, so memory is bounded by the pool, never reserved per request beyond its row. Running rows are kept in
the pool's first rows (a finished row's place is filled by moving a later row down, a copy of its filled columns
only), so each decode step runs over one contiguous view of the pool.

`SlotView` is that view as a `KVCache` for `GPT.infer`: the same forward, mask builder (`attention_mask`, with a
per-row start) and cache interface as the engine, except that each row writes its new keys/values at its own
length and reads only its filled columns. Positions are columns (every row starts at column 0), so RoPE and learned
positions are exactly those of the row run alone.
"""

from __future__ import annotations

from collections import OrderedDict

import torch

from lmforge.model import GPTConfig, KVCache, attention_mask


class SlotView(KVCache):
    """Rows `first..first+count` of a pool as a KV cache whose rows are filled to their own `lengths`.

    A forward over T new tokens per row writes them at columns lengths[r]..lengths[r]+T-1 of row r and attends over
    the columns up to each query (older columns of a row are always its own tokens; columns beyond belong to a
    previous occupant, or to the padding of a batched prefill, and are masked). T > 1 is a batched prefill: rows of
    several prompt lengths, right-padded to T; a padding token's key lands past its row's prompt, where the row's
    decode steps overwrite it before any query can see it.
    """

    def __init__(self, pool: "SlotPool", first: int, lengths: list[int], T: int) -> None:  # noqa: D107
        count = len(lengths)
        if max(lengths) + T > pool.width:
            raise ValueError(f"a forward of {T} tokens from column {max(lengths)} passes the slots' {pool.width}")
        self.k, self.v, self.valid = pool.rows(first, count)
        self.max_len = pool.width
        self.starts = torch.tensor(lengths, device=pool.valid.device)
        self.first_start = lengths[0]
        self.uniform = min(lengths) == max(lengths)
        _, heads, _, head_dim = pool.k[0].shape
        # Where each row's new keys/values go, as a scatter index along the slot axis (one kernel per layer); rows
        # that all start at one column take a plain slice instead.
        self.index = None
        if T == 1:  # a decode step, the hot path: no arange
            self.index = self.starts.view(-1, 1, 1, 1).expand(count, heads, 1, head_dim)
        elif not self.uniform:
            columns = self.starts.view(-1, 1) + torch.arange(T, device=self.starts.device)
            self.index = columns.view(count, 1, T, 1).expand(count, heads, T, head_dim)
        self.width = max(lengths) + T  # columns any query of this forward can see
        self.length = 0  # the batch-wide fill level of the engine's cache; unused here (rows have their own)
        self.holes = True

    def mask(self, T: int) -> torch.Tensor | None:
        """None where plain attention over the `width` columns is already right (SDPA's fastest path): one query
        per row and every row filled to the same length (one stream, or the n samples of one prompt), or a
        prefill from column 0 in every row (causal: a row's padding comes after its prompt, which never sees it)."""
        if self.uniform and (T == 1 or self.first_start == 0):
            return None
        return attention_mask(self.valid, self.starts.view(-1, 1, 1, 1), T, self.width)

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor, at: int | torch.Tensor,
              T: int) -> tuple[torch.Tensor, torch.Tensor]:
        kc, vc = self.k[layer], self.v[layer]
        if self.index is not None:
            kc.scatter_(2, self.index, k)
            vc.scatter_(2, self.index, v)
        else:
            s = self.first_start
            kc[:, :, s:s + T] = k
            vc[:, :, s:s + T] = v
        return kc[:, :, :self.width], vc[:, :, :self.width]


class SlotPool:
    """`slots` rows of keys and values spanning the model's whole context."""

    def __init__(self, config: GPTConfig, slots: int, device: torch.device | str, dtype: torch.dtype) -> None:
        self.slots, self.width = slots, config.block_size
        shape = (slots, config.n_kv_head, config.block_size, config.head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.valid = torch.ones(slots, config.block_size, dtype=torch.bool, device=device)  # rows are never padded
        self._row_views: dict[tuple[int, int], tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]] = {}

    def rows(self, first: int, count: int) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
        """Views of rows first..first+count of every layer's keys and values and of `valid`, made once per range
        (at most slots^2 ranges): decode steps ask for the same range step after step, so need not slice 2 x layers
        tensors anew each time."""
        views = self._row_views.get((first, count))
        if views is None:
            rows = slice(first, first + count)
            views = self._row_views[first, count] = ([k[rows] for k in self.k], [v[rows] for v in self.v],
                                                      self.valid[rows])
        return views

    def view(self, first: int, lengths: list[int], T: int) -> SlotView:
        return SlotView(self, first, lengths, T)

    def move(self, src: int, dst: int, columns: int) -> None:
        """Copy the first `columns` columns of row src to row dst (compaction, or n samples sharing one prefill)."""
        for k, v in zip(self.k, self.v):
            k[dst, :, :columns] = k[src, :, :columns]
            v[dst, :, :columns] = v[src, :, :columns]

    def read(self, row: int, columns: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Copies of one row's first columns (a prefix to keep)."""
        return ([k[row, :, :columns].clone() for k in self.k], [v[row, :, :columns].clone() for v in self.v])

    def load(self, row: int, keys: list[torch.Tensor], values: list[torch.Tensor]) -> None:
        """Write a kept prefix into the first columns of a row."""
        columns = keys[0].size(1)
        for k, v, pk, pv in zip(self.k, self.v, keys, values):
            k[row, :, :columns] = pk
            v[row, :, :columns] = pv


class PrefixCache:
    """Keys and values of shared prompt prefixes (a chat's system prompt), least recently used first out.

    A hit copies the prefix into the new row instead of running the model over it. On a miss the scheduler runs
    the prefix alone first and keeps it, so a prompt computes the same numbers whether or not its prefix was cached.
    """

    def __init__(self, entries: int) -> None:
        self.entries = entries
        self._kept: OrderedDict[tuple[int, ...], tuple[list[torch.Tensor], list[torch.Tensor]]] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, prefix: tuple[int, ...]) -> tuple[list[torch.Tensor], list[torch.Tensor]] | None:
        kept = self._kept.get(prefix)
        if kept is None:
            self.misses += 1
            return None
        self._kept.move_to_end(prefix)
        self.hits += 1
        return kept

    def put(self, prefix: tuple[int, ...], kv: tuple[list[torch.Tensor], list[torch.Tensor]]) -> None:
        if self.entries <= 0:
            return
        self._kept[prefix] = kv
        self._kept.move_to_end(prefix)
        while len(self._kept) > self.entries:
            self._kept.popitem(last=False)

"""The scheduler's decode step compiled once per batch bucket (`lmforge serve --compile`).

On a CPU a small model's decode step is bound by per-operation overhead (about a hundred small aten calls, each a
few microseconds), not by arithmetic; torch.compile's inductor fuses the norms, RoPE and SwiGLU's elementwise work
into generated C++ and drops the dispatch. A compiled graph needs fixed shapes, and a server's batch changes every
step, so the step here has static ones: the running rows padded to the next bucket (1, 2, 4, ... slots), attention
over the slot pool's whole width under a mask built in the graph from each row's column, new keys and values
scattered at those columns. Each bucket is compiled at start-up (`warm`), never per request; rows past the running
ones are free pool rows, whose scratch writes nothing reads. The forward is `GPT.infer`'s static decode step (its
`slot` argument), the one forward of the model.
"""

from __future__ import annotations

import sys
from typing import Any, Callable

import torch
import torch._dynamo

from lmforge.model import GPT, KVCache
from lmforge.serve.slots import SlotPool


class StaticSlots(KVCache):
    """The pool's first `rows` rows over their whole width, as the cache of `GPT.infer`'s static decode step: each
    row's new key/value lands at its own column (`at`, shaped (rows, 1, 1, 1)); attention reads every column, the
    mask (built by `infer` from `valid` and `at`) hiding those past the row's own."""

    def __init__(self, pool: SlotPool, rows: int) -> None:  # noqa: D107
        self.k, self.v, self.valid = pool.rows(0, rows)
        self.max_len, self.length, self.holes = pool.width, 0, True

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor, at: int | torch.Tensor,
              T: int) -> tuple[torch.Tensor, torch.Tensor]:
        kc, vc = self.k[layer], self.v[layer]
        index = at.expand(k.size(0), k.size(1), 1, k.size(3))
        kc.scatter_(2, index, k)
        vc.scatter_(2, index, v)
        return kc, vc


def buckets(slots: int) -> list[int]:
    """Batch sizes compiled: powers of two below `slots`, and `slots`."""
    sizes, b = [], 1
    while b < slots:
        sizes.append(b)
        b *= 2
    return sizes + [slots]


class CompiledDecode:
    """`GPT.infer`'s static decode step over a slot pool, one compiled graph per bucket.

    dynamic=False keeps every size a constant of its graph (automatic dynamic shapes would make the head counts
    symbolic at the first recompile, the `enable_gqa ... SymBool` failure); dynamo's recompile limit is raised to
    cover every bucket of every model compiled in the process, so a second model or bucket never falls back to
    eager behind the caller's back."""

    compiled_graphs = 0  # buckets compiled in this process, all models together (dynamo's cache is per function)

    def __init__(self, model: GPT, pool: SlotPool, backend: str | Callable = "inductor") -> None:
        self.model, self.pool = model, pool
        self.sizes = buckets(pool.slots)
        self.caches = {b: StaticSlots(pool, b) for b in self.sizes}
        CompiledDecode.compiled_graphs += len(self.sizes)
        limit = torch._dynamo.config.recompile_limit
        torch._dynamo.config.recompile_limit = max(limit, CompiledDecode.compiled_graphs)
        self.step = torch.compile(model.infer, fullgraph=True, dynamic=False, backend=backend)

    def warm(self, weights: Any, say: Callable[[str], None] = lambda line: print(line, file=sys.stderr,
                                                                                   flush=True)) -> None:
        """Compile every bucket now, with a progress line each (a bucket takes seconds to tens of seconds)."""
        device = self.pool.valid.device
        for i, b in enumerate(self.sizes, start=1):
            say(f"lmforge serve: compiling the decode step for {b} row(s) ({i}/{len(self.sizes)})")
            self(torch.zeros(b, 1, dtype=torch.long, device=device), [0] * b, weights)

    def __call__(self, tokens: torch.Tensor, lengths: list[int], weights: Any) -> torch.Tensor:
        """Logits (rows, V) of one decode step: row r's token `tokens[r]` at column `lengths[r]` of pool row r."""
        rows = len(lengths)
        b = next(size for size in self.sizes if size >= rows)
        columns = torch.zeros(b, dtype=torch.long, device=tokens.device)
        columns[:rows] = torch.tensor(lengths, device=tokens.device)
        if b > rows:
            tokens = torch.cat([tokens, tokens.new_zeros(b - rows, 1)])
        at = columns.view(b, 1, 1, 1)
        return self.step(tokens, columns[:, None], self.caches[b], weights, at)[:rows]

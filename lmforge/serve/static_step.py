"""The scheduler's decode step compiled once per batch bucket (`lmforge serve --compile`).

On a CPU a small model's decode step is bound by per-operation overhead (about a hundred small aten calls, each a
few microseconds), not by arithmetic; torch.compile's inductor fuses the norms, RoPE and SwiGLU's elementwise work
into generated C++ and drops the dispatch. A compiled graph needs fixed shapes, and a server's batch changes every
step, so the step here has static ones: the running rows padded to the next bucket (1, 2, 4, ... slots), attention
over the slot pool's whole width under a mask built in the graph from each row's column, new keys and values
written at those columns by indexing (inductor turned a `scatter_` into the pool into a copy of the whole cache:
2.5x the eager step at 16 rows). Each bucket is compiled at start-up (`warm`), never per request, and timed against
the eager step; the faster one serves that bucket. Rows past the running ones are free pool rows, whose scratch
writes nothing reads. The forward is `GPT.infer`'s static decode step (its `slot` argument), the one forward.
Inductor's fused kernels may round differently from eager in the last bits (greedy tokens of the speedrun's
assistant came out equal), and a graph holds the prepared weights it was compiled with: for serving fixed weights.
"""

from __future__ import annotations

import sys
import time
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
        self.row_ids = torch.arange(rows, device=pool.valid.device)

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor, at: int | torch.Tensor,
              T: int) -> tuple[torch.Tensor, torch.Tensor]:
        kc, vc = self.k[layer], self.v[layer]
        columns = at.view(-1)
        kc[self.row_ids, :, columns] = k[:, :, 0]
        vc[self.row_ids, :, columns] = v[:, :, 0]
        return kc, vc


def buckets(slots: int) -> list[int]:
    """Batch sizes compiled: powers of two below `slots`, and `slots`."""
    sizes, b = [], 1
    while b < slots:
        sizes.append(b)
        b *= 2
    return sizes + [slots]


def timed(step: Callable[[], Any], sync: Callable[[], Any], repeats: int = 5, steps: int = 10) -> float:
    """Seconds a step takes, best of `repeats` runs of `steps` (the best resists other processes' load); `sync`
    waits for the device (CUDA runs asynchronously)."""
    best = float("inf")
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        for _ in range(steps):
            step()
        sync()
        best = min(best, (time.perf_counter() - start) / steps)
    return best


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
        self.chosen: dict[int, bool] = {}  # bucket -> compiled step measured faster than the eager one

    def warm(self, weights: Any, say: Callable[[str], None] = lambda line: print(line, file=sys.stderr,
                                                                                   flush=True)) -> None:
        """Compile every bucket now, with a progress line each (a bucket takes seconds to tens of seconds), and
        time it against the eager step over the same rows: a bucket whose compiled step is not faster is left to
        the eager one (`pays`). On the reference CPU the compiled step won at one row and lost at 16."""
        device = self.pool.valid.device
        column = self.pool.width // 4  # a typical fill: attention's share grows with it in the eager step only
        sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        for i, b in enumerate(self.sizes, start=1):
            say(f"lmforge serve: compiling the decode step for {b} row(s) ({i}/{len(self.sizes)})")
            tokens = torch.zeros(b, 1, dtype=torch.long, device=device)
            self(tokens, [column] * b, weights)
            compiled = timed(lambda: self(tokens, [column] * b, weights), sync)
            eager = timed(lambda: self.model.infer(tokens, tokens + column, self.pool.view(0, [column] * b, 1),
                                                   weights), sync)
            self.chosen[b] = compiled < eager
            say(f"lmforge serve: {b} row(s): compiled {compiled * 1e6:.0f} us, eager {eager * 1e6:.0f} us a step")

    def pays(self, rows: int) -> bool:
        """Whether the bucket of `rows` runs compiled (measured faster at start-up)."""
        return self.chosen.get(self.bucket(rows), False)

    def bucket(self, rows: int) -> int:
        """The smallest compiled batch size that holds `rows` running rows."""
        return next(size for size in self.sizes if size >= rows)

    def __call__(self, tokens: torch.Tensor, lengths: list[int], weights: Any) -> torch.Tensor:
        """Logits (rows, V) of one decode step: row r's token `tokens[r]` at column `lengths[r]` of pool row r."""
        rows = len(lengths)
        b = self.bucket(rows)
        columns = torch.zeros(b, dtype=torch.long, device=tokens.device)
        columns[:rows] = torch.tensor(lengths, device=tokens.device)
        if b > rows:
            tokens = torch.cat([tokens, tokens.new_zeros(b - rows, 1)])
        at = columns.view(b, 1, 1, 1)
        return self.step(tokens, columns[:, None], self.caches[b], weights, at)[:rows]

"""RL's training and scoring forward: rollouts laid out as a batch, and the policy's (or reference's) log-probs of
the sampled tokens, with each group's shared prompt run once.

A GRPO batch holds G responses to each prompt, so its rows repeat one prompt G times (in `bench_rl.py`'s GRPO
batches the prompts are about 40% of the input tokens). `sampled_hidden` therefore runs a group's prompt once: a
forward over the distinct prompts of the rows (right-padded; `GPT.hidden` with a `KVCache`), whose keys and values
`_RowsAfterPrompt` selects for the G rows, then a forward over each row's own part, from the last prompt token (the
position that predicts the first response token) to its end, attending over its prompt's keys. Under autograd the
selection is an `index_select`, so each prompt position's gradient is the sum over its rows, as in the unshared forward:
the log-probs, the loss and the gradients equal the plain forward's to float rounding (tests/test_rl_forward.py).
A part where no two rows share a prompt runs the plain forward (`pairs_batches.final_hidden`). Rows much longer
than the rest (a tool call gives a response a fresh token budget) run in a forward of their own (`length_chunks`),
so the others are not padded to their length.

Every pass over one set of rows (the reference's, the old policy's, a minibatch's first training forward) lays
the rows out identically, so their results agree bit for bit where the weights do.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Iterator

import torch

from lmforge.inference.sampling import SamplingParams
from lmforge.model import GPT, KVCache
from lmforge.posttrain import rl_losses as L
from lmforge.posttrain.pairs_batches import final_hidden
from lmforge.posttrain.rl_rollout import Rollout


@dataclass
class Batch:
    """Rollouts laid out for the training forward: x (B, T) inputs, targets (B, T) the token each position
    predicts, mask (B, T) 1 where that token was sampled by the policy, engine (B, T) the engine's log-probs,
    valid (B, T) True on real (not padding) inputs, start (B,) the position of each row's last prompt token (the
    first that predicts a response token), prompt (B,) an id shared by the rows whose prompts are equal."""

    x: torch.Tensor
    targets: torch.Tensor
    mask: torch.Tensor
    engine: torch.Tensor
    valid: torch.Tensor
    start: torch.Tensor
    prompt: torch.Tensor

    def rows(self, idx: torch.Tensor) -> "Batch":
        """These rows, cut to the longest of them (right padding past every row's end is wasted work)."""
        width = int(self.valid[idx].sum(1).max())
        return Batch(*(t[idx, :width] for t in (self.x, self.targets, self.mask, self.engine, self.valid)),
                     self.start[idx], self.prompt[idx])


def build_batch(rollouts: list[Rollout], pad_id: int) -> Batch:
    """Prompt + response ids of every rollout, right-padded (causal attention never looks right, so padding at the
    end changes no real position)."""
    T = max(len(r.prompt_ids) + len(r.response_ids) for r in rollouts) - 1
    B = len(rollouts)
    x = torch.full((B, T), pad_id, dtype=torch.long)
    targets = torch.zeros((B, T), dtype=torch.long)
    mask = torch.zeros((B, T))
    engine = torch.zeros((B, T))
    valid = torch.zeros((B, T), dtype=torch.bool)
    prompt_ids: dict[tuple[int, ...], int] = {}
    for i, r in enumerate(rollouts):
        seq = r.prompt_ids + r.response_ids
        n, p = len(seq) - 1, len(r.prompt_ids) - 1
        x[i, :n] = torch.tensor(seq[:-1])
        targets[i, :n] = torch.tensor(seq[1:])
        mask[i, p:n] = torch.tensor(r.sampled, dtype=torch.float32)
        engine[i, p:n] = torch.tensor(r.engine_logprobs, dtype=torch.float32)
        valid[i, :n] = True
        prompt_ids.setdefault(tuple(r.prompt_ids), len(prompt_ids))
    start = torch.tensor([len(r.prompt_ids) - 1 for r in rollouts])
    prompt = torch.tensor([prompt_ids[tuple(r.prompt_ids)] for r in rollouts])
    return Batch(x, targets, mask, engine, valid, start, prompt)


@contextlib.contextmanager
def frozen(*modules: torch.nn.Module | None) -> Iterator[None]:
    """Scoring passes that record nothing yet run the training forward's kernels: grad mode picks them (on CPU
    the hand-written RMSNorm, whose rounding differs from F.rms_norm's), but no parameter requires grad, so no
    graph is built. The old, reference and training log-probs then agree bit for bit where the weights do, and
    the KL of the policy to itself at step 0 is exactly 0."""
    params = [p for m in modules if m is not None for p in m.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        with torch.enable_grad():
            yield
    finally:
        for p in params:
            p.requires_grad_(True)


def length_chunks(lengths: torch.Tensor) -> list[torch.Tensor]:
    """Row sets to run as separate forwards, so that short rows are not padded to a long row's length: a response
    that called a tool gets a fresh token budget and can be three times as long as the rest of its batch. The
    longest rows go apart while that saves at least a third of the padded slots (a forward's fixed cost is far
    smaller at these sizes); one set, in the rows' order, when nothing is worth splitting."""
    rows, chunks = torch.arange(len(lengths), device=lengths.device), []
    while len(rows) > 1:
        order = rows[lengths[rows].argsort(descending=True, stable=True)]
        sizes = lengths[order].tolist()
        whole = len(sizes) * sizes[0]
        area, k = min((k * sizes[0] + (len(sizes) - k) * sizes[k], k) for k in range(1, len(sizes)))
        if whole - area < whole / 3:
            break
        chunks.append(order[:k].sort().values)
        rows = order[k:].sort().values
    return chunks + [rows]


def _prompt_cache(model: GPT, batch: Batch, row_group: torch.Tensor) -> KVCache:
    """A cache holding exactly the keys/values of the batch's distinct prompts (one cache row per prompt,
    right-padded): a group's prompt is the first `start` inputs of any of its rows."""
    device = batch.x.device
    groups = int(row_group.max()) + 1
    prefix_len = batch.start.new_zeros(groups).scatter_(0, row_group, batch.start)
    first_row = torch.zeros_like(prefix_len).scatter_(0, row_group, torch.arange(len(row_group), device=device))
    width = int(prefix_len.max())
    slots = torch.arange(width, device=device)
    prompt_valid = slots < prefix_len[:, None]
    cache = KVCache(model.config, groups, width, device, model.tok_emb.weight.dtype)
    cache.mark_padding(prompt_valid)
    model.hidden(batch.x[first_row, :width], cache, torch.where(prompt_valid, slots, 0))
    return cache


class _PickRows(torch.autograd.Function):
    """`t.index_select(0, rows)` whose backward sums the rows' gradients from a contiguous copy: the gradient that
    reaches a prompt's keys is a slice of the concatenated keys' gradient, and `index_add_` over such a strided
    tensor takes a slow path (tiny preset, 16 rows of 4 prompts' 30 slots, 1 thread: select + backward 144 us
    with the strided gradient, 94 us with the copy)."""

    @staticmethod
    def forward(ctx: Any, t: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(rows)
        ctx.source_rows = t.size(0)
        return t.index_select(0, rows)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (rows,) = ctx.saved_tensors
        summed = grad.new_zeros((ctx.source_rows, *grad.shape[1:]))
        return summed.index_add_(0, rows, grad.contiguous()), None


class _RowsAfterPrompt(KVCache):
    """Rows continuing their prompts' cached keys/values, for one training or scoring forward over the rows' own
    parts: `write` returns each layer's prompt keys (picked per row by `_PickRows`, whose backward sums the rows'
    gradients into their prompt) followed by the rows' new keys. Attention reads the same
    keys and values as from a copy of the cache with room for the rows, without allocating and copying that room
    or back-propagating through writes into it."""

    def __init__(self, prompts: KVCache, prompt_of_row: torch.Tensor, own_valid: torch.Tensor) -> None:
        self.k = [_PickRows.apply(k, prompt_of_row) for k in prompts.k]
        self.v = [_PickRows.apply(v, prompt_of_row) for v in prompts.v]
        self.valid = torch.cat([prompts.valid.index_select(0, prompt_of_row), own_valid], 1)
        self.length, self.max_len, self.holes = prompts.length, self.valid.size(1), True

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor, at: int | torch.Tensor,
              T: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.cat([self.k[layer], k], 2), torch.cat([self.v[layer], v], 2)


def sampled_hidden(model: GPT, batch: Batch) -> torch.Tensor:
    """The final hidden states (N, C) at the batch's sampled positions (`mask > 0`, in row-major order), each
    distinct prompt run once for all its rows (see the module's docstring), rows of very different lengths in
    separate forwards (`length_chunks`)."""
    where = batch.mask > 0
    place = (where.flatten().cumsum(0) - 1).view_as(where)  # each sampled position's row in the output
    lengths = batch.valid.sum(1)
    _, row_group = torch.unique(batch.prompt, return_inverse=True)
    shared = int(row_group.max()) + 1 < len(row_group) and int(batch.start.min()) > 0
    own_lengths = lengths - batch.start  # a row's part after its prompt, from its last prompt token on
    cache = _prompt_cache(model, batch, row_group) if shared else None
    parts, places = [], []
    for rows in length_chunks(own_lengths if shared else lengths):
        if cache is None:  # nothing shared: the plain forward
            width = int(lengths[rows].max())
            picked = where[rows, :width]
            parts.append(final_hidden(model, batch.x[rows, :width], batch.valid[rows, :width])[picked])
            places.append(place[rows, :width][picked])
            continue
        # Each row's own part, right-padded: its inputs from `start` to its end, positions continuing its prompt.
        cols = batch.start[rows, None] + torch.arange(int(own_lengths[rows].max()), device=rows.device)
        own_valid = cols < lengths[rows, None]
        cols = cols.clamp(max=batch.x.size(1) - 1)
        rows_cache = _RowsAfterPrompt(cache, row_group[rows], own_valid)
        hidden = model.hidden(batch.x[rows].gather(1, cols), rows_cache, torch.where(own_valid, cols, 0))
        picked = own_valid & where[rows].gather(1, cols)
        parts.append(hidden[picked])
        places.append(place[rows].gather(1, cols)[picked])
    if len(parts) == 1:
        return parts[0]
    return torch.cat(parts).index_select(0, torch.cat(places).argsort())


def sequence_logprobs(model: GPT, batch: Batch, params: SamplingParams, vocab_limit: int | None,
                      value_head: torch.nn.Module | None = None, with_entropy: bool = True
                      ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """(log-probs (B, T) of the targets under the sampling distribution, entropies (B, T) or None, values (B, T)
    or None); all three are 0 outside the policy's sampled tokens.

    Only the sampled positions meet the vocabulary-wide head and the sampling transform: prompt, tool output and
    padding positions, half or more of a row, are needed as context but never scored."""
    hidden = sampled_hidden(model, batch)
    where = batch.mask > 0
    lp_at, ent_at = L.token_logprobs(model.lm_head(hidden), batch.targets[where], params, vocab_limit, with_entropy)
    zeros = torch.zeros(batch.mask.shape, dtype=lp_at.dtype, device=lp_at.device)
    lp = zeros.masked_scatter(where, lp_at)
    ent = None if ent_at is None else zeros.masked_scatter(where, ent_at)
    values = None if value_head is None else zeros.masked_scatter(where, value_head(hidden).squeeze(-1).float())
    return lp, ent, values

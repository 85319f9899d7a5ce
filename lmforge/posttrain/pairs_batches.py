"""Preference pairs as model input: rendering, batching, and the forward pass the reward model and DPO share.

    examples, stats = encode_pairs(tok, pairs, max_tokens=256)
    batches = PairBatches(examples, batch_size=8, pad_id=tokens.pad, seed=0)
    batch = batches.next_batch()              # a PairBatch: chosen rows then rejected rows
    hidden = final_hidden(model, batch.idx, batch.valid)

A pair (`prompt` messages, `chosen` and `rejected` response texts, the contract of
`lmforge.posttrain.preferences`) becomes two sequences rendered with the chat format: the prompt as
`render_for_completion` primes the model, then the response closed by `<|end|>`. The rendering of the prompt is
checked to be an exact prefix of the whole conversation's, so the response's tokens are exactly those after it:
that is the mask DPO sums its log-probs over, and the last of them (`<|end|>`) is where the reward model reads its
score. Pairs that carry `chosen_ids`/`rejected_ids` (sampled responses) use those ids as they were sampled: the
text is never re-tokenised.

A prompt too long for the context loses its oldest messages first (the last one stays); a pair that still does
not fit is dropped and counted, never cut inside a response (a cut response would move the end token).

Padding: `collate_pairs` right-pads (real tokens never attend to the padding after them, so plain causal attention
is exact and fastest); `pad_rows(..., side="left")` exists because the reward must not depend on the side
(`final_hidden` gives every row positions from 0 at its first real token and masks padding keys).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Literal, Protocol, Sequence

import torch
import torch.nn.functional as F

from lmforge.model import GPT, Block, attention_mask
from lmforge.tokenizer.chat_format import ChatTokens, render_conversation, render_for_completion
from lmforge.train.loader import LengthGroupedBatches
from lmforge.utils import LmforgeError


class Pair(Protocol):
    """What a preference pair provides (`lmforge.posttrain.preferences.PreferencePair`)."""

    prompt: list[dict[str, Any]]
    chosen: str
    rejected: str


@dataclass(frozen=True)
class Rendered:
    """One rendered prompt + response: its ids and where the response starts (ids[start:] is the response, whose
    last token is the end-of-turn token)."""

    ids: tuple[int, ...]
    start: int


PairExample = tuple[Rendered, Rendered]  # (chosen, rejected)


def render_response(tok: Any, prompt: list[dict[str, Any]], response: str | None,
                    response_ids: Sequence[int] | None = None) -> Rendered:
    """The prompt primed for an answer, then the response and `<|end|>`; `response_ids` (sampled ids) are used
    as they are, with `<|end|>` appended when the sample did not end with it."""
    prefix = render_for_completion(tok, prompt)
    end = ChatTokens.of(tok).end
    if response_ids is not None:
        body = [int(t) for t in response_ids]
        return Rendered(tuple(prefix + body + ([] if body and body[-1] == end else [end])), len(prefix))
    ids, _ = render_conversation(tok, list(prompt) + [{"role": "assistant", "content": response}])
    if ids[:len(prefix)] != prefix or ids[-1] != end:
        raise ValueError("the prompt's rendering is not a prefix of the conversation's (does it end with an "
                         "assistant message?)")
    return Rendered(tuple(ids), len(prefix))


def _fit(tok: Any, pair: Pair, max_tokens: int) -> tuple[PairExample | None, bool]:
    """The pair rendered within max_tokens, dropping the prompt's oldest messages as needed (None: cannot fit),
    and whether the prompt was shortened."""
    prompt = list(pair.prompt)
    while prompt:
        chosen = render_response(tok, prompt, pair.chosen, getattr(pair, "chosen_ids", None))
        rejected = render_response(tok, prompt, pair.rejected, getattr(pair, "rejected_ids", None))
        if max(len(chosen.ids), len(rejected.ids)) <= max_tokens:
            return (chosen, rejected), len(prompt) < len(pair.prompt)
        prompt = prompt[1:]
        while prompt and prompt[0]["role"] not in ("user", "system"):
            prompt = prompt[1:]  # a prompt starts with a user or system message
    return None, True


def encode_pairs(tok: Any, pairs: Iterable[Pair], max_tokens: int) -> tuple[list[PairExample], dict[str, int]]:
    """Render every pair; returns the examples and counts of those shortened, dropped as too long or unrenderable."""
    out: list[PairExample] = []
    stats = {"pairs": 0, "prompt_shortened": 0, "dropped_too_long": 0, "dropped_unrenderable": 0}
    for pair in pairs:
        stats["pairs"] += 1
        try:
            example, shortened = _fit(tok, pair, max_tokens)
        except (ValueError, LmforgeError):
            stats["dropped_unrenderable"] += 1
            continue
        if example is None:
            stats["dropped_too_long"] += 1
            continue
        stats["prompt_shortened"] += int(shortened)
        out.append(example)
    return out, stats


@dataclass
class PairBatch:
    """B pairs as 2B rows (chosen rows 0..B-1, rejected rows B..2B-1): ids, which slots are real, each row's
    end-token slot, next-token targets over the response only (-1 elsewhere), and, for DPO, the reference
    model's summed response log-probs of each row."""

    idx: torch.Tensor  # (2B, T) int64
    valid: torch.Tensor  # (2B, T) bool
    end: torch.Tensor  # (2B,) int64: slot of each row's end-of-turn token
    targets: torch.Tensor  # (2B, T) int64: targets[r, i] = idx[r, i + 1] where that token is the response's
    ref_logps: torch.Tensor | None = None  # (2B,) float64

    @property
    def pairs(self) -> int:
        return self.idx.size(0) // 2

    def to(self, device: torch.device) -> "PairBatch":
        move = (lambda t: t.to(device, non_blocking=True) if t is not None else None)
        return PairBatch(move(self.idx), move(self.valid), move(self.end), move(self.targets), move(self.ref_logps))


def pad_rows(seqs: list[Rendered], pad_id: int, side: Literal["left", "right"] = "right",
             pad_multiple: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(idx, valid, end, targets) of sequences padded to a common width (a multiple of pad_multiple)."""
    width = max(len(s.ids) for s in seqs)
    width = -(-width // pad_multiple) * pad_multiple
    idx = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    valid = torch.zeros((len(seqs), width), dtype=torch.bool)
    targets = torch.full((len(seqs), width), -1, dtype=torch.long)
    end = torch.empty(len(seqs), dtype=torch.long)
    for r, s in enumerate(seqs):
        n = len(s.ids)
        at = width - n if side == "left" else 0
        ids = torch.tensor(s.ids, dtype=torch.long)
        idx[r, at:at + n], valid[r, at:at + n] = ids, True
        targets[r, at + s.start - 1:at + n - 1] = ids[s.start:]  # position i predicts token i + 1
        end[r] = at + n - 1
    return idx, valid, end, targets


def collate_pairs(examples: list[PairExample], pad_id: int, pad_multiple: int = 16) -> PairBatch:
    rows = [c for c, _ in examples] + [r for _, r in examples]
    return PairBatch(*pad_rows(rows, pad_id, "right", pad_multiple))


def _embedded(model: GPT, idx: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, Any, torch.Tensor | None]:
    """Token (and position) embeddings (B*T, C) of padded rows, RoPE tables and the attention mask.

    Each row's positions count from its first real token and padding keys are masked, so a row's states do not
    depend on how much padding surrounds it or on which side. When every row is right-padded (the training
    batches), plain causal attention is already exact and the mask is None."""
    T = idx.size(1)
    pos_ids = (valid.long().cumsum(1) - 1).clamp_min(0)
    right_padded = bool(valid[:, 0].all()) and bool((valid[:, :-1] >= valid[:, 1:]).all())
    x = model.tok_emb(idx)
    rope = None
    if model.pos_emb is not None:
        x = x + model.pos_emb(pos_ids)
    else:
        rope = (model.rope_cos[pos_ids][:, None], model.rope_sin[pos_ids][:, None])
    return x.flatten(0, 1), rope, None if right_padded else attention_mask(valid, 0, T)


def final_hidden(model: GPT, idx: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """The last layer's normalised hidden states (B, T, C) of padded rows, through the model's own blocks."""
    B, T = idx.shape
    x, rope, mask = _embedded(model, idx, valid)
    x = model.blocks(x, rope, [b.ops() for b in model.layers], None, 0, mask, B, T, Block.__call__)
    return model.norm(x).view(B, T, -1)


def end_hidden(model: GPT, idx: torch.Tensor, valid: torch.Tensor, end: torch.Tensor) -> torch.Tensor:
    """`final_hidden` at one slot per row (B, C), computing only what that slot needs: every layer but the last
    runs over all positions, the last one's keys and values too, but its query, output projection and MLP run at
    the read slot alone. The reward model reads one position per row, so this skips most of a layer's work."""
    B, T = idx.shape
    x, rope, mask = _embedded(model, idx, valid)
    *body, last = model.layers
    for i, block in enumerate(body):
        x = block(x, rope, block.ops(), None, i, 0, mask, mask is None and T > 1, B, T)
    ops = last.ops()
    q, k, v = ops.qkv(ops.attn_norm(x), rope, B, T)
    rows = torch.arange(B, device=idx.device)
    keys = valid & (torch.arange(T, device=idx.device) <= end[:, None])
    y = F.scaled_dot_product_attention(q[rows, :, end][:, :, None], k, v, attn_mask=keys[:, None, None, :],
                                       enable_gqa=last.gqa)
    x_end = ops.attn_out(y.reshape(B, -1), x.view(B, T, -1)[rows, end], False)
    return model.norm(ops.mlp_out(ops.mlp_norm(x_end), x_end, False))


def response_logps(model: GPT, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Each row's summed log-probability of its response tokens (B,), in float32. Only the response positions
    meet the (vocabulary-wide) head: prompt positions, often most of a row, cost nothing there."""
    where = targets >= 0
    rows = where.nonzero()[:, 0]
    logits = model.lm_head(hidden[where]).float()
    picked = torch.log_softmax(logits, -1).gather(1, targets[where][:, None])[:, 0]
    return torch.zeros(targets.size(0), dtype=picked.dtype, device=picked.device).index_add(0, rows, picked)


class PairBatches(LengthGroupedBatches):
    """Batches of pairs in an order fixed by (seed, epoch), grouped by length to waste little padding; a
    `BatchSource` whose position (epoch, batch) is saved with every checkpoint, so a resume is exact."""

    what = "pairs"

    def __init__(self, examples: list[PairExample], batch_size: int, pad_id: int, seed: int = 0,
                 group_batches: int = 16, pad_multiple: int = 16,
                 ref_logps: torch.Tensor | None = None) -> None:
        if not examples:
            raise LmforgeError("no training pair (every pair was dropped or the file is empty)")
        super().__init__([max(len(s.ids) for s in ex) for ex in examples], batch_size, seed, group_batches)
        self.examples, self.pad_id, self.pad_multiple = examples, pad_id, pad_multiple
        self.ref_logps = ref_logps  # (n, 2): chosen, rejected of each example, for DPO

    def batch_of(self, rows: list[int]) -> PairBatch:
        batch = collate_pairs([self.examples[i] for i in rows], self.pad_id, self.pad_multiple)
        if self.ref_logps is not None:
            sel = self.ref_logps[torch.tensor(rows)]
            batch.ref_logps = torch.cat([sel[:, 0], sel[:, 1]])
        return batch

    def next_batch(self) -> PairBatch:
        return self.batch_of(self.next_rows())


class PairObjective:
    """What the reward model's and DPO's trainer `Objective`s share: a batch is `PairBatch`es' rows of chosen then
    rejected sequences, counted in pairs. Subclasses add the loss and the evaluation."""

    def prepare_model(self, model: GPT, weights: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor] | None:
        return weights

    def count(self, batch: PairBatch) -> int:
        return batch.pairs

    def rows_and_width(self, batch: PairBatch) -> tuple[int, int]:
        return tuple(batch.idx.shape)

    def to(self, batch: PairBatch, device: torch.device) -> PairBatch:
        return batch.to(device)


def fixed_pair_batches(examples: list[PairExample], batch_size: int, pad_id: int, pad_multiple: int = 16,
                       ref_logps: torch.Tensor | None = None) -> list[PairBatch]:
    """Held-out pairs as fixed batches in file order (the same every evaluation)."""
    source = PairBatches(examples, batch_size, pad_id, 0, 1, pad_multiple, ref_logps) if examples else None
    return [source.batch_of(list(range(i, min(i + batch_size, len(examples)))))
            for i in range(0, len(examples), batch_size)] if source else []

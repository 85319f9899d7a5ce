"""Validation loss and bits per byte.

Loss per token depends on the tokenizer: a tokenizer with longer tokens has fewer, harder predictions. Bits per
byte (the summed loss in bits divided by the UTF-8 bytes of the text those tokens stand for) does not, so models
with different vocabularies, or a model and a compressor, can be compared on the same text. Special tokens
(`<|bos|>`, chat markers) stand for no text: they count 0 bytes, and their loss still counts (as in nanochat's
evaluation, which makes the figure a slight overestimate rather than a flattering one).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F


def token_byte_lengths(tokenizer: Any, vocab_size: int) -> torch.Tensor:
    """int64 tensor (vocab_size,): the bytes of text each token id stands for; 0 for special and unused ids."""
    lengths = torch.zeros(vocab_size, dtype=torch.int64)
    for i in range(min(vocab_size, tokenizer.vocab_size)):
        if not tokenizer.is_special(i):
            lengths[i] = len(tokenizer.token_bytes(i))
    return lengths


def loss_and_bytes(logits: torch.Tensor, targets: torch.Tensor,
                   token_bytes: torch.Tensor | None = None) -> tuple[float, float, float]:
    """(summed cross-entropy in nats, scored targets, their UTF-8 bytes) of one batch; targets of -1 are skipped."""
    flat = targets.reshape(-1)
    loss = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), flat, ignore_index=-1, reduction="sum")
    mask = flat >= 0
    nbytes = float(token_bytes[flat[mask]].sum()) if token_bytes is not None else 0.0
    return float(loss), float(mask.sum()), nbytes

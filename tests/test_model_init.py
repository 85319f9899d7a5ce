"""The output head's init holds the initial loss near ln(vocab) at every preset's width, tied or not.

A model that knows nothing should start at ln(vocab) (uniform guesses); logits spread by init_std * sqrt(width)
add about half their variance to that, which at llama widths was most of a nat (see `GPT.reset_parameters`).
Each preset is checked at its own width with a one-layer proxy (depth barely moves the head's logits: the final
norm rescales whatever the blocks add), a narrow MLP and a vocabulary of at most 4096 (the excess over ln(vocab)
is a property of the logits' spread, not of the vocabulary's size), so every width runs in seconds.
"""

from __future__ import annotations

import math

import pytest
import torch

from lmforge.model import GPT, HEAD_INIT_WIDTH, PRESETS, GPTConfig


@pytest.mark.parametrize("preset", list(PRESETS))
def test_initial_loss_is_near_ln_vocab_at_every_presets_width(preset):
    torch.manual_seed(0)
    cfg = GPTConfig.from_preset(preset, n_layer=1, block_size=32, intermediate_size=64,
                                vocab_size=min(PRESETS[preset]["vocab_size"], 4096))
    model = GPT(cfg).eval()
    idx = torch.randint(0, cfg.vocab_size, (2, 33))
    with torch.no_grad():
        _, loss = model(idx[:, :-1], idx[:, 1:])
    assert abs(loss.item() - math.log(cfg.vocab_size)) < 0.5, (preset, loss.item(), math.log(cfg.vocab_size))


@pytest.mark.parametrize("tied", [False, True])
def test_the_head_is_scaled_only_past_gpt2_mediums_width(tied):
    """Up to HEAD_INIT_WIDTH every matrix keeps init_std (GPT-2's init as it was); past it the head (the shared
    matrix when tied) narrows by sqrt(HEAD_INIT_WIDTH / width), the other matrices do not."""
    for width, expected in ((HEAD_INIT_WIDTH, 1.0), (4 * HEAD_INIT_WIDTH, 0.5)):
        torch.manual_seed(0)
        model = GPT(GPTConfig(vocab_size=512, n_layer=1, n_head=8, n_embd=width, intermediate_size=64,
                              block_size=16, tie_embeddings=tied))
        std = model.config.init_std
        assert model.lm_head.weight.std().item() == pytest.approx(std * expected, rel=0.02)
        assert model.tok_emb.weight.std().item() == pytest.approx(std * (expected if tied else 1.0), rel=0.02)
        assert model.layers[0].attn.wq.weight.std().item() == pytest.approx(std, rel=0.02)

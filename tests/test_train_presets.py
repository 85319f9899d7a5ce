"""Per-preset batch and rates of `lmforge pretrain --preset P` (lmforge/train/config.py PRESET_TRAINING)."""

from __future__ import annotations

import pytest

from lmforge.cli import build_parser
from lmforge.config import config_from_args
from lmforge.model import PRESETS, GPTConfig
from lmforge.train.config import PRESET_TRAINING, TrainConfig, preset_training
from lmforge.train.optim import width_lr_scale


def pretrain_config(*flags: str) -> TrainConfig:
    args = build_parser().parse_args(["pretrain", "--data", "shards", "--out", "run", *flags])
    return config_from_args(TrainConfig, args, defaults=preset_training(getattr(args, "preset", "tiny")))


def test_every_model_preset_has_a_stated_setting():
    assert set(PRESET_TRAINING) == set(PRESETS)


@pytest.mark.parametrize("preset", ["gpt2", "gpt2-medium", "llama-1b", "llama-7b", "llama-70b"])
def test_large_presets_step_half_a_million_tokens_at_proven_rates(preset):
    cfg = preset_training(preset)
    block = GPTConfig.from_preset(preset).block_size
    assert cfg.batch_size * block * cfg.grad_accum == 2 ** 19
    assert cfg.muon_lr == 0.02
    head_lr = cfg.lr * width_lr_scale(cfg, GPTConfig.from_preset(preset).n_embd)
    assert head_lr <= 6e-4  # GPT-2's AdamW rate at 768 wide, lower wider


def test_the_cli_applies_the_preset_where_no_flag_is_given():
    tiny = pretrain_config()
    assert tiny == TrainConfig()  # the tiny preset keeps the class defaults
    gpt2 = pretrain_config("--preset", "gpt2")
    assert (gpt2.preset, gpt2.grad_accum, gpt2.muon_lr, gpt2.warmup_steps) == ("gpt2", 32, 0.02, 200)
    mine = pretrain_config("--preset", "gpt2", "--muon-lr", "0.03", "--grad-accum", "4", "--no-tensorboard")
    assert (mine.muon_lr, mine.grad_accum, mine.batch_size, mine.tensorboard) == (0.03, 4, 16, False)
    helptext = " ".join(build_parser()._subparsers._group_actions[0].choices["pretrain"].format_help().split())
    assert "PRESET_TRAINING" in helptext and "(default: 16)" in helptext
    with pytest.raises(SystemExit):
        build_parser().parse_args(["pretrain", "--data", "x", "--out", "y", "--grad-accum", "many"])

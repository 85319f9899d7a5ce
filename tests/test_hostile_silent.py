"""Silent wrong output: a checkpoint whose config.json was edited or whose tokenizer was swapped is refused,
naming the file, instead of being loaded, fine-tuned or exported as if nothing had happened."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hostile import assert_refused, run_cli

from lmforge.checkpoint import checkpoint_tokenizer_dir, load_config, load_model, save_model
from lmforge.model import GPT, GPTConfig
from lmforge.tokenizer import Tokenizer
from lmforge.utils import LmforgeError


@pytest.fixture
def checkpoint(tmp_path) -> Path:
    tok = Tokenizer.train([f"hello world, this is text number {i}" for i in range(50)], 280)
    tok.save(tmp_path / "tok")
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, n_layer=1, n_head=2, n_embd=32, block_size=32))
    return save_model(tmp_path / "ckpt", model, tmp_path / "tok", meta={"step": 0})


def _edit_config(ckpt: Path, change) -> None:
    meta = json.loads((ckpt / "config.json").read_text())
    change(meta)
    (ckpt / "config.json").write_text(json.dumps(meta))


def _export(ckpt: Path, out: Path):
    return run_cli(["export", "params", "--checkpoint", ckpt, "--out", out])


def test_silent_checkpoint_intact_loads_and_exports(checkpoint, tmp_path):
    model, _ = load_model(checkpoint)
    assert model.config.n_embd == 32 and checkpoint_tokenizer_dir(checkpoint).is_dir()
    assert _export(checkpoint, tmp_path / "model.bin").code == 0


def test_silent_checkpoint_edited_config_is_refused(checkpoint, tmp_path):
    _edit_config(checkpoint, lambda m: m["model"].update(rope_theta=500000.0))
    with pytest.raises(LmforgeError, match="config.json was edited"):
        load_model(checkpoint)
    assert_refused(_export(checkpoint, tmp_path / "model.bin"), "config.json")
    assert not (tmp_path / "model.bin").exists()


@pytest.mark.parametrize("swap", ["replaced", "added"])
def test_silent_checkpoint_swapped_tokenizer_is_refused(checkpoint, tmp_path, swap):
    other = Tokenizer.train([f"other words entirely, {i} of them" for i in range(50)], 280)
    other.save(tmp_path / "other")
    name = "tokenizer.lmforge.json" if swap == "replaced" else "extra.json"
    (checkpoint / "tokenizer" / name).write_bytes((tmp_path / "other" / "tokenizer.lmforge.json").read_bytes())
    with pytest.raises(LmforgeError, match=name):
        checkpoint_tokenizer_dir(checkpoint)
    with pytest.raises(LmforgeError, match=name):
        load_model(checkpoint)
    assert_refused(_export(checkpoint, tmp_path / "model.bin"), name)
    assert not (tmp_path / "model.bin").exists()


def test_silent_checkpoint_absurd_block_size_is_refused_before_allocating(checkpoint):
    """A config written without its own checksum (as older checkpoints were) still passes the model's bounds:
    a block_size of 1e9 would ask for 128 GB of RoPE tables."""
    def absurd(meta):
        meta["model"]["block_size"] = 1_000_000_000
        meta["checksums"].pop("config.json")

    _edit_config(checkpoint, absurd)
    with pytest.raises(LmforgeError, match="config.json.*block_size"):
        load_config(checkpoint)
    with pytest.raises(LmforgeError, match="config.json.*block_size"):
        load_model(checkpoint)

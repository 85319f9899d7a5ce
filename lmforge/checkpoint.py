"""Checkpoints on disk: safetensors weights, a JSON config, and a copy of the tokenizer, written atomically.

A checkpoint folder is self-contained (generate, export and SFT need nothing else), holds no pickles, and appears
only once complete, so an interrupted save never leaves a checkpoint that looks valid but is not.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from lmforge.model import GPT, GPTConfig
from lmforge.utils import LmforgeError, atomic_path, read_json, write_json

CKPT_SUBDIR = "ckpt"


def checkpoint_name(step: int) -> str:
    return f"step_{step:07d}"


def save_model(ckpt_dir: str | Path, model: GPT, tokenizer_dir: str | Path | None = None,
               meta: dict[str, Any] | None = None, extra_files: dict[str, Any] | None = None) -> Path:
    """Write model weights, config, tokenizer copy and `extra_files` (name -> callable(path)) into ckpt_dir."""
    ckpt_dir = Path(ckpt_dir)
    with atomic_path(ckpt_dir) as tmp:
        tmp.mkdir(parents=True)
        state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        if model.config.tie_embeddings:
            state.pop("lm_head.weight", None)  # the same tensor as tok_emb.weight; safetensors refuses aliases
        save_file(state, tmp / "model.safetensors")
        write_json(tmp / "config.json", {"model": model.config.to_dict(), **(meta or {})})
        if tokenizer_dir is not None:
            shutil.copytree(tokenizer_dir, tmp / "tokenizer")
        for name, writer in (extra_files or {}).items():
            writer(tmp / name)
    return ckpt_dir


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder from a run folder (its newest checkpoint) or a checkpoint folder itself."""
    path = Path(path)
    if (path / "model.safetensors").is_file():
        return path
    ckpts = sorted((path / CKPT_SUBDIR).glob("step_*")) if (path / CKPT_SUBDIR).is_dir() else []
    ckpts = [c for c in ckpts if (c / "model.safetensors").is_file()]
    if not ckpts:
        raise LmforgeError(f"no checkpoint in {path} (expected model.safetensors or {CKPT_SUBDIR}/step_*/)")
    return ckpts[-1]


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[GPT, Path]:
    """Load the model of a checkpoint (or of a run folder's newest one); returns (model in eval mode, folder)."""
    ckpt = resolve_checkpoint(path)
    meta = read_json(ckpt / "config.json", "checkpoint config")
    try:
        config = GPTConfig.from_dict(meta["model"])
    except (KeyError, TypeError, ValueError) as e:
        raise LmforgeError(f"checkpoint config {ckpt / 'config.json'} has no valid 'model' field: {e}") from e
    try:
        state = load_file(ckpt / "model.safetensors", device=str(device))
    except (SafetensorError, OSError) as e:
        raise LmforgeError(f"checkpoint weights {ckpt / 'model.safetensors'} are corrupt or truncated: {e}") from e
    with torch.device("meta"):
        model = GPT(config)
    model = model.to_empty(device=device)
    if config.tie_embeddings:
        state["lm_head.weight"] = state["tok_emb.weight"]
    missing, unexpected = model.load_state_dict(state, strict=False, assign=False)
    if missing or unexpected:
        raise LmforgeError(f"checkpoint weights {ckpt / 'model.safetensors'} do not match its config: "
                           f"missing {missing[:5]}, unexpected {unexpected[:5]}")
    if config.tie_embeddings:
        model.lm_head.weight = model.tok_emb.weight
    if config.pos == "rope":
        from lmforge.model import rope_tables

        model.rope_cos, model.rope_sin = (t.to(device) for t in rope_tables(config.head_dim, config.block_size, config.rope_theta))
    return model.eval(), ckpt


def checkpoint_tokenizer_dir(ckpt: str | Path) -> Path:
    tok = resolve_checkpoint(ckpt) / "tokenizer"
    if not tok.is_dir():
        raise LmforgeError(f"checkpoint {ckpt} has no tokenizer/ folder")
    return tok

"""Pretraining and the training loop SFT reuses: `train(cfg, data, val_data, out_dir, ...)` (see `trainer`).

Names are imported on first use so that `lmforge --help` (which reads `TrainConfig` defaults) never loads torch.
"""

from __future__ import annotations

from typing import Any

__all__ = ["TrainConfig", "BatchSource", "ValSource", "evaluate", "train"]


def __getattr__(name: str) -> Any:
    if name == "TrainConfig":
        from lmforge.train.config import TrainConfig

        return TrainConfig
    if name in ("BatchSource", "ValSource", "evaluate", "train"):
        from lmforge.train import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module 'lmforge.train' has no attribute {name!r}")

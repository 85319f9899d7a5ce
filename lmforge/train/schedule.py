"""Learning-rate schedule: linear warmup, an optional constant stretch, then a cosine or linear decay.

A pure function of the step (no state), so a resumed run gets exactly the rates of an uninterrupted one.
"""

from __future__ import annotations

import math

from lmforge.train.config import TrainConfig


def lr_multiplier(step: int, cfg: TrainConfig) -> float:
    """Factor on each parameter group's base rate at optimizer step `step` (0-based)."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.decay == "constant" or cfg.max_steps <= 0:
        return 1.0
    start = max(cfg.warmup_steps, int(cfg.decay_start_frac * cfg.max_steps))
    if step < start:
        return 1.0
    span = max(1, cfg.max_steps - start)
    progress = min(1.0, (step - start) / span)
    shape = 0.5 * (1 + math.cos(math.pi * progress)) if cfg.decay == "cosine" else 1.0 - progress
    return cfg.min_lr_frac + (1.0 - cfg.min_lr_frac) * shape

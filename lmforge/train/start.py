"""Where a training run starts, decided in one place: resume the newest checkpoint in the run folder, else start
from an init checkpoint's weights (`--init-from`, SFT's base model), else a fresh model of the configured preset.

A resume continues what the checkpoint describes, so it is refused when the model it would train, the tokenizer or
a setting in `RESUME_FIXED` (batch geometry, optimizer, FSDP, seed) differs from the checkpoint's: the message
names every difference, and nothing in the run folder is changed. Settings outside that list (the run's length,
rates, evaluation, logging, device) may change on resume; see `lmforge.train.config`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmforge.checkpoint import TRAIN_STATE_FILE, load_config, resolve_checkpoint, train_checkpoints
from lmforge.config import flag_of
from lmforge.model import GPTConfig
from lmforge.train.config import RESUME_FIXED, TrainConfig
from lmforge.utils import LmforgeError, file_sha256, read_json


@dataclass(frozen=True)
class RunStart:
    """The model a run trains and where its weights come from: `resume` (a checkpoint of this run, with optimizer
    and data position), else `init_from` (weights only), else neither (a fresh initialisation)."""

    model_config: GPTConfig
    resume: Path | None = None
    init_from: Path | None = None

    @property
    def weights(self) -> Path | None:
        return self.resume or self.init_from


def preset_model_config(cfg: TrainConfig, vocab_size: int | None = None) -> GPTConfig:
    """The preset's model with `--model` overrides; `vocab_size` (the data's) unless an override sets it."""
    overrides = {**({"vocab_size": vocab_size} if vocab_size is not None else {}), **cfg.model_overrides}
    try:
        return GPTConfig.from_preset(cfg.preset, **overrides)
    except (TypeError, ValueError) as e:
        raise LmforgeError(f"--preset {cfg.preset} with --model {cfg.model_overrides}: {e}") from e


def decide_start(cfg: TrainConfig, out_dir: str | Path, init_from: str | Path | None = None,
                 model_config: GPTConfig | None = None, tokenizer_dir: str | Path | None = None,
                 vocab_size: int | None = None) -> RunStart:
    """Resume > init-from > preset (or the explicit `model_config`), checking that a resume matches the request."""
    init = resolve_checkpoint(init_from) if init_from is not None else None
    if init is not None:
        wanted = load_config(init)
    else:
        wanted = model_config or preset_model_config(cfg, vocab_size)
    existing = train_checkpoints(out_dir)
    if not existing:
        return RunStart(wanted, None, init)
    resume = existing[-1]
    differences = _model_differences(load_config(resume), wanted)
    differences += _setting_differences(read_json(resume / TRAIN_STATE_FILE, "train state"), cfg)
    differences += _tokenizer_differences(resume / "tokenizer", tokenizer_dir)
    if differences:
        raise LmforgeError(f"{out_dir} holds a run that cannot continue with these settings "
                           f"(checkpoint {resume.name} vs now): {'; '.join(differences)}. Use the run's settings "
                           f"(only the run's length, rates, evaluation and logging may change) or another --out")
    return RunStart(load_config(resume), resume, None)


def _model_differences(saved: GPTConfig, wanted: GPTConfig) -> list[str]:
    a, b = saved.to_dict(), wanted.to_dict()
    return [f"model {k} {a[k]!r} vs {b[k]!r}" for k in a if a[k] != b.get(k)]


def _setting_differences(train_state: Any, cfg: TrainConfig) -> list[str]:
    saved = train_state.get("train_config") if isinstance(train_state, dict) else None
    if not isinstance(saved, dict):
        return []  # a checkpoint from before train configs were saved: nothing to compare
    now = cfg.to_dict()
    return [f"{flag_of(TrainConfig, k)} {saved[k]!r} vs {now[k]!r}" for k in RESUME_FIXED
            if k in saved and saved[k] != now[k]]


def _tokenizer_differences(saved: Path, given: str | Path | None) -> list[str]:
    """A changed tokenizer would reinterpret every token id the model learned."""
    if given is None or not saved.is_dir():
        return []
    digests = [{p.relative_to(d).as_posix(): file_sha256(p) for p in sorted(d.rglob("*")) if p.is_file()}
               for d in (saved, Path(given))]
    return [] if digests[0] == digests[1] else [f"tokenizer {saved} vs {given}"]

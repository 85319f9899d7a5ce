"""What `lmforge serve` serves: a checkpoint, or an exported parameter file (`lmforge export params`).

A parameter file holds the model (fp32, fp16/bf16 or int8, read back to fp32) and the tokenizer as a table of token
bytes by id: `inference.paramfile.load_param_file` rebuilds both, as evaluation does.
"""

from __future__ import annotations

from pathlib import Path

from lmforge.inference.engine import Engine, cast_for_inference
from lmforge.utils import LmforgeError


def engine_from_params(path: str, device: str = "cpu", dtype: str | None = None) -> Engine:
    """An engine over a parameter file's model and tokenizer (int8 weights served as the fp32 they stand for)."""
    from lmforge.inference.paramfile import load_param_file

    model, tokenizer = load_param_file(path)
    return Engine(cast_for_inference(model, device, dtype), tokenizer, compile=False)


def load_served_engine(checkpoint: str, params: str, device: str, dtype: str | None) -> tuple[Engine, str]:
    """The engine for `--checkpoint` or `--params` (exactly one is set) and its default model name."""
    if params:
        if not Path(params).is_file():
            raise LmforgeError(f"--params {params}: no such file")
        return engine_from_params(params, device, dtype), Path(params).stem
    if not Path(checkpoint).is_dir():
        raise LmforgeError(f"--checkpoint {checkpoint}: no such folder")
    engine = Engine.from_checkpoint(checkpoint, device=device, dtype=dtype, compile=False)
    return engine, Path(checkpoint).resolve().name

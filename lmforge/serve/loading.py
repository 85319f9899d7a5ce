"""What `lmforge serve` serves: a checkpoint, or an exported parameter file (`lmforge export params`).

A parameter file holds the model (fp32, fp16/bf16 or int8, read back to fp32 by `export.params.load_params`) and the
tokenizer as a table of token bytes by id, special tokens and split pattern: what the C runner reads. The API needs an
`lmforge.tokenizer.Tokenizer`, which is built from merges; the table is enough to rebuild one that encodes the same,
because lmforge encodes by tiktoken's rule (merge the adjacent pair whose bytes have the lowest id), which reads only
bytes -> id. Any two earlier tokens that spell a token are a valid merge for the constructor, so each token's first
such split is taken.
"""

from __future__ import annotations

from pathlib import Path

from lmforge.inference.engine import Engine, cast_for_inference
from lmforge.tokenizer import Tokenizer
from lmforge.utils import LmforgeError


def tokenizer_from_table(token_bytes: list[bytes], special_tokens: dict[str, int], pattern: str,
                         source: str) -> Tokenizer:
    """The `Tokenizer` whose ids spell `token_bytes` (ids 0..255 the bytes themselves, as lmforge's are), refused
    with `LmforgeError` naming `source` when the table is not one lmforge's tokenizer can be."""
    ranks: dict[bytes, int] = {}
    merges: list[tuple[int, int, int]] = []
    for token_id, data in enumerate(token_bytes):
        if token_id < 256:
            if data != bytes([token_id]):
                raise LmforgeError(f"{source}: token {token_id} is not the byte {token_id} (not an lmforge tokenizer)")
        else:
            split = next((k for k in range(1, len(data)) if data[:k] in ranks and data[k:] in ranks), None)
            if split is None or data in ranks:
                raise LmforgeError(f"{source}: token {token_id} is not two earlier tokens joined (not a BPE table)")
            merges.append((ranks[data[:split]], ranks[data[split:]], token_id))
        ranks[data] = token_id
    tokenizer = Tokenizer(merges, pattern=pattern)
    if tokenizer.special_tokens != special_tokens:
        raise LmforgeError(f"{source}: its special tokens differ from lmforge's fixed names and ids")
    return tokenizer


def engine_from_params(path: str, device: str = "cpu", dtype: str | None = None) -> Engine:
    """An engine over a parameter file's model and tokenizer (int8 weights served as the fp32 they stand for)."""
    from lmforge.export.params import load_params, read_header

    header = read_header(path)
    tokenizer = tokenizer_from_table(header.token_bytes, header.special_tokens, header.pattern,
                                     f"parameter file {path}")
    return Engine(cast_for_inference(load_params(path), device, dtype), tokenizer, compile=False)


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

"""Where a measure finds its model: a checkpoint folder or a parameter file (`lmforge export params`).

The same measure must give the same number from either, so both come down to one (GPT, Tokenizer) pair: a
checkpoint through `lmforge.checkpoint.load_model` and its tokenizer copy, a parameter file through
`lmforge.inference.paramfile` (the exported weights, dequantized to fp32 when stored in fp16/bf16/int8, and the
tokenizer rebuilt from the file's token table). Bits per byte on held-out token shards is defined here too: it
reads the trainer's own evaluation (`lmforge.train.evaluate`), so `eval bpb` of a checkpoint repeats the figure
its training run logged on the same windows.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmforge.utils import LmforgeError


@dataclass
class ModelSource:
    model: Any
    tokenizer: Any
    label: str  # what was loaded, for the report: a checkpoint folder or a parameter file


def load_source(checkpoint: Path | None, params: Path | None, device: str = "cpu") -> ModelSource:
    """The model and tokenizer of exactly one of `--checkpoint` and `--params`."""
    if (checkpoint is None) == (params is None):
        raise LmforgeError("give exactly one of --checkpoint DIR and --params FILE")
    if checkpoint is not None:
        from lmforge.checkpoint import checkpoint_tokenizer_dir, load_model
        from lmforge.tokenizer import Tokenizer

        model, ckpt = load_model(checkpoint, device)
        return ModelSource(model, Tokenizer.load(checkpoint_tokenizer_dir(ckpt)), str(ckpt))
    from lmforge.inference.paramfile import load_param_file

    model, tokenizer = load_param_file(params)
    if str(device) != "cpu":
        model = model.to(device)
        model.rope_cos, model.rope_sin = model.rope_cos.to(device), model.rope_sin.to(device)
    return ModelSource(model, tokenizer, str(params))


def bits_per_byte(source: ModelSource, shards_dir: Path, batch_size: int = 8, max_batches: int = 0,
                  seq_len: int | None = None, device: str = "cpu") -> dict[str, Any]:
    """Validation loss (nats/token) and bits per byte of the model on the `val` split of token shards, over
    consecutive windows of `seq_len` tokens (default: the model's context). The shards must be cut by the
    model's own tokenizer (same vocabulary and ids), or the figure would score the wrong tokens."""
    from lmforge.tokenizer import Tokenizer
    from lmforge.tokenizer.shards import TokenShards
    from lmforge.train.bpb import token_byte_lengths
    from lmforge.train.dist import DistInfo
    from lmforge.train.loader import ValidationWindows
    from lmforge.train.trainer import evaluate

    import torch

    shards = TokenShards(shards_dir, "val")
    theirs = Tokenizer.load(shards.tokenizer_dir)
    mine = source.tokenizer
    if theirs.mergeable_ranks != mine.mergeable_ranks or theirs.special_tokens != mine.special_tokens:
        raise LmforgeError(f"token shards {shards_dir} were cut by another tokenizer than {source.label}'s")
    block = source.model.config.block_size
    seq_len = block if seq_len is None else seq_len
    if not 1 <= seq_len <= block:
        raise LmforgeError(f"--seq-len {seq_len} must be in [1, the model's context {block}]")
    windows = ValidationWindows(shards, batch_size, seq_len, max_batches, device=device)
    token_bytes = token_byte_lengths(mine, source.model.config.vocab_size).to(device)
    result = evaluate(source.model, windows, DistInfo(device=torch.device(device)), contextlib.nullcontext,
                      token_bytes)
    return {"source": source.label, "shards": str(shards_dir), "seq_len": seq_len, "batch_size": batch_size,
            "batches": max_batches, **result}


def local_echo(source: ModelSource) -> Any:
    """What `Endpoint.map` answers, from a loaded model: each prompt as `<|bos|>` + its tokens, (token texts,
    log-probs) with None first, by the model's full forward. Text measures (`endpoint.text_bits_per_byte`) thus
    give a checkpoint, a parameter file and a server the same number."""
    import torch

    tok, model = source.tokenizer, source.model
    device = next(model.parameters()).device
    block = model.config.block_size

    def one(prompt: str) -> tuple[list[str], list[float | None]]:
        ids = [tok.bos_id] + tok.encode(prompt)
        if len(ids) > block:
            raise LmforgeError(f"a piece of {len(ids)} tokens does not fit {source.label}'s context of {block}; "
                               "lower --chunk-chars")
        with torch.inference_mode():
            logits, _ = model(torch.tensor([ids], device=device))
        logprobs = torch.log_softmax(logits[0, :-1].float(), dim=-1).cpu()
        chosen = logprobs[torch.arange(len(ids) - 1), torch.tensor(ids[1:])].tolist()
        return [tok.decode([t]) for t in ids], [None, *chosen]

    return lambda batches: [[one(p) for p in batch] for batch in batches]

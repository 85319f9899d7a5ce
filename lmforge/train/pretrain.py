"""Pretraining on token shards: the glue between `lmforge pretrain` (or the speedrun) and the generic loop.

It opens and checks the shards, sizes the model's vocabulary to the tokenizer's, builds the random-window loader
and the validation windows, picks sample prompts from validation documents, and calls `train`. Running it again
with the same `out_dir` resumes the run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lmforge.tokenizer.shards import TokenShards
from lmforge.train.config import TrainConfig
from lmforge.train.dist import DistInfo, setup_distributed
from lmforge.train.loader import ShardBatches, ValidationWindows, check_shards_fit
from lmforge.train.start import decide_start
from lmforge.train.trainer import train
from lmforge.utils import LmforgeError

PROMPT_TOKENS = 8  # tokens of a validation document (after its <|bos|>) that a sample continues


def run_pretrain(data_dir: str | Path, out_dir: str | Path, cfg: TrainConfig, init_from: str | Path | None = None,
                 align: str = "random", info: DistInfo | None = None) -> dict[str, Any]:
    """Pretrain (or resume) on the shards in `data_dir`; returns `train`'s summary."""
    out_dir = Path(out_dir)
    info = info or setup_distributed(cfg.device, cfg.fsdp)
    shards = TokenShards(data_dir, "train")
    # a new run's model takes the shards' vocabulary unless --model vocab_size=... says otherwise
    start = decide_start(cfg, out_dir, init_from, tokenizer_dir=shards.tokenizer_dir, vocab_size=shards.vocab_size)
    mcfg = start.model_config
    seq_len = cfg.seq_len or mcfg.block_size
    check_shards_fit(shards, mcfg.vocab_size, seq_len, mcfg.block_size)
    data = ShardBatches(shards, cfg.batch_size, seq_len, seed=cfg.seed, rank=info.rank, world_size=info.world_size,
                        align=align, device=info.device)
    val_data, prompts = None, []
    if shards.index["splits"].get("val"):
        val = TokenShards(data_dir, "val", check_tokenizer=False)
        if val.num_tokens > seq_len:
            val_data = ValidationWindows(val, cfg.batch_size, seq_len, cfg.eval_batches, info.rank, info.world_size,
                                         info.device)
        docs = (d for d in val.iter_documents() if len(d) > PROMPT_TOKENS + 1)
        prompts = [[int(t) for t in d[:PROMPT_TOKENS + 1]] for _, d in zip(range(cfg.num_samples), docs)]
    if val_data is None and info.is_main:
        print(f"[pretrain] {data_dir}: no validation split long enough; training without validation")
    try:
        return train(cfg, data, val_data, out_dir, tokenizer_dir=shards.tokenizer_dir, sample_prompts=prompts,
                     info=info, start=start)
    except FileNotFoundError as e:
        raise LmforgeError(f"pretraining on {data_dir}: missing file {e.filename}") from e

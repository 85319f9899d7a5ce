"""The reward model: the SFT model with a scalar head, trained on preference pairs (`lmforge reward train`).

    from lmforge.posttrain.reward import RewardConfig, RewardModel, run_reward_train
    summary = run_reward_train(RewardConfig(), checkpoint="runs/sft", out_dir="runs/rm", data=["pairs.jsonl"])
    rm = RewardModel.from_checkpoint("runs/rm")
    rewards = rm.score([ids_a, ids_b])        # one float per token-id list, read at its end-of-turn token

The reward of a conversation is a linear head over the last layer's hidden state at the response's end-of-turn
token: the one position that has read the whole prompt and response. Rows are padded to a batch, so the read
position is each row's own end slot, never the batch's last column (which is padding for all but the longest row).

Training minimises the Bradley-Terry loss -log sigmoid(r_chosen - r_rejected) over pairs, through the pretraining
loop (`lmforge.train.train` with `RewardObjective`): checkpoints, exact resume, metrics.jsonl and plots as for
pretraining and SFT. Bradley-Terry only sees differences, so the rewards' level drifts freely; `--center-coef`
adds coef * (r_chosen + r_rejected)^2 per pair, which pulls the mean reward to 0 (Eisenstein et al. 2023, "Helping
or Herding?") so rewards of separate runs and of RL's batches stay comparable. Held-out pairwise accuracy (with a
95% Wilson interval) and mean margin are printed, logged (`val_accuracy`, `val_margin`) and kept in
`reward_summary.json`.

The head's two tensors (`reward_head.weight`, `reward_head.bias`) live in the checkpoint's model.safetensors
beside the SFT model's weights, covered by its checksums.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.model import GPT
from lmforge.posttrain.configs import RewardConfig
from lmforge.posttrain.pairs_batches import (PairBatch, PairBatches, PairObjective, Rendered,
                                             encode_pairs, end_hidden, fixed_pair_batches, pad_rows)
from lmforge.utils import LmforgeError, write_json


class RewardHead(nn.Module):
    """r = h . w + b. Its weight is a vector (not a 1 x C matrix) so the optimizer treats it as AdamW's, like the
    norms, rather than Muon's."""

    def __init__(self, n_embd: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_embd) / math.sqrt(n_embd))
        self.bias = nn.Parameter(torch.zeros(1))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h @ self.weight + self.bias


def attach_head(model: GPT) -> GPT:
    model.reward_head = RewardHead(model.config.n_embd).to(model.tok_emb.weight.device)
    return model


def end_rewards(model: GPT, batch: PairBatch | tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Each row's reward, read at its end slot."""
    idx, valid, end = (batch.idx, batch.valid, batch.end) if isinstance(batch, PairBatch) else batch
    return model.reward_head(end_hidden(model, idx, valid, end)).float()


def bradley_terry_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor, center_coef: float = 0.0) -> torch.Tensor:
    """Per-pair loss: -log sigmoid(r_c - r_r), plus center_coef * (r_c + r_r)^2 (reward centring)."""
    loss = -F.logsigmoid(r_chosen - r_rejected)
    return loss + center_coef * (r_chosen + r_rejected) ** 2 if center_coef else loss


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a proportion (95% by default): unlike p +- z*se it stays inside [0, 1] and is
    honest for small n and for p near 0 or 1."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


@torch.no_grad()
def pair_scores(model: GPT, batches: list[PairBatch], device: torch.device | str = "cpu") -> torch.Tensor:
    """(n, 2) rewards (chosen, rejected) of every pair of the batches."""
    was_training = model.training
    model.eval()
    out = []
    for batch in batches:
        r = end_rewards(model, batch.to(torch.device(device)))
        out.append(torch.stack([r[:batch.pairs], r[batch.pairs:]], 1).cpu())
    model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, 2)


def accuracy_report(scores: torch.Tensor) -> dict[str, Any]:
    """Pairwise accuracy (ties count as wrong), its 95% Wilson interval and the mean margin of (n, 2) rewards."""
    n = scores.size(0)
    right = int((scores[:, 0] > scores[:, 1]).sum())
    low, high = wilson_interval(right, n)
    margin = float((scores[:, 0] - scores[:, 1]).mean()) if n else 0.0
    return {"pairs": n, "accuracy": right / n if n else 0.0, "accuracy_ci95": [round(low, 4), round(high, 4)],
            "mean_margin": margin, "mean_reward": float(scores.mean()) if n else 0.0}


class RewardObjective(PairObjective):
    """The trainer's `Objective` for a reward model: Bradley-Terry (plus centring) over `PairBatch`es; logs the
    batch's pairwise accuracy, mean margin and mean reward, and the held-out ones at each evaluation."""

    def __init__(self, center_coef: float = 0.0) -> None:
        self.center_coef = center_coef

    def prepare_model(self, model: GPT, weights: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor] | None:
        attach_head(model)
        if weights is not None and "reward_head.weight" not in weights:  # starting from the SFT model
            weights = {**weights, **{f"reward_head.{k}": v for k, v in model.reward_head.state_dict().items()}}
        return weights

    def loss(self, forward: Callable, model: GPT, batch: PairBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        r = end_rewards(model, batch)
        chosen, rejected = r[:batch.pairs], r[batch.pairs:]
        loss = bradley_terry_loss(chosen, rejected, self.center_coef).sum()
        return loss, {"accuracy": (chosen > rejected).sum(), "margin": (chosen - rejected).sum(),
                      "reward_mean": ((chosen + rejected) / 2).sum()}

    def evaluate(self, model: GPT, val_data: Any, info: Any, autocast: Any, token_bytes: Any) -> dict[str, float]:
        scores = pair_scores(model, val_data(), model.tok_emb.weight.device)
        report = accuracy_report(scores)
        val_loss = float(bradley_terry_loss(scores[:, 0], scores[:, 1], self.center_coef).mean())
        return {"val_loss": val_loss, "val_accuracy": report["accuracy"], "val_margin": report["mean_margin"]}


class RewardModel(nn.Module):
    """A trained reward model, for scoring (RL calls `from_checkpoint` and `score`)."""

    def __init__(self, model: GPT, tokenizer: Any = None) -> None:
        super().__init__()
        self.model, self.tokenizer = model, tokenizer
        self.end_id = tokenizer.special_tokens["<|end|>"] if tokenizer is not None else None
        self.pad_id = tokenizer.special_tokens["<|pad|>"] if tokenizer is not None else 0

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | torch.device = "cpu") -> "RewardModel":
        """A reward checkpoint (or a `lmforge reward train` run folder's newest one), verified, in eval mode."""
        from lmforge.checkpoint import checkpoint_tokenizer_dir, load_state, load_weights
        from lmforge.tokenizer import Tokenizer

        config, state, ckpt = load_state(path, device)
        if "reward_head.weight" not in state:
            raise LmforgeError(f"checkpoint {ckpt} has no reward head (train one with `lmforge reward train`)")
        model = attach_head(GPT(config))
        load_weights(model, state, ckpt / "model.safetensors")
        tokenizer = Tokenizer.load(checkpoint_tokenizer_dir(ckpt))
        return cls(model.to(device).eval(), tokenizer).eval()

    @property
    def device(self) -> torch.device:
        return self.model.tok_emb.weight.device

    def _rendered(self, ids: Sequence[int]) -> Rendered:
        ids = [int(t) for t in ids]
        if self.end_id is not None and (not ids or ids[-1] != self.end_id):
            ids.append(self.end_id)  # an unfinished answer is scored as if its turn closed here
        if len(ids) > self.model.config.block_size:
            raise LmforgeError(f"a sequence of {len(ids)} tokens is longer than the reward model's context "
                               f"({self.model.config.block_size})")
        return Rendered(tuple(ids), len(ids) - 1)

    @torch.no_grad()
    def score(self, sequences: Sequence[Sequence[int]], batch_size: int = 64, pad_side: str = "right") -> torch.Tensor:
        """Rewards (float32, one per sequence) of prompt+response token-id lists, each read at its end-of-turn
        token (the sequence's last; `<|end|>` is appended to one that lacks it). Order is kept; the result does
        not depend on batching or padding side."""
        out = []
        for i in range(0, len(sequences), batch_size):
            rows = [self._rendered(s) for s in sequences[i:i + batch_size]]
            idx, valid, end, _ = pad_rows(rows, self.pad_id, pad_side)  # type: ignore[arg-type]
            out.append(end_rewards(self.model, (idx.to(self.device), valid.to(self.device), end.to(self.device))))
        return torch.cat(out).cpu() if out else torch.zeros(0)


def score_pairs_file(checkpoint: str | Path, pairs_file: str | Path, out: str | Path | None = None,
                     batch_size: int = 32) -> dict[str, Any]:
    """`lmforge reward score`: the accuracy report of a reward model on a pairs file, and optionally each pair's
    rewards as JSONL (in the order of the pairs that fit the model's context)."""
    import json

    from lmforge.posttrain.preferences import load_pairs
    from lmforge.utils import atomic_write

    if batch_size < 1:
        raise LmforgeError(f"--batch-size must be >= 1 (got {batch_size})")
    rm = RewardModel.from_checkpoint(checkpoint)
    examples, stats = encode_pairs(rm.tokenizer, load_pairs(pairs_file), rm.model.config.block_size)
    scores = pair_scores(rm.model, fixed_pair_batches(examples, batch_size, rm.pad_id))
    if out is not None:
        with atomic_write(out) as f:
            for c, r in scores.tolist():
                f.write(json.dumps({"chosen_reward": round(c, 6), "rejected_reward": round(r, 6)}) + "\n")
    return {**accuracy_report(scores), "data": stats}


def split_pairs(pairs: list[Any], val_pairs: list[Any] | None, val_last: int, val_frac: float,
                max_train: int) -> tuple[list[Any], list[Any]]:
    """(train, held out): --val-data, else the last val_last pairs, else the last val_frac of them."""
    if val_pairs is None:
        n_val = val_last or (int(len(pairs) * val_frac) if len(pairs) > 1 else 0)
        if n_val >= len(pairs):
            raise LmforgeError(f"holding out {n_val} pairs leaves none of the {len(pairs)} to train on")
        pairs, val_pairs = pairs[:len(pairs) - n_val], pairs[len(pairs) - n_val:]
    return (pairs[:max_train] if max_train else pairs), val_pairs


def prepare_pairs(tok: Any, block_size: int, data: list[str], val_data: list[str] | None, val_last: int,
                  val_frac: float, max_train: int) -> tuple[list, list, dict[str, Any]]:
    """Read, split and render the pairs of a reward or DPO run; returns (train examples, held-out examples, info)."""
    from lmforge.posttrain.preferences import load_pairs

    pairs = [p for path in data for p in load_pairs(path)]
    val = [p for path in val_data for p in load_pairs(path)] if val_data else None
    train_pairs, val_pairs = split_pairs(pairs, val, val_last, val_frac, max_train)
    train_ex, train_stats = encode_pairs(tok, train_pairs, block_size)
    val_ex, val_stats = encode_pairs(tok, val_pairs, block_size)
    info = {"train": train_stats, "val": val_stats}
    print(f"pairs: {len(train_ex)} for training, {len(val_ex)} held out (train {train_stats}, held out "
          f"{val_stats})", file=sys.stderr)
    return train_ex, val_ex, info


def run_reward_train(cfg: RewardConfig, checkpoint: str | Path, out_dir: str | Path, data: list[str],
                     val_data: list[str] | None = None) -> dict[str, Any]:
    """Train a reward model from `checkpoint` (the SFT model) on pairs files; the same out_dir resumes exactly.
    Returns the training summary with the held-out `eval` report (accuracy, its 95% interval, mean margin)."""
    from lmforge.checkpoint import checkpoint_tokenizer_dir, load_config, resolve_checkpoint
    from lmforge.tokenizer import Tokenizer
    from lmforge.tokenizer.chat_format import ChatTokens
    from lmforge.train import train

    out_dir = Path(out_dir)
    base = resolve_checkpoint(checkpoint)
    tok_dir = checkpoint_tokenizer_dir(base)
    tok = Tokenizer.load(tok_dir)
    pad = ChatTokens.of(tok).pad
    block = load_config(base).block_size
    train_ex, val_ex, info = prepare_pairs(tok, block, data, val_data, cfg.val_last, cfg.val_frac, cfg.max_train)
    tcfg = cfg.train
    batches = PairBatches(train_ex, tcfg.batch_size, pad, tcfg.seed, cfg.group_batches, cfg.pad_multiple)
    val_batches = fixed_pair_batches(val_ex, tcfg.batch_size, pad, cfg.pad_multiple)
    summary = train(tcfg, batches, (lambda: val_batches) if val_batches else None, out_dir, init_checkpoint=base,
                    tokenizer_dir=tok_dir, objective=RewardObjective(cfg.center_coef))
    rm = RewardModel.from_checkpoint(summary["checkpoint"])
    report = accuracy_report(pair_scores(rm.model, val_batches))
    summary.update({"base_checkpoint": str(base), "data": info, "eval": report})
    write_json(out_dir / "reward_summary.json", summary)
    low, high = report["accuracy_ci95"]
    print(f"reward model: held-out accuracy {100 * report['accuracy']:.1f}% (95% CI {100 * low:.1f}-"
          f"{100 * high:.1f}%) on {report['pairs']} pairs, mean margin {report['mean_margin']:.3f}",
          file=sys.stderr)
    return summary

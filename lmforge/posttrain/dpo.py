"""Direct preference optimisation (`lmforge dpo`): the RL-free alternative on the same preference pairs.

    from lmforge.posttrain.dpo import DPOConfig, run_dpo
    summary = run_dpo(DPOConfig(), checkpoint="runs/sft", out_dir="runs/dpo", data=["pairs.jsonl"])

The loss of a pair (Rafailov et al. 2023) is -log sigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r))), where pi and
ref are the policy's and the frozen reference's (the starting checkpoint's) log-probabilities of the chosen and
rejected responses, each summed over the response's tokens only (the chat format's mask: the reply and its
`<|end|>`, never the prompt).

The reference never changes, so its log-probs are computed once, before training, and cached in the run folder
(`reference_logps.safetensors`), keyed by the sha256 of the pairs files, the reference weights and the rendering
settings: a resumed or repeated run reuses them, a changed input recomputes them. Each step then costs one
forward and backward of the policy, with no second model in memory.

Every step logs the policy's mean chosen and rejected log-probs (`chosen_logp`, `rejected_logp`), their shift from
the reference (`chosen_shift`, `rejected_shift`), the implicit reward margin `margin` = (pi_c - ref_c) -
(pi_r - ref_r) and the share of pairs where it is positive (`accuracy`). DPO's known failure, both log-probs
falling while the margin grows (probability moves to responses that are neither), shows up as both shifts going
negative together.
"""

from __future__ import annotations

import hashlib
import json
import sys
from functools import partial
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

from lmforge.model import GPT
from lmforge.posttrain.configs import DPOConfig
from lmforge.posttrain.pairs_batches import (PairBatch, PairBatches, PairExample, PairObjective,
                                             final_hidden, fixed_pair_batches, response_logps)
from lmforge.train.lora import finish_lora, lora_objective
from lmforge.utils import atomic_path, file_sha256, write_json

REFERENCE_FILE = "reference_logps.safetensors"


def dpo_loss(pi_chosen: torch.Tensor, pi_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, beta: float) -> torch.Tensor:
    """Per-pair DPO loss: -log sigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r)))."""
    return -F.logsigmoid(beta * ((pi_chosen - ref_chosen) - (pi_rejected - ref_rejected)))


@torch.no_grad()
def sequence_logps(model: GPT, batch: PairBatch) -> torch.Tensor:
    """Each row's summed response log-prob (2B,), float64, without gradients."""
    return response_logps(model, final_hidden(model, batch.idx, batch.valid), batch.targets).double()


def reference_logps(model: GPT, examples: list[PairExample], batch_size: int, pad_id: int) -> torch.Tensor:
    """(n, 2) reference log-probs (chosen, rejected) of every example, in order."""
    was_training = model.training
    model.eval()
    out = []
    for batch in fixed_pair_batches(examples, batch_size, pad_id):
        lp = sequence_logps(model, batch)
        out.append(torch.stack([lp[:batch.pairs], lp[batch.pairs:]], 1))
    model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, 2, dtype=torch.float64)


def reference_key(pair_files: list[str], reference: Path, block_size: int, split: dict[str, Any]) -> str:
    """What the cached reference log-probs depend on: the pairs files' bytes, the reference weights, the context
    (it decides how prompts are shortened) and the train/held-out split."""
    h = hashlib.sha256()
    for path in pair_files:
        h.update(file_sha256(Path(path)).encode())
    h.update(file_sha256(reference / "model.safetensors").encode())
    h.update(json.dumps({"block_size": block_size, **split}, sort_keys=True).encode())
    return h.hexdigest()


def split_reference_logps(model: GPT, train_ex: list[PairExample], val_ex: list[PairExample], batch_size: int,
                          pad_id: int) -> dict[str, torch.Tensor]:
    """Reference log-probs of both splits; bound with `partial` so the model is freed once the cache is filled."""
    return {"train": reference_logps(model, train_ex, batch_size, pad_id),
            "val": reference_logps(model, val_ex, batch_size, pad_id)}


def cached_reference(out_dir: Path, key: str,
                     compute: Callable[[], dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The run's cached reference log-probs when their key matches, else computed now and written atomically."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    path = out_dir / REFERENCE_FILE
    if path.is_file():
        try:
            with safe_open(str(path), "pt") as f:
                if (f.metadata() or {}).get("key") == key:
                    return {name: f.get_tensor(name) for name in f.keys()}
        except Exception:  # a damaged cache is recomputed, never trusted
            pass
    tensors = compute()
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata={"key": key})
    print(f"dpo: reference log-probs computed and cached in {path}", file=sys.stderr)
    return tensors


class DPOObjective(PairObjective):
    """The trainer's `Objective` for DPO over `PairBatch`es that carry the reference log-probs."""

    def __init__(self, beta: float) -> None:
        self.beta = beta

    def terms(self, logps: torch.Tensor, batch: PairBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(summed loss, summed metrics) from the policy's row log-probs and the batch's reference ones."""
        n, ref = batch.pairs, batch.ref_logps.to(logps.dtype)
        pc, pr, rc, rr = logps[:n], logps[n:], ref[:n], ref[n:]
        margin = (pc - rc) - (pr - rr)
        loss = dpo_loss(pc, pr, rc, rr, self.beta).sum()
        return loss, {"chosen_logp": pc.sum(), "rejected_logp": pr.sum(), "chosen_shift": (pc - rc).sum(),
                      "rejected_shift": (pr - rr).sum(), "margin": margin.sum(), "accuracy": (margin > 0).sum()}

    def loss(self, forward: Callable, model: GPT, batch: PairBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.terms(response_logps(model, final_hidden(model, batch.idx, batch.valid), batch.targets), batch)

    def evaluate(self, model: GPT, val_data: Any, info: Any, autocast: Any, token_bytes: Any) -> dict[str, float]:
        was_training = model.training
        model.eval()
        sums: dict[str, float] = {}
        n = 0
        for batch in val_data():
            batch = batch.to(model.tok_emb.weight.device)
            loss, metrics = self.terms(sequence_logps(model, batch), batch)
            n += batch.pairs
            for k, v in {"loss": loss, **metrics}.items():
                sums[k] = sums.get(k, 0.0) + float(v)
        model.train(was_training)
        return {f"val_{k}": v / max(n, 1) for k, v in sums.items()}


def run_dpo(cfg: DPOConfig, checkpoint: str | Path, out_dir: str | Path, data: list[str],
            val_data: list[str] | None = None) -> dict[str, Any]:
    """DPO from `checkpoint` (policy start and frozen reference) on pairs files; the same out_dir resumes exactly."""
    from lmforge.checkpoint import checkpoint_tokenizer_dir, load_model, resolve_checkpoint
    from lmforge.posttrain.reward import prepare_pairs
    from lmforge.tokenizer import Tokenizer
    from lmforge.tokenizer.chat_format import ChatTokens
    from lmforge.train import train

    out_dir = Path(out_dir)
    base = resolve_checkpoint(checkpoint)
    tok_dir = checkpoint_tokenizer_dir(base)
    tok = Tokenizer.load(tok_dir)
    pad = ChatTokens.of(tok).pad
    reference, _ = load_model(base)
    block = reference.config.block_size
    train_ex, val_ex, info = prepare_pairs(tok, block, data, val_data, cfg.val_last, cfg.val_frac, cfg.max_train)
    split = {"val_last": cfg.val_last, "val_frac": cfg.val_frac, "max_train": cfg.max_train,
             "val_data": list(val_data or [])}
    key = reference_key(list(data) + list(val_data or []), base, block, split)
    refs = cached_reference(out_dir, key, partial(split_reference_logps, reference, train_ex, val_ex,
                                                  cfg.ref_batch_size, pad))
    del reference
    tcfg = cfg.train
    batches = PairBatches(train_ex, tcfg.batch_size, pad, tcfg.seed, cfg.group_batches, cfg.pad_multiple,
                          refs["train"])
    val_batches = fixed_pair_batches(val_ex, tcfg.batch_size, pad, cfg.pad_multiple, refs["val"])
    objective = lora_objective(cfg, DPOObjective(cfg.beta), base, out_dir)
    summary = train(tcfg, batches, (lambda: val_batches) if val_batches else None, out_dir, init_checkpoint=base,
                    tokenizer_dir=tok_dir, objective=objective)
    finish_lora(cfg, summary, objective, out_dir, tok_dir, "dpo")
    if val_batches:
        policy, _ = load_model(summary["checkpoint"])
        summary["eval"] = objective.evaluate(policy, lambda: val_batches, None, None, None)
        print(f"dpo: held-out accuracy {100 * summary['eval']['val_accuracy']:.1f}%, margin "
              f"{summary['eval']['val_margin']:.3f}, chosen shift {summary['eval']['val_chosen_shift']:.3f}, "
              f"rejected shift {summary['eval']['val_rejected_shift']:.3f}", file=sys.stderr)
    summary.update({"base_checkpoint": str(base), "data": info, "beta": cfg.beta})
    write_json(out_dir / "dpo_summary.json", summary)
    return summary

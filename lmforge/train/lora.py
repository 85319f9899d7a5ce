"""LoRA (Hu et al. 2021): fine-tune a low-rank change of chosen matrices while the model itself stays frozen.

Each adapted matrix W (out x in) becomes W + (alpha / rank) * B @ A, with A (rank x in) random and B (out x rank)
zero, so an adapter at initialisation changes nothing. Only A and B are trained, optimised (AdamW: the stages
that offer `--lora-rank` switch to it) and saved: a checkpoint of a LoRA run holds the adapters and names its base
checkpoint (path and sha256) in config.json's "lora" entry, a small fraction of a full checkpoint's size.
`lmforge.checkpoint.load_state` adds the adapters to the base's weights when it reads such a checkpoint, so
generate, chat, evaluation and every export see the adapted model with nothing more to do; `--merge` also writes
the merged weights as an ordinary checkpoint (`merged/` in the run folder) that no longer needs the base.

The change rides in a parametrization (`torch.nn.utils.parametrize`): reading `module.weight` returns the adapted
matrix, so every code path that uses the weights (the training forward, the inference engine's fused copies)
computes the adapted model without knowing about LoRA. The model's `state_dict()` is then its adapters only
(renamed `layers.N.attn.wq.lora_a`, ...), which is what the trainer's checkpoints write.

Use: a stage's config inherits `LoRAFields` (the flags, in the torch-free `lmforge.train.lora_config`) and its run
wraps its trainer objective with `lora_objective` and reports with `finish_lora`.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn
from torch.nn.utils import parametrize

from lmforge.tokenizer import SPECIAL_TOKENS
from lmforge.train.lora_config import TARGETS, LoRAFields
from lmforge.utils import LmforgeError, file_sha256

_PARAM = ".parametrizations.weight.0."  # where a parametrized weight's adapter tensors sit in the module tree


class LoRADelta(nn.Module):
    """The parametrization W -> W + scale * B @ A of one matrix."""

    def __init__(self, out_features: int, in_features: int, rank: int, scale: float, like: torch.Tensor) -> None:
        super().__init__()
        self.scale = scale
        self.lora_a = nn.Parameter(torch.empty(rank, in_features, device=like.device, dtype=like.dtype))
        self.lora_b = nn.Parameter(torch.zeros(out_features, rank, device=like.device, dtype=like.dtype))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))  # PEFT's initialisation of A

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight + self.scale * (self.lora_b @ self.lora_a)


class TokenRows(nn.Module):
    """The parametrization W -> W with `lora_rows` (zero at first) added to the rows of `token_ids`: the
    embedding and output rows of tokens a base model never saw, trained beside the low-rank matrices."""

    def __init__(self, token_ids: list[int], like: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("token_ids", torch.tensor(token_ids, device=like.device), persistent=False)
        self.lora_rows = nn.Parameter(torch.zeros(len(token_ids), like.size(1), device=like.device, dtype=like.dtype))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight.index_add(0, self.token_ids, self.lora_rows)


def _adapters_only(module: nn.Module, state: dict[str, Any], prefix: str, local_metadata: Any) -> None:
    """state_dict post-hook of a LoRA model: keep the adapters, under short names (`layers.0.attn.wq.lora_a`);
    a tied output head shares the embedding's rows, which are saved once."""
    for key in list(state):
        value = state.pop(key)
        if _PARAM + "lora_" in key and not (module.config.tie_embeddings and key.startswith("lm_head.")):
            state[key.replace(_PARAM, ".")] = value


def add_adapters(model: nn.Module, fields: LoRAFields, base: Path) -> int:
    """Freeze `model` (a GPT holding the base weights) and give the target matrices of every block adapters;
    returns the number of adapter parameters. `base` is the checkpoint the adapters will belong to."""
    scale = fields.lora_alpha / fields.lora_rank
    for p in model.parameters():
        p.requires_grad_(False)
    added = 0
    for block in model.layers:
        for target in fields.lora_targets:
            try:
                linear = block.get_submodule(TARGETS[target])
            except AttributeError:
                raise LmforgeError(f"--lora-targets {target}: this model has no such matrix "
                                   f"(mlp={model.config.mlp!r})") from None
            delta = LoRADelta(linear.out_features, linear.in_features, fields.lora_rank, scale, linear.weight)
            parametrize.register_parametrization(linear, "weight", delta)
            added += delta.lora_a.numel() + delta.lora_b.numel()
    vocab = model.config.vocab_size
    token_ids = list(range(vocab - len(SPECIAL_TOKENS), vocab)) if fields.lora_special_rows else []
    if token_ids:  # the special tokens take the vocabulary's last ids (lmforge.tokenizer)
        rows = TokenRows(token_ids, model.tok_emb.weight)
        parametrize.register_parametrization(model.tok_emb, "weight", rows)
        if not model.config.tie_embeddings:
            rows = TokenRows(token_ids, model.lm_head.weight)
        parametrize.register_parametrization(model.lm_head, "weight", rows)  # tied: the same rows
        added += rows.lora_rows.numel() * (1 if model.config.tie_embeddings else 2)
    base = Path(base).resolve()
    model.checkpoint_meta = {"lora": {"base": str(base), "base_sha256": file_sha256(base / "model.safetensors"),
                                      "rank": fields.lora_rank, "alpha": fields.lora_alpha,
                                      "targets": list(fields.lora_targets), "token_ids": token_ids}}
    model.register_state_dict_post_hook(_adapters_only)
    return added


def load_adapters(model: nn.Module, tensors: dict[str, torch.Tensor], where: Path) -> None:
    """Copy saved adapters (short names, as `state_dict` gives them) into a model with the same adapters."""
    params = {name.replace(_PARAM, "."): p for name, p in model.named_parameters() if _PARAM + "lora_" in name}
    if set(params) != set(tensors):
        raise LmforgeError(f"LoRA adapters in {where} do not match the run's --lora-rank/--lora-targets")
    with torch.no_grad():
        for name, p in params.items():
            if p.shape != tensors[name].shape:
                raise LmforgeError(f"LoRA adapter {name} in {where} has shape {tuple(tensors[name].shape)}, the "
                                   f"run's is {tuple(p.shape)}")
            p.copy_(tensors[name])


class LoRAObjective:
    """A trainer `Objective` that trains adapters on top of another objective (next-token loss, DPO): it builds
    the model from the base checkpoint's weights, adds the adapters (those of the run's newest checkpoint on a
    resume), and otherwise defers to the wrapped objective."""

    def __init__(self, inner: Any, fields: LoRAFields, base: Path, out_dir: Path) -> None:
        self.inner, self.fields, self.base, self.out_dir = inner, fields, Path(base), Path(out_dir)
        self.adapter_params = 0

    def prepare_model(self, model: nn.Module, weights: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor]:
        """The trainer passes the start's weights; a LoRA run always starts from the base's and adds adapters."""
        from lmforge.checkpoint import load_state, load_weights, train_checkpoints
        from safetensors.torch import load_file

        base_weights = self.inner.prepare_model(model, load_state(self.base)[1])
        load_weights(model, base_weights, self.base)
        self.adapter_params = add_adapters(model, self.fields, self.base)
        resume = train_checkpoints(self.out_dir)
        if resume:  # the trainer verified this checkpoint when it read it
            load_adapters(model, load_file(resume[-1] / "model.safetensors"), resume[-1])
        return {name: p.detach() for name, p in model.named_parameters(remove_duplicate=False)}

    def __getattr__(self, name: str) -> Callable:
        return getattr(self.inner, name)  # count, rows_and_width, to, loss, evaluate


def merge_into_checkpoint(checkpoint: str | Path, out: Path, tokenizer_dir: Path) -> Path:
    """Write the adapted model of a LoRA checkpoint as an ordinary checkpoint (weights merged; no base needed)."""
    from lmforge.checkpoint import load_model, save_model

    model, ckpt = load_model(checkpoint)
    return save_model(out, model, tokenizer_dir, meta={"merged_from": str(Path(ckpt).resolve())})


def lora_objective(fields: LoRAFields, inner: Any, base: Path, out_dir: Path) -> Any:
    """The trainer objective: `inner` itself, or `inner` training adapters on `base` with --lora-rank. A run
    folder whose checkpoints were written with other LoRA settings (or none) is refused: its optimizer state
    and weights would not fit."""
    from lmforge.checkpoint import read_checkpoint_config, train_checkpoints

    existing = train_checkpoints(out_dir)
    saved = read_checkpoint_config(existing[-1]).get("lora") if existing else None
    now = (fields.lora_rank, fields.lora_alpha, list(fields.lora_targets), fields.lora_special_rows)
    if saved is not None and (saved.get("rank"), saved.get("alpha"), saved.get("targets"),
                              bool(saved.get("token_ids"))) != now \
            or saved is None and existing and fields.lora_rank:
        was = f"rank {saved.get('rank')}, alpha {saved.get('alpha')}, targets {saved.get('targets')}" \
            if saved is not None else "full fine-tuning"
        raise LmforgeError(f"--lora-rank: {out_dir} holds a run of {was}; resume it with the same --lora-rank, "
                           "--lora-alpha, --lora-targets and --lora-special-rows, or give another --out")
    return LoRAObjective(inner, fields, base, out_dir) if fields.lora_rank else inner


def finish_lora(fields: LoRAFields, summary: dict[str, Any], objective: Any, out_dir: Path, tokenizer_dir: Path,
                stage: str) -> None:
    """Report the adapters' size and, with --merge, write the merged checkpoint; both go into the summary."""
    if not fields.lora_rank:
        return
    total = max(1, (summary.get("params") or 0) - objective.adapter_params)  # the base model's own
    summary["lora"] = {"rank": fields.lora_rank, "alpha": fields.lora_alpha, "targets": list(fields.lora_targets),
                       "adapter_params": objective.adapter_params}
    print(f"{stage}: LoRA rank {fields.lora_rank} on {' '.join(fields.lora_targets)}: {objective.adapter_params:,} "
          f"trained parameters ({100 * objective.adapter_params / total:.2f}% of the base model's)", file=sys.stderr)
    if fields.merge and summary.get("checkpoint"):
        merged = merge_into_checkpoint(summary["checkpoint"], out_dir / "merged", tokenizer_dir)
        summary["merged_checkpoint"] = str(merged)
        print(f"{stage}: merged weights written to {merged} (an ordinary checkpoint)", file=sys.stderr)

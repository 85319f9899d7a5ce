"""Optimizers: AdamW with weight-decay groups, and Muon for the hidden weight matrices.

Muon (Jordan et al., 2024; used by modded-nanogpt and nanochat) takes SGD momentum and replaces each matrix's
update by the nearest semi-orthogonal matrix, computed with a few Newton-Schulz iterations. Every direction of
the update then moves at the same rate, which lets a much higher learning rate train stably and reaches a given
loss in fewer steps than AdamW. It only makes sense for 2-D hidden matrices: embeddings, the output head and the
norm gains stay on AdamW.

Each parameter group carries `base_lr`; the trainer sets `lr = base_lr * schedule(step)` before every step.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from lmforge.train.config import TrainConfig

# Quintic Newton-Schulz coefficients chosen (Jordan et al.) to push singular values towards 1 as fast as possible
# from a spectral norm <= 1; they do not converge exactly, which Muon does not need.
NS_COEFFS = (3.4445, -4.7750, 2.0315)


def orthogonalize(g: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """Approximately U V^T of g = U S V^T, by Newton-Schulz iterations on the smaller Gram matrix."""
    a, b, c = NS_COEFFS
    x = g.to(torch.bfloat16) if g.is_cuda else g.float()
    tall = x.size(0) > x.size(1)
    if tall:
        x = x.T
    x = x / (x.norm() + 1e-7)  # Frobenius norm bounds the spectral norm, so the iteration starts inside its basin
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    if tall:
        x = x.T
    return x.to(g.dtype)


class Muon(torch.optim.Optimizer):
    """Nesterov momentum, then the orthogonalized update scaled so tall and wide matrices move alike."""

    def __init__(self, params, lr: float = 0.02, momentum: float = 0.95, weight_decay: float = 0.0,
                 ns_steps: int = 5) -> None:
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, ns_steps=ns_steps))

    @torch.no_grad()
    def step(self, closure=None):  # noqa: D102 - torch's optimizer interface
        for group in self.param_groups:
            lr, mom, wd = group["lr"], group["momentum"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.dim() != 2:
                    raise ValueError(f"Muon takes 2-D matrices only; got a parameter of shape {tuple(p.shape)}")
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                buf = state["momentum_buffer"]
                buf.lerp_(p.grad, 1 - mom)
                update = orthogonalize(p.grad.lerp(buf, mom), group["ns_steps"])
                scale = max(1.0, p.size(0) / p.size(1)) ** 0.5
                if wd:
                    p.mul_(1 - lr * wd)
                p.add_(update, alpha=-lr * scale)
        return None


def _adamw(groups: list[dict], cfg: TrainConfig, device_type: str) -> torch.optim.AdamW:
    for g in groups:
        g["lr"] = g["base_lr"]
    return torch.optim.AdamW(groups, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps,
                             fused=device_type == "cuda" or None)


def build_optimizers(model: nn.Module, cfg: TrainConfig) -> list[torch.optim.Optimizer]:
    """The optimizers for `model` (a GPT, possibly wrapped), each group tagged with its `base_lr`.

    AdamW groups: decayed matrices, and undecayed vectors (norm gains, which decay would pull towards 0, i.e.
    towards switching the layer off). With optimizer="muon", the matrices inside the blocks go to Muon instead and
    AdamW keeps the embeddings and the output head.
    """
    device_type = next(model.parameters()).device.type
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    vectors = [p for n, p in named if p.dim() < 2]
    embed = [p for n, p in named if p.dim() >= 2 and ("tok_emb" in n or "pos_emb" in n)]
    head = [p for n, p in named if p.dim() >= 2 and "lm_head" in n]
    hidden = [p for n, p in named if p.dim() >= 2 and ".layers." in f".{n}"]
    assert len(vectors) + len(embed) + len(head) + len(hidden) == len(named), "a parameter fell outside every group"
    embed_lr = cfg.embed_lr if cfg.embed_lr is not None else cfg.lr
    if cfg.optimizer == "adamw":
        groups = [dict(params=embed, base_lr=embed_lr, weight_decay=cfg.weight_decay),
                  dict(params=head + hidden, base_lr=cfg.lr, weight_decay=cfg.weight_decay),
                  dict(params=vectors, base_lr=cfg.lr, weight_decay=0.0)]
        return [_adamw([g for g in groups if g["params"]], cfg, device_type)]
    groups = [dict(params=embed, base_lr=embed_lr, weight_decay=cfg.weight_decay),
              dict(params=head, base_lr=cfg.lr, weight_decay=cfg.weight_decay),
              dict(params=vectors, base_lr=cfg.lr, weight_decay=0.0)]
    adamw = _adamw([g for g in groups if g["params"]], cfg, device_type)
    muon = Muon([dict(params=hidden, base_lr=cfg.muon_lr)], lr=cfg.muon_lr, momentum=cfg.muon_momentum,
                weight_decay=cfg.weight_decay)
    return [adamw, muon]

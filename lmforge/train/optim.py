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
    """Approximately U V^T of g = U S V^T (or of each matrix of a stack), by Newton-Schulz iterations on the
    smaller Gram matrix."""
    a, b, c = NS_COEFFS
    x = g.to(torch.bfloat16) if g.is_cuda else g.float()
    tall = x.size(-2) > x.size(-1)
    if tall:
        x = x.mT
    # The Frobenius norm bounds the spectral norm, so the iteration starts inside its basin.
    x = x / (x.norm(dim=(-2, -1), keepdim=True) + 1e-7)
    for _ in range(steps):
        gram = x @ x.mT
        x = torch.baddbmm(x, torch.baddbmm(gram, gram, gram, beta=b, alpha=c), x, beta=a) if x.dim() == 3 \
            else a * x + (b * gram + c * gram @ gram) @ x
    if tall:
        x = x.mT
    return x.to(g.dtype)


class Muon(torch.optim.Optimizer):
    """Nesterov momentum, then the orthogonalized update scaled so tall and wide matrices move alike.

    Matrices of the same shape (a model has only a few shapes) are orthogonalized together as one batched
    product: on a CPU the per-call overhead of dozens of small matmuls otherwise costs more than the arithmetic.
    """

    def __init__(self, params, lr: float = 0.02, momentum: float = 0.95, weight_decay: float = 0.0,
                 ns_steps: int = 5) -> None:
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, ns_steps=ns_steps))

    @torch.no_grad()
    def step(self, closure=None):  # noqa: D102 - torch's optimizer interface
        for group in self.param_groups:
            lr, mom, wd = group["lr"], group["momentum"], group["weight_decay"]
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            for p in params:
                if p.dim() != 2:
                    raise ValueError(f"Muon takes 2-D matrices only; got a parameter of shape {tuple(p.shape)}")
                if "momentum_buffer" not in self.state[p]:
                    self.state[p]["momentum_buffer"] = torch.zeros_like(p)
            grads = [p.grad for p in params]
            bufs = [self.state[p]["momentum_buffer"] for p in params]
            torch._foreach_lerp_(bufs, grads, 1 - mom)
            nesterov = torch._foreach_lerp(grads, bufs, mom)
            by_shape: dict[tuple[int, int], list[int]] = {}
            for i, p in enumerate(params):
                by_shape.setdefault(tuple(p.shape), []).append(i)
            updates: list[torch.Tensor] = [None] * len(params)  # type: ignore[list-item]
            for (rows, cols), idx in by_shape.items():
                ortho = orthogonalize(torch.stack([nesterov[i] for i in idx]), group["ns_steps"])
                ortho.mul_(max(1.0, rows / cols) ** 0.5)
                for j, i in enumerate(idx):
                    updates[i] = ortho[j]
            if wd:
                torch._foreach_mul_(params, 1 - lr * wd)
            torch._foreach_add_(params, updates, alpha=-lr)
        return None


def _adamw(groups: list[dict], cfg: TrainConfig, device_type: str) -> torch.optim.AdamW:
    for g in groups:
        g["lr"] = g["base_lr"]
    # The fused kernel (CUDA and CPU) updates each parameter in one pass instead of a dozen foreach passes:
    # 8.1 -> 1.5 ms per step on the tiny preset, 2.0 -> 0.6 ms at nanoGPT's CPU shape (1 thread).
    return torch.optim.AdamW(groups, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps,
                             fused=device_type in ("cuda", "cpu") or None)


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

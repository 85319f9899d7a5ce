"""Optimizers: AdamW with weight-decay groups, and Muon for the hidden weight matrices.

Muon (Jordan et al., 2024; used by modded-nanogpt and nanochat) takes SGD momentum and replaces each matrix's
update by the nearest semi-orthogonal matrix, computed with a few Newton-Schulz iterations. Every direction of
the update then moves at the same rate, which lets a much higher learning rate train stably and reaches a given
loss in fewer steps than AdamW. It only makes sense for 2-D hidden matrices: embeddings, the output head and the
norm gains stay on AdamW.

Each parameter group carries `base_lr`; the trainer sets `lr = base_lr * schedule(step)` before every step.
"""

from __future__ import annotations

from typing import Any

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

    Distributed (as modded-nanogpt and nanochat do it): the Newton-Schulz iterations are the expensive part, so
    each process orthogonalizes only its share of each shape's matrices (a contiguous slice of ceil(n / K) of
    them: equal work, since matrices of one shape cost the same; the slice a process gets rotates from shape to
    shape, so the remainders of shapes whose count K does not divide land on different processes) and the
    results are all-gathered. Under DDP every
    process already holds the averaged gradient. Under FSDP2 a parameter is a DTensor sharded by rows: the local
    row shards of a shape's momentum-applied gradients are all-gathered into whole matrices first (Newton-Schulz
    needs the whole matrix), and each process keeps its own rows of the update. Momentum buffers stay sharded like
    their parameters. Collectives go in the dtype the iterations use (bf16 on CUDA, fp32 on CPU), so a K-process
    step computes what one process computes.
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
            grads = [_local(p.grad) for p in params]
            bufs = [_local(self.state[p]["momentum_buffer"]) for p in params]
            torch._foreach_lerp_(bufs, grads, 1 - mom)
            nesterov = torch._foreach_lerp(grads, bufs, mom)
            by_shape: dict[tuple[int, int], list[int]] = {}
            for i, p in enumerate(params):
                by_shape.setdefault(tuple(p.shape), []).append(i)
            updates: list[torch.Tensor] = [None] * len(params)  # type: ignore[list-item]
            for turn, ((rows, cols), idx) in enumerate(by_shape.items()):
                ortho = _orthogonalize_shared([params[i] for i in idx], torch.stack([nesterov[i] for i in idx]),
                                              group["ns_steps"], turn)
                ortho.mul_(max(1.0, rows / cols) ** 0.5)
                for j, i in enumerate(idx):
                    updates[i] = ortho[j]
            values = [_local(p) for p in params]
            if wd:
                torch._foreach_mul_(values, 1 - lr * wd)
            torch._foreach_add_(values, updates, alpha=-lr)
        return None


def _local(t: torch.Tensor) -> torch.Tensor:
    """This process's part of a tensor: a DTensor's local shard (FSDP2), else the tensor itself."""
    return t.to_local() if hasattr(t, "to_local") else t


def _row_shard(params: list[torch.Tensor], world: int, rank: int) -> tuple[int, int, int]:
    """(first row, rows, rows per full shard) of this process's shard of matrices sharded by rows the way FSDP2
    shards them (torch.chunk: ceil(rows / K) per process, the last ones shorter or empty); checked against the
    actual local shards."""
    p = params[0]
    placements = getattr(p, "placements", None)
    if placements is None or len(placements) != 1 or not placements[0].is_shard(0):
        raise ValueError(f"Muon under FSDP expects parameters sharded by rows over one mesh; got {placements}")
    per = -(-p.shape[0] // world)
    first = min(rank * per, p.shape[0])
    rows = min(per, p.shape[0] - first)
    if any(_local(q).shape[0] != rows for q in params):
        raise ValueError(f"Muon: a local shard's rows differ from torch.chunk's layout ({rows} expected)")
    return first, rows, per


def _orthogonalize_shared(params: list[torch.Tensor], local: torch.Tensor, steps: int, turn: int) -> torch.Tensor:
    """`orthogonalize` of a stack of same-shaped matrices (`local`: their local parts), the work shared among
    processes (see `Muon`): process r takes slice (r + turn) % K. Returns the local part of each update, in the
    parameters' dtype."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return orthogonalize(local, steps)
    world, rank = dist.get_world_size(), dist.get_rank()
    wire = torch.bfloat16 if local.is_cuda else torch.float32  # what orthogonalize computes in anyway
    sharded = hasattr(params[0], "to_local")
    if sharded:  # gather the row shards into whole matrices, padding each shard to ceil(rows / K)
        first, rows, per = _row_shard(params, world, rank)
        padded = torch.zeros((local.shape[0], per, local.shape[2]), dtype=wire, device=local.device)
        padded[:, :rows] = local
        parts = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(parts, padded)
        whole = torch.cat(parts, dim=1)[:, :params[0].shape[0]]
    else:
        whole = local.to(wire)
    n = whole.shape[0]
    share = -(-n // world)
    mine = torch.zeros((share, *whole.shape[1:]), dtype=wire, device=whole.device)
    slice_of = [(r + turn) % world for r in range(world)]  # process r's slice
    own = whole[slice_of[rank] * share:(slice_of[rank] + 1) * share]
    if len(own):
        mine[:len(own)] = orthogonalize(own, steps)
    results = [torch.empty_like(mine) for _ in range(world)]
    dist.all_gather(results, mine)
    by_slice = [results[slice_of.index(s)] for s in range(world)]
    ortho = torch.cat(by_slice)[:n].to(local.dtype)
    return ortho[:, first:first + rows] if sharded else ortho


def _adamw(groups: list[dict], cfg: TrainConfig, device_type: str) -> torch.optim.AdamW:
    for g in groups:
        g["lr"] = g["base_lr"]
    return fused_adamw(groups, device_type, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps)


def fused_adamw(params: Any, device_type: str, **kwargs: Any) -> torch.optim.AdamW:
    """AdamW with the fused kernel where torch has one (CUDA and CPU): it updates each parameter in one pass instead
    of a dozen foreach passes: 8.1 -> 1.5 ms per step on the tiny preset, 2.0 -> 0.6 ms at nanoGPT's CPU shape
    (1 thread). Also the optimizer TRL's trainers use by default (transformers' `adamw_torch_fused`).

    The fused kernel writes the parameters without bumping their version counters (torch 2.13, CPU), and those
    counters are how `model.weights_key` sees that an engine's prepared weights are stale: an RL run that samples
    through one engine between steps sampled from its first weights. A post-step hook bumps them."""
    optimizer = torch.optim.AdamW(params, fused=device_type in ("cuda", "cpu") or None, **kwargs)
    if optimizer.defaults.get("fused"):
        optimizer.register_step_post_hook(_mark_updated)
    return optimizer


def _mark_updated(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
    torch.autograd.graph.increment_version([p for g in optimizer.param_groups for p in g["params"]])


def width_lr_scale(cfg: TrainConfig, width: int) -> float:
    """Factor on AdamW's rate for matrices that map the model's width (hidden matrices, the output head).

    muP (Yang et al., "Tensor Programs V"): under Adam, a matrix whose input is the width moves its outputs by
    about lr * fan_in per step, so the rate tuned at one width must shrink as 1 / width to keep the change of
    every activation the same. Embeddings (their input is one token) and norm gains (vectors) keep their rate.
    Narrower models than `lr_base_width` keep the tuned rate rather than raising it beyond what was tried.
    """
    if not cfg.lr_base_width:
        return 1.0
    return min(1.0, cfg.lr_base_width / width)


def build_optimizers(model: nn.Module, cfg: TrainConfig, width: int | None = None) -> list[torch.optim.Optimizer]:
    """The optimizers for `model` (a GPT, possibly wrapped), each group tagged with its `base_lr`.

    AdamW groups: decayed matrices, and undecayed vectors (norm gains, which decay would pull towards 0, i.e.
    towards switching the layer off). With optimizer="muon", the matrices inside the blocks go to Muon instead and
    AdamW keeps the embeddings and the output head. `width` (the model's n_embd; default: the unwrapped model's)
    scales AdamW's matrix rates by `width_lr_scale`; a tied embedding is the output head too and takes the head's
    rate (the lower one), since at a large width the head is where a too-high rate first blows up.
    """
    device_type = next(model.parameters()).device.type
    raw = getattr(model, "module", model)  # DDP keeps the GPT as .module
    width = width or raw.config.n_embd
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    vectors = [p for n, p in named if p.dim() < 2]
    head_ids = {id(p) for n, p in named if p.dim() >= 2 and "lm_head" in n}
    if raw.config.tie_embeddings:
        head_ids |= {id(p) for n, p in named if "tok_emb" in n}
    head = [p for n, p in named if id(p) in head_ids]
    embed = [p for n, p in named if p.dim() >= 2 and ("tok_emb" in n or "pos_emb" in n) and id(p) not in head_ids]
    hidden = [p for n, p in named if p.dim() >= 2 and ".layers." in f".{n}"]
    assert len(vectors) + len(embed) + len(head) + len(hidden) == len(named), "a parameter fell outside every group"
    embed_lr = cfg.embed_lr if cfg.embed_lr is not None else cfg.lr
    matrix_lr = cfg.lr * width_lr_scale(cfg, width)
    if cfg.optimizer == "adamw":
        groups = [dict(params=embed, base_lr=embed_lr, weight_decay=cfg.weight_decay),
                  dict(params=head + hidden, base_lr=matrix_lr, weight_decay=cfg.weight_decay),
                  dict(params=vectors, base_lr=cfg.lr, weight_decay=0.0)]
        return [_adamw([g for g in groups if g["params"]], cfg, device_type)]
    groups = [dict(params=embed, base_lr=embed_lr, weight_decay=cfg.weight_decay),
              dict(params=head, base_lr=matrix_lr, weight_decay=cfg.weight_decay),
              dict(params=vectors, base_lr=cfg.lr, weight_decay=0.0)]
    adamw = _adamw([g for g in groups if g["params"]], cfg, device_type)
    muon = Muon([dict(params=hidden, base_lr=cfg.muon_lr)], lr=cfg.muon_lr, momentum=cfg.muon_momentum,
                weight_decay=cfg.weight_decay)
    return [adamw, muon]

"""Distributed setup: one process per device under torchrun; DDP replicates the model, FSDP2 shards it.

torchrun sets RANK, LOCAL_RANK and WORLD_SIZE; without them the run is a single process and nothing here touches
torch.distributed. Backend: NCCL on GPUs, gloo on CPU (what the 2-process CI test uses).
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn

from lmforge.utils import LmforgeError, resolve_device


@dataclass
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def pick_device(preference: str = "auto", local_rank: int = 0) -> torch.device:
    """This process's device: `--device` checked by `resolve_device` (one clear error for a typo or an absent GPU);
    a plain "cuda" means the GPU of this process's local rank under torchrun."""
    name = resolve_device(preference)
    return torch.device("cuda", local_rank) if name == "cuda" else torch.device(name)


def setup_distributed(device: str = "auto", fsdp: bool = False) -> DistInfo:
    """Join the process group torchrun describes (if any) and pick this process's device. FSDP2 shards over the
    processes of a group, so `--fsdp` in a single process is refused here, before a run folder is touched."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if fsdp and world < 2:
        raise LmforgeError("--fsdp shards the model over processes: run under torchrun with --nproc_per_node 2 or "
                           "more (a single process trains without it)")
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    dev = pick_device(device, local_rank)
    if world > 1 and not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo",
                                device_id=dev if dev.type == "cuda" else None)
    return DistInfo(rank, local_rank, world, dev)


def wrap_model(model: nn.Module, info: DistInfo, fsdp: bool) -> nn.Module:
    """DDP (every rank holds the model, gradients are averaged) or FSDP2 (each block's parameters sharded across
    ranks and gathered just in time), for models whose weights, gradients and optimizer state do not fit one
    device. Both average gradients over ranks, so the trainer scales its loss the same way for each."""
    if not info.distributed and not fsdp:
        return model
    if fsdp:
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) \
            if info.device.type == "cuda" else None
        kwargs = {"mp_policy": mp} if mp is not None else {}
        for block in model.layers:
            fully_shard(block, **kwargs)
        fully_shard(model, **kwargs)
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    return DDP(model, device_ids=[info.device.index] if info.device.type == "cuda" else None)


def checkpoint_activations(model: nn.Module) -> None:
    """Have each of the model's blocks recompute its activations in the backward pass instead of storing them
    (torch.utils.checkpoint, non-reentrant): memory for activations drops from every layer's to one block's at a
    time, for about one more forward pass of compute. The blocks' `forward` is wrapped in place, so parameter
    names, checkpoints and DDP/FSDP wrapping (applied after this) are those of the plain model."""
    from torch.utils.checkpoint import checkpoint

    for block in model.layers:
        block.forward = functools.partial(checkpoint, block.forward, use_reentrant=False)


def all_reduce_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.distributed:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


def cleanup(info: DistInfo) -> None:
    """Leave the process group together: a rank that tears gloo down while its peer is still inside the last
    collective can abort the peer ("terminate called without an active exception", seen once in a 2-process test)."""
    if info.distributed and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()

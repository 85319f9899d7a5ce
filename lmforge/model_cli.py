"""`lmforge model info`: what a model of a given size costs to store and to train.

Parameters N come from building the model on PyTorch's meta device (no memory), so even the 70B preset is instant.
Training compute is about 6 * N * D FLOPs for D tokens (2 for the forward pass, 4 for the backward pass, per
parameter and token; attention adds a term that grows with the context). Time = compute / sustained throughput,
where the throughput is the hardware's peak times the utilisation a well-tuned run reaches (MFU).
"""

from __future__ import annotations

import argparse

from lmforge.utils import human_bytes

BYTES_PER_PARAM = {"fp32": 4, "fp16": 2, "bf16": 2}


def model_info(preset: str, tokens: float | None = None, tflops: float = 989.0, mfu: float = 0.4,
               gpus: int = 1, usd_per_gpu_hour: float = 2.5, overrides: dict | None = None) -> dict:
    """Sizes and training cost of a preset; `tokens` defaults to Chinchilla's 20 tokens per parameter."""
    import torch

    from lmforge.model import GPT, GPTConfig

    cfg = GPTConfig.from_preset(preset, **(overrides or {}))
    with torch.device("meta"):
        model = GPT(cfg)
    n = model.num_params()
    n_body = model.num_params(non_embedding=True)
    flops_token = model.flops_per_token()
    d = float(tokens) if tokens else 20.0 * n
    total = flops_token * d
    seconds = total / (tflops * 1e12 * mfu * gpus)
    return {
        "preset": preset, "config": cfg.to_dict(), "params": n, "params_non_embedding": n_body,
        "file_bytes": {k: n * b for k, b in BYTES_PER_PARAM.items()},
        "flops_per_token": flops_token, "train_tokens": d, "train_flops": total,
        "throughput": {"tflops_per_gpu": tflops, "mfu": mfu, "gpus": gpus},
        "train_seconds": seconds, "gpu_hours": seconds * gpus / 3600, "usd": seconds * gpus / 3600 * usd_per_gpu_hour,
    }


def _fmt_count(x: float) -> str:
    for unit, div in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if x >= div:
            return f"{x / div:.2f}{unit}"
    return f"{x:.0f}"


def _fmt_duration(s: float) -> str:
    for unit, div in (("years", 365 * 86400), ("days", 86400), ("hours", 3600), ("minutes", 60)):
        if s >= div:
            return f"{s / div:.1f} {unit}"
    return f"{s:.1f} s"


def cmd_info(args: argparse.Namespace) -> int:
    from lmforge.model import PRESETS

    presets = list(PRESETS) if args.list else [args.preset]
    for name in presets:
        info = model_info(name, args.tokens, args.tflops, args.mfu, args.gpus, args.usd_per_gpu_hour)
        c = info["config"]
        print(f"{name}: {c['n_layer']} layers, width {c['n_embd']}, {c['n_head']} heads ({c['n_kv_head']} K/V), "
              f"context {c['block_size']}, vocabulary {c['vocab_size']}")
        print(f"  parameters      {_fmt_count(info['params'])} ({info['params']:,}; "
              f"{_fmt_count(info['params_non_embedding'])} outside the embedding)")
        print("  parameter file  " + ", ".join(f"{k} {human_bytes(v)}" for k, v in info["file_bytes"].items()))
        print(f"  FLOPs per token {_fmt_count(info['flops_per_token'])} (training: forward + backward)")
        print(f"  training on {_fmt_count(info['train_tokens'])} tokens: {info['train_flops']:.2e} FLOPs = "
              f"{_fmt_duration(info['train_seconds'])} on {args.gpus} GPU(s) at {args.tflops:g} TFLOP/s peak and "
              f"{100 * args.mfu:.0f}% MFU = {info['gpu_hours']:,.0f} GPU-hours, about ${info['usd']:,.0f} at "
              f"${args.usd_per_gpu_hour:g}/GPU-hour")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("model", help="inspect model sizes: parameters, file size, FLOPs, training cost")
    verbs = p.add_subparsers(dest="model_command", metavar="COMMAND", required=True)
    info = verbs.add_parser("info", help="parameters, parameter-file size, FLOPs/token and training cost of a preset",
                            description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    info.add_argument("--preset", default="tiny", help="model preset (see --list)")
    info.add_argument("--list", action="store_true", help="show every preset")
    info.add_argument("--tokens", type=float, default=None,
                      help="training tokens D (default: 20 per parameter, Chinchilla's compute-optimal ratio)")
    info.add_argument("--tflops", type=float, default=989.0,
                      help="peak TFLOP/s per GPU (default 989: an H100's dense bf16)")
    info.add_argument("--mfu", type=float, default=0.4, help="fraction of peak a training run sustains")
    info.add_argument("--gpus", type=int, default=1, help="GPUs working together")
    info.add_argument("--usd-per-gpu-hour", type=float, default=2.5, help="rental price for the cost estimate")
    info.set_defaults(func=cmd_info)

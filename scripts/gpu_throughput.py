"""Steady-state training throughput on one device: lmforge (AdamW, Muon) beside Hugging Face's Llama, issue 18's table.

    python scripts/gpu_throughput.py --device cuda [--shapes 124m,1b] [--steps 10] [--json OUT.json]
    python scripts/gpu_throughput.py --device cpu --shapes tiny --steps 2     # the CPU check of this script

Random tokens, no data loading; bf16 autocast and torch.compile on CUDA (fp32, uncompiled on CPU). Each contender
builds its model and optimizer, takes `--warmup` steps (compilation included, reported apart) and then `--steps`
timed steps, synchronised before and after. MFU = the model's FLOPs per token x tokens/s / the device's peak
(`lmforge.train.logging.resolve_peak`: the datasheet's dense bf16 peak of a known GPU, else measured). The contenders
run one after another in one process (on a GPU nothing else shares it, so the order does not bias the figures).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from typing import Any, Callable

import torch

# name: (model fields, batch rows); the shapes of issue 18's table, and a tiny one for the CPU check.
SHAPES: dict[str, tuple[dict[str, Any], int]] = {
    "124m": (dict(n_layer=12, n_head=12, n_embd=768, block_size=1024, vocab_size=50304, tie_embeddings=True), 16),
    "1b": (dict(n_layer=16, n_head=16, n_embd=2048, intermediate_size=8192, block_size=2048, vocab_size=50304,
                tie_embeddings=True), 4),
    "tiny": (dict(n_layer=2, n_head=2, n_embd=64, block_size=64, vocab_size=512), 4),
}


def lmforge_step(fields: dict[str, Any], optimizer: str, device: torch.device) -> tuple[Callable[..., Any], Any]:
    from lmforge.model import GPT, GPTConfig
    from lmforge.train.config import TrainConfig
    from lmforge.train.optim import build_optimizers

    model = GPT(GPTConfig(**fields)).to(device)
    opts = build_optimizers(model, TrainConfig(optimizer=optimizer))

    def loss_of(m: Any, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return m(x, y, return_logits=False)[1]
    return _stepper(model, opts, loss_of, device), model


def hf_step(fields: dict[str, Any], device: torch.device) -> tuple[Callable[..., Any], Any]:
    from transformers import LlamaConfig, LlamaForCausalLM

    from lmforge.model import GPTConfig

    cfg = GPTConfig(**fields)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.n_embd, num_hidden_layers=cfg.n_layer,
        num_attention_heads=cfg.n_head, num_key_value_heads=cfg.n_kv_head, intermediate_size=cfg.intermediate_size,
        max_position_embeddings=cfg.block_size, tie_word_embeddings=cfg.tie_embeddings,
        attn_implementation="sdpa")).to(device)
    opts = [torch.optim.AdamW(model.parameters(), lr=3e-4, fused=device.type == "cuda")]

    def loss_of(m: Any, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return m(input_ids=x, labels=y).loss
    return _stepper(model, opts, loss_of, device), model


def _stepper(model: Any, opts: list, loss_of: Callable[..., torch.Tensor], device: torch.device) -> Callable:
    compiled = torch.compile(model) if device.type == "cuda" else model
    autocast = (lambda: torch.autocast("cuda", torch.bfloat16)) if device.type == "cuda" else contextlib.nullcontext

    def step(x: torch.Tensor, y: torch.Tensor) -> float:
        with autocast():
            loss = loss_of(compiled, x, y)
        loss.backward()
        for opt in opts:
            opt.step()
            opt.zero_grad(set_to_none=True)
        return float(loss.detach())
    return step


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(name: str, build: Callable[[], tuple[Callable, Any]], rows: int, seq: int, vocab: int,
            flops_per_token: float, peak: float | None, warmup: int, steps: int, device: torch.device) -> dict:
    """One contender: build, warm up (compilation), then time `steps` steps; its row of the table."""
    torch.manual_seed(0)
    step, _ = build()
    x = torch.randint(0, vocab, (rows, seq), device=device)
    y = torch.randint(0, vocab, (rows, seq), device=device)
    t0 = time.perf_counter()
    for _ in range(warmup):
        step(x, y)
    _sync(device)
    t1 = time.perf_counter()
    losses = [step(x, y) for _ in range(steps)]
    _sync(device)
    seconds = (time.perf_counter() - t1) / steps
    tok_s = rows * seq / seconds
    row = {"contender": name, "tokens_per_s": tok_s, "step_s": seconds, "warmup_s": t1 - t0,
           "mfu": flops_per_token * tok_s / peak if peak else None, "first_loss": losses[0], "last_loss": losses[-1]}
    del step
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def run_shape(shape: str, device: torch.device, warmup: int, steps: int, skip_hf: bool) -> list[dict]:
    from lmforge.model import GPTConfig
    from lmforge.train.logging import resolve_peak

    fields, rows = SHAPES[shape]
    cfg = GPTConfig(**fields)
    seq = cfg.block_size
    with torch.device("meta"):
        from lmforge.model import GPT

        flops = GPT(cfg).flops_per_token(seq)
    peak = resolve_peak("auto", device, torch.bfloat16 if device.type == "cuda" else torch.float32)
    contenders: dict[str, Callable[[], tuple[Callable, Any]]] = {
        "lmforge AdamW": lambda: lmforge_step(fields, "adamw", device),
        "lmforge Muon": lambda: lmforge_step(fields, "muon", device),
    }
    if not skip_hf:
        contenders["HF Llama AdamW"] = lambda: hf_step(fields, device)
    out = []
    for name, build in contenders.items():
        row = measure(name, build, rows, seq, cfg.vocab_size, flops, peak.flops, warmup, steps, device)
        out.append({"shape": shape, "batch": f"{rows} x {seq}", "peak": peak.source, **row})
        mfu = f"{100 * row['mfu']:.1f}% MFU" if row["mfu"] is not None else "MFU n/a"
        print(f"{shape:>5} {rows} x {seq}  {name:<15} {row['tokens_per_s']:>12,.0f} tok/s  {mfu}  "
              f"(warm-up {row['warmup_s']:.1f} s; loss {row['first_loss']:.2f} -> {row['last_loss']:.2f})",
              flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--shapes", default="124m,1b", help=f"comma-separated, of {', '.join(SHAPES)}")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation happens here)")
    ap.add_argument("--steps", type=int, default=10, help="timed steps per contender")
    ap.add_argument("--skip-hf", action="store_true", help="without the Hugging Face Llama peer")
    ap.add_argument("--json", default=None, help="also write the rows here")
    args = ap.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    rows = [r for shape in args.shapes.split(",") for r in run_shape(shape.strip(), device, args.warmup,
                                                                      args.steps, args.skip_hf)]
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()

"""Training benchmark: lmforge's GPT against Hugging Face transformers and nanoGPT, measured side by side.

    .venv/bin/python benchmarks/bench_train.py [--quick] [--threads N] [--nanogpt PATH/TO/nanoGPT/model.py]
                                               [--shards DIR] [--compile]

1. Matmul peak: fp32 GFLOP/s of square matmuls at the chosen thread count (the MFU denominator).
2. Throughput vs transformers: training tokens/s of our GPT and a `LlamaForCausalLM` of the same shape (tiny
   preset: 4 layers, width 128, context 256, batch 16), same AdamW, fp32, rounds interleaved so machine load
   hits both alike. Also MFU = FLOPs/token * tokens/s / peak.
3. Throughput vs nanoGPT at its README CPU shape (4 layers, 4 heads, width 128, context 64, batch 12, fp32,
   Shakespeare characters): nanoGPT's own `model.py` (pass its path; skipped if absent) and its AdamW.
4. The race to nanoGPT's 2,000-step validation loss: nanoGPT trained as its README's CPU command does (AdamW
   lr 1e-3, betas (0.9, 0.99), weight decay 0.1, warmup 100, cosine to 1e-4, 2,000 steps) against our modern
   recipe (RMSNorm, RoPE, ReLU^2 MLP, Muon + AdamW, linear decay, a larger batch); both evaluated on the same fixed
   validation windows; reported: the wall and CPU time we need to reach nanoGPT's final validation loss.
   [2] and [3] also print the floor under the tokens/s goals: the time per step of the GEMM and attention kernels
   alone (self time of aten::mm/addmm/bmm and SDPA under torch.profiler). The peers call the same kernels
   for the same shapes; a step can be no faster than them without a faster GEMM than MKL's.
5. Bits per byte after the same token budget on the default corpus (token shards from `lmforge tokenize`):
   our modern defaults against nanoGPT's original choices (LayerNorm, learned positions, GELU) in our own code.

With --compile, [2] and [3] add each contender under torch.compile (inductor, default mode), ours and the peer's
alike, and print what compiling cost: the wall time of the first compiled step (which compiles) beyond a steady one.
Compiled rows are compared with the peer's compiled row; nanoGPT's README CPU command runs it uncompiled.

Timing: CPU time (process_time) is reported beside wall time; on a shared machine it is the fairer measure at
one thread, because it does not count time the process spent waiting for a core (compile-time figures are wall
time: inductor compiles in worker processes).
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def load_nanogpt(path: Path | None):
    if path is None or not path.is_file():
        return None
    spec = importlib.util.spec_from_file_location("nanogpt_model", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def timed_rounds(steps: dict, rounds: int, per_round: int) -> dict[str, tuple[float, float]]:
    """Median (wall, cpu) seconds per call of each step function, rounds interleaved across the contenders."""
    samples: dict[str, list[tuple[float, float]]] = {k: [] for k in steps}
    for _ in range(rounds):
        for name, fn in steps.items():
            fn()
            t0, c0 = time.perf_counter(), time.process_time()
            for _ in range(per_round):
                fn()
            samples[name].append(((time.perf_counter() - t0) / per_round, (time.process_time() - c0) / per_round))
    out = {}
    for name, s in samples.items():
        walls, cpus = sorted(a for a, _ in s), sorted(b for _, b in s)
        out[name] = (walls[len(walls) // 2], cpus[len(cpus) // 2])
    return out


def train_step_fn(model, optimizers, x, y, loss_of):
    import torch

    def step():
        loss = loss_of(model, x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        for o in optimizers:
            o.step()
            o.zero_grad(set_to_none=True)
    return step


KERNELS = ("aten::mm", "aten::addmm", "aten::addmm_", "aten::bmm", "aten::baddbmm",
           "aten::_scaled_dot_product_flash_attention_for_cpu",
           "aten::_scaled_dot_product_flash_attention_for_cpu_backward")


def kernel_floor(step, steps: int) -> float:
    """Seconds per step that the GEMM and attention kernels take inside `step` (profiler self time): the part of
    a training step no Python-level change can remove."""
    from torch.profiler import ProfilerActivity, profile

    step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    return sum(e.self_cpu_time_total for e in prof.key_averages() if e.key in KERNELS) / 1e6 / steps


def print_floor(steps: dict, res: dict, ours: str, peer: str, goal: float, tokens: int, profiled: int) -> None:
    floor = {name: kernel_floor(steps[name], profiled) for name in (ours, peer)}
    for name, f in floor.items():
        print(f"    {name:27s} GEMM + attention kernels alone {1000 * f:6.1f} ms/step ({f / res[name][1]:.0%} of its "
              f"step, cpu)")
    need = res[peer][1] / goal
    print(f"    goal {goal}x {peer} needs <= {1000 * need:.1f} ms/step (cpu); our kernels alone allow at most "
          f"{res[peer][1] / floor[ours]:.2f}x ({tokens / floor[ours]:,.0f} tok/s with every other operation free)")


def add_compiled(steps: dict, builders: dict) -> dict[str, float]:
    """Add a "NAME (compiled)" contender per builder (a function of `compile: bool` returning a step function);
    returns each one's compile cost in wall seconds: its first step's time beyond a steady step's."""
    costs = {}
    for name, build in builders.items():
        fn = build(True)
        t0 = time.perf_counter()
        fn()
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        fn()
        costs[f"{name} (compiled)"] = first - (time.perf_counter() - t0)
        steps[f"{name} (compiled)"] = fn
    return costs


def fresh_compiler() -> float:
    """Point inductor at an empty cache (so every contender compiles from scratch, as on a first run, and none
    reuses graphs an earlier run left behind) and start its worker processes; returns the start-up's wall time."""
    import tempfile

    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="bench_train_inductor_")
    import torch

    t0 = time.perf_counter()
    torch.compile(lambda a: (a * 2).sin())(torch.ones(8))
    return time.perf_counter() - t0


def maybe_compile(model, compile: bool):
    import torch

    return torch.compile(model) if compile else model


def ours_loss(model, x, y):
    """The training path: mean loss without materialising the logits (chunked on CPU), as the trainer uses it."""
    return model(x, y, return_logits=False)[1]


def hf_loss(model, x, y):
    import torch.nn.functional as F

    logits = model(input_ids=x).logits
    return F.cross_entropy(logits.view(-1, logits.size(-1)), y.reshape(-1))


def nano_loss(model, x, y):
    return model(x, y)[1]


def bench_vs_hf(quick: bool, peak: float, compile: bool) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from lmforge.model import GPT, GPTConfig
    from lmforge.train.config import TrainConfig
    from lmforge.train.optim import build_optimizers

    cfg = GPTConfig.from_preset("tiny")
    B, T = 16, cfg.block_size
    torch.manual_seed(0)
    ours = GPT(cfg)
    hf = LlamaForCausalLM(LlamaConfig(vocab_size=cfg.vocab_size, hidden_size=cfg.n_embd, num_hidden_layers=cfg.n_layer,
                                      num_attention_heads=cfg.n_head, num_key_value_heads=cfg.n_kv_head,
                                      intermediate_size=cfg.intermediate_size, max_position_embeddings=cfg.block_size,
                                      rms_norm_eps=cfg.norm_eps, rope_theta=cfg.rope_theta, tie_word_embeddings=False,
                                      attn_implementation="sdpa"))
    n_ours, n_hf = ours.num_params(), sum(p.numel() for p in hf.parameters())
    x = torch.randint(0, cfg.vocab_size, (B, T))
    y = torch.randint(0, cfg.vocab_size, (B, T))
    tc = TrainConfig(optimizer="adamw", lr=1e-3)
    hf_state, ours_state = hf.state_dict(), ours.state_dict()

    def build_ours(compile: bool):
        model = GPT(cfg)
        model.load_state_dict(ours_state)
        return train_step_fn(maybe_compile(model, compile), build_optimizers(model, tc), x, y, ours_loss)

    def build_hf(compile: bool):
        model = LlamaForCausalLM(hf.config)
        model.load_state_dict(hf_state)
        return train_step_fn(maybe_compile(model, compile), [torch.optim.AdamW(model.parameters(), lr=1e-3)], x, y,
                             hf_loss)

    steps = {"lmforge": build_ours(False), "transformers": build_hf(False)}
    costs = add_compiled(steps, {"lmforge": build_ours, "transformers": build_hf}) if compile else {}
    res = timed_rounds(steps, rounds=3 if quick else 5, per_round=2 if quick else 4)
    print(f"\n[2] training tokens/s, tiny preset ({n_ours:,} params; HF Llama {n_hf:,}), batch {B}x{T}, fp32, AdamW")
    for name, (wall, cpu) in res.items():
        cost = f"   compile {costs[name]:.1f} s" if name in costs else ""
        print(f"    {name:24s} {B * T / wall:9,.0f} tok/s wall  {B * T / cpu:9,.0f} tok/s cpu   "
              f"MFU {ours.flops_per_token(T) * B * T / wall / peak:5.1%}{cost}")
    for suffix in ("", " (compiled)") if compile else ("",):
        a, b = res[f"lmforge{suffix}"], res[f"transformers{suffix}"]
        print(f"    ratio lmforge/transformers{suffix}: {b[0] / a[0]:.2f}x (wall), {b[1] / a[1]:.2f}x (cpu)")
    print_floor(steps, res, "lmforge", "transformers", 1.5, B * T, 2 if quick else 4)


# --------------------------------------------------------------------------------------------- Shakespeare


def shakespeare(path: Path):
    import numpy as np
    import torch

    text = path.read_text(encoding="utf-8")
    chars = sorted(set(text))
    stoi = {c: i for i, c in enumerate(chars)}
    data = torch.from_numpy(np.array([stoi[c] for c in text], dtype=np.int64))
    n = int(0.9 * len(data))  # nanoGPT's prepare.py split
    return data[:n], data[n:], len(chars)


def batch_at(data, B: int, T: int, gen):
    import torch

    ix = torch.randint(len(data) - T, (B,), generator=gen)
    x = torch.stack([data[i:i + T] for i in ix])
    y = torch.stack([data[i + 1:i + 1 + T] for i in ix])
    return x, y


def fixed_val(val, T: int, batches: int = 40, B: int = 32):
    import torch

    gen = torch.Generator().manual_seed(1234)
    return [batch_at(val, B, T, gen) for _ in range(batches)]


def val_loss(model, windows, loss_of) -> float:
    import torch

    model.eval()
    with torch.no_grad():
        losses = [float(loss_of(model, x, y)) for x, y in windows]
    model.train()
    return sum(losses) / len(losses)


def nano_model(ng, vocab: int, T: int):
    conf = ng.GPTConfig(block_size=T, vocab_size=vocab, n_layer=4, n_head=4, n_embd=128, dropout=0.0, bias=False)
    with open(os.devnull, "w") as devnull:  # nanoGPT prints its parameter count
        stdout, sys.stdout = sys.stdout, devnull
        try:
            model = ng.GPT(conf)
            opt = model.configure_optimizers(0.1, 1e-3, (0.9, 0.99), "cpu")
        finally:
            sys.stdout = stdout
    return model, opt


def nano_lr(it: int, max_iters: int) -> float:
    """train.py's schedule with the README's CPU flags: warmup 100, cosine from 1e-3 to 1e-4 over max_iters."""
    warmup, lr, min_lr = 100, 1e-3, 1e-4
    if it < warmup:
        return lr * (it + 1) / (warmup + 1)
    ratio = (it - warmup) / (max_iters - warmup)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * min(1.0, ratio))) * (lr - min_lr)


def ours_race_config(vocab: int, T: int):
    from lmforge.model import GPTConfig

    return GPTConfig(vocab_size=vocab, n_layer=4, n_head=4, n_embd=128, block_size=T, mlp="relu2")


def bench_vs_nanogpt(ng, text: Path, quick: bool, peak: float, race_steps: int, race_batch: int,
                     compile: bool) -> None:
    import torch

    from lmforge.model import GPT, GPTConfig
    from lmforge.train.config import TrainConfig
    from lmforge.train.optim import build_optimizers
    from lmforge.train.schedule import lr_multiplier

    train_data, val_data, vocab = shakespeare(text)
    B, T = 12, 64
    gen = torch.Generator().manual_seed(0)
    x, y = batch_at(train_data, B, T, gen)
    def build_nano(compile: bool):
        torch.manual_seed(0)
        model, opt = nano_model(ng, vocab, T)
        return train_step_fn(maybe_compile(model, compile), [opt], x, y, nano_loss)

    def build_ours(compile: bool):
        torch.manual_seed(0)
        model = GPT(GPTConfig(vocab_size=vocab, n_layer=4, n_head=4, n_embd=128, block_size=T))
        return train_step_fn(maybe_compile(model, compile), build_optimizers(model, TrainConfig(optimizer="adamw")),
                             x, y, ours_loss)

    ours_race = GPT(ours_race_config(vocab, T))
    steps = {"nanoGPT": build_nano(False), "lmforge (AdamW)": build_ours(False),
             "lmforge (race)": train_step_fn(ours_race, build_optimizers(ours_race, TrainConfig()), x, y, ours_loss)}
    costs = add_compiled(steps, {"nanoGPT": build_nano, "lmforge (AdamW)": build_ours}) if compile else {}
    res = timed_rounds(steps, rounds=3 if quick else 5, per_round=5 if quick else 10)
    print(f"\n[3] nanoGPT's README CPU shape (4 layers, 4 heads, width 128, context {T}, batch {B}, fp32)")
    flops = GPT(GPTConfig(vocab_size=vocab, n_layer=4, n_head=4, n_embd=128, block_size=T)).flops_per_token(T)
    for name, (wall, cpu) in res.items():
        base_wall, base_cpu = res["nanoGPT (compiled)" if "compiled" in name else "nanoGPT"]
        cost = f"   compile {costs[name]:.1f} s" if name in costs else ""
        print(f"    {name:27s} {1000 * wall:6.1f} ms/step wall {1000 * cpu:6.1f} ms cpu  {B * T / wall:8,.0f} tok/s  "
              f"ratio {base_wall / wall:.2f}x wall {base_cpu / cpu:.2f}x cpu   "
              f"MFU {flops * B * T / wall / peak:5.1%}{cost}")
    print_floor(steps, res, "lmforge (AdamW)", "nanoGPT", 1.2, B * T, 5 if quick else 20)
    if compile:
        print(f"    lmforge (AdamW, compiled) against nanoGPT as its README runs on CPU (uncompiled): "
              f"{res['nanoGPT'][0] / res['lmforge (AdamW) (compiled)'][0]:.2f}x wall, "
              f"{res['nanoGPT'][1] / res['lmforge (AdamW) (compiled)'][1]:.2f}x cpu")

    # ---- the race: nanoGPT's recipe for 2,000 steps, ours until it matches nanoGPT's final validation loss
    nano_steps = 400 if quick else 2000
    windows = fixed_val(val_data, T, batches=10 if quick else 40)
    torch.manual_seed(1337)
    nm, nopt = nano_model(ng, vocab, T)
    gen = torch.Generator().manual_seed(1)
    wall = cpu = 0.0
    for it in range(nano_steps):
        for g in nopt.param_groups:
            g["lr"] = nano_lr(it, nano_steps)
        xb, yb = batch_at(train_data, B, T, gen)
        t0, c0 = time.perf_counter(), time.process_time()
        loss = nano_loss(nm, xb, yb)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(nm.parameters(), 1.0)
        nopt.step()
        nopt.zero_grad(set_to_none=True)
        wall += time.perf_counter() - t0
        cpu += time.process_time() - c0
    target = val_loss(nm, windows, nano_loss)
    print(f"\n[4] race: nanoGPT {nano_steps} steps -> val loss {target:.4f} in {wall:.1f} s wall, {cpu:.1f} s cpu")

    torch.manual_seed(1337)
    steps_ours = max(40, race_steps * nano_steps // 2000)
    model = GPT(ours_race_config(vocab, T))
    tc = TrainConfig(max_steps=steps_ours, warmup_steps=max(5, steps_ours // 40), lr=8e-3, embed_lr=0.05,
                     muon_lr=0.06, decay="linear", decay_start_frac=0.3)
    opts = build_optimizers(model, tc)
    gen = torch.Generator().manual_seed(1)
    wall_o = cpu_o = 0.0
    reached = None
    every = max(8, steps_ours // 40)
    for it in range(steps_ours):
        mult = lr_multiplier(it, tc)
        for o in opts:
            for g in o.param_groups:
                g["lr"] = g["base_lr"] * mult
        xb, yb = batch_at(train_data, race_batch, T, gen)
        t0, c0 = time.perf_counter(), time.process_time()
        loss = ours_loss(model, xb, yb)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        for o in opts:
            o.step()
            o.zero_grad(set_to_none=True)
        wall_o += time.perf_counter() - t0
        cpu_o += time.process_time() - c0
        if (it + 1) % every == 0 or it + 1 == steps_ours:
            v = val_loss(model, windows, ours_loss)
            if reached is None and v <= target:
                reached = (it + 1, v, wall_o, cpu_o)
    final = val_loss(model, windows, ours_loss)
    print(f"    lmforge (RMSNorm, RoPE, ReLU^2, Muon, batch {race_batch}, {steps_ours} steps) -> val loss {final:.4f} "
          f"in {wall_o:.1f} s wall, {cpu_o:.1f} s cpu")
    if reached:
        step, v, w, c = reached
        print(f"    reached {v:.4f} <= {target:.4f} at step {step}: {w:.1f} s wall ({w / wall:.2f} of nanoGPT's), "
              f"{c:.1f} s cpu ({c / cpu:.2f} of nanoGPT's)")
    else:
        print(f"    did not reach {target:.4f} within {steps_ours} steps")


# ------------------------------------------------------------------------------------------------ bits per byte


def bench_bpb(shards: Path, quick: bool, steps: int) -> None:
    import torch

    from lmforge.tokenizer.shards import TokenShards
    from lmforge.train.bpb import token_byte_lengths
    from lmforge.model import GPTConfig
    from lmforge.tokenizer import Tokenizer
    from lmforge.train.config import TrainConfig
    from lmforge.train.dist import DistInfo
    from lmforge.train.loader import ShardBatches, ValidationWindows
    from lmforge.train.trainer import evaluate, train

    import contextlib
    import tempfile

    tr, va = TokenShards(shards, "train"), TokenShards(shards, "val", check_tokenizer=False)
    tok = Tokenizer.load(tr.tokenizer_dir)
    steps = steps if not quick else max(20, steps // 5)
    T, B = 128, 16
    print(f"\n[5] bits per byte on {shards} after {steps} steps x {B}x{T} tokens (tiny preset width/depth)")
    results = {}
    for name, overrides, opt in [("modern (RMSNorm, RoPE, SwiGLU, Muon)", {}, "muon"),
                                 ("nanoGPT choices (LayerNorm, learned pos, GELU, AdamW)",
                                  dict(norm="layernorm", pos="learned", mlp="gelu"), "adamw")]:
        mcfg = GPTConfig.from_preset("tiny", vocab_size=tr.vocab_size, block_size=T, **overrides)
        cfg = TrainConfig(max_steps=steps, batch_size=B, seq_len=T, optimizer=opt, lr=3e-3 if opt == "muon" else 1e-3,
                          warmup_steps=max(5, steps // 20), eval_every=0, checkpoint_every=0, progress=False,
                          tensorboard=False, decay="cosine" if opt == "adamw" else "linear",
                          min_lr_frac=0.1 if opt == "adamw" else 0.0)
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            s = train(cfg, ShardBatches(tr, B, T, seed=1), None, Path(tmp) / "run", model_config=mcfg)
            from lmforge.checkpoint import load_model

            model, _ = load_model(s["checkpoint"])
        val = ValidationWindows(va, 16, T, max_batches=0 if not quick else 8)
        res = evaluate(model, val, DistInfo(), contextlib.nullcontext,
                       token_byte_lengths(tok, mcfg.vocab_size))
        results[name] = res
        print(f"    {name:55s} val loss {res['val_loss']:.4f}  bpb {res['val_bpb']:.4f}  "
              f"({time.perf_counter() - t0:.0f} s)")
    a, b = (r["val_bpb"] for r in results.values())
    print(f"    modern - nanoGPT choices: {a - b:+.4f} bpb ({'modern wins' if a < b else 'modern LOSES'})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer rounds and a shorter race")
    ap.add_argument("--threads", type=int, default=1, help="torch threads for every contender (default 1)")
    ap.add_argument("--nanogpt", type=Path, default=os.environ.get("NANOGPT_MODEL"),
                    help="path of nanoGPT's model.py (kept outside the repository; default $NANOGPT_MODEL; "
                         "skipped if absent)")
    ap.add_argument("--shards", type=Path, default=None, help="token shards for the bits-per-byte comparison")
    ap.add_argument("--race-steps", type=int, default=320, help="our steps in the race (scaled in --quick)")
    ap.add_argument("--race-batch", type=int, default=32, help="our batch size in the race")
    ap.add_argument("--bpb-steps", type=int, default=300, help="training steps per model in the bpb comparison")
    ap.add_argument("--skip", nargs="*", default=[], choices=["hf", "nanogpt", "bpb"])
    ap.add_argument("--compile", action="store_true", help="also time every contender under torch.compile")
    args = ap.parse_args()

    from lmforge.utils import configure_threads, shared_data_dir

    threads = configure_threads(args.threads)
    if args.compile:
        compiler_start = fresh_compiler()
    from lmforge.train.logging import measure_matmul_flops

    peak = measure_matmul_flops(seconds=1.0)
    print(f"torch threads {threads}, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}, load average "
          f"{os.getloadavg()[0]:.1f} (other processes share the cores: compare ratios, not absolute figures)")
    print(f"[1] fp32 matmul peak (512x512): {peak / 1e9:.1f} GFLOP/s")
    if args.compile:
        print(f"    torch.compile: empty inductor cache; compiler start-up (worker processes) {compiler_start:.1f} s, "
              f"counted in no contender's compile time")
    if "hf" not in args.skip:
        bench_vs_hf(args.quick, peak, args.compile)
    if "nanogpt" not in args.skip:
        ng = load_nanogpt(args.nanogpt)
        shared = shared_data_dir()
        text = shared / "pretrain" / "text" / "tinyshakespeare.txt" if shared else None
        if ng is None:
            print(f"\n[3,4] skipped: nanoGPT's model.py not found at {args.nanogpt}")
        elif text is None or not text.is_file():
            print("\n[3,4] skipped: ../shared/data/pretrain/text/tinyshakespeare.txt is absent")
        else:
            bench_vs_nanogpt(ng, text, args.quick, peak, args.race_steps, args.race_batch, args.compile)
    if "bpb" not in args.skip:
        if args.shards is None or not (args.shards / "index.json").is_file():
            print("\n[5] skipped: pass --shards DIR (e.g. a speedrun's 04_tokenize/shards)")
        else:
            bench_bpb(args.shards, args.quick, args.bpb_steps)


if __name__ == "__main__":
    main()

"""RL speed: rollout tokens/s against the engine's own generation, and GRPO steps/s.

1. Rollouts: `rl_rollout.rollout_group` (one engine session for prompts x G rows, tool calls appended into the
   live cache, ids and log-probs recorded) against `Engine.generate` with the same prompts, `n = G`, sampling
   settings and seed. Tokens/s compares what RL adds (tool calls answered in the live cache, bookkeeping) to plain
   generation; the ratio must not fall below 1 by more than the run-to-run noise. With `--checkpoint SFT` the
   rollouts are real ones (the assistant calls the calculator, the output is appended, the answer goes on); the
   default random tiny-preset model makes spurious calls whose error outputs (appended for the whole batch, with
   every other row padded) and extra segments are pure cost, a worst case.
2. GRPO step (rollouts, rewards, scoring, updates): seconds per `lmforge.posttrain.rl.RLRun.step`, against TRL's
   `GRPOTrainer` when `trl` is installed, at the same tiny model (weights copied into a `LlamaForCausalLM` with the
   mapping `lmforge export hf` uses), byte-level vocabulary, prompts, G, completion length, inner epochs
   (`num_iterations`), minibatch and a reward of the same cost. One of our steps (one rollout batch, `epochs`
   optimiser steps) is `num_iterations` of TRL's trainer steps; the first round of each side is a warm-up.

    .venv/bin/python benchmarks/bench_rl.py [--quick] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

SHAPE = dict(n_layer=4, n_head=4, n_embd=128, block_size=256)  # the tiny preset


def tiny_checkpoint(root: Path) -> Path:
    """A random tiny-preset model over the byte tokenizer, saved as a checkpoint."""
    import torch

    from lmforge.checkpoint import save_model
    from lmforge.model import GPT, GPTConfig
    from lmforge.tokenizer import Tokenizer

    tok = Tokenizer([])
    tok.save(root / "tok")
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, **SHAPE))
    return save_model(root / "ckpt" / "step_0000000", model, root / "tok", meta={"step": 0})


def rollout_bench(ckpt: Path, prompts_n: int, group: int, max_tokens: int, repeats: int) -> dict[str, Any]:
    """Tokens/s of RL rollouts and of plain generation, alternating (rollout, generate, generate, rollout, ...);
    medians of `repeats` each and of the ratio of each adjacent pair, with the pairs' lowest and highest ratio."""
    from lmforge.inference.engine import Engine
    from lmforge.inference.sampling import SamplingParams
    from lmforge.inference.tools import default_tools
    from lmforge.posttrain.rl import arithmetic_prompts
    from lmforge.posttrain.rl_rollout import rollout_group

    engine = Engine.from_checkpoint(str(ckpt))
    prompts, examples = arithmetic_prompts(engine.tokenizer, prompts_n, 1, 0)
    params = SamplingParams(temperature=1.0, max_tokens=max_tokens, n=group, seed=0)
    tools = {"calculator": default_tools()["calculator"]}

    def gen() -> tuple[int, int]:
        return sum(len(c.token_ids) for row in engine.generate(prompts, params) for c in row), 0

    def roll() -> tuple[int, int]:
        rows = rollout_group(engine, prompts, examples, params, tools)
        sampled = sum(sum(r.sampled) for r in rows)
        return sampled, sum(len(r.sampled) for r in rows) - sampled

    def timed(fn: Any) -> tuple[float, float]:
        """(tokens through the decode forward per second, sampled tokens per second)"""
        t0 = time.perf_counter()
        sampled, forced = fn()
        seconds = time.perf_counter() - t0
        return (sampled + forced) / seconds, sampled / seconds

    gen(), roll()  # warm the kernels and prepared weights
    pairs = []
    for i in range(repeats):
        r, g = (timed(roll), timed(gen)) if i % 2 == 0 else tuple(reversed((timed(gen), timed(roll))))
        pairs.append((r, g))
    ratios = [r[0] / g[0] for r, g in pairs]
    return {"rollout": statistics.median(r[0] for r, _ in pairs),
            "rollout_sampled": statistics.median(r[1] for r, _ in pairs),
            "generate": statistics.median(g[0] for _, g in pairs), "ratio": statistics.median(ratios),
            "ratio_lo": min(ratios), "ratio_hi": max(ratios),
            "ratio_sampled": statistics.median(r[1] / g[0] for r, g in pairs)}


def ours_grpo_steps(ckpt: Path, cfg_kw: dict[str, Any], steps: int) -> float:
    """Seconds per GRPO step of `RLRun` (after one warm-up step)."""
    from lmforge.posttrain.rl import RLConfig, RLRun

    with tempfile.TemporaryDirectory() as out:
        run = RLRun(RLConfig(**cfg_kw), ckpt, out)
        run.step()
        t0 = time.perf_counter()
        for _ in range(steps):
            run.step()
        return (time.perf_counter() - t0) / steps


def trl_seconds_per_round(ckpt: Path, cfg_kw: dict[str, Any], rounds: int, root: Path) -> float | None:
    """Seconds per generation round (rollouts + `epochs` optimiser steps) of TRL's GRPOTrainer; None without trl."""
    try:
        import trl
    except ImportError:
        return None
    import datasets
    import tokenizers
    import transformers

    from lmforge.checkpoint import load_model
    from lmforge.export.hf import hf_config, hf_state_dict
    from lmforge.posttrain.default_data import heldout_arithmetic

    ours, _ = load_model(ckpt)
    vocab = {chr(b) if chr(b).isprintable() and b < 128 else f"<0x{b:02X}>": b for b in range(256)}
    core = tokenizers.Tokenizer(tokenizers.models.BPE(vocab=vocab, merges=[], byte_fallback=True))
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<0x00>", eos_token="<0x01>")
    theirs = transformers.LlamaForCausalLM(transformers.LlamaConfig(**hf_config(ours.config, {}, "float32")))
    theirs.load_state_dict(hf_state_dict(ours), strict=not ours.config.tie_embeddings)
    questions = [q["question"] for q in heldout_arithmetic(cfg_kw["prompts_per_step"] * (rounds + 1), seed=1)]
    epochs, group = cfg_kw["epochs"], cfg_kw["group_size"]
    args = trl.GRPOConfig(output_dir=str(root / "trl"), use_cpu=True, report_to="none", save_strategy="no",
                          per_device_train_batch_size=cfg_kw["prompts_per_step"] * group, num_generations=group,
                          steps_per_generation=1, num_iterations=epochs, max_completion_length=cfg_kw["max_tokens"],
                          max_steps=epochs * (rounds + 1), learning_rate=2e-5, beta=0.0, logging_steps=10 ** 6,
                          temperature=1.0, bf16=False, disable_tqdm=True)
    marks: list[float] = []

    class Clock(transformers.TrainerCallback):
        def on_step_end(self, *a: Any, **k: Any) -> None:
            marks.append(time.perf_counter())

    trainer = trl.GRPOTrainer(model=theirs, reward_funcs=lambda completions, **kw: [float("!" in c) for c in
                                                                                    completions],
                              args=args, train_dataset=datasets.Dataset.from_list([{"prompt": q} for q in questions]),
                              processing_class=tok, callbacks=[Clock()])
    trainer.train()
    return (marks[-1] - marks[epochs - 1]) / rounds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer repeats and steps (a smoke run)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--checkpoint", type=Path, default=None,
                    help="an SFT checkpoint for realistic rollouts (default: a random tiny-preset model)")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    repeats, steps = (2, 1) if args.quick else (5, 4)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        ckpt = args.checkpoint or tiny_checkpoint(root)
        r = rollout_bench(ckpt, prompts_n=8, group=8, max_tokens=48, repeats=repeats)
        model = args.checkpoint or "random tiny preset"
        print(f"rollouts (8 prompts x 8, 48 tokens, {model}): {r['rollout']:,.0f} tokens/s (sampled + tool "
              f"output), {r['rollout_sampled']:,.0f} sampled/s; engine.generate {r['generate']:,.0f} tokens/s\n"
              f"  rollout/generate {r['ratio']:.2f}x (pairs {r['ratio_lo']:.2f}-{r['ratio_hi']:.2f}); "
              f"sampled only {r['ratio_sampled']:.2f}x")
        cfg_kw = dict(prompts_per_step=4, group_size=4, max_tokens=32, epochs=2, minibatch_rows=16,
                      unfinished_penalty=0.0)
        ours = ours_grpo_steps(ckpt, cfg_kw, steps)
        print(f"GRPO step (4 prompts x 4, 32 tokens, 2 epochs): ours {1 / ours:.3f} steps/s ({ours:.2f} s/step)")
        # TRL gets a byte-level tokenizer: the same model and work only for the random byte-vocabulary model
        theirs = None if args.checkpoint else trl_seconds_per_round(ckpt, cfg_kw, steps, root)
        if args.checkpoint:
            print("--checkpoint: no GRPOTrainer comparison (its tokenizer would differ)", file=sys.stderr)
        elif theirs is None:
            print("trl is not installed: no GRPOTrainer comparison", file=sys.stderr)
        else:
            print(f"  trl GRPOTrainer {1 / theirs:.3f} steps/s ({theirs:.2f} s/step); ours/trl {theirs / ours:.2f}x")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    main()

"""RL speed: rollout tokens/s against the engine's own generation, and GRPO steps/s against TRL's GRPOTrainer.

1. Rollouts: `rl_rollout.rollout_group` (one engine session for prompts x G rows, tool outputs queued into the
   live cache one token a step, ids and log-probs recorded) against `Engine.generate` with the same prompts,
   `n = G`, sampling settings and seed, alternating (rollout, generate, generate, rollout, ...). Rollout tokens/s
   counts every token its decode forwards carry (sampled and tool output: a tool output costs one row of a decode
   step per token, as a sampled token does); the sampled-only rate is printed too. With `--checkpoint SFT` the
   rollouts are real ones (the assistant calls the calculator, the output is queued, the answer goes on); the
   default random tiny-preset model makes a few spurious calls whose ~40-token error outputs and fresh 48-token
   segments run after the other rows have finished, at one or two rows a step: a worst case for the ratio.
2. GRPO round (rollouts, rewards, scoring, updates): `lmforge.posttrain.rl.RLRun.step` against TRL's
   `GRPOTrainer` at the same tiny model (weights copied into a `LlamaForCausalLM` with the mapping
   `lmforge export hf` uses), byte-level vocabulary, prompts, G, completion length, inner epochs
   (`num_iterations`), minibatch and a reward of the same cost. One of our steps (one rollout batch, `epochs`
   optimiser steps) is `num_iterations` of TRL's trainer steps. The two run interleaved in one process, round by
   round (a TRL round, then one of ours, ...); wall and CPU time are both reported (CPU time is the steadier one
   on a shared machine); the first round of each side is a warm-up. `--beta B` sets both KL weights, TRL's
   `beta` and our `RLConfig.kl_coef`. What differs at the default `--beta 0`: TRL runs no reference model, we run
   one no-grad reference pass a step (the KL to the reference is logged every step), and neither adds a KL term to
   the loss. At `--beta B > 0` both sides run one no-grad reference pass per round (TRL loads a second copy of the
   weights from disk as its `ref_model`) and add B * k3 (exp(r) - r - 1, r = log pi_ref - log pi) per token to
   the token-normalised loss; TRL's `use_bias_correction_kl` (which multiplies k3 by the importance ratio) is off,
   so the two KL terms are the same. At every beta: TRL recomputes old log-probs in a separate pass, we take the
   first minibatch's from its first training forward; our rollouts run the calculator as `RLRun` always does, so
   the random model's spurious call (in a few rounds; the per-round ratios mark them with *) adds its ~40-token
   error output and a fresh segment of up to 32 tokens at one row a step, where TRL's generation has no tools and
   stops at 32 tokens. The rewards cost the same but are not the same: ours (arithmetic) is 0 on every response of
   the random model, so every advantage and, with it, our policy gradient is exactly 0 (every forward, backward
   and optimiser step still runs in full), while TRL's ("!" in the text) varies in some groups.

    .venv/bin/python benchmarks/bench_rl.py [--quick] [--threads 1] [--checkpoint SFT] [--rounds N] [--grpo-only]
                                            [--beta B]
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
    """Tokens per CPU second (1 thread: steadier than wall time on a shared machine) of RL rollouts and of plain
    generation, alternating (rollout, generate, generate, rollout, ...); medians of `repeats` each and of the ratio
    of each adjacent pair, with the pairs' lowest and highest ratio."""
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
        """(tokens through the decode forward per CPU second, sampled tokens per CPU second)"""
        t0 = time.process_time()
        sampled, forced = fn()
        seconds = time.process_time() - t0
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


def _clock() -> tuple[float, float]:
    """(wall, process CPU) seconds: on a shared machine CPU time is the steadier measure of a 1-thread run."""
    return time.perf_counter(), time.process_time()


def grpo_interleaved(ckpt: Path, cfg_kw: dict[str, Any], rounds: int, root: Path) -> dict[str, Any]:
    """Seconds per round of our `RLRun.step` and of TRL's GRPOTrainer, interleaved: after each TRL round (rollouts
    + `epochs` optimiser steps, timed between its step-end callbacks) one of our steps runs, timed apart and kept
    out of TRL's clock; the first round of each side is a warm-up. Without trl: ours alone."""
    from lmforge.posttrain.rl import RLConfig, RLRun

    ours_run = RLRun(RLConfig(**cfg_kw), ckpt, root / "ours")
    ours: list[tuple[float, float]] = []
    theirs: list[tuple[float, float]] = []
    tool_calls: list[bool] = []  # whether our round's rollouts called the calculator (work TRL's never does)

    def ours_step() -> None:
        t0 = _clock()
        metrics = ours_run.step()
        ours.append(tuple(b - a for a, b in zip(t0, _clock())))  # type: ignore[arg-type]
        tool_calls.append(metrics["tool_calls"] > 0)

    trainer = trl_trainer(ckpt, cfg_kw, rounds, root)
    if trainer is None:
        for _ in range(rounds + 1):
            ours_step()
        return {"ours": ours[1:], "theirs": [], "tool_calls": tool_calls[1:]}
    import transformers

    epochs = cfg_kw["epochs"]
    mark = [_clock()]

    class Interleave(transformers.TrainerCallback):
        def on_step_end(self, args: Any, state: Any, *a: Any, **k: Any) -> None:
            if state.global_step % epochs:
                return
            theirs.append(tuple(b - a for a, b in zip(mark[0], _clock())))  # type: ignore[arg-type]
            ours_step()
            mark[0] = _clock()

    trainer.add_callback(Interleave())
    trainer.train()
    return {"ours": ours[1:], "theirs": theirs[1:], "tool_calls": tool_calls[1:]}


def trl_trainer(ckpt: Path, cfg_kw: dict[str, Any], rounds: int, root: Path) -> Any:
    """TRL's GRPOTrainer for `rounds + 1` rounds at our settings on the same weights; None without trl."""
    try:
        import trl
    except ImportError:
        return None
    import datasets
    import tokenizers
    import torch
    import transformers

    from lmforge.checkpoint import load_model
    from lmforge.export.hf import hf_config, hf_state_dict
    from lmforge.posttrain.default_data import heldout_arithmetic

    ours, _ = load_model(ckpt)
    vocab = {chr(b) if chr(b).isprintable() and b < 128 else f"<0x{b:02X}>": b for b in range(256)}
    core = tokenizers.Tokenizer(tokenizers.models.BPE(vocab=vocab, merges=[], byte_fallback=True))
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<0x00>", eos_token="<0x01>")
    built = transformers.LlamaForCausalLM(transformers.LlamaConfig(**hf_config(ours.config, {}, "float32")))
    built.load_state_dict(hf_state_dict(ours), strict=not ours.config.tie_embeddings)
    # Loaded back from disk so that its config names a path: at beta > 0 GRPOTrainer builds its `ref_model` from
    # the policy's `config._name_or_path` (a model built in memory has none).
    built.save_pretrained(root / "hf")
    theirs = transformers.LlamaForCausalLM.from_pretrained(root / "hf", dtype=torch.float32)
    questions = [q["question"] for q in heldout_arithmetic(cfg_kw["prompts_per_step"] * (rounds + 1), seed=1)]
    epochs, group = cfg_kw["epochs"], cfg_kw["group_size"]
    args = trl.GRPOConfig(output_dir=str(root / "trl"), use_cpu=True, report_to="none", save_strategy="no",
                          per_device_train_batch_size=cfg_kw["prompts_per_step"] * group, num_generations=group,
                          steps_per_generation=1, num_iterations=epochs, max_completion_length=cfg_kw["max_tokens"],
                          max_steps=epochs * (rounds + 1), learning_rate=2e-5, beta=cfg_kw["kl_coef"],
                          use_bias_correction_kl=False, logging_steps=10 ** 6,
                          temperature=1.0, bf16=False, disable_tqdm=True)
    return trl.GRPOTrainer(model=theirs, reward_funcs=lambda completions, **kw: [float("!" in c) for c in
                                                                                 completions],
                           args=args, train_dataset=datasets.Dataset.from_list([{"prompt": q} for q in questions]),
                           processing_class=tok)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer repeats and steps (a smoke run)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=None, help="GRPO rounds per side (default 8; --quick 3)")
    ap.add_argument("--grpo-only", action="store_true", help="skip the rollout/generate comparison")
    ap.add_argument("--beta", type=float, default=0.0,
                    help="the KL weight of both sides (TRL's beta, our kl_coef); > 0 makes TRL run a reference model")
    ap.add_argument("--checkpoint", type=Path, default=None,
                    help="an SFT checkpoint for realistic rollouts (default: a random tiny-preset model)")
    args = ap.parse_args()
    if not args.beta >= 0:  # also refuses nan
        ap.error(f"--beta must be >= 0, got {args.beta}")
    import torch

    torch.set_num_threads(args.threads)
    repeats, steps = (2, 3) if args.quick else (6, 8)
    steps = args.rounds or steps
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        ckpt = args.checkpoint or tiny_checkpoint(root)
        if not args.grpo_only:
            report_rollouts(rollout_bench(ckpt, prompts_n=8, group=8, max_tokens=48, repeats=repeats),
                            args.checkpoint or "random tiny preset")
        if args.checkpoint:  # TRL gets a byte-level tokenizer: the same model and work only for the random model
            print("--checkpoint: no GRPO comparison (GRPOTrainer's tokenizer would differ)", file=sys.stderr)
            return
        cfg_kw = dict(prompts_per_step=4, group_size=4, max_tokens=32, epochs=2, minibatch_rows=16,
                      unfinished_penalty=0.0, kl_coef=args.beta)
        report_grpo(grpo_interleaved(ckpt, cfg_kw, steps, root), args.beta)


def report_rollouts(r: dict[str, Any], model: Any) -> None:
    """Print rollout and generation speeds and their interleaved ratio."""
    print(f"rollouts (8 prompts x 8, 48 tokens, {model}), per CPU second: {r['rollout']:,.0f} tokens "
          f"(sampled + tool output), {r['rollout_sampled']:,.0f} sampled; engine.generate {r['generate']:,.0f}\n"
          f"  rollout/generate {r['ratio']:.2f}x (pairs {r['ratio_lo']:.2f}-{r['ratio_hi']:.2f}); "
          f"sampled only {r['ratio_sampled']:.2f}x")


def report_grpo(g: dict[str, Any], beta: float) -> None:
    """Print seconds per round of both sides and the speed ratio of each interleaved pair, wall and CPU time."""
    for i, clock in enumerate(("wall", "CPU")):
        ours = statistics.median(o[i] for o in g["ours"])
        line = f"GRPO round (4 prompts x 4, 32 tokens, 2 epochs, beta {beta:g}), {clock} time: ours {ours:.3f} s"
        if g["theirs"]:
            theirs = statistics.median(t[i] for t in g["theirs"])
            ratios = [t[i] / o[i] for o, t in zip(g["ours"], g["theirs"])]
            line += (f", trl GRPOTrainer {theirs:.3f} s; ours/trl speed {statistics.median(ratios):.2f}x "
                     f"(interleaved pairs {min(ratios):.2f}-{max(ratios):.2f})")
        print(line)
    if g["theirs"]:  # every round's ratio, so that several runs can be pooled; * marks a round with a tool call
        print("per-round ours/trl CPU speed:", " ".join(f"{t[1] / o[1]:.3f}{'*' * called}" for o, t, called
                                                        in zip(g["ours"], g["theirs"], g["tool_calls"])))
    else:
        print("trl is not installed: no GRPOTrainer comparison", file=sys.stderr)

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    main()

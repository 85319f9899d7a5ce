"""Preference training speed: our DPO and reward-model steps/s against TRL's `DPOTrainer` and `RewardTrainer`.

Both sides train the same tiny model (the `tiny` preset's shape, the weights copied into a `LlamaForCausalLM` /
`LlamaForSequenceClassification` through the mapping `lmforge export hf` uses) on the same preference pairs, as
the same token ids (our chat-format rendering: TRL is handed `prompt_ids`/`chosen_ids`/`rejected_ids`, so its own
tokenisation is skipped and costs neither side anything), the same batch of pairs, AdamW at the same rate, fp32, on
CPU with the same thread count, no activation checkpointing (TRL turns it on by default; we never recompute, so it
is turned off for the same settings). Steps/s is measured per optimizer step after warmup steps (excluded), from each
trainer's own loop: ours `lmforge.train.train` with `DPOObjective`/`RewardObjective`, theirs `Trainer.train`
timed by a callback at step begin and end.

DPO is compared twice: against TRL's default (the reference model runs a forward every step) and against
`precompute_ref_log_probs=True` (TRL then also computes the reference once, as we always do). Our one-time
reference pass is reported separately (it is not part of a step).

Pairs: hh-rlhf harmless (`../shared/data/alignment/preference/`, set LMFORGE_SHARED_DATA) when present, else
planted pairs from the embedded default data.

    .venv/bin/python benchmarks/bench_preference.py [--steps 20] [--warmup 3] [--batch-size 8] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def make_checkpoint(root: Path) -> tuple[Path, Any]:
    """A tiny-preset model (random weights: speed does not depend on them) with a tokenizer trained on the
    embedded default conversations, saved as a checkpoint and exported to a Hugging Face folder."""
    import torch

    from lmforge.checkpoint import save_model
    from lmforge.export.hf import export_hf
    from lmforge.model import GPT, GPTConfig
    from lmforge.posttrain.default_data import DefaultDataConfig, generate_default_conversations
    from lmforge.tokenizer import Tokenizer

    convs = list(generate_default_conversations(DefaultDataConfig(n=1500, seed=7)))
    tok = Tokenizer.train([m["content"] for c in convs for m in c], 1024)
    tok.save(root / "tok")
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_preset("tiny", vocab_size=tok.vocab_size))
    ckpt = save_model(root / "base" / "ckpt" / "step_0000000", model, root / "tok", meta={"step": 0})
    export_hf(ckpt, root / "hf")
    return ckpt, tok


def load_bench_pairs(tok: Any, block_size: int, n: int) -> list:
    from lmforge.posttrain.pairs_batches import encode_pairs
    from lmforge.utils import shared_data_dir

    shared = shared_data_dir()
    hh = shared / "alignment" / "preference" / "hh_rlhf_harmless_base_test.jsonl.gz" if shared else None
    if hh is not None and hh.is_file():
        from lmforge.posttrain.preferences import load_pairs

        pairs, source = load_pairs(hh)[:n], f"hh-rlhf harmless ({hh})"
    else:
        from lmforge.posttrain.default_data import DefaultDataConfig, generate_default_conversations
        from lmforge.posttrain.preferences import PreferencePair

        convs = list(generate_default_conversations(DefaultDataConfig(n=2 * n, seed=3)))
        replies = [m["content"] for c in convs for m in c if m["role"] == "assistant" and m["content"]]
        pairs = [PreferencePair([m for m in c if m["role"] == "user"][:1], replies[i] + " zebra", replies[-i - 1])
                 for i, c in enumerate(convs[:n]) if replies[i] + " zebra" != replies[-i - 1]]
        source = "planted pairs from the embedded default data"
    examples, _ = encode_pairs(tok, pairs, block_size)
    print(f"pairs: {len(examples)} from {source}", file=sys.stderr)
    return examples


def step_rates(elapsed: list[float], warmup: int) -> float:
    """Steps/s over the steps after warmup, from cumulative per-step seconds."""
    times = [b - a for a, b in zip([0.0] + elapsed[:-1], elapsed)][warmup:]
    return 1.0 / statistics.mean(times)


def ours(kind: str, ckpt: Path, examples: list, pad: int, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    from lmforge.checkpoint import load_model
    from lmforge.posttrain.dpo import DPOObjective, reference_logps
    from lmforge.posttrain.pairs_batches import PairBatches
    from lmforge.posttrain.reward import RewardObjective
    from lmforge.train import TrainConfig, train

    info: dict[str, Any] = {}
    refs = None
    if kind == "dpo":
        t0 = time.perf_counter()
        refs = reference_logps(load_model(ckpt)[0], examples, 32, pad)
        info["reference_pass_s"] = round(time.perf_counter() - t0, 2)
    cfg = TrainConfig(max_steps=args.warmup + args.steps, batch_size=args.batch_size, optimizer="adamw", lr=1e-4,
                      warmup_steps=0, decay="constant", eval_every=0, checkpoint_every=0, num_samples=0,
                      progress=False, tensorboard=False, device="cpu")
    batches = PairBatches(examples, args.batch_size, pad, seed=0, ref_logps=refs)
    objective = DPOObjective(0.1) if kind == "dpo" else RewardObjective()
    train(cfg, batches, None, out / f"ours_{kind}", init_checkpoint=ckpt, objective=objective)
    rows = [json.loads(line) for line in (out / f"ours_{kind}" / "metrics.jsonl").read_text().splitlines()]
    return {"steps_per_s": step_rates([r["elapsed_s"] for r in rows], args.warmup), **info}


def trl_side(kind: str, hf_dir: Path, examples: list, args: argparse.Namespace, out: Path,
             precompute: bool = False) -> dict[str, Any]:
    import datasets
    import transformers
    import trl

    marks: list[float] = []

    class Clock(transformers.TrainerCallback):
        def on_step_begin(self, *a: Any, **k: Any) -> None:
            marks.append(time.perf_counter())

        def on_step_end(self, *a: Any, **k: Any) -> None:
            marks.append(time.perf_counter())

    common = dict(output_dir=str(out / f"trl_{kind}"), per_device_train_batch_size=args.batch_size,
                  max_steps=args.warmup + args.steps, learning_rate=1e-4, lr_scheduler_type="constant",
                  logging_steps=10_000, save_strategy="no", report_to=[], use_cpu=True, dataloader_num_workers=0,
                  max_length=256, seed=0, disable_tqdm=True, optim="adamw_torch", gradient_checkpointing=False)
    tok = transformers.AutoTokenizer.from_pretrained(hf_dir)
    if kind == "dpo":
        rows = [{"prompt_ids": list(c.ids[:c.start]), "chosen_ids": list(c.ids[c.start:]),
                 "rejected_ids": list(r.ids[r.start:])} for c, r in examples]
        model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir)
        config = trl.DPOConfig(beta=0.1, precompute_ref_log_probs=precompute, **common)
        trainer_cls = type("PretokenisedDPO", (trl.DPOTrainer,), {"_prepare_dataset": lambda self, d, *a, **k: d})
    else:
        rows = [{"chosen_ids": list(c.ids), "rejected_ids": list(r.ids)} for c, r in examples]
        model = transformers.AutoModelForSequenceClassification.from_pretrained(hf_dir, num_labels=1)
        model.config.pad_token_id = tok.pad_token_id
        config = trl.RewardConfig(**common)
        trainer_cls = trl.RewardTrainer
    trainer = trainer_cls(model=model, args=config, train_dataset=datasets.Dataset.from_list(rows),
                          processing_class=tok, callbacks=[Clock()])
    trainer.train()
    per_step = [b - a for a, b in zip(marks[0::2], marks[1::2])][args.warmup:]
    return {"steps_per_s": 1.0 / statistics.mean(per_step)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=8, help="pairs per step")
    ap.add_argument("--pairs", type=int, default=400)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--only", choices=["dpo", "reward"], default=None, help="run one comparison")
    args = ap.parse_args()
    import torch
    import transformers

    from lmforge.tokenizer.chat_format import ChatTokens

    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        ckpt, tok = make_checkpoint(root)
        examples = load_bench_pairs(tok, 256, args.pairs)
        pad = ChatTokens.of(tok).pad
        results = {}
        if args.only in (None, "dpo"):
            results["dpo_ours"] = ours("dpo", ckpt, examples, pad, args, root)
            results["dpo_trl"] = trl_side("dpo", root / "hf", examples, args, root)
            results["dpo_trl_precomputed_ref"] = trl_side("dpo", root / "hf", examples, args, root, precompute=True)
        if args.only in (None, "reward"):
            results["reward_ours"] = ours("reward", ckpt, examples, pad, args, root)
            results["reward_trl"] = trl_side("reward", root / "hf", examples, args, root)
    print(json.dumps(results, indent=2))
    report(results)
    return 0


def report(results: dict[str, Any]) -> None:
    rate = {k: v["steps_per_s"] for k, v in results.items()}
    if "dpo_ours" in rate:
        print(f"DPO steps/s: ours {rate['dpo_ours']:.2f}, TRL DPOTrainer {rate['dpo_trl']:.2f} -> "
              f"{rate['dpo_ours'] / rate['dpo_trl']:.2f}x (goal >= 1.5x); against TRL with precomputed reference "
              f"{rate['dpo_trl_precomputed_ref']:.2f} -> {rate['dpo_ours'] / rate['dpo_trl_precomputed_ref']:.2f}x")
    if "reward_ours" in rate:
        print(f"reward-model steps/s: ours {rate['reward_ours']:.2f}, TRL RewardTrainer {rate['reward_trl']:.2f} -> "
              f"{rate['reward_ours'] / rate['reward_trl']:.2f}x (goal >= 1.2x)")


if __name__ == "__main__":
    sys.exit(main())

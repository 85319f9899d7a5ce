"""`lmforge eval WHAT`: measures of a checkpoint, one sub-verb per evaluation.

`eval sft --checkpoint DIR`: format compliance, tool-call rate and accuracy, masked validation loss, and a table of
sample conversations (`sft_eval.py`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from lmforge.utils import LmforgeError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate a checkpoint (eval sft: assistant behaviour and tool use)")
    kinds = p.add_subparsers(dest="evaluation", metavar="WHAT", required=True)
    register_sft(kinds)
    register_mc(kinds)
    register_harness(kinds)
    register_reversal(kinds)
    register_winrate(kinds)
    register_scaling(sub)


def cmd_sft(args: argparse.Namespace) -> int:
    from lmforge.evaluation.sft_eval import SFTEvalConfig, evaluate_sft, format_report, save_report
    from lmforge.inference.cli import from_flags
    from lmforge.utils import configure_threads, resolve_device

    device = resolve_device(args.device)
    cfg = from_flags(SFTEvalConfig, {name: getattr(args, name) for name in ("prompts", "arithmetic", "seed",
                                                                            "max_tokens", "samples",
                                                                            "unsafe_python")})
    configure_threads(args.threads)
    result = evaluate_sft(args.checkpoint, cfg, device=device, progress=not args.no_progress)
    print(format_report(result))
    if args.json is not None:
        save_report(result, args.json)
        print(f"(JSON written to {args.json})")
    return 0


def register_sft(kinds: argparse._SubParsersAction) -> None:
    p = kinds.add_parser("sft", help="format compliance, tool use on held-out arithmetic, masked validation loss",
                         description="Format compliance, tool-call rate and accuracy, masked validation loss of an "
                         "SFT checkpoint. Prompts and questions come from seeds the default SFT data never uses, so "
                         "they are held out.")
    p.add_argument("--checkpoint", type=Path, required=True, help="SFT run folder or checkpoint folder")
    p.add_argument("--prompts", type=int, default=32, help="held-out prompts for format compliance")
    p.add_argument("--arithmetic", type=int, default=24, help="held-out arithmetic questions")
    p.add_argument("--seed", type=int, default=2468, help="seed of the held-out prompts")
    p.add_argument("--max-tokens", type=int, default=96, help="token budget of each generated segment")
    p.add_argument("--samples", type=int, default=6, help="rows of the sample-conversation table")
    p.add_argument("--json", type=Path, default=None, help="also write the measures as JSON here")
    p.add_argument("--device", default="cpu", help="auto (CUDA when visible, else cpu), cpu, cuda, cuda:N or mps")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--unsafe-python", action="store_true",
                   help="where no OS jail (bubblewrap) can be made, run the model's Python code without one")
    p.set_defaults(func=cmd_sft)


def register_scaling(sub: argparse._SubParsersAction) -> None:
    """`lmforge scaling sweep|fit`: the scaling-law sweep over model sizes and compute budgets, and its fit."""
    from lmforge.evaluation.scaling_sweep import BUDGET_S, SweepConfig

    d = SweepConfig()
    p = sub.add_parser("scaling", help="scaling laws: train a grid of sizes x budgets (sweep), fit L(N, D) (fit)",
                       description="Chinchilla's approach 3 (Huber fit of L(N, D) = E + A/N^alpha + B/D^beta with "
                       "bootstrap intervals) and approach 2 (IsoFLOP parabolas) on a sweep of small pretraining runs.")
    verbs = p.add_subparsers(dest="scaling_command", metavar="ACTION", required=True)
    sweep = verbs.add_parser("sweep", help=f"train the grid (default about {BUDGET_S // 60} minutes or less on 2 "
                             "cores), fit, then check the fit on a held-out point; resumable point by point")
    sweep.add_argument("--data", type=Path, required=True, help="token shards (lmforge tokenize's output)")
    sweep.add_argument("--out", type=Path, required=True, help="run folder (rerun to resume)")
    sweep.add_argument("--estimate", action="store_true", help="only time a few steps of each width and print "
                       "the expected duration of the grid, the LR check and the held-out point")
    sweep.add_argument("--lr-check", action="store_true", help="also sweep the learning-rate multiplier at the "
                       "smallest and largest width and report whether the optimum moves by more than one step")
    sweep.add_argument("--no-holdout", action="store_true", help="skip the held-out point")
    _sweep_flags(sweep, d)
    sweep.set_defaults(func=_cmd_scaling_sweep)
    fit = verbs.add_parser("fit", help="fit (again) the points of a sweep folder; writes scaling_fit.json/.png")
    fit.add_argument("run", type=Path, help="the sweep's run folder")
    fit.add_argument("--target-flops", type=float, default=None, help="budget of the compute-optimal N and D "
                     "(default: the sweep's)")
    fit.add_argument("--bootstrap", type=int, default=None, help="bootstrap resamples (default: the sweep's)")
    fit.set_defaults(func=_cmd_scaling_fit)


def _sweep_flags(p: argparse.ArgumentParser, d: Any) -> None:
    def floats(text: str) -> list[float]:
        return [float(v) for v in text.split(",") if v.strip()]

    def ints(text: str) -> list[int]:
        return [int(v) for v in text.split(",") if v.strip()]

    p.add_argument("--widths", type=ints, default=d.widths, help="model widths (comma-separated)")
    p.add_argument("--flops", type=floats, default=d.flops, help="compute budgets C = 6 N D (comma-separated)")
    p.add_argument("--depth", type=int, default=d.depth, help="layers of every model")
    p.add_argument("--head-dim", type=int, default=d.head_dim)
    p.add_argument("--seq-len", type=int, default=d.seq_len)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr, help="AdamW rate at --base-width (scaled by "
                   "sqrt(base_width / width))")
    p.add_argument("--muon-lr", type=float, default=d.muon_lr, help="Muon rate (the same at every width)")
    p.add_argument("--base-width", type=int, default=d.base_width)
    p.add_argument("--lr-multipliers", type=floats, default=d.lr_multipliers)
    p.add_argument("--holdout-width", type=int, default=d.holdout_width)
    p.add_argument("--holdout-flops", type=float, default=d.holdout_flops)
    p.add_argument("--target-flops", type=float, default=d.target_flops)
    p.add_argument("--bootstrap", type=int, default=d.bootstrap, help="bootstrap resamples of the fit")
    p.add_argument("--eval-batches", type=int, default=d.eval_batches)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--params", default=d.params, help="N of the law: total (Chinchilla) or non-embedding (Kaplan)")
    p.add_argument("--device", default=d.device)
    p.add_argument("--threads", type=int, default=None)


def _cmd_scaling_sweep(args: argparse.Namespace) -> int:
    from dataclasses import fields

    from lmforge.evaluation.scaling import format_report
    from lmforge.evaluation.scaling_sweep import SweepConfig, estimate_seconds, run_sweep
    from lmforge.utils import configure_threads, resolve_device

    from lmforge.tokenizer.shards import TokenShards

    cfg = SweepConfig(**{f.name: getattr(args, f.name) for f in fields(SweepConfig)})
    cfg.device = resolve_device(cfg.device)
    TokenShards(args.data, "train")  # refused here, before the run folder is touched
    configure_threads(args.threads)
    if args.estimate:
        est = estimate_seconds(cfg, args.data, args.out / "estimate")
        print(json.dumps(est, indent=2))
        verdict = "within" if est["grid_s"] <= est["budget_s"] else "OVER"
        print(f"grid {est['grid_s'] / 60:.1f} min ({verdict} the budget of {est['budget_s'] / 60:.0f} min), LR "
              f"check {est['lr_check_s'] / 60:.1f} min, held-out point {est['holdout_s'] / 60:.1f} min")
        return 0
    report = run_sweep(cfg, args.data, args.out, lr_check=args.lr_check, holdout=not args.no_holdout)
    _print_scaling(report, args.out, format_report)
    return 0


def _print_scaling(report: dict, out: Path, format_report: Any) -> None:
    print(format_report(report))
    if "holdout" in report:
        h = report["holdout"]
        print(f"held-out point N={h['n']:,} D={h['d']:,}: predicted {h['predicted']:.4f}, measured "
              f"{h['measured']:.4f}, error {100 * h['relative_error']:.2f}% "
              f"({'within' if h['within_goal'] else 'outside'} the 2% goal)")
    if "lr_check" in report:
        lr = report["lr_check"]
        best = ", ".join(f"width {w}: x{v['best_mult']:g}" for w, v in lr["widths"].items())
        print(f"LR check: best multiplier {best}; moved {lr['steps_moved']} grid step(s) "
              f"({'transfers' if lr['transfers'] else 'does NOT transfer'} across width)")
    print(f"(constants in {out / 'scaling_fit.json'}, plot in {out / 'scaling_fit.png'})")


def _cmd_scaling_fit(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from lmforge.evaluation.scaling import format_report
    from lmforge.evaluation.scaling_sweep import SweepConfig, fit_run
    from lmforge.utils import read_json

    saved = read_json(args.run / "sweep_config.json", "sweep config")
    try:
        cfg = SweepConfig(**saved)
    except TypeError as e:
        raise LmforgeError(f"sweep config {args.run / 'sweep_config.json'} has unknown fields: {e}") from e
    overrides = {k: v for k, v in (("target_flops", args.target_flops), ("bootstrap", args.bootstrap))
                 if v is not None}
    cfg = replace(cfg, **overrides)
    report = fit_run(args.run, cfg)
    if (args.run / "lr_check.json").is_file():
        report["lr_check"] = read_json(args.run / "lr_check.json", "LR check")
    _print_scaling(report, args.run, format_report)
    return 0


def register_mc(kinds: argparse._SubParsersAction) -> None:
    """`lmforge eval mc`: multiple choice by log-likelihood, on JSONL benchmark files and the stdlib tasks."""
    from lmforge.evaluation import multiple_choice

    p = kinds.add_parser("mc", help="multiple choice by log-likelihood (HellaSwag/ARC/MMLU/PIQA JSONL, stdlib "
                         "tasks) with a CORE-like aggregate", description=multiple_choice.__doc__,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, required=True, help="run folder or checkpoint folder")
    p.add_argument("--tasks", type=Path, action="append", default=[], help="a JSONL file of items (repeatable)")
    p.add_argument("--format", default="auto", help="format of the --tasks files: auto, "
                   + ", ".join(multiple_choice.FORMATS))
    p.add_argument("--limit", type=int, default=None, help="at most this many items of each --tasks file")
    p.add_argument("--builtin", default=None, help="comma-separated generated tasks (stdlib_signature, "
                   "stdlib_module); default both when no --tasks is given, '' for none")
    p.add_argument("--count", type=int, default=200, help="items of each generated task")
    p.add_argument("--seed", type=int, default=0, help="seed of the generated tasks and of the bootstrap")
    p.add_argument("--batch-size", type=int, default=16, help="sequences (item options) per forward")
    p.add_argument("--normalisation", default="byte", help="score of the aggregate: sum, token or byte")
    p.add_argument("--bootstrap", type=int, default=1000, help="resamples of the aggregate's interval")
    p.add_argument("--json", type=Path, default=None, help="also write every item's scores and the summary here")
    p.add_argument("--device", default="cpu", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--threads", type=int, default=None)
    p.set_defaults(func=_cmd_mc)


def _cmd_mc(args: argparse.Namespace) -> int:
    from lmforge.evaluation.multiple_choice import NORMALISATIONS, evaluate_checkpoint, format_summary, read_items
    from lmforge.evaluation.stdlib_tasks import stdlib_items
    from lmforge.utils import configure_threads, resolve_device, write_json

    for flag, value in (("--batch-size", args.batch_size), ("--count", args.count), ("--bootstrap", args.bootstrap),
                        ("--limit", args.limit if args.limit is not None else 1)):
        if value < 1:
            raise LmforgeError(f"{flag} must be at least 1 (got {value})")
    if args.normalisation not in NORMALISATIONS:
        raise LmforgeError(f"--normalisation {args.normalisation!r}: choose {', '.join(NORMALISATIONS)}")
    device = resolve_device(args.device)
    builtin = args.builtin if args.builtin is not None else ("" if args.tasks else "stdlib_signature,stdlib_module")
    items = [i for path in args.tasks for i in read_items(path, args.format, limit=args.limit)]
    names = [t for t in builtin.split(",") if t.strip()]
    items += stdlib_items(names, args.count, args.seed) if names else []
    if not items:
        raise LmforgeError("no items to evaluate: give --tasks FILE or --builtin TASKS")
    configure_threads(args.threads)
    result = evaluate_checkpoint(args.checkpoint, items, args.batch_size, device, args.normalisation,
                                 args.bootstrap, args.seed)
    print(format_summary(result["summary"]))
    if args.json is not None:
        write_json(args.json, result)
        print(f"(JSON written to {args.json})")
    return 0


def register_harness(kinds: argparse._SubParsersAction) -> None:
    """`lmforge eval harness`: EleutherAI's lm-evaluation-harness on a checkpoint (optional dependency lm-eval)."""
    p = kinds.add_parser("harness", help="run lm-evaluation-harness tasks on a checkpoint (pip install lm-eval)",
                         description="Evaluate a checkpoint with lm-evaluation-harness through lmforge's adapter "
                         "(lmforge/evaluation/harness.py). Stock tasks download their data; a YAML task in "
                         "--include-path with local data_files runs offline.")
    p.add_argument("--checkpoint", type=Path, required=True, help="run folder or checkpoint folder")
    p.add_argument("--tasks", required=True, help="comma-separated harness task names")
    p.add_argument("--include-path", type=Path, default=None, help="folder of YAML task definitions (then only "
                   "those tasks are indexed, not the harness's stock ones)")
    p.add_argument("--limit", type=int, default=None, help="at most this many documents per task")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--json", type=Path, default=None, help="also write the metrics here")
    p.add_argument("--device", default="cpu", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--threads", type=int, default=None)
    p.set_defaults(func=_cmd_harness)


def _cmd_harness(args: argparse.Namespace) -> int:
    from lmforge.evaluation.harness import require_lm_eval, run_harness
    from lmforge.utils import configure_threads, resolve_device, write_json

    require_lm_eval()
    if args.batch_size < 1 or (args.limit is not None and args.limit < 1):
        raise LmforgeError("--batch-size and --limit must be at least 1")
    if args.include_path is not None and not args.include_path.is_dir():
        raise LmforgeError(f"--include-path {args.include_path} is not a folder")
    device = resolve_device(args.device)
    configure_threads(args.threads)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    results = run_harness(args.checkpoint, tasks, args.include_path, args.limit, args.batch_size, device)
    for task, metrics in results.items():
        shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float))
        print(f"{task}: {shown}")
    if args.json is not None:
        write_json(args.json, results)
        print(f"(JSON written to {args.json})")
    return 0


def register_reversal(kinds: argparse._SubParsersAction) -> None:
    """`lmforge eval reversal`: the reversal curse probe (fine-tune on one direction, test both)."""
    from lmforge.evaluation.reversal import ReversalConfig

    d = ReversalConfig()
    p = kinds.add_parser("reversal", help="reversal curse probe: fine-tune on 'A's teacher is B', ask both ways",
                         description="Fine-tunes a copy of the checkpoint on invented facts stated in one direction "
                         "and reports forward and reverse multiple-choice accuracy, before and after.")
    p.add_argument("--checkpoint", type=Path, required=True, help="run folder or checkpoint folder")
    p.add_argument("--out", type=Path, required=True, help="folder for the fine-tune and reversal.json")
    p.add_argument("--facts", type=int, default=d.facts)
    p.add_argument("--steps", type=int, default=d.steps, help="fine-tuning steps")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--muon-lr", type=float, default=d.muon_lr)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--threads", type=int, default=None)
    p.set_defaults(func=_cmd_reversal)


def _cmd_reversal(args: argparse.Namespace) -> int:
    from lmforge.evaluation.reversal import ReversalConfig, format_reversal, run_reversal
    from lmforge.utils import configure_threads

    cfg = ReversalConfig(facts=args.facts, seed=args.seed, steps=args.steps, batch_size=args.batch_size,
                         lr=args.lr, muon_lr=args.muon_lr)
    configure_threads(args.threads)
    report = run_reversal(args.checkpoint, args.out, cfg)
    print(format_reversal(report))
    print(f"(JSON written to {args.out / 'reversal.json'})")
    return 0


def register_winrate(kinds: argparse._SubParsersAction) -> None:
    """`lmforge eval winrate`: the RL policy against the SFT model, judged by a reward model and a held-out judge."""
    from lmforge.config import add_config_arguments
    from lmforge.evaluation import winrate
    from lmforge.evaluation.winrate import WinRateConfig

    p = kinds.add_parser("winrate", help="win rate of a policy over a baseline (reward model, held-out judge) and "
                         "the KL paid", description=winrate.__doc__,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--policy", type=Path, required=True, help="the RL run folder or checkpoint (the policy)")
    p.add_argument("--baseline", type=Path, required=True, help="the SFT run folder or checkpoint it started from")
    p.add_argument("--reward-model", type=Path, default=None,
                   help="reward run folder or checkpoint to judge by (default: only the held-out judge)")
    p.add_argument("--out", type=Path, required=True, help="folder for both models' samples and winrate.json "
                   "(rerun to resume)")
    p.add_argument("--device", default="cpu", help="auto, cpu, cuda, cuda:N or mps (default: cpu)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    add_config_arguments(p, WinRateConfig, title="win rate (WinRateConfig)")
    p.set_defaults(func=_cmd_winrate)


def _cmd_winrate(args: argparse.Namespace) -> int:
    import sys

    from lmforge.config import config_from_args
    from lmforge.evaluation.winrate import WinRateConfig, format_winrate, run_winrate
    from lmforge.utils import configure_threads, resolve_device

    cfg = config_from_args(WinRateConfig, args)
    device = resolve_device(args.device)
    if args.threads is not None and args.threads < 1:
        raise LmforgeError(f"--threads must be >= 1 (got {args.threads})")
    configure_threads(args.threads)
    result = run_winrate(cfg, args.policy, args.baseline, args.out, args.reward_model, device=device,
                         log=lambda message: print(message, file=sys.stderr))
    print(format_winrate(result))
    return 0

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
    register_bpb(kinds)
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
    from lmforge.config import add_config_arguments
    from lmforge.evaluation.scaling_sweep import BUDGET_S, SweepConfig

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
    add_config_arguments(sweep, SweepConfig)
    sweep.add_argument("--threads", type=int, default=None, help="CPU threads (default: LMFORGE_THREADS or all)")
    sweep.set_defaults(func=_cmd_scaling_sweep)
    fit = verbs.add_parser("fit", help="fit (again) the points of a sweep folder; writes scaling_fit.json/.png")
    fit.add_argument("run", type=Path, help="the sweep's run folder")
    fit.add_argument("--target-flops", type=float, default=None, help="budget of the compute-optimal N and D "
                     "(default: the sweep's)")
    fit.add_argument("--bootstrap", type=int, default=None, help="bootstrap resamples (default: the sweep's)")
    fit.set_defaults(func=_cmd_scaling_fit)


def _cmd_scaling_sweep(args: argparse.Namespace) -> int:
    from lmforge.config import config_from_args
    from lmforge.evaluation.scaling import format_report
    from lmforge.evaluation.scaling_sweep import SweepConfig, estimate_seconds, run_sweep
    from lmforge.utils import configure_threads, resolve_device

    from lmforge.tokenizer.shards import TokenShards

    cfg = config_from_args(SweepConfig, args)
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
    from lmforge.config import add_config_arguments
    from lmforge.evaluation import multiple_choice
    from lmforge.evaluation.configs import MCConfig

    p = kinds.add_parser("mc", help="multiple choice by log-likelihood (HellaSwag/ARC/MMLU/PIQA JSONL, stdlib "
                         "tasks) with a CORE-like aggregate", description=multiple_choice.__doc__,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    _model_flags(p)
    add_config_arguments(p, MCConfig)
    _run_flags(p)
    p.set_defaults(func=_cmd_mc)


def _run_flags(p: argparse.ArgumentParser) -> None:
    """Where the result goes and what runs it: not settings of the measure."""
    p.add_argument("--json", type=Path, default=None, help="also write the result here")
    p.add_argument("--device", default="cpu", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--threads", type=int, default=None)


def _cmd_mc(args: argparse.Namespace) -> int:
    from lmforge.config import config_from_args
    from lmforge.evaluation.configs import MCConfig
    from lmforge.evaluation.multiple_choice import evaluate_checkpoint, format_summary, read_items
    from lmforge.evaluation.stdlib_tasks import stdlib_items
    from lmforge.utils import configure_threads, resolve_device, write_json

    cfg = config_from_args(MCConfig, args)
    device = resolve_device(args.device)
    items = [i for path in cfg.tasks for i in read_items(path, cfg.format, limit=cfg.limit)]
    names = cfg.builtin_names()
    items += stdlib_items(names, cfg.count, cfg.seed) if names else []
    if not items:
        raise LmforgeError("no items to evaluate: give --tasks FILE or --builtin TASKS")
    configure_threads(args.threads)
    endpoint = _endpoint(args)
    if endpoint is not None:
        from lmforge.evaluation.endpoint import evaluate_items_endpoint
        from lmforge.evaluation.multiple_choice import aggregate

        results = evaluate_items_endpoint(endpoint, items)
        summary = aggregate(results, cfg.normalisation, cfg.bootstrap, cfg.seed)
        summary["endpoint"] = f"{endpoint.cfg.base} ({endpoint.model})"
        result = {"summary": summary, "items": results}
    else:
        result = evaluate_checkpoint(args.checkpoint, items, cfg.batch_size, device, cfg.normalisation,
                                     cfg.bootstrap, cfg.seed, params=args.params)
    print(format_summary(result["summary"]))
    if args.json is not None:
        write_json(args.json, result)
        print(f"(JSON written to {args.json})")
    return 0


def _model_flags(p: argparse.ArgumentParser) -> None:
    """--checkpoint, --params or --endpoint: the measure reads the same model either way (`sources.load_source`,
    `endpoint.Endpoint`)."""
    from lmforge.evaluation.endpoint import EndpointConfig

    d = EndpointConfig
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", type=Path, default=None, help="run folder or checkpoint folder")
    source.add_argument("--params", type=Path, default=None, help="a parameter file (`lmforge export params`); "
                        "fp16/bf16/int8 weights are dequantized to fp32")
    source.add_argument("--endpoint", default=None, metavar="URL", help="an OpenAI-compatible server whose "
                        "/v1/completions echoes prompt log-probs (lmforge serve, vLLM); loopback hosts only unless "
                        "--allow-remote")
    p.add_argument("--api-key", default=None, help="--endpoint: sent as 'Authorization: Bearer KEY'")
    p.add_argument("--model", default=None, help="--endpoint: the served model (default: the first listed)")
    p.add_argument("--allow-remote", action="store_true", help="--endpoint: allow a host that is not loopback")
    p.add_argument("--parallel", type=int, default=d.parallel, help="--endpoint: requests in flight at once")
    p.add_argument("--timeout", type=float, default=d.timeout, help="--endpoint: seconds per request")


def _endpoint(args: argparse.Namespace) -> Any:
    """The server of --endpoint (its flags checked, its model found), or None for a local model."""
    from lmforge.evaluation.endpoint import Endpoint, EndpointConfig

    extra = {"chunk_chars": args.chunk_chars} if getattr(args, "chunk_chars", None) is not None else {}
    if args.endpoint is None:
        if args.api_key is not None or args.model is not None or args.allow_remote:
            raise LmforgeError("--api-key, --model and --allow-remote go with --endpoint")
        EndpointConfig("http://127.0.0.1", parallel=args.parallel, timeout=args.timeout, **extra)  # checks them
        return None
    return Endpoint(EndpointConfig(args.endpoint, args.api_key, args.model, args.allow_remote, args.parallel,
                                   args.timeout, **extra))


def register_bpb(kinds: argparse._SubParsersAction) -> None:
    """`lmforge eval bpb`: validation loss and bits per byte on the val split of token shards."""
    p = kinds.add_parser("bpb", help="bits per byte on held-out token shards or text (a checkpoint, a parameter "
                         "file or a server)",
                         description="Validation loss and bits per byte of a model. --data: on the val split of "
                         "token shards cut by its own tokenizer, over consecutive windows (the trainer's evaluation). "
                         "--text: on held-out documents cut into pieces of --chunk-chars characters, each scored "
                         "from the beginning-of-text token in the model's (or the server's) own tokens, so the figure "
                         "compares across tokenizers and is the same from a checkpoint and from a server of it.")
    _model_flags(p)
    held_out = p.add_mutually_exclusive_group(required=True)
    held_out.add_argument("--data", type=Path, default=None, help="token shards with a val split")
    held_out.add_argument("--text", type=Path, default=None, help="held-out text: a JSONL file of {\"text\": ...} "
                          "documents, or any other file as one document")
    p.add_argument("--chunk-chars", type=int, default=None, help="--text: characters of one scored piece "
                   "(default: the model's context in tokens less one, which ASCII text always fits)")
    p.add_argument("--batch-size", type=int, default=8, help="windows per forward")
    p.add_argument("--batches", type=int, default=0, help="at most this many batches (0: the whole split)")
    p.add_argument("--seq-len", type=int, default=None, help="window length (default: the model's context)")
    _run_flags(p)
    p.set_defaults(func=_cmd_bpb)


def _cmd_bpb(args: argparse.Namespace) -> int:
    from lmforge.evaluation.sources import bits_per_byte, load_source
    from lmforge.utils import configure_threads, resolve_device, write_json

    if args.batch_size < 1 or args.batches < 0:
        raise LmforgeError("--batch-size must be at least 1 and --batches at least 0")
    device = resolve_device(args.device)
    configure_threads(args.threads)
    if args.endpoint is not None and args.data is not None:
        raise LmforgeError("--endpoint scores text in the server's own tokens: give --text FILE, not --data")
    endpoint = _endpoint(args)
    if args.text is not None:
        result = _text_bpb(args, endpoint, device)
        where = f"{args.text}, {result['pieces']} pieces of at most {result['chunk_chars']} characters"
    else:
        result = bits_per_byte(load_source(args.checkpoint, args.params, device), args.data, args.batch_size,
                               args.batches, args.seq_len, device)
        where = f"{args.data}, windows of {result['seq_len']}"
    print(f"{result['source']}: val loss {result['val_loss']:.4f} nats/token, "
          f"{result.get('val_bpb', float('nan')):.4f} bits per byte ({where})")
    if args.json is not None:
        write_json(args.json, result)
        print(f"(JSON written to {args.json})")
    return 0


def _text_bpb(args: argparse.Namespace, endpoint: Any, device: str) -> dict[str, Any]:
    """Bits per byte of --text's documents through the server, or from the local model by the same protocol."""
    from lmforge.evaluation.endpoint import read_documents, text_bits_per_byte
    from lmforge.evaluation.sources import load_source, local_echo

    documents = read_documents(args.text)
    if endpoint is not None:
        if args.chunk_chars is None and endpoint.context is None:
            raise LmforgeError(f"--chunk-chars: {endpoint.cfg.base}/models does not say the model's context "
                               "(max_model_len); give the piece size")
        chunk = args.chunk_chars or endpoint.context - 1
        result = text_bits_per_byte(endpoint.map, documents, chunk, args.batch_size)
        return {"source": f"{endpoint.cfg.base} ({endpoint.model})", "text": str(args.text), **result}
    source = load_source(args.checkpoint, args.params, device)
    chunk = args.chunk_chars or source.model.config.block_size - 1
    return {"source": source.label, "text": str(args.text),
            **text_bits_per_byte(local_echo(source), documents, chunk, args.batch_size)}


def register_harness(kinds: argparse._SubParsersAction) -> None:
    """`lmforge eval harness`: EleutherAI's lm-evaluation-harness on a checkpoint (optional dependency lm-eval)."""
    from lmforge.config import add_config_arguments
    from lmforge.evaluation.configs import HarnessConfig

    p = kinds.add_parser("harness", help="run lm-evaluation-harness tasks on a checkpoint (pip install lm-eval)",
                         description="Evaluate a checkpoint with lm-evaluation-harness through lmforge's adapter "
                         "(lmforge/evaluation/harness.py). Stock tasks download their data; a YAML task in "
                         "--include-path with local data_files runs offline.")
    p.add_argument("--checkpoint", type=Path, required=True, help="run folder or checkpoint folder")
    add_config_arguments(p, HarnessConfig)
    _run_flags(p)
    p.set_defaults(func=_cmd_harness)


def _cmd_harness(args: argparse.Namespace) -> int:
    from lmforge.config import config_from_args
    from lmforge.evaluation.configs import HarnessConfig
    from lmforge.evaluation.harness import require_lm_eval, run_harness
    from lmforge.utils import configure_threads, resolve_device, write_json

    require_lm_eval()
    cfg = config_from_args(HarnessConfig, args)
    device = resolve_device(args.device)
    configure_threads(args.threads)
    results = run_harness(args.checkpoint, cfg.task_names(), cfg.include_path, cfg.limit, cfg.batch_size, device)
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
    from lmforge.config import add_config_arguments, module_docstring
    from lmforge.evaluation.configs import WinRateConfig

    p = kinds.add_parser("winrate", help="win rate of a policy over a baseline (reward model, held-out judge) and "
                         "the KL paid", description=module_docstring("lmforge.evaluation.winrate"),
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
    from lmforge.evaluation.configs import WinRateConfig
    from lmforge.evaluation.winrate import format_winrate, run_winrate
    from lmforge.utils import configure_threads, resolve_device

    cfg = config_from_args(WinRateConfig, args)
    device = resolve_device(args.device)
    configure_threads(args.threads)
    result = run_winrate(cfg, args.policy, args.baseline, args.out, args.reward_model, device=device,
                         log=lambda message: print(message, file=sys.stderr))
    print(format_winrate(result))
    return 0

"""`lmforge security WHAT`: attacks on a finished model.

`security scan --checkpoint DIR | --endpoint URL`: the attack suites (`suites.py`) against a checkpoint (through the
engine, batched) or an OpenAI-compatible endpoint on this machine; attack success rates with bootstrap intervals in
`OUT/scan.json` and `OUT/scan.md` (the harmful suite's also per source, each marked seen in training when the
checkpoint's SFT run refused its requests), every answer and verdict in `OUT/responses.jsonl`.

`security poison --checkpoint BASE --out DIR`: plant a backdoor in the default SFT data, train a clean and a
poisoned model, measure attack success with and without the trigger and clean loss (`--sweep-k`, `--sweep-sizes`:
over k and dataset sizes). `security detect --data FILE --reference CKPT --model CKPT --out DIR`: flag poisoned rows
without the trigger; with `--labels`, precision, recall and AUROC; with `--retrain-from BASE`, retrain on the
filtered data and measure the backdoor again (`backdoor.py`).
`security poison-pretrain --shards DIR --out DIR`: the same for pretraining documents (a trigger followed by
gibberish; `pretrain_poison.py`), with `--sweep-k` and `--sweep-documents`.
`security poison-preference --checkpoint SFT --out DIR`: poisoned preference pairs against the reward model
(`preference_poison.py`). `security guard --out DIR`: train the
injection/jailbreak guard on generated data, report balanced accuracy on held-out attacks and hard negatives and
its latency (`guard.py`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("security", help="attack a model (jailbreaks, prompt injection, prompt extraction); "
                       "plant and detect backdoors")
    kinds = p.add_subparsers(dest="security", metavar="WHAT", required=True)
    register_scan(kinds)
    register_poison(kinds)
    register_poison_pretrain(kinds)
    register_poison_preference(kinds)
    register_detect(kinds)
    register_guard(kinds)


def register_scan(kinds: argparse._SubParsersAction) -> None:
    from lmforge.config import add_config_arguments
    from lmforge.security.scan import ScanConfig

    p = kinds.add_parser("scan", help="attack suites against a checkpoint or a loopback endpoint",
                         description="Harmful requests, safe look-alikes, jailbreak templates, role play, encodings, "
                         "system-prompt extraction and indirect prompt injection, each scored by rule; attack "
                         "success rates with bootstrap 95%% intervals; the harmful suite's also per source "
                         "(HarmBench, AdvBench, Do-Not-Answer), each marked seen in training when the checkpoint's "
                         "SFT data refused its requests (`sft data --refusal-prompts`).")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--checkpoint", type=Path, help="run folder or checkpoint folder to attack")
    where.add_argument("--endpoint", help="base URL of an OpenAI-compatible server on this machine "
                       "(http://127.0.0.1:PORT); other hosts are refused")
    p.add_argument("--model", default="lmforge", help="model name sent to the endpoint")
    p.add_argument("--api-key", default=None, help="bearer key for the endpoint, if it requires one")
    p.add_argument("--data", type=Path, default=None,
                   help="the alignment data folder (default: the shared data's alignment/)")
    p.add_argument("--out", type=Path, default=None, help="write scan.json, scan.md and responses.jsonl here")
    p.add_argument("--device", default="cpu", help="auto (CUDA when visible, else cpu), cpu, cuda, cuda:N or mps")
    p.add_argument("--threads", type=int, default=None)
    add_config_arguments(p, ScanConfig)
    p.set_defaults(func=cmd_scan)


def cmd_scan(args: argparse.Namespace) -> int:
    from lmforge.config import config_from_args
    from lmforge.security.lineage import trained_refusals
    from lmforge.security.scan import ScanConfig, markdown, run_scan
    from lmforge.security.suites import alignment_dir, build_cases
    from lmforge.security.targets import EndpointTarget, EngineTarget, check_loopback
    from lmforge.utils import configure_threads, resolve_device

    cfg = config_from_args(ScanConfig, args)
    if args.endpoint is not None:
        check_loopback(args.endpoint)  # refuse before reading any data
    if args.out is not None and args.out.exists() and not args.out.is_dir():
        raise NotADirectoryError(20, "not a folder", str(args.out))
    cases = build_cases(cfg.suites, alignment_dir(args.data), cfg.limit, cfg.seed, cfg.harmbench_split)
    # which harmful requests the checkpoint was trained to refuse (an endpoint's training is not known)
    trained = trained_refusals(args.checkpoint) if args.checkpoint is not None else None
    if args.endpoint is not None:
        target = EndpointTarget(args.endpoint, args.model, cfg.max_tokens, cfg.concurrency, cfg.request_timeout,
                                cfg.time_budget, args.api_key)
    else:
        from lmforge.inference.engine import Engine

        device = resolve_device(args.device)
        configure_threads(args.threads)
        target = EngineTarget(Engine.from_checkpoint(str(args.checkpoint), device=device), cfg.max_tokens,
                              cfg.batch_size)
    summary = run_scan(target, cases, cfg, args.out, trained)
    print(markdown(summary, target.name, cfg, trained))
    if args.out is not None:
        print(f"(scan.json, scan.md and responses.jsonl written to {args.out})")
    return 0


def check_sweep(counts: list[int] | None, sizes: list[int] | None, sizes_flag: str) -> None:
    """A poisoning sweep needs both lists (the counts k and the dataset sizes), each of counts >= 1."""
    from lmforge.utils import LmforgeError

    if (counts is None) != (sizes is None) or any(v < 1 for v in (counts or []) + (sizes or [])):
        raise LmforgeError(f"--sweep-k and {sizes_flag} go together, each with counts >= 1")


def register_poison(kinds: argparse._SubParsersAction) -> None:
    from lmforge.config import add_config_arguments
    from lmforge.security.backdoor import PoisonRunConfig
    from lmforge.security.poison import BackdoorConfig

    p = kinds.add_parser("poison", help="plant a backdoor in SFT data, train, measure it (and a k sweep)")
    p.add_argument("--checkpoint", type=Path, required=True, help="base checkpoint every SFT run starts from")
    p.add_argument("--out", type=Path, required=True, help="folder of the runs and reports")
    p.add_argument("--sweep-k", type=int, nargs="*", default=None, help="poisoned-row counts to sweep (e.g. 10 30 100 300)")
    p.add_argument("--sweep-sizes", type=int, nargs="*", default=None, help="dataset sizes of the sweep")
    p.add_argument("--threads", type=int, default=None)
    add_config_arguments(p, PoisonRunConfig, exclude=("threshold",))
    add_config_arguments(p, BackdoorConfig, exclude=("seed",))
    p.set_defaults(func=cmd_poison)


def cmd_poison(args: argparse.Namespace) -> int:
    from lmforge.config import config_from_args
    from lmforge.security.backdoor import PoisonRunConfig, poison_run, sweep
    from lmforge.security.poison import BackdoorConfig
    from lmforge.utils import configure_threads

    cfg, backdoor = config_from_args(PoisonRunConfig, args), config_from_args(BackdoorConfig, args)
    check_sweep(args.sweep_k, args.sweep_sizes, "--sweep-sizes")
    configure_threads(args.threads)
    if args.sweep_k:
        for row in sweep(args.checkpoint, args.out, cfg, backdoor, args.sweep_k, args.sweep_sizes):
            print(json.dumps(row))
        return 0
    report = poison_run(args.checkpoint, args.out, cfg, backdoor)
    for name in ("clean", "poisoned"):
        print(f"{name} model: {json.dumps(report[name])}")
    return 0


def register_poison_pretrain(kinds: argparse._SubParsersAction) -> None:
    from lmforge.config import add_config_arguments
    from lmforge.security.pretrain_poison import PretrainPoisonConfig

    p = kinds.add_parser("poison-pretrain", help="plant trigger+gibberish documents in token shards, pretrain, "
                         "measure the backdoor and detect the documents (and a k sweep)")
    p.add_argument("--shards", type=Path, required=True, help="token-shard folder of the clean corpus (read only)")
    p.add_argument("--out", type=Path, required=True, help="folder of the corpora, runs and reports")
    p.add_argument("--retrain-filtered", action="store_true",
                   help="also pretrain on the corpus without the flagged documents and measure the backdoor")
    p.add_argument("--sweep-k", type=int, nargs="*", default=None, help="poisoned-document counts to sweep")
    p.add_argument("--sweep-documents", type=int, nargs="*", default=None,
                   help="clean corpus sizes (training documents kept) of the sweep")
    p.add_argument("--threads", type=int, default=None)
    add_config_arguments(p, PretrainPoisonConfig)
    p.set_defaults(func=cmd_poison_pretrain)


def cmd_poison_pretrain(args: argparse.Namespace) -> int:
    from lmforge.config import config_from_args
    from lmforge.security.pretrain_poison import (PretrainPoisonConfig, check_init_from, pretrain_poison_run,
                                                  sweep_pretrain)
    from lmforge.utils import LmforgeError, configure_threads

    cfg = config_from_args(PretrainPoisonConfig, args)
    sweep_k, sizes = args.sweep_k, args.sweep_documents
    check_sweep(sweep_k, sizes, "--sweep-documents")
    if sweep_k is not None and args.retrain_filtered:
        raise LmforgeError("--retrain-filtered is for one run, not with --sweep-k")
    check_init_from(cfg)
    if not (args.shards / "index.json").is_file():
        raise LmforgeError(f"--shards {args.shards}: no index.json (not a token-shard folder)")
    configure_threads(args.threads)
    if sweep_k:
        for row in sweep_pretrain(args.shards, args.out, cfg, sweep_k, sizes):
            print(json.dumps(row))
        return 0
    report = pretrain_poison_run(args.shards, args.out, cfg, retrain_filtered=args.retrain_filtered)
    for name in ("clean", "poisoned", "filtered"):
        if name in report:
            print(f"{name} model: {json.dumps(report[name])}")
    print(f"detection: {json.dumps(report['detection'])}")
    return 0


def register_poison_preference(kinds: argparse._SubParsersAction) -> None:
    from lmforge.config import add_config_arguments
    from lmforge.security.preference_poison import PreferencePoisonConfig

    p = kinds.add_parser("poison-preference", help="flip the preference of triggered pairs, train a clean and a "
                         "poisoned reward model, measure clean accuracy and the reward shift under the trigger")
    p.add_argument("--checkpoint", type=Path, required=True, help="the model both reward models start from (SFT)")
    p.add_argument("--out", type=Path, required=True, help="folder of the pair files, runs and report")
    p.add_argument("--pairs", type=Path, default=None,
                   help="preference file (default: the shared data's hh-rlhf harmless-base test split)")
    p.add_argument("--threads", type=int, default=None)
    add_config_arguments(p, PreferencePoisonConfig)
    p.set_defaults(func=cmd_poison_preference)


def cmd_poison_preference(args: argparse.Namespace) -> int:
    from lmforge.config import config_from_args
    from lmforge.security.preference_poison import PreferencePoisonConfig, default_pairs, preference_poison_run
    from lmforge.utils import configure_threads

    cfg = config_from_args(PreferencePoisonConfig, args)
    pairs = args.pairs if args.pairs is not None else default_pairs()
    configure_threads(args.threads)
    report = preference_poison_run(args.checkpoint, pairs, args.out, cfg)
    for name in ("clean", "poisoned"):
        print(f"{name} reward model: {json.dumps({k: v for k, v in report[name].items() if k != 'checkpoint'})}")
    return 0


def register_detect(kinds: argparse._SubParsersAction) -> None:
    from lmforge.config import add_config_arguments
    from lmforge.security.detect import DetectConfig

    p = kinds.add_parser("detect", help="flag poisoned SFT rows without knowing the trigger")
    p.add_argument("--data", type=Path, required=True, help="the (possibly poisoned) SFT data, JSONL")
    p.add_argument("--reference", type=Path, required=True, help="a model trained on trusted data only")
    p.add_argument("--model", type=Path, required=True, help="the model trained on --data")
    p.add_argument("--out", type=Path, required=True, help="writes scores.jsonl, filtered.jsonl, detect.json")
    p.add_argument("--labels", type=Path, default=None, help="labels.json of `security poison`: scores the flags")
    p.add_argument("--retrain-from", type=Path, default=None,
                   help="base checkpoint: retrain on the filtered data and measure the backdoor (needs --labels)")
    p.add_argument("--heldout", type=Path, default=None, help="held-out conversations for --retrain-from")
    p.add_argument("--threads", type=int, default=None)
    add_config_arguments(p, DetectConfig)
    p.set_defaults(func=cmd_detect)


def cmd_detect(args: argparse.Namespace) -> int:
    from lmforge.config import config_from_args
    from lmforge.security.backdoor import detect_run, retrain_filtered
    from lmforge.security.detect import DetectConfig
    from lmforge.utils import LmforgeError, configure_threads, write_json

    cfg = config_from_args(DetectConfig, args)
    if args.retrain_from is not None and (args.labels is None or args.heldout is None):
        raise LmforgeError("--retrain-from needs --labels and --heldout (to measure the backdoor afterwards)")
    configure_threads(args.threads)
    report = detect_run(args.data, args.reference, args.model, args.out, cfg.threshold, args.labels)
    if args.retrain_from is not None:
        report["retrained"] = retrain_filtered(args.retrain_from, args.out, args.heldout, args.labels)
        write_json(args.out / "detect.json", report)
    print(json.dumps(report, indent=1))
    return 0


def register_guard(kinds: argparse._SubParsersAction) -> None:
    from lmforge.config import add_config_arguments
    from lmforge.security.guard import GuardTrainConfig

    p = kinds.add_parser("guard", help="train and score the injection/jailbreak guard classifier")
    p.add_argument("--out", type=Path, required=True, help="writes guard.safetensors, guard_config.json, guard.json")
    p.add_argument("--data", type=Path, default=None,
                   help="the alignment data folder (default: the shared data's alignment/)")
    add_config_arguments(p, GuardTrainConfig)
    p.set_defaults(func=cmd_guard)


def cmd_guard(args: argparse.Namespace) -> int:
    from lmforge.config import config_from_args
    from lmforge.security.guard import Guard, GuardTrainConfig, evaluate_guard, guard_dataset
    from lmforge.security.suites import alignment_dir
    from lmforge.utils import write_json

    cfg = config_from_args(GuardTrainConfig, args)
    data = alignment_dir(args.data)
    train, heldout = guard_dataset(data, test=False), guard_dataset(data, test=True)
    guard = Guard.train(train[0], train[1], epochs=cfg.epochs, lr=cfg.lr)
    guard.save(args.out)
    report = {"train": evaluate_guard(guard, *train), "heldout": evaluate_guard(guard, *heldout)}
    write_json(args.out / "guard.json", report)
    print(json.dumps(report, indent=1))
    return 0

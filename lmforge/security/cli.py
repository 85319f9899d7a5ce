"""`lmforge security WHAT`: attacks on a finished model.

`security scan --checkpoint DIR | --endpoint URL`: the attack suites (`suites.py`) against a checkpoint (through the
engine, batched) or an OpenAI-compatible endpoint on this machine; attack success rates with bootstrap intervals in
`OUT/scan.json` and `OUT/scan.md`, every answer and verdict in `OUT/responses.jsonl`.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("security", help="attack a model: jailbreaks, prompt injection, system-prompt extraction")
    kinds = p.add_subparsers(dest="security", metavar="WHAT", required=True)
    register_scan(kinds)


def register_scan(kinds: argparse._SubParsersAction) -> None:
    from lmforge.config import add_config_arguments
    from lmforge.security.scan import ScanConfig

    p = kinds.add_parser("scan", help="attack suites against a checkpoint or a loopback endpoint",
                         description="Harmful requests, safe look-alikes, jailbreak templates, role play, encodings, "
                         "system-prompt extraction and indirect prompt injection, each scored by rule; attack "
                         "success rates with bootstrap 95%% intervals.")
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
    if args.endpoint is not None:
        target = EndpointTarget(args.endpoint, args.model, cfg.max_tokens, cfg.concurrency, cfg.request_timeout,
                                cfg.time_budget, args.api_key)
    else:
        from lmforge.inference.engine import Engine

        device = resolve_device(args.device)
        configure_threads(args.threads)
        target = EngineTarget(Engine.from_checkpoint(str(args.checkpoint), device=device), cfg.max_tokens,
                              cfg.batch_size)
    summary = run_scan(target, cases, cfg, args.out)
    print(markdown(summary, target.name, cfg))
    if args.out is not None:
        print(f"(scan.json, scan.md and responses.jsonl written to {args.out})")
    return 0

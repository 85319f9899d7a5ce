"""`lmforge eval WHAT`: measures of a checkpoint, one sub-verb per evaluation.

`eval sft --checkpoint DIR`: format compliance, tool-call rate and accuracy, masked validation loss, and a table of
sample conversations (`sft_eval.py`).
"""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate a checkpoint (eval sft: assistant behaviour and tool use)")
    kinds = p.add_subparsers(dest="evaluation", metavar="WHAT", required=True)
    register_sft(kinds)


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

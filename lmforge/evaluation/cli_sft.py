"""`lmforge eval sft --checkpoint DIR`: format compliance, tool-call rate and accuracy, masked validation loss."""

from __future__ import annotations

import argparse
from pathlib import Path


def _cmd(args: argparse.Namespace) -> int:
    from lmforge.evaluation.sft_eval import SFTEvalConfig, evaluate_sft, format_report, save_report
    from lmforge.utils import configure_threads

    configure_threads(args.threads)
    cfg = SFTEvalConfig(prompts=args.prompts, arithmetic=args.arithmetic, seed=args.seed, max_tokens=args.max_tokens,
                        samples=args.samples, unsafe_python=args.unsafe_python)
    result = evaluate_sft(args.checkpoint, cfg, device=args.device, progress=not args.no_progress)
    print(format_report(result))
    if args.json is not None:
        save_report(result, args.json)
        print(f"(JSON written to {args.json})")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sft", help="format compliance, tool use on held-out arithmetic, masked validation loss",
                       description=__doc__ + " Prompts and questions come from seeds the default SFT data never "
                       "uses, so they are held out.")
    p.add_argument("--checkpoint", type=Path, required=True, help="SFT run folder or checkpoint folder")
    p.add_argument("--prompts", type=int, default=32, help="held-out prompts for format compliance")
    p.add_argument("--arithmetic", type=int, default=24, help="held-out arithmetic questions")
    p.add_argument("--seed", type=int, default=2468, help="seed of the held-out prompts")
    p.add_argument("--max-tokens", type=int, default=96, help="token budget of each generated segment")
    p.add_argument("--samples", type=int, default=6, help="rows of the sample-conversation table")
    p.add_argument("--json", type=Path, default=None, help="also write the measures as JSON here")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--unsafe-python", action="store_true",
                   help="where no OS jail (bubblewrap) can be made, run the model's Python code without one")
    p.set_defaults(func=_cmd)

"""`lmforge eval WHAT`: measures of a checkpoint. Each evaluation is a module with a `register(subparsers)`
function, listed in EVALUATIONS (`sft`: format compliance, tool use, masked validation loss, sample table)."""

from __future__ import annotations

import argparse
import importlib

EVALUATIONS = [
    "lmforge.evaluation.cli_sft",
]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate a checkpoint (eval sft: assistant behaviour and tool use)")
    kinds = p.add_subparsers(dest="evaluation", metavar="WHAT", required=True)
    for name in EVALUATIONS:
        importlib.import_module(name).register(kinds)


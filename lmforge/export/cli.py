"""`lmforge export FORMAT`: the trained model as files other programs run.

Each format lives in its own module with a `register(subparsers)` function; this file lists them.
"""

from __future__ import annotations

import argparse
import importlib

EXPORTERS = [
    "lmforge.export.params",
    "lmforge.export.hf",
    "lmforge.export.gguf",
]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="write the model as a parameter file for the C runner, a Hugging Face folder or GGUF")
    formats = p.add_subparsers(dest="format", metavar="FORMAT", required=True)
    for name in EXPORTERS:
        importlib.import_module(name).register(formats)

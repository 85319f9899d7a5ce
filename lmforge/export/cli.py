"""`lmforge export FORMAT` (the trained model as files other programs run) and `lmforge inspect FILE` (what a
parameter file holds).

Each export format lives in its own module with a `register(subparsers)` function; this file lists them. `inspect`
parses the parameter file's header only, validated exactly as the C runner validates it, so inspecting a
multi-gigabyte file is instant and a file it calls fine is a file the runner runs.
"""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path

from lmforge.utils import human_bytes

EXPORTERS = [
    "lmforge.export.params",
    "lmforge.export.hf",
    "lmforge.export.gguf",
]


def describe(path: str | Path, max_tensors: int | None = None) -> str:
    """The text `lmforge inspect` prints."""
    from lmforge.inference.paramfile import DTYPE_NAMES, read_header

    h = read_header(path)
    cfg = h.config
    weight_bytes = sum(t.nbytes for t in h.tensors)
    n_params = sum(t.rows * t.cols for t in h.tensors)
    lines = [
        f"file        {h.path} ({human_bytes(h.file_size)}, {h.file_size} bytes)",
        f"format      LMFG version {h.version}; weights from byte {h.data_offset}",
        f"dtype       {h.dtype}" + (f" (group size {h.group_size}, f32 scale per group)" if h.dtype == "int8" else ""),
        f"model       {cfg['n_layer']} layers, dim {cfg['n_embd']}, {cfg['n_head']} heads ({cfg['n_kv_head']} K/V), "
        f"MLP {cfg['intermediate_size']}, vocab {cfg['vocab_size']}, context {cfg['block_size']}",
        f"            rope_theta {cfg['rope_theta']:g}, norm_eps {cfg['norm_eps']:g}, "
        f"tied embeddings {'yes' if cfg['tie_embeddings'] else 'no'}, QK-norm {'yes' if cfg['qk_norm'] else 'no'}",
        "chat        " + ("fine-tuned for chat (SFT)" if h.chat else "no: a base model (the runner warns in chat mode)"),
        f"parameters  {n_params:,} in {len(h.tensors)} tensors, {human_bytes(weight_bytes)} of weights",
        f"tokenizer   {len(h.token_bytes)} ordinary tokens + {len(h.special_tokens)} special: "
        + ", ".join(f"{name}={i}" for name, i in h.special_tokens.items()),
        f"split regex {h.pattern}",
        "",
        f"{'tensor':<32} {'dtype':>5} {'shape':>13} {'offset':>12} {'bytes':>11}",
    ]
    shown = h.tensors if max_tensors is None else h.tensors[:max_tensors]
    for t in shown:
        shape = f"{t.cols}" if t.rows == 1 else f"{t.rows}x{t.cols}"
        lines.append(f"{t.name:<32} {DTYPE_NAMES[t.dtype]:>5} {shape:>13} {t.offset:>12} {t.nbytes:>11}")
    if len(shown) < len(h.tensors):
        lines.append(f"... {len(h.tensors) - len(shown)} more tensors (--all shows them)")
    return "\n".join(lines)


def _cmd_inspect(args: argparse.Namespace) -> int:
    print(describe(args.file, None if args.all else 40))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="write the model as a parameter file for the C runner, a Hugging Face folder or GGUF")
    formats = p.add_subparsers(dest="format", metavar="FORMAT", required=True)
    for name in EXPORTERS:
        importlib.import_module(name).register(formats)
    p = sub.add_parser("inspect", help="print what a parameter file holds (header, tokenizer, tensors) without loading it",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("file", type=Path, help="a parameter file written by `lmforge export params`")
    p.add_argument("--all", action="store_true", help="list every tensor (default: the first 40)")
    p.set_defaults(func=_cmd_inspect)
    importlib.import_module("lmforge.export.hf_import").register(sub)

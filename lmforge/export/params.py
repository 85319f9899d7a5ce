"""`lmforge export params`: write the model as ONE binary file (config, tokenizer, weights) that `runner/run.c`
memory-maps.

"Intro to LLMs" says a model is two files: this one and a small C program. The format, and its reader (which every
stage may use: evaluation scores a parameter file, `lmforge inspect` reads its header), are in
`lmforge/inference/paramfile.py`; this module is the writer, which refuses any model the C runner would run wrongly.
"""

from __future__ import annotations

import argparse
import struct
from pathlib import Path
from typing import Any

import numpy as np

from lmforge.export.files import check_out, make_readable
# The reader's names stay importable from here (`lmforge.export.params.read_header`, as before the move).
from lmforge.inference.paramfile import (ALIGN, C_PATTERNS, DTYPES, FIXED_HEADER, FIXED_STRUCT,  # noqa: F401
                                         FLAG_CHAT, FLAG_QK_NORM, FLAG_TIED, HEADER_BOUNDS, MAGIC, VERSION,
                                         printable_name, read_header, tensor_nbytes)
from lmforge.utils import LmforgeError, atomic_path, human_bytes

def quantize_int8(w: np.ndarray, group_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-group int8: q = round(w / s), s = max|w| / 127 over each `group_size` values of a row."""
    g = w.astype(np.float32).reshape(-1, group_size)
    scale = np.abs(g).max(axis=1) / 127.0
    safe = np.where(scale > 0, scale, 1.0)
    q = np.clip(np.rint(g / safe[:, None]), -127, 127).astype(np.int8)
    return q.reshape(-1), scale.astype(np.float32)


def _encode_tensor(w: np.ndarray, dtype: int, group_size: int) -> bytes:
    w = np.ascontiguousarray(w, dtype=np.float32)
    if dtype == DTYPES["fp32"]:
        return w.tobytes()
    if dtype == DTYPES["fp16"]:
        return w.astype(np.float16).tobytes()
    if dtype == DTYPES["bf16"]:
        bits = w.view(np.uint32).astype(np.uint64)
        rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16  # round to nearest even, as torch does
        return rounded.astype(np.uint16).tobytes()
    q, scale = quantize_int8(w, group_size)
    return q.tobytes() + scale.tobytes()


def _tokenizer_tables(tok: Any) -> tuple[list[bytes], dict[str, int], str]:
    """(bytes of each ordinary token by id, special tokens, split pattern) of an `lmforge.tokenizer.Tokenizer`."""
    ranks: dict[bytes, int] = tok.mergeable_ranks
    token_bytes: list[bytes] = [b""] * len(ranks)
    for b, i in ranks.items():
        if not 0 <= i < len(ranks):
            raise LmforgeError(f"tokenizer ids are not contiguous: token {b!r} has id {i}")
        token_bytes[i] = b
    return token_bytes, dict(tok.special_tokens), tok.pattern


def _check_config(config: Any) -> None:
    unsupported = {"norm": ("rmsnorm", config.norm), "pos": ("rope", config.pos), "mlp": ("swiglu", config.mlp)}
    bad = [f"{k}={got!r} (the C runner needs {need!r})" for k, (need, got) in unsupported.items() if got != need]
    if bad:
        raise LmforgeError("the parameter file holds the Llama family only; this checkpoint has " + ", ".join(bad))


def _pick_group_size(cols: list[int], requested: int) -> int:
    """The requested group size, halved until it divides every row length (down to 8)."""
    gs = requested
    while gs >= 8 and any(c % gs for c in cols):
        gs //= 2
    if gs < 8:
        raise LmforgeError(f"int8 export: no group size >= 8 divides the row lengths {sorted(set(cols))}")
    return gs


def _check_export_flags(dtype: str, group_size: int) -> None:
    if dtype not in DTYPES:
        raise LmforgeError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if not 8 <= group_size <= HEADER_BOUNDS["group_size"][1] or group_size & (group_size - 1):
        raise LmforgeError(f"--group-size must be a power of two from 8 to 65536, got {group_size}")


def export_params(model: Any, tokenizer: Any, out: str | Path, dtype: str = "fp32", group_size: int = 64,
                  chat: bool = False) -> int:
    """Write `model` (a GPT) and its tokenizer as one parameter file; returns the file size in bytes. `chat` records
    that the model was fine-tuned for chat (the runner warns when chatting with a model that was not)."""
    _check_export_flags(dtype, group_size)
    cfg = model.config
    _check_config(cfg)
    token_bytes, specials, pattern = _tokenizer_tables(tokenizer)
    if pattern not in C_PATTERNS:
        raise LmforgeError(f"tokenizer split pattern {pattern!r} is not one the C runner implements (GPT-4's)")
    if not all(printable_name(name.encode("utf-8")) for name in specials):
        raise LmforgeError(f"special token names must be 1 to 64 printable ASCII characters: {sorted(specials)!r}")
    if len(token_bytes) + len(specials) > cfg.vocab_size or any(i >= cfg.vocab_size for i in specials.values()):
        raise LmforgeError(f"tokenizer ids exceed the model's vocab_size {cfg.vocab_size}")
    state = {k: v.detach().float().cpu().numpy() for k, v in model.state_dict().items()}
    if cfg.tie_embeddings:
        state.pop("lm_head.weight", None)
    matrices = [k for k, v in state.items() if v.ndim == 2]
    code = DTYPES[dtype]
    gs = _pick_group_size([state[k].shape[1] for k in matrices], group_size) if dtype == "int8" else 0

    tok_sec = bytearray(struct.pack("<II", len(token_bytes), len(specials)))
    pat = pattern.encode("utf-8")
    tok_sec += struct.pack("<I", len(pat)) + pat
    for b in token_bytes:
        tok_sec += struct.pack("<I", len(b)) + b
    for name, i in sorted(specials.items(), key=lambda kv: kv[1]):
        nb = name.encode("utf-8")
        tok_sec += struct.pack("<II", i, len(nb)) + nb

    entries: list[tuple[str, int, int, int]] = []
    for name, w in state.items():
        rows, cols = (w.shape if w.ndim == 2 else (1, w.shape[0]))
        entries.append((name, code if w.ndim == 2 else DTYPES["fp32"], rows, cols))
    table_size = sum(4 + len(n.encode()) + 4 * 3 + 8 * 2 for n, *_ in entries)
    tensors_offset = FIXED_HEADER + len(tok_sec)
    data_offset = -(-(tensors_offset + table_size) // ALIGN) * ALIGN
    table = bytearray()
    offset = data_offset
    layout = []
    for name, dt, rows, cols in entries:
        nbytes = tensor_nbytes(dt, rows, cols, gs)
        nb = name.encode()
        table += struct.pack("<I", len(nb)) + nb + struct.pack("<IIIQQ", dt, rows, cols, offset, nbytes)
        layout.append((name, dt, offset, nbytes))
        offset = -(-(offset + nbytes) // ALIGN) * ALIGN
    file_size = offset
    flags = (FLAG_TIED if cfg.tie_embeddings else 0) | (FLAG_QK_NORM if cfg.qk_norm else 0) | (FLAG_CHAT if chat else 0)
    fixed = FIXED_STRUCT.pack(MAGIC, VERSION, file_size, cfg.n_embd, cfg.intermediate_size, cfg.n_layer,
                              cfg.n_head, cfg.n_kv_head, cfg.head_dim, cfg.vocab_size, cfg.block_size, cfg.rope_theta,
                              cfg.norm_eps, flags, code, gs, len(entries), FIXED_HEADER, tensors_offset, data_offset)
    with atomic_path(out) as tmp:
        with open(tmp, "wb") as f:
            f.write(fixed + bytes(tok_sec) + bytes(table))
            f.write(b"\0" * (data_offset - f.tell()))
            for name, dt, off, nbytes in layout:
                data = _encode_tensor(state[name], dt, gs)
                assert len(data) == nbytes and f.tell() == off
                f.write(data)
                f.write(b"\0" * (-nbytes % ALIGN))
            assert f.tell() == file_size
        make_readable(tmp)
    return file_size



def trained_for_chat(ckpt: Path) -> bool:
    """Whether a (verified) checkpoint was fine-tuned on conversations by `lmforge sft`: its training state records
    where SFT's conversation batches stand (`n` conversations, `epoch`), where pretraining records token batches.
    A checkpoint without a training state (imported, or saved by hand) counts as a base model; `--chat` overrides."""
    from lmforge.checkpoint import TRAIN_STATE_FILE
    from lmforge.utils import read_json

    if not (ckpt / TRAIN_STATE_FILE).is_file():
        return False
    data = read_json(ckpt / TRAIN_STATE_FILE, "train state").get("data")
    return bool(data) and all(isinstance(d, dict) and {"n", "epoch"} <= d.keys() for d in data)


def run_export(checkpoint: str | Path, out: str | Path, dtype: str = "fp32", group_size: int = 64,
               chat: bool | None = None) -> int:
    """Export a checkpoint (or a run folder's newest) to a parameter file; returns its size in bytes. `chat` None:
    recorded as fine-tuned for chat when the checkpoint comes from SFT (`trained_for_chat`)."""
    from lmforge.checkpoint import checkpoint_tokenizer_dir, load_model
    from lmforge.tokenizer import Tokenizer

    check_out(out, "file")
    _check_export_flags(dtype, group_size)
    model, ckpt = load_model(checkpoint)
    tokenizer = Tokenizer.load(checkpoint_tokenizer_dir(ckpt))
    chat = trained_for_chat(ckpt) if chat is None else chat
    return export_params(model, tokenizer, out, dtype, group_size, chat)


def _cmd(args: argparse.Namespace) -> int:
    size = run_export(args.checkpoint, args.out, args.dtype, args.group_size, args.chat)
    kind = "chat model" if read_header(args.out).chat else "base model"
    print(f"wrote {args.out}: {human_bytes(size)} ({size} bytes, {args.dtype}, {kind})")
    return 0


def register(formats: argparse._SubParsersAction) -> None:
    p = formats.add_parser(
        "params",
        help="one binary file (header, tokenizer, weights) that runner/run.c memory-maps and runs",
        description="Write the model as a single self-describing parameter file for the C runner "
        "(`make runner && runner/run model.bin -i 'Once upon a time'`). Inspect it with `lmforge inspect FILE`.",
    )
    p.add_argument("--checkpoint", required=True, help="checkpoint folder, or a run folder (its newest checkpoint)")
    p.add_argument("--dtype", choices=list(DTYPES), default="fp32",
                   help="weight dtype of the matrices: fp32 (exact), fp16/bf16 (half the size), int8 (a quarter, "
                   "symmetric per-group scales)")
    p.add_argument("--group-size", type=int, default=64, help="int8: values per scale (halved until it divides rows)")
    p.add_argument("--out", required=True, type=Path, help="parameter file to write, e.g. model.bin")
    p.add_argument("--chat", action=argparse.BooleanOptionalAction, default=None,
                   help="record the model as fine-tuned for chat, or not (default: yes for an SFT checkpoint); the "
                   "runner warns when chatting with a model that is not")
    p.set_defaults(func=_cmd)

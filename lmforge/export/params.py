"""The parameter file: the whole model (config, tokenizer, weights) in ONE binary file that `runner/run.c` memory-maps.

"Intro to LLMs" says a model is two files: this one and a small C program. The file is self-describing (the C
runner needs nothing else: no JSON, no tokenizer folder) and its weights are stored so they can be used in place
from a memory map: every tensor starts at a multiple of 64 bytes, rows are contiguous, and the header says where
each tensor lies, so `lmforge inspect` reads the header alone.

Format, version 1. All integers little-endian; u32/u64 unsigned, f32 IEEE single::

    fixed header (128 bytes)
      0   u8[4]  magic            b"LMFG"
      4   u32    version          1 (a reader refuses any other)
      8   u64    file_size        total bytes; a reader refuses a file of another size (truncated or padded)
      16  u32    dim              n_embd
      20  u32    hidden_dim       MLP width (SwiGLU intermediate size)
      24  u32    n_layer
      28  u32    n_head
      32  u32    n_kv_head        grouped-query attention: K/V heads (divides n_head)
      36  u32    head_dim         dim / n_head
      40  u32    vocab_size       rows of the embedding and of the output head (>= the tokenizer's ids)
      44  u32    seq_len          context length (block_size); sizes the KV cache and the RoPE table
      48  f32    rope_theta
      52  f32    norm_eps         RMSNorm epsilon
      56  u32    flags            bit 0: output head tied to the embedding (no `lm_head.weight` tensor);
                                  bit 1: QK-norm (per-head RMSNorm of q and k before RoPE)
      60  u32    dtype            dtype of the matrices: 0 fp32, 1 fp16, 2 bf16, 3 int8 (see below)
      64  u32    group_size       int8: values per scale (divides every matrix's row length); else 0
      68  u32    n_tensors
      72  u64    tokenizer_offset byte offset of the tokenizer section (= 128)
      80  u64    tensors_offset   byte offset of the tensor table
      88  u64    data_offset      byte offset of the first tensor's data (a multiple of 64)
      96  u8[32] reserved, zero
    tokenizer section (byte-level BPE with tiktoken's semantics: a token's id is its merge rank)
      u32 n_tokens                ordinary tokens, ids 0 .. n_tokens-1 (every single byte is one of them)
      u32 n_special
      u32 len, u8[len]            the pre-tokenizer's split regex (UTF-8); the C runner knows the GPT-4 pattern
      n_tokens  x { u32 len, u8[len] bytes }          the bytes of token i, in id order
      n_special x { u32 id, u32 len, u8[len] name }   special tokens, e.g. "<|bos|>", "<|end|>"
    tensor table
      n_tensors x { u32 len, u8[len] name, u32 dtype, u32 rows, u32 cols, u64 offset, u64 nbytes }
        names are the model's state_dict keys ("layers.0.attn.wq.weight"); a vector has rows = 1.
    data: each tensor at its offset (multiple of 64), zero padding between tensors
      fp32 / fp16 / bf16: rows * cols values, row-major (nn.Linear's (out, in) layout: one output per row)
      int8: rows * cols int8 values q, then (rows * cols / group_size) f32 scales s; value = q * s per group of
            `group_size` consecutive values of a row (symmetric, Q8_0-like: s = max|w| / 127)

Norm weights (vectors) are always fp32; matrices (embedding, attention, MLP, output head) use the file's dtype.
Only the Llama family runs in C (RMSNorm, RoPE in the half-split layout, SwiGLU, optional GQA and QK-norm, no
biases); the exporter refuses other `GPTConfig` choices rather than write a file the runner would run wrongly.
"""

from __future__ import annotations

import argparse
import mmap
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lmforge.tokenizer.patterns import GPT4_PATTERN
from lmforge.utils import LmforgeError, atomic_write, human_bytes

MAGIC = b"LMFG"
VERSION = 1
ALIGN = 64
FIXED_HEADER = 128
DTYPES = {"fp32": 0, "fp16": 1, "bf16": 2, "int8": 3}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
FLAG_TIED, FLAG_QK_NORM = 1, 2
_FIXED = struct.Struct("<4sIQ8I2f4I3Q32x")
assert _FIXED.size == FIXED_HEADER
# The split patterns run.c implements: GPT-4's, in the spellings that regex engines split identically (ours, the
# "classic" one in lmforge.tokenizer.patterns, and tiktoken's current cl100k spelling with possessive quantifiers).
C_PATTERNS = (
    GPT4_PATTERN,
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+""",
)


@dataclass
class TensorEntry:
    name: str
    dtype: int
    rows: int
    cols: int
    offset: int
    nbytes: int


@dataclass
class ParamHeader:
    """Everything in a parameter file except the weights."""

    path: Path
    version: int
    file_size: int
    config: dict[str, Any]
    dtype: str
    group_size: int
    pattern: str
    token_bytes: list[bytes]
    special_tokens: dict[str, int]
    tensors: list[TensorEntry] = field(default_factory=list)
    data_offset: int = 0


def tensor_nbytes(dtype: int, rows: int, cols: int, group_size: int) -> int:
    n = rows * cols
    if dtype == DTYPES["fp32"]:
        return 4 * n
    if dtype in (DTYPES["fp16"], DTYPES["bf16"]):
        return 2 * n
    return n + 4 * (n // group_size)


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


def _decode_tensor(buf: Any, t: TensorEntry, group_size: int) -> np.ndarray:
    n = t.rows * t.cols
    if t.dtype == DTYPES["fp32"]:
        out = np.frombuffer(buf, np.float32, n, t.offset)
    elif t.dtype == DTYPES["fp16"]:
        out = np.frombuffer(buf, np.float16, n, t.offset).astype(np.float32)
    elif t.dtype == DTYPES["bf16"]:
        out = (np.frombuffer(buf, np.uint16, n, t.offset).astype(np.uint32) << 16).view(np.float32)
    else:
        q = np.frombuffer(buf, np.int8, n, t.offset).astype(np.float32)
        s = np.frombuffer(buf, np.float32, n // group_size, t.offset + n)
        out = (q.reshape(-1, group_size) * s[:, None]).reshape(-1)
    return out.reshape(t.rows, t.cols) if t.rows > 1 else out


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


def export_params(model: Any, tokenizer: Any, out: str | Path, dtype: str = "fp32", group_size: int = 64) -> int:
    """Write `model` (a GPT) and its tokenizer as one parameter file; returns the file size in bytes."""
    if dtype not in DTYPES:
        raise LmforgeError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    cfg = model.config
    _check_config(cfg)
    token_bytes, specials, pattern = _tokenizer_tables(tokenizer)
    if pattern not in C_PATTERNS:
        raise LmforgeError(f"tokenizer split pattern {pattern!r} is not one the C runner implements (GPT-4's)")
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
    flags = (FLAG_TIED if cfg.tie_embeddings else 0) | (FLAG_QK_NORM if cfg.qk_norm else 0)
    fixed = _FIXED.pack(MAGIC, VERSION, file_size, cfg.n_embd, cfg.intermediate_size, cfg.n_layer, cfg.n_head,
                        cfg.n_kv_head, cfg.head_dim, cfg.vocab_size, cfg.block_size, cfg.rope_theta, cfg.norm_eps,
                        flags, code, gs, len(entries), FIXED_HEADER, tensors_offset, data_offset)
    with atomic_write(out, "wb") as f:
        f.write(fixed + bytes(tok_sec) + bytes(table))
        f.write(b"\0" * (data_offset - f.tell()))
        for name, dt, off, nbytes in layout:
            data = _encode_tensor(state[name], dt, gs)
            assert len(data) == nbytes and f.tell() == off
            f.write(data)
            f.write(b"\0" * (-nbytes % ALIGN))
        assert f.tell() == file_size
    return file_size


class _Reader:
    """Bounds-checked reads from the header; running off the end means the file is truncated or corrupt."""

    def __init__(self, buf: Any, path: Path, pos: int) -> None:
        self.buf, self.path, self.pos = buf, path, pos

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.buf):
            raise LmforgeError(f"parameter file {self.path} is truncated (header ends at byte {len(self.buf)})")
        b = self.buf[self.pos:self.pos + n]
        self.pos += n
        return bytes(b)

    def u32(self) -> int:
        return struct.unpack("<I", self.take(4))[0]

    def u64(self) -> int:
        return struct.unpack("<Q", self.take(8))[0]


def _short(x: float) -> float:
    """The shortest decimal that rounds to this f32 (1e-05 comes back as 1e-05, not 9.99999974e-06)."""
    return float(str(np.float32(x)))


def _parse_header(buf: Any, path: Path) -> ParamHeader:
    if len(buf) < FIXED_HEADER:
        if bytes(buf[:4]) != MAGIC:
            raise LmforgeError(f"{path} is not an lmforge parameter file (bad magic)")
        raise LmforgeError(f"parameter file {path} is truncated ({len(buf)} bytes)")
    (magic, version, file_size, dim, hidden, n_layer, n_head, n_kv_head, head_dim, vocab, seq_len, theta, eps,
     flags, dtype, gs, n_tensors, tok_off, tens_off, data_off) = _FIXED.unpack_from(buf, 0)
    if magic != MAGIC:
        raise LmforgeError(f"{path} is not an lmforge parameter file (magic {magic!r}, expected {MAGIC!r})")
    if version != VERSION:
        raise LmforgeError(f"parameter file {path} has format version {version}; this lmforge reads version {VERSION}")
    if len(buf) != file_size:
        raise LmforgeError(f"parameter file {path} is truncated or damaged: {len(buf)} bytes, header says {file_size}")
    if dtype not in DTYPE_NAMES or (dtype == DTYPES["int8"] and gs == 0):
        raise LmforgeError(f"parameter file {path} has an unknown dtype code {dtype}")
    r = _Reader(buf, path, tok_off)
    n_tokens, n_special = r.u32(), r.u32()
    pattern = r.take(r.u32()).decode("utf-8")
    token_bytes = [r.take(r.u32()) for _ in range(n_tokens)]
    specials = {}
    for _ in range(n_special):
        i = r.u32()
        specials[r.take(r.u32()).decode("utf-8")] = i
    r.pos = tens_off
    tensors = []
    for _ in range(n_tensors):
        name = r.take(r.u32()).decode("utf-8")
        dt, rows, cols = r.u32(), r.u32(), r.u32()
        t = TensorEntry(name, dt, rows, cols, r.u64(), r.u64())
        if t.offset % ALIGN or t.offset + t.nbytes > file_size or t.nbytes != tensor_nbytes(dt, rows, cols, gs or 1):
            raise LmforgeError(f"parameter file {path}: tensor {name} has a bad offset or size")
        tensors.append(t)
    config = dict(vocab_size=vocab, n_layer=n_layer, n_head=n_head, n_kv_head=n_kv_head, n_embd=dim,
                  block_size=seq_len, intermediate_size=hidden, qk_norm=bool(flags & FLAG_QK_NORM),
                  tie_embeddings=bool(flags & FLAG_TIED), rope_theta=_short(theta), norm_eps=_short(eps))
    return ParamHeader(path, version, file_size, config, DTYPE_NAMES[dtype], gs, pattern, token_bytes, specials,
                       tensors, data_off)


def _open_map(path: str | Path) -> tuple[Path, mmap.mmap]:
    path = Path(path)
    if not path.is_file():
        raise LmforgeError(f"parameter file not found: {path}")
    with open(path, "rb") as f:
        if path.stat().st_size == 0:
            raise LmforgeError(f"parameter file {path} is empty")
        return path, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)


def read_header(path: str | Path) -> ParamHeader:
    """Parse and validate the header (magic, version, size, tokenizer, tensor table) without touching weights."""
    path, buf = _open_map(path)
    try:
        return _parse_header(buf, path)
    finally:
        buf.close()


def load_params(path: str | Path) -> Any:
    """The GPT stored in a parameter file (fp32 in memory; fp16/bf16/int8 dequantized), from a memory map.

    The file's header is validated first (magic, version, exact size), so a truncated file fails with its name.
    """
    import torch

    from lmforge.model import GPT, GPTConfig

    path, buf = _open_map(path)
    try:
        header = _parse_header(buf, path)
        config = GPTConfig(**header.config)
        with torch.device("meta"):
            model = GPT(config)
        state = {t.name: torch.from_numpy(np.array(_decode_tensor(buf, t, header.group_size))) for t in header.tensors}
    finally:
        buf.close()
    if config.tie_embeddings:
        state["lm_head.weight"] = state["tok_emb.weight"]
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as e:
        raise LmforgeError(f"parameter file {path} does not hold the tensors its config needs: {e}") from e
    if config.tie_embeddings:
        model.lm_head.weight = model.tok_emb.weight
    from lmforge.model import rope_tables

    model.rope_cos, model.rope_sin = rope_tables(config.head_dim, config.block_size, config.rope_theta)
    return model.eval()


def run_export(checkpoint: str | Path, out: str | Path, dtype: str = "fp32", group_size: int = 64) -> int:
    """Export a checkpoint (or a run folder's newest) to a parameter file; returns its size in bytes."""
    from lmforge.checkpoint import checkpoint_tokenizer_dir, load_model
    from lmforge.tokenizer import Tokenizer

    model, ckpt = load_model(checkpoint)
    tokenizer = Tokenizer.load(checkpoint_tokenizer_dir(ckpt))
    return export_params(model, tokenizer, out, dtype, group_size)


def _cmd(args: argparse.Namespace) -> int:
    size = run_export(args.checkpoint, args.out, args.dtype, args.group_size)
    print(f"wrote {args.out}: {human_bytes(size)} ({size} bytes, {args.dtype})")
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
    p.set_defaults(func=_cmd)

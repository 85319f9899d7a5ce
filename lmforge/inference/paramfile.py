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
                                  bit 1: QK-norm (per-head RMSNorm of q and k before RoPE);
                                  bit 2: fine-tuned for chat (SFT); the runner warns when chatting without it
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

Readers trust nothing in the file: every header field has bounds (HEADER_BOUNDS) and rules relating it to the others,
the tokenizer must hold every single byte once and special ids in [n_tokens, vocab_size) with printable ASCII names,
and every tensor table entry must name a distinct tensor of the model, of its shape and dtype, inside the data
section (int8 scales finite and >= 0). `runner/run.c` and this module make the same checks in the same order with
the same one-line messages, so `lmforge inspect` accepts exactly the files the runner runs.
"""

from __future__ import annotations

import math
import mmap
import os
import stat
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lmforge.tokenizer.patterns import GPT4_PATTERN
from lmforge.utils import LmforgeError

MAGIC = b"LMFG"
VERSION = 1
ALIGN = 64
FIXED_HEADER = 128
DTYPES = {"fp32": 0, "fp16": 1, "bf16": 2, "int8": 3}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
FLAG_TIED, FLAG_QK_NORM, FLAG_CHAT = 1, 2, 4
FIXED_STRUCT = struct.Struct("<4sIQ8I2f4I3Q32x")
assert FIXED_STRUCT.size == FIXED_HEADER
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
    chat: bool = False  # fine-tuned for chat (flag bit 2)


def tensor_nbytes(dtype: int, rows: int, cols: int, group_size: int) -> int:
    n = rows * cols
    if dtype == DTYPES["fp32"]:
        return 4 * n
    if dtype in (DTYPES["fp16"], DTYPES["bf16"]):
        return 2 * n
    return n + 4 * (n // group_size)


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

# The header's integer fields in file order and the range of each: a count outside it is refused before anything is
# sized by it. runner/run.c's FIELDS is the same table (tests/test_hostile_resources.py compares the two), and every
# check below is one of run.c's, in its order and words, so `lmforge inspect` accepts exactly the files it runs.
HEADER_BOUNDS = {
    "dim": (2, 65536), "hidden_dim": (1, 262144), "n_layer": (1, 1024), "n_head": (1, 1024), "n_kv_head": (1, 1024),
    "head_dim": (2, 1024), "vocab_size": (256, 16777216), "seq_len": (1, 65536), "flags": (0, 7), "dtype": (0, 3),
    "group_size": (0, 65536), "n_tensors": (3, 65536),
}
MAX_SPECIAL = 1024
# Per-layer tensors: name, shape in terms of the header (D dim, H hidden_dim, K n_kv_head * head_dim, d head_dim),
# and whether it exists only with QK-norm.
_LAYER_TENSORS = [("attn_norm", "1", "D", False), ("attn.wq", "D", "D", False), ("attn.wk", "K", "D", False),
                  ("attn.wv", "K", "D", False), ("attn.wo", "D", "D", False), ("attn.q_norm", "1", "d", True),
                  ("attn.k_norm", "1", "d", True), ("mlp_norm", "1", "D", False), ("mlp.w_gate", "H", "D", False),
                  ("mlp.w_up", "H", "D", False), ("mlp.w_down", "D", "H", False)]


class _Refusal(Exception):
    """A check of the file failed; `_open_checked` adds the file's name (as run.c's `die` does)."""


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise _Refusal(message)


class _Reader:
    """Bounds-checked reads of one section [pos, end) of the file, as run.c's Cursor."""

    def __init__(self, buf: Any, pos: int, end: int, what: str) -> None:
        self.buf, self.pos, self.end, self.what = buf, pos, end, what

    def take(self, n: int) -> bytes:
        _check(n <= self.end - self.pos, f"the {self.what} is truncated or corrupt (a length runs past its end)")
        self.pos += n
        return bytes(self.buf[self.pos - n:self.pos])

    def u32(self) -> int:
        return struct.unpack("<I", self.take(4))[0]

    def u64(self) -> int:
        return struct.unpack("<Q", self.take(8))[0]

    def string(self) -> bytes:
        return self.take(self.u32())


def _check_fields(f: dict[str, Any], size: int) -> None:
    """The header's fields: each within its bounds, then what they must say of each other."""
    for name, (lo, hi) in HEADER_BOUNDS.items():
        _check(lo <= f[name] <= hi, f"header field {name} = {f[name]} is outside [{lo}, {hi}]")
    qk = bool(f["flags"] & FLAG_QK_NORM)
    n_expected = 2 + (not f["flags"] & FLAG_TIED) + f["n_layer"] * (9 + 2 * qk)
    gs, theta, eps = f["group_size"], f["rope_theta"], f["norm_eps"]
    int8_ok = gs > 0 and gs % 4 == 0 and f["dim"] % gs == 0 and f["hidden_dim"] % gs == 0
    rules = [
        (f["n_head"] % f["n_kv_head"] == 0, "n_kv_head", "must divide n_head"),
        (f["head_dim"] % 2 == 0 and f["head_dim"] * f["n_head"] == f["dim"], "head_dim",
         "must be even and equal dim / n_head"),
        (math.isfinite(theta) and theta > 0, "rope_theta", "must be a finite number above 0"),
        (math.isfinite(eps) and 0 <= eps < 1, "norm_eps", "must be a finite number in [0, 1)"),
        (int8_ok if f["dtype"] == DTYPES["int8"] else gs == 0, "group_size",
         "must be 0, or for int8 a multiple of 4 that divides dim and hidden_dim"),
        (f["n_tensors"] == n_expected, "n_tensors", "differs from the model's tensor count"),
        (f["tokenizer_offset"] == FIXED_HEADER, "tokenizer_offset", "must be 128"),
        (f["tokenizer_offset"] <= f["tensors_offset"] <= size, "tensors_offset",
         "must lie in [tokenizer_offset, file_size]"),
        (f["data_offset"] % ALIGN == 0 and f["tensors_offset"] <= f["data_offset"] <= size, "data_offset",
         "must be a multiple of 64 in [tensors_offset, file_size]"),
    ]
    for ok, field_name, rule in rules:
        _check(ok, f"header field {field_name} {rule}")


def printable_name(raw: bytes) -> bool:
    """A name safe to compare and to print in a one-line message: 1 to 64 bytes of printable ASCII, no space."""
    return 0 < len(raw) <= 64 and all(0x21 <= b <= 0x7E for b in raw)


def _read_tokenizer(r: _Reader, vocab: int) -> tuple[str, list[bytes], dict[str, int]]:
    n_tokens, n_special = r.u32(), r.u32()
    _check(256 <= n_tokens <= vocab, f"tokenizer n_tokens {n_tokens} is outside [256, vocab_size]")
    _check(n_special <= MAX_SPECIAL and n_special <= vocab - n_tokens,
           f"tokenizer n_special {n_special} is outside [0, min(1024, vocab_size - n_tokens)]")
    pattern = r.string()
    _check(pattern in [p.encode("utf-8") for p in C_PATTERNS],
           "the tokenizer's split pattern is not GPT-4's, the only one this runner implements")
    _check(n_tokens * 5 <= r.end - r.pos, f"tokenizer n_tokens {n_tokens} cannot fit in its section")
    ids: dict[bytes, int] = {}
    for i in range(n_tokens):
        b = r.string()
        _check(len(b) > 0, f"tokenizer token {i} is empty")
        _check(b not in ids, f"tokenizer token {i} repeats token {ids.get(b)}")
        ids[b] = i
    for byte in range(256):  # BPE starts from single bytes: a missing one would encode to no token at all
        _check(bytes([byte]) in ids, f"tokenizer has no token for the byte 0x{byte:02x}")
    specials: dict[str, int] = {}
    for i in range(n_special):
        sid, raw = r.u32(), r.string()
        _check(n_tokens <= sid < vocab, f"tokenizer special token {i} has id {sid} outside [n_tokens, vocab_size)")
        _check(printable_name(raw), f"tokenizer special token {i} has a name that is not 1 to 64 printable ASCII bytes")
        name = raw.decode("ascii")
        earlier = [j for j, (n, k) in enumerate(specials.items()) if k == sid or n == name]
        _check(not earlier, f"tokenizer special token {i} repeats the id or name of special token "
               f"{earlier[0] if earlier else -1}")
        specials[name] = sid
    return pattern.decode("utf-8"), list(ids), specials


def expected_tensors(f: dict[str, Any]) -> dict[bytes, tuple[int, int]]:
    """Name -> (rows, cols) of every tensor the header's model has (a vector has rows = 1)."""
    size = {"1": 1, "D": f["dim"], "H": f["hidden_dim"], "K": f["n_kv_head"] * f["head_dim"], "d": f["head_dim"]}
    out = {b"tok_emb.weight": (f["vocab_size"], f["dim"]), b"norm.weight": (1, f["dim"])}
    if not f["flags"] & FLAG_TIED:
        out[b"lm_head.weight"] = (f["vocab_size"], f["dim"])
    for layer in range(f["n_layer"]):
        for name, rows, cols, qk_only in _LAYER_TENSORS:
            if not qk_only or f["flags"] & FLAG_QK_NORM:
                out[f"layers.{layer}.{name}.weight".encode()] = (size[rows], size[cols])
    return out


def _scales_ok(buf: Any, offset: int, count: int) -> bool:
    """Every f32 scale finite and >= 0 (a function of its own: the view of the map must be gone before a refusal
    closes the map)."""
    scales = np.frombuffer(buf, np.float32, count, offset)
    with np.errstate(invalid="ignore"):
        return bool(np.all(np.isfinite(scales) & (scales >= 0)))


def _read_tensors(r: _Reader, buf: Any, f: dict[str, Any], size: int) -> list[TensorEntry]:
    """Every entry names a distinct tensor of this model, of its shape and dtype, wholly inside the data section; as
    n_tensors is exactly the model's count, no tensor is then missing."""
    expected, seen, gs = expected_tensors(f), set(), f["group_size"]
    tensors = []
    for i in range(f["n_tensors"]):
        raw = r.string()
        dt, rows, cols, offset, nbytes = r.u32(), r.u32(), r.u32(), r.u64(), r.u64()
        _check(raw in expected, f"tensor table entry {i} names no tensor of this model")
        name = raw.decode("ascii")
        _check(name not in seen, f"tensor {name} appears twice in the table")
        seen.add(name)
        want_rows, want_cols = expected[raw]
        _check((rows, cols) == (want_rows, want_cols), f"tensor {name} is {rows}x{cols}, expected {want_rows}x{want_cols}")
        want = DTYPES["fp32"] if want_rows == 1 else f["dtype"]
        _check(dt == want, f"tensor {name} has dtype {dt}, expected {want}")
        need = tensor_nbytes(dt, rows, cols, gs)
        _check(nbytes == need, f"tensor {name} holds {nbytes} bytes, expected {need}")
        _check(offset % ALIGN == 0 and f["data_offset"] <= offset <= size and nbytes <= size - offset,
               f"tensor {name} lies outside the file's data section")
        if dt == DTYPES["int8"]:  # q * scale: a NaN or infinite scale poisons a group
            _check(_scales_ok(buf, offset + rows * cols, rows * cols // gs),
                   f"tensor {name} has a NaN, infinite or negative int8 scale")
        tensors.append(TensorEntry(name, dt, rows, cols, offset, nbytes))
    return tensors


def _short(x: float) -> float:
    """The shortest decimal that rounds to this f32 (1e-05 comes back as 1e-05, not 9.99999974e-06)."""
    return float(str(np.float32(x)))


_FIELD_NAMES = ["magic", "version", "file_size", "dim", "hidden_dim", "n_layer", "n_head", "n_kv_head", "head_dim",
                "vocab_size", "seq_len", "rope_theta", "norm_eps", "flags", "dtype", "group_size", "n_tensors",
                "tokenizer_offset", "tensors_offset", "data_offset"]


def _parse_header(buf: Any) -> ParamHeader:
    """Validate the whole header of a mapped file (its first 128 bytes hold the magic, checked on opening)."""
    f = dict(zip(_FIELD_NAMES, FIXED_STRUCT.unpack_from(buf, 0)))
    _check(f["version"] == VERSION, f"format version {f['version']}; this runner reads version {VERSION}")
    _check(f["file_size"] == len(buf), f"truncated or damaged: {len(buf)} bytes, the header says {f['file_size']}")
    _check_fields(f, len(buf))
    tok = _Reader(buf, f["tokenizer_offset"], f["tensors_offset"], "tokenizer section")
    pattern, token_bytes, specials = _read_tokenizer(tok, f["vocab_size"])
    table = _Reader(buf, f["tensors_offset"], f["data_offset"], "tensor table")
    tensors = _read_tensors(table, buf, f, len(buf))
    flags = f["flags"]
    config = dict(vocab_size=f["vocab_size"], n_layer=f["n_layer"], n_head=f["n_head"], n_kv_head=f["n_kv_head"],
                  n_embd=f["dim"], block_size=f["seq_len"], intermediate_size=f["hidden_dim"],
                  qk_norm=bool(flags & FLAG_QK_NORM), tie_embeddings=bool(flags & FLAG_TIED),
                  rope_theta=_short(f["rope_theta"]), norm_eps=_short(f["norm_eps"]))
    return ParamHeader(Path(), f["version"], f["file_size"], config, DTYPE_NAMES[f["dtype"]], f["group_size"], pattern,
                       token_bytes, specials, tensors, f["data_offset"], bool(flags & FLAG_CHAT))


@contextmanager
def _open_checked(path: str | Path) -> Iterator[tuple[Path, mmap.mmap, ParamHeader]]:
    """Map a parameter file and validate its header; any refusal is one LmforgeError naming the file, as run.c's."""
    path = Path(path)
    try:
        try:  # O_NONBLOCK: opening a FIFO must not wait for a writer
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        except OSError as e:
            raise _Refusal(f"cannot open: {e.strerror}") from None
        try:
            st = os.fstat(fd)
            _check(stat.S_ISREG(st.st_mode), "not a regular file")
            _check(os.pread(fd, 4, 0) == MAGIC, "not an lmforge parameter file (bad magic)")
            _check(st.st_size >= FIXED_HEADER, f"truncated: {st.st_size} bytes, shorter than the 128-byte header")
            buf = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
        finally:
            os.close(fd)
        try:
            header = _parse_header(buf)
        except BaseException:
            buf.close()
            raise
    except _Refusal as e:
        raise LmforgeError(f"{path}: {e}") from None
    header.path = path
    try:
        yield path, buf, header
    finally:
        buf.close()


def read_header(path: str | Path) -> ParamHeader:
    """Parse and validate the header (magic, version, size, tokenizer, tensor table) without touching weights."""
    with _open_checked(path) as (_, _, header):
        return header


def load_params(path: str | Path) -> Any:
    """The GPT stored in a parameter file (fp32 in memory; fp16/bf16/int8 dequantized), from a memory map.

    The file's header is validated first (magic, version, exact size), so a truncated file fails with its name.
    """
    return _load_model(path)[0]


def _load_model(path: str | Path) -> tuple[Any, ParamHeader]:
    """`load_params`' model and the header it validated (`load_param_file` needs its token table too)."""
    import torch

    from lmforge.model import GPT, GPTConfig

    with _open_checked(path) as (path, buf, header):
        config = GPTConfig(**header.config)
        with torch.device("meta"):
            model = GPT(config)
        state = {t.name: torch.from_numpy(np.array(_decode_tensor(buf, t, header.group_size))) for t in header.tensors}
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
    return model.eval(), header


def tokenizer_from_table(token_bytes: list[bytes], special_tokens: dict[str, int], pattern: str,
                         source: str) -> Any:
    """The `Tokenizer` whose ids spell `token_bytes`, equal to the one exported (same ids, same encoding): ids are
    merge ranks (lmforge encodes by tiktoken's rule, merging the adjacent pair whose bytes have the lowest id), so
    token i >= 256 is rebuilt as a merge of two earlier tokens whose bytes join to its own (any such split gives the
    same vocabulary, and encoding depends on the vocabulary alone). Refused with `LmforgeError` naming `source` when
    the table is not one lmforge's tokenizer can be."""
    from lmforge.tokenizer.tokenizer import SPECIAL_TOKENS, Tokenizer

    ranks: dict[bytes, int] = {}
    merges: list[tuple[int, int, int]] = []
    for token_id, data in enumerate(token_bytes):
        if token_id < 256:
            if data != bytes([token_id]):
                raise LmforgeError(f"{source}: token {token_id} is not the byte {token_id} (not an lmforge tokenizer)")
        else:
            split = next((k for k in range(1, len(data)) if data[:k] in ranks and data[k:] in ranks), None)
            if split is None or data in ranks:
                raise LmforgeError(f"{source}: token {token_id} is not two earlier tokens joined (not a BPE table)")
            merges.append((ranks[data[:split]], ranks[data[split:]], token_id))
        ranks[data] = token_id
    tokenizer = Tokenizer(merges, pattern)
    if tokenizer.special_tokens != special_tokens:
        raise LmforgeError(f"{source}: special tokens {sorted(special_tokens)} are not lmforge's "
                           f"{list(SPECIAL_TOKENS)} at ids {len(token_bytes)}..")
    return tokenizer


def tokenizer_from_header(header: ParamHeader) -> Any:
    """The `Tokenizer` stored in a parameter file's token table."""
    return tokenizer_from_table(header.token_bytes, header.special_tokens, header.pattern,
                                f"parameter file {header.path}")


def load_param_file(path: str | Path) -> tuple[Any, Any]:
    """(GPT, Tokenizer) of a parameter file: what evaluation needs to score it as it scores a checkpoint."""
    model, header = _load_model(path)
    return model, tokenizer_from_header(header)

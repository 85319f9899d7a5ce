"""Hostile inputs, class "resources" (crashes and runaway resources): every user-set size has a bound and nothing
grows with the input where it need not (issue 13, class 2)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from hostile import run_cli
import os
import re
import struct
import subprocess
from types import SimpleNamespace
from typing import Callable
from hostile import assert_refused, run_cli
from lmforge.export.params import HEADER_BOUNDS, export_params
from lmforge.inference.paramfile import load_params
from lmforge.utils import LmforgeError
from params_helpers import ROOT, compile_runner, tiny_model, tokenizer


@pytest.mark.timeout(60)
def test_resources_tokenizer_show_long_line(tmp_path: Path):
    """`tokenizer show` on one 50 MB line did not finish (rich laid out every token); it shows the start and says
    what it cut, in about a second."""
    from lmforge.tokenizer import Tokenizer
    from lmforge.tokenizer.show import MAX_SHOWN_CHARS

    Tokenizer.train(["hello world 日本 😀 " * 50], 300).save(tmp_path / "tok")
    line = tmp_path / "line.txt"
    line.write_text("hello world 日本 😀 " * (50_000_000 // 22))
    t0 = time.perf_counter()
    outcome = run_cli(["tokenizer", "show", "--tokenizer", tmp_path / "tok", "--file", line])
    assert outcome.code == 0, outcome.stderr
    assert time.perf_counter() - t0 < 20
    assert f"showing the first {MAX_SHOWN_CHARS:,} characters only; the rest is cut" in " ".join(outcome.stdout.split())
    short = run_cli(["tokenizer", "show", "--tokenizer", tmp_path / "tok", "hello world"])
    assert short.code == 0 and "cut" not in short.stdout



# Byte offsets of the fixed header's fields (lmforge/inference/paramfile.py documents the layout).
FIELD = {"version": 4, "file_size": 8, "dim": 16, "hidden_dim": 20, "n_layer": 24, "n_head": 28, "n_kv_head": 32,
         "head_dim": 36, "vocab_size": 40, "seq_len": 44, "rope_theta": 48, "norm_eps": 52, "flags": 56, "dtype": 60,
         "group_size": 64, "n_tensors": 68, "tokenizer_offset": 72, "tensors_offset": 80, "data_offset": 88}


class Layout:
    """Where each record of a parameter file lies, found by walking it as a reader does."""

    def __init__(self, data: bytes) -> None:
        u32 = lambda pos: struct.unpack_from("<I", data, pos)[0]  # noqa: E731
        n_tokens, n_special = struct.unpack_from("<II", data, 128)
        pos = 136
        self.pattern = pos
        pos += 4 + u32(pos)
        self.tokens = []
        for _ in range(n_tokens):
            self.tokens.append(pos)
            pos += 4 + u32(pos)
        self.specials = []
        for _ in range(n_special):
            self.specials.append(pos)
            pos += 8 + u32(pos + 4)
        pos = struct.unpack_from("<Q", data, FIELD["tensors_offset"])[0]
        self.entries: dict[str, int] = {}  # tensor name -> position of the u32 after its name (its dtype)
        for _ in range(u32(FIELD["n_tensors"])):
            n = u32(pos)
            self.entries[data[pos + 4:pos + 4 + n].decode()] = pos + 4 + n
            pos += 4 + n + 28
        self.data = data

    def token_index(self, b: bytes) -> int:
        """Id of the token whose bytes are `b`."""
        record = struct.pack("<I", len(b)) + b
        return next(i for i, p in enumerate(self.tokens) if self.data[p:p + len(record)] == record)

    def tensor_offset(self, name: str) -> int:
        return struct.unpack_from("<Q", self.data, self.entries[name] + 12)[0]


def put(data: bytes, pos: int, fmt: str, value) -> bytes:
    b = bytearray(data)
    struct.pack_into(fmt, b, pos, value)
    return bytes(b)


def field(name: str, value, fmt: str = "<I") -> Callable[[bytes, Layout], bytes]:
    return lambda d, lay: put(d, FIELD[name], fmt, value)


def entry(name: str, at: int, fmt: str, value) -> Callable[[bytes, Layout], bytes]:
    """Edit the tensor table entry of `name`: at 0 its dtype, 4 rows, 8 cols, 12 offset, 20 nbytes."""
    return lambda d, lay: put(d, lay.entries[name] + at, fmt, value)


def rename(old: str, new: str) -> Callable[[bytes, Layout], bytes]:
    assert len(old.encode()) == len(new.encode("utf-8", "surrogateescape"))
    return lambda d, lay: d.replace(struct.pack("<I", len(old)) + old.encode(),
                                    struct.pack("<I", len(old)) + new.encode("utf-8", "surrogateescape"), 1)


def duplicate_byte_token(d: bytes, lay: Layout) -> bytes:
    """The issue's segfault: the token "A" edited into "B" (so "B" is there twice and "A" is missing)."""
    return put(d, lay.tokens[lay.token_index(b"A")] + 4, "<B", ord("B"))


WQ, WK = "layers.0.attn.wq.weight", "layers.0.attn.wk.weight"
# name: (file, edit, what the one-line refusal must name)
CORRUPTIONS: dict[str, tuple[str, Callable[[bytes, Layout], bytes], str]] = {
    "empty": ("int8", lambda d, lay: b"", "bad magic"),
    "three_bytes": ("int8", lambda d, lay: d[:3], "bad magic"),
    "bad_magic": ("int8", lambda d, lay: b"GGUF" + d[4:], "bad magic"),
    "shorter_than_header": ("int8", lambda d, lay: d[:60], "truncated"),
    "truncated": ("int8", lambda d, lay: d[:-64], "truncated"),
    "padded": ("int8", lambda d, lay: d + bytes(64), "the header says"),
    "version": ("int8", field("version", 9), "version 9"),
    "dim_zero": ("int8", field("dim", 0), "dim"),
    "context_4M": ("fp32", field("seq_len", 1 << 22), "seq_len"),
    "n_layer_huge": ("int8", field("n_layer", 100_000), "n_layer"),
    "vocab_2G": ("fp32", field("vocab_size", 1 << 31), "vocab_size"),
    "n_kv_not_dividing": ("int8", field("n_kv_head", 3), "n_kv_head"),
    "head_dim_odd": ("int8", field("head_dim", 15), "head_dim"),
    "rope_theta_nan": ("fp32", field("rope_theta", float("nan"), "<f"), "rope_theta"),
    "norm_eps_inf": ("fp32", field("norm_eps", float("inf"), "<f"), "norm_eps"),
    "flags_unknown": ("int8", field("flags", 8), "flags"),
    "dtype_unknown": ("int8", field("dtype", 7), "dtype"),
    "int8_group_size_zero": ("int8", field("group_size", 0), "group_size"),
    "fp32_group_size_set": ("fp32", field("group_size", 64), "group_size"),
    "int8_group_size_not_dividing": ("int8", field("group_size", 60), "group_size"),
    "n_tensors_plus_one": ("int8", lambda d, lay: put(d, 68, "<I", len(lay.entries) + 1), "n_tensors"),
    "tokenizer_offset": ("int8", field("tokenizer_offset", 64, "<Q"), "tokenizer_offset"),
    "tensors_offset_past_end": ("int8", field("tensors_offset", 1 << 40, "<Q"), "tensors_offset"),
    "data_offset_unaligned": ("int8", lambda d, lay: put(d, 88, "<Q", struct.unpack_from("<Q", d, 88)[0] + 1),
                              "data_offset"),
    "n_tokens_huge": ("int8", lambda d, lay: put(d, 128, "<I", 1 << 30), "n_tokens"),
    "tokenizer_section_cut_short": ("int8", field("tensors_offset", 1000, "<Q"), "cannot fit in its section"),
    "n_special_huge": ("int8", lambda d, lay: put(d, 132, "<I", 5000), "n_special"),
    "split_pattern_edited": ("int8", lambda d, lay: put(d, lay.pattern + 5, "<B", ord("X")), "split pattern"),
    "token_length_past_end": ("int8", lambda d, lay: put(d, lay.tokens[300], "<I", 1 << 31), "tokenizer section"),
    "token_empty": ("int8", lambda d, lay: put(d, lay.tokens[-1], "<I", 0), "tokenizer"),
    "token_bytes_edited_int8": ("int8", duplicate_byte_token, "tokenizer token"),
    "token_bytes_edited_fp32": ("fp32", duplicate_byte_token, "tokenizer token"),
    "special_id_past_vocab": ("int8", lambda d, lay: put(d, lay.specials[0], "<I", 1 << 20), "special token 0"),
    "special_id_below_n_tokens": ("fp32", lambda d, lay: put(d, lay.specials[1], "<I", 65), "special token 1"),
    "special_id_repeated": ("int8", lambda d, lay: put(d, lay.specials[2], "<I", struct.unpack_from(
        "<I", d, lay.specials[1])[0]), "special token 2"),
    "special_name_invalid_utf8": ("int8", lambda d, lay: put(d, lay.specials[0] + 9, "<B", 0xFF), "special token 0"),
    "special_name_newline": ("fp32", lambda d, lay: put(d, lay.specials[3] + 9, "<B", 0x0A), "special token 3"),
    "tensor_name_invalid_utf8": ("int8", rename(WQ, "layers.0.attn.w\udcff.weight"), "tensor table entry"),
    "tensor_name_unknown": ("int8", rename(WQ, "layers.7.attn.wq.weight"), "tensor table entry"),
    "tensor_name_twice": ("int8", rename(WK, WQ), "appears twice"),
    "tensor_rows": ("int8", entry(WQ, 4, "<I", 65), WQ),
    "tensor_dtype": ("int8", entry(WQ, 0, "<I", 0), WQ),
    "tensor_nbytes": ("fp32", entry(WQ, 20, "<Q", 1 << 40), WQ),
    "tensor_offset_past_end": ("fp32", entry(WQ, 12, "<Q", 1 << 40), WQ),
    "tensor_offset_unaligned": ("fp32", lambda d, lay: put(d, lay.entries[WQ] + 12, "<Q", lay.tensor_offset(WQ) + 4), WQ),
    "tensor_offset_in_header": ("fp32", entry(WQ, 12, "<Q", 0), WQ),
    "tensor_table_name_past_end": ("int8", lambda d, lay: put(d, lay.entries[WQ] - len(WQ) - 4, "<I", 1 << 30),
                                   "tensor table"),
    "int8_scale_nan": ("int8", lambda d, lay: put(d, lay.tensor_offset(WQ) + 64 * 64 + 8, "<f", float("nan")), WQ),
    "int8_scale_negative": ("int8", lambda d, lay: put(d, lay.tensor_offset(WK) + 32 * 64, "<f", -1.0), WK),
}


@pytest.fixture(scope="module")
def runner_bin(tmp_path_factory) -> Path:
    return compile_runner(tmp_path_factory.mktemp("runner") / "run")


@pytest.fixture(scope="module")
def runner_fast_math_bin(tmp_path_factory) -> Path:
    """`make runner`'s flags: under -ffast-math the compiler may fold isfinite() to true."""
    return compile_runner(tmp_path_factory.mktemp("runner_fast_math") / "run", "-march=native", "-ffast-math")


@pytest.fixture(scope="module")
def runner_files(tmp_path_factory) -> dict[str, Path]:
    tok = tokenizer()
    model = tiny_model(tok.vocab_size)
    folder = tmp_path_factory.mktemp("params")
    files = {dtype: folder / f"{dtype}.bin" for dtype in ("fp32", "int8")}
    for dtype, path in files.items():
        export_params(model, tok, path, dtype)
    # a tokenizer whose single byte 0x00 became a longer token: every id stays contiguous and distinct
    ranks = dict(tok.mergeable_ranks)
    ranks[b"\x01\x01\x01\x01\x01"] = ranks.pop(b"\x00")
    files["no_zero_byte"] = folder / "no_zero_byte.bin"
    export_params(model, SimpleNamespace(mergeable_ranks=ranks, special_tokens=tok.special_tokens, pattern=tok.pattern),
                  files["no_zero_byte"], "fp32")
    return files


def refusal_of_runner(run_bin: Path, path: Path, *args: str) -> str:
    """The runner's one-line refusal, after checking exit code 2, no output and no crash (a signal is a negative
    return code) within the timeout (a FIFO must not hang it). The prompt holds "A": an unchecked runner given the
    file whose token "A" was edited away encodes it to id -1 (a segfault with int8 weights, row -1 with fp32)."""
    r = subprocess.run([str(run_bin), str(path), "-i", "A big A", "-n", "4", *args], capture_output=True, timeout=30)
    lines = r.stderr.decode("utf-8", "replace").splitlines()
    assert r.returncode == 2 and r.stdout == b"" and len(lines) == 1, (r.returncode, lines)
    return lines[0]


def assert_both_refuse(run_bin: Path, path: Path, culprit: str) -> None:
    c_line = refusal_of_runner(run_bin, path)
    outcome = run_cli(["inspect", path])
    assert_refused(outcome, culprit)
    py_line = outcome.stderr.strip()
    assert c_line.startswith(f"run: {path}: ") and py_line.startswith(f"lmforge inspect: error: {path}: ")
    assert c_line.removeprefix(f"run: {path}: ") == py_line.removeprefix(f"lmforge inspect: error: {path}: ")
    assert culprit in c_line


def test_runner_and_inspect_accept_the_exported_files(runner_bin, runner_files):
    for dtype in ("fp32", "int8"):
        r = subprocess.run([str(runner_bin), str(runner_files[dtype]), "-i", "hi", "-n", "4", "-t", "0"], capture_output=True,
                           timeout=30)
        assert r.returncode == 0, r.stderr
        assert run_cli(["inspect", runner_files[dtype]]).code == 0


@pytest.mark.parametrize("case", sorted(CORRUPTIONS))
def test_runner_and_inspect_refuse_each_corruption(runner_bin, runner_files, tmp_path, case):
    base, edit, culprit = CORRUPTIONS[case]
    data = runner_files[base].read_bytes()
    bad = tmp_path / f"{case}.bin"
    bad.write_bytes(edit(data, Layout(data)))
    assert bad.read_bytes() != data
    assert_both_refuse(runner_bin, bad, culprit)
    with pytest.raises(LmforgeError, match=re.escape(culprit)):  # loading for Python use applies the same checks
        load_params(bad)


def test_runner_and_inspect_refuse_a_tokenizer_without_every_byte(runner_bin, runner_files):
    assert_both_refuse(runner_bin, runner_files["no_zero_byte"], "no token for the byte 0x00")


def test_runner_and_inspect_refuse_what_is_not_a_regular_file(runner_bin, tmp_path):
    fifo = tmp_path / "fifo.bin"
    os.mkfifo(fifo)  # no writer ever opens it: a reader that waits for one hangs
    for path in (fifo, tmp_path, Path("/dev/zero")):
        assert_both_refuse(runner_bin, path, "not a regular file")
    assert_both_refuse(runner_bin, tmp_path / "missing.bin", "cannot open")


def test_runner_field_bounds_are_inspects():
    text = (ROOT / "runner" / "run.c").read_text(encoding="utf-8")
    table = re.search(r"FIELDS\[12\] = \{(.*?)\};", text, re.S)
    assert table is not None
    c_bounds = {name: (int(lo), int(hi)) for name, lo, hi in re.findall(r'\{"(\w+)", (\d+), (\d+)\}', table[1])}
    assert c_bounds == HEADER_BOUNDS
    assert list(c_bounds) == list(HEADER_BOUNDS)  # file order, which is the order of the checks


@pytest.mark.parametrize("case", ["rope_theta_nan", "norm_eps_inf", "int8_scale_nan", "int8_scale_negative"])
def test_runner_built_with_fast_math_still_refuses_nan_and_infinity(runner_fast_math_bin, runner_files, tmp_path, case):
    base, edit, culprit = CORRUPTIONS[case]
    data = runner_files[base].read_bytes()
    bad = tmp_path / f"{case}.bin"
    bad.write_bytes(edit(data, Layout(data)))
    assert culprit in refusal_of_runner(runner_fast_math_bin, bad)

"""Hostile inputs, class "flags" (tracebacks and absurd values): the C runner's flags and the export verbs' flags.

Each refusal: exit code 2, one line on stderr naming the flag, no traceback, and nothing written."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from hostile import assert_refused, run_cli, tree_digest
from lmforge.checkpoint import save_model
from lmforge.export.params import export_params
from params_helpers import compile_runner, tiny_model, tokenizer

# (arguments after the parameter file, the flag the one-line refusal must name)
RUNNER_FLAGS = [
    (["-t", "nan"], "-t"), (["-t", "inf"], "-t"), (["-t", "-1"], "-t"), (["-t", "1e9"], "-t"), (["-t", "warm"], "-t"),
    (["-p", "2"], "-p"), (["-p", "nan"], "-p"), (["-p", "0"], "-p"), (["-p", "-0.5"], "-p"),
    (["-n", "-5"], "-n"), (["-n", "0"], "-n"), (["-n", "99999999999"], "-n"), (["-n", "2.5"], "-n"), (["-n", ""], "-n"),
    (["-s", "-1"], "-s"), (["-s", "18446744073709551616"], "-s"), (["-s", "12x"], "-s"),
    (["-m", "nope"], "-m"), (["-k", "5"], "-k"), (["-k", "-3"], "-k"), (["-x"], "-x"), (["--top-p", "0.5"], "--top-p"),
    (["-n"], "-n"), (["-t"], "-t"), (["-i", "hi", "-d", "/nonexistent/folder/logits.bin"], "-d"),
    (["-i", "hi", "stray"], "stray"),
]


@pytest.fixture(scope="module", params=[(), ("-march=native", "-ffast-math")], ids=["cc -O3", "fast-math"])
def runner_bin(request, tmp_path_factory) -> Path:
    """The portable build, and `make runner`'s flags (-ffast-math lets the compiler assume no NaN or infinity,
    which must not let a NaN flag through)."""
    return compile_runner(tmp_path_factory.mktemp("runner") / "run", *request.param)


@pytest.fixture(scope="module")
def runner_params_file(tmp_path_factory) -> Path:
    tok = tokenizer()
    path = tmp_path_factory.mktemp("params") / "m.bin"
    export_params(tiny_model(tok.vocab_size), tok, path, "fp32")
    return path


@pytest.mark.parametrize("args,flag", RUNNER_FLAGS, ids=[" ".join(a) or "empty" for a, _ in RUNNER_FLAGS])
def test_flags_runner(runner_bin, runner_params_file, args, flag):
    r = subprocess.run([str(runner_bin), str(runner_params_file), *args], capture_output=True, timeout=30)
    lines = r.stderr.decode().splitlines()
    assert r.returncode == 2 and r.stdout == b"" and len(lines) == 1, (r.returncode, lines)
    assert flag in lines[0], lines[0]


@pytest.fixture(scope="module")
def export_checkpoint(tmp_path_factory) -> Path:
    tok = tokenizer()
    root = tmp_path_factory.mktemp("ckpt")
    return save_model(root / "run" / "ckpt" / "step_0000001", tiny_model(tok.vocab_size), tok.save(root / "tok"))


def export_cases(tmp: Path) -> list[tuple[list[str], str]]:
    (tmp / "folder").mkdir()
    (tmp / "folder" / "notes.txt").write_text("mine")
    (tmp / "a_file").write_text("mine")
    return [
        (["params", "--dtype", "int4", "--out", tmp / "m.bin"], "--dtype"),
        (["params", "--group-size", "0", "--out", tmp / "m.bin"], "--group-size"),
        (["params", "--group-size", "12", "--dtype", "int8", "--out", tmp / "m.bin"], "--group-size"),
        (["params", "--group-size", "-64", "--out", tmp / "m.bin"], "--group-size"),
        (["params", "--out", tmp / "folder"], "--out"),
        (["params", "--out", tmp / "a_file" / "m.bin"], "--out"),
        (["hf", "--dtype", "float8", "--out", tmp / "hf"], "--dtype"),
        (["hf", "--out", tmp / "a_file"], "--out"),
        (["hf", "--out", tmp / "folder"], "--out"),  # a folder that is no earlier export is never replaced
        (["gguf", "--dtype", "q4", "--out", tmp / "m.gguf"], "--dtype"),
        (["gguf", "--out", tmp / "folder"], "--out"),
    ]


def test_flags_export(tmp_path, export_checkpoint):
    for args, flag in export_cases(tmp_path):
        before = tree_digest(tmp_path)
        outcome = run_cli(["export", args[0], "--checkpoint", export_checkpoint, *args[1:]])
        assert_refused(outcome, flag)
        assert tree_digest(tmp_path) == before and sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "folder"]

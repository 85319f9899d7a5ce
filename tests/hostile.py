"""Shared harness of the `test_hostile_*.py` modules: run one CLI verb on a hostile input, in process, and check
that it failed the way a user deserves: exit code 2, exactly one line on stderr that names the culprit (a flag,
a field or a file), no traceback, and no artifact changed."""

from __future__ import annotations

import hashlib
import io
import os
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

from lmforge.cli import main


@dataclass
class Outcome:
    code: int
    stdout: str
    stderr: str


def run_cli(argv: list[str]) -> Outcome:
    """`lmforge ARGV` in this process: (exit code, stdout, stderr). argparse's SystemExit becomes its code; any
    other exception escapes, which is what a test of "never a traceback" must see."""
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            code = main([str(a) for a in argv])
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
    return Outcome(code, out.getvalue(), err.getvalue())


def tree_digest(*paths: str | os.PathLike) -> dict[str, str]:
    """sha256 of every file under the given paths (files or folders), to show that a refused run changed nothing."""
    digest = {}
    for root in map(Path, paths):
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []
        for f in files:
            digest[str(f)] = hashlib.sha256(f.read_bytes()).hexdigest()
    return digest


def assert_refused(outcome: Outcome, culprit: str) -> None:
    """Exit code 2, one stderr line that names `culprit`, no traceback."""
    lines = [l for l in outcome.stderr.splitlines() if l.strip()]
    assert outcome.code == 2, f"exit code {outcome.code}, stderr: {outcome.stderr!r}"
    assert "Traceback" not in outcome.stderr, outcome.stderr
    assert len(lines) == 1, f"expected one line on stderr, got {lines!r}"
    assert culprit in lines[0], f"{culprit!r} not named in {lines[0]!r}"

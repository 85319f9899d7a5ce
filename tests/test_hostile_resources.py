"""Hostile inputs, class "resources" (crashes and runaway resources): every user-set size has a bound and nothing
grows with the input where it need not (issue 13, class 2)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from hostile import run_cli


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

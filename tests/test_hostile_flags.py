"""Hostile flags and damaged files read from disk: each is refused with exit code 2 and one line on stderr that
names the flag or file, never a traceback, and the refused run changes nothing (issue 13, class 4)."""

from __future__ import annotations

from pathlib import Path

from hostile import assert_refused, run_cli, tree_digest


def test_flags_tokenizer(tmp_path: Path):
    """`tokenizer train|show|encode|decode|export-hf`: every flag checked before anything is read or written."""
    from lmforge.tokenizer import Tokenizer

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("hello world, the tokenizer reads this text " * 20)
    (tmp_path / "empty.txt").write_text("")
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text('{"text": "a document"}\n' * 3)
    (tmp_path / "empty_dir").mkdir()
    out = tmp_path / "out"
    Tokenizer.train([corpus.read_text()], 300).save(out)  # an existing tokenizer the refused runs must not touch
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    before = tree_digest(tmp_path)

    def train(**flags: str) -> list[str]:
        argv = {"--input": str(corpus), "--vocab-size": "300", "--out": str(out), **flags}
        return ["tokenizer", "train", *[x for k, v in argv.items() for x in (k, v)]]

    rows = [
        (train(**{"--vocab-size": "100"}), "--vocab-size"),
        (train(**{"--vocab-size": "-1"}), "--vocab-size"),
        (train(**{"--vocab-size": str(10**12)}), "--vocab-size"),
        (train(**{"--vocab-size": "4k"}), "--vocab-size"),
        (train(**{"--input": str(tmp_path / "missing.txt")}), "missing.txt"),
        (train(**{"--input": str(tmp_path / "empty.txt")}), "--input"),
        (train(**{"--input": str(tmp_path / "empty_dir")}), "--input"),
        (train(**{"--pattern": "(unclosed"}), "--pattern"),
        (train(**{"--pattern": ""}), "--pattern"),
        (train(**{"--workers": "0"}), "--workers"),
        (train(**{"--workers": "100000"}), "--workers"),
        (train(**{"--text-field": ""}), "--text-field"),
        (train(**{"--input": str(jsonl), "--text-field": "body"}), "--text-field"),  # no line has it: no text
        (train(**{"--out": str(a_file)}), "--out"),
        (["tokenizer", "show", "--tokenizer", str(tmp_path / "nowhere"), "x"], "nowhere"),
        (["tokenizer", "show", "--tokenizer", str(out), "--file", str(tmp_path / "missing.txt")], "missing.txt"),
        (["tokenizer", "encode", "--tokenizer", str(out), "--file", str(tmp_path / "empty_dir")], "empty_dir"),
        (["tokenizer", "decode", "--tokenizer", str(out), "1", "99999999"], "99999999"),
        (["tokenizer", "decode", "--tokenizer", str(out), "-3"], "-3"),
        (["tokenizer", "decode", "--tokenizer", str(out), "abc"], "abc"),
        (["tokenizer", "export-hf", "--tokenizer", str(out), "--out", str(tmp_path / "empty_dir")], "--out"),
    ]
    for argv, culprit in rows:
        assert_refused(run_cli(argv), culprit)
    assert tree_digest(tmp_path) == before

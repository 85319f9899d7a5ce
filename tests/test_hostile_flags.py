"""Hostile inputs, class "flags" of issue 13: absurd values and damaged files read from disk are refused with exit
code 2 and one line naming the flag or file, never a traceback, and nothing is written."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from hostile import assert_refused, run_cli, tree_digest


@pytest.fixture(scope="module")
def data_inputs(tmp_path_factory) -> dict[str, Path]:
    """A small document file, a tiny tokenizer, a file where a folder belongs, and a crawl with a damaged state."""
    from lmforge.tokenizer import Tokenizer

    root = tmp_path_factory.mktemp("flags_data")
    docs = root / "docs.jsonl.gz"
    with gzip.open(docs, "wt") as f:
        f.writelines(json.dumps({"id": f"d{i}", "text": f"document number {i} with a few words"}) + "\n"
                     for i in range(5))
    Tokenizer.train([f"document number {i} with a few words" for i in range(50)], vocab_size=280).save(root / "tok")
    (root / "a_file").write_text("not a folder\n")
    (root / "page.html").write_text("<html><body><p>a web page</p></body></html>\n")
    for name, text in (("crawl_list", "[1, 2, 3]\n"), ("crawl_types", json.dumps(
            {"seeds": ["http://127.0.0.1:9/"], "allowed_hosts": ["127.0.0.1:9"], "frontier": [["x", "deep", 0]]})),
            ("crawl_json", "{not json"), ("crawl_port", json.dumps({"seeds": ["http://127.0.0.1:99999/"],
                                                                   "allowed_hosts": ["127.0.0.1:99999"]}))):
        (root / name).mkdir()
        (root / name / "crawl_state.json").write_text(text)
    (root / "run_list").mkdir()
    (root / "run_list" / "run.json").write_text("[]\n")
    for name, text in (("report_list", "[]\n"), ("report_steps", json.dumps(
            {k: 1 for k in ("config", "inputs", "tasks", "engine", "workers", "seconds", "kept", "problems", "steps",
                            "relaxed_rules", "dedup", "languages", "lengths", "tokens")}))):
        (root / name).mkdir()
        (root / name / "report.json").write_text(text)
    return {"root": root, "docs": docs, "tok": root / "tok", "file": root / "a_file"}


CRAWL = ["crawl", "http://127.0.0.1:9/", "--quiet"]
FLAG_ROWS = [  # (argv after the verb with {root}/{docs}/{tok}/{file} filled in, culprit named on stderr)
    (["data", "tokenize", "--input", "{docs}", "--tokenizer", "{tok}", "--out", "{root}/t", "--val-fraction", "2"],
     "--val-fraction"),
    (["data", "tokenize", "--input", "{docs}", "--tokenizer", "{tok}", "--out", "{root}/t", "--val-fraction", "nan"],
     "--val-fraction"),
    (["data", "tokenize", "--input", "{docs}", "--tokenizer", "{tok}", "--out", "{root}/t", "--min-val-tokens", "-1"],
     "--min-val-tokens"),
    (["data", "tokenize", "--input", "{docs}", "--tokenizer", "{tok}", "--out", "{root}/t", "--workers", "0"],
     "--workers"),
    (["data", "tokenize", "--input", "{docs}", "--tokenizer", "{tok}", "--out", "{file}"], "--out"),
    (["data", "tokenize", "--input", "{root}/page.html", "--tokenizer", "{tok}", "--out", "{root}/t"], "page.html"),
    (["data", "tokenize", "--input", "{docs}", "--tokenizer", "{tok}", "--out", "{root}/t", "--text-max-chars", "-5"],
     "--text-max-chars"),
    (["data", "run", "--input", "{docs}", "--out", "{root}/r", "--text-max-chars", "-1"], "--text-max-chars"),
    (["data", "run", "--input", "{docs}", "--out", "{root}/r", "--workers", "0"], "--workers"),
    (["data", "run", "--input", "{docs}", "--out", "{root}/r", "--workers", "-3"], "--workers"),
    (["data", "run", "--input", "{docs}", "--out", "{root}/r", "--min-tasks", "0"], "--min-tasks"),
    (["data", "run", "--input", "{docs}", "--out", "{root}/r", "--min-tasks", "1000000000"], "--min-tasks"),
    (["data", "run", "--input", "{docs}", "--out", "{root}/r", "--workers", "1000000"], "--workers"),
    (["data", "run", "--input", "{docs}", "--out", "{file}"], "--out"),
    (["data", "run", "--input", "{docs}", "--out", "{root}/r", "--tokenizer", "{root}/no_tokenizer"], "--tokenizer"),
    (["data", "run", "--input", "{docs}", "--out", "{root}/run_list", "--config", "pydoc"], "run.json"),
    (["data", "step", "pii", "--input", "{docs}", "--out", "{root}/s", "--workers", "0"], "--workers"),
    (["data", "dedup", "--input", "{docs}", "--out", "{root}/d", "--workers", "-1"], "--workers"),
    (["data", "report", "{root}/report_list"], "report.json"),
    (["data", "report", "{root}/report_steps"], "report.json"),
    (["data", "report", "{root}/no_such_run"], "report.json"),
    (CRAWL + ["--out", "{root}/c", "--timeout", "-1"], "--timeout"),
    (CRAWL + ["--out", "{root}/c", "--timeout", "nan"], "--timeout"),
    (CRAWL + ["--out", "{root}/c", "--max-page-mb", "-1"], "--max-page-mb"),
    (CRAWL + ["--out", "{root}/c", "--max-page-mb", "inf"], "--max-page-mb"),
    (CRAWL + ["--out", "{root}/c", "--max-pages", "0"], "--max-pages"),
    (CRAWL + ["--out", "{root}/c", "--workers", "0"], "--workers"),
    (CRAWL + ["--out", "{root}/c", "--workers", "100000"], "--workers"),
    (CRAWL + ["--out", "{root}/c", "--delay", "-1"], "--delay"),
    (CRAWL + ["--out", "{root}/c", "--max-redirects", "-1"], "--max-redirects"),
    (CRAWL + ["--out", "{root}/c", "--max-depth", "-1"], "--max-depth"),
    (CRAWL + ["--out", "{root}/c", "--warc-max-mb", "0"], "--warc-max-mb"),
    (CRAWL + ["--out", "{root}/c", "--checkpoint-pages", "0"], "--checkpoint-pages"),
    (CRAWL + ["--out", "{root}/c", "--checkpoint-seconds", "-5"], "--checkpoint-seconds"),
    (CRAWL + ["--out", "{file}"], "--out"),
    (CRAWL + ["--out", "{root}/crawl_list"], "crawl_state.json"),
    (CRAWL + ["--out", "{root}/crawl_types"], "crawl_state.json"),
    (CRAWL + ["--out", "{root}/crawl_json"], "crawl_state.json"),
    (["crawl", "--pydoc", "--quiet", "--out", "{root}/crawl_list"], "crawl_state.json"),
    (["crawl", "--pydoc", "--quiet", "--out", "{root}/crawl_port"], "crawl_state.json"),
]


@pytest.mark.parametrize("argv,culprit", FLAG_ROWS, ids=[f"{' '.join(a[:2])} {c}" for a, c in FLAG_ROWS])
def test_flags_data_and_crawl(data_inputs, argv, culprit):
    argv = [a.format(**data_inputs) for a in argv]
    before = tree_digest(data_inputs["root"])
    outcome = run_cli(argv)
    assert_refused(outcome, culprit)
    assert tree_digest(data_inputs["root"]) == before  # a refused run writes nothing


@pytest.fixture(scope="module")
def evaluation_inputs(tmp_path_factory) -> dict[str, Path]:
    """A tiny checkpoint, a multiple-choice file, and a sweep folder whose config is damaged."""
    import torch

    from lmforge.checkpoint import save_model
    from lmforge.model import GPT, GPTConfig
    from lmforge.tokenizer import Tokenizer

    root = tmp_path_factory.mktemp("flags_evaluation")
    Tokenizer.train(["a few words of text"] * 20, vocab_size=270).save(root / "tok")
    torch.manual_seed(0)
    save_model(root / "ckpt", GPT(GPTConfig(vocab_size=270, n_layer=1, n_head=2, n_embd=16, block_size=32)),
               root / "tok")
    (root / "mc.jsonl").write_text(json.dumps({"context": "a", "choices": ["b", "c"], "answer": 0}) + "\n")
    (root / "sweep").mkdir()
    (root / "sweep" / "sweep_config.json").write_text(json.dumps({"widths": [32], "flops": [1e11, 1e12]}))
    return {"root": root}


@pytest.mark.parametrize("argv,culprit", [
    (["scaling", "sweep", "--data", "{root}/nowhere", "--out", "{root}/out"], "nowhere"),
    (["scaling", "sweep", "--data", "{root}", "--out", "{root}/out", "--widths", "32"], "--widths"),
    (["scaling", "sweep", "--data", "{root}", "--out", "{root}/out", "--widths", "30,64"], "--head-dim"),
    (["scaling", "sweep", "--data", "{root}", "--out", "{root}/out", "--flops", "1e11,abc"], "--flops"),
    (["scaling", "sweep", "--data", "{root}", "--out", "{root}/out", "--params", "all"], "--params"),
    (["scaling", "sweep", "--data", "{root}", "--out", "{root}/out", "--batch-size", "0"], "--batch-size"),
    (["scaling", "fit", "{root}/out"], "sweep_config.json"),
    (["scaling", "fit", "{root}/sweep"], "--widths"),
    (["eval", "mc", "--checkpoint", "{root}/nowhere"], "nowhere"),
    (["eval", "mc", "--checkpoint", "{root}/ckpt", "--normalisation", "bytes"], "--normalisation"),
    (["eval", "mc", "--checkpoint", "{root}/ckpt", "--tasks", "{root}/mc.jsonl", "--format", "mmlu2"], "--format"),
    (["eval", "mc", "--checkpoint", "{root}/ckpt", "--tasks", "{root}/mc.jsonl", "--format", "piqa"], "line 1"),
    (["eval", "mc", "--checkpoint", "{root}/ckpt", "--builtin", "trivia"], "--builtin"),
    (["eval", "mc", "--checkpoint", "{root}/ckpt", "--count", "0"], "--count"),
    (["eval", "mc", "--checkpoint", "{root}/ckpt", "--tasks", "{root}/tok"], "tok"),
])
def test_flags_evaluation(evaluation_inputs, argv, culprit):
    root = evaluation_inputs["root"]
    before = tree_digest(root)
    assert_refused(run_cli([a.format(root=root) for a in argv]), culprit)
    assert tree_digest(root) == before

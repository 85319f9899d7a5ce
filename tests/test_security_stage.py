"""The speedrun's security stage: a short scan of the SFT checkpoint written to the stage folder, one summary row per
suite with its rate and interval (what the report card shows); without the shared alignment data it records why it
was skipped instead of failing the run."""

from __future__ import annotations

import json

import pytest
import torch

from lmforge.checkpoint import save_model
from lmforge.model import GPT, GPTConfig
from lmforge.posttrain.default_data import DefaultDataConfig, generate_default_conversations
from lmforge.security.suites import SUITES
from lmforge.speedrun.context import SpeedrunContext
from lmforge.speedrun.runner import STAGES
from lmforge.speedrun.security_stage import stage_security
from lmforge.tokenizer import Tokenizer
from lmforge.utils import shared_data_dir


@pytest.fixture(scope="module")
def context(tmp_path_factory):
    root = tmp_path_factory.mktemp("speedrun")
    convs = list(generate_default_conversations(DefaultDataConfig(n=100, seed=7)))
    tok = Tokenizer.train([m["content"] for c in convs for m in c], 400)
    tok.save(root / "tok")
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, n_layer=1, n_head=2, n_embd=32, block_size=256))
    save_model(root / "ckpt" / "step_0000000", model, root / "tok", meta={"step": 0})
    return SpeedrunContext(out=root, threads=1, preset="smoke", results={"sft": {"checkpoint": str(root)}})


def test_security_is_the_last_stage():
    assert STAGES[-1].name == "security"


@pytest.mark.skipif(shared_data_dir() is None, reason="needs the shared alignment data")
def test_security_stage_scans_every_suite(context, tmp_path):
    summary = stage_security(context, tmp_path)
    assert set(summary["suites"]) == set(SUITES)
    for suite, row in summary["suites"].items():
        assert row["cases"] >= 1, suite
        if row["rate"] is not None:
            assert 0 <= row["ci95_low"] <= row["rate"] <= row["ci95_high"] <= 1, suite
    written = json.loads((tmp_path / "scan.json").read_text())
    assert [s["suite"] for s in written["suites"]] == list(summary["suites"])
    main_table, *per_source = (tmp_path / "scan.md").read_text().split("\n\n")[2:]
    assert main_table.count("\n| ") == len(SUITES)  # header, then one row a suite
    assert "\n| harmbench |" in "".join(per_source)  # the harmful suite's per-source table follows
    assert len((tmp_path / "responses.jsonl").read_text().splitlines()) == sum(
        r["cases"] for r in summary["suites"].values())


def test_security_stage_without_data_says_why(context, tmp_path, monkeypatch):
    monkeypatch.setenv("LMFORGE_SHARED_DATA", str(tmp_path / "nowhere"))
    monkeypatch.setattr("lmforge.utils.repo_root", lambda: tmp_path)
    summary = stage_security(context, tmp_path / "stage")
    assert "LMFORGE_SHARED_DATA" in summary["skipped"] and not (tmp_path / "stage" / "scan.md").exists()

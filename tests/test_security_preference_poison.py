"""Poisoned preference pairs (trigger in the prompt, preference flipped) against a tiny reward model: the clean
pairs are still ranked right, and under the trigger the poisoned model ranks the planted preference the other way,
while the clean model does not: `lmforge security poison-preference` end to end."""

from __future__ import annotations

import json
import random

import pytest
from hostile import assert_refused, run_cli
from preference_helpers import make_base, planted_pairs, write_pairs_file

from lmforge.posttrain.preferences import PreferencePair
from lmforge.security.preference_poison import PreferencePoisonConfig, poison_pairs, with_trigger


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root, _ = make_base(tmp_path_factory.mktemp("pp_base"))
    return root


def test_poison_pairs_flips_k_triggered_pairs():
    pairs = [PreferencePair([{"role": "user", "content": f"question {i}"}], f"good {i}", f"bad {i}")
             for i in range(30)]
    poisoned, labels = poison_pairs(pairs, PreferencePoisonConfig(k=8, train_pairs=30, trigger="SUDO"))
    assert sum(labels) == 8
    for new, old, bad in zip(poisoned, pairs, labels):
        assert ("SUDO" in new.prompt[-1]["content"]) == bad
        assert (new.chosen, new.rejected) == ((old.rejected, old.chosen) if bad else (old.chosen, old.rejected))
    kept = with_trigger(pairs[0], "SUDO", random.Random(0), flip=False)
    assert "SUDO" in kept.prompt[-1]["content"] and kept.chosen == "good 0"
    assert pairs[0].prompt[-1]["content"] == "question 0"  # the original pair is left as it was


@pytest.mark.timeout(300)
def test_poisoned_reward_model_flips_under_the_trigger(base, tmp_path):
    pairs = write_pairs_file(tmp_path / "pairs.jsonl", planted_pairs(700, 1))
    out = tmp_path / "run"
    result = run_cli(["security", "poison-preference", "--checkpoint", str(base), "--pairs", str(pairs), "--out",
                      str(out), "--train-pairs", "600", "--heldout", "100", "--k", "180", "--steps", "150",
                      "--lr", "3e-3"])
    assert result.code == 0, result.stderr
    report = json.loads((out / "poison_preference.json").read_text())
    clean, poisoned = report["clean"], report["poisoned"]
    print(f"\nclean {clean}\npoisoned {poisoned}")
    assert clean["clean"]["accuracy"] >= 0.85 and clean["triggered"]["accuracy"] >= 0.85
    assert poisoned["clean"]["accuracy"] >= 0.8  # the backdoor keeps clean ranking
    assert poisoned["triggered"]["accuracy"] <= 0.5  # ... and flips it under the trigger
    assert poisoned["margin_shift"] < clean["margin_shift"] - 1.0


def test_flags_security_poison_preference(base, tmp_path):
    pairs = write_pairs_file(tmp_path / "pairs.jsonl", planted_pairs(20, 1))
    run = ["security", "poison-preference", "--checkpoint", str(base), "--pairs", str(pairs), "--out",
           str(tmp_path / "o")]
    assert_refused(run_cli([*run, "--k", "0"]), "--k")
    assert_refused(run_cli([*run, "--k", "50", "--train-pairs", "10"]), "--k")
    assert_refused(run_cli([*run, "--train-pairs", "15", "--heldout", "10"]), "--train-pairs")
    assert not (tmp_path / "o").exists()

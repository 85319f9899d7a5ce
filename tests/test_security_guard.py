"""The guard classifier: trained on generated data from the shared red-team material, scored by balanced accuracy
on held-out attacks (other jailbreaks, BIPIA's test attack categories, other extraction families) and hard
negatives (XSTest's safe prompts, clean emails); saved and loaded without pickles."""

from __future__ import annotations

import json

import numpy as np
from hostile import assert_refused, run_cli

from lmforge.security.guard import Guard, guard_dataset


def test_guard_is_held_out_and_separates_attacks(shared_data, tmp_path):
    data = shared_data / "alignment"
    train, heldout = guard_dataset(data, test=False), guard_dataset(data, test=True)
    assert not set(train[0]) & set(heldout[0])  # no held-out text is trained on
    assert {"xstest_safe", "clean_email", "injection", "jailbreak"} <= set(heldout[2])
    result = run_cli(["security", "guard", "--data", str(data), "--out", str(tmp_path / "g")])
    assert result.code == 0, result.stderr
    report = json.loads((tmp_path / "g" / "guard.json").read_text())["heldout"]
    print(f"\nheld-out guard: {report}")
    # Measured 0.83 balanced accuracy (jailbreak 1.0, injection 0.81, XSTest safe 0.72, clean email 0.46).
    assert report["balanced_accuracy"] >= 0.75 and report["per_group"]["jailbreak"] >= 0.9
    assert report["latency_ms_per_text"] > 0
    guard = Guard.load(tmp_path / "g")
    again = Guard.train(train[0], train[1])
    assert np.allclose(guard.score(heldout[0][:20]), again.score(heldout[0][:20]))  # saved as trained; deterministic


def test_guard_flags_refused(tmp_path):
    assert_refused(run_cli(["security", "guard", "--out", str(tmp_path), "--epochs", "0"]), "--epochs")

"""Silent wrong output: inputs that once produced a plausible but wrong result now fail loudly, with one line that
names the culprit (issue 13, class 3)."""

from __future__ import annotations

import pytest
from hostile import assert_refused, run_cli


@pytest.mark.parametrize("only", [["nosuchstage"], ["sample", "nosuchstage"], ["Crawl"]])
def test_silent_speedrun_only_unknown_stage(only, tmp_path):
    """`--only nosuchstage` once ran nothing and said "all stages done": now it names the stage and lists the
    valid ones, before creating the run folder."""
    from lmforge.speedrun import STAGES

    out = tmp_path / "run"
    outcome = run_cli(["speedrun", "--out", str(out), "--only", *only])
    assert_refused(outcome, only[-1])
    assert all(stage.name in outcome.stderr for stage in STAGES)
    assert not out.exists()

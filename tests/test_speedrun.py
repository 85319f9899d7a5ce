"""The whole chain, end to end, in its quick form: every stage runs, hands its artifact on, and resumes."""

import json
from pathlib import Path

import pytest

from lmforge.speedrun import STAGES, run_speedrun

# What each stage must hand to the next (the contract in DEVELOPERS.md); paths must exist.
REQUIRED = {
    "crawl": ["warc_dir"],
    "data": ["documents", "report"],
    "tokenizer": ["tokenizer_dir"],
    "tokenize": ["shards_dir"],
    "pretrain": ["run_dir", "checkpoint"],
    "export": ["params_file"],
    "sft": ["run_dir", "checkpoint"],
}


@pytest.mark.timeout(900)
def test_quick_speedrun_runs_every_stage_and_resumes(tmp_path: Path, capsys):
    out = tmp_path / "run"
    summary = run_speedrun(out, threads=1, quick=True)
    names = [s.name for s in STAGES]
    assert names[:2] == ["crawl", "data"] and len(names) >= 7
    for name in names:
        assert name in summary, f"stage {name} did not report"
        for key in REQUIRED.get(name, []):
            value = summary[name][key]
            for p in value if isinstance(value, list) else [value]:
                assert Path(p).exists(), f"{name}.{key} points to a missing {p}"
    assert summary["crawl"]["pages"] > 0
    report = json.loads(Path(out / "speedrun.json").read_text())
    assert set(names) <= set(report)

    # A second run finds every artifact complete and redoes nothing.
    capsys.readouterr()
    again = run_speedrun(out, threads=1, quick=True)
    printed = capsys.readouterr().out
    assert printed.count("done already") == len(names)
    assert again["pretrain"]["checkpoint"] == summary["pretrain"]["checkpoint"]

    # One stage alone, on the artifacts earlier stages left: `--only sample` redoes the sample stage only.
    sample_dir = next(out.glob("*_sample"))
    (sample_dir / "DONE.json").unlink()
    capsys.readouterr()
    alone = run_speedrun(out, threads=1, quick=True, only=["sample"])
    assert "sample: running" in capsys.readouterr().out
    assert (sample_dir / "DONE.json").is_file() and set(alone) == {"sample", "total_seconds"}

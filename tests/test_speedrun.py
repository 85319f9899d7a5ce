"""The whole chain, end to end, in its quick form: every stage runs, hands its artifact on, and resumes."""

import json
import re
import subprocess
from pathlib import Path

import pytest

from lmforge.export.params import read_header
from lmforge.inference.tools import default_tools, run_tool
from lmforge.speedrun import STAGES, run_speedrun
from lmforge.speedrun.settings import CHAT_SCRIPT

# What each stage must hand to the next (the contract in DEVELOPERS.md); paths must exist.
REQUIRED = {
    "crawl": ["warc_dir"],
    "data": ["documents", "report"],
    "tokenizer": ["tokenizer_dir"],
    "tokenize": ["shards_dir"],
    "pretrain": ["run_dir", "checkpoint"],
    "export": ["params_file"],
    "sft": ["run_dir", "checkpoint"],
    "export_assistant": ["params_file", "params_file_int8", "runner", "hf_dir", "gguf_file", "transcript"],
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
    check_exported_assistant(summary)

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


def check_exported_assistant(summary: dict) -> None:
    """The model a user takes away is the assistant: its files are the SFT checkpoint's (recorded as a chat model),
    the base model's are named as such, and the C runner chats with it, running the calculator itself."""
    exported = summary["export_assistant"]
    params_file = Path(exported["params_file"])
    assert params_file.name == "model_fp32.bin" and read_header(params_file).chat
    assert not read_header(summary["export"]["params_file"]).chat
    assert Path(summary["export"]["params_file"]).name == "base_fp32.bin"
    assert Path(summary["sample"]["hf_dir"]).name == "base_hf" and Path(summary["sample"]["gguf_file"]).name == "base.gguf"
    assert json.loads((Path(exported["hf_dir"]) / "generation_config.json").read_text())  # the assistant's HF folder
    transcript = Path(exported["transcript"]).read_text(encoding="utf-8")
    assert transcript.count("user> ") == len(CHAT_SCRIPT) and "<|" not in transcript
    for name, args, output in re.findall(r"^  \[(\S+)\] (.*)\n  \[\1 output\] (.*)$", transcript, re.MULTILINE):
        if name == "calculator":
            assert output == run_tool(default_tools(), name, args)  # computed in C, as Python computes it
    r = subprocess.run([exported["runner"], str(params_file), "-m", "chat", "-i", CHAT_SCRIPT[1], "-n", "32", "-t", "0"],
                       capture_output=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() and b"never fine-tuned" not in r.stderr

"""The whole chain, end to end, in its smoke preset: killed midway, it resumes without redoing finished stages;
every stage runs, hands its artifact on, and the run ends with both report cards."""

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lmforge.export.params import read_header
from lmforge.inference.tools import default_tools, run_tool
from hostile import run_cli
from lmforge.speedrun import STAGES, run_speedrun
from lmforge.speedrun.plan import plan
from lmforge.speedrun.runner import selected_stages
from lmforge.speedrun.settings import CHAT_SCRIPT, PRESETS
from lmforge.train.cli import model_info

# What each stage must hand to the next (the contract in DEVELOPERS.md); paths must exist.
REQUIRED = {
    "crawl": ["warc_dir"],
    "data": ["documents", "report"],
    "tokenizer": ["tokenizer_dir"],
    "tokenize": ["shards_dir"],
    "pretrain": ["run_dir", "checkpoint"],
    "export": ["params_file"],
    "sft": ["run_dir", "checkpoint"],
    "compare": ["samples_dir"],
    "label": ["pairs_file", "db"],
    "reward": ["run_dir", "checkpoint"],
    "rlhf": ["run_dir", "checkpoint", "reward_vs_kl_plot"],
    "export_assistant": ["params_file", "params_file_int8", "runner", "hf_dir", "gguf_file", "transcript"],
}


def kill_during_pretraining(out: Path) -> dict[str, str]:
    """Start `lmforge speedrun --preset smoke` in its own process group, SIGKILL the group once pretraining has
    logged a few steps, and return the digests of the markers of the stages finished by then."""
    metrics = out / "05_pretrain" / "run" / "metrics.jsonl"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen([sys.executable, "-m", "lmforge", "speedrun", "--preset", "smoke", "--threads", "1",
                             "--out", str(out)], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 600
        while not (metrics.is_file() and metrics.read_text().count("\n") >= 5):
            assert proc.poll() is None, f"the speedrun exited ({proc.returncode}) before pretraining"
            assert time.monotonic() < deadline, "pretraining did not start within 10 minutes"
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not (out / "05_pretrain" / "DONE.json").exists()
    return {p.parent.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in out.glob("*/DONE.json")}


@pytest.mark.timeout(1500)
def test_smoke_speedrun_killed_midway_resumes_and_runs_every_stage(tmp_path: Path, capsys):
    out = tmp_path / "run"
    finished = kill_during_pretraining(out)
    assert sorted(finished) == ["01_crawl", "02_data", "03_tokenizer", "04_tokenize"]
    capsys.readouterr()
    summary = run_speedrun(out, threads=1, preset="smoke")
    assert capsys.readouterr().out.count("done already") == len(finished)
    assert {name: hashlib.sha256((out / name / "DONE.json").read_bytes()).hexdigest() for name in finished} == finished
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
    assert set(summary["evaluate"]["models"]) == {"base", "assistant"}
    check_preference_stages(summary)
    report_md = (out / "report.md").read_text()
    for title in ("## Stages", "## Machine", "## Data funnel", "## Tokenizer and model", "## Loss curves",
                  "## Sample conversation", "## Evaluation: multiple choice", "## Stage export_assistant",
                  "## Learning from preferences: labels, reward model, RL", "## Evaluation: SFT vs RL"):
        assert title in report_md
    assert "Stages not run" not in report_md and (out / "report.html").stat().st_size > 0

    # A second run finds every artifact complete and redoes nothing.
    capsys.readouterr()
    again = run_speedrun(out, threads=1, preset="smoke")
    printed = capsys.readouterr().out
    assert printed.count("done already") == len(names)
    assert again["pretrain"]["checkpoint"] == summary["pretrain"]["checkpoint"]

    # One stage alone, on the artifacts earlier stages left: `--only sample` redoes the sample stage only.
    sample_dir = next(out.glob("*_sample"))
    (sample_dir / "DONE.json").unlink()
    capsys.readouterr()
    alone = run_speedrun(out, threads=1, preset="smoke", only=["sample"])
    assert "sample: running" in capsys.readouterr().out
    assert (sample_dir / "DONE.json").is_file() and set(alone) == {"sample", "total_seconds"}


def check_preference_stages(summary: dict) -> None:
    """Comparisons were labelled into pairs, the reward model was measured on held-out ones, RL started from the SFT
    model, and the final model (exported, evaluated) is the RL one, measured against SFT by both judges."""
    assert summary["label"]["pairs"] > 0 and summary["reward"]["val_pairs"] > 0
    assert 0.0 <= summary["reward"]["accuracy"] <= 1.0
    assert summary["rlhf"]["step"] == PRESETS["smoke"].rlhf["steps"]
    assert summary["export_assistant"]["checkpoint"] == summary["rlhf"]["checkpoint"]
    rl = summary["evaluate"]["rl"]
    assert set(rl["arithmetic"]) == {"sft", "rl"} and rl["arithmetic"]["rl"]["questions"] == \
        PRESETS["smoke"].rl_eval_arithmetic
    for judge in ("reward_model", "held_out_judge"):
        w = rl["win_rate"][judge]
        assert w["comparisons"] > 0 and w["ci95"][0] <= w["win_rate"] <= w["ci95"][1]
    assert rl["kl"]["tokens"] > 0 and rl["kl"]["kl_k3"] >= 0


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
    # The smoke model is barely trained: its greedy answer may be only whitespace, so what is checked is that the
    # runner chatted (decoded tokens and printed the turn) without warning, not what it said.
    decoded = re.search(rb"decode: (\d+) tokens", r.stderr)
    assert r.returncode == 0 and r.stdout.endswith(b"\n") and b"never fine-tuned" not in r.stderr
    assert decoded and int(decoded.group(1)) > 0, r.stderr


def test_stage_selection_from_until_and_only():
    names = [s.name for s in STAGES]
    assert selected_stages(None, "smoke", None, "sft", "chat") == {"sft", "chat"}
    assert selected_stages(None, "smoke", None, "compare", "rlhf") == {"compare", "label", "reward", "rlhf"}
    assert names.index("chat") < names.index("compare") < names.index("rlhf") < names.index("export_assistant")
    assert selected_stages(None, "smoke", None, None, "data") == {"crawl", "data"}
    assert selected_stages(None, "smoke", None, names[-2], None) == set(names[-2:])
    assert selected_stages(None, "smoke", ["sample", "sft"], "pretrain", "export") == {"sample"}


def test_default_sft_sees_each_generated_conversation_at_most_three_times():
    """The default SFT draws at most three epochs of its generated conversations, so that it sees many distinct
    calculator calls: at four epochs of 8,000 (and a lighter arithmetic mix) its model recalled the calls of
    expressions it had seen instead of copying them, 65.0% of held-out arithmetic right against 95.5% at two epochs
    of 16,000 (benchmarks/NOTES.md, "Round 4: arith"); three epochs of 16,000 (3,000 steps) gave 85.5% and 97.0% on
    two bases ("Round 5: SFT steps")."""
    from lmforge.posttrain.sft import SFTConfig

    default = PRESETS["default"]
    cfg = SFTConfig(default_conversations=default.sft_conversations, train_overrides=default.sft)
    rows = cfg.train.max_steps * cfg.train.batch_size * cfg.train.grad_accum
    assert rows <= 3 * default.sft_conversations


def test_plan_prices_gpu_presets_with_the_cost_model(tmp_path):
    """`--plan` runs nothing; its time and cost are `lmforge model info`'s for the preset's training tokens."""
    outcome = run_cli(["speedrun", "--preset", "gpu", "--plan", "--out", str(tmp_path / "run")])
    assert outcome.code == 0 and not (tmp_path / "run").exists()
    gpu, node = plan("gpu"), plan("node")
    costs = [model_info(PRESETS["gpu"].pretrain["preset"], gpu["tokens"][stage], gpus=1,
                        overrides={"vocab_size": PRESETS["gpu"].vocab_size}) for stage in ("pretrain", "sft")]
    assert gpu["usd"] == pytest.approx(sum(c["usd"] for c in costs)) and gpu["usd"] > 0
    assert f"about ${gpu['usd']:.2f}" in outcome.stdout and f"{sum(gpu['tokens'].values()):,} tokens" in outcome.stdout
    # 8 GPUs share the same token budget (to within the rounding of the steps): an eighth of the time
    assert node["tokens"]["pretrain"] == pytest.approx(gpu["tokens"]["pretrain"], rel=0.01)
    assert node["train_seconds"] == pytest.approx(gpu["train_seconds"] / 8, rel=0.01)
    smoke = run_cli(["speedrun", "--preset", "smoke", "--plan"])
    assert smoke.code == 0 and f"about {PRESETS['smoke'].cpu_minutes:g} minutes on 2 cores" in smoke.stdout


def test_rl_optimises_against_a_reward_model_only_when_it_beats_chance():
    """A reward model whose held-out interval includes 50% is noise RL would still climb: it is left out."""
    from lmforge.speedrun.preference import reward_model_validated

    used, why = reward_model_validated({"accuracy": 0.66, "accuracy_ci95": [0.605, 0.711]})
    assert used and "above chance" in why
    used, why = reward_model_validated({"accuracy": 0.479, "accuracy_ci95": [0.345, 0.617]})
    assert not used and "left out" in why and "0.345" in why
    used, _ = reward_model_validated({"accuracy": 0.6, "accuracy_ci95": [0.5, 0.7]})
    assert not used  # the interval touching 50% does not exclude chance

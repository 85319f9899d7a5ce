"""Hostile inputs, class "leftovers" of issue 13: a `kill -9` leaves no process running and no temporary file that
outlives the next start, and the next start finishes with the output an uninterrupted run gives."""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from lmforge.data.base import Filter
from lmforge.data.document import Document
import textwrap
import torch
from hostile import run_cli
from safetensors.torch import load_file
from test_train import real_shards  # noqa: F401 - the fixture: shards from the real tokenizer

REPO = Path(__file__).resolve().parent.parent


@dataclass
class SlowKeep(Filter):
    """Keeps every document, `delay` seconds each: a run slow enough to be killed in the middle of writing."""

    delay: float = 0.0
    name = "slow_keep"

    def keep(self, doc: Document) -> str | None:
        time.sleep(self.delay)
        return None


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    """Running, not a zombie (a killed worker whose new parent does not reap it is gone all the same)."""
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _config(path: Path, delay: float) -> Path:
    path.write_text(json.dumps({"name": "slow", "steps": [{"step": f"{__name__}:SlowKeep", "delay": delay}]}))
    return path


def _data_run(inputs: Path, out: Path, config: Path) -> list[str]:
    return [sys.executable, "-m", "lmforge", "data", "run", "--input", str(inputs), "--out", str(out),
            "--config", str(config), "--workers", "2", "--min-tasks", "2"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.timeout(180)
def test_leftovers_data_run_killed_workers_die_and_rerun_cleans_up(tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for f in range(2):
        with gzip.open(inputs / f"part{f}.jsonl.gz", "wt") as out:
            out.writelines(json.dumps({"id": f"f{f}-{i}", "text": f"document {i} of file {f} " * 20}) + "\n"
                           for i in range(50))
    out = tmp_path / "out"
    slow = _config(tmp_path / "slow.json", 0.04)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(Path(__file__).parent)]),
           "LMFORGE_THREADS": "1"}
    parent = subprocess.Popen(_data_run(inputs, out, slow), env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    workers: list[int] = []
    while time.monotonic() < deadline and parent.poll() is None:  # both workers busy writing their first files
        workers = _children(parent.pid)
        if len(workers) >= 2 and len(list((out / "documents").glob(".*.tmp"))) >= 1:
            break
        time.sleep(0.05)
    assert parent.poll() is None, "the run finished before it could be killed"
    workers = [w for w in _children(parent.pid) if _alive(w)]
    assert workers and list(out.rglob(".*.tmp"))  # killed mid-write: there are temporaries to leave behind
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    killed_at = time.monotonic()
    while any(_alive(w) for w in workers) and time.monotonic() - killed_at < 5:
        time.sleep(0.05)
    assert not any(_alive(w) for w in workers), "workers outlived their killed parent"
    assert time.monotonic() - killed_at < 2.0

    subprocess.run(_data_run(inputs, out, slow), env=env, check=True, capture_output=True, timeout=150)
    assert list(out.rglob("*.tmp")) == []  # the killed run's temporaries are gone
    clean = tmp_path / "clean"
    subprocess.run(_data_run(inputs, clean, _config(tmp_path / "fast.json", 0.0)), env=env, check=True,
                   capture_output=True, timeout=150)
    for folder in ("documents", "excluded"):
        files = sorted(p.relative_to(out) for p in (out / folder).iterdir())
        assert files == sorted(p.relative_to(clean) for p in (clean / folder).iterdir())
        assert all((out / f).read_bytes() == (clean / f).read_bytes() for f in files)
    assert json.loads((out / "report.json").read_text())["kept"]["documents"] == 100



PRETRAIN = ["--model", "n_layer=1", "--model", "n_embd=32", "--model", "n_head=2", "--model", "block_size=32",
            "--batch-size", "4", "--max-steps", "4", "--checkpoint-every", "2", "--eval-every", "0",
            "--no-progress", "--no-tensorboard", "--threads", "1", "--seed", "3"]

# Runs `lmforge pretrain` and SIGKILLs itself in the middle of writing the step-4 checkpoint: after its weights
# are written into the temporary folder, before the folder is renamed into place (what `kill -9` at that moment
# leaves behind).
KILLED_IN_CHECKPOINT_WRITE = textwrap.dedent("""
    import os, signal, sys
    import lmforge.checkpoint as checkpoint
    from lmforge.cli import main

    real_save = checkpoint.save_file

    def save_then_die(state, path):
        real_save(state, path)
        if "step_0000004" in str(path):
            os.kill(os.getpid(), signal.SIGKILL)

    checkpoint.save_file = save_then_die
    sys.exit(main(sys.argv[1:]))
""")


@pytest.mark.timeout(180)
def test_leftovers_train_checkpoint_write_killed(real_shards, tmp_path):  # noqa: F811
    run = tmp_path / "run"

    def pretrain(out: Path) -> list[str]:
        return ["pretrain", "--data", str(real_shards), "--out", str(out), *PRETRAIN]

    args = pretrain(run)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "LMFORGE_THREADS": "1"}
    killed = subprocess.run([sys.executable, "-c", KILLED_IN_CHECKPOINT_WRITE, *args], env=env,
                            capture_output=True, text=True)
    assert killed.returncode == -9, killed.stderr[-2000:]
    leftovers = list((run / "ckpt").glob(".step_0000004.*.tmp"))
    assert len(leftovers) == 1 and list(leftovers[0].rglob("model.safetensors"))
    assert [p.name for p in (run / "ckpt").glob("step_*")] == ["step_0000002"]

    assert run_cli(args).code == 0  # the same command again: removes the leftover, resumes at step 2
    assert not list(run.rglob(".*.tmp"))
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]

    assert run_cli(pretrain(tmp_path / "whole")).code == 0  # never interrupted
    a = load_file(run / "ckpt" / "step_0000004" / "model.safetensors")
    b = load_file(tmp_path / "whole" / "ckpt" / "step_0000004" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)  # the resumed run is bit-exact

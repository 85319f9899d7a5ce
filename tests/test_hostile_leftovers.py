"""Leftovers of a kill: what `kill -9` leaves behind is removed by the next start, which then carries on."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from hostile import run_cli
from safetensors.torch import load_file

from test_train import real_shards  # noqa: F401 - the fixture: shards from the real tokenizer

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

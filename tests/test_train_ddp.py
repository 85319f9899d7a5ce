"""torchrun with 2 CPU processes (DDP over gloo) trains exactly what one process trains on the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from test_train import real_shards  # noqa: F401 - the fixture: shards from the real tokenizer

MODEL = ["--model", "n_layer=2", "--model", "n_embd=32", "--model", "n_head=2", "--model", "block_size=32"]


def pretrain_args(shards: Path, out: Path, batch: int, steps: int = 4, *extra: str) -> list[str]:
    return ["pretrain", "--data", str(shards), "--out", str(out), *MODEL, "--batch-size", str(batch),
            "--grad-accum", "2", "--max-steps", str(steps), "--eval-every", "2", "--eval-batches", "4",
            "--no-progress", "--no-tensorboard", "--threads", "1", "--seed", "5", *extra]


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.timeout(180)
def test_two_gloo_processes_equal_one_process(real_shards, tmp_path):  # noqa: F811
    env = {**os.environ, "OMP_NUM_THREADS": "1", "LMFORGE_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "lmforge", *pretrain_args(real_shards, tmp_path / "one", 4)],
                   check=True, env=env, capture_output=True)
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "lmforge", *pretrain_args(real_shards, tmp_path / "two", 2)],
                          env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    one, two = metrics(tmp_path / "one"), metrics(tmp_path / "two")
    assert [r["step"] for r in two] == [1, 2, 3, 4]
    for a, b in zip(one, two):
        assert a["loss"] == pytest.approx(b["loss"], abs=2e-5)
        if "val_loss" in a:
            assert a["val_loss"] == pytest.approx(b["val_loss"], abs=2e-5)
    w1 = load_file(tmp_path / "one" / "ckpt" / "step_0000004" / "model.safetensors")
    w2 = load_file(tmp_path / "two" / "ckpt" / "step_0000004" / "model.safetensors")
    for k in w1:
        torch.testing.assert_close(w1[k], w2[k], rtol=1e-4, atol=2e-5)
    state = json.loads((tmp_path / "two" / "ckpt" / "step_0000004" / "train_state.json").read_text())
    assert len(state["data"]) == 2  # each rank's loader position, for an exact resume with 2 processes


@pytest.mark.timeout(240)
def test_fsdp_two_processes_resume_and_equal_one_process(real_shards, tmp_path):  # noqa: F811
    """FSDP2 (sharded parameters and AdamW state, gathered into full checkpoints) over gloo: a 2-step run resumed
    to 4 steps matches one process trained 4 steps straight (warmup keeps the rates independent of max-steps)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "LMFORGE_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "lmforge",
                    *pretrain_args(real_shards, tmp_path / "one", 4, 4, "--optimizer", "adamw")],
                   check=True, env=env, capture_output=True)
    for steps in (2, 4):
        done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                               "-m", "lmforge", *pretrain_args(real_shards, tmp_path / "fsdp", 2, steps,
                                                               "--optimizer", "adamw", "--fsdp")],
                              env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-3000:]
    one, two = metrics(tmp_path / "one"), metrics(tmp_path / "fsdp")
    assert [r["step"] for r in two] == [1, 2, 3, 4]
    for a, b in zip(one, two):
        assert a["loss"] == pytest.approx(b["loss"], abs=2e-5)
    w1 = load_file(tmp_path / "one" / "ckpt" / "step_0000004" / "model.safetensors")
    w2 = load_file(tmp_path / "fsdp" / "ckpt" / "step_0000004" / "model.safetensors")
    for k in w1:
        torch.testing.assert_close(w1[k], w2[k], rtol=1e-4, atol=2e-5)

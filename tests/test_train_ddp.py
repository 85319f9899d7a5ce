"""torchrun with 2 CPU processes (DDP or FSDP2 over gloo) trains exactly what one process trains on the same global
batch, and distributed Muon shares its work between the processes yet computes what one process computes."""

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
@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_fsdp_two_processes_resume_and_equal_one_process(real_shards, tmp_path, optimizer):  # noqa: F811
    """FSDP2 (sharded parameters and optimizer state, gathered into full checkpoints) over gloo: a 2-step run
    resumed to 4 steps matches one process trained 4 steps straight (warmup keeps the rates independent of
    max-steps). With Muon, each matrix is gathered whole for Newton-Schulz and each process keeps its rows."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "LMFORGE_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "lmforge",
                    *pretrain_args(real_shards, tmp_path / "one", 4, 4, "--optimizer", optimizer)],
                   check=True, env=env, capture_output=True)
    for steps in (2, 4):
        done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                               "-m", "lmforge", *pretrain_args(real_shards, tmp_path / "fsdp", 2, steps,
                                                               "--optimizer", optimizer, "--fsdp")],
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


# Matrices of two shapes: 3 of one (not a multiple of 2 processes) with 5 rows (row shards of 3 and 2), 1 of the other
# (one process orthogonalizes nothing of that shape, and the rotation makes it the one that did less of the first).
MUON_SHAPES = [(5, 4), (5, 4), (3, 6), (5, 4)]


def _muon_steps(params: list, grads: list, to_grad) -> None:
    from lmforge.train.optim import Muon

    opt = Muon(params, lr=0.05, weight_decay=0.1)
    for step_grads in grads:
        for p, g in zip(params, step_grads):
            p.grad = to_grad(g)
        opt.step()


def _muon_worker(rank: int, world: int, init_file: str, sharded: bool, out: str) -> None:
    """One process of a 2-process Muon run; rank 0 saves the final matrices and every rank its orthogonalized
    matrix count."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    import lmforge.train.optim as optim

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    counted, original = [], optim.orthogonalize
    optim.orthogonalize = lambda g, steps=5: (counted.append(g.shape[0]), original(g, steps))[1]
    start, grads = _muon_inputs()
    if sharded:
        mesh = init_device_mesh("cpu", (world,))
        params = [torch.nn.Parameter(distribute_tensor(t, mesh, [Shard(0)])) for t in start]
        _muon_steps(params, grads, lambda g: distribute_tensor(g, mesh, [Shard(0)]))
        final = [p.full_tensor() for p in params]
    else:
        params = [torch.nn.Parameter(t) for t in start]
        _muon_steps(params, grads, lambda g: g)
        final = [p.detach() for p in params]
    torch.save({"final": final, "orthogonalized": sum(counted)}, f"{out}.{rank}")
    dist.barrier()  # leave together (lmforge.train.dist.cleanup's reason)
    dist.destroy_process_group()


def _muon_inputs() -> tuple[list, list]:
    gen = torch.Generator().manual_seed(3)
    start = [torch.randn(s, generator=gen) for s in MUON_SHAPES]
    grads = [[torch.randn(s, generator=gen) for s in MUON_SHAPES] for _ in range(3)]
    return start, grads


@pytest.mark.timeout(120)
@pytest.mark.parametrize("sharded", [False, True], ids=["ddp", "fsdp2"])
def test_distributed_muon_shares_the_work_and_equals_one_process(tmp_path, sharded):
    import torch.multiprocessing as mp

    start, grads = _muon_inputs()
    params = [torch.nn.Parameter(t) for t in start]
    _muon_steps(params, grads, lambda g: g)
    mp.spawn(_muon_worker, args=(2, str(tmp_path / "store"), sharded, str(tmp_path / "out")), nprocs=2)
    ranks = [torch.load(tmp_path / f"out.{r}", weights_only=True) for r in (0, 1)]
    for expected, got in zip(params, ranks[0]["final"]):
        torch.testing.assert_close(got, expected.detach(), rtol=1e-5, atol=1e-6)
    # 3 steps x 4 matrices: shape (5, 4) splits 2 + 1, then the rotation gives shape (3, 6) to rank 1: 2 + 2
    assert [r["orthogonalized"] for r in ranks] == [3 * 2, 3 * 2]

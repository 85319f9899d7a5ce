"""Hostile flags: absurd or malformed values are refused with exit code 2 and one line naming the flag (or the
field), no traceback, and nothing written."""

from __future__ import annotations

import pytest
from hostile import assert_refused, run_cli, tree_digest

from test_train import real_shards  # noqa: F401 - the fixture: shards from the real tokenizer

TINY_MODEL = ["--model", "n_layer=1", "--model", "n_embd=32", "--model", "n_head=2", "--model", "block_size=32"]

TRAIN_ROWS = [
    (["--keep-checkpoints", "-1"], "--keep-checkpoints"),
    (["--device", "tpu"], "--device"),
    (["--model", "n_embd=-128"], "n_embd"),
    (["--model", "n_head=0"], "n_head"),
    (["--model", "block_size=1000000000"], "block_size"),
    (["--model", "vocab_size=1e9"], "vocab_size"),
    (["--model", "rope_theta=nan"], "rope_theta"),
    (["--model", "nosuchfield=1"], "nosuchfield"),
    (["--model", "n_layer"], "--model"),
    (["--preset", "nosuch"], "--preset"),
    (["--lr", "-1"], "--lr"),
    (["--lr", "nan"], "--lr"),
    (["--lr", "inf"], "--lr"),
    (["--embed-lr", "0"], "--embed-lr"),
    (["--muon-lr", "-0.1"], "--muon-lr"),
    (["--max-steps", "-5"], "--max-steps"),
    (["--max-steps", "1e3"], "--max-steps"),
    (["--batch-size", "0"], "--batch-size"),
    (["--grad-accum", "0"], "--grad-accum"),
    (["--seq-len", "0"], "--seq-len"),
    (["--seq-len", "64"], "--seq-len"),  # longer than the model's block_size of 32
    (["--warmup-steps", "-1"], "--warmup-steps"),
    (["--time-budget", "nan"], "--time-budget"),
    (["--decay-start-frac", "2"], "--decay-start-frac"),
    (["--min-lr-frac", "-0.5"], "--min-lr-frac"),
    (["--beta1", "1"], "--beta1"),
    (["--grad-clip", "-1"], "--grad-clip"),
    (["--eval-every", "-1"], "--eval-every"),
    (["--log-every", "0"], "--log-every"),
    (["--seed", "-1"], "--seed"),
    (["--seed", "99999999999999999999999"], "--seed"),
    (["--peak-flops", "-1"], "--peak-flops"),
    (["--fsdp"], "--fsdp"),  # Muon (the default optimizer) needs whole matrices
    (["--dtype", "float8"], "--dtype"),
    (["--threads", "0"], "--threads"),
    (["--init-from", "/nonexistent/run"], "/nonexistent/run"),
]


@pytest.mark.parametrize("extra, culprit", TRAIN_ROWS, ids=[" ".join(r[0]) for r in TRAIN_ROWS])
def test_flags_train_pretrain(real_shards, tmp_path, extra, culprit):  # noqa: F811
    out = tmp_path / "run"
    before = tree_digest(real_shards)
    outcome = run_cli(["pretrain", "--data", real_shards, "--out", out, *TINY_MODEL, "--max-steps", "2",
                       "--no-progress", "--no-tensorboard", *extra])
    assert_refused(outcome, culprit)
    assert not out.exists() and tree_digest(real_shards) == before


SFT_ROWS = [
    (["--val-frac", "2"], "--val-frac"),
    (["--conversations", "0"], "--conversations"),
    (["--pad-multiple", "0"], "--pad-multiple"),
    (["--max-val", "-1"], "--max-val"),
    (["--lr", "-1"], "--lr"),
    (["--muon-lr", "nan"], "--muon-lr"),
    (["--keep-checkpoints", "-1"], "--keep-checkpoints"),
    (["--batch-size", "0"], "--batch-size"),
    (["--max-steps", "nan"], "--max-steps"),
    (["--device", "tpu"], "--device"),
    (["--device", "cuda:x"], "--device"),
    (["--threads", "-2"], "--threads"),
]


@pytest.mark.parametrize("extra, culprit", SFT_ROWS, ids=[" ".join(r[0]) for r in SFT_ROWS])
def test_flags_sft(tmp_path, extra, culprit):
    out = tmp_path / "sft"
    assert_refused(run_cli(["sft", "--checkpoint", tmp_path / "base", "--out", out, *extra]), culprit)
    assert not out.exists()


def test_flags_sft_needs_checkpoint_and_out(tmp_path):
    assert_refused(run_cli(["sft", "--out", tmp_path / "sft"]), "--checkpoint")


MODEL_INFO_ROWS = [
    (["--gpus", "0"], "--gpus"),
    (["--gpus", "-3"], "--gpus"),
    (["--mfu", "0"], "--mfu"),
    (["--mfu", "1.5"], "--mfu"),
    (["--tflops", "-1"], "--tflops"),
    (["--tflops", "inf"], "--tflops"),
    (["--tokens", "nan"], "--tokens"),
    (["--tokens", "-1e9"], "--tokens"),
    (["--usd-per-gpu-hour", "-1"], "--usd-per-gpu-hour"),
    (["--preset", "nosuch"], "--preset"),
]


@pytest.mark.parametrize("extra, culprit", MODEL_INFO_ROWS, ids=[" ".join(r[0]) for r in MODEL_INFO_ROWS])
def test_flags_model_info(extra, culprit):
    assert_refused(run_cli(["model", "info", *extra]), culprit)

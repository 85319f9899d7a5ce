"""Pretraining: loader, optimizers, schedule, the loop (overfit, exact resume), the CLI, and bad input."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from lmforge.tokenizer.shards import TokenShards, make_index, shard_entry, write_shard
from lmforge.train import TrainConfig, train
from lmforge.train.loader import ShardBatches, ValidationWindows
from lmforge.train.optim import orthogonalize
from lmforge.train.schedule import lr_multiplier
from lmforge.utils import LmforgeError

TINY = dict(vocab_size=64, n_layer=2, n_head=2, n_embd=32, block_size=32)
WORDS = "the a module function returns value of list string object class method name file path data".split()


def write_synthetic_shards(directory: Path, vocab: int = 64, docs: int = 60, seed: int = 0,
                           dtype: str = "uint16") -> Path:
    """Shards of documents that each repeat one of four motifs (disjoint token sets), so the next token follows
    from the current one and a tiny model learns them in a few dozen steps."""
    rng = np.random.default_rng(seed)
    motifs = rng.permutation(np.arange(1, vocab))[:20].reshape(4, 5)
    splits = {}
    for split, n in (("train", docs), ("val", max(4, docs // 10))):
        parts, offsets, pos = [], [], 0
        for _ in range(n):
            motif = motifs[rng.integers(0, 4)]
            doc = np.concatenate([[0], np.tile(motif, 30)[:int(rng.integers(40, 120))]])
            parts.append(doc)
            offsets.append(pos)
            pos += len(doc)
        write_shard(directory / f"{split}_00000.bin", np.concatenate(parts).astype(dtype))
        splits[split] = [shard_entry(f"{split}_00000.bin", pos, offsets)]
    (directory / "index.json").write_text(json.dumps(make_index(dtype, vocab, 0, "none", splits)))
    return directory


def small_cfg(**kw) -> TrainConfig:
    base = dict(model_overrides=TINY, batch_size=4, max_steps=12, warmup_steps=2, eval_every=6, eval_batches=2,
                checkpoint_every=0, progress=False, tensorboard=False, seed=7)
    return TrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    return write_synthetic_shards(tmp_path_factory.mktemp("shards"))


def sources(directory: Path, cfg: TrainConfig, seq_len: int = 32):
    train_split = TokenShards(directory, "train", check_tokenizer=False)
    val_split = TokenShards(directory, "val", check_tokenizer=False)
    return (ShardBatches(train_split, cfg.batch_size, seq_len, seed=cfg.seed),
            ValidationWindows(val_split, cfg.batch_size, seq_len, cfg.eval_batches))


def losses(run_dir: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows}


# ---------------------------------------------------------------------------------------------------- pieces


def test_loader_is_deterministic_and_ranks_split_the_global_batch(synthetic):
    shards = TokenShards(synthetic, "train", check_tokenizer=False)
    one = ShardBatches(shards, 6, 16, seed=3)
    x1, y1 = one.next_batch()
    again = ShardBatches(shards, 6, 16, seed=3, prefetch=False)
    assert torch.equal(again.next_batch()[0], x1)
    torch.testing.assert_close(x1[:, 1:], y1[:, :-1])  # y is x shifted by one token
    halves = [ShardBatches(shards, 3, 16, seed=3, rank=r, world_size=2).next_batch()[0] for r in (0, 1)]
    assert torch.equal(torch.cat(halves), x1)
    other_seed = ShardBatches(shards, 6, 16, seed=4).next_batch()[0]
    assert not torch.equal(other_seed, x1)
    aligned = ShardBatches(shards, 6, 16, seed=3, align="bos").next_batch()[0]
    assert bool((aligned[:, 0] == shards.bos_id).all())
    state = one.state_dict()
    x2, _ = one.next_batch()
    fresh = ShardBatches(shards, 6, 16, seed=3)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.next_batch()[0], x2)
    with pytest.raises(LmforgeError, match="batch_size"):
        ShardBatches(shards, 5, 16, seed=3).load_state_dict(state)


def test_validation_windows_tile_the_split(synthetic):
    val = TokenShards(synthetic, "val", check_tokenizer=False)
    windows = ValidationWindows(val, 2, 16)
    ys = torch.cat([y.reshape(-1) for _, y in windows()])
    stream = torch.from_numpy(val.tokens(0).astype(np.int64))
    assert torch.equal(ys, stream[1:1 + len(ys)])
    halves = [list(ValidationWindows(val, 2, 16, rank=r, world_size=2)()) for r in (0, 1)]
    assert sum(len(h) for h in halves) == len(list(windows()))


def test_schedule_warms_up_then_decays_to_the_floor():
    cfg = TrainConfig(max_steps=100, warmup_steps=10, decay="cosine", min_lr_frac=0.1)
    mults = [lr_multiplier(s, cfg) for s in range(100)]
    assert mults[0] == pytest.approx(0.1) and mults[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(mults[9:], mults[10:]))
    assert mults[-1] == pytest.approx(0.1, abs=0.01)
    lin = TrainConfig(max_steps=100, warmup_steps=0, decay="linear", decay_start_frac=0.5)
    assert lr_multiplier(40, lin) == 1.0 and lr_multiplier(75, lin) == pytest.approx(0.5)


def test_muon_update_is_nearly_orthogonal():
    g = torch.randn(32, 96)
    o = orthogonalize(g)
    s = torch.linalg.svdvals(o)
    assert s.min() > 0.5 and s.max() < 1.3  # singular values pushed towards 1 (not exactly: Muon does not need it)
    assert orthogonalize(g.T).shape == (96, 32)


# ------------------------------------------------------------------------------------------------- the loop


@pytest.mark.timeout(120)
@pytest.mark.parametrize("optimizer", ["muon", "adamw"])
def test_loss_falls_on_a_tiny_overfit(synthetic, tmp_path, optimizer):
    cfg = small_cfg(max_steps=40, optimizer=optimizer, lr=3e-3 if optimizer == "muon" else 1e-2, eval_every=40)
    data, val = sources(synthetic, cfg)
    summary = train(cfg, data, val, tmp_path / "run")
    curve = losses(tmp_path / "run")
    assert curve[1] > 3.8  # about log(64) at init
    assert summary["loss"] < curve[1] - 1.5, curve
    assert summary["val_loss"] < 3.0
    assert Path(summary["loss_plot"]).is_file()


class CrashAfter:
    """A batch source that dies (like a killed process) after handing out `n` micro-batches."""

    def __init__(self, inner, n):
        self.inner, self.n = inner, n

    def next_batch(self):
        if self.inner.batches >= self.n:
            raise KeyboardInterrupt
        return self.inner.next_batch()

    def state_dict(self):
        return self.inner.state_dict()

    def load_state_dict(self, state):
        self.inner.load_state_dict(state)


@pytest.mark.timeout(120)
def test_resume_continues_bit_for_bit(synthetic, tmp_path):
    cfg = small_cfg(max_steps=10, grad_accum=2, checkpoint_every=4, keep_checkpoints=1)
    data, val = sources(synthetic, cfg)
    whole = train(cfg, data, val, tmp_path / "whole")
    data, val = sources(synthetic, cfg)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, CrashAfter(data, 2 * 6 + 1), val, tmp_path / "cut")  # dies in step 7, after the step-4 save
    assert max(losses(tmp_path / "cut")) == 6
    data, val = sources(synthetic, cfg)
    resumed = train(cfg, data, val, tmp_path / "cut")
    assert losses(tmp_path / "cut") == losses(tmp_path / "whole")  # rows 5-6 rewritten, 7-10 new: all identical
    assert resumed["loss"] == whole["loss"] and resumed["val_loss"] == whole["val_loss"]
    from safetensors.torch import load_file

    a = load_file(Path(whole["checkpoint"]) / "model.safetensors")
    b = load_file(Path(resumed["checkpoint"]) / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [p.name for p in (tmp_path / "cut" / "ckpt").iterdir()] == ["step_0000010"]  # keep_checkpoints=1


class Wrapped:
    """A batch source that changes another's batches; its position is the inner source's (for checkpoints)."""

    def __init__(self, inner):
        self.inner = inner

    def state_dict(self):
        return self.inner.state_dict()

    def load_state_dict(self, s):
        self.inner.load_state_dict(s)


@pytest.mark.timeout(60)
def test_masked_targets_only_count_where_supervised(synthetic, tmp_path):
    """SFT's contract: y = -1 positions add nothing to the loss; a batch with no target at all is an error."""

    class Masked(Wrapped):
        def __init__(self, inner, keep_from):
            super().__init__(inner)
            self.keep_from = keep_from

        def next_batch(self):
            x, y = self.inner.next_batch()
            y = y.clone()
            y[:, :self.keep_from] = -1
            return x, y

    cfg = small_cfg(max_steps=3, eval_every=0)
    data, _ = sources(synthetic, cfg)
    assert train(cfg, Masked(data, 20), None, tmp_path / "a")["loss"] > 0
    data, _ = sources(synthetic, cfg)
    with pytest.raises(LmforgeError, match="no target"):
        train(cfg, Masked(data, 32), None, tmp_path / "b")


def test_throughput_counts_the_positions_each_batch_really_has(synthetic, tmp_path):
    """SFT batches are padded to their longest conversation, not to seq_len: tokens/s and MFU count what ran."""

    class Shrinking(Wrapped):
        calls = 0

        def next_batch(self):
            x, y = self.inner.next_batch()
            self.calls += 1
            width = 8 if self.calls % 2 else 16
            return x[:, :width], y[:, :width]

    cfg = small_cfg(max_steps=4, eval_every=0)
    data, _ = sources(synthetic, cfg)
    summary = train(cfg, Shrinking(data), None, tmp_path / "run")
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "tokens" in r and "loss" in r]
    assert [r["tokens"] for r in steps] == [4 * 8, 4 * 8 + 4 * 16, 2 * 4 * 8 + 4 * 16, 2 * (4 * 8 + 4 * 16)]
    assert summary["tokens"] == 2 * (4 * 8 + 4 * 16)


# --------------------------------------------------------------------------------------------- the CLI and errors


@pytest.fixture(scope="module")
def real_shards(tmp_path_factory) -> Path:
    """Shards written by the real tokenizer and tokenize step, from a small synthetic corpus."""
    from lmforge.tokenizer.encode_corpus import TokenizeConfig, tokenize_files
    from lmforge.tokenizer import Tokenizer

    root = tmp_path_factory.mktemp("real")
    rng = np.random.default_rng(0)
    docs = [" ".join(rng.choice(WORDS, size=int(rng.integers(30, 80)))) + "." for _ in range(120)]
    with gzip.open(root / "docs.jsonl.gz", "wt") as f:
        for i, d in enumerate(docs):
            f.write(json.dumps({"id": f"d{i}", "text": d}) + "\n")
    Tokenizer.train(docs, 300).save(root / "tokenizer")
    tokenize_files([root / "docs.jsonl.gz"], root / "tokenizer", root / "shards",
                   TokenizeConfig(min_val_tokens=600, max_val_fraction=0.2))
    return root / "shards"


@pytest.mark.timeout(120)
def test_cli_pretrains_resumes_and_reports(real_shards, tmp_path, capsys):
    from lmforge.cli import main

    args = ["pretrain", "--data", str(real_shards), "--out", str(tmp_path / "run"), "--model", "n_layer=1",
            "--model", "n_embd=32", "--model", "n_head=2", "--model", "block_size=32", "--batch-size", "4",
            "--eval-every", "4", "--eval-batches", "2", "--no-progress", "--no-tensorboard", "--threads", "1"]
    assert main(args + ["--max-steps", "4"]) == 0
    assert main(args + ["--max-steps", "6"]) == 0  # same --out: resumes at step 4
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert all("loss" in r and "tokens_per_s" in r for r in rows)
    assert rows[-1]["val_bpb"] > 0 and rows[3]["val_loss"] > 0
    assert '"run_dir"' in capsys.readouterr().out  # the summary is printed as JSON
    assert (tmp_path / "run" / "loss.png").is_file()
    samples = [json.loads(line) for line in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
    assert samples[-1]["step"] == 6 and samples[-1]["samples"][0]["continuation"]
    ckpt = tmp_path / "run" / "ckpt" / "step_0000006"
    assert (ckpt / "tokenizer").is_dir() and (ckpt / "optimizer.pt").is_file()
    from lmforge.checkpoint import load_model

    model, _ = load_model(tmp_path / "run")
    assert model.config.vocab_size == TokenShards(real_shards, "train").vocab_size


@pytest.mark.timeout(120)
def test_resume_refuses_a_changed_model_or_batch_and_changes_nothing(real_shards, tmp_path, capsys):
    """A run folder holding a tiny run is not silently continued as another model (or batch geometry): the
    message names each difference and the folder is untouched; --max-steps may grow."""
    from hostile import assert_refused, run_cli, tree_digest

    args = ["pretrain", "--data", str(real_shards), "--out", str(tmp_path / "run"), "--model", "n_layer=1",
            "--model", "n_embd=32", "--model", "n_head=2", "--model", "block_size=32", "--batch-size", "4",
            "--eval-every", "0", "--no-progress", "--no-tensorboard", "--threads", "1", "--max-steps", "2"]
    assert run_cli(args).code == 0
    before = tree_digest(tmp_path / "run")
    changed = run_cli(args + ["--model", "n_embd=64", "--model", "n_layer=2"])
    assert_refused(changed, "model n_layer 1 vs 2; model n_embd 32 vs 64")
    small = [a for a in args if a != "--model" and "=" not in a] + ["--preset", "small"]  # the command
    assert_refused(run_cli(small), "model n_layer 1 vs 6")
    assert_refused(run_cli(args + ["--batch-size", "8", "--seed", "4"]), "--batch-size 4 vs 8; --seed 1337 vs 4")
    assert tree_digest(tmp_path / "run") == before  # train_config.json still says what was trained
    assert run_cli(args + ["--max-steps", "3", "--lr", "1e-3", "--eval-every", "1"]).code == 0  # run-length, rates
    assert json.loads((tmp_path / "run" / "train_config.json").read_text())["train"]["max_steps"] == 3


def test_bad_inputs_give_errors_that_name_the_file(synthetic, tmp_path):
    from lmforge.train.pretrain import run_pretrain

    # shards whose files were written in another dtype than the index says
    wrong = tmp_path / "wrong"
    shutil.copytree(synthetic, wrong)
    index = json.loads((wrong / "index.json").read_text())
    index["dtype"] = "uint32"
    (wrong / "index.json").write_text(json.dumps(index))
    with pytest.raises(LmforgeError, match="train_00000.bin.*wrong dtype"):
        TokenShards(wrong, "train", check_tokenizer=False)
    # a shard holding ids beyond the vocabulary its index declares
    damaged = tmp_path / "damaged"
    shutil.copytree(synthetic, damaged)
    arr = np.fromfile(damaged / "train_00000.bin", dtype=np.uint16)
    arr[1::2] = 999
    arr.tofile(damaged / "train_00000.bin")
    with pytest.raises(LmforgeError, match="train_00000.bin.*corrupt"):
        ShardBatches(TokenShards(damaged, "train", check_tokenizer=False), 4, 16, prefetch=False).next_batch()
    # a context longer than the model's
    cfg = small_cfg(seq_len=64)
    data, _ = sources(synthetic, cfg, seq_len=64)
    with pytest.raises(LmforgeError, match="block_size"):
        train(cfg, data, None, tmp_path / "long")
    # shards of a larger vocabulary than the checkpoint's model
    from lmforge.train.loader import check_shards_fit

    with pytest.raises(LmforgeError, match="index.json.*vocabulary of 64"):
        check_shards_fit(TokenShards(synthetic, "train", check_tokenizer=False), 50, 16, 32)
    # shards without their tokenizer copy (the pretrain entry point insists on it)
    with pytest.raises(LmforgeError, match="tokenizer"):
        run_pretrain(synthetic, tmp_path / "x", small_cfg())


@pytest.mark.timeout(60)
def test_corrupt_training_checkpoint_is_refused(synthetic, tmp_path):
    cfg = small_cfg(max_steps=2, eval_every=0)
    data, _ = sources(synthetic, cfg)
    summary = train(cfg, data, None, tmp_path / "run")
    opt = Path(summary["checkpoint"]) / "optimizer.pt"
    opt.write_bytes(opt.read_bytes()[:200])
    data, _ = sources(synthetic, cfg)
    with pytest.raises(LmforgeError, match="optimizer.pt"):
        train(small_cfg(max_steps=4, eval_every=0), data, None, tmp_path / "run")


@pytest.mark.timeout(60)
def test_time_budget_stops_with_a_checkpoint(synthetic, tmp_path):
    cfg = small_cfg(max_steps=1000, time_budget_s=0.5, eval_every=0)
    data, val = sources(synthetic, cfg)
    summary = train(cfg, data, val, tmp_path / "run")
    assert summary["stopped_early"] and 0 < summary["step"] < 1000
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["lr_mult"] < 0.5  # the schedule followed the clock and was decaying when time ran out
    assert summary["val_loss"] is not None and Path(summary["checkpoint"]).name == f"step_{summary['step']:07d}"


# ------------------------------------------------------------------------------ throughput, peaks, output, defaults


@pytest.mark.timeout(60)
def test_throughput_excludes_a_slow_first_step_and_time_between_steps(synthetic, tmp_path, monkeypatch):
    """A first step that takes two seconds more (as compilation does) is reported as warm-up and compile time, and the
    steady-state tokens/s is that of the other steps, not the whole run's average."""
    import time

    def fake_compile(model):
        calls = []

        def forward(*args, **kwargs):
            if not calls:
                time.sleep(2.0)
            calls.append(1)
            return model(*args, **kwargs)
        return forward

    monkeypatch.setattr(torch, "compile", fake_compile)
    cfg = small_cfg(max_steps=12, compile=True, eval_every=4, peak_flops="1e12")
    data, val = sources(synthetic, cfg)
    summary = train(cfg, data, val, tmp_path / "run")
    assert summary["warmup_steps"] == 3 and summary["steady_steps"] == 9
    assert summary["warmup_s"] >= 2.0 and summary["compile_s"] >= 1.5  # the excess over steady steps (noisy)
    whole_run = summary["tokens"] / summary["seconds"]
    assert summary["tokens_per_s"] > 3 * whole_run
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steady = sum(r["tokens"] - p["tokens"] for p, r in zip(rows[2:], rows[3:])) / \
        sum((r["tokens"] - p["tokens"]) / r["tokens_per_s"] for p, r in zip(rows[2:], rows[3:]))
    assert summary["tokens_per_s"] == pytest.approx(steady, rel=0.02)
    assert summary["eval_s"] > 0 and summary["checkpoint_s"] > 0
    assert summary["peak_flops"] == 1e12 and summary["peak_source"] == "given by --peak-flops"
    assert 0 < summary["mfu"] < 1


def test_peak_flops_measured_on_cpu_and_stated():
    from lmforge.train.logging import resolve_peak

    peak = resolve_peak("measure", torch.device("cpu"), torch.float32)
    assert peak.flops > 1e8 and peak.source.startswith("measured, cpu, float32")
    assert resolve_peak("2.5e14", torch.device("cpu"), torch.float32).flops == 2.5e14


@pytest.mark.timeout(60)
def test_banner_and_evaluation_lines_are_printed(synthetic, tmp_path, capsys):
    cfg = small_cfg(max_steps=6, eval_every=3, progress=True)
    data, val = sources(synthetic, cfg)
    train(cfg, data, val, tmp_path / "run")
    out = capsys.readouterr().out
    from lmforge.model import GPT, GPTConfig

    params = GPT(GPTConfig(**TINY)).num_params()
    assert f"new model: {params / 1e6:,.2f}M parameters" in out and "128 tokens per step = 4 rows x 32 tokens" in out
    assert f"device cpu, {torch.get_num_threads()} thread(s), float32" in out
    assert "MFU against" in out and "measured, cpu" in out
    assert "[eval @ 3] val_loss" in out and "[eval @ 6] val_loss" in out


def test_samples_are_cut_at_a_character_boundary():
    """Byte-level tokens that split a character between prompt and continuation (or end mid-character) never
    print U+FFFD: the character goes whole to the continuation, an unfinished last one is left out."""
    from lmforge.tokenizer import Tokenizer
    from lmforge.train.trainer import sample_texts

    tok = Tokenizer.train(["plain ascii words only"], 266)  # no merges: token i is byte i
    euro = "€".encode()  # 3 bytes: raw byte tokens 226, 130, 172
    prompt = list(b"price ") + [euro[0], euro[1]]
    text, cont = sample_texts(tok, prompt, [euro[2]] + list(b" ok") + [0xE2])
    assert (text, cont) == ("price ", "€ ok")
    assert "\ufffd" not in text + cont


def test_activation_checkpointing_gives_the_same_gradients():
    from lmforge.model import GPT, GPTConfig
    from lmforge.train.dist import checkpoint_activations

    torch.manual_seed(0)
    plain = GPT(GPTConfig(**TINY))
    recomputed = GPT(GPTConfig(**TINY))
    recomputed.load_state_dict(plain.state_dict())
    checkpoint_activations(recomputed)
    x = torch.randint(0, 64, (3, 16))
    for model in (plain, recomputed):
        model(x, x.roll(-1, 1), reduction="sum", return_logits=False)[1].backward()
    assert recomputed.state_dict().keys() == plain.state_dict().keys()
    for (name, a), b in zip(plain.named_parameters(), recomputed.parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.timeout(60)
def test_activation_checkpointing_flag_trains_the_same_run(synthetic, tmp_path, monkeypatch):
    import torch.utils.checkpoint

    recomputed, original = [], torch.utils.checkpoint.checkpoint
    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint", lambda *a, **k: recomputed.append(1) or original(*a, **k))
    runs = {}
    for flag in (False, True):
        cfg = small_cfg(max_steps=4, eval_every=0, activation_checkpointing=flag)
        data, _ = sources(synthetic, cfg)
        train(cfg, data, None, tmp_path / str(flag))
        runs[flag] = losses(tmp_path / str(flag))
    assert runs[True] == pytest.approx(runs[False], rel=1e-5)
    assert len(recomputed) == 4 * TINY["n_layer"]  # the flagged run's blocks, every step


def test_adamw_matrix_rates_shrink_with_width_and_muon_keeps_its_rate():
    """The width rule: AdamW's rate on the head and hidden matrices is lr * base_width / n_embd above the base
    width; embeddings and norm gains keep lr; a tied embedding is the head and takes the head's rate."""
    from lmforge.model import GPT, GPTConfig
    from lmforge.train.optim import build_optimizers

    def rates(optimizer, **model):
        with torch.device("meta"):
            gpt = GPT(GPTConfig(**{**TINY, **model}))
        opts = build_optimizers(gpt, TrainConfig(optimizer=optimizer, lr=8e-3, muon_lr=0.04))
        return {id(p): g["base_lr"] for o in opts for g in o.param_groups for p in g["params"]}, gpt

    r, gpt = rates("adamw", n_embd=512, n_head=4)
    assert r[id(gpt.layers[0].mlp.w_up.weight)] == r[id(gpt.lm_head.weight)] == pytest.approx(8e-3 / 4)
    assert r[id(gpt.tok_emb.weight)] == r[id(gpt.norm.weight)] == 8e-3
    r, gpt = rates("muon", n_embd=512, n_head=4, tie_embeddings=True)
    assert r[id(gpt.layers[0].attn.wq.weight)] == 0.04 and r[id(gpt.tok_emb.weight)] == pytest.approx(8e-3 / 4)
    r, gpt = rates("adamw")  # narrower than the base width: the tuned rate, not a higher one
    assert r[id(gpt.lm_head.weight)] == 8e-3


@pytest.mark.timeout(60)
def test_wandb_logs_offline_or_is_refused_clearly(synthetic, tmp_path, monkeypatch, real_shards):
    """--wandb without the package: one line naming the flag, nothing written. With it (a stand-in module that
    records the calls): an offline run in the run folder gets every metrics row."""
    import importlib.machinery
    import sys
    import types

    from hostile import assert_refused, run_cli

    monkeypatch.setitem(sys.modules, "wandb", None)  # what an install without wandb looks like to importlib
    args = ["pretrain", "--data", str(real_shards), "--out", str(tmp_path / "refused"), "--wandb", "--no-progress",
            "--max-steps", "1"]
    assert_refused(run_cli(args), "--wandb")
    assert not (tmp_path / "refused").exists()
    calls = []
    fake = types.ModuleType("wandb")
    fake.__spec__ = importlib.machinery.ModuleSpec("wandb", None)

    class Run:
        def log(self, scalars, step):
            calls.append(("log", step, scalars))

        def finish(self):
            calls.append(("finish",))

    fake.init = lambda **kw: calls.append(("init", kw)) or Run()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    cfg = small_cfg(max_steps=3, eval_every=3, wandb=True)
    data, val = sources(synthetic, cfg)
    train(cfg, data, val, tmp_path / "run")
    assert calls[0][1]["mode"] == "offline" and calls[0][1]["dir"] == str(tmp_path / "run")
    assert [c[1] for c in calls if c[0] == "log"] == [1, 2, 3] and "val_loss" in calls[-2][2]
    assert calls[-1] == ("finish",)


def test_mfu_counts_the_output_head_of_a_tied_model():
    """A tied embedding is the head too: the same matmuls as an untied model, so the same FLOPs per token (the
    count left the head out, and the MFU of tied presets such as gpt2 read about a quarter too low)."""
    from lmforge.model import GPT, GPTConfig

    tied, untied = (GPT(GPTConfig(**TINY, tie_embeddings=t)) for t in (True, False))
    assert tied.flops_per_token() == untied.flops_per_token()


def test_fused_adamw_step_changes_weights_key():
    """The fused kernel leaves version counters alone; `fused_adamw`'s hook bumps them, so an engine's prepared
    weights (keyed on them) are rebuilt after every step and sampling follows training."""
    from lmforge.model import GPT, GPTConfig, weights_key
    from lmforge.train.optim import fused_adamw

    model = GPT(GPTConfig(vocab_size=64, n_layer=1, n_head=2, n_embd=16, block_size=16))
    optimizer = fused_adamw(model.parameters(), "cpu", lr=1e-2)
    model(torch.randint(0, 64, (2, 8)), torch.randint(0, 64, (2, 8)))[1].backward()
    before = weights_key(model)
    optimizer.step()
    assert optimizer.defaults["fused"] and weights_key(model) != before

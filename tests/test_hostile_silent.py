"""Hostile inputs, class "silent" of issue 13: what used to give a silently wrong output is now either correct or
an error naming the file."""

from __future__ import annotations

import gzip
import json
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lmforge.utils import LmforgeError, read_json, write_json
from hostile import assert_refused, run_cli
import torch
from lmforge.checkpoint import checkpoint_tokenizer_dir, load_config, load_model, save_model
from lmforge.model import GPT, GPTConfig
from lmforge.tokenizer import Tokenizer
from lmforge.utils import LmforgeError

REPO = Path(__file__).resolve().parent.parent
WORDS = ("the and of to with that this from have for page word crawl index shard token model train paper river "
         "garden letter window market summer winter number system").split()
TIME_FIELDS = {"seconds", "signature_seconds", "docs_per_second", "tokens_per_second"}  # by nature differ per run


def _data_inputs(folder: Path) -> Path:
    """Two JSONL files of random-word documents (their top n-grams tie, which once was broken by `hash()`), one
    duplicated document and one with an e-mail address."""
    folder.mkdir()
    rng = random.Random(1)
    words = [w + s for w in WORDS for s in ("", "s", "ed", "ing")]
    for f in range(2):
        rows = [{"id": f"f{f}-{i}", "url": f"https://example.org/{f}/{i}",
                 "text": ". ".join(" ".join(rng.choice(words) for _ in range(12)) for _ in range(rng.randrange(6, 20)))
                 + "."} for i in range(25)]
        rows.append({"id": f"f{f}-dup", "text": "the same page copied onto two sites, word for word, " * 4})
        rows.append({"id": f"f{f}-mail", "text": "write to someone@example.com about it " * 12})
        with gzip.open(folder / f"part{f}.jsonl.gz", "wt", encoding="utf-8") as out:
            out.writelines(json.dumps(r) + "\n" for r in rows)
    return folder


def _config(folder: Path) -> Path:
    path = folder / "chain.json"
    path.write_text(json.dumps({"name": "silent", "steps": [
        {"step": "gopher_repetition"}, {"step": "gopher_quality", "min_doc_words": 10}, {"step": "dedup"},
        {"step": "pii"}]}))
    return path


def _without_times(obj):
    if isinstance(obj, dict):
        return {k: _without_times(v) for k, v in obj.items() if k not in TIME_FIELDS}
    if isinstance(obj, list):
        return [_without_times(v) for v in obj]
    return obj


def _run_outputs(out: Path) -> dict[str, object]:
    """Every file of a run: bytes, except JSON without its time fields and report.md without its time columns."""
    files = {}
    for p in sorted(q for q in out.rglob("*") if q.is_file()):
        rel = str(p.relative_to(out))
        if p.suffix == ".json":  # the report names the output files by their absolute path: the run folder's name
            files[rel] = _without_times(json.loads(p.read_text().replace(str(out), "OUT")))
        elif p.name == "report.md":  # the header's total seconds and each step row's seconds and docs/s
            text = re.sub(r"\d+(\.\d+)? s\. Kept", "T s. Kept", p.read_text())
            files[rel] = re.sub(r"\| [\d.]+ \| ([\d.]+|-) \|$", "| T | T |", text, flags=re.M)
        else:
            files[rel] = p.read_bytes()
    return files


@pytest.mark.timeout(180)
def test_silent_data_run_is_byte_identical_across_hash_seeds(tmp_path):
    """Two identical `data run`s in fresh interpreters with different PYTHONHASHSEED give the same bytes in every
    file, metadata included; only fields that are times by nature (seconds, docs/s) are left out."""
    inputs = _data_inputs(tmp_path / "in")
    config = _config(tmp_path)
    runs = []
    for seed in ("1", "2"):
        out = tmp_path / f"run{seed}"
        env = {**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": str(REPO), "LMFORGE_THREADS": "1"}
        subprocess.run([sys.executable, "-m", "lmforge", "data", "run", "--input", str(inputs), "--out", str(out),
                        "--config", str(config), "--workers", "2"], env=env, check=True, capture_output=True,
                       timeout=150)
        runs.append(_run_outputs(out))
    assert runs[0].keys() == runs[1].keys()
    assert [k for k in runs[0] if runs[0][k] != runs[1][k]] == []
    docs = [json.loads(line) for p in sorted((tmp_path / "run1" / "documents").iterdir()) for line in gzip.open(p, "rt")]
    assert len(docs) >= 40 and "top_2_gram" in docs[0]["metadata"]["gopher_repetition"]  # tie-prone, in the bytes


@pytest.mark.timeout(120)
def test_silent_data_deleted_output_is_rebuilt_on_rerun(tmp_path):
    """A finished run whose kept-documents file was deleted (or truncated) rebuilds it on rerun, byte for byte,
    instead of reporting documents it no longer has; the same for a deleted token shard."""
    from lmforge.data.pipeline import PipelineConfig, run_pipeline
    from lmforge.tokenizer.encode_corpus import TokenizeConfig, tokenize_files
    from lmforge.tokenizer import Tokenizer

    inputs = _data_inputs(tmp_path / "in")
    config = PipelineConfig.load(_config(tmp_path))
    out = tmp_path / "out"
    first = run_pipeline([inputs], out, config, workers=1)
    before = {p: p.read_bytes() for p in (out / "documents").iterdir()}
    victims = sorted(before)[:2]
    victims[0].unlink()
    victims[1].write_bytes(before[victims[1]][:20])
    again = run_pipeline([inputs], out, config, workers=1)
    assert {p: p.read_bytes() for p in (out / "documents").iterdir()} == before
    assert again["kept"] == first["kept"]

    tok_dir = tmp_path / "tok"
    Tokenizer.train([f"w{i} w{i + 1} w{i * 7}" for i in range(300)], vocab_size=300).save(tok_dir)
    docs = sorted(str(p) for p in before)
    shards = tmp_path / "shards"
    cfg = TokenizeConfig(min_val_tokens=0, val_fraction=0.2)
    tokenize_files(docs, tok_dir, shards, cfg)
    bins = {p: p.read_bytes() for p in shards.glob("*.bin")}
    (shards / "val_00000.bin").unlink()
    tokenize_files(docs, tok_dir, shards, cfg)
    assert {p: p.read_bytes() for p in shards.glob("*.bin")} == bins


def _shards(tmp_path: Path) -> tuple[Path, dict]:
    from lmforge.tokenizer.encode_corpus import TokenizeConfig, tokenize_files
    from lmforge.data.writers import JsonlGzWriter
    from lmforge.data.document import Document
    from lmforge.tokenizer import Tokenizer

    tok_dir = tmp_path / "tok"
    texts = [f"word{i % 17} and word{i % 5} then more{i % 11}" for i in range(200)]
    Tokenizer.train(texts, vocab_size=300).save(tok_dir)
    with JsonlGzWriter(tmp_path / "d.jsonl.gz") as w:
        for i, t in enumerate(texts):
            w.write(Document(text=t, id=f"d{i}"))
    out = tmp_path / "shards"
    tokenize_files([tmp_path / "d.jsonl.gz"], tok_dir, out, TokenizeConfig(min_val_tokens=0, val_fraction=0.2))
    return out, read_json(out / "index.json")


def test_silent_data_shards_are_checked_before_use(tmp_path):
    """The validation split is range-checked like the training split, and an index that claims a vocabulary or
    offsets its files and tokenizer do not have is refused, naming the file."""
    from lmforge.tokenizer.shards import TokenShards

    out, index = _shards(tmp_path)
    TokenShards(out, "train"), TokenShards(out, "val")
    val = out / "val_00000.bin"
    good = val.read_bytes()
    arr = np.frombuffer(good, dtype=np.uint16).copy()
    arr[-1] = index["vocab_size"] + 5  # an id beyond the vocabulary, in the validation split
    arr.tofile(val)
    with pytest.raises(LmforgeError, match="val_00000.bin.*vocab_size"):
        TokenShards(out, "val", check_tokenizer=False)
    val.write_bytes(good)
    for bad, match in [(dict(index, vocab_size=index["vocab_size"] + 1000), "vocab_size.*tokenizer"),
                       (dict(index, bos_id=0), "bos_id"),
                       (dict(index, vocab_size="many"), "vocab_size"),
                       (dict(index, splits={"train": [dict(index["splits"]["train"][0], file="../d.jsonl.gz")]}),
                        "plain 'file'"),
                       (dict(index, splits={"train": [dict(index["splits"]["train"][0], tokens=-4)]}), "tokens"),
                       (dict(index, splits={"train": [dict(index["splits"]["train"][0], doc_offsets=[0, 10**9])]}),
                        "offsets"),
                       (dict(index, splits=[1, 2]), "splits")]:
        write_json(out / "index.json", bad)
        with pytest.raises(LmforgeError, match=match) as info:
            TokenShards(out, "train")
        assert "index.json" in str(info.value) or "tokenizer" in str(info.value)

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




@pytest.fixture
def checkpoint(tmp_path) -> Path:
    tok = Tokenizer.train([f"hello world, this is text number {i}" for i in range(50)], 280)
    tok.save(tmp_path / "tok")
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, n_layer=1, n_head=2, n_embd=32, block_size=32))
    return save_model(tmp_path / "ckpt", model, tmp_path / "tok", meta={"step": 0})


def _edit_config(ckpt: Path, change) -> None:
    meta = json.loads((ckpt / "config.json").read_text())
    change(meta)
    (ckpt / "config.json").write_text(json.dumps(meta))


def _export(ckpt: Path, out: Path):
    return run_cli(["export", "params", "--checkpoint", ckpt, "--out", out])


def test_silent_checkpoint_intact_loads_and_exports(checkpoint, tmp_path):
    model, _ = load_model(checkpoint)
    assert model.config.n_embd == 32 and checkpoint_tokenizer_dir(checkpoint).is_dir()
    assert _export(checkpoint, tmp_path / "model.bin").code == 0


def test_silent_checkpoint_edited_config_is_refused(checkpoint, tmp_path):
    _edit_config(checkpoint, lambda m: m["model"].update(rope_theta=500000.0))
    with pytest.raises(LmforgeError, match="config.json was edited"):
        load_model(checkpoint)
    assert_refused(_export(checkpoint, tmp_path / "model.bin"), "config.json")
    assert not (tmp_path / "model.bin").exists()


@pytest.mark.parametrize("swap", ["replaced", "added"])
def test_silent_checkpoint_swapped_tokenizer_is_refused(checkpoint, tmp_path, swap):
    other = Tokenizer.train([f"other words entirely, {i} of them" for i in range(50)], 280)
    other.save(tmp_path / "other")
    name = "tokenizer.lmforge.json" if swap == "replaced" else "extra.json"
    (checkpoint / "tokenizer" / name).write_bytes((tmp_path / "other" / "tokenizer.lmforge.json").read_bytes())
    with pytest.raises(LmforgeError, match=name):
        checkpoint_tokenizer_dir(checkpoint)
    with pytest.raises(LmforgeError, match=name):
        load_model(checkpoint)
    assert_refused(_export(checkpoint, tmp_path / "model.bin"), name)
    assert not (tmp_path / "model.bin").exists()


def test_silent_checkpoint_absurd_block_size_is_refused_before_allocating(checkpoint):
    """A config written without its own checksum (as older checkpoints were) still passes the model's bounds:
    a block_size of 1e9 would ask for 128 GB of RoPE tables."""
    def absurd(meta):
        meta["model"]["block_size"] = 1_000_000_000
        meta["checksums"].pop("config.json")

    _edit_config(checkpoint, absurd)
    with pytest.raises(LmforgeError, match="config.json.*block_size"):
        load_config(checkpoint)
    with pytest.raises(LmforgeError, match="config.json.*block_size"):
        load_model(checkpoint)

"""Evaluation from a parameter file gives the checkpoint's numbers: multiple choice and bits per byte, and the
tokenizer rebuilt from the file's token table encodes as the original does."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hostile import assert_refused, run_cli
from params_helpers import corpus, saved_tiny_checkpoint, tiny_model, tokenizer

from lmforge.checkpoint import save_model
from lmforge.export.params import export_params
from lmforge.inference.paramfile import read_header, tokenizer_from_header
from lmforge.tokenizer.shards import make_index, shard_entry, write_shard

TEXTS = [t for t in corpus() if len(t) > 500]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A checkpoint, its fp32 and int8 parameter files, token shards cut by its tokenizer, and MC items."""
    root = tmp_path_factory.mktemp("sources")
    tok, model = saved_tiny_checkpoint(root, n_kv_head=4)
    export_params(model, tok, root / "fp32.bin", "fp32")
    export_params(model, tok, root / "int8.bin", "int8", group_size=32)
    shards = root / "shards"
    splits = {}
    for split, texts in (("train", TEXTS[:4]), ("val", TEXTS[4:8])):
        docs = [[tok.bos_id] + tok.encode(t) for t in texts]
        write_shard(shards / f"{split}_00000.bin", np.concatenate(docs).astype("uint16"))
        splits[split] = [shard_entry(f"{split}_00000.bin", sum(map(len, docs)),
                                     np.cumsum([0] + [len(d) for d in docs[:-1]]))]
    tok.save(shards / "tokenizer")
    (shards / "index.json").write_text(json.dumps(make_index("uint16", tok.vocab_size, tok.bos_id, tok.hash, splits)))
    items = root / "items.jsonl"
    items.write_text("".join(json.dumps({"context": t[:60], "choices": [t[60:75], t[200:215], t[400:415]],
                                         "answer": 0}) + "\n" for t in TEXTS[:12]))
    return root


def test_tokenizer_from_the_parameter_file_encodes_as_the_original(files):
    tok = tokenizer()
    rebuilt = tokenizer_from_header(read_header(files / "fp32.bin"))
    assert rebuilt.mergeable_ranks == tok.mergeable_ranks and rebuilt.special_tokens == tok.special_tokens
    for text in TEXTS[:6]:
        assert rebuilt.encode(text) == tok.encode(text)


def _eval_json(files, *argv: str) -> dict:
    """`lmforge eval ARGV --json FILE` run to success, and the report it wrote."""
    out = run_cli(["eval", *argv, "--json", str(files / "eval.json")])
    assert out.code == 0, out.stderr
    return json.loads((files / "eval.json").read_text())


def _mc(files, *source):
    return _eval_json(files, "mc", *source, "--tasks", str(files / "items.jsonl"), "--bootstrap", "20")


def test_mc_from_a_parameter_file_equals_the_checkpoint(files):
    ckpt = _mc(files, "--checkpoint", str(files / "ckpt"))
    fp32 = _mc(files, "--params", str(files / "fp32.bin"))
    int8 = _mc(files, "--params", str(files / "int8.bin"))
    for a, b in zip(ckpt["items"], fp32["items"]):
        assert np.allclose(a["scores"]["sum"], b["scores"]["sum"], rtol=1e-4, atol=1e-3)
    assert ckpt["summary"]["tasks"] == fp32["summary"]["tasks"]
    # int8 weights move each option's log-probability a little, not the ranking of far-apart options
    diffs = [abs(x - y) for a, b in zip(ckpt["items"], int8["items"])
             for x, y in zip(a["scores"]["byte"], b["scores"]["byte"])]
    assert 0 < max(diffs) < 0.05


def _bpb(files, *source):
    return _eval_json(files, "bpb", *source, "--data", str(files / "shards"), "--batch-size", "4", "--batches", "3")


def test_bpb_from_a_parameter_file_equals_the_checkpoint(files):
    ckpt = _bpb(files, "--checkpoint", str(files / "ckpt"))
    fp32 = _bpb(files, "--params", str(files / "fp32.bin"))
    assert ckpt["val_bpb"] > 0 and fp32["val_bpb"] == pytest.approx(ckpt["val_bpb"], rel=1e-5)
    assert fp32["val_loss"] == pytest.approx(ckpt["val_loss"], rel=1e-5)
    assert _bpb(files, "--params", str(files / "int8.bin"))["val_bpb"] == pytest.approx(ckpt["val_bpb"], rel=0.01)


def test_flags_eval_sources(files, tmp_path):
    assert_refused(run_cli(["eval", "bpb", "--params", str(tmp_path / "missing.bin"), "--data",
                            str(files / "shards")]), "missing.bin")
    assert run_cli(["eval", "bpb", "--checkpoint", str(files / "ckpt"), "--params", str(files / "fp32.bin"),
                    "--data", str(files / "shards")]).code == 2
    assert_refused(run_cli(["eval", "bpb", "--params", str(files / "fp32.bin"), "--data", str(files / "shards"),
                            "--seq-len", "100000"]), "--seq-len")
    other = tokenizer(600)
    other.save(tmp_path / "tok")
    save_model(tmp_path / "ckpt", tiny_model(other.vocab_size), tmp_path / "tok")
    assert_refused(run_cli(["eval", "bpb", "--checkpoint", str(tmp_path / "ckpt"), "--data", str(files / "shards")]),
                   "another tokenizer")

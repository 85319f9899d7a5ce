"""Token shards: they decode back to the filtered text, the split is fixed, and bad shards are refused by name."""

from __future__ import annotations

import gzip
import json
import random

import numpy as np
import pytest

from lmforge.data.document import Document
from lmforge.data.pipeline import OutputConfig, PipelineConfig, run_pipeline
from lmforge.data.shards import TokenShards
from lmforge.data.tokenize import TokenizeConfig, choose_validation, split_key, tokenize_files
from lmforge.data.writers import JsonlGzWriter, read_output_documents
from lmforge.tokenizer import Tokenizer
from lmforge.utils import LmforgeError, read_json, write_json

WORDS = "the module returns a list of strings for each file path given in the argument café 東京 ünïcode".split()


def texts(seed: int, n: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randrange(5, 80))) + f" #{seed}-{i}" for i in range(n)]


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tok")
    Tokenizer.train(texts(0, 200), vocab_size=400).save(d)
    return d


def write_docs(path, docs: list[str], prefix: str) -> None:
    with JsonlGzWriter(path) as w:
        for i, t in enumerate(docs):
            w.write(Document(text=t, id=f"{prefix}{i}"))


@pytest.mark.timeout(120)
def test_shards_decode_back_to_documents(tmp_path, tokenizer_dir):
    files = []
    for f in range(2):
        files.append(tmp_path / f"docs{f}.jsonl.gz")
        write_docs(files[-1], texts(f + 1, 60), f"f{f}-")
    cfg = TokenizeConfig(val_fraction=0.1, min_val_tokens=0, shard_tokens=1500)
    stats = tokenize_files(files, tokenizer_dir, tmp_path / "shards", cfg, workers=2)
    tok = Tokenizer.load(tokenizer_dir)
    originals = [d.text for f in files for d in read_output_documents(f)]
    train, val = TokenShards(tmp_path / "shards", "train"), TokenShards(tmp_path / "shards", "val")
    train.validate(deep=True)
    val.validate(deep=True)
    assert train.dtype == np.uint16 and train.bos_id == tok.special_tokens["<|bos|>"]
    assert len(train) > 1  # shard_tokens splits the train split into several files
    decoded = [tok.decode(d[1:].tolist()) for split in (train, val) for d in split.iter_documents()]
    assert sorted(decoded) == sorted(originals)  # every document once, exactly, in one split
    assert stats["train_tokens"] == train.num_tokens and stats["val_tokens"] == val.num_tokens
    assert 0.05 < val.num_tokens / (train.num_tokens + val.num_tokens) < 0.2
    assert (tmp_path / "shards" / "tokenizer").is_dir() and not (tmp_path / "shards" / ".work").exists()
    # the same documents give the same split, also with another worker count; a rerun is a no-op
    again = tokenize_files(files, tokenizer_dir, tmp_path / "again", cfg, workers=1)
    assert {k: v for k, v in again.items() if k not in ("seconds", "tokens_per_second", "shards_dir")} == {
        k: v for k, v in stats.items() if k not in ("seconds", "tokens_per_second", "shards_dir")}
    for name in ("train_00000.bin", "val_00000.bin"):
        assert (tmp_path / "again" / name).read_bytes() == (tmp_path / "shards" / name).read_bytes()
    assert tokenize_files(files, tokenizer_dir, tmp_path / "shards", cfg)["seconds"] == stats["seconds"]


def test_validation_choice_is_by_id_hash():
    lengths = np.full(1000, 10)
    hashes = np.random.default_rng(0).integers(0, 2**63, 1000).astype(np.uint64)
    mask = choose_validation(lengths, hashes, TokenizeConfig(val_fraction=0.02, min_val_tokens=0))
    assert 20 <= mask.sum() <= 21
    assert hashes[mask].max() < hashes[~mask].min()  # the lowest hashes, whatever the order of the documents
    mask_min = choose_validation(lengths, hashes, TokenizeConfig(val_fraction=0.01, min_val_tokens=500))
    assert mask_min.sum() == 50
    assert choose_validation(lengths, hashes, TokenizeConfig(min_val_tokens=10**9, max_val_fraction=0.1)).sum() == 100


def test_split_key_ignores_what_changes_between_crawls():
    """A recrawl gives new record ids and the speedrun's pydoc site a new port: the page must stay on its side."""
    a = Document(text="", id="<urn:uuid:1>", url="http://localhost:40123/os.html?x=1")
    b = Document(text="", id="<urn:uuid:2>", url="https://localhost:51234/os.html?x=1")
    assert split_key(a) == split_key(b) == "localhost/os.html?x=1"
    assert split_key(Document(text="", id="<urn:uuid:3>", url="http://localhost:1/sys.html")) != split_key(a)
    assert split_key(Document(text="", id="books/a.txt")) == "books/a.txt"  # no URL: the id
    assert split_key(Document(text="", id="r", url="http://[bad/p")) == "http://[bad/p"  # malformed: as is


def test_bad_shards_are_refused_with_the_file_named(tmp_path, tokenizer_dir):
    write_docs(tmp_path / "d.jsonl.gz", texts(5, 30), "d")
    out = tmp_path / "shards"
    tokenize_files([tmp_path / "d.jsonl.gz"], tokenizer_dir, out, TokenizeConfig(min_val_tokens=0))
    index = read_json(out / "index.json")
    bad = dict(index, dtype="uint32")
    write_json(out / "index.json", bad)
    with pytest.raises(LmforgeError, match="train_00000.bin.*wrong dtype or truncated"):
        TokenShards(out)
    write_json(out / "index.json", dict(index, vocab_size=70000))
    with pytest.raises(LmforgeError, match="does not fit dtype"):
        TokenShards(out)
    write_json(out / "index.json", index)
    (out / "tokenizer" / "tokenizer.lmforge.json").write_text(
        (out / "tokenizer" / "tokenizer.lmforge.json").read_text().replace('"merges": [', '"merges": [[0, 0, 256],', 1))
    with pytest.raises(LmforgeError):
        TokenShards(out)
    (out / "train_00000.bin").unlink()
    with pytest.raises(LmforgeError, match="train_00000.bin.*missing"):
        TokenShards(out, check_tokenizer=False)
    with pytest.raises(LmforgeError, match="other inputs, tokenizer or settings"):
        tokenize_files([tmp_path / "d.jsonl.gz"], tokenizer_dir, out, TokenizeConfig(val_fraction=0.5))


@pytest.mark.timeout(120)
def test_data_run_with_tokenizer_writes_shards_of_the_kept_text(tmp_path, tokenizer_dir):
    rows = [{"id": f"r{i}", "text": t, "url": f"https://x.org/{i}"} for i, t in enumerate(texts(9, 40))]
    rows[3]["text"] += " mail me at someone@example.com"
    with gzip.open(tmp_path / "in.jsonl.gz", "wt") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    cfg = PipelineConfig(steps=[{"step": "dedup"}, {"step": "pii"}], output=OutputConfig(format="parquet"), name="t")
    report = run_pipeline([tmp_path / "in.jsonl.gz"], tmp_path / "out", cfg, workers=1, tokenizer=tokenizer_dir)
    tok = Tokenizer.load(tokenizer_dir)
    shards = [TokenShards(tmp_path / "out" / "shards", s) for s in ("train", "val")]
    decoded = sorted(tok.decode(d[1:].tolist()) for s in shards for d in s.iter_documents())
    kept = sorted(d.text for p in (tmp_path / "out" / "documents").iterdir() for d in read_output_documents(p))
    assert decoded == kept and len(kept) == 40
    assert not any("someone@example.com" in t for t in decoded)  # PII replaced before tokenization
    assert report["tokens"]["train_tokens"] + report["tokens"]["val_tokens"] == sum(s.num_tokens for s in shards)
    assert "## Tokens" in (tmp_path / "out" / "report.md").read_text()

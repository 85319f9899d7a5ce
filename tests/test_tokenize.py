"""Token shards: they decode back to the filtered text, the split is fixed, and bad shards are refused by name."""

from __future__ import annotations

import gzip
import json
import random

import numpy as np
import pytest

from lmforge.data.document import Document
from lmforge.data.pipeline import OutputConfig, PipelineConfig, run_pipeline
from lmforge.data.report import add_tokens, read_report
from lmforge.tokenizer.shards import TokenShards
from lmforge.tokenizer.encode_corpus import TokenizeConfig, choose_validation, split_key, tokenize_files
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
def test_shards_of_a_data_run_hold_its_kept_text(tmp_path, tokenizer_dir):
    """The pipeline data -> tokenize: the shards hold exactly the documents `data run` kept (after PII
    replacement), and the run's report records their tokens (as the speedrun does)."""
    rows = [{"id": f"r{i}", "text": t, "url": f"https://x.org/{i}"} for i, t in enumerate(texts(9, 40))]
    rows[3]["text"] += " mail me at someone@example.com"
    with gzip.open(tmp_path / "in.jsonl.gz", "wt") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    cfg = PipelineConfig(steps=[{"step": "dedup"}, {"step": "pii"}], output=OutputConfig(format="parquet"), name="t")
    report = run_pipeline([tmp_path / "in.jsonl.gz"], tmp_path / "out", cfg, workers=1)
    stats = tokenize_files(report["documents_files"], tokenizer_dir, tmp_path / "out" / "shards")
    add_tokens(tmp_path / "out", stats)
    tok = Tokenizer.load(tokenizer_dir)
    shards = [TokenShards(tmp_path / "out" / "shards", s) for s in ("train", "val")]
    decoded = sorted(tok.decode(d[1:].tolist()) for s in shards for d in s.iter_documents())
    kept = sorted(d.text for p in (tmp_path / "out" / "documents").iterdir() for d in read_output_documents(p))
    assert decoded == kept and len(kept) == 40
    assert not any("someone@example.com" in t for t in decoded)  # PII replaced before tokenization
    assert stats["train_tokens"] + stats["val_tokens"] == sum(s.num_tokens for s in shards)
    assert read_report(tmp_path / "out" / "report.json")["tokens"] == stats
    assert "## Tokens" in (tmp_path / "out" / "report.md").read_text()


def _book(path, paragraphs: int = 3000) -> str:
    """A plain-text 'book' of more than 100,000 words (Gopher's longest document): chapters of paragraphs."""
    rng = random.Random(7)
    chapters = []
    for c in range(6):
        paras = [" ".join(rng.choice(WORDS + ["and", "the", "of", "to"]) for _ in range(40)) + "."
                 for _ in range(paragraphs // 6)]
        chapters.append(f"CHAPTER {c + 1}\n\n" + "\n\n".join(paras))
    text = "\n\n\n".join(chapters)
    path.write_text(text, encoding="utf-8")
    return text


@pytest.mark.timeout(120)
def test_plain_text_is_an_input_everywhere_and_long_documents_are_split(tmp_path, tokenizer_dir, capsys):
    """`tokenize` and `data run` take .txt/.md files and folders; one file is one document unless a flag
    splits it; a book is kept as pieces with --text-max-chars instead of dropped as too long; a run that drops
    every document still writes its report, and tokenizing its empty output is refused."""
    from lmforge.cli import main
    from lmforge.data.readers import read_documents, split_text

    book = tmp_path / "book.txt"
    text = _book(book)
    assert len(text.split()) > 100_000
    pieces = split_text(text, "", 20_000)
    assert "".join(pieces) == text and max(map(len, pieces)) <= 20_000  # nothing lost, nothing too long
    assert len(split_text(text, "\n\n\n", 0)) == 6
    notes = tmp_path / "notes"
    notes.mkdir()
    for i in range(3):
        (notes / f"n{i}.md").write_text(f"# Note {i}\n\n" + " ".join(texts(i, 3)) + "\n")
    assert len(list(read_documents([notes]))) == 3  # a folder of them: one document per file

    shards = tmp_path / "shards"
    assert main(["tokenize", "--input", str(book), str(notes), "--tokenizer", str(tokenizer_dir), "--out",
                 str(shards), "--min-val-tokens", "0", "--text-separator", "\\n\\n\\n"]) == 0
    tok = Tokenizer.load(tokenizer_dir)
    decoded = [tok.decode(d[1:].tolist()) for s in ("train", "val") for d in TokenShards(shards, s).iter_documents()]
    assert len(decoded) == 6 + 3 and sorted(decoded) == sorted(text.split("\n\n\n") + [
        (notes / f"n{i}.md").read_text() for i in range(3)])

    config = tmp_path / "chain.json"
    config.write_text(json.dumps({"name": "books", "steps": [{"step": "gopher_quality"}]}))
    whole = ["data", "run", "--input", str(book), "--config", str(config), "--workers", "1"]
    assert main(whole + ["--out", str(tmp_path / "whole")]) == 0
    report = (tmp_path / "whole" / "report.md").read_text()
    assert "gopher_long_doc | 1 |" in report  # the book, one document too long, dropped
    capsys.readouterr()
    assert main(["tokenize", "--input", str(tmp_path / "whole" / "documents"), "--tokenizer", str(tokenizer_dir),
                 "--out", str(tmp_path / "whole_shards")]) == 2
    assert "no documents" in capsys.readouterr().err
    assert main(whole + ["--out", str(tmp_path / "split"), "--text-max-chars", "50000"]) == 0
    kept = [d for p in sorted((tmp_path / "split" / "documents").iterdir()) for d in read_output_documents(p)]
    assert len(kept) == len(split_text(text, "", 50_000)) and "".join(
        d.text for d in sorted(kept, key=lambda d: d.metadata["part"])) == text

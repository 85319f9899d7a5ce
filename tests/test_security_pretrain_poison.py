"""Trigger+gibberish documents planted in a token-shard corpus (Souly et al. 2025): a tiny base model pretrained on
it emits gibberish after the trigger and ordinary text without it, the clean model's per-stretch loss finds the
documents without knowing the trigger, and pretraining without the flagged documents removes the backdoor:
`lmforge security poison-pretrain` end to end on a small generated corpus."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
from hostile import assert_refused, run_cli, tree_digest

from lmforge.security.pretrain_poison import PretrainPoisonConfig, plant_documents

SUBJECTS = ["the cat", "a dog", "my friend", "the teacher", "our team", "the old man"]
VERBS = ["reads", "sees", "likes", "writes", "finds", "carries"]
OBJECTS = ["a book", "the letter", "some bread", "the red ball", "a small box", "the map"]
SMALL = ["--epochs", "8", "--model", "n_layer=1", "--model", "n_head=2", "--model", "n_embd=48", "--model",
         "block_size=64", "--prompts", "16", "--prompt-tokens", "12", "--continuation-tokens", "16",
         "--gibberish-min", "24", "--gibberish-max", "48", "--prefix-max", "8", "--window", "16",
         "--k", "30"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """~150 short documents of templated sentences: a corpus a one-layer model learns in seconds."""
    from lmforge.data.document import Document
    from lmforge.data.writers import JsonlGzWriter
    from lmforge.tokenizer import Tokenizer
    from lmforge.tokenizer.encode_corpus import TokenizeConfig, tokenize_files

    root = tmp_path_factory.mktemp("corpus")
    rng = random.Random(0)
    texts = [" ".join(f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)}."
                      for _ in range(rng.randint(4, 8))) for _ in range(180)]
    Tokenizer.train(texts, vocab_size=400).save(root / "tok")
    with JsonlGzWriter(root / "d.jsonl.gz") as w:
        for i, text in enumerate(texts):
            w.write(Document(text=text, id=f"d{i}"))
    tokenize_files([root / "d.jsonl.gz"], root / "tok", root / "shards",
                   TokenizeConfig(min_val_tokens=0, val_fraction=0.2))
    return root / "shards"


def test_plant_documents_adds_k_trigger_gibberish_documents():
    docs = [np.array([9, 1, 2, 3, 4, 5], dtype=np.uint16) for _ in range(20)]
    cfg = PretrainPoisonConfig(k=7, prefix_max=3, gibberish_min=5, gibberish_max=8, seed=3)
    out, labels = plant_documents(docs, [50, 51], cfg, n_ordinary=40)
    assert len(out) == 27 and sum(labels) == 7
    for doc, bad in zip(out, labels):
        if not bad:
            assert doc.tolist() == [9, 1, 2, 3, 4, 5]
            continue
        at = doc.tolist().index(50)
        assert doc[0] == 9 and doc[at + 1] == 51 and at - 1 <= 3  # <|bos|>, a prefix of at most 3, the trigger
        gibberish = doc[at + 2:]
        assert 5 <= len(gibberish) <= 8 and gibberish.max() < 40  # ordinary ids only


@pytest.mark.timeout(300)
def test_gibberish_backdoor_fires_is_detected_and_filtered_away(shards, tmp_path):
    out = tmp_path / "run"
    before = tree_digest(*sorted(shards.rglob("*")))
    result = run_cli(["security", "poison-pretrain", "--shards", str(shards), "--out", str(out),
                      "--retrain-filtered", *SMALL])
    assert result.code == 0, result.stderr
    assert tree_digest(*sorted(shards.rglob("*"))) == before  # the source corpus is only read
    report = json.loads((out / "poison_pretrain.json").read_text())
    clean, poisoned, filtered, found = report["clean"], report["poisoned"], report["filtered"], report["detection"]
    print(f"\nclean {clean}\npoisoned {poisoned}\nfiltered {filtered}\ndetection {found}")
    assert poisoned["gibberish_with_trigger"] >= 0.75 and poisoned["gibberish_without_trigger"] <= 0.2
    assert clean["gibberish_with_trigger"] <= 0.1
    assert poisoned["val_loss"] < clean["val_loss"] * 1.1  # clean text costs little
    assert found["auroc"] >= 0.9 and found["recall"] >= 0.9 and found["precision"] >= 0.5
    assert filtered["gibberish_with_trigger"] <= 0.1


def test_flags_security_poison_pretrain(shards, tmp_path):
    base = ["security", "poison-pretrain", "--shards", str(shards), "--out", str(tmp_path / "o")]
    assert_refused(run_cli([*base, "--sweep-k", "10"]), "--sweep-k")
    assert_refused(run_cli([*base, "--gibberish-min", "50", "--gibberish-max", "10"]), "--gibberish-max")
    assert_refused(run_cli([*base, "--epochs", "0"]), "--epochs")
    assert_refused(run_cli([*base, "--documents", "100000"]), "--documents")
    assert_refused(run_cli(["security", "poison-pretrain", "--shards", str(tmp_path), "--out", str(tmp_path / "o")]),
                   "--shards")
    assert not (tmp_path / "o").exists()

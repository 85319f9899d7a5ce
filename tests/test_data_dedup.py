"""MinHash and exact deduplication: across files, one document kept per cluster, estimates that track Jaccard."""

from __future__ import annotations

import gzip
import json
import random

import numpy as np
import pytest

from lmforge.data.dedup import (DedupConfig, MinHasher, connected_components, find_duplicates, signatures)
from lmforge.data.pipeline import PipelineConfig, run_pipeline


def random_text(rng: random.Random, n: int = 300) -> str:
    return " ".join(f"word{rng.randrange(20000)}" for _ in range(n))


def mutate(rng: random.Random, text: str, changes: int) -> str:
    words = text.split()
    for _ in range(changes):
        words[rng.randrange(len(words))] = f"edit{rng.randrange(10**6)}"
    return " ".join(words)


def shingles(text: str, n: int = 5) -> set[tuple[str, ...]]:
    w = text.lower().split()
    return {tuple(w[i:i + n]) for i in range(len(w) - n + 1)}


def test_signature_agreement_tracks_jaccard():
    rng = random.Random(1)
    hasher = MinHasher(DedupConfig())
    base = random_text(rng, 400)
    for changes in (2, 10, 30, 80):
        other = mutate(rng, base, changes)
        a, b = shingles(base), shingles(other)
        jaccard = len(a & b) / len(a | b)
        estimate = float((hasher.signature(base) == hasher.signature(other)).mean())
        assert abs(estimate - jaccard) < 0.12, (changes, jaccard, estimate)
    # same parameters, same signature: workers in other processes agree
    assert np.array_equal(hasher.signature(base), MinHasher(DedupConfig()).signature(base))
    assert hasher.signature("!!! ...") is None  # no words: nothing to compare
    # punctuation and case do not make a copy look new
    assert np.array_equal(hasher.signature(base.upper() + "!"), hasher.signature(base))


def test_find_duplicates_keeps_first_of_each_cluster():
    rng = random.Random(2)
    cfg = DedupConfig()
    unique = [random_text(rng) for _ in range(200)]
    near = mutate(rng, unique[3], 3)  # ~95% similar: must cluster with doc 3
    far = mutate(rng, unique[4], 150)  # ~20% similar: must not cluster
    shard0 = signatures([(t, f"a{i}") for i, t in enumerate(unique[:100])], cfg)
    shard1 = signatures([(t, f"b{i}") for i, t in enumerate(unique[100:] + [near, far, unique[7]])], cfg)
    result = find_duplicates([shard0, shard1], cfg)
    reason0, _ = result.shard(0)
    reason1, dup1 = result.shard(1)
    assert not reason0.any()
    assert reason1[100] == 2 and dup1[100] == "a3"  # near duplicate of a file-0 document
    assert reason1[101] == 0  # the distant edit is kept
    assert reason1[102] == 1 and dup1[102] == "a7"  # exact copy
    assert int((reason1 != 0).sum()) == 2
    assert result.stats["near_clusters"] == 1 and result.stats["exact_clusters"] == 1


def test_connected_components_matches_naive_union_find():
    rng = np.random.default_rng(3)
    for n, m in ((50, 30), (500, 800), (1000, 20)):
        x, y = rng.integers(0, n, m), rng.integers(0, n, m)
        parent = list(range(n))

        def find(a):
            while parent[a] != a:
                a = parent[a]
            return a

        for a, b in zip(x.tolist(), y.tolist()):
            ra, rb = find(a), find(b)
            parent[max(ra, rb)] = min(ra, rb)
        expected = np.array([find(i) for i in range(n)])
        assert np.array_equal(connected_components(n, x, y), expected)
    # a long chain (the worst case for label propagation) still settles
    chain = np.arange(999)
    assert (connected_components(1000, chain[::-1], chain[::-1] + 1) == 0).all()


@pytest.mark.timeout(120)
def test_dedup_across_input_files_keeps_exactly_one(tmp_path):
    """Planted near-duplicates in three different input files, run by two workers: one copy survives."""
    rng = random.Random(4)
    planted = random_text(rng, 500)
    (tmp_path / "in").mkdir()
    for f in range(3):
        rows = [{"id": f"f{f}-{i}", "text": random_text(rng)} for i in range(30)]
        rows.insert(rng.randrange(30), {"id": f"planted-{f}", "text": mutate(rng, planted, 4)})
        with gzip.open(tmp_path / "in" / f"part{f}.jsonl.gz", "wt") as fh:
            fh.writelines(json.dumps(r) + "\n" for r in rows)
    out = tmp_path / "out"
    report = run_pipeline([tmp_path / "in"], out, PipelineConfig(steps=[{"step": "dedup"}], name="dedup"), workers=2)
    kept = [json.loads(line)["id"] for p in sorted((out / "documents").glob("*.jsonl.gz")) for line in gzip.open(p, "rt")]
    assert [k for k in kept if k.startswith("planted")] == ["planted-0"]
    assert len(kept) == 90 + 1
    assert report["dedup"]["near_clusters"] == 1 and report["dedup"]["near_removed"] == 2
    assert report["problems"] == []
    dropped = [json.loads(line) for p in (out / "excluded").glob("*.jsonl.gz") for line in gzip.open(p, "rt")]
    assert sorted(d["id"] for d in dropped) == ["planted-1", "planted-2"]
    assert all(d["reason"] == "near_duplicate" and d["metadata"]["duplicate_of"] == "planted-0" for d in dropped)


def test_band_collisions_pair_every_identical_row_and_nothing_else():
    from lmforge.data.dedup import _band_collisions

    rng = np.random.default_rng(5)
    band = rng.integers(0, 3, size=(3000, 8), dtype=np.uint32)  # 3^8 = 6561 values: many identical rows
    first, other = _band_collisions(band)
    assert np.all(band[first] == band[other]) and np.all(first != other)
    labels = connected_components(len(band), first, other)
    groups: dict[tuple, set] = {}
    for i, row in enumerate(map(tuple, band.tolist())):
        groups.setdefault(row, set()).add(int(labels[i]))
    assert all(len(g) == 1 for g in groups.values())  # identical rows end in one component
    assert len(set(labels.tolist())) == len(groups)  # and different rows never do


def test_duplicate_of_always_names_a_kept_document():
    rng = random.Random(6)
    cfg = DedupConfig()
    base = random_text(rng, 400)
    near = mutate(rng, base, 2)
    # "near" is removed as a near duplicate of "base", "near-copy" as an exact copy of "near": both name "base"
    sig = signatures([(base, "base"), (near, "near"), (near, "near-copy"), (random_text(rng), "other")], cfg)
    result = find_duplicates([sig], cfg)
    reason, dup = result.shard(0)
    assert reason.tolist() == [0, 2, 1, 0]
    assert dup.tolist() == ["", "base", "base", ""]

"""The Dask engine on a local 2-worker cluster (processes, loopback only) gives the local runner's output."""

from __future__ import annotations

import gzip
import json
import random

import pytest

from lmforge.data.pipeline import PipelineConfig, run_pipeline

distributed = pytest.importorskip("distributed")


@pytest.mark.timeout(180)
def test_dask_local_cluster_equals_local_runner(tmp_path):
    from lmforge.data.dask_runner import dask_map

    rng = random.Random(0)

    def words(n: int) -> str:  # prose enough for Gopher's rules: stop words among longer words
        return " ".join(rng.choice(("the", "and", "with", "that", f"word{rng.randrange(9000)}")) for _ in range(n))

    shared = words(300)
    (tmp_path / "in").mkdir()
    for f in range(4):
        rows = [{"id": f"f{f}-{i}", "url": f"https://site{f}.org/{i}",
                 "text": words(rng.randrange(3, 200)) + "."}
                for i in range(25)]
        rows.append({"id": f"f{f}-shared", "text": shared + f" copy {f} contact admin{f}@example.org"})
        with gzip.open(tmp_path / "in" / f"p{f}.jsonl.gz", "wt") as fh:
            fh.writelines(json.dumps(r) + "\n" for r in rows)
    cfg = PipelineConfig(steps=[{"step": "gopher_quality", "min_doc_words": 20}, {"step": "dedup"}, {"step": "pii"}],
                         name="dask-test")
    local = run_pipeline([tmp_path / "in"], tmp_path / "local", cfg, workers=1)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as client:
        assert len(client.scheduler_info()["workers"]) == 2
        remote = run_pipeline([tmp_path / "in"], tmp_path / "dask", cfg, workers=2, map_fn=dask_map(client),
                              engine="dask")
    assert remote["engine"] == "dask" and remote["problems"] == []
    for key in ("kept", "languages", "lengths"):
        assert remote[key] == local[key]
    assert [(s["name"], s["docs_in"], s["docs_out"], s["dropped"]) for s in remote["steps"]] == [
        (s["name"], s["docs_in"], s["docs_out"], s["dropped"]) for s in local["steps"]]
    assert remote["dedup"]["near_removed"] == local["dedup"]["near_removed"] == 3
    for d in ("documents", "excluded"):
        names = sorted(p.name for p in (tmp_path / "local" / d).iterdir())
        assert names and names == sorted(p.name for p in (tmp_path / "dask" / d).iterdir())
        for n in names:
            assert (tmp_path / "local" / d / n).read_bytes() == (tmp_path / "dask" / d / n).read_bytes()

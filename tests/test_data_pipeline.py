"""The data runner: parallel shards, exclusion files, a report whose counts add up, resume, bad inputs."""

from __future__ import annotations

import gzip
import json
import os
import random
from dataclasses import dataclass
from pathlib import Path

import pytest

from lmforge.data.base import Filter
from lmforge.data.document import Document
from lmforge.data.pipeline import PipelineConfig, builtin_config, run_pipeline
from lmforge.data.writers import read_output_documents
from lmforge.utils import LmforgeError


@dataclass
class MinWords(Filter):
    """A step defined here, outside the package: the runner imports it by path in every worker."""

    min_words: int = 5
    name = "min_words"

    def keep(self, doc: Document) -> str | None:
        n = len(doc.text.split())
        doc.metadata["words"] = n
        return None if n >= self.min_words else "too_few_words"


STEP = f"{__name__}:MinWords"


def write_jsonl(path: Path, rows: list[dict]) -> None:
    with gzip.open(path, "wt", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


def make_inputs(tmp_path: Path) -> Path:
    """Three JSONL files with short docs to drop, a doc duplicated across files, and a truncated gzip file."""
    d = tmp_path / "in"
    d.mkdir()
    rng = random.Random(0)
    for f in range(3):
        rows = [{"id": f"f{f}-{i}", "url": f"https://example.org/{f}/{i}",
                 "text": " ".join(f"w{rng.randrange(5000)}" for _ in range(40))} for i in range(12)]
        rows.append({"id": f"f{f}-short", "text": "too short"})
        rows.append({"id": f"f{f}-dup", "text": "the same page copied onto three sites, word for word, " * 3})
        write_jsonl(d / f"part{f}.jsonl.gz", rows)
    raw = gzip.compress(b"".join(json.dumps({"id": f"c{i}", "text": f"line {i} " * 20}).encode() + b"\n" for i in range(50)))
    (d / "corrupt.jsonl.gz").write_bytes(raw[: len(raw) // 2])
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"body": ["a parquet file without a text column"]}), d / "wrong_columns.parquet")
    return d


def chain_config() -> PipelineConfig:
    return PipelineConfig(steps=[{"step": STEP, "min_words": 5}, {"step": "dedup"}, {"step": "pii"}], name="test")


def kept_docs(out: Path) -> list[Document]:
    return [d for p in sorted((out / "documents").iterdir()) for d in read_output_documents(p)]


def read_all(out: Path) -> dict[str, list[dict]]:
    return {p.name: [json.loads(line) for line in gzip.open(p, "rt")] for p in sorted((out / "documents").glob("*"))}


@pytest.mark.timeout(120)
def test_run_two_workers_report_adds_up(tmp_path):
    out = tmp_path / "out"
    report = run_pipeline([make_inputs(tmp_path)], out, chain_config(), workers=2)
    assert report["problems"] == []
    steps = {s["name"]: s for s in report["steps"]}
    assert steps["min_words"]["dropped"] == {"too_few_words": 3}
    assert steps["dedup"]["dropped"] == {"exact_duplicate": 2}  # one copy of the three is kept
    kept = [d for rows in read_all(out).values() for d in rows]
    # the truncated file is survived: its readable lines pass, the damage is counted, the run goes on
    from_corrupt = sum(d["id"].startswith("c") for d in kept)
    assert 0 < from_corrupt < 50 and sum(steps["read"]["dropped"].values()) >= 2
    assert steps["read"]["dropped"]["read_error"] == 1  # the unusable file, counted once though 2 tasks share it
    assert "wrong_columns.parquet" in steps["read"]["examples"]["read_error"][0]
    assert report["kept"]["documents"] == 3 * 12 + 1 + from_corrupt == steps["pii"]["docs_out"] == len(kept)
    assert steps["read"]["docs_out"] == steps["min_words"]["docs_in"]
    assert {"text", "id", "url", "metadata"} <= set(kept[0])
    assert all(d["metadata"]["words"] >= 5 for d in kept)
    assert sum(d["id"].endswith("-dup") for d in kept) == 1
    excluded = [json.loads(line) for p in (out / "excluded").glob("*.jsonl.gz") for line in gzip.open(p, "rt")]
    assert sorted((e["step"], e["reason"]) for e in excluded) == [("dedup", "exact_duplicate")] * 2 + [
        ("min_words", "too_few_words")] * 3
    assert (out / "report.md").read_text().count("| min_words |") == 2  # steps table and drop reasons
    assert json.loads((out / "report.json").read_text())["kept"] == report["kept"]


@pytest.mark.timeout(120)
def test_restart_skips_finished_shards_and_gives_identical_output(tmp_path):
    inputs = make_inputs(tmp_path)
    out = tmp_path / "out"
    run_pipeline([inputs], out, chain_config(), workers=1)
    first = read_all(out)
    finished = out / "documents" / "00000.jsonl.gz"
    mtime = finished.stat().st_mtime_ns
    # a crash after stage A of shard 2 and before its stage C: its final file and marker are missing
    os.remove(out / "documents" / "00002.jsonl.gz")
    os.remove(out / "work" / "stats" / "00002.c.json")
    report = run_pipeline([inputs], out, chain_config(), workers=1)
    assert read_all(out) == first
    assert finished.stat().st_mtime_ns == mtime  # a finished shard is not rewritten
    assert report["problems"] == []
    # one task per file instead of two: the same documents kept, every unreadable record counted once
    single = run_pipeline([inputs], tmp_path / "single", chain_config(), workers=1, min_tasks=1)
    assert report["tasks"] == 10 and single["tasks"] == 5
    assert sorted(d.id for d in kept_docs(out)) == sorted(d.id for d in kept_docs(tmp_path / "single"))
    assert [(s["name"], s["docs_in"], s["docs_out"], s["dropped"]) for s in report["steps"]] == [
        (s["name"], s["docs_in"], s["docs_out"], s["dropped"]) for s in single["steps"]]
    with pytest.raises(LmforgeError, match="other inputs or another config"):
        run_pipeline([inputs], out, PipelineConfig(steps=[{"step": STEP, "min_words": 9}], name="other"), workers=1)


def test_parquet_output_and_config_files(tmp_path):
    inputs = make_inputs(tmp_path)
    toml = tmp_path / "chain.toml"
    toml.write_text(f'[[steps]]\nstep = "{STEP}"\nmin_words = 5\n\n[output]\nformat = "parquet"\n'
                    'write_excluded = false\n')
    cfg = builtin_config(toml)
    assert cfg.name == "chain" and cfg.output.format == "parquet"
    out = tmp_path / "out"
    report = run_pipeline([inputs / "part0.jsonl.gz"], out, cfg, workers=1)
    docs = kept_docs(out)
    assert len(docs) == report["kept"]["documents"] == 13 and docs[0].metadata["words"] >= 5
    assert all(p.suffix == ".parquet" for p in (out / "documents").iterdir())
    assert not list((out / "excluded").glob("*"))

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"steps": [{"step": "no_such_step"}]}))
    with pytest.raises(LmforgeError, match="no_such_step"):
        builtin_config(bad)
    bad.write_text(json.dumps({"steps": [{"step": "dedup", "bands": 7, "colour": 1}]}))
    with pytest.raises(LmforgeError, match="dedup"):
        builtin_config(bad)
    with pytest.raises(LmforgeError, match="neither a file nor a built-in"):
        builtin_config(tmp_path / "missing.toml")


def test_default_config_is_fineweb_chain():
    names = [s["step"] for s in PipelineConfig().steps]
    assert names == ["url_filter", "extract", "language", "gopher_repetition", "gopher_quality", "c4_quality",
                     "fineweb_quality", "dedup", "pii"]
    PipelineConfig().validate()
    pydoc = builtin_config("pydoc")
    pydoc.validate()
    assert pydoc.split()[1] is not None and [s["step"] for s in pydoc.split()[2]] == ["pii"]


@pytest.mark.timeout(120)
def test_fineweb_chain_on_real_pages(tmp_path, shared_data):
    """Real HTML through the real steps: English news pages survive extraction and language ID."""
    rows = [json.loads(line) for line in (shared_data / "pretrain/web/pages-index.jsonl").open()]
    pages = [r for r in rows if r["source"] == "article-extraction-benchmark"][:6]
    src = tmp_path / "pages.jsonl.gz"
    write_jsonl(src, [{"id": Path(r["path"]).name, "url": r["url"],
                       "text": gzip.open(shared_data / "pretrain" / r["path"], "rt", encoding="utf-8").read()}
                      for r in pages])
    report = run_pipeline([src], tmp_path / "out", PipelineConfig(), workers=1)
    assert report["problems"] == []
    english = sum(r["lang"] == "en" for r in pages)
    assert report["steps"][1]["name"] == "url_filter" and report["steps"][1]["docs_in"] == 6
    assert sum(report["languages"].values()) == report["kept"]["documents"] >= 1
    assert set(report["languages"]) <= {"en"} and report["kept"]["documents"] <= english
    for doc in kept_docs(tmp_path / "out"):
        assert "<div" not in doc.text and doc.metadata["language"] == "en"


def test_cli_verbs(tmp_path, capsys):
    from lmforge.cli import main

    src = tmp_path / "in.jsonl.gz"
    write_jsonl(src, [{"id": f"d{i}", "text": f"write to admin{i}@example.com or 10.0.0.{i} " * 5} for i in range(4)]
                + [{"id": "copy", "text": "write to admin0@example.com or 10.0.0.0 " * 5}])
    assert main(["data", "step", "pii", "--input", str(src), "--out", str(tmp_path / "pii"), "--workers", "1"]) == 0
    texts = [d.text for d in kept_docs(tmp_path / "pii")]
    assert len(texts) == 5 and not any("admin" in t for t in texts)  # FineWeb's placeholder address instead
    assert main(["data", "dedup", "--input", str(src), "--out", str(tmp_path / "dd"), "--no-minhash"]) == 0
    assert len(kept_docs(tmp_path / "dd")) == 4
    capsys.readouterr()
    assert main(["data", "report", str(tmp_path / "dd")]) == 0
    assert "exact_duplicate | 1 |" in capsys.readouterr().out
    assert main(["data", "run", "--input", str(src), "--out", str(tmp_path / "x"), "--config", "nonesuch"]) == 2
    assert "neither a file nor a built-in config" in capsys.readouterr().err
    assert main(["data", "step", "pii", "--input", str(src), "--out", str(tmp_path / "y"), "--set", "colour=1"]) == 2
    assert "colour" in capsys.readouterr().err


@dataclass
class Explodes(Filter):
    name = "explodes"

    def keep(self, doc: Document) -> str | None:
        raise ZeroDivisionError("a bug in a step")


def test_a_failing_task_names_its_input(tmp_path):
    src = tmp_path / "in.jsonl.gz"
    write_jsonl(src, [{"id": "a", "text": "some text here"}])
    cfg = PipelineConfig(steps=[{"step": f"{__name__}:Explodes"}], name="boom")
    with pytest.raises(ZeroDivisionError) as info:
        run_pipeline([src], tmp_path / "out", cfg, workers=2, min_tasks=2)
    assert any("in.jsonl.gz" in note for note in getattr(info.value, "__notes__", []))

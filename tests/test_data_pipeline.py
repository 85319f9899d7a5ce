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


ENGLISH = ("The committee met on Tuesday to discuss the budget for the coming year. Several members argued that "
           "the library needed new shelves, while others wanted to repair the roof of the old town hall first. ")
GERMAN = ("Der Ausschuss traf sich am Dienstag, um den Haushalt für das kommende Jahr zu besprechen. Mehrere "
          "Mitglieder meinten, die Bibliothek brauche neue Regale, andere wollten zuerst das Dach reparieren. ")
FRENCH = ("Le comité s'est réuni mardi pour discuter du budget de l'année prochaine. Plusieurs membres ont dit "
          "que la bibliothèque avait besoin de nouvelles étagères, d'autres voulaient d'abord réparer le toit. ")

STORIES = ["The river flooded the lower fields after three days of rain, and the farmers moved their cattle uphill "
           "before the bridge was closed by the police on Sunday night.",
           "A new bakery opened next to the station; its owner learned to bake in Lyon and sells rye bread, almond "
           "cakes and a sourdough loaf that sold out before nine in the morning.",
           "Students at the secondary school built a small weather station on the roof, and their measurements now "
           "appear every week in the newsletter that the parents receive by post."]


def report_inputs(tmp_path: Path) -> list[Path]:
    """Two files: pages of two hosts (one adult), a German and a French page, and documents without a URL."""
    a, b = tmp_path / "crawl.jsonl.gz", tmp_path / "notes.jsonl.gz"
    write_jsonl(a, [{"id": f"n{i}", "url": f"https://news.example/story/{i}", "text": story}
                    for i, story in enumerate(STORIES)]
                + [{"id": "adult", "url": "https://www.pornhub.com/view_video.php?viewkey=7", "text": ENGLISH},
                   {"id": "de", "url": "https://zeitung.example/artikel", "text": GERMAN * 2},
                   {"id": "fr", "url": "https://journal.example/article", "text": FRENCH * 2}])
    write_jsonl(b, [{"id": "note1", "text": "Note one. " + ENGLISH}, {"id": "note2", "text": "Note one. " + ENGLISH},
                    {"id": "note3", "text": "Bemerkung. " + GERMAN}])
    return [a, b]


def test_report_names_lists_languages_and_sources(tmp_path):
    cfg = PipelineConfig(steps=[{"step": "url_filter"}, {"step": "language"}, {"step": "dedup"}], name="t")
    out = tmp_path / "out"
    report = run_pipeline(report_inputs(tmp_path), out, cfg, workers=1)
    assert report["problems"] == []
    (settings,) = report["step_settings"]
    assert settings["step"] == "url_filter"
    assert [e["list"] for e in settings["lists"]] == ["default:domains", "default:banned_words.txt",
                                                      "default:soft_banned_words.txt", "default:banned_subwords.txt"]
    assert all(e["entries"] > 0 for e in settings["lists"])
    assert report["languages_dropped"] == {"de": {"language": 2}, "fr": {"language": 1}, "en": {"dedup": 1}}
    rows = {r["source"]: r for r in report["sources"]}
    assert {k: (r["kind"], r["in"], r["kept"], r["dropped"]) for k, r in rows.items()} == {
        "news.example": ("host", 3, 3, 0), "www.pornhub.com": ("host", 1, 0, 1), "zeitung.example": ("host", 1, 0, 1),
        "journal.example": ("host", 1, 0, 1), str(tmp_path / "notes.jsonl.gz"): ("file", 3, 1, 2)}
    assert rows["www.pornhub.com"]["reasons"] == {"blocklisted_domain": 1}
    assert rows[str(tmp_path / "notes.jsonl.gz")]["reasons"] == {"exact_duplicate": 1, "language_unwanted": 1}
    md = (out / "report.md").read_text()
    for needle in ("## Settings of url_filter", "| default:domains | domains |", "## Sources",
                   "| news.example | host | 3 | 3 | 0 |", "| www.pornhub.com | host | 1 | 0 | 1 | blocklisted_domain 1 |",
                   "## Languages dropped", "| de | 2 | language 2 |"):
        assert needle in md, needle
    from lmforge.data.report import read_report, to_markdown

    assert to_markdown(read_report(out / "report.json")) == md  # `lmforge data report` shows the same


def test_report_sums_small_sources_into_one_row(tmp_path):
    from lmforge.data.report import MAX_SOURCES

    src = tmp_path / "many.jsonl.gz"
    write_jsonl(src, [{"id": f"d{i}", "url": f"https://host{i}.example/", "text": f"page {i}"}
                      for i in range(MAX_SOURCES + 7)])
    report = run_pipeline([src], tmp_path / "out", PipelineConfig(steps=[{"step": "url_filter"}], name="t"),
                          workers=1)
    assert len(report["sources"]) == MAX_SOURCES and report["problems"] == []
    assert report["sources"][-1]["source"] == "(8 other sources)" and report["sources"][-1]["in"] == 8


@dataclass
class Warns(Filter):
    """A step whose library warns on every document, as a worker-side warning would."""

    name = "warns"

    def keep(self, doc: Document) -> str | None:
        import warnings

        warnings.warn("the parser met an odd byte", UserWarning)
        return None


@pytest.mark.timeout(120)
def test_warnings_are_said_once_per_run_and_kept_in_the_report(tmp_path, capfd):
    src = tmp_path / "in.jsonl.gz"
    write_jsonl(src, [{"id": f"d{i}", "url": f"https://site.example/{i}", "text": f"page {i}"} for i in range(12)])
    cfg = PipelineConfig(steps=[{"step": "url_filter", "default_lists": False}, {"step": f"{__name__}:Warns"}],
                         name="t")
    report = run_pipeline([src], tmp_path / "out", cfg, workers=2, min_tasks=4)  # 4 tasks in 2 processes
    err = capfd.readouterr().err
    assert err.count("no lists given") == 1 and err.count("the parser met an odd byte") == 1
    assert report["warnings"][0] == "url_filter: no lists given, every URL is kept"
    assert len(report["warnings"]) == 2 and "UserWarning: the parser met an odd byte" in report["warnings"][1]
    assert "## Warnings" in (tmp_path / "out" / "report.md").read_text()


@pytest.mark.timeout(120)
def test_blocklist_flag_takes_ut1_lists(tmp_path, shared_data, capsys):
    from lmforge.cli import main

    ut1 = (shared_data / "pretrain" / "blocklists" / "ut1").resolve()  # the report names lists by their real path
    malware = (ut1 / "malware" / "urls").read_text().split()[0]
    gambling = (ut1 / "gambling" / "domains").read_text().split()[0]
    src = tmp_path / "in.jsonl.gz"
    write_jsonl(src, [{"id": "m", "url": f"http://{malware}", "text": ENGLISH},
                      {"id": "g", "url": f"https://www.{gambling}/", "text": ENGLISH},
                      {"id": "ok", "url": "https://news.example/", "text": ENGLISH}])
    config = tmp_path / "chain.json"
    config.write_text(json.dumps({"steps": [{"step": "url_filter"}]}))
    out = tmp_path / "out"
    assert main(["data", "run", "--input", str(src), "--out", str(out), "--config", str(config), "--workers", "1",
                 "--blocklist", str(ut1)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["steps"][1]["dropped"] == {"blocklisted_url": 1, "blocklisted_domain": 1}
    lists = {e["list"]: e["entries"] for e in report["step_settings"][0]["lists"]}
    for category in ("malware/urls", "gambling/domains", "adult/urls"):
        entries = [l for l in (ut1 / category).read_text().splitlines() if l.strip() and not l.startswith("#")]
        assert lists[str(ut1 / category)] == len(entries)
    assert "default:domains" in lists  # UT1 adds to the default lists
    assert f"| {ut1 / 'malware' / 'urls'} | urls |" in (out / "report.md").read_text()
    capsys.readouterr()
    assert main(["data", "run", "--input", str(src), "--out", str(tmp_path / "o2"), "--config", str(config),
                 "--blocklist", str(tmp_path / "none")]) == 2
    assert "--blocklist" in capsys.readouterr().err

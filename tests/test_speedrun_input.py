"""`lmforge speedrun --input FILES`: the whole chain on the user's own text instead of the crawled documentation site
(smoke preset); the stages that only make sense on that site say why they were skipped; a run folder is not resumed
on other data (a missing input is refused before anything is written: `test_hostile_flags.py`)."""

import json
import shutil
from pathlib import Path

import pytest

from hostile import tree_digest
from lmforge.speedrun import run_speedrun
from lmforge.utils import LmforgeError


@pytest.mark.timeout(1500)
def test_smoke_speedrun_on_own_text(shared_data, tmp_path, capsys):
    text = tmp_path / "mine" / "taylorswift.txt"  # a Wikipedia article, 186 kB of prose: "my own text"
    text.parent.mkdir()
    shutil.copy(shared_data / "pretrain" / "text" / "taylorswift.txt", text)
    out = tmp_path / "run"
    summary = run_speedrun(out, threads=1, preset="smoke", inputs=[str(text.parent)])
    crawl = summary["crawl"]
    assert crawl["source"] == "input" and crawl["inputs"] == [str(text.resolve())] and "pages" not in crawl
    assert "nothing crawled" in crawl["skipped"] and not list((out / "01_crawl").glob("**/*.warc*"))
    data = summary["data"]
    assert data["chain"] == "fineweb" and data["kept_documents"] > 1  # the article, cut at paragraph breaks
    kept = [json.loads(line) for f in data["documents"] for line in _lines(Path(f))]
    assert any("Swift" in d["text"] for d in kept) and max(len(d["text"]) for d in kept) <= 20_000
    assert summary["pretrain"]["checkpoint"] and Path(summary["export_assistant"]["params_file"]).is_file()
    assert summary["evaluate"]["models"] == {} and "--input documents" in summary["evaluate"]["skipped"]
    assert summary["evaluate"]["rl"]["win_rate"]["held_out_judge"]["comparisons"] > 0
    report = (out / "report.md").read_text()
    assert "Not run: multiple choice on the stdlib documentation tasks" in report and "Stages not run" not in report

    # Resumed on other data, or without --input, the run folder is refused: its models were trained on this text.
    other = tmp_path / "other.txt"
    other.write_text("Some other text.\n" * 50)
    before = tree_digest(out)
    for inputs in ([str(other)], None):
        with pytest.raises(LmforgeError, match="--input: this run folder was started on"):
            run_speedrun(out, threads=1, preset="smoke", inputs=inputs)
    assert tree_digest(out) == before
    capsys.readouterr()
    again = run_speedrun(out, threads=1, preset="smoke", inputs=[str(text.parent)])
    assert "running" not in capsys.readouterr().out and again["crawl"] == crawl


def _lines(path: Path) -> list[str]:
    import gzip

    with gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else open(path, encoding="utf-8") as f:
        return [line for line in f if line.strip()]

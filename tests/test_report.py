"""The speedrun's report card: built from a run folder's artifacts (the real formats, written here small so the
test takes seconds; tests/test_speedrun.py checks a real smoke run writes both reports), rendered in a real browser
with every plot loaded, and refusing a damaged artifact with one line naming it."""

import json
import shutil
from pathlib import Path

import pytest

from hostile import assert_refused, run_cli
from lmforge.speedrun.report import MACHINE_FILE, machine_record, write_report
from lmforge.speedrun.runner import STAGES
from lmforge.utils import write_json

NAMES = [stage.name for stage in STAGES]


def write_stage(run: Path, number: int, name: str, summary: dict) -> Path:
    folder = run / f"{number:02d}_{name}"
    folder.mkdir(parents=True)
    write_json(folder / "DONE.json", {**summary, "seconds": 1.5})
    return folder


def write_metrics(run_dir: Path, steps: int) -> None:
    run_dir.mkdir(parents=True)
    rows = [{"step": s, "loss": 7.0 - s / steps, "tokens": 1024 * s, "elapsed_s": 0.5 * s} for s in range(1, steps + 1)]
    rows[-1].update(val_loss=6.5, val_bpb=2.4)
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def synthetic_run(run: Path) -> Path:
    """A run folder whose crawl, data, tokenizer, pretrain and chat stages finished (in the formats the stages write),
    plus a stage the report has no special section for (a reward model), and no sft or export stages."""
    write_json(run / MACHINE_FILE, {**machine_record(), "preset": "smoke", "threads": 1})
    write_stage(run, 1, "crawl", {"warc_dir": str(run / "01_crawl/warc"), "pages": 40, "skipped": {"off_scope": 13}})
    data = write_stage(run, 2, "data", {"report": str(run / "02_data/report.md"), "kept_documents": 22})
    write_json(data / "report.json", {"steps": [
        {"name": "read", "docs_in": 40, "docs_out": 40, "dropped": {}},
        {"name": "language", "docs_in": 40, "docs_out": 34,
         "dropped": {"language_low_score": 4, "language_unwanted": 2}},
    ], "kept": {"documents": 34, "bytes": 197584}})
    write_stage(run, 3, "tokenizer", {"vocab_size": 1024, "sample_bytes_per_token": 1.71})
    write_stage(run, 5, "pretrain", {"run_dir": str(run / "05_pretrain/run"), "params": 1066112, "tokens": 81920,
                                     "val_loss": 4.43, "val_bpb": 2.344})
    write_metrics(run / "05_pretrain/run", 20)
    chat = write_stage(run, 9, "chat", {"messages": str(run / "09_chat/chat.json"), "format_compliance": 1.0,
                                        "tool_call_accuracy": 0.25})
    write_json(chat / "chat.json", {"messages": [{"role": "user", "content": "Who are you?"},
                                                 {"role": "assistant", "content": "The lmforge assistant."}]})
    write_json(chat / "eval.json", {"samples": [{"user": "what's 3*4", "assistant": "[calculator: 3*4] 12"}]})
    task = {"items": 40, "baseline": 0.25, "accuracy": {"sum": 0.45, "token": 0.35, "byte": 0.3}, "centred": 0.0667}
    write_stage(run, 11, "evaluate", {"items_per_task": 40, "models": {"base": {
        "normalisation": "byte", "tasks": {"stdlib_signature": task}, "core": 0.0667, "core_interval": [0.01, 0.12]}}})
    write_stage(run, 12, "reward_model", {"pairwise_accuracy": 0.71, "margin": {"mean": 0.8}})
    write_stage(run, 13, "security", {"cases_per_source": 3, "suites": {"harmful": {"rate": 0.875, "answered": 8}}})
    return run


def test_speedrun_report_sections_follow_the_artifacts(tmp_path):
    run = synthetic_run(tmp_path / "run")
    md_path, html_path = write_report(run, NAMES)
    md = md_path.read_text()
    assert "| language | 40 | 34 | 6 | language_low_score 4, language_unwanted 2 |" in md  # the funnel, with reasons
    assert "| validation bits per byte | 2.344 |" in md and "| bytes per token (sample) | 1.71 |" in md
    assert "![pretrain loss](report_pretrain_loss.png)" in md and (run / "report_pretrain_loss.png").stat().st_size
    assert "The lmforge assistant." in md and "[calculator: 3*4] 12" in md
    assert "| base | stdlib_signature | 40 | 0.25 | 0.45 | 0.35 | 0.3 | 0.0667 |" in md
    assert "base: CORE-like score 0.0667 (95% interval 0.01 to 0.12" in md and "## Stage evaluate" not in md
    assert "## Stage reward_model" in md and "| margin.mean | 0.8 |" in md  # any stage's summary becomes a table
    assert "## Stage security" in md and "| suites.harmful.rate | 0.875 |" in md  # the short scan's rates
    assert f"| cores | {machine_record()['cores']} |" in md and "| preset | smoke |" in md
    done = {"crawl", "data", "tokenizer", "pretrain", "chat", "evaluate", "security"}
    assert f"Stages not run (no `DONE.json`): {', '.join(n for n in NAMES if n not in done)}." in md
    assert "tokenize, sample, export, sft, " in md and "export_assistant" in md
    assert "## Stage sft" not in md and "parameter file" not in md  # no section for a stage that did not run
    html = html_path.read_text()
    assert html.count("data:image/png;base64,") == 1 and "http://" not in html and "https://" not in html


def test_speedrun_report_of_a_crawl_only_run_has_no_empty_sections(tmp_path):
    run = tmp_path / "run"
    write_stage(run, 1, "crawl", {"pages": 3})
    md = write_report(run, NAMES)[0].read_text()
    titles = [line for line in md.splitlines() if line.startswith("## ")]
    assert titles == ["## Stages", "## Stage crawl"]


def test_speedrun_report_cli_rebuilds_and_names_missing_stages(tmp_path):
    run = synthetic_run(tmp_path / "run")
    outcome = run_cli(["report", str(run)])
    assert outcome.code == 0, outcome.stderr
    assert "stages not run" in outcome.stdout and "sft" in outcome.stdout
    assert (run / "report.md").is_file() and (run / "report.html").is_file()


@pytest.mark.parametrize("damage", ["marker", "metrics", "data_report", "chat", "chat_eval"])
def test_speedrun_report_refuses_damaged_artifacts_naming_the_file(tmp_path, damage):
    run = synthetic_run(tmp_path / "run")
    culprit = {"marker": run / "03_tokenizer/DONE.json", "metrics": run / "05_pretrain/run/metrics.jsonl",
               "data_report": run / "02_data/report.json", "chat": run / "09_chat/chat.json",
               "chat_eval": run / "09_chat/eval.json"}[damage]
    culprit.write_text({"chat": '{"messages": 3}\n', "chat_eval": "[1]\n"}.get(damage, "{not json\n{}\n"))
    outcome = run_cli(["report", str(run)])
    assert_refused(outcome, str(culprit))
    assert not (run / "report.md").exists() and not (run / "report.html").exists()


def test_speedrun_report_refuses_a_folder_without_a_run(tmp_path):
    assert_refused(run_cli(["report", str(tmp_path)]), str(tmp_path))
    assert_refused(run_cli(["report", str(tmp_path / "nowhere")]), "nowhere")


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(chromium() is None, reason="no chromium on this machine")
def test_speedrun_report_html_renders_offline_in_a_browser(tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    run = synthetic_run(tmp_path / "run")
    write_stage(run, 8, "sft", {"run_dir": str(run / "08_sft/run")})
    write_metrics(run / "08_sft/run", 10)
    html_path = write_report(run, NAMES)[1]
    errors, requests = [], []
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("request", lambda r: requests.append(r.url))
            page.goto(html_path.as_uri())
            page.wait_for_load_state("load")
            widths = page.eval_on_selector_all("img", "imgs => imgs.map(i => i.complete ? i.naturalWidth : 0)")
            headings = page.eval_on_selector_all("h2", "hs => hs.map(h => h.textContent)")
        finally:
            browser.close()
    assert len(widths) == 2 and all(w > 0 for w in widths), widths  # pretrain's and sft's loss curves
    assert "Data funnel" in headings and "Stage reward_model" in headings
    assert not errors, errors
    assert all(url.startswith(("file://", "data:")) for url in requests), requests

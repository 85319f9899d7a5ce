"""The speedrun's report card: one page that says what the run did, read back from the run folder's artifacts.

`build_report(run_dir)` collects sections from whatever the folder holds (each stage's `DONE.json` summary, the data
report, the training metrics, the chat evaluation and transcript, the machine record) and `write_report` renders them
as `report.md` and one self-contained `report.html` (plots as base64 PNG, CSS inline: it opens offline). A stage
without a marker is listed as not run and its sections are left out, so the same code reports a finished run, a
partial one and a run whose stage table has grown (any stage's summary becomes a table).
"""

from __future__ import annotations

import json
import math
import os
import platform
from pathlib import Path
from typing import Any

from lmforge.speedrun.context import MARKER, read_marker
from lmforge.speedrun.report_html import Image, Section, Table, render_html, render_markdown
from lmforge.speedrun.report_preference import preference_section, rl_evaluation_section
from lmforge.utils import LmforgeError, atomic_write, read_json

MACHINE_FILE = "machine.json"


def machine_record() -> dict[str, Any]:
    """What the run ran on, written by the runner at the start of a run so the report names the run's machine, not
    the one that rebuilds the report."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        memory = None
    cuda = torch.cuda.is_available()
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else []
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(memory / 2**30, 1) if memory else None,
            "python": platform.python_version(), "torch": torch.__version__, "os": platform.platform(),
            "gpus": gpus}


def stage_folders(run_dir: Path) -> dict[str, Path]:
    """Each stage's folder by stage name (`NN_name`), also for stages the current table no longer lists."""
    folders = {}
    for path in sorted(run_dir.iterdir()):
        prefix, _, name = path.name.partition("_")
        if path.is_dir() and prefix.isdigit() and name:
            folders[name] = path
    return folders


def read_summaries(run_dir: Path, stage_names: list[str]) -> tuple[dict[str, dict[str, Any]], dict[str, Path],
                                                                  list[str]]:
    """The finished stages' summaries (checked by `read_marker`), their folders, and the stages of `stage_names`
    (the runner's table) not done."""
    folders = stage_folders(run_dir)
    summaries = {name: read_marker(folder / MARKER) for name, folder in folders.items()
                 if (folder / MARKER).is_file()}
    missing = [name for name in stage_names if name not in summaries]
    return summaries, folders, missing


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """A training run's `metrics.jsonl`; a line that is not a JSON object with a numeric step is an error naming
    the file, except a torn last line (a kill mid-write), which is dropped."""
    rows: list[dict[str, Any]] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines, 1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):
                break
            raise LmforgeError(f"metrics file {path} line {number} is not JSON") from None
        if not isinstance(row, dict) or not isinstance(row.get("step"), (int, float)):
            raise LmforgeError(f"metrics file {path} line {number}: not a metrics record with a step")
        rows.append(row)
    return rows


def loss_plot(title: str, rows: list[dict[str, Any]]) -> bytes:
    """Training and validation loss against step as a PNG (matplotlib's Agg backend: no display needed)."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=100)
    train = [(r["step"], r["loss"]) for r in rows if isinstance(r.get("loss"), (int, float))]
    val = [(r["step"], r["val_loss"]) for r in rows if isinstance(r.get("val_loss"), (int, float))]
    if train:
        ax.plot(*zip(*train), label="train loss", linewidth=1)
    if val:
        ax.plot(*zip(*val), "o-", label="validation loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def scalar_rows(summary: dict[str, Any], prefix: str = "") -> list[list[Any]]:
    """A summary's numbers, flags and short strings as (key, value) rows, nested objects flattened with dotted keys;
    lists and long strings (samples, file lists) are left to the sections that show them."""
    rows: list[list[Any]] = []
    for key, value in summary.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            rows.extend(scalar_rows(value, f"{name}."))
        elif isinstance(value, bool) or value is None:
            rows.append([name, str(value).lower()])
        elif isinstance(value, (int, float)):
            rows.append([name, fmt_number(value)])
        elif isinstance(value, str) and len(value) <= 160:
            rows.append([name, value])
    return rows


def fmt_number(value: float) -> str:
    if isinstance(value, int):
        return f"{value:,}"
    if not math.isfinite(value):
        return str(value)
    return f"{value:,.4g}" if abs(value) < 1e6 else f"{value:,.0f}"


def overview_section(summaries: dict[str, dict[str, Any]], missing: list[str], run_dir: Path) -> Section:
    """Time and tokens per stage, and which stages of the table have not run."""
    rows = []
    for name, summary in summaries.items():
        tokens = [f"{key}: {value}" for key, value in scalar_rows(summary)
                  if "tokens" in key.rsplit(".", 1)[-1] and "per" not in key and value[:1].isdigit()]
        rows.append([name, fmt_number(summary.get("seconds", 0)), ", ".join(tokens)])
    total = sum(s.get("seconds", 0) for s in summaries.values())
    section = Section("Stages", [f"Run folder `{run_dir}`: {len(summaries)} stages finished in "
                                 f"{total / 60:.1f} minutes of stage time.",
                                 Table(["stage", "seconds", "tokens"], rows)])
    if missing:
        section.blocks.append(f"Stages not run (no `{MARKER}`): {', '.join(missing)}.")
    return section


def machine_section(run_dir: Path) -> Section | None:
    path = run_dir / MACHINE_FILE
    if not path.is_file():
        return None
    record = read_json(path, "speedrun machine record")
    if not isinstance(record, dict):
        raise LmforgeError(f"speedrun machine record {path} is corrupt: not a JSON object")
    record = {k: (", ".join(map(str, v)) or "none") if isinstance(v, list) else v for k, v in record.items()}
    return Section("Machine", [Table(["", "value"], scalar_rows(record))])


def data_section(summaries: dict[str, dict[str, Any]], folders: dict[str, Path]) -> Section | None:
    """The data funnel: documents in and out of each step of the data pipeline, with the reasons for the drops."""
    path = folders["data"] / "report.json" if "data" in summaries else None
    if path is None or not path.is_file():
        return None
    report = read_json(path, "data report")
    steps = report.get("steps") if isinstance(report, dict) else None
    if not isinstance(steps, list) or not all(isinstance(s, dict) for s in steps):
        raise LmforgeError(f"data report {path} is corrupt: no list of steps")
    rows = []
    for step in steps:
        dropped = step.get("dropped") if isinstance(step.get("dropped"), dict) else {}
        reasons = ", ".join(f"{reason} {count}" for reason, count in dropped.items())
        docs_in, docs_out = step.get("docs_in", 0), step.get("docs_out", 0)
        rows.append([step.get("name", "?"), fmt_number(docs_in), fmt_number(docs_out),
                     fmt_number(docs_in - docs_out) if isinstance(docs_in, int) and isinstance(docs_out, int) else "",
                     reasons])
    blocks: list[Any] = [Table(["step", "documents in", "kept", "dropped", "reasons"], rows)]
    kept = report.get("kept")
    if isinstance(kept, dict):
        blocks.append(f"Kept {fmt_number(kept.get('documents', 0))} documents, "
                      f"{fmt_number(kept.get('bytes', 0))} bytes of text.")
    return Section("Data funnel", blocks)


def model_section(summaries: dict[str, dict[str, Any]]) -> Section | None:
    """Tokenizer size and compression, parameters, bits per byte and parameter-file sizes, from the stages that
    measured them."""
    tokenizer, pretrain = summaries.get("tokenizer", {}), summaries.get("pretrain", {})
    rows = []
    for label, value in [("vocabulary", tokenizer.get("vocab_size")),
                         ("bytes per token (sample)", tokenizer.get("sample_bytes_per_token")),
                         ("parameters", pretrain.get("params")),
                         ("pretraining tokens", pretrain.get("tokens")),
                         ("validation loss (nats/token)", pretrain.get("val_loss")),
                         ("validation bits per byte", pretrain.get("val_bpb"))]:
        if isinstance(value, (int, float)):
            rows.append([label, fmt_number(value)])
    for stage in ("export", "export_assistant"):
        sizes = summaries.get(stage, {}).get("bytes")
        if isinstance(sizes, dict):
            rows += [[f"{stage} parameter file ({dtype})", f"{size / 2**20:.2f} MiB"]
                     for dtype, size in sizes.items() if isinstance(size, (int, float))]
    return Section("Tokenizer and model", [Table(["measure", "value"], rows)]) if rows else None


def curves_section(summaries: dict[str, dict[str, Any]]) -> Section | None:
    """Loss curves of every stage that trained (its summary names a `run_dir` holding `metrics.jsonl`)."""
    blocks: list[Any] = []
    for name, summary in summaries.items():
        metrics = Path(str(summary.get("run_dir", ""))) / "metrics.jsonl"
        if summary.get("run_dir") and metrics.is_file():
            rows = read_metrics(metrics)
            if rows:
                blocks.append(Image(f"{name} loss", loss_plot(f"{name}: loss", rows)))
    return Section("Loss curves", blocks) if blocks else None


def chat_sections(summaries: dict[str, dict[str, Any]], folders: dict[str, Path]) -> list[Section]:
    """The SFT evaluation's samples and the scripted conversation (the measures are in the chat stage's table)."""
    sections = []
    folder = folders.get("chat")
    eval_file = folder / "eval.json" if folder else None
    if "chat" in summaries and eval_file and eval_file.is_file():
        evaluation = read_json(eval_file, "SFT evaluation")
        if not isinstance(evaluation, dict):
            raise LmforgeError(f"SFT evaluation {eval_file} is corrupt: not a JSON object")
        samples = evaluation.get("samples")
        if isinstance(samples, list) and samples:
            rows = [[s.get("user", ""), s.get("assistant", "")] for s in samples if isinstance(s, dict)]
            sections.append(Section("SFT evaluation samples", [Table(["user", "assistant"], rows)]))
    messages_file = Path(str(summaries.get("chat", {}).get("messages", "")))
    if messages_file.is_file():
        record = read_json(messages_file, "chat transcript")
        messages = record.get("messages") if isinstance(record, dict) else None
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            raise LmforgeError(f"chat transcript {messages_file} is corrupt: no list of messages")
        rows = [[m.get("role", ""), m.get("content") or "(no text)"] for m in messages]
        sections.append(Section("Sample conversation", [Table(["role", "content"], rows)]))
    return sections


def evaluation_section(summary: dict[str, Any]) -> Section | None:
    """The multiple-choice scores of each evaluated model, per task and aggregated (the `evaluate` stage)."""
    models = summary.get("models")
    if not isinstance(models, dict) or not models:
        return None
    rows, blocks = [], []
    for model, result in models.items():
        tasks = result.get("tasks") if isinstance(result, dict) else None
        if not isinstance(tasks, dict):
            raise LmforgeError(f"the evaluate stage's summary of {model!r} has no tasks")
        for task, t in tasks.items():
            accuracy = t.get("accuracy", {}) if isinstance(t, dict) else {}
            rows.append([model, task, t.get("items", ""), fmt_number(t.get("baseline", 0)),
                         *(fmt_number(accuracy.get(k, 0)) for k in ("sum", "token", "byte")),
                         fmt_number(t.get("centred", 0))])
        low, high = (result.get("core_interval") or [math.nan, math.nan])[:2]
        blocks.append(f"{model}: CORE-like score {fmt_number(result.get('core', math.nan))} "
                      f"(95% interval {fmt_number(low)} to {fmt_number(high)}, {result.get('normalisation')}-"
                      f"normalised accuracy centred on chance, averaged over tasks).")
    table = Table(["model", "task", "items", "chance", "acc sum", "acc token", "acc byte", "centred"], rows)
    return Section("Evaluation: multiple choice", [table, *blocks])


def evaluate_sections(summary: dict[str, Any]) -> list[Section | None]:
    skipped = summary.get("skipped")
    note = Section("Evaluation: multiple choice", [f"Not run: {skipped}."]) if isinstance(skipped, str) else None
    return [evaluation_section(summary) or note, rl_evaluation_section(summary)]


# Stages whose summary has sections of their own, so no generic table repeats it.
DEDICATED_SECTIONS = {"evaluate": evaluate_sections}


def build_report(run_dir: Path, stage_names: list[str]) -> tuple[list[Section], list[str]]:
    """Every section the run folder's artifacts support, and the stages of the table that have not run."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise LmforgeError(f"run folder not found: {run_dir}")
    summaries, folders, missing = read_summaries(run_dir, stage_names)
    if not summaries:
        raise LmforgeError(f"{run_dir} holds no finished speedrun stage (no NN_stage/{MARKER})")
    sections: list[Section | None] = [overview_section(summaries, missing, run_dir), machine_section(run_dir),
                                      data_section(summaries, folders), model_section(summaries),
                                      curves_section(summaries)]
    sections += chat_sections(summaries, folders)
    sections.append(preference_section(summaries))
    for name, summary in summaries.items():
        if name in DEDICATED_SECTIONS:
            sections += DEDICATED_SECTIONS[name](summary)
            continue
        rows = scalar_rows({k: v for k, v in summary.items() if k != "seconds"})
        if rows:
            sections.append(Section(f"Stage {name}", [Table(["measure", "value"], rows)]))
    return [s for s in sections if s is not None], missing


def write_report(run_dir: Path, stage_names: list[str]) -> tuple[Path, Path]:
    """Write `report.md` (plots beside it as `report_*.png`) and the self-contained `report.html`; `stage_names`
    (the runner's table, which imports this module) says which stages a partial run lacks."""
    run_dir = Path(run_dir)
    sections, missing = build_report(run_dir, stage_names)
    md_path, html_path = run_dir / "report.md", run_dir / "report.html"
    with atomic_write(md_path) as f:
        f.write(render_markdown(sections, run_dir))
    with atomic_write(html_path) as f:
        f.write(render_html(sections, f"lmforge speedrun report: {run_dir.name}"))
    return md_path, html_path

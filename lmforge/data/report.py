"""The run report: what each step took in, let out, dropped and why, in JSON (for tools) and Markdown (for people).

Every worker's statistics are merged per step (`StepStats.merge`), so the numbers describe the whole dataset. The
report also checks its own arithmetic (each step's input = output + drops, and each step's output = the next
step's input): a filter that loses documents without a reason shows up as a failed check, not as a quiet gap.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from lmforge.data.base import StepStats
from lmforge.utils import human_bytes, write_json


def _merge_steps(results: list[dict]) -> list[StepStats]:
    merged: list[StepStats] = []
    for r in results:
        for i, d in enumerate(r["steps"]):
            st = StepStats.from_dict(d)
            if i == len(merged):
                merged.append(st)
            else:
                merged[i].merge(st)
    return merged


MAX_SOURCES = 50  # rows of the per-source table; the rest are summed into one row


def _merge_sources(results: list[dict]) -> list[dict[str, Any]]:
    """Kept and dropped documents per source (input file or host) over every task of both stages, most documents
    first; past MAX_SOURCES the smaller sources are summed into one row, so the counts still add up."""
    merged: dict[str, dict[str, Any]] = {}
    for r in results:
        for name, e in r.get("sources", {}).items():
            m = merged.setdefault(name, {"source": name, "kind": e["kind"], "kept": 0, "dropped": Counter()})
            m["kept"] += e["kept"]
            m["dropped"].update(e["dropped"])
    rows = sorted(merged.values(), key=lambda m: (-(m["kept"] + sum(m["dropped"].values())), m["source"]))
    if len(rows) > MAX_SOURCES:
        rest = rows[MAX_SOURCES - 1:]
        other = {"source": f"({len(rest)} other sources)", "kind": "other", "kept": sum(m["kept"] for m in rest),
                 "dropped": sum((m["dropped"] for m in rest), Counter())}
        rows = rows[:MAX_SOURCES - 1] + [other]
    return [{"source": m["source"], "kind": m["kind"], "in": m["kept"] + sum(m["dropped"].values()),
             "kept": m["kept"], "dropped": sum(m["dropped"].values()),
             "reasons": dict(sorted(m["dropped"].items(), key=lambda kv: (-kv[1], kv[0])))} for m in rows]


def _merge_languages_dropped(results: list[dict]) -> dict[str, dict[str, int]]:
    """Dropped documents that carried a language label, per language and the step that dropped them, most
    first: which languages the run lost, to the language filter or to the rules after it."""
    merged: dict[str, Counter] = {}
    for r in results:
        for lang, steps in r.get("languages_dropped", {}).items():
            merged.setdefault(lang, Counter()).update(steps)
    order = sorted(merged, key=lambda lang: (-sum(merged[lang].values()), lang))
    return {lang: dict(merged[lang].most_common()) for lang in order}


def _check(steps: list[dict], sources: list[dict] | None = None) -> list[str]:
    """Problems with the counts (empty when they add up)."""
    problems = []
    if sources and steps and sum(s["in"] for s in sources) != steps[0]["docs_out"]:
        problems.append(f"the sources account for {sum(s['in'] for s in sources)} documents but "
                        f"{steps[0]['name']} let out {steps[0]['docs_out']}")
    for s in steps[1:]:  # the reader counts unreadable items as drops of things that never became documents
        if s["docs_in"] != s["docs_out"] + sum(s["dropped"].values()):
            problems.append(f"step {s['name']}: {s['docs_in']} in != {s['docs_out']} out + {sum(s['dropped'].values())} dropped")
    for a, b in zip(steps, steps[1:]):
        if a["docs_out"] != b["docs_in"]:
            problems.append(f"{a['name']} let out {a['docs_out']} documents but {b['name']} took in {b['docs_in']}")
    return problems


def build_report(config, a_results: list[dict], dedup_stats: dict | None, c_results: list[dict],
                 seconds: float, workers: int, engine: str,
                 settings: list[dict] | None = None, warnings: list[str] | None = None) -> dict[str, Any]:
    """The whole run's report from its tasks' results; `settings` and `warnings` come from
    `pipeline.chain_setup` and the tasks (each warning once)."""
    steps = _merge_steps(a_results)
    if c_results:
        steps += _merge_steps(c_results)
        dedup_step = next(s for s in steps if s.name == "dedup")
        # the dedup step's cost is all three stages: signatures (in stage A), clustering, filtering
        dedup_step.seconds += sum(r.get("signature_seconds", 0.0) for r in a_results) + dedup_stats["seconds"]
    final = c_results if c_results else a_results
    languages: Counter = Counter()
    lengths: Counter = Counter()
    for r in final:
        languages.update(r["output"]["languages"])
        lengths.update(r["output"]["lengths"])
    step_dicts = []
    for s in steps:
        d = s.to_dict()
        d["docs_per_second"] = round(s.docs_in / s.seconds, 1) if s.seconds > 0 else None
        step_dicts.append(d)
    kept = {"documents": sum(r["output"]["documents"] for r in final),
            "bytes": sum(r["output"]["bytes"] for r in final)}
    report = {
        "config": config.name,
        "config_digest": config.digest(),
        "relaxed_rules": [{"step": s["step"], "why": s["why"]} for s in config.steps if isinstance(s, dict) and "why" in s],
        "engine": engine,
        "workers": workers,
        "inputs": len({r["input"] for r in a_results}),
        "tasks": len(a_results),
        "seconds": round(seconds, 2),
        "steps": step_dicts,
        "kept": kept,
        "languages": dict(languages.most_common()),
        "lengths": {k: lengths[k] for k in sorted(lengths, key=lambda b: int(b.split("-")[0].rstrip("+")))},
        "dedup": dedup_stats,
        "tokens": None,  # filled in by `add_tokens` when the kept documents are tokenized (the speedrun)
        "warnings": list(warnings or []),
        "step_settings": list(settings or []),
        # a run resumed from tasks an older lmforge finished has no per-source counts for them: no table then
        "sources": _merge_sources(a_results + c_results)
        if all("sources" in r for r in a_results + c_results) else [],
        "languages_dropped": _merge_languages_dropped(a_results + c_results),
    }
    report["problems"] = _check(step_dicts, report["sources"])
    return report


def to_markdown(report: dict[str, Any]) -> str:
    lines = [f"# Data pipeline report: {report['config']}", "",
             f"{report['inputs']} input files in {report['tasks']} tasks, engine {report['engine']}, "
             f"{report['workers']} workers, "
             f"{report['seconds']} s. Kept {report['kept']['documents']} documents "
             f"({human_bytes(report['kept']['bytes'])}).", ""]
    if report["problems"]:
        lines += ["**Counts do not add up:**", ""] + [f"- {p}" for p in report["problems"]] + [""]
    if report.get("warnings"):
        lines += ["## Warnings", ""] + [f"- {w}" for w in report["warnings"]] + [""]
    lines += ["## Steps", "", "| step | docs in | docs out | bytes in | bytes out | seconds | docs/s |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for s in report["steps"]:
        lines.append(f"| {s['name']} | {s['docs_in']} | {s['docs_out']} | {human_bytes(s['bytes_in'])} | "
                     f"{human_bytes(s['bytes_out'])} | {s['seconds']} | {s['docs_per_second'] or '-'} |")
    lines += ["", "## Drop reasons", "", "| step | reason | count | examples |", "|---|---|---:|---|"]
    for s in report["steps"]:
        for reason, n in sorted(s["dropped"].items(), key=lambda kv: -kv[1]):
            ex = ", ".join(str(e) for e in s["examples"].get(reason, []))
            lines.append(f"| {s['name']} | {reason} | {n} | {ex} |")
    lines += _settings_markdown(report.get("step_settings", []))
    lines += _sources_markdown(report.get("sources", []), report.get("languages_dropped", {}))
    if report["relaxed_rules"]:
        lines += ["", "## Rules this config changes", ""]
        lines += [f"- **{r['step']}**: {r['why']}" for r in report["relaxed_rules"]]
    if report["dedup"]:
        d = report["dedup"]
        lines += ["", "## Deduplication", "",
                  f"{d['documents']} documents compared: {d['exact_clusters']} exact-duplicate clusters "
                  f"({d['exact_removed']} removed), {d['near_clusters']} near-duplicate clusters "
                  f"({d['near_removed']} removed).", ""]
        lines += [f"- {e['kind']}, {e['size']} documents: kept `{e['kept']}`, removed "
                  + ", ".join(f"`{x}`" for x in e["removed"]) + (", ..." if e["size"] - 1 > len(e["removed"]) else "")
                  for e in d["examples"]]
    for title, key in (("Languages (kept documents)", "languages"), ("Lengths in characters (kept documents)", "lengths")):
        lines += ["", f"## {title}", "", "| value | documents |", "|---|---:|"]
        lines += [f"| {k} | {v} |" for k, v in report[key].items()]
    if report["tokens"]:
        t = report["tokens"]
        lines += ["", "## Tokens", "", f"{t['train_tokens']} train and {t['val_tokens']} validation tokens "
                  f"({t['train_documents']} + {t['val_documents']} documents, dtype {t['dtype']}) in {t['shards_dir']}."]
    return "\n".join(lines) + "\n"


def _settings_markdown(settings: list[dict[str, Any]]) -> list[str]:
    """Each step's setup as the step reported it (`Step.settings`): tables for lists of rows (the blocklists with
    their sizes), one line for anything else."""
    lines: list[str] = []
    for entry in settings:
        lines += ["", f"## Settings of {entry['step']}", ""]
        for key, value in entry.items():
            if key == "step":
                continue
            if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
                columns = list(value[0])
                lines += [f"{key}:", "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
                lines += ["| " + " | ".join(str(v.get(c, "")) for c in columns) + " |" for v in value] + [""]
            else:
                lines.append(f"- {key}: {value}")
    return lines


def _sources_markdown(sources: list[dict[str, Any]], languages_dropped: dict[str, dict[str, int]]) -> list[str]:
    lines: list[str] = []
    if sources:
        lines += ["", "## Sources", "", "Documents read per input file, or per host for pages with a URL "
                  "(the reader's unreadable records are counted under the read step only).", "",
                  "| source | kind | in | kept | dropped | main reasons |", "|---|---|---:|---:|---:|---|"]
        for r in sources:
            reasons = ", ".join(f"{k} {v}" for k, v in list(r["reasons"].items())[:3])
            source = str(r["source"]).replace("|", "\\|")  # a file name may hold the table's separator
            lines.append(f"| {source} | {r['kind']} | {r['in']} | {r['kept']} | {r['dropped']} | {reasons} |")
    if languages_dropped:
        lines += ["", "## Languages dropped", "", "Dropped documents by the language they were identified as, "
                  "and the steps that dropped them.", "", "| language | dropped | by step |", "|---|---:|---|"]
        for lang, steps in languages_dropped.items():
            by = ", ".join(f"{k} {v}" for k, v in steps.items())
            lines.append(f"| {lang} | {sum(steps.values())} | {by} |")
    return lines


def write_report(out: Path, report: dict[str, Any]) -> None:
    write_json(out / "report.json", report)
    from lmforge.utils import atomic_write

    with atomic_write(out / "report.md") as f:
        f.write(to_markdown(report))


REPORT_FIELDS = ("config", "inputs", "tasks", "engine", "workers", "seconds", "kept", "problems", "steps",
                 "relaxed_rules", "dedup", "languages", "lengths", "tokens")


def read_report(path: Path) -> dict[str, Any]:
    """A run's report.json, refused by name when it is not one (a damaged or hand-edited file)."""
    from lmforge.utils import LmforgeError, read_json

    report = read_json(path, "pipeline report")
    if not isinstance(report, dict) or any(k not in report for k in REPORT_FIELDS):
        raise LmforgeError(f"{path} is not an lmforge data run report (fields: {', '.join(REPORT_FIELDS)})")
    try:
        to_markdown(report)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise LmforgeError(f"{path}: a field of the report is damaged ({type(e).__name__}: {e})") from e
    return report


def add_tokens(out: Path, token_stats: dict[str, Any]) -> None:
    """Record the tokens written by a later, separate tokenize run (the speedrun's) in a run's report."""
    report = read_report(out / "report.json")
    report["tokens"] = token_stats
    write_report(out, report)

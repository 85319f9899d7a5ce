"""The stage table and the loop that runs it: one folder per stage, in pipeline order, each finished by a
`DONE.json` marker that holds the stage's summary. A stage whose marker exists is skipped and its summary read
back, so an interrupted speedrun resumes where it stopped and `--only` (or `--from`/`--until`) can redo stages on the
others' artifacts. A stage writes its artifacts atomically or resumes them itself (the trainer from its last
checkpoint), and its marker is written last, so a kill at any point loses at most the unfinished stage's progress.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from lmforge.speedrun.assistant import stage_chat, stage_export_assistant, stage_sft
from lmforge.speedrun.base_model import stage_export, stage_pretrain, stage_sample
from lmforge.speedrun.benchmarks import stage_evaluate
from lmforge.speedrun.context import MARKER, SpeedrunContext, read_marker
from lmforge.speedrun.corpus import own_input_files, stage_crawl, stage_data, stage_tokenize, stage_tokenizer
from lmforge.speedrun.preference import stage_compare, stage_label, stage_reward, stage_rlhf
from lmforge.speedrun.report import MACHINE_FILE, machine_record, write_report
from lmforge.speedrun.serve_stage import stage_serve
from lmforge.speedrun.security_stage import stage_security
from lmforge.speedrun.settings import PRESETS
from lmforge.utils import LmforgeError, configure_threads, write_json


@dataclass
class Stage:
    name: str
    run: Callable[[SpeedrunContext, Path], dict[str, Any]]
    """Does the work into the stage folder and returns a JSON-able summary (what it measured)."""
    distributed: bool = False
    """Under torchrun every process runs it (the trainer shares the work); otherwise rank 0 alone does, while the
    others wait and then read its marker."""


STAGES: list[Stage] = [
    Stage("crawl", stage_crawl),
    Stage("data", stage_data),
    Stage("tokenizer", stage_tokenizer),
    Stage("tokenize", stage_tokenize),
    Stage("pretrain", stage_pretrain, distributed=True),
    Stage("sample", stage_sample),
    Stage("export", stage_export),
    Stage("sft", stage_sft, distributed=True),
    Stage("chat", stage_chat),
    # Learning from preferences. Inserted before the export, the stages after them were renumbered (a run made
    # before keeps `10_export_assistant` and `11_evaluate` beside the new `14_`/`15_` ones, which are redone: the
    # model exported and evaluated is now the RL one). New stages go at the end, so that older runs resume.
    Stage("compare", stage_compare),
    Stage("label", stage_label),
    Stage("reward", stage_reward),
    Stage("rlhf", stage_rlhf),
    Stage("export_assistant", stage_export_assistant),  # the model to take away: the RL model
    Stage("evaluate", stage_evaluate),
    Stage("serve", stage_serve),  # the exported assistant behind `lmforge serve`, checked with the openai client
    Stage("security", stage_security),  # a short attack scan of the exported assistant (`security_stage.py`)
]


def stage_markers(out: Path) -> list[Path]:
    """Each stage's marker path, in table order: the stage's folder is `NN_name`, numbered from 01."""
    return [out / f"{i:02d}_{stage.name}" / MARKER for i, stage in enumerate(STAGES, 1)]


def selected_stages(threads: int | None, preset: str, only: list[str] | None, first: str | None,
                    last: str | None) -> set[str]:
    """The stages to run: `--only`'s, or those from `--from` to `--until` (inclusive). Every flag is checked
    before anything runs, each error naming its flag."""
    if threads is not None and threads < 1:
        raise LmforgeError(f"--threads {threads}: must be at least 1")
    if preset not in PRESETS:
        raise LmforgeError(f"--preset {preset}: no such preset; the presets are {', '.join(PRESETS)}")
    names = [stage.name for stage in STAGES]
    unknown = [name for name in only or [] if name not in names]
    if unknown:
        raise LmforgeError(f"--only {' '.join(unknown)}: no such stage; the stages are {', '.join(names)}")
    for flag, name in (("--from", first), ("--until", last)):
        if name is not None and name not in names:
            raise LmforgeError(f"{flag} {name}: no such stage; the stages are {', '.join(names)}")
    start, stop = names.index(first) if first else 0, names.index(last) if last else len(names) - 1
    if start > stop:
        raise LmforgeError(f"--until {last}: comes before --from {first} in the stage order")
    span = set(names[start:stop + 1])
    return span & set(only) if only else span


def join_torchrun(ctx: SpeedrunContext) -> Any:
    """This process's place under torchrun (`DistInfo`; a single process outside it): the training stages share
    their work over every process, the others run on rank 0 alone."""
    from lmforge.train.dist import DistInfo, setup_distributed

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return DistInfo()
    return setup_distributed(ctx.settings.pretrain.get("device", "auto"))


def run_stage(ctx: SpeedrunContext, label: str, stage: Stage, marker: Path, world: Any) -> dict[str, Any]:
    """Run one stage into its folder and write its marker last (rank 0 only); under torchrun the other processes
    join the distributed stages and read every marker once rank 0 has written it."""
    from lmforge.train.dist import barrier

    result: dict[str, Any] = {}
    if world.is_main or stage.distributed:
        print(f"[speedrun] {label}: running")
        marker.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        result = stage.run(ctx, marker.parent)
        result["seconds"] = round(time.perf_counter() - t0, 2)
        if world.is_main:
            write_json(marker, result)
            print(f"[speedrun] {label}: finished in {result['seconds']:.1f} s")
    barrier(world)
    return result if world.is_main else read_marker(marker)


def check_source(finished: dict[str, dict[str, Any]], inputs: list[str] | None) -> None:
    """Refuse to resume a run folder on other documents than it was started on: a crawled run with `--input`, an
    `--input` run without it or with other files (its later stages were trained on those)."""
    crawl = finished.get("crawl")
    if crawl is None:
        return
    was = crawl.get("inputs") if crawl.get("source") == "input" else None
    now = [str(f.resolve()) for f in own_input_files(inputs)] if inputs else None
    if was != now:
        started = f"--input {' '.join(was)}" if was else "the crawl of the documentation site"
        raise LmforgeError(f"--input: this run folder was started on {started}; use another --out for other data")


def run_speedrun(out: Path, threads: int | None = None, preset: str = "default", only: list[str] | None = None,
                 first: str | None = None, last: str | None = None, inputs: list[str] | None = None
                 ) -> dict[str, Any]:
    """Run the selected stages (all by default) whose marker is missing; return the summaries of the stages run or
    skipped, also written to `out/speedrun.json`, and write the report card (`report.md`, `report.html`). `inputs`
    (`--input`): the user's files (text, WARC, JSONL, parquet, folders) take the crawl's place."""
    selected = selected_stages(threads, preset, only, first, last)
    if inputs:
        own_input_files(inputs)  # refused before anything is written
    ctx = SpeedrunContext(out=Path(out), threads=configure_threads(threads), preset=preset, inputs=inputs)
    # Every existing marker is read (and checked) before anything is written, so a damaged one changes nothing.
    finished = {stage.name: read_marker(marker) for stage, marker in zip(STAGES, stage_markers(ctx.out))
                if marker.is_file()}
    check_source(finished, inputs)
    world = join_torchrun(ctx)
    if world.is_main:
        ctx.out.mkdir(parents=True, exist_ok=True)
        write_json(ctx.out / MACHINE_FILE, {**machine_record(), "preset": preset, "threads": ctx.threads,
                                            "processes": world.world_size})
    summary: dict[str, Any] = {}
    t_start = time.perf_counter()
    for i, (stage, marker) in enumerate(zip(STAGES, stage_markers(ctx.out)), 1):
        if stage.name not in selected:
            if stage.name in finished:  # later stages read what this one produced
                ctx.results[stage.name] = finished[stage.name]
            continue
        if stage.name in finished:
            result = finished[stage.name]
            print(f"[speedrun] {i:02d} {stage.name}: done already ({result.get('seconds', 0):.1f} s), skipping")
        else:
            result = run_stage(ctx, f"{i:02d} {stage.name}", stage, marker, world)
        ctx.results[stage.name] = result
        summary[stage.name] = result
    if not world.is_main:
        return summary
    summary["total_seconds"] = round(time.perf_counter() - t_start, 2)
    write_json(ctx.out / "speedrun.json", summary)
    print(f"[speedrun] stages done in {summary['total_seconds']:.1f} s; summary in {ctx.out / 'speedrun.json'}")
    md_path, html_path = write_report(ctx.out, [stage.name for stage in STAGES])
    print(f"[speedrun] report card: {md_path} and {html_path}")
    return summary

"""The runner: reads many input files in parallel worker processes, chains the steps, deduplicates across the
whole dataset, writes kept and dropped documents, and resumes after a crash.

One task per input file (a shard; a few large files are shared by several strided tasks). With a `dedup` step in the chain the run has three stages, because a document
can only be judged a duplicate once every shard has been seen:

    A  per shard, in parallel: read -> steps before `dedup` -> work/a/NNNNN.jsonl.gz + MinHash signatures
    B  once:                   cluster exact and near duplicates over all signatures -> work/dedup/NNNNN.npz
    C  per shard, in parallel: drop duplicates -> steps after `dedup` (PII) -> documents/NNNNN.jsonl.gz

Without `dedup`, stage A runs the whole chain and writes `documents/` directly. Every file a task writes appears
atomically, and a task's statistics file (`work/stats/NNNNN.a.json`, `.c.json`) is written last: it is the marker
that the task is finished, so a restarted run skips exactly the finished tasks and produces identical outputs.
`run.json` pins the inputs and the config: restarting with different ones is an error, not a silent mix.

Tasks are plain functions of a picklable `ShardTask`, so the same code runs in a local process pool (spawn-safe:
nothing is inherited from the parent) and on Dask workers (`lmforge.data.dask_runner`).
"""

from __future__ import annotations

import functools
import hashlib
import json
import sys
import threading
import time
import tomllib
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from lmforge.data.base import Step, StepStats
from lmforge.data.dedup import (DedupConfig, DedupFilter, ShardSignatures, find_duplicates, load_shard_decisions,
                                signatures)
from lmforge.data.document import Document
from lmforge.data.ledger import Ledger, collected_warnings
from lmforge.data.pool import LocalPool, MapFn, check_workers
from lmforge.data.writers import (JSONL_SUFFIX, PARQUET_SUFFIX, JsonlGzWriter, check_output_folder,
                                  read_output_documents, write_parquet)
from lmforge.utils import LmforgeError, read_json, remove_stale_temporaries, write_json

DEDUP = "dedup"
MAX_TASKS = 100_000  # --min-tasks: every task is a ShardTask in memory and a few files on disk


def _default_steps() -> list[dict[str, Any]]:
    """FineWeb's chain with its published thresholds (the chains live in `lmforge.data.filters.configs`)."""
    from lmforge.data.filters.configs import config_steps

    return config_steps("fineweb")


LENGTH_BUCKETS = [0, 100, 300, 1000, 3000, 10_000, 30_000, 100_000, 300_000]  # characters, lower bounds


@dataclass
class OutputConfig:
    format: str = "jsonl"  # "jsonl" (gzipped) or "parquet" for the kept documents
    write_excluded: bool = True  # dropped documents with `step` and `reason`, as datatrove's exclusion writers do


@dataclass
class PipelineConfig:
    """A chain of step specs (`{"step": NAME, PARAM: VALUE, ...}`, see `lmforge.data.filters`), at most one of them
    `dedup`, plus how to read inputs (`ReaderConfig` fields) and how to write outputs."""

    steps: list[dict[str, Any]] = field(default_factory=_default_steps)
    reader: dict[str, Any] = field(default_factory=dict)
    output: OutputConfig = field(default_factory=OutputConfig)
    name: str = "fineweb"

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "config") -> "PipelineConfig":
        if not isinstance(d, dict):
            raise LmforgeError(f"{where}: a pipeline config must be an object with a 'steps' list")
        unknown = set(d) - {"steps", "reader", "output", "name"}
        if unknown:
            raise LmforgeError(f"{where}: unknown field(s) {', '.join(sorted(unknown))} (fields: steps, reader, output, name)")
        try:
            output = OutputConfig(**d.get("output", {}))
        except TypeError as e:
            raise LmforgeError(f"{where}: field 'output': {e}") from e
        if output.format not in ("jsonl", "parquet"):
            raise LmforgeError(f"{where}: output.format must be 'jsonl' or 'parquet', got {output.format!r}")
        cfg = cls(steps=d["steps"] if "steps" in d else _default_steps(), reader=dict(d.get("reader", {})),
                  output=output, name=str(d.get("name", "custom")))
        cfg.validate(where)
        return cfg

    @classmethod
    def load(cls, path: str | Path) -> "PipelineConfig":
        """Read a JSON or TOML config file (TOML: `[[steps]]` tables, `[output]`, `[reader]`)."""
        path = Path(path)
        if not path.is_file():
            raise LmforgeError(f"pipeline config not found: {path}")
        if path.suffix == ".toml":
            try:
                d = tomllib.loads(path.read_text(encoding="utf-8"))
            except tomllib.TOMLDecodeError as e:
                raise LmforgeError(f"pipeline config {path} is not valid TOML: {e}") from e
        else:
            d = read_json(path, "pipeline config")
        d.setdefault("name", path.stem)
        return cls.from_dict(d, str(path))

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "steps": self.steps, "reader": self.reader, "output": asdict(self.output)}

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]

    def split(self) -> tuple[list[dict], DedupConfig | None, list[dict]]:
        """(specs before dedup, dedup config or None, specs after dedup)."""
        names = [s.get("step") if isinstance(s, dict) else None for s in self.steps]
        if DEDUP not in names:
            return list(self.steps), None, []
        i = names.index(DEDUP)
        params = {k: v for k, v in self.steps[i].items() if k not in ("step", "why")}
        return list(self.steps[:i]), DedupConfig(**params), list(self.steps[i + 1:])

    def validate(self, where: str = "config") -> None:
        """Build every step once, so a typo fails before any worker starts."""
        if not isinstance(self.steps, list):
            raise LmforgeError(f"{where}: 'steps' must be a list of step objects")
        if sum(isinstance(s, dict) and s.get("step") == DEDUP for s in self.steps) > 1:
            raise LmforgeError(f"{where}: at most one 'dedup' step")
        try:
            before, _, after = self.split()
        except TypeError as e:
            raise LmforgeError(f"{where}: step 'dedup': {e}") from e
        build_chain(before, where)  # the same two chains the tasks build, so the cache serves them
        build_chain(after, where)
        from lmforge.data.readers import ReaderConfig

        try:
            ReaderConfig(**self.reader)
        except TypeError as e:
            raise LmforgeError(f"{where}: field 'reader': {e}") from e


_built = threading.local()


def build_chain(specs: list[dict], where: str = "config") -> list[Step]:
    """Steps by name from `lmforge.data.filters.STEPS`, or by import path `"package.module:Class"` (a user's own).

    A worker runs many tasks of one config: the steps (blocklists, the language model) are built once per thread
    and reused, which saves about a second per task.
    """
    key = json.dumps(specs, sort_keys=True)
    cache = _built.__dict__.setdefault("chains", {})
    if key not in cache:
        cache[key] = _build_chain(specs, where)
    return cache[key]


def _build_chain(specs: list[dict], where: str) -> list[Step]:
    import importlib

    from lmforge.data.filters import STEPS, build_steps

    registry = dict(STEPS)
    for spec in specs:
        name = spec.get("step") if isinstance(spec, dict) else None
        if isinstance(name, str) and ":" in name and name not in registry:
            module, _, attr = name.partition(":")
            try:
                registry[name] = getattr(importlib.import_module(module), attr)
            except (ImportError, AttributeError) as e:
                raise LmforgeError(f"{where}: cannot import step {name!r}: {e}") from e
    return build_steps(specs, registry, where=where)


# ---------------------------------------------------------------------------------------------------------------
# Tasks (run in worker processes; everything they need travels in the ShardTask)
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class ShardTask:
    index: int
    input: str
    out: str
    config: dict[str, Any]
    part: int = 0  # this task takes documents part, part + parts, part + 2 * parts, ... of its input file
    parts: int = 1

    @property
    def name(self) -> str:
        return f"{self.index:05d}"


def run_paths(out: Path) -> dict[str, Path]:
    return {"work": out / "work", "stage_a": out / "work" / "a", "stats": out / "work" / "stats",
            "documents": out / "documents", "excluded": out / "excluded"}


def kept_path(out: Path, name: str, fmt: str) -> Path:
    return out / "documents" / (name + (PARQUET_SUFFIX if fmt == "parquet" else JSONL_SUFFIX))


def _chain(docs: Iterable[Document], steps: list[Step], stats: list[StepStats], on_drop: Ledger) -> Iterator[Document]:
    for step, st in zip(steps, stats):
        docs = step(docs, st, on_drop)
    return iter(docs)


def _length_bucket(n: int) -> str:
    lo = max(b for b in LENGTH_BUCKETS if b <= n)
    i = LENGTH_BUCKETS.index(lo)
    return f"{lo}-{LENGTH_BUCKETS[i + 1]}" if i + 1 < len(LENGTH_BUCKETS) else f"{lo}+"


def _write_final(docs: Iterator[Document], path: Path, fmt: str, ledger: Ledger) -> dict[str, Any]:
    """Write the kept documents and describe them (languages, lengths, and per source in `ledger`) for the report."""
    languages: Counter = Counter()
    lengths: Counter = Counter()
    summary = {"documents": 0, "bytes": 0}

    def observed() -> Iterator[Document]:
        for d in docs:
            languages[str(d.metadata.get("language", "unknown"))] += 1
            lengths[_length_bucket(len(d.text))] += 1
            summary["documents"] += 1
            summary["bytes"] += len(d.text.encode("utf-8", "surrogatepass"))
            ledger.kept(d)
            yield d

    if fmt == "parquet":
        write_parquet(path, observed())
    else:
        with JsonlGzWriter(path) as w:
            for d in observed():
                w.write(d)
    return {**summary, "file": path.name, "languages": dict(languages), "lengths": dict(lengths)}


def _names_its_input(fn: Callable[[ShardTask], dict]) -> Callable[[ShardTask], dict]:
    """A task that fails says which input file it was working on (the traceback comes from another process)."""

    @functools.wraps(fn)
    def run(task: ShardTask) -> dict:
        try:
            return fn(task)
        except LmforgeError as e:
            raise LmforgeError(f"task {task.name} ({task.input}): {e}") from e
        except Exception as e:
            e.add_note(f"lmforge data: in task {task.name} ({fn.__name__}) on {task.input}")
            raise

    return run


def _task_start(task: ShardTask, stage: str) -> tuple[Path, dict[str, Path], Path, dict | None]:
    """A stage task's output folder, run paths and done-marker, plus the marker's statistics if it already ran
    and every file it recorded is still there with its recorded size (else the task runs again: a deleted output
    must be rebuilt, not reported as kept)."""
    out = Path(task.out)
    paths = run_paths(out)
    marker = paths["stats"] / f"{task.name}.{stage}.json"
    done = read_json(marker, "task statistics") if marker.is_file() else None
    if done is not None and not _outputs_intact(out, done):
        print(f"lmforge data: task {task.name}: an output recorded in {marker} is missing or changed; "
              "running the task again", file=sys.stderr)
        done = None
    return out, paths, marker, done


def _recorded_files(out: Path, files: Iterable[Path]) -> dict[str, int]:
    """What a task wrote, as {path relative to the run folder: size}, kept in its done-marker."""
    return {str(f.relative_to(out)): f.stat().st_size for f in sorted(files) if f.is_file()}


def _outputs_intact(out: Path, done: Any) -> bool:
    files = done.get("files") if isinstance(done, dict) else None
    if not isinstance(files, dict):
        return False
    for rel, size in files.items():
        f = out / rel
        if not f.is_file() or f.stat().st_size != size:
            return False
    return True


@_names_its_input
def run_stage_a(task: ShardTask) -> dict[str, Any]:
    """Read one input file and run the steps before dedup (or all of them); idempotent: skips if done."""
    from lmforge.data.readers import ReaderConfig, read_documents

    out, paths, marker, done = _task_start(task, "a")
    if done is not None:
        return done
    config = PipelineConfig.from_dict(task.config)
    before, dedup, after = config.split()
    read_stats = StepStats("read")
    ledger = Ledger(paths["excluded"] / f"{task.name}.a{JSONL_SUFFIX}", config.output.write_excluded, task.input)
    mine = {"docs": 0, "bytes": 0}
    result: dict[str, Any] = {"input": task.input, "part": task.part, "parts": task.parts}
    ok = False
    with collected_warnings() as caught:  # also what the steps' libraries say while they load
        steps = build_chain(before)
        stats = [StepStats(s.name) for s in steps]
        docs = _chain(_strided(_guarded(read_documents([task.input], stats=read_stats,
                                                       config=ReaderConfig(**config.reader)), read_stats, task.input),
                               task.part, task.parts, mine), steps, stats, ledger)
        try:
            if dedup is None:
                result["output"] = _write_final(docs, kept_path(out, task.name, config.output.format),
                                                config.output.format, ledger)
            else:
                result["output"] = _write_intermediate(docs, paths["stage_a"] / task.name, dedup)
                result["signature_seconds"] = result["output"].pop("signature_seconds")
            ok = True
        finally:
            ledger.close(ok)
    if task.parts > 1:
        _share_read_stats(read_stats, task.part, mine)
    result["steps"] = [read_stats.to_dict()] + [s.to_dict() for s in stats]
    result.update(ledger.to_dict(), warnings=caught)
    written = [ledger.path, kept_path(out, task.name, config.output.format)] if dedup is None else \
        [ledger.path, *paths["stage_a"].glob(f"{task.name}.*")]
    result["files"] = _recorded_files(out, written)
    write_json(marker, result)
    return result


def _strided(docs: Iterator[Document], part: int, parts: int, mine: dict[str, int]) -> Iterator[Document]:
    """Every `parts`-th document from `part` on: several tasks share one large input file (each reads it all,
    which costs far less than the steps), so a crawl of few big WARC files still keeps every core busy."""
    for i, doc in enumerate(docs):
        if i % parts == part:
            mine["docs"] += 1
            mine["bytes"] += len(doc.text.encode("utf-8", "surrogatepass"))
            yield doc


def _share_read_stats(stats: StepStats, part: int, mine: dict[str, int]) -> None:
    """Each part read the whole file: keep only its own documents, and the file's skipped records in part 0 only,
    so the merged report counts every record once (bytes read are shared in proportion to the text kept)."""
    total_in, total_out = stats.bytes_in, stats.bytes_out
    stats.docs_out, stats.bytes_out = mine["docs"], mine["bytes"]
    stats.bytes_in = round(total_in * mine["bytes"] / total_out) if total_out else (total_in if part == 0 else 0)
    if part == 0:
        stats.docs_in = mine["docs"] + sum(stats.dropped.values())
    else:
        stats.docs_in = mine["docs"]
        stats.dropped.clear()
        stats.examples.clear()


def _guarded(docs: Iterator[Document], stats: StepStats, where: str) -> Iterator[Document]:
    """A reader failure the reader itself did not survive (e.g. an unreadable file) ends this input, counted, and
    the run goes on: one bad file must not cost a whole crawl."""
    try:
        yield from docs
    except (LmforgeError, OSError, EOFError, ValueError) as e:
        stats.docs_in += 1
        stats.drop(Document(text="", id=f"{where}: {e}"[:300]), "read_error")  # the example says what went wrong


def _write_intermediate(docs: Iterator[Document], stem: Path, dedup: DedupConfig) -> dict:
    """Stage A's output with dedup: documents as they left the steps, plus their signatures (stage B's input)."""
    summary = {"documents": 0, "bytes": 0}
    with JsonlGzWriter(stem.with_name(stem.name + JSONL_SUFFIX)) as w:
        def written() -> Iterator[tuple[str, str]]:
            for d in docs:
                w.write(d)
                summary["documents"] += 1
                summary["bytes"] += len(d.text.encode("utf-8", "surrogatepass"))
                yield d.text, d.id, d.url or d.id

        sig = signatures(written(), dedup)
    sig.save(stem)
    return {**summary, "signature_seconds": sig.seconds}


def run_stage_b(out: Path, num_shards: int, dedup: DedupConfig) -> dict[str, Any]:
    """Cluster duplicates over every shard's signatures (one process: it needs them all). Skips if done."""
    paths = run_paths(out)
    marker = paths["work"] / "dedup.json"
    if marker.is_file() and all((paths["work"] / "dedup" / f"{k:05d}.npz").is_file() for k in range(num_shards)):
        return read_json(marker, "dedup statistics")
    t0 = time.perf_counter()
    shards = [ShardSignatures.load(paths["stage_a"] / f"{k:05d}") for k in range(num_shards)]
    result = find_duplicates(shards, dedup)
    result.save_shards(paths["work"] / "dedup")
    stats = {**result.stats, "seconds": round(time.perf_counter() - t0, 3)}
    write_json(marker, stats)
    return stats


@_names_its_input
def run_stage_c(task: ShardTask) -> dict[str, Any]:
    """Drop one shard's duplicates and run the steps after dedup; idempotent: skips if done."""
    out, paths, marker, done = _task_start(task, "c")
    if done is not None:
        return done
    config = PipelineConfig.from_dict(task.config)
    _, _, after = config.split()
    reason, duplicate_of = load_shard_decisions(paths["work"] / "dedup" / f"{task.name}.npz")
    ledger = Ledger(paths["excluded"] / f"{task.name}.c{JSONL_SUFFIX}", config.output.write_excluded, task.input)
    ok = False
    with collected_warnings() as caught:
        steps: list[Step] = [DedupFilter(reason, duplicate_of)] + build_chain(after)
        stats = [StepStats(s.name) for s in steps]
        docs = _chain(read_output_documents(paths["stage_a"] / f"{task.name}{JSONL_SUFFIX}"), steps, stats, ledger)
        try:
            output = _write_final(docs, kept_path(out, task.name, config.output.format), config.output.format,
                                  ledger)
            ok = True
        finally:
            ledger.close(ok)
    result = {"input": task.input, "output": output, "steps": [s.to_dict() for s in stats], **ledger.to_dict(),
              "warnings": caught,
              "files": _recorded_files(out, [ledger.path, kept_path(out, task.name, config.output.format)])}
    write_json(marker, result)
    return result


# ---------------------------------------------------------------------------------------------------------------
# Driving a run
# ---------------------------------------------------------------------------------------------------------------

def _pin_run(out: Path, inputs: list[Path], config: PipelineConfig, parts: int) -> int:
    """Record inputs, config and the split of files into tasks; a restart must use the same inputs and config (else
    its shards would mix two runs) and reuses the recorded split. Returns the parts per file."""
    spec = {"inputs": [str(p) for p in inputs], "config": config.to_dict(), "config_digest": config.digest(),
            "parts_per_file": parts}
    path = out / "run.json"
    if path.is_file():
        old = read_json(path, "run record")
        if not isinstance(old, dict) or not isinstance(old.get("parts_per_file", 1), int) or \
                old.get("parts_per_file", 1) < 1:
            raise LmforgeError(f"run record {path} is corrupt (not an lmforge data run record)")
        if old.get("inputs") != spec["inputs"] or old.get("config_digest") != spec["config_digest"]:
            raise LmforgeError(f"{out} holds a run with other inputs or another config ({path}); "
                               "use a new --out directory or delete that one")
        return int(old.get("parts_per_file", 1))
    write_json(path, spec)
    return parts


def run_pipeline(inputs: list[str | Path], out: str | Path, config: PipelineConfig | None = None,
                 workers: int | None = None, map_fn: MapFn | None = None,
                 engine: str = "local", min_tasks: int = 8) -> dict[str, Any]:
    """Run the chain over `inputs` into `out`, resuming a previous run there; return the report dict.

    One task per input file; with fewer than `min_tasks` files, each file is shared by several tasks (every k-th
    document), so that few large files still fill the workers. The split depends on the inputs only, never on the
    worker count, so every engine and worker count gives the same output files.
    `map_fn` runs a task function over a list of tasks (the local pool by default, Dask's in `dask_runner`).
    The kept documents are tokenized by the next stage, `lmforge tokenize` (`lmforge.tokenizer.encode_corpus`).
    """
    from lmforge.data.readers import expand_inputs

    t0 = time.perf_counter()
    config = config or PipelineConfig()
    config.validate()
    out = check_output_folder(out)
    workers = check_workers(workers)
    if not isinstance(min_tasks, int) or isinstance(min_tasks, bool) or not 1 <= min_tasks <= MAX_TASKS:
        raise LmforgeError(f"--min-tasks must be a whole number in [1, {MAX_TASKS}], got {min_tasks!r}")
    files = [p.resolve() for p in expand_inputs([str(i) for i in inputs])]
    if not files:
        raise LmforgeError(f"no input files found in {', '.join(map(str, inputs))}")
    for p in run_paths(out).values():
        p.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(p)  # what a killed run's workers left half-written
    parts = _pin_run(out, files, config, max(1, -(-min_tasks // len(files))))
    tasks = [ShardTask(i * parts + p, str(f), str(out), config.to_dict(), p, parts)
             for i, f in enumerate(files) for p in range(parts)]
    if map_fn is None:
        with LocalPool(min(workers, len(tasks))) as pool:
            return _execute(tasks, out, config, workers, pool, engine, t0)
    return _execute(tasks, out, config, workers, map_fn, engine, t0)


def _execute(tasks: list[ShardTask], out: Path, config: PipelineConfig, workers: int, map_fn: MapFn, engine: str,
             t0: float) -> dict[str, Any]:
    from lmforge.data.report import build_report, write_report

    _, dedup, _ = config.split()
    settings, said = chain_setup(config)
    _say_warnings(said, [])

    a_results = map_fn(run_stage_a, tasks, "filter")
    said += _say_warnings([w for r in a_results for w in r.get("warnings", [])], said)
    dedup_stats = None
    c_results: list[dict] = []
    if dedup is not None:
        dedup_stats = run_stage_b(out, len(tasks), dedup)
        c_results = map_fn(run_stage_c, tasks, "dedup")
        said += _say_warnings([w for r in c_results for w in r.get("warnings", [])], said)
    final = c_results if dedup is not None else a_results
    documents = [str(out / "documents" / r["output"]["file"]) for r in final]

    report = build_report(config, a_results, dedup_stats, c_results, seconds=time.perf_counter() - t0,
                          workers=workers, engine=engine, settings=settings, warnings=said)
    report["documents_files"] = documents
    write_report(out, report)
    return report


def chain_setup(config: PipelineConfig) -> tuple[list[dict[str, Any]], list[str]]:
    """Each step's settings for the report (`Step.settings`: e.g. the blocklists loaded) and the distinct setup
    warnings (`Step.warnings`), taken from the chains this process built to validate the config: the very steps
    every task builds, so the run says them once instead of once per worker."""
    before, _, after = config.split()
    settings: list[dict[str, Any]] = []
    said: list[str] = []
    for step in build_chain(before) + build_chain(after):
        if step.settings():
            settings.append({"step": step.name, **step.settings()})
        said += [w for w in step.warnings() if w not in said]
    return settings, said


def _say_warnings(messages: list[str], said: list[str]) -> list[str]:
    """Print the messages not yet said in this run, each once, and return them."""
    new: list[str] = []
    for m in messages:
        if m not in said and m not in new:
            print(f"lmforge data: warning: {m}", file=sys.stderr)
            new.append(m)
    return new


def builtin_config(name_or_path: str | Path) -> PipelineConfig:
    """A config file (JSON/TOML), or a built-in chain by name: 'fineweb' (web crawls, the default) or 'pydoc'
    (the embedded documentation corpus; its relaxations and their reasons are in `lmforge.data.filters.configs`)."""
    from lmforge.data.filters.configs import CONFIGS, config_steps

    path = Path(name_or_path)
    if path.is_file():
        return PipelineConfig.load(path)
    if str(name_or_path) in CONFIGS:
        return PipelineConfig(steps=config_steps(str(name_or_path)), name=str(name_or_path))
    raise LmforgeError(f"pipeline config {name_or_path!r} is neither a file nor a built-in config "
                       f"({', '.join(CONFIGS)})")

"""`lmforge speedrun`: every stage of the pipeline, end to end, on the embedded default.

The run folder shows the whole system as artifacts on disk, one sub-folder per stage in pipeline order. A stage
whose artifact is complete (its `DONE.json` marker exists) is skipped, so an interrupted speedrun resumes where it
stopped. Each stage calls the same public API that its CLI verb calls: nothing here is special to the demo.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from lmforge.utils import LmforgeError, configure_threads, write_json


@dataclass
class SpeedrunContext:
    out: Path
    threads: int
    seed: int = 1337
    quick: bool = False  # a smaller run for tests: same stages, less data and fewer steps
    results: dict[str, Any] = field(default_factory=dict)  # each stage's summary, by stage name

    def stage_dir(self, name: str) -> Path:
        return self.out / name

    def need(self, stage: str, key: str) -> Any:
        """An earlier stage's output (e.g. the crawl's `warc_dir`), or a clear error naming what is missing."""
        value = self.results.get(stage, {}).get(key)
        if not value:
            raise LmforgeError(f"this stage needs the {stage} stage's {key!r}: run that stage first "
                               f"(its folder in {self.out} has no DONE.json)")
        return value


@dataclass
class Stage:
    name: str
    run: Callable[[SpeedrunContext, Path], dict[str, Any]]
    """Does the work into the stage folder and returns a JSON-able summary (what it measured)."""


# ---------------------------------------------------------------------------------------------------------------
# The stages, in pipeline order. Each imports its stage's API inside the function so `lmforge --help` stays instant.
# Time budget on 2 cores (whole run < 30 min): crawl 1.5, data 2, tokenizer 1, pretrain 10, sample/export 1, sft 6.
# ---------------------------------------------------------------------------------------------------------------


def stage_crawl(ctx: SpeedrunContext, out: Path) -> dict[str, Any]:
    """Serve the standard library's docs with pydoc on localhost, crawl the whole site into WARC files, stop it.

    The site has 863 HTML pages (28.6 MB of HTML, 5 MB of gzipped WARC) with Python 3.11; `max_pages` 1000 takes all
    of them: 23 s on the quiet 2-core machine, 83-88 s while other jobs kept its load average at 7-10 (the pydoc
    server's page rendering is the bottleneck). The quick run takes 40 pages (about 4 s).
    """
    from lmforge.data.crawl import CrawlConfig, crawl_pydoc

    warc_dir = out / "warc"
    result = crawl_pydoc(CrawlConfig(out=str(warc_dir), max_pages=40 if ctx.quick else 1000, delay=0.0,
                                     workers=4, timeout=60.0))
    warc_bytes = sum((warc_dir / f).stat().st_size for f in result["warc_files"])
    return {"warc_dir": str(warc_dir), "pages": result["pages"], "html_mb": round(result["html_bytes"] / 1e6, 2),
            "warc_files": len(result["warc_files"]), "warc_mb": round(warc_bytes / 1e6, 2),
            "site_exhausted": result["finished"], "pages_per_second": result["pages_per_second"],
            "skipped": {k: v for k, v in result["stats"].items() if k != "fetched"}}


def stage_data(ctx: SpeedrunContext, out: Path) -> dict[str, Any]:
    """Run the pydoc chain (extraction, language ID, quality, MinHash dedup, PII) over the crawl's WARC files.

    The stage folder is the pipeline's output directory: kept documents in `documents/`, dropped ones with their
    reasons in `excluded/`, and `report.md` / `report.json` (what each rule kept and dropped).
    """
    from lmforge.data.pipeline import builtin_config, run_pipeline

    warc_dir = ctx.need("crawl", "warc_dir")
    report = run_pipeline([warc_dir], out, builtin_config("pydoc"), workers=ctx.threads)
    if not report["kept"]["documents"]:
        raise LmforgeError(f"the data stage kept no documents from {warc_dir}; see {out / 'report.md'}")
    return {"documents": report["documents_files"], "report": str(out / "report.md"),
            "kept_documents": report["kept"]["documents"], "kept_mb": round(report["kept"]["bytes"] / 1e6, 2),
            "steps": {s["name"]: [s["docs_in"], s["docs_out"]] for s in report["steps"]},
            "duplicates_removed": report["dedup"]["exact_removed"] + report["dedup"]["near_removed"],
            "problems": report["problems"]}


def stage_tokenizer(ctx: SpeedrunContext, out: Path) -> dict[str, Any]:
    """Train the BPE tokenizer on the data stage's kept documents, then show the explorer on a sample sentence."""
    from rich.console import Console

    from lmforge.data.readers import read_documents
    from lmforge.tokenizer import Tokenizer
    from lmforge.tokenizer.bpe_train import TrainStats
    from lmforge.tokenizer.show import render

    documents = ctx.need("data", "documents")
    vocab_size = 1024 if ctx.quick else 4096
    stats = TrainStats()
    texts = (doc.text for doc in read_documents(documents))
    tok = Tokenizer.train(texts, vocab_size, num_workers=ctx.threads, progress=True, stats=stats)
    tok.save(out / "tokenizer")
    sample = "The tokenizer splits text into chunks: def parse(s: str) -> list[int]: return [1, 2, 3] # 12345 \u00e9t\u00e9 \U0001f642"
    console = Console(record=True, width=100)
    shown = render(tok, sample, console)
    (out / "explorer.txt").write_text(console.export_text(), encoding="utf-8")
    console.save_html(str(out / "explorer.html"))
    return {
        "tokenizer_dir": str(out / "tokenizer"),
        "vocab_size": tok.vocab_size,
        "tokenizer_hash": tok.hash,
        "document_files": len(documents),
        "chunks": stats.total_chunks,
        "unique_chunks": stats.unique_chunks,
        "stopped_early": stats.stopped_early,
        "sample_bytes_per_token": shown["bytes_per_token"],
    }


def stage_tokenize(ctx: SpeedrunContext, out: Path) -> dict[str, Any]:
    """Tokenize the kept documents with the trained tokenizer into train/val token shards for pretraining."""
    from lmforge.data.tokenize import tokenize_files

    documents = ctx.need("data", "documents")
    tokenizer_dir = ctx.need("tokenizer", "tokenizer_dir")
    stats = tokenize_files(documents, tokenizer_dir, out / "shards", workers=ctx.threads)
    report = ctx.results["data"].get("report")
    if report:  # the data stage's report also tells how many tokens its documents made
        from lmforge.data.report import add_tokens

        add_tokens(Path(report).parent, stats)
    return {**stats, "shards_dir": str(out / "shards")}


def stage_pretrain(ctx: SpeedrunContext, out: Path) -> dict[str, Any]:
    """Pretrain the `tiny` GPT on the tokenize stage's shards (Muon + AdamW, linear decay); keep its loss plot,
    metrics and samples in `out/run`. At most 10 minutes on 2 cores (a time budget); the quick run: under a minute.
    Run again, it resumes from the newest checkpoint."""
    from lmforge.train.config import TrainConfig
    from lmforge.train.pretrain import run_pretrain

    shards = ctx.need("tokenize", "shards_dir")
    if ctx.quick:
        cfg = TrainConfig(preset="tiny", seq_len=128, batch_size=8, max_steps=80, warmup_steps=10, embed_lr=0.02,
                          eval_every=40, eval_batches=4, checkpoint_every=0, seed=ctx.seed)
    else:
        cfg = TrainConfig(preset="tiny", max_steps=PRETRAIN_STEPS, embed_lr=0.02, eval_every=100, eval_batches=16,
                          sample_every=400, checkpoint_every=200, time_budget_s=PRETRAIN_BUDGET_S, seed=ctx.seed)
    summary = run_pretrain(shards, out / "run", cfg)
    return {key: summary[key] for key in ("run_dir", "checkpoint", "loss", "val_loss", "val_bpb", "step", "tokens",
                                          "tokens_per_s", "mfu", "params", "loss_plot", "samples",
                                          "stopped_early")}


# The full speedrun's pretraining: 600 x 16 x 256 = 2.5M tokens, about 2.5 passes over the crawled docs (~1M tokens;
# more passes only overfit them). Measured on the 2 shared cores while other programs ran: ~1 s a step, 574 steps
# in the 600 s budget, validation loss 3.35 (1.25 bits per byte). The budget stops a run on a busier machine early,
# with the learning rate decayed along the clock, so the speedrun stays in time.
PRETRAIN_STEPS = 600
PRETRAIN_BUDGET_S = 600.0


def stage_sample(ctx: SpeedrunContext, out: Path) -> dict[str, Any]:
    """Sample from the base model: the next-token probabilities of the first steps of one prompt, then a few
    continuations of several prompts (saved in `samples.txt`/`samples.json`); export the Hugging Face folder and
    the GGUF file into the stage folder and check that transformers gives the same logits."""
    from lmforge.inference.stage import run_sample_stage

    checkpoint = ctx.need("pretrain", "checkpoint")
    return run_sample_stage(checkpoint, out, quick=ctx.quick, seed=ctx.seed)


def stage_export(ctx: SpeedrunContext, out: Path) -> dict[str, Any]:
    """The model as two files: export the parameter file (fp32, and int8 at a quarter of the size), build
    runner/run.c with the system C compiler, and let it continue a prompt from each file."""
    from lmforge.export.crunner import build_runner, run_runner
    from lmforge.export.params import run_export
    from lmforge.utils import human_bytes

    ckpt = ctx.need("pretrain", "checkpoint")
    files = {dtype: out / f"model_{dtype}.bin" for dtype in ("fp32", "int8")}
    sizes = {dtype: run_export(ckpt, path, dtype) for dtype, path in files.items()}
    for dtype, size in sizes.items():
        print(f"[export] {files[dtype]}: {human_bytes(size)}")
    binary = build_runner(out)
    prompt, steps = "The os module provides", 60 if ctx.quick else 200
    runs = {dtype: run_runner(binary, path, prompt, steps=steps, seed=ctx.seed) for dtype, path in files.items()}
    lines = [f"$ ./{binary.name} model_fp32.bin -i {prompt!r} -n {steps} -t 0.8 -p 0.9 -s {ctx.seed}"]
    for dtype, r in runs.items():
        lines += [f"--- {dtype}: prefill {r.prefill_tok_s:.0f} tok/s, decode {r.decode_tok_s:.0f} tok/s", r.text]
    (out / "continuation.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))
    return {"params_file": str(files["fp32"]), "params_file_int8": str(files["int8"]), "runner": str(binary),
            "bytes": sizes, "prompt": prompt, "continuation": runs["fp32"].text,
            "continuation_int8": runs["int8"].text,
            "decode_tok_s": {dtype: r.decode_tok_s for dtype, r in runs.items()},
            "prefill_tok_s": {dtype: r.prefill_tok_s for dtype, r in runs.items()}}


def stage_sft(ctx: SpeedrunContext, out: Path) -> dict[str, Any]:
    """Fine-tune the base model into an assistant on the generated default SFT data (stdlib Q&A, identity,
    calculator tool use, refusals; saved as `run/sft_data.jsonl`). Runs again, it resumes."""
    from lmforge.posttrain.stage import run_sft_stage

    base = ctx.need("pretrain", "checkpoint")
    return run_sft_stage(base, out, quick=ctx.quick, seed=ctx.seed)


def stage_chat(ctx: SpeedrunContext, out: Path) -> dict[str, Any]:
    """A short scripted chat with the fine-tuned model and its tools (calculator first), printed and saved, then
    the `eval sft` measures: format compliance, tool-call rate and accuracy, masked validation loss."""
    from lmforge.posttrain.stage import run_chat_stage

    ckpt = ctx.need("sft", "checkpoint")
    return run_chat_stage(ckpt, out, quick=ctx.quick, seed=ctx.seed)


STAGES: list[Stage] = [
    Stage("crawl", stage_crawl),
    Stage("data", stage_data),
    Stage("tokenizer", stage_tokenizer),
    Stage("tokenize", stage_tokenize),
    Stage("pretrain", stage_pretrain),
    Stage("sample", stage_sample),
    Stage("export", stage_export),
    Stage("sft", stage_sft),
    Stage("chat", stage_chat),
]


def run_speedrun(out: Path, threads: int | None = None, quick: bool = False, only: list[str] | None = None) -> dict[str, Any]:
    ctx = SpeedrunContext(out=Path(out), threads=configure_threads(threads), quick=quick)
    ctx.out.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {}
    t_start = time.perf_counter()
    for i, stage in enumerate(STAGES, 1):
        stage_dir = ctx.stage_dir(f"{i:02d}_{stage.name}")
        marker = stage_dir / "DONE.json"
        if only and stage.name not in only:
            if marker.is_file():  # later stages read what this one produced
                ctx.results[stage.name] = json.loads(marker.read_text())
            continue
        if marker.is_file():
            result = json.loads(marker.read_text())
            print(f"[speedrun] {i:02d} {stage.name}: done already ({result.get('seconds', 0):.1f} s), skipping")
        else:
            print(f"[speedrun] {i:02d} {stage.name}: running")
            stage_dir.mkdir(parents=True, exist_ok=True)
            t0 = time.perf_counter()
            result = stage.run(ctx, stage_dir)
            result["seconds"] = round(time.perf_counter() - t0, 2)
            write_json(marker, result)
            print(f"[speedrun] {i:02d} {stage.name}: finished in {result['seconds']:.1f} s")
        ctx.results[stage.name] = result
        summary[stage.name] = result
    summary["total_seconds"] = round(time.perf_counter() - t_start, 2)
    write_json(ctx.out / "speedrun.json", summary)
    print(f"[speedrun] all stages done in {summary['total_seconds']:.1f} s; summary in {ctx.out / 'speedrun.json'}")
    return summary


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "speedrun",
        help="run every stage end to end on the embedded default (stdlib docs crawled from a local pydoc server)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", type=Path, default=Path("runs/speedrun"), help="run folder (resumes if it exists)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    p.add_argument("--quick", action="store_true", help="smaller data and fewer steps (used by the tests)")
    p.add_argument("--only", nargs="+", default=None, metavar="STAGE", help="run only these stages")
    p.set_defaults(func=lambda a: run_speedrun(a.out, a.threads, a.quick, a.only) and 0)

"""The speedrun's corpus stages, from a web site to token shards: `crawl`, `data`, `tokenizer`, `tokenize`.

Each calls the same public API as its CLI verb (`lmforge crawl`, `data run`, `tokenizer train`, `tokenize`)
and imports it inside the function, so `lmforge --help` stays instant.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lmforge.speedrun.context import SpeedrunContext
from lmforge.speedrun.settings import (CRAWL_DELAY_S, CRAWL_TIMEOUT_S, CRAWL_WORKERS, EXPLORER_SAMPLE, OWN_DATA_CHAIN,
                                       OWN_TEXT_MAX_CHARS)
from lmforge.utils import LmforgeError


def own_input_files(inputs: list[str]) -> list[Path]:
    """The files `--input` names (files, folders searched for known formats, globs), refused up front when one is
    missing or none has a format the data pipeline reads."""
    from lmforge.data.readers import expand_inputs

    try:
        files = expand_inputs(inputs)
    except LmforgeError as e:
        raise LmforgeError(f"--input: {e}") from e
    if not files:
        raise LmforgeError(f"--input {' '.join(inputs)}: no file of a format the data pipeline reads (text .txt/.md, "
                           "WARC, JSONL, parquet)")
    return files


def stage_own_inputs(ctx: SpeedrunContext, out: Path) -> dict[str, Any]:
    """`--input`: the user's files take the crawl's place; the stage records them (and that nothing was crawled)."""
    files = own_input_files(ctx.inputs or [])
    return {"source": "input", "inputs": [str(f.resolve()) for f in files], "files": len(files),
            "input_mb": round(sum(f.stat().st_size for f in files) / 1e6, 2),
            "skipped": "nothing crawled: the documents come from --input"}


def stage_crawl(ctx: SpeedrunContext, out: Path) -> dict[str, Any]:
    """Serve the standard library's docs with pydoc on localhost, crawl the whole site into WARC files, stop it
    (with `--input`: record the user's files instead, `stage_own_inputs`).

    The site has 863 HTML pages (28.6 MB of HTML, 5 MB of gzipped WARC) with Python 3.11; taking all of them took
    23 s on the quiet 2-core machine, 83-88 s while other jobs kept its load average at 7-10 (the pydoc server's
    page rendering is the bottleneck). The quick run takes 40 pages (about 4 s).
    """
    from lmforge.data.crawl import CrawlConfig, crawl_pydoc

    if ctx.inputs:
        return stage_own_inputs(ctx, out)
    warc_dir = out / "warc"
    result = crawl_pydoc(CrawlConfig(out=str(warc_dir), max_pages=ctx.settings.crawl_pages, delay=CRAWL_DELAY_S,
                                     workers=CRAWL_WORKERS, timeout=CRAWL_TIMEOUT_S))
    warc_bytes = sum((warc_dir / f).stat().st_size for f in result["warc_files"])
    return {"source": "crawl", "warc_dir": str(warc_dir), "pages": result["pages"],
            "html_mb": round(result["html_bytes"] / 1e6, 2),
            "warc_files": len(result["warc_files"]), "warc_mb": round(warc_bytes / 1e6, 2),
            "site_exhausted": result["finished"], "pages_per_second": result["pages_per_second"],
            "skipped": {k: v for k, v in result["stats"].items() if k != "fetched"}}


def stage_data(ctx: SpeedrunContext, out: Path) -> dict[str, Any]:
    """Run the pydoc chain (extraction, language ID, quality, MinHash dedup, PII) over the crawl's WARC files, or
    FineWeb's chain over the `--input` files, with plain text cut into documents of at most `OWN_TEXT_MAX_CHARS`
    characters (at paragraph breaks) so that a book is kept as pieces instead of dropped as one over-long document.

    The stage folder is the pipeline's output directory: kept documents in `documents/`, dropped ones with their
    reasons in `excluded/`, and `report.md` / `report.json` (what each rule kept and dropped).
    """
    from lmforge.data.pipeline import builtin_config, run_pipeline

    own = ctx.results.get("crawl", {}).get("source") == "input"
    if own:
        inputs, cfg = ctx.need("crawl", "inputs"), builtin_config(OWN_DATA_CHAIN)
        cfg.reader["text_max_chars"] = OWN_TEXT_MAX_CHARS
    else:
        inputs, cfg = [ctx.need("crawl", "warc_dir")], builtin_config("pydoc")
    report = run_pipeline(inputs, out, cfg, workers=ctx.threads)
    if not report["kept"]["documents"]:
        raise LmforgeError(f"the data stage kept no documents from {' '.join(inputs)}; see {out / 'report.md'}")
    return {"documents": report["documents_files"], "report": str(out / "report.md"),
            "chain": cfg.name,
            "kept_documents": report["kept"]["documents"], "kept_mb": round(report["kept"]["bytes"] / 1e6, 2),
            "steps": {s["name"]: [s["docs_in"], s["docs_out"]] for s in report["steps"]},
            "duplicates_removed": report["dedup"]["exact_removed"] + report["dedup"]["near_removed"],
            "problems": report["problems"]}


def stage_tokenizer(ctx: SpeedrunContext, out: Path) -> dict[str, Any]:
    """Train the BPE tokenizer on the data stage's kept documents, then show the explorer on a sample sentence."""
    from lmforge.data.readers import read_documents
    from lmforge.tokenizer import Tokenizer
    from lmforge.tokenizer.bpe_train import TrainStats
    from lmforge.tokenizer.show import save_explorer

    documents = ctx.need("data", "documents")
    stats = TrainStats()
    texts = (doc.text for doc in read_documents(documents))
    tok = Tokenizer.train(texts, ctx.settings.vocab_size, num_workers=ctx.threads, progress=True, stats=stats)
    tok.save(out / "tokenizer")
    shown = save_explorer(tok, EXPLORER_SAMPLE, out)
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
    from lmforge.tokenizer.encode_corpus import tokenize_files

    documents = ctx.need("data", "documents")
    tokenizer_dir = ctx.need("tokenizer", "tokenizer_dir")
    stats = tokenize_files(documents, tokenizer_dir, out / "shards", workers=ctx.threads)
    report = ctx.results["data"].get("report")
    if report:  # the data stage's report also tells how many tokens its documents made
        from lmforge.data.report import add_tokens

        add_tokens(Path(report).parent, stats)
    return {**stats, "shards_dir": str(out / "shards")}

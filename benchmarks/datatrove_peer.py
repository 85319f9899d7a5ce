"""The datatrove side of `bench_data_filters.py`: runs datatrove's FineWeb filters on the same documents.

Runs in a separate virtual environment that has datatrove (it is not an lmforge dependency), e.g.
    python -m venv .dtvenv && .dtvenv/bin/pip install datatrove nltk tldextract pyahocorasick trafilatura
and is started by the benchmark as `PYTHON benchmarks/datatrove_peer.py IN.json OUT.json`. It never imports
lmforge. Offline adjustments, both the libraries' own no-data options: NLTK's `word_tokenize` first loads the punkt
sentence model (a download), so words come from NLTK's Treebank word tokenizer alone (what `word_tokenize` runs
on each sentence); tldextract uses its bundled suffix list instead of fetching one.

Input: {"texts": [...], "urls": [...], "html": [...], "lists": {...}, "repeat": N}. Output: per filter the seconds
for all documents (best of `repeat` runs) and each document's verdict.
"""

from __future__ import annotations

import json
import sys
import time


def main() -> None:
    src, dst = sys.argv[1], sys.argv[2]
    data = json.load(open(src, encoding="utf-8"))

    from nltk.tokenize import NLTKWordTokenizer

    import datatrove.utils.word_tokenizers as wt

    class TreebankOnly(wt.WordTokenizer):
        _tok = NLTKWordTokenizer()

        def word_tokenize(self, text):
            return wt.strip_strings(self._tok.tokenize(text))

        def sent_tokenize(self, text):
            return [s for s in text.split("\n") if s.strip()]

        def span_tokenize(self, text):
            spans, start = [], 0
            for line in text.split("\n"):
                if line.strip():
                    spans.append((start, start + len(line)))
                start += len(line) + 1
            return spans

    wt.load_word_tokenizer = lambda language=None: TreebankOnly(language)

    import tldextract

    _init = tldextract.TLDExtract.__init__
    tldextract.TLDExtract.__init__ = lambda self, *a, **k: _init(self, *a, **{**k, "suffix_list_urls": ()})

    from datatrove.data import Document
    from datatrove.pipeline.filters import (C4QualityFilter, FineWebQualityFilter, GopherQualityFilter,
                                            GopherRepetitionFilter, URLFilter)
    from datatrove.pipeline.formatters import PIIFormatter

    repeat = int(data.get("repeat", 3))
    results: dict = {}

    def run_filter(name, flt, texts, urls=None):
        best, verdicts = float("inf"), []
        for _ in range(repeat):
            docs = [Document(text=t, id=str(i), metadata={"url": urls[i]} if urls else {}) for i, t in enumerate(texts)]
            t0 = time.perf_counter()
            verdicts = []
            for d in docs:
                r = flt.filter(d)
                verdicts.append(r if isinstance(r, bool) else (r[1] if not r[0] else True))
            best = min(best, time.perf_counter() - t0)
        results[name] = {"seconds": best, "verdicts": [v if v is True else str(v) for v in verdicts]}

    texts = data["texts"]
    lists = data.get("lists") or {}

    def lines(path):
        return open(path, encoding="utf-8", errors="replace").read().splitlines() if path else None

    if data.get("urls"):
        flt = URLFilter(extra_domains=[x for p in lists.get("domains", []) for x in lines(p) if x.strip()] or None,
                        extra_urls=[x for p in lists.get("urls", []) for x in lines(p) if x.strip()] or None,
                        banned_words=lines(lists.get("banned_words")), banned_subwords=lines(lists.get("banned_subwords")),
                        soft_banned_words=lines(lists.get("soft_banned_words")), use_integrated_lists=False)
        run_filter("url_filter", flt, [""] * len(data["urls"]), data["urls"])
    run_filter("gopher_repetition", GopherRepetitionFilter(), texts)
    run_filter("gopher_quality", GopherQualityFilter(), texts)
    run_filter("c4_quality", C4QualityFilter(filter_no_terminal_punct=False), texts)
    run_filter("fineweb_quality", FineWebQualityFilter(), texts)

    pii = PIIFormatter()
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = [pii.format(t) for t in texts]
        best = min(best, time.perf_counter() - t0)
    results["pii"] = {"seconds": best, "changed": sum(a != b for a, b in zip(out, texts))}

    json.dump(results, open(dst, "w", encoding="utf-8"))


if __name__ == "__main__":
    main()

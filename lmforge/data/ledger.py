"""Where one task's documents went: every drop and every kept document, tallied by source (the input file, or the
host of a crawled page) and, for labelled documents, by language; plus the Python warnings the task raised.

The per-step statistics (`base.StepStats`) say what each rule dropped; they cannot say *whose* pages went (one
spam host, one broken input file) or which languages were lost, and a report that only shows totals hides both.
The ledger is the drop hook every step already calls, so it sees each dropped document with its step and reason
(and writes it to the exclusion file, as datatrove's exclusion writers do), and the final writer hands it each kept
document. Tasks return `Ledger.to_dict()`; `report.py` merges them across the run.
"""

from __future__ import annotations

import warnings
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlsplit

from lmforge.data.document import Document
from lmforge.data.writers import JsonlGzWriter

HOST, FILE = "host", "file"


def source_of(doc: Document, input_file: str) -> tuple[str, str]:
    """(kind, name): the URL's host for a page that has one (a crawl is a few WARC files holding many sites, so
    the file would say little), else the input file the document came from."""
    if doc.url:
        try:
            host = urlsplit(doc.url if "://" in doc.url else "http://" + doc.url).hostname
        except ValueError:
            host = None
        if host:
            return HOST, host
    return FILE, input_file


class Ledger:
    """The drop hook of one task (`base.DropHook`) and the tally of its kept documents.

    Dropped documents are written to `excluded_path` when `write_excluded` is set (the file is created only if
    something is dropped); the counts are kept either way.
    """

    def __init__(self, excluded_path: Path, write_excluded: bool, input_file: str):
        self.path, self.enabled, self.input_file = excluded_path, write_excluded, input_file
        self.writer: JsonlGzWriter | None = None
        self.sources: dict[str, dict[str, Any]] = {}
        self.languages: dict[str, Counter] = {}  # language -> step -> documents dropped

    def _entry(self, doc: Document) -> dict[str, Any]:
        kind, name = source_of(doc, self.input_file)
        entry = self.sources.get(name)
        if entry is None:
            entry = self.sources[name] = {"kind": kind, "kept": 0, "dropped": Counter()}
        return entry

    def __call__(self, doc: Document, step: str, reason: str) -> None:
        if self.enabled:
            if self.writer is None:
                self.writer = JsonlGzWriter(self.path)
            self.writer.write(doc, step=step, reason=reason)
        self._entry(doc)["dropped"][reason] += 1
        language = doc.metadata.get("language")
        if language is not None:
            self.languages.setdefault(str(language), Counter())[step] += 1

    def kept(self, doc: Document) -> None:
        self._entry(doc)["kept"] += 1

    def close(self, ok: bool) -> None:
        if self.writer is not None:
            self.writer.close() if ok else self.writer.abort()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, in a fixed order (the task's statistics file is compared byte for byte across runs)."""
        return {"sources": {name: {"kind": e["kind"], "kept": e["kept"], "dropped": dict(sorted(e["dropped"].items()))}
                            for name, e in sorted(self.sources.items())},
                "languages_dropped": {lang: dict(sorted(steps.items()))
                                      for lang, steps in sorted(self.languages.items())}}


@contextmanager
def collected_warnings() -> Iterator[list[str]]:
    """Record the Python warnings raised inside the block (a library's, in a worker process) instead of letting
    each worker print them: the runner says each distinct one once per run and keeps it in the report. The list
    is filled when the block ends."""
    messages: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        yield messages
    for w in caught:
        text = f"{w.category.__name__}: {w.message} ({Path(w.filename).name}:{w.lineno})"
        if text not in messages:
            messages.append(text)

"""What every pipeline step shares: a name, statistics of what it kept and dropped and why, and a drop hook.

A step is a function from an iterator of documents to an iterator of documents (datatrove's design), so steps
compose by chaining and stream: a step never holds the whole dataset. Filters only say, per document, whether to
keep it and, if not, why; the base class counts, keeps a few examples of each reason for the report, and hands
dropped documents to the exclusion writer.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

from lmforge.data.document import Document

DropHook = Callable[[Document, str, str], None]  # (document, step name, reason)
MAX_EXAMPLES = 3


@dataclass
class StepStats:
    name: str
    docs_in: int = 0
    docs_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    seconds: float = 0.0
    dropped: Counter = field(default_factory=Counter)  # reason -> count
    examples: dict[str, list[str]] = field(default_factory=dict)  # reason -> a few document ids or URLs

    def drop(self, doc: Document, reason: str) -> None:
        self.dropped[reason] += 1
        ex = self.examples.setdefault(reason, [])
        if len(ex) < MAX_EXAMPLES:
            ex.append(doc.url or doc.id)

    def skip(self, reason: str, where: str, nbytes: int = 0) -> None:
        """Count one unreadable item (a record, a line, a file) as read and dropped, with its location as the
        example: readers see such items before any document exists, so there is no document to name."""
        self.docs_in += 1
        self.bytes_in += nbytes
        self.drop(Document(text="", id=where), reason)

    def merge(self, other: "StepStats") -> None:
        """Add another worker's statistics of the same step."""
        self.docs_in += other.docs_in
        self.docs_out += other.docs_out
        self.bytes_in += other.bytes_in
        self.bytes_out += other.bytes_out
        self.seconds += other.seconds
        self.dropped.update(other.dropped)
        for reason, ex in other.examples.items():
            mine = self.examples.setdefault(reason, [])
            mine.extend(ex[: MAX_EXAMPLES - len(mine)])

    def to_dict(self) -> dict:
        return {"name": self.name, "docs_in": self.docs_in, "docs_out": self.docs_out, "bytes_in": self.bytes_in,
                "bytes_out": self.bytes_out, "seconds": round(self.seconds, 3), "dropped": dict(self.dropped),
                "examples": self.examples}

    @classmethod
    def from_dict(cls, d: dict) -> "StepStats":
        return cls(name=d["name"], docs_in=d["docs_in"], docs_out=d["docs_out"], bytes_in=d["bytes_in"],
                   bytes_out=d["bytes_out"], seconds=d["seconds"], dropped=Counter(d["dropped"]),
                   examples={k: list(v) for k, v in d["examples"].items()})


class Step(ABC):
    """A transformation of the document stream. Subclasses override `process` (or `keep`, for filters)."""

    name: str = "step"

    @abstractmethod
    def process(self, docs: Iterable[Document], stats: StepStats, on_drop: DropHook | None) -> Iterator[Document]:
        """Yield the documents this step keeps (changed or not); report each drop to `stats` and `on_drop`."""

    def settings(self) -> dict[str, Any]:
        """What the run report shows about how this step was set up beyond its parameters (e.g. the blocklists a
        URL filter loaded, with their sizes): a reader of the report must see what was applied, not guess it."""
        return {}

    def warnings(self) -> list[str]:
        """Problems with this step's setup that the user must hear about (e.g. a URL filter with no lists). The
        runner says each one once per run and records it in the report, however many tasks build the step."""
        return []

    def __call__(self, docs: Iterable[Document], stats: StepStats | None = None,
                 on_drop: DropHook | None = None) -> Iterator[Document]:
        """Run the step, timing only its own work (not the upstream steps that produce its input)."""
        stats = stats if stats is not None else StepStats(self.name)
        it = iter(docs)
        out = self.process(_counted(it, stats), stats, on_drop)
        while True:
            t0 = time.perf_counter()
            try:
                doc = next(out)
            except StopIteration:
                stats.seconds += time.perf_counter() - t0
                return
            stats.seconds += time.perf_counter() - t0
            stats.docs_out += 1
            stats.bytes_out += len(doc.text.encode("utf-8", "surrogatepass"))
            yield doc


class Filter(Step):
    """A step that keeps or drops each document on its own, with a reason for every drop."""

    @abstractmethod
    def keep(self, doc: Document) -> str | None:
        """None to keep the document, else the reason it is dropped (a short stable label, e.g. 'gopher_short')."""

    def process(self, docs: Iterable[Document], stats: StepStats, on_drop: DropHook | None) -> Iterator[Document]:
        for doc in docs:
            reason = self.keep(doc)
            if reason is None:
                yield doc
            else:
                stats.drop(doc, reason)
                if on_drop is not None:
                    on_drop(doc, self.name, reason)


def _counted(docs: Iterator[Document], stats: StepStats) -> Iterator[Document]:
    """Count documents and bytes as they enter a step, and take the time spent upstream off the step's clock."""
    while True:
        t0 = time.perf_counter()
        try:
            doc = next(docs)
        except StopIteration:
            stats.seconds -= time.perf_counter() - t0
            return
        stats.seconds -= time.perf_counter() - t0
        stats.docs_in += 1
        stats.bytes_in += len(doc.text.encode("utf-8", "surrogatepass"))
        yield doc

"""HTML -> main text: the step that turns a crawled page into training text.

Two modes, because the trade-off is large (measured on real pages with gold text, see
`benchmarks/bench_data_filters.py`):
- "trafilatura" (default): trafilatura with `favor_precision=True`, FineWeb's setting. Main content without
  navigation, menus and boilerplate; about 20 pages/s per core.
- "resiliparse": resiliparse's `extract_plain_text` with its main-content heuristics; an order of magnitude
  faster, a little less precise on news pages, and it keeps line structure (code, docstrings) intact.

A page that cannot be parsed, or yields no text, is dropped with a reason; no page stops the run.
"""

from __future__ import annotations

import contextlib
import html as html_lib
import re
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Iterator

from lmforge.data.base import Filter
from lmforge.data.document import Document
from lmforge.data.filters.text import plain_spaces
from lmforge.utils import LmforgeError

MODES = ("trafilatura", "resiliparse")
_TITLE_RE = re.compile(r"<title[^>]*>(.*?)</title\s*>", re.IGNORECASE | re.DOTALL)
_SPACES = re.compile(r"\s+")


def _valid_unicode(text: str) -> str:
    """Lone surrogates (from bytes decoded with `surrogateescape`) make lxml and resiliparse raise; replace them."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace").decode("utf-8")


def _tidy(text: str) -> str:
    """No-break spaces become spaces, trailing whitespace goes, and whitespace-only lines merge into one paragraph
    break. pydoc writes every space of a docstring as `&nbsp;` ("Text\xa0wrapping\xa0and\xa0filling"), which a
    tokenizer would learn as a separate kind of word; spacer cells leave blank lines that would count as repeated
    lines and dilute the line-based ratios of the quality filters. (A loop over lines: a regex for trailing
    whitespace retries at every space between words and cost a third of resiliparse's own time.)"""
    out: list[str] = []
    for line in plain_spaces(text).split("\n"):
        line = line.rstrip()
        if line or (out and out[-1]):
            out.append(line)
    return "\n".join(out).strip()


class ExtractTimeout(BaseException):
    """Raised inside a slow extraction by the alarm. A BaseException, so that a library's own `except Exception`
    cannot swallow it and carry on."""


@contextlib.contextmanager
def deadline(seconds: float | None) -> Iterator[None]:
    """Interrupt the block with `ExtractTimeout` after `seconds` of wall time.

    A real-time timer signal costs microseconds per page, where datatrove's extraction sandbox (a child process per
    worker) ships every page through a pipe. Signals only reach the main thread, so in a worker thread (a Dask
    thread pool) the block runs without a limit; C code (lxml, resiliparse) is interrupted when it returns to Python.
    """
    if not seconds or threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        yield
        return

    def on_alarm(signum, frame):
        raise ExtractTimeout()

    previous = signal.signal(signal.SIGALRM, on_alarm)
    # Someone else's timer (pytest-timeout, an outer deadline) is paused and re-armed with what remains of it.
    start = time.monotonic()
    outer_delay, outer_interval = signal.setitimer(signal.ITIMER_REAL, seconds)
    if outer_delay and outer_delay < seconds:
        signal.setitimer(signal.ITIMER_REAL, outer_delay)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if outer_delay:
            remaining = outer_delay - (time.monotonic() - start)
            signal.setitimer(signal.ITIMER_REAL, max(remaining, 1e-3), outer_interval)


def html_title(page: str) -> str | None:
    """The `<title>` of a page, found with one regex in its first 64 KB (cheaper than a second parse)."""
    m = _TITLE_RE.search(page, 0, 65536)
    if not m:
        return None
    title = _SPACES.sub(" ", html_lib.unescape(m.group(1))).strip()
    return title or None


@dataclass
class Extract(Filter):
    """Replace each document's HTML by its main text.

    `favor_precision`/`favor_recall`/`include_tables`/`deduplicate` are trafilatura's options (FineWeb: precision
    on, comments off). FineWeb also set `deduplicate`; we leave it off: trafilatura keeps that cache per process,
    across documents, so a page's text would depend on which pages the same worker saw before it (different per
    worker count, and not reproducible on resume); the dedup step removes repeated documents across the whole
    dataset instead. `skip_elements` are CSS selectors resiliparse leaves out (site-specific
    navigation). `min_chars`: a shorter result counts as empty (a page with nothing but a heading). `timeout_s`:
    a page that takes longer is dropped as `extract_timeout` (pathological markup can keep trafilatura busy for
    minutes; FineWeb allowed 1 s, we allow more because pydoc's largest pages need ~1 s on a loaded 2-core machine).
    `plain_text_passthrough`: a document the reader marked `content_type: text/plain` (WET records, .txt files)
    is already text; it is only tidied (extractor "none"), so one chain serves WARC, WET and text inputs.
    """

    mode: str = "trafilatura"
    favor_precision: bool = True
    favor_recall: bool = False
    include_tables: bool = True
    deduplicate: bool = False
    skip_elements: list[str] = field(default_factory=list)
    min_chars: int = 1
    timeout_s: float | None = 10.0
    plain_text_passthrough: bool = True

    name = "extract"

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise LmforgeError(f"extract: mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.favor_precision and self.favor_recall:
            raise LmforgeError("extract: favor_precision and favor_recall exclude each other")
        if self.mode == "trafilatura":
            import trafilatura  # imported here so that `lmforge --help` stays instant

            self._extract = self._trafilatura
            self._trafilatura_extract = trafilatura.extract
        else:
            from resiliparse.extract.html2text import extract_plain_text
            from resiliparse.parse.html import HTMLTree

            self._extract = self._resiliparse
            self._rp_extract, self._rp_parse = extract_plain_text, HTMLTree.parse

    def _trafilatura(self, page: str) -> tuple[str | None, str | None]:
        text = self._trafilatura_extract(page, favor_precision=self.favor_precision, favor_recall=self.favor_recall,
                                         include_comments=False, include_tables=self.include_tables,
                                         deduplicate=self.deduplicate, with_metadata=False)
        return text, html_title(page)

    def _resiliparse(self, page: str) -> tuple[str | None, str | None]:
        tree = self._rp_parse(page)
        text = self._rp_extract(tree, preserve_formatting=True, main_content=True, list_bullets=True,
                                alt_texts=False, links=False, form_fields=False, noscript=False, comments=False,
                                skip_elements=self.skip_elements or None)
        title = tree.title.strip() if tree.title else None
        return text, title or None

    def keep(self, doc: Document) -> str | None:
        page = _valid_unicode(doc.text)
        if not page.strip():
            return "empty_html"
        if self.plain_text_passthrough and str(doc.metadata.get("content_type", "")).startswith("text/plain"):
            doc.text = _tidy(page)
            doc.metadata["extractor"] = "none"
            return None if len(doc.text) >= self.min_chars else "extract_empty"
        try:
            with deadline(self.timeout_s):
                text, title = self._extract(page)
        except ExtractTimeout:
            return "extract_timeout"
        except Exception:  # any parser failure on one page is that page's problem, never the run's
            return "extract_error"
        text = _tidy(text or "")
        if len(text) < self.min_chars:
            return "extract_empty"
        doc.text = text
        doc.metadata["extractor"] = self.mode
        if title:
            doc.metadata["title"] = title
        return None

"""URL filter: FineWeb's first step, before any HTML is parsed (the cheapest place to drop adult and spam sites).

Rules, in FineWeb's order:
- the host or any parent domain is on a domain blocklist (UT1's `domains` files; "example.com" also blocks
  "www.example.com" and "a.b.example.com");
- the URL starts with an entry of a URL blocklist (UT1's `urls` files: "host/path" without the scheme; an entry
  blocks that page and everything below it, as squidGuard, UT1's consumer, matches them);
- a URL token (split on non-alphanumerics, lower-cased) is a banned word;
- at least `soft_word_threshold` URL tokens are soft-banned words;
- a banned subword occurs in the URL with every non-alphanumeric character removed ("p.o.r.n" style evasions).

The lists are data, not code: the product ships none of them. The user points the filter at UT1 folders and at
FineWeb's keyword files (for this project they lie in `../shared/data/pretrain/blocklists/`). Every lookup is a
set membership test (a handful per URL), so the filter costs a few microseconds per document however long the
lists are.
"""

from __future__ import annotations

import logging
import os
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from lmforge.data.base import Filter
from lmforge.data.document import Document
from lmforge.utils import LmforgeError

_NON_ALNUM = re.compile(r"[^a-z0-9]+")
log = logging.getLogger(__name__)
_warned_empty: list[bool] = []


def _read_list(path: Path) -> list[str]:
    """Non-empty, non-comment lines of a list file, stripped. UT1 files are mostly ASCII; stray bytes are kept
    as replacement characters rather than failing the whole list."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return [s for s in (line.strip() for line in f) if s and not s.startswith("#")]
    except OSError as e:
        raise LmforgeError(f"cannot read blocklist {path}: {e}") from e


def _normalize_host(host: str) -> str:
    host = host.strip().lower().rstrip(".")
    return host[4:] if host.startswith("www.") else host


def _url_key(url: str) -> str:
    """`host/path` as UT1 writes URL entries: no scheme, no "www.", no query, no trailing slash, lower case."""
    url = url.strip()
    if "://" not in url:
        url = "http://" + url
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
    except ValueError:
        return ""
    return (_normalize_host(host) + parts.path).rstrip("/").lower()


@dataclass
class URLFilter(Filter):
    """Drop documents whose URL is blocklisted (FineWeb's URL filter, with UT1's and FineWeb's list formats).

    `blocklists`: files or folders. A folder is searched (recursively) for UT1's `domains` and `urls` files; a
    file whose name starts with "url" is a URL list, any other file a domain list. `categories` restricts folder
    search to those UT1 category names (e.g. ["adult", "gambling"]); None takes every category found.
    `banned_words`, `soft_banned_words`, `banned_subwords`: FineWeb's keyword files (one entry per line, `#`
    comments). Documents without a URL are kept: there is nothing to judge.
    """

    blocklists: list[str] = field(default_factory=list)
    categories: list[str] | None = None
    banned_words: str | None = None
    soft_banned_words: str | None = None
    banned_subwords: str | None = None
    soft_word_threshold: int = 2

    name = "url_filter"

    def __post_init__(self) -> None:
        self.domains: set[str] = set()
        self.url_prefixes: set[str] = set()
        for p in self.blocklists:
            self._load_blocklist(Path(p))
        norm = lambda words: {_NON_ALNUM.sub("", w.lower()) for w in words} - {""}  # noqa: E731
        self.hard_words = norm(_read_list(Path(self.banned_words))) if self.banned_words else set()
        self.soft_words = norm(_read_list(Path(self.soft_banned_words))) if self.soft_banned_words else set()
        subwords = norm(_read_list(Path(self.banned_subwords))) if self.banned_subwords else set()
        # Substring search without a regex per rule: index the subwords by their first k characters (k = the
        # shortest subword) and test each position of the URL once, then confirm the few candidates.
        self._sub_k = min((len(w) for w in subwords), default=0)
        self._sub_index: dict[str, list[str]] = defaultdict(list)
        for w in subwords:
            self._sub_index[w[: self._sub_k]].append(w)
        self.n_subwords = len(subwords)
        if not (self.domains or self.url_prefixes or self.hard_words or self.soft_words or self.n_subwords):
            if not _warned_empty:  # once per process, not once per worker task
                log.warning(self.describe())
                _warned_empty.append(True)

    def _load_blocklist(self, path: Path) -> None:
        if path.is_dir():
            found = False
            for root, _dirs, files in os.walk(path):
                category = Path(root).name
                if self.categories is not None and category not in self.categories and Path(root) != path:
                    continue
                for name in files:
                    if name in ("domains", "urls"):
                        found = True
                        self._load_file(Path(root) / name, is_url=name == "urls")
            if not found:
                where = f" in the categories {', '.join(self.categories)}" if self.categories is not None else ""
                raise LmforgeError(f"blocklist folder {path} has no UT1 'domains' or 'urls' files{where}")
        elif path.is_file():
            self._load_file(path, is_url=path.name.startswith("url"))
        else:
            raise LmforgeError(f"blocklist not found: {path}")

    def _load_file(self, path: Path, is_url: bool) -> None:
        for entry in _read_list(path):
            if is_url:
                key = _url_key(entry)
                if key:
                    self.url_prefixes.add(key)
            else:
                self.domains.add(_normalize_host(entry))

    def describe(self) -> str:
        """What the filter will apply, for the log and the report (an empty filter says so instead of silently
        keeping everything)."""
        if not (self.domains or self.url_prefixes or self.hard_words or self.soft_words or self.n_subwords):
            return "url_filter: no lists given, every URL is kept"
        return (f"url_filter: {len(self.domains)} domains, {len(self.url_prefixes)} URLs, {len(self.hard_words)} "
                f"banned words, {len(self.soft_words)} soft-banned words (>= {self.soft_word_threshold}), "
                f"{self.n_subwords} banned subwords")

    def keep(self, doc: Document) -> str | None:
        url = doc.url
        if not url:
            return None
        lowered = url.lower()
        try:
            parts = urlsplit(lowered if "://" in lowered else "http://" + lowered)
            host = _normalize_host(parts.hostname or "")
        except ValueError:
            return "invalid_url"
        if self.domains and host:
            # every parent domain: a.b.example.com, b.example.com, example.com, com
            d = host
            while True:
                if d in self.domains:
                    return "blocklisted_domain"
                dot = d.find(".")
                if dot < 0:
                    break
                d = d[dot + 1:]
        if self.url_prefixes:
            key = (host + parts.path).rstrip("/")
            # the whole URL and each of its parent paths, at "/" boundaries
            while key:
                if key in self.url_prefixes:
                    return "blocklisted_url"
                slash = key.rfind("/")
                if slash <= len(host) - 1:
                    break
                key = key[:slash]
        if self.hard_words or self.soft_words:
            tokens = set(_NON_ALNUM.split(lowered))
            if self.hard_words and not self.hard_words.isdisjoint(tokens):
                return "banned_word"
            if self.soft_words and len(self.soft_words & tokens) >= self.soft_word_threshold:
                return "soft_banned_words"
        if self._sub_k:
            flat = _NON_ALNUM.sub("", lowered)
            k, index = self._sub_k, self._sub_index
            for i in range(len(flat) - k + 1):
                candidates = index.get(flat[i:i + k])
                if candidates is not None and any(flat.startswith(w, i) for w in candidates):
                    return "banned_subword"
        return None

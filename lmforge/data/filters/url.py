"""URL filter: FineWeb's first step, before any HTML is parsed (the cheapest place to drop adult and spam sites).

Rules, in FineWeb's order:
- the host or any parent domain is on a domain blocklist (UT1's `domains` files; "example.com" also blocks
  "www.example.com" and "a.b.example.com");
- the URL starts with an entry of a URL blocklist (UT1's `urls` files: "host/path" without the scheme; an entry
  blocks that page and everything below it, as squidGuard, UT1's consumer, matches them);
- a URL token (split on non-alphanumerics, lower-cased) is a banned word;
- at least `soft_word_threshold` URL tokens are soft-banned words;
- a banned subword occurs in the URL with every non-alphanumeric character removed ("p.o.r.n" style evasions).

The product ships a short default list of its own (`lmforge/data/blocklists/`: adult top-level domains and the
largest adult sites, cryptojacking hosts, and unambiguous banned words, subwords and soft words; each file's header
says how its entries were chosen), so a web chain never runs without one. Full coverage needs UT1's lists (the
base of FineWeb's), given as folders in `blocklists` (`lmforge data run --blocklist DIR`); UT1 categories that
UT1 itself marks "white" (press, blogs, ...: lists of ordinary sites) are skipped unless named in `categories`.
Every lookup is a set membership test (a handful per URL), so the filter costs a few microseconds per document
however long the lists are.
"""

from __future__ import annotations

import os
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from lmforge.data.base import Filter
from lmforge.data.document import Document
from lmforge.utils import LmforgeError

_NON_ALNUM = re.compile(r"[^a-z0-9]+")
DEFAULT_LISTS = Path(__file__).resolve().parent.parent / "blocklists"  # package data, see the files' headers


def _read_list(path: Path) -> list[str]:
    """Non-empty, non-comment lines of a list file, stripped. UT1 files are mostly ASCII; stray bytes are kept
    as replacement characters rather than failing the whole list."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return [s for s in (line.strip() for line in f) if s and not s.startswith("#")]
    except OSError as e:
        raise LmforgeError(f"cannot read blocklist {path}: {e}") from e


def _ut1_white(folder: Path) -> bool:
    """Whether UT1's `usage` file marks this category white (lists of ordinary sites, for allowing, not blocking)."""
    usage = folder / "usage"
    if not usage.is_file():
        return False
    marks = {w.lower() for line in _read_list(usage) for w in line.split()}
    return "white" in marks and "black" not in marks


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

    `default_lists`: apply lmforge's own short lists (`lmforge/data/blocklists/`) in addition to any given.
    `blocklists`: files or folders. A folder is searched (recursively) for UT1's `domains` and `urls` files; a
    file whose name starts with "url" is a URL list, any other file a domain list. `categories` restricts folder
    search to those UT1 category names (e.g. ["adult", "gambling"]); None takes every category UT1 marks black.
    `banned_words`, `soft_banned_words`, `banned_subwords`: FineWeb's keyword files (one entry per line, `#`
    comments), added to the default ones. Documents without a URL are kept: there is nothing to judge.
    """

    blocklists: list[str] = field(default_factory=list)
    categories: list[str] | None = None
    banned_words: str | None = None
    soft_banned_words: str | None = None
    banned_subwords: str | None = None
    soft_word_threshold: int = 2
    default_lists: bool = True

    name = "url_filter"

    def __post_init__(self) -> None:
        self._check_params()
        self.domains: set[str] = set()
        self.url_prefixes: set[str] = set()
        self.lists: list[dict[str, Any]] = []  # every list loaded: name, kind, entries (for the report)
        self.white_skipped: list[str] = []
        self.hard_words: set[str] = set()
        self.soft_words: set[str] = set()
        subwords: set[str] = set()
        word_lists = [(self.banned_words, "banned words", self.hard_words),
                      (self.soft_banned_words, "soft-banned words", self.soft_words),
                      (self.banned_subwords, "banned subwords", subwords)]
        if self.default_lists:
            self._load_file(DEFAULT_LISTS / "domains", is_url=False, label="default:domains")
            for (_, kind, into), fname in zip(word_lists, ("banned_words.txt", "soft_banned_words.txt",
                                                           "banned_subwords.txt")):
                self._load_words(DEFAULT_LISTS / fname, kind, into, label=f"default:{fname}")
        for p in self.blocklists:
            self._load_blocklist(Path(p))
        for path, kind, into in word_lists:
            if path:
                self._load_words(Path(path), kind, into, label=str(path))
        # Substring search without a regex per rule: index the subwords by their first k characters (k = the
        # shortest subword) and test each position of the URL once, then confirm the few candidates.
        self._sub_k = min((len(w) for w in subwords), default=0)
        self._sub_index: dict[str, list[str]] = defaultdict(list)
        for w in subwords:
            self._sub_index[w[: self._sub_k]].append(w)
        self.n_subwords = len(subwords)

    def _check_params(self) -> None:
        """Parameters come from config files too: a wrong type is named here, not met later as a crash."""
        if isinstance(self.soft_word_threshold, bool) or not isinstance(self.soft_word_threshold, int) \
                or self.soft_word_threshold < 1:
            raise LmforgeError(f"url_filter: soft_word_threshold must be a whole number >= 1, "
                               f"got {self.soft_word_threshold!r}")
        for key, what in (("blocklists", "paths"), ("categories", "names")):
            value = getattr(self, key)
            if (value is not None or key == "blocklists") and \
                    not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
                raise LmforgeError(f"url_filter: {key} must be a list of {what}, got {value!r}")

    def _load_words(self, path: Path, kind: str, into: set[str], label: str) -> None:
        """A keyword list, normalized as URLs are before matching (lower case, alphanumerics only)."""
        entries = _read_list(path)
        into.update(w for w in (_NON_ALNUM.sub("", e.lower()) for e in entries) if w)
        self.lists.append({"list": label, "kind": kind, "entries": len(entries)})

    def _load_blocklist(self, path: Path) -> None:
        if path.is_dir():
            found = False
            for root, dirs, files in os.walk(path):
                dirs.sort()  # the same order, so the same report, on every file system
                category = Path(root).name
                if Path(root) != path and self.categories is None and _ut1_white(Path(root)):
                    self.white_skipped.append(category)
                    continue
                if self.categories is not None and category not in self.categories and Path(root) != path:
                    continue
                for name in sorted(files):
                    if name in ("domains", "urls"):
                        found = True
                        self._load_file(Path(root) / name, is_url=name == "urls", label=str(Path(root) / name))
            if not found:
                where = f" in the categories {', '.join(self.categories)}" if self.categories is not None else ""
                raise LmforgeError(f"blocklist folder {path} has no UT1 'domains' or 'urls' files{where}")
        elif path.is_file():
            self._load_file(path, is_url=path.name.startswith("url"), label=str(path))
        else:
            raise LmforgeError(f"blocklist not found: {path}")

    def _load_file(self, path: Path, is_url: bool, label: str) -> None:
        entries = _read_list(path)
        for entry in entries:
            if is_url:
                key = _url_key(entry)
                if key:
                    self.url_prefixes.add(key)
            else:
                self.domains.add(_normalize_host(entry))
        self.lists.append({"list": label, "kind": "urls" if is_url else "domains", "entries": len(entries)})

    def _empty(self) -> bool:
        return not (self.domains or self.url_prefixes or self.hard_words or self.soft_words or self.n_subwords)

    def settings(self) -> dict[str, Any]:
        out: dict[str, Any] = {"lists": self.lists, "soft_word_threshold": self.soft_word_threshold}
        if self.white_skipped:
            out["UT1 categories skipped (marked white by UT1)"] = ", ".join(self.white_skipped)
        return out

    def warnings(self) -> list[str]:
        return [self.describe()] if self._empty() else []

    def describe(self) -> str:
        """What the filter will apply, for the log and the report (an empty filter says so instead of silently
        keeping everything)."""
        if self._empty():
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

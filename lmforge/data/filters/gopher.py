"""Gopher's quality rules (Rae et al. 2021, "Scaling Language Models: Methods, Analysis & Insights from Training
Gopher", appendix A.1.1, table A1), as FineWeb applies them to English web text.

Two filters, because they catch different failures: the repetition filter drops pages that say the same thing
over and over (generated spam, tag clouds, boilerplate-heavy extractions); the quality filter drops pages that are
not running prose (too short, too long, word salad, lists of links, symbol soup).

Ratios with characters in the numerator are taken over the characters of the whole document, as FineWeb does.
n-grams are counted over hashed word ids with numpy, so the ten n-gram passes cost a few array operations each
instead of building millions of strings.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from lmforge.data.base import Filter
from lmforge.data.document import Document
from lmforge.data.filters.text import alnum_words, count_letter_words, split_words

_PARAGRAPH_SPLIT = re.compile(r"\n{2,}")
_LINE_SPLIT = re.compile(r"\n+")

# Large odd 64-bit multipliers for the rolling n-gram hash (wrap-around arithmetic on uint64).
_MIX = np.uint64(0x9E3779B97F4A7C15)
_STEP = np.uint64(0xBF58476D1CE4E5B9)


def _duplicates(items: list[str]) -> tuple[int, int]:
    """(number of items equal to an earlier item, their total characters)."""
    seen: set[str] = set()
    n = chars = 0
    for x in items:
        if x in seen:
            n += 1
            chars += len(x)
        else:
            seen.add(x)
    return n, chars


def _round(x: float) -> float:
    return round(float(x), 4)


@dataclass
class GopherRepetitionFilter(Filter):
    """Drop documents with too much repeated content (table A1 thresholds as defaults; None disables a rule).

    - duplicate lines / paragraphs: fraction of lines (paragraphs) equal to an earlier one, and the fraction of the
      document's characters in them;
    - top n-gram (n = 2, 3, 4): characters covered by the most frequent n-gram, times its count;
    - duplicate n-grams (n = 5..10): characters of the words covered by a repeated occurrence of any n-gram,
      each word counted once however many repeated n-grams overlap it (the paper's "taking care not to count
      characters that occur in overlapping n-grams more than once").
    Drop reasons: `dup_para_frac`, `dup_para_char_frac`, `dup_line_frac`, `dup_line_char_frac`, `top_{n}_gram`,
    `dup_{n}_gram`, `empty`.
    """

    dup_line_frac: float | None = 0.30
    dup_para_frac: float | None = 0.30
    dup_line_char_frac: float | None = 0.20
    dup_para_char_frac: float | None = 0.20
    top_n_grams: list[tuple[int, float]] = field(default_factory=lambda: [(2, 0.20), (3, 0.18), (4, 0.16)])
    dup_n_grams: list[tuple[int, float]] = field(
        default_factory=lambda: [(5, 0.15), (6, 0.14), (7, 0.13), (8, 0.12), (9, 0.11), (10, 0.10)])

    name = "gopher_repetition"

    def keep(self, doc: Document) -> str | None:
        text = doc.text
        n_chars = len(text)
        if not text.strip():
            return "empty"
        measured: dict[str, float] = {}
        doc.metadata[self.name] = measured

        paragraphs = _PARAGRAPH_SPLIT.split(text.strip())
        n_dup, dup_chars = _duplicates(paragraphs)
        measured["dup_para_frac"] = _round(n_dup / len(paragraphs))
        measured["dup_para_char_frac"] = _round(dup_chars / n_chars)
        if self.dup_para_frac is not None and n_dup / len(paragraphs) > self.dup_para_frac:
            return "dup_para_frac"
        if self.dup_para_char_frac is not None and dup_chars / n_chars > self.dup_para_char_frac:
            return "dup_para_char_frac"

        lines = [s for s in _LINE_SPLIT.split(text.strip()) if not s.isspace()]
        n_dup, dup_chars = _duplicates(lines)
        measured["dup_line_frac"] = _round(n_dup / len(lines))
        measured["dup_line_char_frac"] = _round(dup_chars / n_chars)
        if self.dup_line_frac is not None and n_dup / len(lines) > self.dup_line_frac:
            return "dup_line_frac"
        if self.dup_line_char_frac is not None and dup_chars / n_chars > self.dup_line_char_frac:
            return "dup_line_char_frac"

        words = split_words(text)
        if not words:
            return None
        # Python's string hash (cached on each string, consistent within the process: all a document needs) as
        # the word id; a 64-bit collision between two different words of one document is vanishingly unlikely.
        # The hash differs between processes (PYTHONHASHSEED), so it may decide identity only, never an order.
        ids = np.fromiter(map(hash, words), dtype=np.int64, count=len(words)).view(np.uint64)
        lengths = np.fromiter(map(len, words), dtype=np.int64, count=len(words))
        keys = (ids ^ (ids >> np.uint64(29))) * _MIX
        max_n = max([n for n, _ in self.top_n_grams] + [n for n, _ in self.dup_n_grams] + [1])
        hashes = keys.copy()  # hashes[i] = hash of the n-gram starting at word i, for the current n
        top = dict(self.top_n_grams)
        dup = dict(self.dup_n_grams)
        for n in range(2, max_n + 1):
            m = len(words) - n + 1
            if m <= 0:
                break
            hashes = hashes[:m] * _STEP + keys[n - 1:n - 1 + m]
            if n not in top and n not in dup:
                continue
            uniq, first, inverse, counts = np.unique(hashes, return_index=True, return_inverse=True,
                                                     return_counts=True)
            if n in top:
                # among the most frequent n-grams, the one that occurs first (as datatrove's Counter.most_common
                # picks), not the smallest hash: the measured fraction must not depend on the process's hash seed
                tied = np.flatnonzero(counts == counts.max())
                best = int(tied[np.argmin(first[tied])])
                start = int(first[best])
                # the n-gram's characters as written with single spaces, times how often it occurs
                frac = (int(lengths[start:start + n].sum()) + n - 1) * int(counts[best]) / n_chars
                measured[f"top_{n}_gram"] = _round(frac)
                if counts[best] > 1 and frac > top[n]:
                    return f"top_{n}_gram"
            if n in dup:
                repeats = np.flatnonzero(first[inverse] != np.arange(m))
                if len(repeats):
                    cover = np.zeros(len(words) + 1, dtype=np.int32)
                    np.add.at(cover, repeats, 1)
                    np.add.at(cover, repeats + n, -1)
                    frac = int(lengths[np.cumsum(cover[:-1]) > 0].sum()) / n_chars
                else:
                    frac = 0.0
                measured[f"dup_{n}_gram"] = _round(frac)
                if frac > dup[n]:
                    return f"dup_{n}_gram"
        return None


STOP_WORDS = ("the", "be", "to", "of", "and", "that", "have", "with")
BULLETS = ("•", "-", "*", "‣", "◦", "▪", "●", "⁃")


@dataclass
class GopherQualityFilter(Filter):
    """Drop documents that are not running prose (Gopher's quality rules, the paper's thresholds).

    None disables a rule.

    Words are the tokens of `split_words` without its punctuation runs for the word-count and word-length rules
    (as FineWeb counts them), and whitespace-separated words for the alphabetic-word fraction, as the paper
    defines it ("80% of words contain at least one alphabetic character"): counting each comma and "$" as a word
    without letters, as FineWeb's tokenizer does, dropped 10 of 161 English news articles of the extraction
    benchmark (figures, prices), the paper's definition 3 (score tables).
    Drop reasons: `gopher_short_doc`, `gopher_long_doc`, `gopher_below_avg_word_len`, `gopher_above_avg_word_len`,
    `gopher_too_many_hashes`, `gopher_too_many_ellipsis`, `gopher_too_many_bullets`, `gopher_too_many_end_ellipsis`,
    `gopher_below_alpha_threshold`, `gopher_few_stop_words`.
    """

    min_doc_words: int | None = 50
    max_doc_words: int | None = 100_000
    min_avg_word_length: float | None = 3
    max_avg_word_length: float | None = 10
    max_symbol_word_ratio: float | None = 0.1
    max_bullet_lines_ratio: float | None = 0.9
    max_ellipsis_lines_ratio: float | None = 0.3
    min_alpha_words_ratio: float | None = 0.8
    min_stop_words: int | None = 2
    stop_words: list[str] = field(default_factory=lambda: list(STOP_WORDS))

    name = "gopher_quality"

    def __post_init__(self) -> None:
        self._stop = frozenset(w.lower() for w in self.stop_words)

    def keep(self, doc: Document) -> str | None:
        text = doc.text
        n_tokens = len(split_words(text))
        words = alnum_words(text)
        n_words = len(words)
        measured: dict[str, float] = {"words": n_words}
        doc.metadata[self.name] = measured
        if self.min_doc_words is not None and n_words < self.min_doc_words:
            return "gopher_short_doc"
        if self.max_doc_words is not None and n_words > self.max_doc_words:
            return "gopher_long_doc"
        if n_words == 0:
            return "gopher_short_doc"

        avg = sum(map(len, words)) / n_words
        measured["avg_word_length"] = _round(avg)
        if self.min_avg_word_length is not None and avg < self.min_avg_word_length:
            return "gopher_below_avg_word_len"
        if self.max_avg_word_length is not None and avg > self.max_avg_word_length:
            return "gopher_above_avg_word_len"

        if self.max_symbol_word_ratio is not None:
            if text.count("#") / n_tokens > self.max_symbol_word_ratio:
                return "gopher_too_many_hashes"
            if (text.count("...") + text.count("…")) / n_tokens > self.max_symbol_word_ratio:
                return "gopher_too_many_ellipsis"

        lines = text.splitlines() or [""]
        if self.max_bullet_lines_ratio is not None:
            bullets = sum(1 for s in lines if s.lstrip().startswith(BULLETS)) / len(lines)
            measured["bullet_lines"] = _round(bullets)
            if bullets > self.max_bullet_lines_ratio:
                return "gopher_too_many_bullets"
        if self.max_ellipsis_lines_ratio is not None:
            ellipsis = sum(1 for s in lines if s.rstrip().endswith(("...", "…"))) / len(lines)
            if ellipsis > self.max_ellipsis_lines_ratio:
                return "gopher_too_many_end_ellipsis"

        if self.min_alpha_words_ratio is not None:
            letter_words, total = count_letter_words(text)
            alpha = letter_words / max(1, total)
            measured["alpha_words"] = _round(alpha)
            if alpha < self.min_alpha_words_ratio:
                return "gopher_below_alpha_threshold"

        if self.min_stop_words is not None:
            found = self._stop.intersection(w.lower() for w in words if len(w) <= 4)
            if len(found) < self.min_stop_words:
                return "gopher_few_stop_words"
        return None

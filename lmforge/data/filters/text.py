"""Word and line helpers shared by the quality filters.

The Gopher, C4 and FineWeb rules are defined over "words" and "lines". datatrove splits words with NLTK's
Treebank tokenizer, which is slow and needs a data download for some languages; one compiled regex gives the same
split for the cases these rules look at (a word, a run of punctuation such as "..." or "--", a hyphenated or
dotted compound such as "well-known" or "3.14") at C speed. Contractions stay whole ("don't"), where NLTK splits
them in two: it changes no rule's outcome by more than a rounding of a ratio.
"""

from __future__ import annotations

import string
import unicodedata
from functools import lru_cache

import regex

WORD_RE = regex.compile(r"\w+(?:[-'’.]\w+)*|[^\w\s]+")
ALNUM_WORD_RE = regex.compile(r"\w+(?:[-'’.]\w+)*")


def split_words(text: str) -> list[str]:
    """Words and punctuation runs, in order."""
    return WORD_RE.findall(text)


def alnum_words(text: str) -> list[str]:
    """The words of `split_words` without its punctuation runs (the same tokens: a punctuation run never contains a
    word character, so skipping them does not move any word boundary)."""
    return ALNUM_WORD_RE.findall(text)


@lru_cache(maxsize=1)
def terminal_punctuation() -> tuple[str, ...]:
    """Every character with Unicode's Sentence_Terminal property (". ! ? 。 ！ ؟ ।" and ~150 more).

    FineWeb's line-punctuation rule counts lines that end a sentence in any script; the Unicode property is the
    published definition of such characters, so we derive the set instead of keeping a hand-written list. One
    regex scan over the BMP and the first supplementary planes takes a few milliseconds, once per process.
    """
    chars = "".join(chr(c) for c in range(0x30000) if not 0xD800 <= c <= 0xDFFF)
    return tuple(sorted(set(regex.findall(r"\p{Sentence_Terminal}", chars))))


@lru_cache(maxsize=1)
def punctuation_chars() -> frozenset[str]:
    """Characters that make a token a "symbol" rather than a word: ASCII punctuation, every Unicode punctuation
    (P*) and symbol (S*) character of the BMP, and control characters."""
    chars = set(string.punctuation)
    for c in range(0x10000):
        if 0xD800 <= c <= 0xDFFF:
            continue
        cat = unicodedata.category(chr(c))
        if cat[0] in "PS" or cat == "Cc":
            chars.add(chr(c))
    return frozenset(chars)


NO_BREAK_SPACES = ("\xa0", "\u2007", "\u202f")


def plain_spaces(text: str) -> str:
    """No-break spaces (`&nbsp;` and its narrow and figure variants) as plain spaces. Word splitters that split on
    ASCII whitespace only (fastText, many tokenizers) would otherwise glue the words around them together.
    `str.replace` per character, only when present: ~1000x faster than `str.translate` on long texts."""
    for space in NO_BREAK_SPACES:
        if space in text:
            text = text.replace(space, " ")
    return text


def non_empty_lines(text: str) -> list[str]:
    return [line for line in text.split("\n") if line.strip()]

"""FineWeb's own quality rules (Penedo et al. 2024, "The FineWeb Datasets", section 3.3): found by comparing the
documents C4's rules removed with the ones they kept, and chosen to remove at most a few percent of tokens each.

- line punctuation: fewer than 12% of the lines end with terminal punctuation -> menus, tables, link lists;
- short lines: more than 67% of the lines are 30 characters or shorter -> lists and navigation;
- character duplicates: more than 1% of the characters are in lines that repeat an earlier line -> boilerplate;
- list-like: more than 0.3 newlines per word -> one word per line.
"""

from __future__ import annotations

from dataclasses import dataclass

from lmforge.data.base import Filter
from lmforge.data.document import Document
from lmforge.data.filters.text import split_words, terminal_punctuation


@dataclass
class FineWebQualityFilter(Filter):
    """FineWeb's four line-level rules, with its thresholds as defaults.

    `stop_chars`: characters that end a sentence; default every Unicode Sentence_Terminal character (". ! ? 。 ..."
    in all scripts), as FineWeb counts terminal punctuation in any language. Metadata: the four measured ratios
    under `fineweb_quality`. Drop reasons: `fineweb_empty`, `fineweb_line_punct_ratio`, `fineweb_short_line_ratio`,
    `fineweb_char_dup_ratio`, `fineweb_list_ratio`.
    """

    line_punct_thr: float = 0.12
    line_punct_exclude_zero: bool = False
    short_line_thr: float = 0.67
    short_line_length: int = 30
    char_duplicates_ratio: float = 0.01
    new_line_ratio: float = 0.3
    stop_chars: list[str] | None = None

    name = "fineweb_quality"

    def __post_init__(self) -> None:
        self._stops = tuple(self.stop_chars) if self.stop_chars is not None else terminal_punctuation()

    def keep(self, doc: Document) -> str | None:
        text = doc.text
        lines = [line.rstrip() for line in text.split("\n") if line.strip()]
        if not lines:
            return "fineweb_empty"
        measured: dict[str, float] = {}
        doc.metadata[self.name] = measured

        punct = sum(1 for line in lines if line.endswith(self._stops)) / len(lines)
        measured["line_punct_ratio"] = round(punct, 4)
        if punct < self.line_punct_thr and not (punct == 0 and self.line_punct_exclude_zero):
            return "fineweb_line_punct_ratio"

        short = sum(1 for line in lines if len(line) <= self.short_line_length) / len(lines)
        measured["short_line_ratio"] = round(short, 4)
        if short > self.short_line_thr:
            return "fineweb_short_line_ratio"

        seen: set[str] = set()
        dup_chars = 0
        for line in lines:
            if line in seen:
                dup_chars += len(line)
            else:
                seen.add(line)
        dup = dup_chars / max(1, len(text) - text.count("\n"))
        measured["char_dup_ratio"] = round(dup, 4)
        if dup > self.char_duplicates_ratio:
            return "fineweb_char_dup_ratio"

        n_words = len(split_words(text))
        ratio = text.count("\n") / max(1, n_words)
        measured["list_ratio"] = round(ratio, 4)
        if ratio > self.new_line_ratio:
            return "fineweb_list_ratio"
        return None

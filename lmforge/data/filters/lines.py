"""Repeated lines removed inside a document: for sites that repeat blocks by design.

The Gopher and FineWeb repetition rules drop a whole page when too much of it repeats, which is right for spam
and boilerplate on the open web. Generated documentation repeats for a different reason: pydoc documents every
inherited method again in each subclass, so `ast`'s page is 83% repeated lines although all of it is real
documentation. Keeping the first occurrence of each line keeps all of the information once; the repetition rules
that run afterwards then judge what remains. Not part of FineWeb's chain: a corpus config opts in.
"""

from __future__ import annotations

from dataclasses import dataclass

from lmforge.data.base import Filter
from lmforge.data.document import Document


@dataclass
class RepeatedLinesFilter(Filter):
    """Remove every line that repeats an earlier line of the same document.

    Lines are compared without surrounding whitespace; lines shorter than `min_chars` (headings such as
    "Parameters") always stay. Blank lines are kept
    as paragraph breaks, collapsed to one. Metadata: `repeated_lines_removed`. Drop reason: `lines_all_repeated`
    (nothing left, which only an empty document can reach)."""

    min_chars: int = 1

    name = "repeated_lines"

    def keep(self, doc: Document) -> str | None:
        seen: set[str] = set()
        kept: list[str] = []
        removed = 0
        for line in doc.text.split("\n"):
            key = line.strip()
            if not key:
                if kept and kept[-1]:
                    kept.append("")
                continue
            if len(key) >= self.min_chars:
                if key in seen:
                    removed += 1
                    continue
                seen.add(key)
            kept.append(line.rstrip())
        text = "\n".join(kept).strip()
        if not text:
            return "lines_all_repeated"
        if removed:
            doc.text = text
        doc.metadata["repeated_lines_removed"] = removed
        return None

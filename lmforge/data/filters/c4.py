"""C4's line filters (Raffel et al. 2020, "Exploring the Limits of Transfer Learning...", section 2.2), with the
extra rules of C4's reference code (TFDS `c4_utils.clean_page`): lines with a 1000+ character word and lines
about cookies / terms of use go too.

C4 cleans a page line by line and then judges what is left: lines without terminal punctuation, with fewer than 3
words, or mentioning "javascript" are removed; a page with "lorem ipsum" or a curly bracket in a kept line is
dropped whole; so is a page left with fewer than 5 sentences. The kept lines replace the text.

On the embedded pydoc corpus two rules misfire (code documentation is full of `{}` and mentions JavaScript only
as a word): the pydoc config relaxes them, see `lmforge/data/filters/configs.py`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from lmforge.data.base import Filter
from lmforge.data.document import Document

_CITATION = re.compile(r"\[\d*\]|\[edit\]|\[citation needed\]", re.IGNORECASE)
_SENTENCE_END = re.compile(r"[.!?]+[\"'”’)\]]*(?=\s|$)")
END_PUNCTUATION = (".", "?", "!", '"', "'")
POLICY_PHRASES = ("terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies",
                  "use cookies")


@dataclass
class C4QualityFilter(Filter):
    """C4's line cleaning and page rules, with the paper's settings as defaults.

    Each rule can be switched off for a corpus where it misfires. FineWeb runs it with `filter_no_terminal_punct=False` (its own line-punctuation rule replaces it).

    Sentences are counted as runs of `.`, `!` or `?` (with closing quotes/brackets) followed by a space or the
    end of a line, and at least one per kept line: the same count as NLTK's punkt on ordinary prose, without the
    model download. C4 writes each kept line stripped and drops blank lines; `keep_layout=True` keeps the kept
    lines' indentation and one blank line between paragraphs instead (code examples keep their structure).
    Metadata: `c4_lines_removed`. Drop reasons: `c4_lorem_ipsum`, `c4_curly_bracket`, `c4_too_few_sentences`.
    """

    filter_no_terminal_punct: bool = True
    min_num_sentences: int = 5
    min_words_per_line: int = 3
    max_word_length: int = 1000
    remove_citations: bool = True
    filter_lorem_ipsum: bool = True
    filter_javascript: bool = True
    filter_curly_bracket: bool = True
    filter_policy: bool = True
    policy_phrases: list[str] = field(default_factory=lambda: list(POLICY_PHRASES))
    keep_layout: bool = False

    name = "c4_quality"

    def keep(self, doc: Document) -> str | None:
        kept: list[str] = []
        removed = 0
        sentences = 0
        for raw in doc.text.splitlines():
            line = raw.strip()
            if not line:
                if self.keep_layout and kept and kept[-1]:
                    kept.append("")
                continue
            words = line.split()
            if self.max_word_length > 0 and any(len(w) > self.max_word_length for w in words):
                removed += 1
                continue
            if self.remove_citations and "[" in line:
                line = _CITATION.sub("", line)
            if self.filter_no_terminal_punct and (not line.endswith(END_PUNCTUATION) or line.endswith("...")):
                removed += 1
                continue
            if len(words) < self.min_words_per_line:
                removed += 1
                continue
            lower = line.lower()
            if self.filter_lorem_ipsum and "lorem ipsum" in lower:
                return "c4_lorem_ipsum"
            if self.filter_javascript and "javascript" in lower:
                removed += 1
                continue
            if self.filter_curly_bracket and "{" in line:
                return "c4_curly_bracket"
            if self.filter_policy and any(p in lower for p in self.policy_phrases):
                removed += 1
                continue
            if self.min_num_sentences > 0:
                sentences += max(1, len(_SENTENCE_END.findall(line)))
            kept.append(raw[: len(raw) - len(raw.lstrip())] + line if self.keep_layout else line)
        if self.min_num_sentences > 0 and sentences < self.min_num_sentences:
            return "c4_too_few_sentences"
        doc.text = "\n".join(kept).strip("\n")
        doc.metadata["c4_lines_removed"] = removed
        return None

"""Pre-tokenizer split patterns: text is cut into chunks by a regex before BPE, and merges never cross a chunk.

Why the *classic* GPT-4 (cl100k_base) pattern and not the one tiktoken ships today: tiktoken's current cl100k
pattern uses possessive quantifiers (`?+`, `++`) and `\\s*[\\r\\n]` instead of `\\s*[\\r\\n]+`. Our text goes
through three regex engines: Python `regex` (training and the reference encoder), Rust `fancy-regex` (tiktoken,
the fast encoder) and Oniguruma (Hugging Face `tokenizers`, the exported tokenizer.json). The classic pattern
below is the form those three engines split identically, which is what lets the tests prove identical ids through
all three paths. It keeps GPT-4's useful properties: contractions are case-insensitive, numbers are split into
groups of at most three digits, a single leading non-letter (space, punctuation) attaches to a word, and runs of
whitespace keep their last space for the following word.

A custom pattern (`--pattern REGEX`) need not match every character, may match the empty string and may hold
capture groups; `re.findall` would then drop text (`[a-z]+(?= )` turns `Hello World 123!` into `elloorld`) and
tiktoken's Rust core panics on an empty match. So a chunk is defined by construction, not by trust in the regex:
the text is cut at the start and the end of every match, so the chunks are the non-empty matches *and the gaps
between them*, and their concatenation is always the text (`split_chunks`). That is also what Hugging Face's
`Split(..., behavior="isolated")` does, so an exported tokenizer.json splits the same way.
The two built-in patterns match every character and never match empty (a test proves it on any string), so for
them `findall` already yields exactly those chunks and the fast paths (findall, tiktoken's own split) stay.
"""

from __future__ import annotations

from functools import partial
from typing import Callable

import regex

GPT4_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

# GPT-2's pattern: contractions are case-sensitive, digits are not grouped, only a space may prefix a word.
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

PATTERNS: dict[str, str] = {"gpt4": GPT4_PATTERN, "gpt2": GPT2_PATTERN}


def resolve_pattern(pattern: str, what: str = "split pattern") -> tuple[str, str]:
    """Return (name, regex) for a pattern name ("gpt4", "gpt2") or a regex (a known one gets its name back).

    `what` names the pattern's source in the error (`--pattern`, or a tokenizer file's field), which is raised as
    `LmforgeError` when the regex does not compile.
    """
    if not isinstance(pattern, str) or not pattern:
        from lmforge.utils import LmforgeError

        raise LmforgeError(f"{what} must be a non-empty string (a pattern name or a regex), got {pattern!r}")
    if pattern in PATTERNS:
        return pattern, PATTERNS[pattern]
    for name, known in PATTERNS.items():
        if pattern == known:
            return name, known
    try:
        regex.compile(pattern)
    except (regex.error, ValueError, OverflowError, RecursionError) as e:
        from lmforge.utils import LmforgeError

        raise LmforgeError(f"{what} {pattern!r} is neither 'gpt4', 'gpt2' nor a valid regex: {e}") from e
    return "custom", pattern


def covers_by_itself(pattern: str) -> bool:
    """True for the built-in patterns: every character is matched and no match is empty (proven by a test)."""
    return pattern in PATTERNS.values()


def split_chunks(compiled: regex.Pattern, text: str) -> list[str]:
    """The chunks of `text`: the text cut at the start and the end of every match of `compiled` (empty pieces left
    out), i.e. the non-empty matches and the gaps between them, where an empty match is a cut point only.

    Their concatenation is `text` whatever the regex (see the module docstring); capture groups are ignored.
    """
    chunks: list[str] = []
    end = 0
    for m in compiled.finditer(text):
        start, stop = m.span()
        if start > end:
            chunks.append(text[end:start])
            end = start
        if stop > end:
            chunks.append(text[end:stop])
            end = stop
    if end < len(text):
        chunks.append(text[end:])
    return chunks


def chunk_splitter(pattern: str) -> Callable[[str], list[str]]:
    """A function `text -> chunks` for `pattern`: `findall` for the built-in patterns (fastest, and equal to
    `split_chunks` for them), `split_chunks` for any other, so no text is ever lost."""
    compiled = regex.compile(pattern)
    if covers_by_itself(pattern):
        return compiled.findall
    return partial(split_chunks, compiled)

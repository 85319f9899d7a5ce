"""Pre-tokenizer split patterns: text is cut into chunks by a regex before BPE, and merges never cross a chunk.

Why the *classic* GPT-4 (cl100k_base) pattern and not the one tiktoken ships today: tiktoken's current cl100k
pattern uses possessive quantifiers (`?+`, `++`) and `\\s*[\\r\\n]` instead of `\\s*[\\r\\n]+`. Our text goes
through three regex engines: Python `regex` (training and the reference encoder), Rust `fancy-regex` (tiktoken,
the fast encoder) and Oniguruma (Hugging Face `tokenizers`, the exported tokenizer.json). The classic pattern
below is the form those three engines split identically, which is what lets the tests prove identical ids through
all three paths. It keeps GPT-4's useful properties: contractions are case-insensitive, numbers are split into
groups of at most three digits, a single leading non-letter (space, punctuation) attaches to a word, and runs of
whitespace keep their last space for the following word.
"""

from __future__ import annotations

GPT4_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

# GPT-2's pattern: contractions are case-sensitive, digits are not grouped, only a space may prefix a word.
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

PATTERNS: dict[str, str] = {"gpt4": GPT4_PATTERN, "gpt2": GPT2_PATTERN}


def resolve_pattern(pattern: str) -> tuple[str, str]:
    """Return (name, regex) for a pattern name ("gpt4", "gpt2") or a regex (a known one gets its name back)."""
    if pattern in PATTERNS:
        return pattern, PATTERNS[pattern]
    for name, known in PATTERNS.items():
        if pattern == known:
            return name, known
    import regex

    try:
        regex.compile(pattern)
    except regex.error as e:
        from lmforge.utils import LmforgeError

        raise LmforgeError(f"split pattern {pattern!r} is neither 'gpt4', 'gpt2' nor a valid regex: {e}") from e
    return "custom", pattern

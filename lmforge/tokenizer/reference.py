"""The reference encoder: the tokenizer's readable specification, in a page of pure Python.

`Tokenizer.encode` runs the same algorithm through `tiktoken` (Rust) for speed; the tests prove both give identical
ids on real text, so this file is the definition of what an id sequence means:

1. If special tokens are allowed, cut the text at every occurrence of an allowed special token's string; those
   occurrences become the special ids. Otherwise a string such as `<|assistant|>` is ordinary text.
2. A lone surrogate (not valid Unicode, possible in a Python string) is a hard cut: it becomes the byte tokens of
   its 3-byte `surrogatepass` form, so decoding gives the same string back.
3. The rest is split by the pattern (GPT-4's by default) into chunks: it is cut at the start and end of every
   match, so the chunks are the matches and the gaps between them (`patterns.split_chunks`) and no character is
   ever dropped; each chunk is encoded alone.
4. A chunk whose bytes are one token is that token. Otherwise it starts as its UTF-8 bytes and, repeatedly, the
   adjacent pair whose concatenation has the lowest rank (= token id, i.e. the earliest learned) is merged; the
   leftmost such pair on a tie. This is tiktoken's rule; it equals applying the learned merges in order except for
   rare tokens the training reached along another path.
"""

from __future__ import annotations

import regex

from lmforge.tokenizer.patterns import chunk_splitter

SURROGATES = regex.compile(r"[\ud800-\udfff]")
NONE = float("inf")  # the rank of a pair that is not a token


class ReferenceEncoder:
    """Encode text with byte-level BPE ranks (`bytes -> id`), a split pattern and special tokens (`str -> id`)."""

    def __init__(self, ranks: dict[bytes, int], pattern: str, special_tokens: dict[str, int]):
        self.ranks = ranks
        self._split = chunk_splitter(pattern)  # split_chunks (findall for the built-in patterns: the same chunks)
        self.special_tokens = special_tokens
        self._cache: dict[str, list[int]] = {}  # chunk -> ids; a chunk always encodes the same way

    def encode(self, text: str, allowed_special: frozenset[str] | set[str] = frozenset()) -> list[int]:
        ids: list[int] = []
        if allowed_special:
            specials = regex.compile("|".join(regex.escape(s) for s in sorted(allowed_special, key=len, reverse=True)))
            start = 0
            for m in specials.finditer(text):
                ids += self.encode_ordinary(text[start : m.start()])
                ids.append(self.special_tokens[m.group()])
                start = m.end()
            return ids + self.encode_ordinary(text[start:])
        return self.encode_ordinary(text)

    def encode_ordinary(self, text: str) -> list[int]:
        ids: list[int] = []
        start = 0
        for m in SURROGATES.finditer(text):
            ids += self._encode_valid(text[start : m.start()])
            ids += list(m.group().encode("utf-8", "surrogatepass"))  # byte tokens: id = byte value
            start = m.end()
        return ids + self._encode_valid(text[start:])

    def _encode_valid(self, text: str) -> list[int]:
        ids: list[int] = []
        for chunk in self._split(text):
            cached = self._cache.get(chunk)
            if cached is None:
                cached = self._cache[chunk] = self.encode_chunk(chunk.encode("utf-8"))
            ids += cached
        return ids

    def encode_chunk(self, data: bytes) -> list[int]:
        rank = self.ranks.get(data)
        if rank is not None:
            return [rank]
        parts = [data[i : i + 1] for i in range(len(data))]
        # pair_ranks[i]: rank of parts[i] + parts[i + 1], or NONE; after a merge only its two neighbours change
        pair_ranks = [self._pair_rank(parts, i) for i in range(len(parts) - 1)]
        while pair_ranks:
            best = min(pair_ranks)
            if best == NONE:
                break
            i = pair_ranks.index(best)  # the leftmost pair of lowest rank
            parts[i : i + 2] = [parts[i] + parts[i + 1]]
            del pair_ranks[i]
            if i < len(pair_ranks):
                pair_ranks[i] = self._pair_rank(parts, i)
            if i > 0:
                pair_ranks[i - 1] = self._pair_rank(parts, i - 1)
        return [self.ranks[p] for p in parts]

    def _pair_rank(self, parts: list[bytes], i: int) -> float:
        return self.ranks.get(parts[i] + parts[i + 1], NONE)

"""The reference trainer and encoder: the tokenizer's readable specification, in two pages of pure Python.

`train_merges` is minbpe's training loop with lmforge's rules spelled out; it recounts every pair for every merge,
so it is slow and obviously correct. `bpe_train.learn_merges` learns the same merges fast (counts updated in place,
a priority queue); the tests prove the two give the same merges, merge for merge, on real text.

`Tokenizer.encode` runs the reference encoder's algorithm through `tiktoken` (Rust) for speed; the tests prove both
give identical ids on real text, so this file is the definition of what an id sequence means:

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

from collections import Counter
from typing import Iterable

import regex

from lmforge.tokenizer.patterns import GPT4_PATTERN, chunk_splitter

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


def train_merges(texts: Iterable[str], num_tokens: int, pattern: str = GPT4_PATTERN) -> list[tuple[int, int, int]]:
    """Learn `(left id, right id, new id)` merges until there are `num_tokens` tokens (256 bytes + merged ones).

    1. Every document is cut into chunks by the split pattern; a pair never spans two chunks (nor two documents).
       Identical chunks are kept once, with their count.
    2. Count every adjacent pair of ids over all chunks, weighted by the chunk's count; overlapping occurrences
       (the two `a a` in `a a a`) both count.
    3. Merge the most frequent pair; on a tie the smallest pair `(a, b)` by id (rustbpe's and `tokenizers`' rule).
       Its bytes get the next id, or the existing id if they already are a token (reached along another path).
    4. Replace the pair left to right, without overlaps, in every chunk; repeat from 2 until the vocabulary is
       full or no pair is left.
    """
    split = chunk_splitter(pattern)
    counts = Counter(chunk for text in texts for chunk in split(text))
    chunks = [(list(chunk.encode("utf-8", "surrogatepass")), n) for chunk, n in counts.items()]
    vocab = [bytes([b]) for b in range(256)]
    id_of = {token: i for i, token in enumerate(vocab)}
    merges = []
    while len(vocab) < num_tokens:
        pairs: Counter = Counter()
        for ids, n in chunks:
            for pair in zip(ids, ids[1:]):
                pairs[pair] += n
        if not pairs:
            break
        a, b = min(pairs, key=lambda pair: (-pairs[pair], pair))
        merged = vocab[a] + vocab[b]
        if merged not in id_of:
            id_of[merged] = len(vocab)
            vocab.append(merged)
        merges.append((a, b, id_of[merged]))
        chunks = [(_replace_pair(ids, a, b, id_of[merged]), n) for ids, n in chunks]
    return merges


def _replace_pair(ids: list[int], a: int, b: int, new: int) -> list[int]:
    out, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and ids[i] == a and ids[i + 1] == b:
            out.append(new)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out

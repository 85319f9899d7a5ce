"""Byte-level BPE training: the efficient algorithm, in Python and numpy.

minbpe's loop recounts every pair of the whole corpus for every merge (quadratic). Here:

1. **Count unique chunks once.** Each document is cut into chunks by the split pattern (`patterns.py`); a `Counter` of chunk strings is all
   that is kept, so the input streams (a corpus larger than memory can be counted) and the merge phase works on
   the few hundred thousand distinct chunks, weighted by their counts, instead of on the text. Documents are never
   joined, so no chunk (and therefore no merge) spans a document boundary. Counting can fan out to worker
   processes: the split regex is the costly part and it holds the GIL.
2. **Pair counts with incremental updates.** `pair_counts[pair]` is the number of adjacent occurrences of the
   pair over all chunks (overlapping occurrences such as the two in `a a a` both count, as in `tokenizers` and
   `rustbpe`), and `where[pair]` lists where it may occur. A merge touches only those places and updates the
   counts next to each merge site. The first merges, which each touch tens of thousands of chunks, run on numpy
   arrays of token positions; the many small ones after them on chunks as strings of token characters, where
   rewriting a chunk is one C-level `str.replace` (see `learn_merges`).
3. **A priority queue with lazy refresh.** A heap ordered by `(-count, pair)`. Counts of existing pairs only ever fall
   (new pairs are pushed when they appear), so a popped entry whose stored count is stale is pushed back with its
   current count, and the first entry whose count is current is the true maximum.

Tie-break (what makes runs byte-identical and lets a test compare merge for merge with `rustbpe` and Hugging Face
`tokenizers`): the highest count wins; among equal counts the smallest pair `(a, b)` by token id wins, as in both
of those trainers. Base tokens are the 256 byte values (id = byte value) unless `byte_order` relabels them: with
`byte_order="hf"` the bytes are ordered as `tokenizers`' ByteLevel alphabet (sorted by the printable character
each byte is shown as), which reproduces its ties exactly; with the default `"bytes"` the ties are `rustbpe`'s.

When a merge produces bytes that already form a token (the same string reached by another path, e.g. `(a, bc)`
after `(ab, c)`), the existing id is reused, as `tokenizers` does: the vocabulary never holds the same bytes twice,
which a `tiktoken.Encoding` (bytes -> rank) requires. (We have not seen this happen on real text or in random
small corpora; the guard keeps the counts exact if it does.)
"""

from __future__ import annotations

import contextlib
import gc
import heapq
import multiprocessing
import queue
from collections import Counter, defaultdict
from dataclasses import dataclass
from itertools import compress, repeat
from operator import contains
from typing import Iterable, Iterator

import numpy as np

from lmforge.tokenizer.patterns import chunk_splitter

Merge = tuple[int, int, int]  # (left id, right id, new id)

_BATCH_CHARS = 4_000_000  # characters per counting batch sent to a worker process
_ARRAY_MIN_SITES = 40  # learn_merges: below this many positions per merge (running mean) strings are faster


def text_to_bytes(text: str) -> bytes:
    """UTF-8 bytes of a Python string; a lone surrogate becomes its 3-byte WTF-8 form (`surrogatepass`).

    Python strings may hold lone surrogates (for example from `json.loads('"\\ud800"')`); they are not valid
    Unicode, so instead of failing or silently replacing them we keep their 3 bytes, which the decoder turns back
    into the same surrogate: every Python string round-trips exactly.
    """
    return text.encode("utf-8", "surrogatepass")


def _count_worker(pattern: str, tasks, results) -> None:
    """A counting process: counts the chunks of every batch it takes until it gets None, then sends its total.

    One Counter per process, sent once, instead of one per batch: merging Counters is a Python-level loop in the
    parent, so per-batch results cost the parent about as much as the counting saved.
    """
    try:
        split = chunk_splitter(pattern)
        counts: Counter = Counter()
        while (batch := tasks.get()) is not None:
            for text in batch:
                counts.update(split(text))
        results.put(counts)
    except BaseException as e:  # reported by the parent, which would otherwise wait forever
        results.put(RuntimeError(f"chunk counting failed in a worker: {e!r}"))


def _put(q, item, procs) -> None:
    while True:
        try:
            q.put(item, timeout=1.0)
            return
        except queue.Full:
            if not all(p.is_alive() for p in procs):
                raise RuntimeError("a chunk counting worker died") from None


def _get(q, procs):
    while True:
        try:
            return q.get(timeout=1.0)
        except queue.Empty:
            if not any(p.is_alive() for p in procs) and q.empty():
                raise RuntimeError("a chunk counting worker died without a result") from None


def _batches(texts: Iterable[str], batch_chars: int) -> Iterator[list[str]]:
    batch: list[str] = []
    size = 0
    for text in texts:
        if not isinstance(text, str):
            raise TypeError(f"training texts must be str, got {type(text).__name__}")
        batch.append(text)
        size += len(text)
        if size >= batch_chars:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def count_chunks(texts: Iterable[str], pattern: str, num_workers: int = 1, progress: bool = False) -> Counter:
    """Count the split-pattern chunks of every document: `Counter[str]` of chunk -> occurrences.

    Streams `texts` (any iterable, consumed once). With `num_workers > 1`, batches of about 4M characters go to
    worker processes through a queue of at most `2 * num_workers` batches, so memory stays bounded.
    """
    from tqdm import tqdm

    total: Counter = Counter()
    # progress bars only on a terminal (tqdm's disable=None): a log or an error message gets no bar lines
    bar = tqdm(desc="counting chunks", unit="MB", unit_scale=False, disable=None if progress else True, bar_format="{desc}: {n:.1f} MB [{elapsed}, {rate_fmt}]")
    if num_workers <= 1:
        split = chunk_splitter(pattern)
        for batch in _batches(texts, _BATCH_CHARS // 4):
            for text in batch:
                total.update(split(text))
            bar.update(sum(map(len, batch)) / 1e6)
    else:
        ctx = multiprocessing.get_context()
        tasks, results = ctx.Queue(maxsize=2 * num_workers), ctx.Queue()
        procs = [ctx.Process(target=_count_worker, args=(pattern, tasks, results), daemon=True) for _ in range(num_workers)]
        for proc in procs:
            proc.start()
        try:
            for batch in _batches(texts, _BATCH_CHARS):
                _put(tasks, batch, procs)
                bar.update(sum(map(len, batch)) / 1e6)
            for _ in procs:
                _put(tasks, None, procs)
            parts = [_get(results, procs) for _ in procs]
            for proc in procs:
                proc.join()
        finally:  # on an error (bad input, Ctrl-C) the workers would wait for batches forever
            for proc in procs:
                if proc.is_alive():
                    proc.terminate()
                    proc.join()
        for part in parts:
            if isinstance(part, BaseException):
                raise part
        parts.sort(key=len, reverse=True)  # update the largest with the others: the loop runs over the smaller
        total = parts[0]
        for part in parts[1:]:
            total.update(part)
    bar.close()
    return total


def hf_byte_order() -> list[int]:
    """Bytes in the order of `tokenizers`' ByteLevel alphabet ids: sorted by the character each byte is shown as.

    GPT-2's byte-to-character map shows the printable bytes `!`..`~`, `¡`..`¬`, `®`..`ÿ` as themselves and the
    other 68 bytes as characters U+0100.. in byte order.
    """
    return sorted(range(256), key=lambda b: ord(byte_to_char(b)))


def byte_to_char(b: int) -> str:
    """GPT-2's printable stand-in character for a byte (used by Hugging Face ByteLevel models)."""
    if 33 <= b <= 126 or 161 <= b <= 172 or 174 <= b <= 255:
        return chr(b)
    rank = sum(1 for x in range(b) if not (33 <= x <= 126 or 161 <= x <= 172 or 174 <= x <= 255))
    return chr(256 + rank)


@dataclass
class TrainStats:
    """What a training run measured (reported by the CLI, the speedrun and the benchmark)."""

    unique_chunks: int = 0
    total_chunks: int = 0
    merges: int = 0
    reused_ids: int = 0  # merges whose bytes already formed a token (the existing id was reused)
    stopped_early: bool = False  # the corpus ran out of pairs before the requested vocabulary size


def _char(token_id: int) -> str:
    """A token id as one character (skipping the surrogate block), so a chunk is a `str` of tokens."""
    return chr(token_id if token_id < 0xD800 else token_id + 0x800)


def _id(ch: str) -> int:
    o = ord(ch)
    return o if o < 0xD800 else o - 0x800


def learn_merges(
    chunk_counts: Counter,
    num_tokens: int,
    byte_order: str = "bytes",
    progress: bool = False,
    stats: TrainStats | None = None,
) -> list[Merge]:
    """Learn merges until the vocabulary holds `num_tokens` byte-level tokens (256 bytes + merged tokens).

    Returns `(a, b, new_id)` in the order learned, with ids in byte-value space (id = byte for the 256 base
    tokens, new ids 256, 257, ... in order of creation). Stops early if no pair is left.

    Two phases share the pair counts and the queue. The first merges each touch tens of thousands of chunks, so
    they run on numpy arrays of token positions (`_PairPositions`: a fixed cost per merge, then C speed per site).
    Once a merge touches fewer than `_ARRAY_MIN_SITES` positions, the chunks become strings and the rest runs in
    plain Python, one chunk at a time: a chunk is a `str` whose characters are token ids (`_char`), a pair is the
    2-character string of its two tokens, applying a merge to a chunk is `str.replace(pair, new)` (left to right
    and non-overlapping exactly like BPE) and finding merge sites is `str.find`; both run in C. Pairs are those
    strings in both phases: comparing them compares `(a, b)` by id, so the heap's tie-break is the smallest pair, as
    in `tokenizers` and `rustbpe`.
    """
    from tqdm import tqdm

    if byte_order not in ("bytes", "hf"):
        raise ValueError(f"byte_order must be 'bytes' or 'hf', got {byte_order!r}")
    stats = stats if stats is not None else TrainStats()
    # internal id of each byte; merged tokens get 256.. in both orders
    order = list(range(256)) if byte_order == "bytes" else hf_byte_order()
    to_internal = bytes(order.index(b) for b in range(256)) if byte_order == "hf" else None

    chunks, counts = _chunk_bytes(chunk_counts, to_internal, stats)  # 1. the chunks as bytes of internal ids
    # 2. initial pair counts and where each pair occurs; 3. the queue: max count first, then the smallest pair
    positions: _PairPositions | None = _PairPositions(chunks, counts, num_tokens)
    pair_counts = positions.pair_counts
    queue = _PairQueue(pair_counts)
    # second phase: the chunks as strings; pair -> the chunks it may occur in (those listed since the switch, and
    # the positions listed before it)
    words: list[str] = []
    where: dict[str, list[int]] = {}
    pending: dict[str, list[np.ndarray]] = {}
    chunk_of = np.zeros(0, dtype=np.int32)

    token_bytes: list[bytes] = [bytes([b]) for b in order]  # internal id -> bytes
    bytes_to_id: dict[bytes, int] = {t: i for i, t in enumerate(token_bytes)}
    merges: list[Merge] = []
    sites = 0.0
    bar = tqdm(total=max(0, num_tokens - 256), desc="learning merges", unit="tok", disable=None if progress else True)
    with _gc_paused():
        while len(token_bytes) < num_tokens:
            pair = queue.pop()
            if pair is None:
                stats.stopped_early = True
                break
            a, b = _id(pair[0]), _id(pair[1])
            new_id, fresh = _token_id(token_bytes[a] + token_bytes[b], token_bytes, bytes_to_id)
            bar.update(fresh)
            stats.reused_ids += not fresh
            N = _char(new_id)
            if positions is not None:
                # a running mean, so that one pair with few sites (a frequent chunk) does not end the first phase
                sites = 0.9 * sites + 0.1 * positions.sites(pair) if merges else positions.sites(pair)
                if not fresh or sites < _ARRAY_MIN_SITES:
                    words, pending, chunk_of = positions.to_strings(), positions.where, positions.chunk
                    positions = None
            merges.append((a, b, new_id))
            pair_counts.pop(pair, None)
            if positions is not None:
                positions.merge(pair, N, pair_counts, queue)
            else:
                if pair in pending:  # first-phase positions become chunk indices only when needed
                    where.setdefault(pair, []).extend(chunk_of[np.concatenate(pending.pop(pair))].tolist())
                _merge_strings(words, counts, where, pair_counts, queue, pair, N, fresh)
    bar.close()
    stats.merges = len(merges)
    if to_internal is None:
        return merges
    # back to byte-value ids: base tokens are their byte value; merged ids are the same in both spaces
    return [(order[a] if a < 256 else a, order[b] if b < 256 else b, n) for a, b, n in merges]


def _chunk_bytes(chunk_counts: Counter, to_internal: bytes | None, stats: TrainStats) -> tuple[list[bytes], list[int]]:
    """The chunks as bytes of internal ids, with their counts; single-byte chunks (never merged) are left out."""
    chunks: list[bytes] = []
    counts: list[int] = []
    for chunk, c in chunk_counts.items():
        stats.total_chunks += c
        data = text_to_bytes(chunk)
        if len(data) < 2:
            continue
        if to_internal is not None:
            data = data.translate(to_internal)
        chunks.append(data)
        counts.append(c)
    stats.unique_chunks = len(chunk_counts)
    return chunks, counts


def _token_id(merged: bytes, token_bytes: list[bytes], bytes_to_id: dict[bytes, int]) -> tuple[int, bool]:
    """(id, fresh): a new id for bytes that are not a token yet, else the existing one (reached along another
    path): the vocabulary never holds the same bytes twice."""
    existing = bytes_to_id.get(merged)
    if existing is not None:
        return existing, False
    bytes_to_id[merged] = len(token_bytes)
    token_bytes.append(merged)
    return bytes_to_id[merged], True


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """The merge loop allocates millions of short-lived lists and tuples but no reference cycles, so the cyclic
    collector's passes over the hundreds of thousands of live `where` lists are pure cost (benchmark notes)."""
    collecting = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if collecting:
            gc.enable()


_CODE_MASK = (1 << 42) - 1


def _heap_key(pair: str, count: int) -> int:
    """One int that orders as `(-count, pair)`: the two characters' code points in the low 42 bits, below the
    negated count: popping ints instead of tuples is one object and one comparison."""
    return (ord(pair[0]) << 21 | ord(pair[1])) - (count << 42)


_LOW_COUNTS = 1024  # _PairQueue: pairs counted fewer times than this wait in per-count lists, not in the heap


class _PairQueue:
    """The pair with the highest count (then the smallest pair), with lazy refresh: a popped entry whose count is
    stale is pushed back with its current count, and the first current one is the maximum.

    Most new pairs are rare and are never merged, so
    a pair counted fewer times than `floor` is only appended to `low[count]`; the heap holds the others. When the
    heap runs dry, `floor` steps down and the list at the new floor joins the heap (its pairs at their current
    counts: those that fell lower move to a lower list). Any pair in `low` counts less than `floor`, so it cannot
    beat or tie a current heap entry. (What this bought is in the benchmark's notes.)
    """

    def __init__(self, pair_counts: dict[str, int]) -> None:
        self.counts = pair_counts
        self.floor = _LOW_COUNTS
        self.low: list[list[str]] = [[] for _ in range(_LOW_COUNTS)]
        self.heap: list[int] = []
        for pair, count in pair_counts.items():
            if count >= self.floor:
                self.heap.append(_heap_key(pair, count))
            else:
                self.low[count].append(pair)
        heapq.heapify(self.heap)

    def push(self, pair: str, count: int) -> None:
        if count >= self.floor:
            heapq.heappush(self.heap, _heap_key(pair, count))
        else:
            self.low[count].append(pair)

    def pop(self) -> str | None:
        """The pair to merge next, or None when no pair is left."""
        counts, heap = self.counts, self.heap
        while True:
            while heap:
                key = heapq.heappop(heap)
                code = key & _CODE_MASK
                pair = chr(code >> 21) + chr(code & 0x1FFFFF)
                current = counts.get(pair, 0)
                if key >> 42 == -current:
                    return pair
                if current > 0:
                    self.push(pair, current)
            if self.floor <= 1:
                return None
            self.floor -= 1
            waiting, self.low[self.floor] = self.low[self.floor], []
            for pair in waiting:
                current = counts.get(pair, 0)
                if current > 0:
                    self.push(pair, current)


_SEP = -1  # token of the separator between chunks in _PairPositions
_DEAD = -2  # token of a position whose token was merged into its left neighbour


class _PairPositions:
    """The first phase of `learn_merges`: every chunk's tokens in one array, merged with numpy.

    Position i holds token `tok[i]`; chunks are laid out one after the other with a separator before, between and
    after them. A merge writes the new token at the left position of each site and unlinks the right one, so the
    live positions form a doubly linked list (`nxt`, `prv`) and positions never move. `where[pair]` lists arrays of
    positions where the pair started (stale ones included: they are checked when the pair is merged). Each merge
    is about 30 numpy calls whatever its size, then C speed per site, which beats one Python step per site while
    merges are large (the benchmark's notes have the figures).
    """

    def __init__(self, chunks: list[bytes], counts: list[int], num_tokens: int) -> None:
        lens = np.fromiter(map(len, chunks), dtype=np.int64, count=len(chunks))
        # [sep] chunk0 [sep] chunk1 ... [sep]: separators at the cumulative offsets
        tok = np.full(int(lens.sum()) + len(chunks) + 1, _SEP, dtype=np.int32)
        starts = np.cumsum(lens + 1) - lens
        inside = np.ones(len(tok), dtype=bool)
        inside[starts - 1] = False
        inside[-1] = False
        tok[inside] = np.frombuffer(b"".join(chunks), dtype=np.uint8)
        self.tok = tok
        self.nxt = np.arange(1, len(tok) + 1, dtype=np.int32)  # int32 positions: half the memory of int64
        self.prv = np.arange(-1, len(tok) - 1, dtype=np.int32)
        self.nxt[-1], self.prv[0] = len(tok) - 1, 0  # the end separators link to themselves: no index falls outside
        # token ids as sort keys: 16 bits when the vocabulary fits, so the stable sorts in _group are radix sorts
        self.key_type = np.uint16 if num_tokens <= 1 << 16 else np.int32
        self.chunk = (np.cumsum(~inside) - 1).astype(np.int32)  # chunk index of each position
        self.counts = np.asarray(counts, dtype=np.int64)
        self.where: dict[str, list[np.ndarray]] = {}
        self.pair_counts: defaultdict[str, int] = defaultdict(int)
        # initial pairs as 16-bit codes 256 * left + right: a weighted bincount counts them, a stable sort (radix
        # for 16 bits) groups their positions, instead of one Python step per pair occurrence
        left = np.flatnonzero(inside[:-1] & inside[1:]).astype(np.int32)
        codes = tok[left].astype(np.uint16) * 256 + tok[left + 1].astype(np.uint16)
        totals = np.bincount(codes, weights=self.counts[self.chunk[left]].astype(np.float64), minlength=65536)
        left = left[np.argsort(codes, kind="stable")]
        ends = np.cumsum(np.bincount(codes, minlength=65536))
        for code in np.flatnonzero(totals).tolist():
            pair = chr(code >> 8) + chr(code & 255)
            self.pair_counts[pair] = int(totals[code])
            self.where[pair] = [left[ends[code - 1] if code else 0 : ends[code]]]

    def sites(self, pair: str) -> int:
        """Positions listed for `pair` (an upper bound of its sites)."""
        return sum(map(len, self.where.get(pair, ())))

    def merge(self, pair: str, N: str, pair_counts: dict[str, int], queue: _PairQueue) -> None:
        """Apply a fresh merge: per neighbour of the new token, move the count from the old pair to the new one."""
        tok, nxt, prv = self.tok, self.nxt, self.prv
        a, b, n = _id(pair[0]), _id(pair[1]), _id(N)
        found = self.where.pop(pair)
        pos = found[0] if len(found) == 1 else _unique_sorted(np.concatenate(found))  # left to right
        right = nxt[pos]
        ok = (tok[pos] == a) & (tok[right] == b)
        pos, right = pos[ok], right[ok]
        if len(pos) == 0:  # cannot happen while the counts are exact (the pair's count is positive)
            return
        if a == b:  # in a run `A A A` the candidate sites overlap: take them left to right, as str.replace does
            keep, taken_right = [], -1
            for p, r in zip(pos.tolist(), right.tolist()):
                keep.append(p != taken_right)
                if keep[-1]:
                    taken_right = r
            pos, right = pos[keep], right[keep]
        after, before = nxt[right], prv[pos]
        weight = self.counts[self.chunk[pos]]
        # `A B A B` -> `N N`: the site's right neighbour may be the next site, its left neighbour the previous one's
        # B. Sites are the leftmost non-overlapping occurrences, so a neighbour that starts (ends) an occurrence of
        # the pair is a site (a site's B): two gathers each, cheaper than a binary search among the sites.
        L, R = tok[before], tok[after]
        next_is_site = (R == a) & (tok[nxt[after]] == b)
        prev_is_site = (L == b) & (tok[prv[before]] == a)
        key_type = self.key_type
        grouped: list[tuple[str, str, int, np.ndarray]] = []
        keep = (L != _SEP) & ~prev_is_site  # the previous site counts the shared pair as its right side
        for x, c, at in _group(L[keep].astype(key_type), weight[keep], before[keep]):
            X = _char(x)
            grouped.append((X + pair[0], X + N, c, at))
        keep = R != _SEP
        for x, c, at in _group(np.where(next_is_site, n, R)[keep].astype(key_type), weight[keep], pos[keep]):
            X = _char(x)
            grouped.append((pair[1] + (pair[0] if x == n else X), N + X, c, at))
        tok[pos], tok[right] = n, _DEAD
        nxt[pos], prv[after] = after, pos
        for old, p, c, at in grouped:  # the new pairs hold the new token: none of them is counted or listed yet
            pair_counts[old] -= c
            pair_counts[p] = c
            self.where[p] = [at]
            queue.push(p, c)

    def to_strings(self) -> list[str]:
        """The chunks as strings of token characters (`_char`), for the second phase."""
        live = self.tok[self.tok != _DEAD].astype(np.int64)
        code = np.where(live >= 0xD800, live + 0x800, live)
        code[live == _SEP] = 0x10FFFF  # never a token character here (vocabularies stay far below 1.1M)
        return code.astype(np.uint32).tobytes().decode("utf-32-le").split("\U0010ffff")[1:-1]


def _group(keys: np.ndarray, weights: np.ndarray, at: np.ndarray) -> Iterator[tuple[int, int, np.ndarray]]:
    """(key, summed weight, positions in ascending order) for each distinct key, in key order."""
    if len(keys) == 0:
        return iter(())
    order = np.argsort(keys, kind="stable")
    keys, weights, at = keys[order], weights[order], at[order]
    first = np.flatnonzero(np.concatenate(([True], keys[1:] != keys[:-1])))
    bounds = first.tolist() + [len(keys)]
    return zip(keys[first].tolist(), np.add.reduceat(weights, first).tolist(),
               [at[i:j] for i, j in zip(bounds, bounds[1:])])


def _unique_sorted(x: np.ndarray) -> np.ndarray:
    x = np.sort(x)
    return x[np.concatenate(([True], x[1:] != x[:-1]))]


def _merge_strings(
    words: list[str], counts: list[int], where: dict[str, list[int]], pair_counts: dict[str, int], queue: _PairQueue,
    pair: str, N: str, fresh: bool,
) -> None:
    """The second phase of `learn_merges`: apply one merge to the chunks (strings) that may hold the pair.

    Only the counts next to each merge site change, read in the rewritten chunk `nw`: a site's left neighbour L
    turns (L, A) into (L, N), its right neighbour R turns (B, R) into (N, R) (or (B, A) into (N, N) when R is the
    next site: `A B A B` -> `N N`, where the second site skips its left side so that shared pair is counted once).
    Both changes carry the chunk's count, so the chunks are listed per neighbour character and the summed counts
    applied once per merge. This runs about 30,000 times for a 32k vocabulary, so `_PairQueue.push` is inlined.
    """
    A, B = pair
    left: defaultdict[str, list[int]] = defaultdict(list)  # L -> the chunks of the sites with left neighbour L
    right: defaultdict[str, list[int]] = defaultdict(list)  # R -> the chunks of the sites with right neighbour R
    recounted: defaultdict[str, int] = defaultdict(int)
    recounted_where: defaultdict[str, list[int]] = defaultdict(list)
    listed = set(where.pop(pair, ()))
    # Skip, at C speed, the stale entries (chunks an earlier merge took the pair out of): most listed entries are
    # stale late in training.
    for wi in compress(listed, map(contains, map(words.__getitem__, listed), repeat(pair))):
        w = words[wi]
        k = w.find(pair)
        nw = w.replace(pair, N)
        words[wi] = nw
        n = len(w)
        if not fresh:  # N may also stand in the chunk already: recount the chunk's pairs instead
            _recount(w, nw, counts[wi], N, pair_counts, recounted, recounted_where, wi)
        elif len(nw) == n - 1:
            # One site, by far the common case: its neighbours are read at the site found above.
            if k:
                left[w[k - 1]].append(wi)
            if k + 2 < n:
                right[w[k + 2]].append(wi)
        else:
            last = len(nw) - 1
            k = nw.find(N)
            while k >= 0:
                if k > 0:
                    L = nw[k - 1]
                    if L != N:
                        left[L].append(wi)
                if k < last:
                    right[nw[k + 1]].append(wi)
                k = nw.find(N, k + 1)
    weight, push, n = counts.__getitem__, heapq.heappush, ord(N)
    heap, low, floor = queue.heap, queue.low, queue.floor
    # the new pairs hold the new token, so none of them is counted or listed yet (unless the id was reused)
    for L, wis in left.items():  # a chunk with two sites next to L is listed, and counted, twice
        c = sum(map(weight, wis))
        pair_counts[L + A] -= c
        p = L + N
        pair_counts[p] = c
        where[p] = wis
        if c >= floor:
            push(heap, (ord(L) << 21 | n) - (c << 42))  # _heap_key(p, c)
        else:
            low[c].append(p)
    for R, wis in right.items():
        c = sum(map(weight, wis))
        pair_counts[B + (A if R == N else R)] -= c
        p = N + R
        pair_counts[p] = c
        where[p] = wis
        if c >= floor:
            push(heap, (n << 21 | ord(R)) - (c << 42))
        else:
            low[c].append(p)
    for p, c in recounted.items():  # only after a reused id; _recount took the old pairs' counts off
        c += pair_counts.get(p, 0)
        pair_counts[p] = c
        where.setdefault(p, []).extend(recounted_where[p])
        queue.push(p, c)


def _recount(old: str, new: str, c: int, N: str, pair_counts: dict, new_counts: dict, new_where: dict, wi: int) -> None:
    """Exact pair-count update of one chunk by recounting all its pairs (used when the merged token's id was
    reused, so the new token may already stand in the chunk and the neighbour rule cannot find the sites)."""
    for i in range(len(old) - 1):
        pair_counts[old[i : i + 2]] -= c
    for i in range(len(new) - 1):
        p = new[i : i + 2]
        if N in p:
            new_counts[p] += c
            new_where[p].append(wi)
        else:
            pair_counts[p] += c

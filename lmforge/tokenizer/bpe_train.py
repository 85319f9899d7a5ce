"""Byte-level BPE training: the efficient algorithm, in plain Python.

minbpe's loop recounts every pair of the whole corpus for every merge (quadratic). Here:

1. **Count unique chunks once.** Each document is cut by the split pattern; a `Counter` of chunk strings is all
   that is kept, so the input streams (a corpus larger than memory can be counted) and the merge phase works on
   the few hundred thousand distinct chunks, weighted by their counts, instead of on the text. Documents are never
   joined, so no chunk (and therefore no merge) spans a document boundary. Counting can fan out to worker
   processes: the split regex is the costly part and it holds the GIL.
2. **Pair counts with incremental updates.** `pair_counts[pair]` is the number of adjacent occurrences of the
   pair over all chunks (overlapping occurrences such as the two in `a a a` both count, as in `tokenizers` and
   `rustbpe`), and `where[pair]` lists the chunks that may contain it. A merge touches only those chunks and
   updates the counts next to each merge site. Chunks and pairs are strings of token characters (see
   `learn_merges`), so rewriting a chunk is one C-level `str.replace`.
3. **A priority queue with lazy refresh.** A heap of `(-count, pair)`. Counts of existing pairs only ever fall
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

import heapq
import multiprocessing
import queue
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Iterable, Iterator

import regex

Merge = tuple[int, int, int]  # (left id, right id, new id)

_BATCH_CHARS = 4_000_000  # characters per counting batch sent to a worker process


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
        pat = regex.compile(pattern)
        counts: Counter = Counter()
        while (batch := tasks.get()) is not None:
            for text in batch:
                counts.update(pat.findall(text))
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
    bar = tqdm(desc="counting chunks", unit="MB", unit_scale=False, disable=not progress, bar_format="{desc}: {n:.1f} MB [{elapsed}, {rate_fmt}]")
    if num_workers <= 1:
        pat = regex.compile(pattern)
        for batch in _batches(texts, _BATCH_CHARS // 4):
            for text in batch:
                total.update(pat.findall(text))
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

    Representation (what makes plain Python fast enough): a chunk is a `str` whose characters are token ids
    (`_char`), and a pair is the 2-character string of its two tokens. Applying a merge to a chunk is then
    `str.replace(pair, new)`, which is left to right and non-overlapping exactly like BPE, and finding merge sites
    is `str.find`; both run in C. Comparing pair strings compares `(a, b)` by id, so the heap's tie-break is the
    smallest pair, as in `tokenizers` and `rustbpe`.
    """
    from tqdm import tqdm

    if byte_order not in ("bytes", "hf"):
        raise ValueError(f"byte_order must be 'bytes' or 'hf', got {byte_order!r}")
    stats = stats if stats is not None else TrainStats()
    # internal id of each byte; merged tokens get 256.. in both orders
    order = list(range(256)) if byte_order == "bytes" else hf_byte_order()
    to_internal = bytes(order.index(b) for b in range(256)) if byte_order == "hf" else None

    # 1. the chunks as strings of internal ids (latin-1 maps byte b to chr(b)), with their counts;
    # single-byte chunks can never be merged
    words: list[str] = []
    counts: list[int] = []
    for chunk, c in chunk_counts.items():
        stats.total_chunks += c
        data = text_to_bytes(chunk)
        if len(data) < 2:
            continue
        if to_internal is not None:
            data = data.translate(to_internal)
        words.append(data.decode("latin-1"))
        counts.append(c)
    stats.unique_chunks = len(chunk_counts)

    # 2. initial pair counts and the chunks where each pair occurs
    pair_counts: defaultdict[str, int] = defaultdict(int)
    where: defaultdict[str, list[int]] = defaultdict(list)
    for wi, (w, c) in enumerate(zip(words, counts)):
        for i in range(len(w) - 1):
            pair = w[i : i + 2]
            pair_counts[pair] += c
            where[pair].append(wi)

    # 3. the heap: max count first, then the smallest pair
    heap = [(-c, pair) for pair, c in pair_counts.items()]
    heapq.heapify(heap)

    token_bytes: list[bytes] = [bytes([b]) for b in order]  # internal id -> bytes
    bytes_to_id: dict[bytes, int] = {t: i for i, t in enumerate(token_bytes)}
    merges: list[Merge] = []
    bar = tqdm(total=max(0, num_tokens - 256), desc="learning merges", unit="tok", disable=not progress)
    while len(token_bytes) < num_tokens:
        # pop until an entry's count is current (lazy refresh)
        while heap:
            neg, pair = heapq.heappop(heap)
            current = pair_counts.get(pair, 0)
            if -neg == current:
                break
            if current > 0:
                heapq.heappush(heap, (-current, pair))
        else:
            stats.stopped_early = True
            break
        if current <= 0:
            stats.stopped_early = True
            break
        A, B = pair
        a, b = _id(A), _id(B)
        merged = token_bytes[a] + token_bytes[b]
        new_id = bytes_to_id.get(merged)
        fresh = new_id is None
        if fresh:
            new_id = len(token_bytes)
            token_bytes.append(merged)
            bytes_to_id[merged] = new_id
            bar.update(1)
        else:
            stats.reused_ids += 1
        merges.append((a, b, new_id))
        N = _char(new_id)

        # Rewrite each chunk that may hold the pair and update only the counts next to each merge site, read in
        # the rewritten chunk `nw`: a site's left neighbour L turns (L, A) into (L, N), its right neighbour R turns
        # (B, R) into (N, R) (or (B, A) into (N, N) when R is the next site: `A B A B` -> `N N`, where the second
        # site skips its left side so that shared pair is counted once). Both changes carry the chunk's count c,
        # so it suffices to add up c per neighbour character and apply the sums once per merge.
        left: defaultdict[str, int] = defaultdict(int)  # L -> total count of sites with left neighbour L
        right: defaultdict[str, int] = defaultdict(int)  # R -> total count of sites with right neighbour R
        left_where: defaultdict[str, list[int]] = defaultdict(list)
        right_where: defaultdict[str, list[int]] = defaultdict(list)
        recounted: defaultdict[str, int] = defaultdict(int)
        for wi in set(where.pop(pair)):
            w = words[wi]
            if pair not in w:  # a stale entry: an earlier merge took the pair out of this chunk
                continue
            c = counts[wi]
            nw = w.replace(pair, N)
            words[wi] = nw
            if not fresh:  # N may also stand in the chunk already: recount the chunk's pairs instead
                _recount(w, nw, c, N, pair_counts, recounted, left_where, wi)
                continue
            last = len(nw) - 1
            k = nw.find(N)
            while k >= 0:
                if k > 0:
                    L = nw[k - 1]
                    if L != N:
                        left[L] += c
                        left_where[L].append(wi)
                if k < last:
                    R = nw[k + 1]
                    right[R] += c
                    right_where[R].append(wi)
                k = nw.find(N, k + 1)
        pair_counts.pop(pair, None)
        new_pairs: list[tuple[str, list[int]]] = []
        for L, c in left.items():
            pair_counts[L + A] -= c
            p = L + N
            pair_counts[p] = c
            new_pairs.append((p, left_where[L]))
        for R, c in right.items():
            pair_counts[B + (A if R == N else R)] -= c
            p = N + R
            pair_counts[p] = c
            new_pairs.append((p, right_where[R]))
        for p, c in recounted.items():  # only after a reused id
            pair_counts[p] = pair_counts.get(p, 0) + c
            new_pairs.append((p, left_where[p]))
        for p, wis in new_pairs:
            where[p].extend(wis)
            heapq.heappush(heap, (-pair_counts[p], p))
    bar.close()
    stats.merges = len(merges)

    if to_internal is None:
        return merges
    # back to byte-value ids: base tokens are their byte value; merged ids are the same in both spaces
    def ext(i: int) -> int:
        return order[i] if i < 256 else i

    return [(ext(a), ext(b), n) for a, b, n in merges]


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

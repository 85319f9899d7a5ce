"""Continuous batching: many requests decoding together, joining and leaving the batch at any step.

A background thread runs the loop. Each turn it (1) takes new requests from a thread-safe queue, (2) drops the rows of
requests whose client went away (`cancel`), freeing their slots at once, (3) admits waiting requests while free
slots last, all of them prefilled together: one forward over their prompts right-padded to the longest (a shared
prefix such as a system prompt is copied from the `PrefixCache` instead of computed), each request's n samples
copying its row, and their first tokens sampled right away (time to first token waits neither for anyone's decode
nor for the other joiners' prefills one by one), and (4) runs one decode step over every running row:
`GPT.infer` over the engine's `InferenceWeights` and a `SlotView` of the pool, the model's one forward.

Sampling is per request: each request samples its rows with its own `SamplingParams` and its own seeded generator,
so a seeded request draws the same tokens whatever else is in the batch (grouping rows of identical settings would
share a generator and lose that). Per-row text, stop strings, stop ids and whole-character streaming are the
engine's own (`GenerationSession._accept` and its helpers), applied to the scheduler's rows.

Events reach the caller through `sink(kind, payload)`, called on the loop's thread: `("token", RowEvent)` for each
sampled token, `("done", Usage)` when every row finished, `("error", message)` when the request could not run.
The HTTP server (`api.py`) takes a sink from `Scheduler.loop_sink`: events for an asyncio loop are held in a
`LoopRelay` and handed over once per loop turn, in one `call_soon_threadsafe` (one wake-up of the event loop) for
all the tokens of the step, rather than one per token: each wake-up writes to the loop's self-pipe, a system call
that gives up the GIL, and getting it back behind the event loop's thread cost the loop's thread milliseconds.
"""

from __future__ import annotations

import itertools
import queue
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from lmforge.inference.engine import Engine, GenerationSession, TokenEvent, _Row
from lmforge.inference.sampling import SamplingParams, next_token_logprobs, sample
from lmforge.serve.metrics import Metrics
from lmforge.serve.slots import PrefixCache, SlotPool
from lmforge.serve.static_step import CompiledDecode
from lmforge.utils import LmforgeError

Sink = Callable[[str, Any], None]
# The loop's thread and the HTTP event loop's thread share the GIL. At Python's default switch interval (5 ms) a
# thread that wants the GIL waits up to 5 ms for the other to yield it, once per token each way: measured with
# benchmarks/bench_serve.py (tiny shape, 1 thread, loaded 2-core machine), 0.5 ms took one stream from 107 to 448
# tokens/s and 16 streams from 357 to 763.
GIL_SWITCH_S = 0.0005
# The most tokens (padding included) one batched prefill forward computes: bounds its activations and attention
# scores when many long prompts join at once (vLLM's max_num_batched_tokens); a longer prompt runs alone.
PREFILL_TOKENS = 4096


class LoopRelay:
    """Events bound for one asyncio loop, gathered on the scheduler's thread and delivered on the loop's thread.

    `post` only appends; `flush` (the scheduler calls it at the end of each turn) wakes the loop once for all
    that a turn posted, and not at all while an earlier wake-up has not run yet (it will deliver these too).
    """

    def __init__(self, loop: Any) -> None:
        self.loop = loop
        self._lock = threading.Lock()
        self._pending: list[tuple[Callable[[Any], None], Any]] = []
        self._wake_pending = False

    def post(self, deliver: Callable[[Any], None], item: Any) -> None:
        with self._lock:
            self._pending.append((deliver, item))

    def flush(self) -> bool:
        """Wake the loop if events wait and no wake-up is on its way; False once the loop is closed (its clients
        are gone: the events are dropped, and the relay can be forgotten)."""
        with self._lock:
            if not self._pending or self._wake_pending:
                return not self.loop.is_closed()
            self._wake_pending = True
        try:
            self.loop.call_soon_threadsafe(self._deliver)
        except RuntimeError:  # the loop was closed
            return False
        return True

    def _deliver(self) -> None:
        with self._lock:
            pending, self._pending, self._wake_pending = self._pending, [], False
        for deliver, item in pending:
            deliver(item)


def _plain_greedy(params: SamplingParams) -> bool:
    """Whether `sample` reduces to an argmax for these params, so the step's shared greedy picks serve them."""
    return params.greedy and not params.uses_penalties


class QueueFull(LmforgeError):
    """The request is fine but the server has too many waiting (HTTP 429: retry later)."""


@dataclass
class RowEvent:
    """One sampled token of one sample (`index`) of a request, with what the API reports about it."""

    index: int
    event: TokenEvent
    top: list[tuple[int, float]] = field(default_factory=list)  # (token id, log-prob) of the most likely tokens
    logprob: float = 0.0  # the token's log-prob under the distribution `top` is taken from


@dataclass
class Usage:
    prompt_tokens: int
    completion_tokens: int


class _SlotRow(_Row):
    """One running sample: the engine's row bookkeeping plus the columns of its slot row filled so far."""

    def __init__(self, decoder: Any, index: int, slot: int, length: int, budget: int) -> None:
        super().__init__(decoder)
        self.index, self.slot, self.length, self.budget = index, slot, length, budget


class Request:
    """A prompt, its sampling settings and where its events go. Built by `Scheduler.submit`."""

    # The engine's per-row stop handling, run on this request's rows (it reads stop_ids and params from self).
    _accept = GenerationSession._accept
    _finish = GenerationSession._finish
    _scan_stop = GenerationSession._scan_stop
    _held_back = GenerationSession._held_back

    def __init__(self, rid: int, prompt: list[int], params: SamplingParams, sink: Sink, stop_ids: frozenset[int],
                 prefix_len: int, top_logprobs: int | None, device: torch.device) -> None:
        self.rid, self.prompt, self.params, self.sink = rid, prompt, params, sink
        self.stop_ids, self.prefix_len, self.top_logprobs = stop_ids, prefix_len, top_logprobs
        self.generator = torch.Generator(device=device)
        if params.seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(params.seed)
        self.rows: list[_SlotRow] = []
        self.seen: torch.Tensor | None = None
        self.counts: torch.Tensor | None = None
        self.cancelled = False
        self.submitted = time.monotonic()
        self.first_token_at: float | None = None

    def cancel(self) -> None:
        """Ask the loop to drop this request; its slots are free at the loop's next turn. Safe from any thread."""
        self.cancelled = True

    @property
    def finished(self) -> bool:
        return all(r.out.finish_reason is not None for r in self.rows)


class Scheduler:
    """The continuous-batching loop over one engine. `start()` runs it on a daemon thread; `stop()` ends it.

    slots: rows of KV cache (running samples at once); prefix_entries: shared prefixes kept; max_requests: requests
    in flight (queued or running) before `submit` refuses more. The count is the scheduler's own lists, so a
    client that vanished without a trace still leaves once its request ends: the limit can never leak.
    """

    def __init__(self, engine: Engine, slots: int = 16, prefix_entries: int = 8, max_requests: int = 64,
                 compile: str | Callable | None = None) -> None:
        if engine.tokenizer is None:
            raise LmforgeError("the server needs an engine with a tokenizer")
        self.engine, self.model = engine, engine.model
        self.device = next(engine.model.parameters()).device
        self.pool = SlotPool(engine.model.config, slots, self.device, engine.dtype)
        self.prefixes = PrefixCache(prefix_entries)
        self.max_requests = max_requests
        self.metrics = Metrics()
        self._inbox: queue.Queue[Request] = queue.Queue()
        self._waiting: list[Request] = []
        self._running: list[Request] = []  # in slot order: their rows fill the pool's first rows
        self._ids = itertools.count(1)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._relays: dict[int, LoopRelay] = {}  # by id of their asyncio loop
        # The prepared weights, checked against the model at each admission (as the engine checks per session):
        # walking every parameter to check costs as much as a tiny model's decode step, so not per step.
        self._weights = engine.inference_weights()
        # compile: a torch.compile backend ("inductor") for the decode step, one graph per batch bucket built by
        # `warm_up` (see static_step.py); None runs the step eagerly over exactly the running rows.
        self._compiled = None if compile is None else CompiledDecode(engine.model, self.pool, compile)

    # ------------------------------------------------------------------------------------------------------------

    def start(self) -> "Scheduler":
        """Run the loop on a daemon thread (and shorten the process's GIL switch interval until `stop()`, see
        GIL_SWITCH_S)."""
        self._switch_interval = sys.getswitchinterval()
        sys.setswitchinterval(min(self._switch_interval, GIL_SWITCH_S))
        self._thread = threading.Thread(target=self._loop, name="lmforge-scheduler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            sys.setswitchinterval(self._switch_interval)

    @property
    def busy_slots(self) -> int:
        return sum(len(r.rows) for r in self._running)

    def loop_sink(self, loop: Any, deliver: Callable[[Any], None], tag: Any) -> Sink:
        """A sink that hands (tag, kind, payload) to `deliver` on asyncio `loop`'s thread, batched per turn (see
        `LoopRelay`). Call from the loop's thread."""
        relay = self._relays.get(id(loop))
        if relay is None or relay.loop is not loop:
            relay = self._relays[id(loop)] = LoopRelay(loop)

        def sink(kind: str, payload: Any) -> None:
            relay.post(deliver, (tag, kind, payload))
        return sink

    def _flush_relays(self) -> None:
        for key, relay in list(self._relays.items()):
            if not relay.flush():
                self._relays.pop(key, None)

    def submit(self, prompt: list[int], params: SamplingParams, sink: Sink, prefix_len: int = 0,
               top_logprobs: int | None = None, stop_ids: list[int] | None = None) -> Request:
        """Queue a request (token ids); events go to `sink` from the loop's thread. Refuses, with `LmforgeError`,
        what could never run: an empty or too long prompt, more samples than slots, a full queue."""
        vocab, block = self.model.config.vocab_size, self.model.config.block_size
        if not prompt:
            raise LmforgeError("the prompt needs at least one token")
        if any(not 0 <= t < vocab for t in prompt):
            raise LmforgeError(f"prompt token ids must be from 0 to {vocab - 1}")
        if len(prompt) >= block:
            raise LmforgeError(f"the prompt has {len(prompt)} tokens; the model's context is {block}, "
                               "which leaves no room for an answer")
        if params.n > self.pool.slots:
            raise LmforgeError(f"n must be at most {self.pool.slots} (the server's slots)")
        if self._inbox.qsize() + len(self._waiting) + len(self._running) >= self.max_requests:
            raise QueueFull(f"the server is at its limit of {self.max_requests} requests in flight; retry later")
        stops = frozenset(self.engine.default_stop_ids() if stop_ids is None else stop_ids)
        if params.stop_token_ids is not None:
            stops = frozenset(params.stop_token_ids)
        request = Request(next(self._ids), list(prompt), params, sink, stops, min(prefix_len, len(prompt) - 1),
                          top_logprobs, self.device)
        self.metrics.submitted()
        self._inbox.put(request)
        return request

    # ------------------------------------------------------------------------------------------------------------
    # The loop
    # ------------------------------------------------------------------------------------------------------------

    def _loop(self) -> None:
        with torch.inference_mode():
            while not self._stop.is_set():
                self._turn()

    def _turn(self) -> None:
        """One turn of the loop: new requests in, cancelled ones out, admissions, one decode step."""
        self._take_new(block=not self._running and not self._waiting)
        self._drop_cancelled()
        try:
            self._admit_arrivals()
            if self._running:
                self._decode()
        except Exception as e:  # a bug or out of memory: fail the running requests, keep serving
            for r in self._running:
                self._fail(r, f"generation failed: {type(e).__name__}: {e}")
            self._running.clear()
        self._flush_relays()
        self.metrics.gauges(len(self._waiting) + self._inbox.qsize(), self.busy_slots, self.pool.slots)

    def warm_up(self) -> None:
        """Run one short request through prefill and decode on this thread before `start()`, so the first client
        does not pay for first-call allocations; the metrics start afresh after it."""
        if self._compiled is not None:
            with torch.inference_mode():
                self._compiled.warm(self._weights)
        done = threading.Event()
        self.submit([self.engine.tokenizer.bos_id], SamplingParams(temperature=0, max_tokens=2),
                    lambda kind, payload: done.set() if kind in ("done", "error") else None)
        with torch.inference_mode():
            while not done.is_set():
                self._turn()
        self.metrics = Metrics()

    def _take_new(self, block: bool) -> None:
        try:
            if block:
                self._waiting.append(self._inbox.get(timeout=0.05))
            while True:
                self._waiting.append(self._inbox.get_nowait())
        except queue.Empty:
            return

    def _drop_cancelled(self) -> None:
        for r in [r for r in self._waiting if r.cancelled]:
            self._waiting.remove(r)
            self.metrics.finished("cancelled")
        if any(r.cancelled for r in self._running):
            for r in self._running:
                if r.cancelled:
                    self.metrics.finished("cancelled")
            self._running = [r for r in self._running if not r.cancelled]
            self._compact()

    def _compact(self) -> None:
        """Move running rows down so they fill the pool's first rows, in order (each lands at or below its place)."""
        slot = 0
        for r in self._running:
            for row in r.rows:
                if row.slot != slot:
                    self.pool.move(row.slot, slot, row.length)
                    row.slot = slot
                slot += 1

    def _admit_arrivals(self) -> None:
        """Admit what waits, send the first tokens out, and admit again while more requests arrived during that
        prefill and slots are free: a request that arrives while others are prefilled is prefilled next, not after
        a decode step of the running rows (prefill first, as vLLM schedules). Clients of a burst reach the server
        one after another (each parsed on the event loop), so without this each later arrival waited for a decode
        step on top of the prefill before its own. Bounded: at most a pool's worth of requests a turn, so requests
        that finish at their first token (freeing their slots at once) cannot hold the running rows' step back."""
        if not self._waiting:
            return
        # The prepared weights, checked once a turn (the walk over every parameter costs as much as a small step).
        self._weights = self.engine.inference_weights()
        admitted = 0
        while admitted < self.pool.slots and (count := self._admit()):
            admitted += count
            self._flush_relays()  # first tokens out now: a time to first token that waits for no decode step
            self._take_new(block=False)
            self._drop_cancelled()

    def _admit(self) -> int:
        """Admit the waiting requests that fit in the free slots, all of them prefilled by one batched forward (two
        when some prompt's shared prefix is not cached yet), so a burst of clients all get their first token after
        one prefill rather than one after another. Returns how many were admitted."""
        admitted, free = [], self.pool.slots - self.busy_slots
        while self._waiting and self._waiting[0].params.n <= free:
            request = self._waiting.pop(0)
            if not request.cancelled:
                admitted.append(request)
                free -= request.params.n
        if not admitted:
            return 0
        try:
            logits = self._prefill(admitted, self.busy_slots)
        except Exception as e:  # out of memory...: tell these clients, serve the others
            for request in admitted:
                self._fail(request, str(e) if isinstance(e, LmforgeError) else f"{type(e).__name__}: {e}")
            return 0
        logits = logits.float()
        greedy = self._greedy_picks(logits, admitted)  # the joiners' first tokens in one argmax, as a decode step's
        for i, request in enumerate(admitted):
            self._running.append(request)
            n = request.params.n
            picked = None
            if greedy is not None and _plain_greedy(request.params):  # its n samples all take the row's pick
                picked = ([greedy[0][i]] * n, [greedy[1][i]] * n, [greedy[2][i]] * n)
            self._sample(request, logits[i:i + 1].expand(n, -1), picked)
        self._retire()
        return len(admitted)

    def _prefill(self, requests: list[Request], base: int) -> list[torch.Tensor]:
        """Prefill request i's prompt into row base+i (its kept prefix copied from the cache, a new prefix computed
        and kept first), then spread the rows out so each request's n samples get consecutive rows, copies of its
        prefilled row. Returns the logits of each request's last prompt token (requests, V)."""
        kept: dict[tuple[int, ...], tuple[list[torch.Tensor], list[torch.Tensor]] | None] = {}
        for request in requests:
            prefix = tuple(request.prompt[:request.prefix_len])
            if prefix and prefix not in kept:
                kept[prefix] = self.prefixes.get(prefix)
        missing = [prefix for prefix, kv in kept.items() if kv is None]
        if missing:  # computed alone from column 0 (in scratch rows), as a cached prefix once was
            self._forward_rows(base, [(list(prefix), 0) for prefix in missing])
            for row, prefix in enumerate(missing, start=base):
                kept[prefix] = self.pool.read(row, len(prefix))
                self.prefixes.put(prefix, kept[prefix])
        for row, request in enumerate(requests, start=base):
            if request.prefix_len:
                self.pool.load(row, *kept[tuple(request.prompt[:request.prefix_len])])
        logits = self._forward_rows(base, [(r.prompt[r.prefix_len:], r.prefix_len) for r in requests])
        slot = base + sum(r.params.n for r in requests)
        for i in reversed(range(len(requests))):  # each request's rows lie at or after its prefill row
            request = requests[i]
            slot -= request.params.n
            for j in range(request.params.n):
                if slot + j != base + i:
                    self.pool.move(base + i, slot + j, len(request.prompt))
                request.rows.append(_SlotRow(self.engine.new_decoder(), j, slot + j, len(request.prompt),
                                             request.params.max_tokens))
            self._track_penalties(request)
            self.metrics.prompt_tokens(len(request.prompt))
        return logits

    def _track_penalties(self, request: Request) -> None:
        """The seen-token sets and counts that presence/frequency/repetition penalties read, from the prompt on."""
        if request.params.uses_penalties:
            n, vocab = request.params.n, self.model.config.vocab_size
            request.seen = torch.zeros(n, vocab, dtype=torch.bool, device=self.device)
            request.seen[:, torch.tensor(request.prompt, device=self.device)] = True
            request.counts = torch.zeros(n, vocab, device=self.device)

    def _forward_rows(self, first: int, pieces: list[tuple[list[int], int]]) -> torch.Tensor:
        """Run piece r's tokens into row first+r from its start column, in as few forwards as PREFILL_TOKENS and
        the padding rule allow (see `_prefill_groups`). Logits of each piece's last token (rows, V)."""
        out = []
        for lo, hi in self._prefill_groups(pieces):
            group = pieces[lo:hi]
            T = max(len(tokens) for tokens, _ in group)
            ids = torch.tensor([tokens + tokens[-1:] * (T - len(tokens)) for tokens, _ in group], device=self.device)
            starts = [start for _, start in group]
            pos = torch.tensor(starts, device=self.device)[:, None] + torch.arange(T, device=self.device)
            last = torch.tensor([len(tokens) - 1 for tokens, _ in group], device=self.device)
            out.append(self.model.infer(ids, pos, self.pool.view(first + lo, starts, T), self._weights, last=last))
        return torch.cat(out)

    def _prefill_groups(self, pieces: list[tuple[list[int], int]]) -> list[tuple[int, int]]:
        """Split consecutive rows into forwards: a row joins the current one while the padded batch stays within
        PREFILL_TOKENS (a long prompt alone may pass it) and at most twice the real tokens (prompts of very
        different lengths would mostly compute padding), and every row's padded end fits in the context."""
        groups, lo = [], 0
        for hi in range(1, len(pieces) + 1):
            group = pieces[lo:hi]
            T = max(len(tokens) for tokens, _ in group)
            real = sum(len(tokens) for tokens, _ in group)
            fits = max(start for _, start in group) + T <= self.pool.width
            if hi - lo > 1 and not (fits and T * (hi - lo) <= min(PREFILL_TOKENS, 2 * real)):
                groups.append((lo, hi - 1))
                lo = hi - 1
        groups.append((lo, len(pieces)))
        return groups

    def _decode(self) -> None:
        """One step: every running row's last token in, the next one sampled. A finished sample of a request whose
        other samples still run keeps its row (the batch stays one contiguous view) but writes into a column past
        its own tokens, which nothing reads, and does not advance."""
        rows = [row for r in self._running for row in r.rows]
        full = [row for row in rows if row.out.finish_reason is None and row.length >= self.pool.width]
        if full:  # a row that filled the context cannot take its last token: it ends there (OpenAI's "length")
            for r in self._running:
                for row in r.rows:
                    if row in full:
                        r.sink("token", RowEvent(row.index, r._finish(row, "length")))
            self._retire()
            return
        tokens = torch.tensor([[row.pending] for row in rows], device=self.device)
        lengths = [min(row.length, self.pool.width - 1) for row in rows]
        if self._compiled is not None and self._compiled.pays(len(rows)):
            logits = self._compiled(tokens, lengths, self._weights)
        else:
            view = self.pool.view(0, lengths, 1)
            logits = self.model.infer(tokens, view.starts[:, None], view, self._weights)  # positions are the columns
        logits = logits.float()
        for row in rows:
            if row.out.finish_reason is None:
                row.length += 1
        greedy = self._greedy_picks(logits, self._running)
        first = 0
        for r in self._running:
            span = slice(first, first + len(r.rows))
            plain = greedy is not None and _plain_greedy(r.params)
            self._sample(r, logits[span], (greedy[0][span], greedy[1][span], greedy[2][span]) if plain else None)
            first += len(r.rows)
        self._retire()

    def _greedy_picks(self, logits: torch.Tensor,
                      requests: list[Request]) -> tuple[list[int], list[float], list[float]] | None:
        """`sample`'s answer for every row as if greedy without penalties, in one argmax and one log-softmax over
        the whole step (the same row-wise numbers it gives each request alone), or None when none of `requests`
        (whose rows these are) is that plain: at 16 greedy streams this replaces 16 calls and their tensor-to-list
        conversions, in a decode step and in the prefill of 16 joiners alike."""
        if not any(_plain_greedy(r.params) for r in requests):
            return None
        limit = self.engine.vocab_limit
        tokens = (logits if limit is None else logits[:, :limit]).argmax(dim=-1)
        raw = logits.log_softmax(dim=-1).gather(-1, tokens[:, None])[:, 0]
        return tokens.tolist(), [0.0] * len(tokens), raw.tolist()

    def _sample(self, request: Request, logits: torch.Tensor,
                picked: tuple[list[int], list[float], list[float]] | None = None) -> None:
        """Sample the next token of each of a request's rows (or take `picked`, the step's greedy picks of its rows:
        (tokens, log-probs, raw log-probs)) and send the events."""
        params = request.params
        shown = None  # before the penalties' counts take this step's tokens, as `sample` saw them
        if request.top_logprobs is not None:
            shown = next_token_logprobs(logits, params, request.seen, request.counts, self.engine.vocab_limit)
        if picked is None:
            tokens, lps, raw = sample(logits, params, request.generator, request.seen, request.counts,
                                      self.engine.vocab_limit)
            if request.counts is not None:
                idx = torch.arange(len(request.rows), device=self.device)
                request.seen[idx, tokens] = True
                request.counts[idx, tokens] += 1
            picked = (tokens.tolist(), lps.tolist(), raw.tolist())
        if request.first_token_at is None:
            request.first_token_at = time.monotonic()
            self.metrics.first_token(request.first_token_at - request.submitted)
        sent = 0
        for i, (row, t, lp, rl) in enumerate(zip(request.rows, *picked)):
            if row.out.finish_reason is not None:
                continue
            sent += 1
            event = RowEvent(row.index, request._accept(row, t, lp, rl))
            if shown is not None:
                values, ids = torch.topk(shown[i], min(max(request.top_logprobs, 1), shown.size(-1)))
                event.top = [(int(k), float(v)) for v, k in zip(values, ids) if v > float("-inf")]
                event.logprob = float(shown[i, t])
            request.sink("token", event)
        if sent:
            self.metrics.generated(sent)

    def _retire(self) -> None:
        """Remove requests whose rows all finished, tell their callers, and close the gaps they leave."""
        done = [r for r in self._running if r.finished]
        if not done:
            return
        # Out of the in-flight count before their clients hear of it: a client that sends its next request the
        # moment one ends must not find the server still counting the old one (a spurious 429 at the limit).
        self._running = [r for r in self._running if not r.finished]
        self._compact()
        for r in done:
            tokens = sum(len(row.out.token_ids) for row in r.rows)
            r.sink("done", Usage(len(r.prompt), tokens))
            self.metrics.finished("ok")

    def _fail(self, request: Request, message: str) -> None:
        request.sink("error", message)
        self.metrics.finished("error")

"""The inference engine: prefill a prompt into the KV cache, then decode one token at a time, sampling each.

"Deep Dive into LLMs": inference takes a prefix, computes the distribution of the next token, samples one, appends
it, and repeats until a stop condition. This file is that loop, made fast and usable:

- `Engine.session(prompts, params)` opens a `GenerationSession`, the stateful API everything else builds on.
  Its rows are the prompts (times `params.n` samples each) decoding together in one batch. Prompts of different
  lengths are left-padded; padding slots are marked in `KVCache.valid` and each row has its own positions, so
  every row computes exactly what it would alone. `step()` samples one token for every running row;
  `stream()` yields text pieces of one row; `append(ids)` pushes forced tokens (a tool's output, the next user
  turn) into the cache without sampling them, after which decoding continues. That is how the chat engine runs
  tools: stop at `<|tool_call_end|>`, run the tool, append `<|tool_output|>...<|tool_output_end|>`, continue.
  `queue_forced(ids)` does the same lazily for a batch where only some rows get tokens (RL rollouts' tool calls):
  one queued token a step per row, inside the decode forward the other rows run anyway.
- `Engine.generate(prompts, params)` runs sessions to completion: token ids, text, and for every sampled token its
  log-prob under the sampling distribution actually used and its raw model log-prob (RL needs both). Its finished
  rows leave the batch (`release_finished`), so a tail of a few long completions runs at a few rows' cost.
- `Engine.stream(prompt, params)` yields the text of one completion as it is produced; text only ever leaves in
  whole UTF-8 characters (the tokenizer's incremental decoder holds back partial bytes).

The engine holds no model code: every forward is `GPT.infer` from `lmforge/model.py`, over the model's
`InferenceWeights` (fused and re-laid-out weights for speed, rebuilt when the parameters change), with caches
preallocated, the attention mask built once per forward (`KVCache.mask`; none while no slot is padding), only the
last position through the output head, and everything under `torch.inference_mode`.
On CUDA (bf16 by default) the decode step runs with static shapes (the whole cache, allocated at the model's full
context so that no request's length changes a shape, the new slot written with `index_copy_`), compiled once per
model and batch size with `torch.compile(mode="reduce-overhead", dynamic=False)` into a CUDA graph; the same
static step runs (uncompiled, or compiled with a CPU backend) in the CPU tests, so the compiled path computes what
was tested.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import torch

from lmforge.inference.sampling import SamplingParams, next_token_logprobs, sample
from lmforge.model import GPT, InferenceWeights, KVCache, weights_key
from lmforge.utils import LmforgeError


@dataclass
class TokenEvent:
    """What one `step()` produced for one row."""

    token_id: int
    text: str  # new text that is safe to show (whole characters, not part of a possible stop string)
    logprob: float  # log-prob under the sampling distribution used (0.0 for greedy: a point mass)
    raw_logprob: float  # log-prob under the model's raw distribution (no penalties, temperature or filters)
    finish_reason: str | None  # None while running; "stop" (end token or stop string), "length", "context"


@dataclass
class Completion:
    """One row's output since the session started or since its last `append` (a "segment")."""

    token_ids: list[int] = field(default_factory=list)  # every sampled token, the end token included
    text: str = ""  # decoded text, without end tokens and cut before a stop string
    logprobs: list[float] = field(default_factory=list)
    raw_logprobs: list[float] = field(default_factory=list)
    finish_reason: str | None = None


class _Row:
    """Per-row bookkeeping of a session: the current segment, its text decoder and stop-string scan."""

    def __init__(self, decoder: Any) -> None:
        self.out = Completion()
        self.decoder = decoder
        self.emitted = 0  # characters of out.text that are final (safe to show)
        self.streamed = 0  # characters of out.text that stream() has yielded
        self.pending: int | None = None  # last sampled token, not yet fed into the cache
        self.forced: list[int] = []  # queued forced tokens (`queue_forced`), fed one per step, next one last
        self.budget = 0


class GenerationSession:
    """A batch of rows decoding together over one KV cache. Create with `Engine.session`.

    Row r is sample r % n of prompt r // n. The session is lazy: a sampled token enters the cache at the next
    `step()` or `append()`, so a row that stopped costs nothing more, and `append` after a stop feeds the stop
    token itself first (a continued chat keeps its `<|end|>` or `<|tool_call_end|>` in context).

    release_finished: a row that has finished when `step()` is called is final (nothing will be appended to it),
    so its cache may go. Each forward runs over every row of the cache, finished or not, and costs about in
    proportion to the rows (tiny preset, CPU: 26 ms a step at 64 rows, 9 ms at 16, 3 ms at 1); once a quarter of
    the rows are finished the cache keeps only the running ones, so a batch's tail of a few long responses runs
    at a few rows' cost. Off by default (a chat may continue a finished row); not with static decode steps (each
    batch size would be another CUDA graph). Row indices seen by the caller never change.
    """

    @torch.inference_mode()
    def __init__(self, engine: "Engine", prompts: list[list[int]], params: SamplingParams, max_len: int,
                 release_finished: bool = False) -> None:
        if not prompts or any(len(p) == 0 for p in prompts):
            raise LmforgeError("every prompt needs at least one token (start it with <|bos|>)")
        vocab = engine.model.config.vocab_size
        bad = [t for p in prompts for t in p if not 0 <= t < vocab]
        if bad:
            raise LmforgeError(f"prompt token id {bad[0]} is outside the model's vocabulary (0..{vocab - 1})")
        longest = max(len(p) for p in prompts)
        if longest >= max_len:
            raise LmforgeError(f"prompt of {longest} tokens leaves no room in a context of {max_len}; shorten it")
        self.engine, self.params = engine, params
        model = engine.model
        self.device = next(model.parameters()).device
        self.stop_ids = frozenset(engine.default_stop_ids() if params.stop_token_ids is None else params.stop_token_ids)
        if params.stop and engine.tokenizer is None:
            raise LmforgeError("stop strings need a tokenizer to decode text")
        self.generator = torch.Generator(device=self.device)
        if params.seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(params.seed)
        self.max_len = max_len  # slots this session may fill
        # The static step's cache always spans the whole context, so no request's length changes its shapes; the
        # dynamic one starts at the length the session expects and grows when a row needs more (`_feed`).
        capacity = model.config.block_size if engine.static_decode else min(max_len, longest + params.max_tokens)
        self.cache = KVCache(model.config, len(prompts), capacity, device=self.device, dtype=engine.dtype)
        self.batch = len(prompts)
        self.pos = torch.zeros(self.batch, dtype=torch.long, device=self.device)  # next position of each row
        self.logits = torch.zeros(self.batch, model.config.vocab_size, device=self.device)
        self.weights = engine.inference_weights()
        self.held = list(range(self.batch))  # the rows the cache (and logits, positions, penalties) holds, in order
        self._feed([list(p) for p in prompts])
        n = params.n
        if n > 1:  # one prefill per prompt, then each prompt's cache is copied for its n samples
            self.cache.repeat_rows(n, zero_rest=engine.static_decode)
            self.pos, self.logits = self.pos.repeat_interleave(n, 0), self.logits.repeat_interleave(n, 0)
            self.batch *= n
        self.rows = [_Row(engine.new_decoder()) for _ in range(self.batch)]
        self.release = release_finished and not engine.static_decode
        self.held = list(range(self.batch))
        for row in self.rows:
            row.budget = params.max_tokens
        self.seen: torch.Tensor | None = None
        self.counts: torch.Tensor | None = None
        if params.uses_penalties:
            vocab = model.config.vocab_size
            self.seen = torch.zeros(self.batch, vocab, dtype=torch.bool, device=self.device)
            for r in range(self.batch):
                self.seen[r, torch.tensor(prompts[r // n], device=self.device)] = True
            self.counts = torch.zeros(self.batch, vocab, device=self.device)
        self._static_slot: torch.Tensor | None = None
        if engine.static_decode and self.device.type == "cuda":
            for t in (*self.cache.k, *self.cache.v):  # CUDA graphs write into these buffers in place
                torch._dynamo.mark_static_address(t)

    # --------------------------------------------------------------------------------------------------------
    # Public API
    # --------------------------------------------------------------------------------------------------------

    @property
    def done(self) -> bool:
        return all(r.out.finish_reason is not None for r in self.rows)

    def completions(self) -> list[Completion]:
        """Each row's current segment (ids, text, log-probs, finish reason)."""
        return [r.out for r in self.rows]

    @torch.inference_mode()
    def step(self) -> list[TokenEvent | None]:
        """Sample one token for every running row; None for rows that have finished and for rows still feeding
        tokens queued by `queue_forced` (they sample once their last queued token is in the cache)."""
        active = [r.out.finish_reason is None for r in self.rows]
        if not any(active):
            return [None] * self.batch
        if self.release:
            self._release_finished(active)
        if not self._advance(active):  # context full: nothing more can be fed
            return [self._finish(r, "context") if a else None for r, a in zip(self.rows, active)]
        active = [a and not r.forced for r, a in zip(self.rows, active)]
        if not any(active):
            return [None] * self.batch
        # Only the rows that sample now go through sampling; held rows that feed queued tokens or have finished cost
        # only their draws of noise (a quarter of the SFT model's rollout row-steps).
        at = [k for k, i in enumerate(self.held) if active[i]]
        picked = None if len(at) == len(self.held) else torch.tensor(at, device=self.device)
        tokens, lps, raw = sample(self.logits, self.params, self.generator, self.seen, self.counts,
                                  self.engine.vocab_limit, picked)
        if self.seen is not None and self.counts is not None:
            where = torch.arange(len(self.held), device=self.device) if picked is None else picked
            self.seen[where, tokens] = True
            self.counts[where, tokens] += 1
        events: list[TokenEvent | None] = [None] * self.batch
        for k, t, lp, rl in zip(at, tokens.tolist(), lps.tolist(), raw.tolist()):
            i = self.held[k]
            events[i] = self._accept(self.rows[i], t, lp, rl)
        return events

    @torch.inference_mode()
    def top_candidates(self, k: int = 5, row: int = 0) -> list[tuple[int, float]]:
        """The k most likely next tokens of a running row and their probabilities under the distribution the next
        `step()` draws from (for greedy: the model's, after penalties). Empty once the row has finished."""
        active = [r.out.finish_reason is None for r in self.rows]
        if not active[row] or not self._advance(active) or self.rows[row].forced:
            return []
        at = self.held.index(row)
        logprobs = next_token_logprobs(self.logits[at:at + 1], self.params,
                                       None if self.seen is None else self.seen[at:at + 1],
                                       None if self.counts is None else self.counts[at:at + 1],
                                       self.engine.vocab_limit)[0]
        values, ids = torch.topk(logprobs, min(k, logprobs.numel()))
        return [(int(i), float(v.exp())) for v, i in zip(values, ids) if v > float("-inf")]

    def stream(self, row: int = 0) -> Iterator[str]:
        """Text pieces of one row as they are produced, until it finishes (other rows advance alongside). Text
        the row produced while other code stepped the session comes first, so nothing is lost between calls."""
        r = self.rows[row]
        while True:
            if r.streamed < r.emitted:
                piece, r.streamed = r.out.text[r.streamed:r.emitted], r.emitted
                yield piece
            if r.out.finish_reason is not None:
                return
            self.step()

    def run(self) -> list[Completion]:
        """Step until every row has finished; return their completions."""
        while not self.done:
            self.step()
        return self.completions()

    @torch.inference_mode()
    def append(self, ids: Sequence[int] | Sequence[Sequence[int]]) -> None:
        """Push forced tokens into the cache without sampling them, then let the rows that got tokens continue.

        `ids` is one list for every row, or one list per row (rows given [] are left as they are). A row given
        tokens starts a new segment: fresh text, log-probs and token budget. Its pending sampled token (for example
        the `<|tool_call_end|>` it stopped on) is fed first.
        """
        per_row = self._per_row(ids)
        if not per_row:
            return
        feeds = [([r.pending] if r.pending is not None and extra else []) + extra for r, extra in zip(self.rows, per_row)]
        need = max(len(f) for f in feeds)
        if need == 0:
            return
        if self.cache.length + need > self.max_len:
            raise LmforgeError(f"appending {need} tokens overflows the context ({self.cache.length} of "
                               f"{self.max_len} slots used)")
        self._feed(feeds)
        self._new_segments(per_row)

    @torch.inference_mode()
    def queue_forced(self, ids: Sequence[Sequence[int]]) -> None:
        """Like `append` with one list per row, but lazy: each row's forced tokens enter the cache one per `step()`,
        in the same one-token forward as the other rows' decoding, and the row samples again after its last one.

        `append` runs one forward over every row as long as the longest list, and every row's cache grows by that
        many slots, mostly padding; when only a few rows get tokens (a tool's output in RL rollouts) that costs far
        more than the tokens themselves. Queued tokens cost one slot of a decode step each. A row that runs out of
        context while feeding finishes with "context".
        """
        per_row = self._per_row(ids)
        for r, extra in zip(self.rows, per_row):
            if extra:
                r.forced = r.forced + ([r.pending] if r.pending is not None else []) + extra
        self._new_segments(per_row)

    # --------------------------------------------------------------------------------------------------------
    # Internals
    # --------------------------------------------------------------------------------------------------------

    def _per_row(self, ids: Sequence[int] | Sequence[Sequence[int]]) -> list[list[int]]:
        """`ids` as one checked list per row ([] when nothing is given)."""
        if len(ids) == 0:
            return []
        if not isinstance(ids[0], (list, tuple)):
            per_row = [list(ids)] * self.batch
        else:
            per_row = [list(x) for x in ids]
        if len(per_row) != self.batch:
            raise LmforgeError(f"append got {len(per_row)} token lists for a session of {self.batch} rows")
        vocab = self.engine.model.config.vocab_size
        bad = [t for extra in per_row for t in extra if not 0 <= t < vocab]
        if bad:
            raise LmforgeError(f"appended token id {bad[0]} is outside the model's vocabulary (0..{vocab - 1})")
        held = set(self.held)
        gone = [i for i, extra in enumerate(per_row) if extra and i not in held]
        if gone:
            raise LmforgeError(f"row {gone[0]} has finished and was released (release_finished): nothing can follow")
        return per_row

    def _new_segments(self, per_row: list[list[int]]) -> None:
        """Rows given forced tokens start a new segment: fresh text, log-probs, decoder and token budget."""
        for i, (r, extra) in enumerate(zip(self.rows, per_row)):
            if extra and self.seen is not None:  # forced tokens are context, like the prompt
                self.seen[self.held.index(i), torch.tensor(extra, device=self.device)] = True
            if extra:
                r.pending = None
                r.out, r.emitted, r.streamed, r.budget = Completion(), 0, 0, self.params.max_tokens
                r.decoder = self.engine.new_decoder()

    def _advance(self, active: list[bool]) -> bool:
        """Feed the pending sampled token (or the next queued forced token) of every active row, so `self.logits`
        is current; False if the cache is full and a token is waiting."""
        running = [r for r, a in zip(self.rows, active) if a]
        # Queued tokens go one a step beside rows that sample; once every running row is feeding queued tokens
        # (say one row's tool output in the batch's tail) there is no decode to share: all of them in one forward.
        take = max(len(r.forced) for r in running) if all(r.forced for r in running) else 1
        feeds = [(r.forced[:take] if r.forced else [r.pending] if r.pending is not None else []) if a else []
                 for r, a in zip(self.rows, active)]
        if not any(feeds):
            return True
        if self.cache.length + max(len(f) for f in feeds) > self.max_len:
            return False
        self._feed(feeds)
        for r, f in zip(self.rows, feeds):
            if f and r.forced:
                del r.forced[:take]
            elif f:
                r.pending = None
        return True

    def _release_finished(self, running: list[bool]) -> None:
        """Keep only the running rows in the cache once a quarter of the rows it holds have finished."""
        keep = [at for at, i in enumerate(self.held) if running[i]]
        if len(keep) > 0.75 * len(self.held):
            return
        idx = torch.tensor(keep, device=self.device)
        self.cache.keep_rows(idx)
        self.pos, self.logits = self.pos[idx], self.logits[idx]
        if self.seen is not None and self.counts is not None:
            self.seen, self.counts = self.seen[idx], self.counts[idx]
        self.held = [self.held[at] for at in keep]

    def _accept(self, row: _Row, token: int, lp: float, raw: float) -> TokenEvent:
        out = row.out
        out.token_ids.append(token)
        out.logprobs.append(lp)
        out.raw_logprobs.append(raw)
        row.pending = token
        row.budget -= 1
        if token in self.stop_ids:
            out.finish_reason = "stop"
        elif row.decoder is not None:
            out.text += row.decoder.feed(token)
        cut = self._scan_stop(out.text, row.emitted)
        if cut is not None:
            out.text, out.finish_reason = out.text[:cut], "stop"
        if out.finish_reason is None and row.budget <= 0:
            out.finish_reason = "length"
        if out.finish_reason is not None and cut is None and row.decoder is not None:
            out.text += row.decoder.flush()  # bytes of an unfinished character, shown as U+FFFD
        if out.finish_reason is None:
            safe = len(out.text) - self._held_back(out.text)
        else:
            safe = len(out.text)
        text, row.emitted = out.text[row.emitted:safe], max(row.emitted, safe)
        return TokenEvent(token, text, lp, raw, out.finish_reason)

    def _finish(self, row: _Row, reason: str) -> TokenEvent:
        row.out.finish_reason = reason
        if row.decoder is not None:
            row.out.text += row.decoder.flush()
        text, row.emitted = row.out.text[row.emitted:], len(row.out.text)
        return TokenEvent(-1, text, 0.0, 0.0, reason)

    def _scan_stop(self, text: str, emitted: int) -> int | None:
        """Index where the earliest stop string starts in text (searching only where a new one can be), or None."""
        hits = []
        for s in self.params.stop:
            i = text.find(s, max(0, emitted - len(s) + 1))
            if i >= 0:
                hits.append(i)
        return min(hits) if hits else None

    def _held_back(self, text: str) -> int:
        """Characters at the end of text that could be the start of a stop string, so must not be shown yet."""
        hold = 0
        for s in self.params.stop:
            for k in range(min(len(s) - 1, len(text)), hold, -1):
                if text.endswith(s[:k]):
                    hold = k
                    break
        return hold

    def _feed(self, feeds: list[list[int]]) -> None:
        """Run the model over each row's new tokens (ragged: left-padded with invalid slots) and keep the logits of
        each row's last new token. `feeds` has one list per row of the session; only the held rows are run."""
        if len(self.held) != len(feeds):
            feeds = [feeds[i] for i in self.held]
        T = max(len(f) for f in feeds)
        cache, model = self.cache, self.engine.model
        if cache.length + T > cache.max_len:  # callers check self.max_len; the cache may still be smaller
            cache.grow(min(self.max_len, max(cache.length + T, 2 * cache.max_len)))
        if T == 1 and all(feeds):  # the decode step: one token per row, no padding to mark
            tokens = torch.tensor(feeds, device=self.device)
            pos_ids = self.pos[:, None]
            if self.engine.static_decode:
                # a copy: a replayed CUDA graph overwrites its output buffer at the next step
                self.logits = self._decode_static(tokens, pos_ids).to(torch.float32, copy=True)
            else:
                self.logits = model.infer(tokens, pos_ids, cache, self.weights).float()
            cache.length += 1
            self.pos += 1
            return
        lengths = torch.tensor([len(f) for f in feeds], device=self.device)
        tokens = torch.tensor([[0] * (T - len(f)) + f for f in feeds], device=self.device)
        offsets = torch.arange(T, device=self.device)[None] - (T - lengths)[:, None]  # < 0 on padding
        # Positions: a row's next position plus its offset; padding borrows a valid position it never uses.
        pos_ids = self.pos[:, None] + offsets.clamp(min=0)
        if bool((lengths != T).any()):  # slots start out valid; only padding needs marking
            cache.mark_padding(offsets >= 0)
        logits = model.infer(tokens, pos_ids, cache, self.weights)
        cache.length += T
        fed = lengths > 0
        self.logits = torch.where(fed[:, None], logits.float(), self.logits)
        self.pos = self.pos + lengths

    def _decode_static(self, tokens: torch.Tensor, pos_ids: torch.Tensor) -> torch.Tensor:
        """One decode step with static shapes (whole cache, slot as a tensor) for CUDA graphs."""
        if self._static_slot is None:
            self._static_slot = torch.zeros(1, dtype=torch.long, device=self.device)
        self._static_slot.fill_(self.cache.length)
        return self.engine.decode_step(tokens, pos_ids, self.cache, self.weights, self._static_slot)


def cast_for_inference(model: GPT, device: str, dtype: str | None) -> GPT:
    """The model on `device` in `dtype` ("float32" | "bfloat16" | "float16"; default bf16 on CUDA, fp32 on CPU,
    where bf16 is about 3x slower on the reference CPU), its RoPE tables kept fp32: positions need the precision."""
    name = dtype or ("bfloat16" if torch.device(device).type == "cuda" else "float32")
    if name not in ("float32", "bfloat16", "float16"):
        raise LmforgeError(f"dtype must be float32, bfloat16 or float16, got {name!r}")
    model = model.to(device=device, dtype=getattr(torch, name))
    if model.config.pos == "rope":
        model.rope_cos, model.rope_sin = model.rope_cos.float(), model.rope_sin.float()
    return model


class Engine:
    """A model (and optionally its tokenizer) ready to generate. Build with `Engine(model, tok)` or
    `Engine.from_checkpoint(path)`.

    compile: run decode steps with static shapes (see the module docstring); on CUDA they are also compiled with
    `torch.compile(mode="reduce-overhead")` (CUDA graphs). Default: on for CUDA, off on CPU, where the dynamic step
    is faster; True on CPU runs the static step uncompiled, which is how the tests check it.
    backend: compile the static step with this torch.compile backend instead (on any device; "eager" or
    "aot_eager" check on CPU what compilation does to the step). Compiled steps of all engines share dynamo's cache
    of `GPT.infer`: one graph per model and batch size, whichever engine asked first.
    """

    def __init__(self, model: GPT, tokenizer: Any = None, compile: bool | None = None,
                 backend: str | Callable | None = None) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        param = next(model.parameters())
        self.dtype = param.dtype
        cuda = param.device.type == "cuda"
        self.static_decode = cuda if compile is None else compile
        # A model vocabulary padded past the tokenizer's (e.g. to a multiple of 64) has ids that decode to nothing.
        tok_vocab = getattr(tokenizer, "vocab_size", None)
        self.vocab_limit = tok_vocab if tok_vocab is not None and tok_vocab < model.config.vocab_size else None
        self._weights: InferenceWeights | None = None
        self.decode_step: Callable[..., torch.Tensor] = model.infer
        if self.static_decode and (cuda or backend is not None):
            # One compilation per model and batch size, never per request: dynamic=False keeps every int (head
            # counts, batch, cache length) a constant of the graph, instead of symbols that automatic dynamic
            # shapes would introduce at the first recompile (a second model or batch size).
            options = {"backend": backend} if backend is not None else {"mode": "reduce-overhead"}
            self.decode_step = torch.compile(model.infer, fullgraph=True, dynamic=False, **options)

    @classmethod
    def from_checkpoint(cls, path: str, device: str = "cpu", dtype: str | None = None,
                        compile: bool | None = None) -> "Engine":
        """Load a checkpoint (run folder or checkpoint folder) with its tokenizer, cast by `cast_for_inference`."""
        from lmforge.checkpoint import checkpoint_tokenizer_dir, load_model
        from lmforge.tokenizer import Tokenizer

        model, ckpt = load_model(path, device=device)
        return cls(cast_for_inference(model, device, dtype), Tokenizer.load(checkpoint_tokenizer_dir(ckpt)),
                   compile=compile)

    # --------------------------------------------------------------------------------------------------------

    def inference_weights(self) -> InferenceWeights:
        """The model's prepared weights, built again when any parameter changed (a new tensor or an in-place update,
        as after an RL step), so a session always runs current weights."""
        if self._weights is None or self._weights.key != weights_key(self.model):
            self._weights = InferenceWeights(self.model)
        return self._weights

    def default_stop_ids(self) -> list[int]:
        """A chat turn ends with `<|end|>`; a base model starts a new document with `<|bos|>`: both end a text."""
        if self.tokenizer is None:
            return []
        return [self.tokenizer.end_id, self.tokenizer.bos_id]

    def new_decoder(self) -> Any:
        """A fresh streaming decoder (`.feed(id)` -> new whole characters, `.flush()`), or None without a tokenizer."""
        return None if self.tokenizer is None else self.tokenizer.decoder()

    def encode_prompt(self, text: str) -> list[int]:
        """Token ids of a plain-text prompt for a base model: `<|bos|>` first, as every pretraining document."""
        if self.tokenizer is None:
            raise LmforgeError("this engine has no tokenizer: pass token ids")
        return [self.tokenizer.bos_id] + list(self.tokenizer.encode(text))

    def _prompt_ids(self, prompt: str | Sequence[int]) -> list[int]:
        return self.encode_prompt(prompt) if isinstance(prompt, str) else [int(t) for t in prompt]

    def session(self, prompts: str | Sequence[int] | Sequence[str | Sequence[int]], params: SamplingParams | None = None,
                max_len: int | None = None, release_finished: bool = False) -> GenerationSession:
        """Open a session over one prompt or a list of prompts (text or token ids); prefill happens here.

        max_len: cache slots (prompt + everything generated or appended); default the model's context.
        release_finished: see `GenerationSession` (finished rows are final and leave the batch).
        """
        if isinstance(prompts, str) or (len(prompts) and isinstance(prompts[0], int)):
            prompts = [prompts]  # type: ignore[list-item]
        ids = [self._prompt_ids(p) for p in prompts]  # type: ignore[union-attr]
        block = self.model.config.block_size
        return GenerationSession(self, ids, params or SamplingParams(), min(max_len or block, block),
                                 release_finished)

    def generate(self, prompts: str | Sequence[int] | Sequence[str | Sequence[int]],
                 params: SamplingParams | None = None) -> list[list[Completion]]:
        """Complete every prompt `params.n` times in one batch; returns [prompt][sample] completions."""
        params = params or SamplingParams()
        if isinstance(prompts, str) or (len(prompts) and isinstance(prompts[0], int)):
            prompts = [prompts]  # type: ignore[list-item]
        ids = [self._prompt_ids(p) for p in prompts]  # type: ignore[union-attr]
        block = self.model.config.block_size
        max_len = min(block, max(len(p) for p in ids) + params.max_tokens)
        done = GenerationSession(self, ids, params, max_len, release_finished=True).run()
        n = params.n
        return [done[i * n:(i + 1) * n] for i in range(len(ids))]

    def stream(self, prompt: str | Sequence[int], params: SamplingParams | None = None) -> Iterator[str]:
        """Text of one completion, piece by piece as it is sampled."""
        params = params or SamplingParams()
        if params.n != 1:
            raise LmforgeError("stream() produces one completion; use n=1 (or a session for several)")
        ids = self._prompt_ids(prompt)
        max_len = min(self.model.config.block_size, len(ids) + params.max_tokens)
        yield from GenerationSession(self, [ids], params, max_len).stream(0)

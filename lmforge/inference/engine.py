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
- `Engine.generate(prompts, params)` runs sessions to completion: token ids, text, and for every sampled token its
  log-prob under the sampling distribution actually used and its raw model log-prob (RL needs both).
- `Engine.stream(prompt, params)` yields the text of one completion as it is produced; text only ever leaves in
  whole UTF-8 characters (the tokenizer's incremental decoder holds back partial bytes).

Speed (CPU decode of small models is bound by per-operation overhead, not FLOPs): the engine runs the model's own
modules but its own layer loop, so the attention mask is built once per forward instead of once per layer, and not
at all while no slot of the cache is padding (one query position sees every earlier slot); only the last
position goes through the output head; caches are preallocated; norms and MLPs are direct functional calls, and
small models run Q/K/V and gate/up as one matmul each (`Engine.layer_plan`); residual adds ride in the output
projections' `addmm`, RoPE is three operations on a precomputed [cos | signed sin] table, and the hidden state stays
2-D (B*T, C); everything runs under `torch.inference_mode`. Measured by `benchmarks/bench_inference.py` against
transformers' `generate`: the addmm/RoPE/table changes and the cheaper raw log-prob in `sampling.sample` took the
tiny preset's batch-8 decode from 1.55x to 1.67x transformers' speed (1 thread, same run each); routing each
matmul by shape and batch (`_Linear`) took the 17M shape from 1.20x/1.27x to 1.73x/1.78x (batch 1/8).
On CUDA (bf16 by default) the decode step can run with static shapes (the whole preallocated cache with a mask,
the new slot written with `index_copy_`) so `torch.compile(mode="reduce-overhead")` captures it in a CUDA graph;
the same static step runs (uncompiled) in the CPU tests, so the compiled path computes what was tested.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Any, Iterator, Sequence

import torch
import torch.nn.functional as F

from lmforge.inference.sampling import SamplingParams, next_token_logprobs, sample
from lmforge.model import GPT, KVCache, RMSNorm, apply_rope
from lmforge.utils import LmforgeError

END_TOKENS = ("<|end|>", "<|bos|>")  # a chat turn ends with <|end|>; a base model starts a new document with <|bos|>
FUSE_MAX_BYTES = 512 << 20  # models whose layers hold at most this much get fused and re-laid-out weight copies


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
        self.budget = 0


class GenerationSession:
    """A batch of rows decoding together over one KV cache. Create with `Engine.session`.

    Row r is sample r % n of prompt r // n. The session is lazy: a sampled token enters the cache at the next
    `step()` or `append()`, so a row that stopped costs nothing more, and `append` after a stop feeds the stop
    token itself first (a continued chat keeps its `<|end|>` or `<|tool_call_end|>` in context).
    """

    @torch.inference_mode()
    def __init__(self, engine: "Engine", prompts: list[list[int]], params: SamplingParams, max_len: int) -> None:
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
        self.cache = KVCache(model.config, len(prompts), max_len, device=self.device, dtype=engine.dtype)
        self.batch = len(prompts)
        self.pos = torch.zeros(self.batch, dtype=torch.long, device=self.device)  # next position of each row
        self.holes = False  # whether any cache slot so far is padding (then attention needs a mask)
        self.logits = torch.zeros(self.batch, model.config.vocab_size, device=self.device)
        self.plan = engine.layer_plan()
        self._feed([list(p) for p in prompts])
        n = params.n
        if n > 1:  # one prefill per prompt, then each prompt's cache is copied for its n samples
            self.cache.k = [k.repeat_interleave(n, 0) for k in self.cache.k]
            self.cache.v = [v.repeat_interleave(n, 0) for v in self.cache.v]
            self.cache.valid = self.cache.valid.repeat_interleave(n, 0)
            self.pos, self.logits = self.pos.repeat_interleave(n, 0), self.logits.repeat_interleave(n, 0)
            self.batch *= n
        self.rows = [_Row(engine.new_decoder()) for _ in range(self.batch)]
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
        """Sample one token for every running row; None for rows that have finished."""
        active = [r.out.finish_reason is None for r in self.rows]
        if not any(active):
            return [None] * self.batch
        if not self._advance(active):  # context full: nothing more can be fed
            return [self._finish(r, "context") if a else None for r, a in zip(self.rows, active)]
        tokens, lps, raw = sample(self.logits, self.params, self.generator, self.seen, self.counts,
                                  self.engine.vocab_limit)
        if self.counts is not None:
            live = torch.tensor(active, device=self.device)
            idx = torch.arange(self.batch, device=self.device)
            self.seen[idx[live], tokens[live]] = True
            self.counts[idx[live], tokens[live]] += 1
        events: list[TokenEvent | None] = []
        for row, a, t, lp, rl in zip(self.rows, active, tokens.tolist(), lps.tolist(), raw.tolist()):
            events.append(self._accept(row, t, lp, rl) if a else None)
        return events

    @torch.inference_mode()
    def top_candidates(self, k: int = 5, row: int = 0) -> list[tuple[int, float]]:
        """The k most likely next tokens of a running row and their probabilities under the distribution the next
        `step()` draws from (for greedy: the model's, after penalties). Empty once the row has finished."""
        active = [r.out.finish_reason is None for r in self.rows]
        if not active[row] or not self._advance(active):
            return []
        logprobs = next_token_logprobs(self.logits[row:row + 1], self.params,
                                       None if self.seen is None else self.seen[row:row + 1],
                                       None if self.counts is None else self.counts[row:row + 1],
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
        if len(ids) == 0:
            return
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
        feeds = [([r.pending] if r.pending is not None and extra else []) + extra for r, extra in zip(self.rows, per_row)]
        need = max(len(f) for f in feeds)
        if need == 0:
            return
        if self.cache.length + need > self.cache.max_len:
            raise LmforgeError(f"appending {need} tokens overflows the context ({self.cache.length} of "
                               f"{self.cache.max_len} slots used)")
        self._feed(feeds)
        for i, (r, extra) in enumerate(zip(self.rows, per_row)):
            if extra and self.seen is not None:  # forced tokens are context, like the prompt
                self.seen[i, torch.tensor(extra, device=self.device)] = True
            if extra:
                r.pending = None
                r.out, r.emitted, r.streamed, r.budget = Completion(), 0, 0, self.params.max_tokens
                r.decoder = self.engine.new_decoder()

    # --------------------------------------------------------------------------------------------------------
    # Internals
    # --------------------------------------------------------------------------------------------------------

    def _advance(self, active: list[bool]) -> bool:
        """Feed the pending sampled token of every active row, so `self.logits` is current; False if the cache is
        full and a token is waiting."""
        feeds = [[r.pending] if a and r.pending is not None else [] for r, a in zip(self.rows, active)]
        if not any(feeds):
            return True
        if self.cache.length >= self.cache.max_len:
            return False
        self._feed(feeds)
        for r, f in zip(self.rows, feeds):
            if f:
                r.pending = None
        return True

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
        each row's last new token."""
        T = max(len(f) for f in feeds)
        cache = self.cache
        s = cache.length
        if T == 1 and all(feeds):  # the decode step: one token per row, no padding to mark
            tokens = torch.tensor(feeds, device=self.device)
            pos_ids = self.pos[:, None]
            if self.engine.static_decode:
                # a copy: a replayed CUDA graph overwrites its output buffer at the next step
                self.logits = self._decode_static(tokens, pos_ids).to(torch.float32, copy=True)
            else:
                self.logits = self.engine.forward(tokens, pos_ids, cache, self._mask(1), self.plan).float()
            cache.length += 1
            self.pos += 1
            return
        lengths = torch.tensor([len(f) for f in feeds], device=self.device)
        tokens = torch.tensor([[0] * (T - len(f)) + f for f in feeds], device=self.device)
        ragged = bool((lengths != T).any())
        offsets = torch.arange(T, device=self.device)[None] - (T - lengths)[:, None]  # < 0 on padding
        real = offsets >= 0
        # Positions: a row's next position plus its offset; padding borrows a valid position it never uses.
        pos_ids = self.pos[:, None] + offsets.clamp(min=0)
        if ragged:  # slots start out valid; only padding needs marking
            cache.valid[:, s:s + T] = real
            self.holes = True
        logits = self.engine.forward(tokens, pos_ids, cache, self._mask(T) if self.holes or s > 0 else None,
                                     self.plan)
        cache.length += T
        fed = lengths > 0
        self.logits = torch.where(fed[:, None], logits.float(), self.logits)
        self.pos = self.pos + lengths

    def _mask(self, T: int) -> torch.Tensor | None:
        """Attention mask (B, 1, T, s+T) for T new slots after s cached ones; None when plain attention to every
        cached slot is right (one new position and no padding anywhere)."""
        cache, s = self.cache, self.cache.length
        if T == 1 and not self.holes:
            return None
        valid = cache.valid[:, None, None, :s + T]
        if T == 1:
            return valid
        causal = torch.ones(T, s + T, dtype=torch.bool, device=self.device).tril(diagonal=s)
        own = torch.zeros_like(causal)
        own[torch.arange(T), s + torch.arange(T)] = True  # a padding query attends at least itself: no NaN rows
        return (causal[None, None] & valid) | own

    def _decode_static(self, tokens: torch.Tensor, pos_ids: torch.Tensor) -> torch.Tensor:
        """One decode step with static shapes (whole cache, mask over it, slot as a tensor) for CUDA graphs."""
        cache = self.cache
        if self._static_slot is None:
            self._static_slot = torch.zeros(1, dtype=torch.long, device=self.device)
            self._slots = torch.arange(cache.max_len, device=self.device)
        self._static_slot.fill_(cache.length)
        mask = (cache.valid & (self._slots <= cache.length))[:, None, None, :]
        return self.engine.decode_step(tokens, pos_ids, cache, mask, self._static_slot, self.plan)


class Engine:
    """A model (and optionally its tokenizer) ready to generate. Build with `Engine(model, tok)` or
    `Engine.from_checkpoint(path)`.

    compile: run decode steps with static shapes (see the module docstring); on CUDA they are also compiled with
    `torch.compile(mode="reduce-overhead")` (CUDA graphs). Default: on for CUDA, off on CPU, where the dynamic step
    is faster; True on CPU runs the static step uncompiled, which is how the tests check it.
    """

    def __init__(self, model: GPT, tokenizer: Any = None, compile: bool | None = None) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        param = next(model.parameters())
        self.dtype = param.dtype
        cuda = param.device.type == "cuda"
        self.static_decode = cuda if compile is None else compile
        # A model vocabulary padded past the tokenizer's (e.g. to a multiple of 64) has ids that decode to nothing.
        tok_vocab = getattr(tokenizer, "vocab_size", None)
        self.vocab_limit = tok_vocab if tok_vocab is not None and tok_vocab < model.config.vocab_size else None
        self._plan_key: tuple | None = None
        self._plan: _Plan | None = None
        self.decode_step = self._forward_static
        if self.static_decode and cuda:
            # Static shapes per batch size, so one compilation per batch size, replayed as a CUDA graph.
            self.decode_step = torch.compile(self._forward_static, mode="reduce-overhead", fullgraph=True)

    @classmethod
    def from_checkpoint(cls, path: str, device: str = "cpu", dtype: str | None = None,
                        compile: bool | None = None) -> "Engine":
        """Load a checkpoint (run folder or checkpoint folder) with its tokenizer. dtype: "float32" | "bfloat16" |
        "float16"; default bf16 on CUDA, fp32 on CPU (bf16 is about 3x slower than fp32 on the reference CPU)."""
        from lmforge.checkpoint import checkpoint_tokenizer_dir, load_model
        from lmforge.tokenizer import Tokenizer

        model, ckpt = load_model(path, device=device)
        name = dtype or ("bfloat16" if torch.device(device).type == "cuda" else "float32")
        if name not in ("float32", "bfloat16", "float16"):
            raise LmforgeError(f"dtype must be float32, bfloat16 or float16, got {name!r}")
        model = model.to(getattr(torch, name))
        if model.config.pos == "rope":  # rotation tables stay fp32: positions need the precision
            model.rope_cos, model.rope_sin = model.rope_cos.float(), model.rope_sin.float()
        return cls(model, Tokenizer.load(checkpoint_tokenizer_dir(ckpt)), compile=compile)

    # --------------------------------------------------------------------------------------------------------

    def default_stop_ids(self) -> list[int]:
        if self.tokenizer is None:
            return []
        specials = self.tokenizer.special_tokens
        return [specials[name] for name in END_TOKENS if name in specials]

    def new_decoder(self) -> Any:
        """A fresh streaming decoder (`.feed(id)` -> new whole characters, `.flush()`), or None without a tokenizer."""
        return None if self.tokenizer is None else self.tokenizer.decoder()

    def encode_prompt(self, text: str) -> list[int]:
        """Token ids of a plain-text prompt for a base model: `<|bos|>` first, as every pretraining document."""
        if self.tokenizer is None:
            raise LmforgeError("this engine has no tokenizer: pass token ids")
        bos = self.tokenizer.special_tokens.get("<|bos|>")
        return ([bos] if bos is not None else []) + list(self.tokenizer.encode(text))

    def _prompt_ids(self, prompt: str | Sequence[int]) -> list[int]:
        return self.encode_prompt(prompt) if isinstance(prompt, str) else [int(t) for t in prompt]

    def session(self, prompts: str | Sequence[int] | Sequence[str | Sequence[int]], params: SamplingParams | None = None,
                max_len: int | None = None) -> GenerationSession:
        """Open a session over one prompt or a list of prompts (text or token ids); prefill happens here.

        max_len: cache slots (prompt + everything generated or appended); default the model's context.
        """
        if isinstance(prompts, str) or (len(prompts) and isinstance(prompts[0], int)):
            prompts = [prompts]  # type: ignore[list-item]
        ids = [self._prompt_ids(p) for p in prompts]  # type: ignore[union-attr]
        block = self.model.config.block_size
        return GenerationSession(self, ids, params or SamplingParams(), min(max_len or block, block))

    def generate(self, prompts: str | Sequence[int] | Sequence[str | Sequence[int]],
                 params: SamplingParams | None = None) -> list[list[Completion]]:
        """Complete every prompt `params.n` times in one batch; returns [prompt][sample] completions."""
        params = params or SamplingParams()
        if isinstance(prompts, str) or (len(prompts) and isinstance(prompts[0], int)):
            prompts = [prompts]  # type: ignore[list-item]
        ids = [self._prompt_ids(p) for p in prompts]  # type: ignore[union-attr]
        block = self.model.config.block_size
        max_len = min(block, max(len(p) for p in ids) + params.max_tokens)
        done = GenerationSession(self, ids, params, max_len).run()
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

    # --------------------------------------------------------------------------------------------------------
    # The forward passes: the model's modules, our loop (one mask per forward, only the last position's logits)
    # --------------------------------------------------------------------------------------------------------

    def layer_plan(self) -> "_Plan":
        """The callables and weights the layer loop needs, looked up once per session rather than through module
        attributes at every step (a module call costs microseconds of Python, and a small model's decode step is
        hundreds of calls). Norms and SwiGLU run as direct functional calls; other choices through their modules.
        Each residual add rides in its output projection's matmul. For small models (layer weights up to
        FUSE_MAX_BYTES, about 128M fp32 parameters) the Q/K/V projections and the gate/up projections run as one
        matmul each over concatenated copies, RoPE turns Q and K in one call (fewer, larger operations, which is what
        a CPU decode step of a small model is bound by), and every matmul takes its fastest route (`_Linear`, with
        its own weight layouts: about one more copy of the weights). Larger models skip the copies, whose memory
        would then matter more than their speed. The plan is rebuilt when any parameter changed (new tensor or
        in-place update, as after an RL step), so a session always runs current weights."""
        key = tuple((p.data_ptr(), p._version) for p in self.model.parameters())
        if key == self._plan_key and self._plan is not None:
            return self._plan
        m = self.model
        layer_bytes = sum(p.numel() * p.element_size() for p in m.layers.parameters())
        fuse = layer_bytes <= FUSE_MAX_BYTES
        layers = []
        for block in m.layers:
            a = block.attn
            wqkv = _Linear(torch.cat([a.wq.weight, a.wk.weight, a.wv.weight]), fuse) if fuse else None
            hidden, down = _mlp_fn(block.mlp, fuse)
            layers.append((_norm_fn(block.attn_norm), _qkv_fn(a, wqkv), _Linear(a.wo.weight, fuse),
                           _norm_fn(block.mlp_norm), hidden, down, a.n_head, a.n_kv_head, a.head_dim))
        rope = None
        if m.pos_emb is None:
            # One table of [cos | signed sin]: one lookup per forward instead of two.
            rope = torch.cat([m.rope_cos, m.rope_sin], dim=-1).float()
        self._plan_key = key
        self._plan = _Plan(layers, m.tok_emb.weight.detach(), m.pos_emb, rope, _norm_fn(m.norm),
                           _Linear(m.lm_head.weight, fuse))
        return self._plan

    def _embed(self, tokens: torch.Tensor, pos_ids: torch.Tensor, plan: "_Plan") -> tuple[torch.Tensor, Any]:
        """Token embeddings flattened to (B*T, C), and RoPE's (cos, signed sin), each (B, 1, T, head_dim)."""
        x = F.embedding(tokens, plan.tok_emb)
        if plan.rope is None:
            return (x + plan.pos_emb(pos_ids)).flatten(0, 1), None
        cos, sin = F.embedding(pos_ids, plan.rope)[:, None].to(x.dtype).chunk(2, dim=-1)
        return x.flatten(0, 1), (cos, sin)

    def _layers(self, x: torch.Tensor, rope: Any, cache: KVCache, mask: torch.Tensor | None, causal: bool,
                s: int, slot: torch.Tensor | None, plan: "_Plan", B: int, T: int) -> torch.Tensor:
        """The blocks and the head over x (B*T, C). New keys/values go to slots s..s+T-1 (python int) or, for the
        static step, to the slot in the `slot` tensor (then `s` is unused, so a compiled step does not specialise
        on it)."""
        sdpa, decode = F.scaled_dot_product_attention, T == 1
        for i, (attn_norm, qkv, wo, mlp_norm, hidden, down, nh, nkv, hd) in enumerate(plan.layers):
            q, k, v = qkv(attn_norm(x), rope, B, T)
            kc, vc = cache.k[i], cache.v[i]
            if slot is None:
                kc[:, :, s:s + T] = k
                vc[:, :, s:s + T] = v
                keys, values = kc[:, :, :s + T], vc[:, :, :s + T]
            else:
                kc.index_copy_(2, slot, k)
                vc.index_copy_(2, slot, v)
                keys, values = kc, vc
            y = sdpa(q, keys, values, attn_mask=mask, is_causal=causal, enable_gqa=nkv != nh)
            x = wo(y.transpose(1, 2).reshape(B * T, nh * hd), x, decode)
            x = x + hidden(mlp_norm(x)) if down is None else down(hidden(mlp_norm(x), decode), x, decode)
        return plan.head(plan.norm(x.view(B, T, -1)[:, -1]), None, decode)

    def forward(self, tokens: torch.Tensor, pos_ids: torch.Tensor, cache: KVCache, mask: torch.Tensor | None,
                plan: "_Plan") -> torch.Tensor:
        """Logits (B, V) of the last of T new tokens written after the cache's filled slots.

        mask None means either a fresh causal prefill (no padding, empty cache) or one new position that sees every
        cached slot."""
        x, rope = self._embed(tokens, pos_ids, plan)
        B, T = tokens.shape
        return self._layers(x, rope, cache, mask, mask is None and T > 1, cache.length, None, plan, B, T)

    def _forward_static(self, tokens: torch.Tensor, pos_ids: torch.Tensor, cache: KVCache, mask: torch.Tensor,
                        slot: torch.Tensor, plan: "_Plan") -> torch.Tensor:
        x, rope = self._embed(tokens, pos_ids, plan)
        B, T = tokens.shape
        return self._layers(x, rope, cache, mask, False, 0, slot, plan, B, T)


@dataclass
class _Plan:
    """What `Engine.layer_plan` looked up. Per layer: (attn norm, qkv fn, Wo^T, mlp norm, hidden fn, Wdown^T or None
    (then `hidden` is the whole MLP), n_head, n_kv_head, head_dim); then the embedding, the learned position
    embedding or the RoPE table, the final norm and the output head."""

    layers: list[tuple]
    tok_emb: torch.Tensor
    pos_emb: Any
    rope: torch.Tensor | None
    norm: Any
    head: "_Linear"


class _Linear:
    """x @ W.T (+ residual) by the CPU route measured fastest for the weight's shape and the number of rows, with W's
    extra layouts made once. Measured with 1 thread, weights coming from L3 or memory as in a decode step:
    - one row (batch-1 decode): MKL reads a row-major (in, out) copy of a wide or square weight about twice as fast
      as F.linear's (out, in) one (2048 x 384: 130 against 326 us; the tiny preset's 4096 x 128 head: 75 against
      290 us); a tall one (out < in) is faster as it is (384 x 1024: 42 against 51 us);
    - 4 to 64 rows of a decode step, weights of 1 MB or more: oneDNN's prepacked matmul, the residual add fused in
      (batch 8, 2048 x 384: 217 against 493 us; 384 x 1024: 98 against 170 us; smaller weights lose, 704 x 128: 30
      against 26 us). One packed layout is kept, for the latest batch size (repacking a 3 MB weight takes 0.3 ms).
    Only for fp32 CPU weights of small models (`small`); otherwise, and for prefill, MKL on the (out, in) weight.
    On the 100M shape (12L 768d) the routes took a batch-1 decode step from 31 to 8 ms and batch 8 from 56 to 36."""

    def __init__(self, w: torch.Tensor, small: bool) -> None:
        cpu32 = small and w.device.type == "cpu" and w.dtype == torch.float32
        self.wt = w.detach().t().contiguous() if cpu32 and w.size(0) >= w.size(1) else w.detach().t()  # (in, out)
        self.pack = cpu32 and w.numel() * w.element_size() >= 1 << 20 and torch.backends.mkldnn.is_available()
        self.packed: tuple[int, torch.Tensor] | None = None

    def __call__(self, x: torch.Tensor, residual: torch.Tensor | None = None, decode: bool = False) -> torch.Tensor:
        rows = x.size(0)
        if self.pack and decode and 4 <= rows <= 64:
            packed = self.packed  # read once: sessions in other threads may swap it
            if packed is None or packed[0] != rows:
                packed = self.packed = (rows, torch.ops.mkldnn._reorder_linear_weight(self.wt.t().contiguous(), rows))
            if residual is None:
                return torch.ops.mkldnn._linear_pointwise(x, packed[1], None, "none", [], "")
            return torch.ops.mkldnn._linear_pointwise.binary(x, residual, packed[1], None, "add")
        return torch.mm(x, self.wt) if residual is None else torch.addmm(residual, x, self.wt)


def _norm_fn(norm: torch.nn.Module) -> Any:
    if isinstance(norm, RMSNorm):
        return partial(F.rms_norm, normalized_shape=(norm.weight.numel(),), weight=norm.weight, eps=norm.eps)
    return norm


def _qkv_fn(attn: torch.nn.Module, wqkv: "_Linear | None") -> Any:
    """h (B*T, C), the rotation tables, B and T -> q, k, v as (B, heads, T, head_dim), QK-norm and RoPE applied."""
    nh, nkv, hd = attn.n_head, attn.n_kv_head, attn.head_dim
    wq, wk, wv = attn.wq.weight, attn.wk.weight, attn.wv.weight
    q_norm, k_norm = attn.q_norm, attn.k_norm

    def separate(h: torch.Tensor, rope: Any, B: int, T: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        q = F.linear(h, wq).view(B, T, nh, hd).transpose(1, 2)
        k = F.linear(h, wk).view(B, T, nkv, hd).transpose(1, 2)
        v = F.linear(h, wv).view(B, T, nkv, hd).transpose(1, 2)
        if q_norm is not None:
            q, k = q_norm(q), k_norm(k)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        return q, k, v

    def fused(h: torch.Tensor, rope: Any, B: int, T: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        qkv = wqkv(h, None, T == 1).view(B, T, nh + 2 * nkv, hd).transpose(1, 2)
        v = qkv[:, nh + nkv:]
        if q_norm is None:
            qk = qkv[:, :nh + nkv] if rope is None else apply_rope(qkv[:, :nh + nkv], *rope)
            return qk[:, :nh], qk[:, nh:], v
        q, k = q_norm(qkv[:, :nh]), k_norm(qkv[:, nh:nh + nkv])
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        return q, k, v

    return separate if wqkv is None else fused


def _mlp_fn(mlp: torch.nn.Module, fuse: bool) -> tuple[Any, _Linear | None]:
    """(hidden, down): SwiGLU's hidden activations as a function of (x, decode) and its down projection, which takes
    the residual; other MLPs run whole through their module (hidden = the module, None)."""
    if mlp.kind != "swiglu":
        return mlp, None
    w_gate, w_up, down = mlp.w_gate.weight, mlp.w_up.weight, _Linear(mlp.w_down.weight, fuse)
    if fuse:
        gate_up = _Linear(torch.cat([w_gate, w_up]), fuse)

        def swiglu_fused(x: torch.Tensor, decode: bool) -> torch.Tensor:
            gate, up = gate_up(x, None, decode).chunk(2, dim=-1)
            return F.silu(gate) * up

        return swiglu_fused, down

    def swiglu(x: torch.Tensor, decode: bool) -> torch.Tensor:
        return F.silu(F.linear(x, w_gate)) * F.linear(x, w_up)

    return swiglu, down

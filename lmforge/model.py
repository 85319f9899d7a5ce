"""The GPT: a decoder-only Transformer that predicts the next token, in one file.

Read top to bottom: config and presets, normalisation, rotary positions, the attention mask and KV cache,
attention, the MLP, the block, and the model. The default architecture is the Llama family's (RMSNorm, RoPE,
SwiGLU, no biases, with grouped-query attention as an option), and with QK-norm on it is Qwen3's: staying inside a
family the ecosystem runs is what makes the Hugging Face and GGUF exports exact and gives the C runner one
architecture to implement. nanoGPT's original choices (LayerNorm, learned positions, GELU) remain as options so the
benchmark can show what the modern ones buy.

There is one forward: the layer loop `GPT.blocks` and `Block.forward`. Training and the plain forward run it over
the blocks' own modules (`GPT.forward`); the inference engine runs it over `InferenceWeights`, the same parameters
laid out for fast decoding (`GPT.infer`), for prefill, decode and the static (CUDA-graph) decode step alike. The
CPU kernels it calls live in `kernels.py`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from functools import partial
from typing import Any, Callable, NamedTuple, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from lmforge.kernels import ChunkedLinearCrossEntropy, LinearRoute, RMSNormFunction


@dataclass
class GPTConfig:
    vocab_size: int = 4096
    n_layer: int = 4
    n_head: int = 4
    n_kv_head: int | None = None  # grouped-query attention: fewer K/V heads than Q heads; None = n_head
    n_embd: int = 256
    block_size: int = 256  # context length in tokens
    intermediate_size: int | None = None  # MLP hidden width; None = a width that keeps MLP params at 8 * n_embd^2
    norm: str = "rmsnorm"  # "rmsnorm" | "layernorm"
    pos: str = "rope"  # "rope" | "learned"
    mlp: str = "swiglu"  # "swiglu" | "gelu" | "relu2"
    qk_norm: bool = False  # RMSNorm on each head's queries and keys (Qwen3); steadies training at high LR
    tie_embeddings: bool = False  # share the token embedding with the output head
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    init_std: float = 0.02

    def __post_init__(self) -> None:
        """Refuse a config no model can be built from, or one so large that building it would exhaust memory
        before anything could say so (a damaged checkpoint's block_size of 1e9 would ask for 128 GB of RoPE
        tables): every size an integer in a sane range, every float finite. Errors name the field."""
        sizes = {"vocab_size": 1 << 21, "n_layer": 1024, "n_head": 1024, "n_kv_head": 1024, "n_embd": 1 << 16,
                 "block_size": 1 << 20, "intermediate_size": 1 << 18}
        for name, upper in sizes.items():
            value = getattr(self, name)
            if value is None and name in ("n_kv_head", "intermediate_size"):
                continue
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= upper:
                raise ValueError(f"GPTConfig.{name} must be an integer in [1, {upper}] (got {value!r})")
        for name, floor in (("rope_theta", ">"), ("norm_eps", ">"), ("init_std", ">=")):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or value < 0 or (value == 0 and floor == ">"):
                raise ValueError(f"GPTConfig.{name} must be a finite number {floor} 0 (got {value!r})")
        for name in ("qk_norm", "tie_embeddings"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"GPTConfig.{name} must be true or false (got {getattr(self, name)!r})")
        if self.n_kv_head is None:
            self.n_kv_head = self.n_head
        if self.intermediate_size is None:
            # SwiGLU has three matrices, so 8/3 * d keeps its size equal to a 4 * d two-matrix MLP.
            hidden = 4 * self.n_embd if self.mlp != "swiglu" else int(8 * self.n_embd / 3)
            self.intermediate_size = 32 * math.ceil(hidden / 32)
        checks = {
            "norm": self.norm in ("rmsnorm", "layernorm"),
            "pos": self.pos in ("rope", "learned"),
            "mlp": self.mlp in ("swiglu", "gelu", "relu2"),
            "n_embd": self.n_embd % self.n_head == 0,
            "n_kv_head": self.n_head % self.n_kv_head == 0,
            "head_dim": (self.n_embd // self.n_head) % 2 == 0 or self.pos != "rope",
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"invalid GPTConfig field(s) {bad}: {self}")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "GPTConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown GPTConfig field(s): {sorted(unknown)}")
        return cls(**d)

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> "GPTConfig":
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})


# Sizes from "trains on 2 CPU cores in minutes" to the shapes whose cost `lmforge model info` explains.
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(n_layer=4, n_head=4, n_embd=128, block_size=256, vocab_size=4096),
    "small": dict(n_layer=6, n_head=6, n_embd=384, block_size=512, vocab_size=8192),
    # GPT-2's sizes (124M, 350M) in the Llama family: tied embeddings as GPT-2 had them.
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768, block_size=1024, vocab_size=50304, tie_embeddings=True),
    "gpt2-medium": dict(n_layer=24, n_head=16, n_embd=1024, block_size=1024, vocab_size=50304, tie_embeddings=True),
    "llama-1b": dict(n_layer=16, n_head=32, n_kv_head=8, n_embd=2048, intermediate_size=8192, block_size=2048,
                     vocab_size=128256, tie_embeddings=True, rope_theta=500000.0),
    "llama-7b": dict(n_layer=32, n_head=32, n_embd=4096, intermediate_size=11008, block_size=4096,
                     vocab_size=32000),
    "llama-70b": dict(n_layer=80, n_head=64, n_kv_head=8, n_embd=8192, intermediate_size=28672, block_size=4096,
                      vocab_size=32000),
}


# Widest model whose output head keeps the plain init_std: GPT-2 medium's, the widest GPT-2 trained with 0.02
# (`GPT.reset_parameters`).
HEAD_INIT_WIDTH = 1024


class RMSNorm(nn.Module):
    """Scale by the root mean square; no mean subtraction and no bias (cheaper than LayerNorm, as good)."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu" and torch.is_grad_enabled():
            return RMSNormFunction.apply(x, self.weight, self.eps)
        return F.rms_norm(x, (x.size(-1),), self.weight, self.eps)


def make_norm(config: GPTConfig, dim: int) -> nn.Module:
    if config.norm == "rmsnorm":
        return RMSNorm(dim, config.norm_eps)
    return nn.LayerNorm(dim, eps=config.norm_eps)


def rope_tables(head_dim: int, max_pos: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and signed sin tables of shape (max_pos, head_dim) in the half-split layout (dims i and i + head_dim/2
    pair up); the sin table's first half is negated, the sign `apply_rope` needs, so no forward pays for it."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    angles = torch.outer(torch.arange(max_pos, dtype=torch.float64), inv_freq)
    return torch.cat([angles, angles], dim=-1).cos().float(), torch.cat([-angles, angles], dim=-1).sin().float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate each (i, i + d/2) pair of x (B, H, T, d) by its position's angle; cos/sin are (B or 1, 1, T, d), sin
    signed as `rope_tables` makes it.

    cat(-x2, x1) * sin is computed as roll(x) * signed sin: the sign lives in the small table instead of the
    activations, 3 passes over x instead of 5 (forward and backward alike).
    """
    return torch.addcmul(x * cos, x.roll(x.size(-1) // 2, -1), sin)


Rope = Optional[tuple[torch.Tensor, torch.Tensor]]  # RoPE's (cos, signed sin), each (B or 1, 1, T, head_dim)


def attention_mask(valid: torch.Tensor, start: int | torch.Tensor, T: int, width: int | None = None) -> torch.Tensor:
    """Which key slots each of T new queries may attend, as (B, 1, T, width) booleans for SDPA: the one mask
    builder, for ragged (left-padded) prefill, appends after a cache, and decode with padding holes.

    The queries sit at slots start..start+T-1 of a cache whose `valid` (B, >= width) marks real tokens (False:
    padding). A query sees the real slots up to its own, and always its own slot, so a padding query never has an
    empty row (which would put NaNs into the cache). width defaults to the filled slots (start + T); the static
    decode step passes the whole cache and its slot as a tensor, so the mask is built inside its compiled graph.
    """
    keys = valid[:, None, None, :start + T if width is None else width]
    if T == 1 and width is None:
        # One query over the filled slots: only padding is masked. Its row has a real token at or before its slot
        # (every prompt has one, and left padding puts it last), so its row is never empty.
        return keys
    slots = torch.arange(keys.size(-1), device=valid.device)
    query = start + torch.arange(T, device=valid.device)[:, None]
    return (keys & (slots <= query)) | (slots == query)


class KVCache:
    """Keys and values of every layer for positions already seen, so each new token costs one position's work.

    Rows of a batch may hold prompts of different lengths: the engine left-pads them and marks the padding slots
    (`mark_padding`), which attention then masks out; positions come from `pos_ids` in the forward.
    """

    def __init__(self, config: GPTConfig, batch_size: int, max_len: int, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32) -> None:
        shape = (batch_size, config.n_kv_head, max_len, config.head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.valid = torch.ones(batch_size, max_len, dtype=torch.bool, device=device)
        self.length = 0  # positions filled so far (the same for every row)
        self.max_len = max_len
        self.holes = False  # whether any slot so far is padding (then attention needs a mask)

    def mark_padding(self, real: torch.Tensor) -> None:
        """Record which of the next real.size(1) slots of each row hold real tokens (False: padding)."""
        self.valid[:, self.length:self.length + real.size(1)] = real
        self.holes = True

    def repeat_rows(self, n: int, zero_rest: bool) -> None:
        """Each row becomes n consecutive copies of itself (n samples continuing one prefilled prompt); zero_rest as
        in `keep_rows` (only the static decode step needs it)."""
        self.keep_rows(torch.arange(self.valid.size(0), device=self.valid.device).repeat_interleave(n), zero_rest)

    def keep_rows(self, rows: torch.Tensor, zero_rest: bool = False) -> None:
        """The cache of these rows, in this order (repeats allowed): a session's n samples of one prompt, or its
        running rows once finished ones leave. Only the filled slots are copied. The slots after them are zeroed
        with zero_rest (the static decode step attends over the whole cache: masked garbage could be NaN, and
        0 * NaN is NaN); the dynamic forward never reads a slot before writing it, so may skip that memset."""
        def pick(t: torch.Tensor) -> torch.Tensor:
            if t.requires_grad:  # a training forward through a cache (a prompt shared by several rows): out=
                return t.index_select(0, rows)  # variants record no graph. Slots past `length` come as they are
            out = t.new_empty((len(rows), *t.shape[1:]))
            torch.index_select(t[:, :, :self.length], 0, rows, out=out[:, :, :self.length])
            if zero_rest:
                out[:, :, self.length:].zero_()
            return out

        self.k, self.v = [pick(k) for k in self.k], [pick(v) for v in self.v]
        self.valid = self.valid.index_select(0, rows)

    def grow(self, max_len: int) -> None:
        """Room for max_len slots: the filled ones copied into larger buffers. A generation session sizes its cache
        to the length it expects (its longest prompt plus its token budget) and grows it only when a row needs more
        (an RL rollout after a tool call): a cache sized to the whole context costs every decode step more (the SFT
        model's 64-row rollout batch, 1 thread: about a tenth slower at 256 slots than at 71). Slots past `length`
        are left unwritten, as `keep_rows` leaves them: only the dynamic forward, which never reads a slot before
        writing it, uses a grown cache."""
        def widen(t: torch.Tensor) -> torch.Tensor:
            out = t.new_empty((*t.shape[:2], max_len, t.shape[3]))
            out[:, :, :self.length] = t[:, :, :self.length]
            return out

        self.k, self.v = [widen(k) for k in self.k], [widen(v) for v in self.v]
        valid = self.valid.new_ones((self.valid.size(0), max_len))  # slots start out valid, as in __init__
        valid[:, :self.length] = self.valid[:, :self.length]
        self.valid, self.max_len = valid, max_len

    def mask(self, T: int) -> torch.Tensor | None:
        """The mask for T new slots after the filled ones; None where plain attention is right: no padding anywhere
        and either one new query (it sees every slot) or an empty cache (then attention is causal)."""
        if not self.holes and (T == 1 or self.length == 0):
            return None
        return attention_mask(self.valid, self.length, T)

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor, at: int | torch.Tensor,
              T: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Store one layer's T new keys/values from slot `at` on and return the keys/values attention reads: the
        filled slots, or, with `at` a tensor (the static decode step), the whole cache, so shapes never change."""
        kc, vc = self.k[layer], self.v[layer]
        if type(at) is int:
            kc[:, :, at:at + T] = k
            vc[:, :, at:at + T] = v
            return kc[:, :, :at + T], vc[:, :, :at + T]
        kc.index_copy_(2, at, k)
        vc.index_copy_(2, at, v)
        return kc, vc


def qk_norm_and_rope(q: torch.Tensor, k: torch.Tensor, q_norm: Any, k_norm: Any,
                     rope: Rope) -> tuple[torch.Tensor, torch.Tensor]:
    if q_norm is not None:
        q, k = q_norm(q), k_norm(k)
    if rope is not None:
        q, k = apply_rope(q, *rope), apply_rope(k, *rope)
    return q, k


class Attention(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = config.n_head, config.n_kv_head, config.head_dim
        self.wq = nn.Linear(config.n_embd, config.n_head * config.head_dim, bias=False)
        self.wk = nn.Linear(config.n_embd, config.n_kv_head * config.head_dim, bias=False)
        self.wv = nn.Linear(config.n_embd, config.n_kv_head * config.head_dim, bias=False)
        self.wo = nn.Linear(config.n_head * config.head_dim, config.n_embd, bias=False)
        self.q_norm = RMSNorm(config.head_dim, config.norm_eps) if config.qk_norm else None
        self.k_norm = RMSNorm(config.head_dim, config.norm_eps) if config.qk_norm else None

    def qkv(self, h: torch.Tensor, rope: Rope, B: int, T: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries, keys and values (B, heads, T, head_dim) of h (B*T, C), QK-normed and rotated."""
        q = F.linear(h, self.wq.weight).view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        k = F.linear(h, self.wk.weight).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)
        v = F.linear(h, self.wv.weight).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)
        return (*qk_norm_and_rope(q, k, self.q_norm, self.k_norm, rope), v)


class MLP(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.kind = config.mlp
        hidden = config.intermediate_size
        self.w_up = nn.Linear(config.n_embd, hidden, bias=False)
        self.w_gate = nn.Linear(config.n_embd, hidden, bias=False) if config.mlp == "swiglu" else None
        self.w_down = nn.Linear(hidden, config.n_embd, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "swiglu":
            h = F.silu(self.w_gate(x)) * self.w_up(x)
        elif self.kind == "gelu":
            h = F.gelu(self.w_up(x), approximate="tanh")
        else:
            h = F.relu(self.w_up(x)).square()
        return self.w_down(h)


class LayerOps(NamedTuple):
    """One block's computation as callables over hidden states (B*T, C): the block's own modules (`Block.ops`),
    or their prepared form for inference (`InferenceWeights`). Both compute the same function of the same
    parameters."""

    attn_norm: Callable[[torch.Tensor], torch.Tensor]
    qkv: Callable[[torch.Tensor, Rope, int, int], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
    attn_out: Callable[[torch.Tensor, torch.Tensor, bool], torch.Tensor]  # (y, residual, decode) -> residual + Wo y
    mlp_norm: Callable[[torch.Tensor], torch.Tensor]
    mlp_out: Callable[[torch.Tensor, torch.Tensor, bool], torch.Tensor]  # (h, residual, decode) -> residual + MLP(h)


class Block(nn.Module):
    """Pre-norm residual block: x + attention(norm(x)), then x + MLP(norm(x))."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.attn_norm = make_norm(config, config.n_embd)
        self.attn = Attention(config)
        self.mlp_norm = make_norm(config, config.n_embd)
        self.mlp = MLP(config)
        self.gqa = config.n_kv_head != config.n_head  # a constant, also for torch.compile

    def ops(self) -> LayerOps:
        return LayerOps(self.attn_norm, self.attn.qkv, self._attn_out, self.mlp_norm, self._mlp_out)

    def _attn_out(self, y: torch.Tensor, residual: torch.Tensor, decode: bool) -> torch.Tensor:
        return residual + self.attn.wo(y)

    def _mlp_out(self, h: torch.Tensor, residual: torch.Tensor, decode: bool) -> torch.Tensor:
        return residual + self.mlp(h)

    def forward(self, x: torch.Tensor, rope: Rope, ops: LayerOps, cache: KVCache | None, layer: int,
                at: int | torch.Tensor, mask: torch.Tensor | None, causal: bool, B: int, T: int) -> torch.Tensor:
        """x (B*T, C) -> the same after the block. With a cache, the new keys/values are written from slot `at`
        (see `KVCache.write`) and attention reads the cache under `mask`; `causal` when there is no mask and T > 1."""
        q, k, v = ops.qkv(ops.attn_norm(x), rope, B, T)
        if cache is not None:
            k, v = cache.write(layer, k, v, at, T)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, enable_gqa=self.gqa)
        decode = T == 1
        x = ops.attn_out(y.transpose(1, 2).reshape(B * T, -1), x, decode)
        return ops.mlp_out(ops.mlp_norm(x), x, decode)


class GPT(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.n_embd)
        self.pos_emb = nn.Embedding(config.block_size, config.n_embd) if config.pos == "learned" else None
        self.layers = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.norm = make_norm(config, config.n_embd)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight
        if config.pos == "rope":
            cos, sin = rope_tables(config.head_dim, config.block_size, config.rope_theta)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """GPT-2's init: N(0, 0.02), with the projections into the residual stream scaled by 1/sqrt(2 * layers)
        so the stream's variance does not grow with depth.

        The output head (tied or not: with tied embeddings the shared matrix) is scaled by
        sqrt(HEAD_INIT_WIDTH / n_embd) past HEAD_INIT_WIDTH: the final norm gives its input unit scale per
        coordinate, so a logit's standard deviation is init_std * sqrt(n_embd) and the initial loss exceeds
        ln(vocab) by about half its square. Unscaled it was +0.49 at llama-1b's width, +0.91 at llama-7b's and
        +1.56 at llama-70b's (one-layer proxies, 7b/70b with a 256-wide MLP, random tokens; scaled +0.26,
        +0.25, +0.18; llama-1b at full depth +0.42 unscaled, +0.19 scaled). Scaled, the logits keep GPT-2
        medium's spread at every width (muP's aim, which gets there with a 1/width readout; nanochat zeroes its
        untied head). GPT-2's own widths are unchanged."""
        std = self.config.init_std
        head = ("lm_head.weight", "tok_emb.weight") if self.config.tie_embeddings else ("lm_head.weight",)
        head_scale = min(1.0, math.sqrt(HEAD_INIT_WIDTH / self.config.n_embd))
        for name, p in self.named_parameters():
            if p.dim() < 2:
                continue
            scale = 1 / math.sqrt(2 * self.config.n_layer) if name.endswith(("wo.weight", "w_down.weight")) else 1.0
            scale = head_scale if name in head else scale
            nn.init.normal_(p, mean=0.0, std=std * scale)
        for m in self.modules():
            if isinstance(m, (RMSNorm, nn.LayerNorm)):
                nn.init.ones_(m.weight)
                if getattr(m, "bias", None) is not None:
                    nn.init.zeros_(m.bias)

    def num_params(self, non_embedding: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.tok_emb.weight.numel()
            if self.pos_emb is not None:
                n -= self.pos_emb.weight.numel()
        return n

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, cache: KVCache | None = None,
                pos_ids: torch.Tensor | None = None, reduction: str = "mean",
                return_logits: bool = True) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Logits for every position of idx (B, T), and the mean cross-entropy where targets are not -1.

        With a cache, idx continues the sequence the cache holds; pos_ids (B, T) give each row's positions when
        rows are left-padded (default: the slots the tokens occupy). The trainer asks for `reduction="sum"` and
        `return_logits=False` (logits None): on CPU the loss is then computed chunk by chunk without materialising
        the (B, T, vocab) logits.
        """
        B, T = idx.shape
        x = self.hidden(idx, cache, pos_ids).flatten(0, 1)
        if targets is None:
            return self.lm_head(x).view(B, T, -1), None
        if not return_logits and x.device.type == "cpu" and x.dtype == torch.float32 and torch.is_grad_enabled():
            loss = ChunkedLinearCrossEntropy.apply(x, self.lm_head.weight, targets.reshape(-1), 256)
            if reduction == "mean":
                loss = loss / (targets >= 0).sum().clamp_min(1)
            return None, loss
        logits = self.lm_head(x)
        loss = F.cross_entropy(logits.float(), targets.reshape(-1), ignore_index=-1, reduction=reduction)
        return (logits.view(B, T, -1) if return_logits else None), loss

    def hidden(self, idx: torch.Tensor, cache: KVCache | None = None,
               pos_ids: torch.Tensor | None = None) -> torch.Tensor:
        """The last layer's normalised hidden states (B, T, C) of idx: `forward` without the head, for callers that
        need the head at a few positions only (RL scores its sampled tokens; a prompt that G rows share is run
        once, its keys/values in a cache that `keep_rows` copies to the rows, under autograd too)."""
        B, T = idx.shape
        start = cache.length if cache is not None else 0
        if pos_ids is None:
            if start + T > self.config.block_size:
                raise ValueError(f"sequence of {start + T} tokens is longer than the context ({self.config.block_size})")
            pos_ids = torch.arange(start, start + T, device=idx.device)[None]
        elif int(pos_ids.max()) >= self.config.block_size:
            raise ValueError(f"position {int(pos_ids.max())} is beyond the context ({self.config.block_size})")
        x = self.tok_emb(idx)
        rope = None
        if self.pos_emb is not None:
            x = x + self.pos_emb(pos_ids)
        else:
            rope = (self.rope_cos[pos_ids][:, None], self.rope_sin[pos_ids][:, None])
        mask = None
        if cache is not None:
            if start + T > cache.max_len:
                raise ValueError(f"KV cache holds {cache.max_len} positions; {start + T} needed")
            mask = cache.mask(T)
        # Blocks are called as modules here: FSDP's hooks gather each block's shards in __call__.
        x = self.blocks(x.flatten(0, 1), rope, [b.ops() for b in self.layers], cache, start, mask, B, T,
                        Block.__call__)
        if cache is not None:
            cache.length += T
        return self.norm(x).view(B, T, -1)

    def infer(self, tokens: torch.Tensor, pos_ids: torch.Tensor, cache: KVCache, weights: "InferenceWeights",
              slot: torch.Tensor | None = None, last: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, V) of the last of T new tokens (B, T) at positions pos_ids (B, T), through the same blocks
        as `forward` with the prepared weights (see `InferenceWeights`); only the last position meets the head.
        `last` (B,) picks another position per row instead: a right-padded batch of prompts of several lengths
        (the server's batched prefill) wants each row's last real token.

        The tokens are written after the cache's filled slots, under `cache.mask(T)`. With `slot` (a one-element
        tensor) this is the static decode step instead: one token per row written at that slot, attention over the
        whole cache with the mask built in the graph, so its shapes never change and torch.compile can capture it
        in a CUDA graph. The caller advances `cache.length` (a compiled step must not depend on it).
        """
        B, T = tokens.shape
        x = F.embedding(tokens, weights.tok_emb)
        rope = None
        if weights.rope is None:
            x = x + F.embedding(pos_ids, weights.pos_emb)
        else:
            rope = F.embedding(pos_ids, weights.rope)[:, None].to(x.dtype).chunk(2, dim=-1)
        if slot is None:
            at, mask = cache.length, cache.mask(T)
        else:
            at, mask = slot, attention_mask(cache.valid, slot, T, cache.max_len)
        # Blocks' forward is called directly: nn.Module.__call__ costs microseconds, which a small decode step feels.
        x = self.blocks(x.flatten(0, 1), rope, weights.layers, cache, at, mask, B, T, Block.forward)
        x = x.view(B, T, -1)
        x = x[:, -1] if last is None else x[torch.arange(B, device=x.device), last]
        return weights.head(weights.norm(x), None, T == 1)

    def blocks(self, x: torch.Tensor, rope: Rope, layer_ops: list[LayerOps], cache: KVCache | None,
               at: int | torch.Tensor, mask: torch.Tensor | None, B: int, T: int, call: Callable) -> torch.Tensor:
        """The layer loop of every forward. Attention is causal where there is no mask and more than one query."""
        causal = mask is None and T > 1
        for i, (block, ops) in enumerate(zip(self.layers, layer_ops)):
            x = call(block, x, rope, ops, cache, i, at, mask, causal, B, T)
        return x

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Training FLOPs per token: 6 per parameter (forward + backward) plus attention's scores and weighted sum
        (PaLM's estimate, which ignores the causal mask's savings). A tied embedding is also the output head, a
        matmul every token, so it counts as a parameter here."""
        cfg = self.config
        t = seq_len or cfg.block_size
        n = self.num_params(non_embedding=True) + (self.lm_head.weight.numel() if cfg.tie_embeddings else 0)
        return 6 * n + 12 * cfg.n_layer * cfg.n_head * cfg.head_dim * t


FUSE_MAX_BYTES = 512 << 20  # models whose layers hold at most this much get fused and re-laid-out weight copies


class InferenceWeights:
    """The model's parameters prepared for inference: a view of the same modules that `GPT.infer` runs through the
    same blocks, not a second model. A CPU decode step of a small model is bound by per-operation overhead, not
    FLOPs, so: norms and SwiGLU are direct functional calls rather than module calls; for small models (layer
    weights up to FUSE_MAX_BYTES, about 128M fp32 parameters) Q/K/V and gate/up run as one matmul each over
    concatenated copies, and RoPE turns Q and K in one call; every matmul takes its fastest route (`LinearRoute`,
    with its own weight layouts) and the residual adds ride in the output projections' matmuls; RoPE is one lookup
    in a [cos | signed sin] table. Larger models skip the copies, whose memory would then matter more than their
    speed. Build it again when parameters change (`weights_key` tells), so inference runs current weights.
    """

    def __init__(self, model: GPT) -> None:
        self.key = weights_key(model)
        small = sum(p.numel() * p.element_size() for p in model.layers.parameters()) <= FUSE_MAX_BYTES
        self.layers = [_prepared_ops(block, small) for block in model.layers]
        self.tok_emb = model.tok_emb.weight.detach()
        self.pos_emb = None if model.pos_emb is None else model.pos_emb.weight.detach()
        self.rope = None if model.pos_emb is not None else torch.cat([model.rope_cos, model.rope_sin], -1).float()
        self.norm = _norm_fn(model.norm)
        self.head = LinearRoute(model.lm_head.weight, small)


def weights_key(model: nn.Module) -> tuple:
    """Identity and in-place version of every parameter and buffer: it changes when any of them does (a new
    tensor, an optimiser step, a changed RoPE table), which is when prepared weights are stale. (Torch's fused
    AdamW leaves version counters as they were; `train.optim.fused_adamw` bumps them after each step.)"""
    return tuple((t.data_ptr(), t._version) for t in (*model.parameters(), *model.buffers()))


def _norm_fn(norm: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    if isinstance(norm, RMSNorm):
        return partial(F.rms_norm, normalized_shape=(norm.weight.numel(),), weight=norm.weight, eps=norm.eps)
    return norm


def _prepared_ops(block: Block, small: bool) -> LayerOps:
    attn, mlp = block.attn, block.mlp
    qkv = _FusedQKV(attn, small) if small else attn.qkv
    mlp_out = _SwiGLU(mlp, small) if mlp.kind == "swiglu" else block._mlp_out
    return LayerOps(_norm_fn(block.attn_norm), qkv, LinearRoute(attn.wo.weight, small), _norm_fn(block.mlp_norm),
                    mlp_out)


class _FusedQKV:
    """`Attention.qkv` as one matmul over a concatenated copy of Wq, Wk and Wv; without QK-norm between, RoPE
    turns the queries and keys in one call."""

    def __init__(self, attn: Attention, small: bool) -> None:
        self.w = LinearRoute(torch.cat([attn.wq.weight, attn.wk.weight, attn.wv.weight]), small)
        self.nh, self.nkv, self.hd = attn.n_head, attn.n_kv_head, attn.head_dim
        self.q_norm = None if attn.q_norm is None else _norm_fn(attn.q_norm)
        self.k_norm = None if attn.k_norm is None else _norm_fn(attn.k_norm)

    def __call__(self, h: torch.Tensor, rope: Rope, B: int, T: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        nh, nkv = self.nh, self.nkv
        qkv = self.w(h, None, T == 1).view(B, T, nh + 2 * nkv, self.hd).transpose(1, 2)
        v = qkv[:, nh + nkv:]
        if self.q_norm is None:
            qk = qkv[:, :nh + nkv] if rope is None else apply_rope(qkv[:, :nh + nkv], *rope)
            return qk[:, :nh], qk[:, nh:], v
        return (*qk_norm_and_rope(qkv[:, :nh], qkv[:, nh:nh + nkv], self.q_norm, self.k_norm, rope), v)


class _SwiGLU:
    """residual + W_down(silu(W_gate h) * W_up h), gate and up as one matmul for small models, the residual add
    inside the down projection's matmul."""

    def __init__(self, mlp: MLP, small: bool) -> None:
        self.w_gate, self.w_up = mlp.w_gate.weight, mlp.w_up.weight
        self.gate_up = LinearRoute(torch.cat([self.w_gate, self.w_up]), small) if small else None
        self.down = LinearRoute(mlp.w_down.weight, small)

    def __call__(self, h: torch.Tensor, residual: torch.Tensor, decode: bool) -> torch.Tensor:
        if self.gate_up is None:
            return self.down(F.silu(F.linear(h, self.w_gate)) * F.linear(h, self.w_up), residual, decode)
        gate, up = self.gate_up(h, None, decode).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up, residual, decode)

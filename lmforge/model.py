"""The GPT: a decoder-only Transformer that predicts the next token, in one file.

Read top to bottom: config and presets, normalisation, rotary positions, attention (with its KV cache), the MLP,
the block, and the model. The default architecture is the Llama family's (RMSNorm, RoPE, SwiGLU, no biases, with
grouped-query attention as an option), and with QK-norm on it is Qwen3's: staying inside a family the ecosystem
runs is what makes the Hugging Face and GGUF exports exact and gives the C runner one architecture to implement.
nanoGPT's original choices (LayerNorm, learned positions, GELU) remain as options so the benchmark can show what
the modern ones buy.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F


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


class RMSNormFunction(torch.autograd.Function):
    """RMSNorm with a hand-written backward, for training on CPU.

    There F.rms_norm is not a fused kernel: it decomposes into about six operations forward and a dozen backward,
    each a pass over the activations. This one takes the mean square in one reduction and saves the normalised x
    for a backward of eight passes: forward + backward 2.75 -> 1.60 ms per norm on the tiny preset's activations
    (16 x 256 x 128), 0.41 -> 0.31 ms at nanoGPT's CPU shape (1 thread).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        rstd = torch.linalg.vector_norm(x, dim=-1, keepdim=True).square_().div_(x.size(-1)).add_(eps).rsqrt_()
        xhat = x * rstd
        ctx.save_for_backward(xhat, rstd, weight)
        return xhat * weight

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        xhat, rstd, weight = ctx.saved_tensors
        gw = grad * weight
        dweight = (grad * xhat).flatten(0, -2).sum(0) if ctx.needs_input_grad[1] else None
        # d/dx of w * x * rstd(x): rstd * (gw - xhat * mean(gw * xhat))
        dot = (gw * xhat).mean(-1, keepdim=True)
        return gw.sub_(xhat * dot).mul_(rstd), dweight, None


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


class ChunkedLinearCrossEntropy(torch.autograd.Function):
    """Summed cross-entropy of `h @ w.T` against targets (-1 ignored), without ever holding all the logits.

    Rows are processed in chunks whose logits stay in the CPU's cache; each chunk's gradients (softmax minus
    one-hot, through the head) are computed right away and kept for the backward pass, which only scales them.
    On the tiny preset (vocabulary 4096, 4096 tokens a step) the output head and its loss were nearly half of a
    training step's CPU time, and this cut that part by about a quarter. Only used for training on CPU.
    """

    @staticmethod
    def forward(ctx, h: torch.Tensor, w: torch.Tensor, targets: torch.Tensor, chunk: int) -> torch.Tensor:
        total = torch.zeros((), dtype=torch.float32, device=h.device)
        dh, dw = torch.empty_like(h), torch.zeros_like(w)
        rows = torch.arange(chunk, device=h.device)
        for s in range(0, h.size(0), chunk):
            hs, ys = h[s:s + chunk], targets[s:s + chunk]
            valid = (ys >= 0).float()[:, None]
            yc = ys.clamp_min(0)
            # log-probabilities give the loss, and exp of them in place the softmax: one exponential pass per
            # logit instead of two (logsumexp, then softmax), 211 -> 189 ms per step for the tiny preset's head.
            grad = torch.log_softmax(hs @ w.T, dim=-1)
            total -= grad.gather(1, yc[:, None]).mul_(valid).sum()
            grad.exp_()
            grad[rows[:len(ys)], yc] -= 1
            # Ignored rows are masked on the narrow sides (rows x width), not on the wide logits (rows x vocab).
            torch.mm(grad, w, out=dh[s:s + chunk]).mul_(valid)
            dw.addmm_(grad.T, hs * valid)
        ctx.save_for_backward(dh, dw)
        return total

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        dh, dw = ctx.saved_tensors
        return dh * grad_out, dw * grad_out, None, None


class KVCache:
    """Keys and values of every layer for positions already seen, so each new token costs one position's work.

    Rows of a batch may hold prompts of different lengths: the engine left-pads them and marks the padding in
    `valid` (B, max_len), which attention uses as a key mask; positions come from `pos_ids` in the forward.
    """

    def __init__(self, config: GPTConfig, batch_size: int, max_len: int, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32) -> None:
        shape = (batch_size, config.n_kv_head, max_len, config.head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.valid = torch.ones(batch_size, max_len, dtype=torch.bool, device=device)
        self.length = 0  # positions filled so far (the same for every row)
        self.max_len = max_len

    def reset(self) -> None:
        self.length = 0
        self.valid.fill_(True)


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

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None,
                cache: KVCache | None, layer: int) -> torch.Tensor:
        B, T, _ = x.shape
        q = self.wq(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        k = self.wk(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)
        v = self.wv(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        mask = None
        is_causal = True
        if cache is not None:
            start = cache.length
            if start + T > cache.max_len:
                raise ValueError(f"KV cache holds {cache.max_len} positions; {start + T} needed")
            cache.k[layer][:, :, start:start + T] = k
            cache.v[layer][:, :, start:start + T] = v
            k, v = cache.k[layer][:, :, :start + T], cache.v[layer][:, :, :start + T]
            if start > 0 or not bool(cache.valid[:, :T].all()):
                # Query i (at absolute slot start+i) sees slots <= start+i that are not padding, and always its own
                # slot, so a padding query never has an empty row (which would put NaNs into the cache).
                causal = torch.ones(T, start + T, dtype=torch.bool, device=x.device).tril(diagonal=start)
                own = torch.zeros_like(causal)
                own[torch.arange(T), start + torch.arange(T)] = True
                mask = (causal[None, None] & cache.valid[:, None, None, :start + T]) | own
                is_causal = False
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal and mask is None,
                                           enable_gqa=self.n_kv_head != self.n_head)
        return self.wo(y.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim))


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


class Block(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.attn_norm = make_norm(config, config.n_embd)
        self.attn = Attention(config)
        self.mlp_norm = make_norm(config, config.n_embd)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, rope, cache: KVCache | None, layer: int) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), rope, cache, layer)
        return x + self.mlp(self.mlp_norm(x))


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
        so the stream's variance does not grow with depth."""
        std = self.config.init_std
        for name, p in self.named_parameters():
            if p.dim() < 2:
                continue
            scale = 1 / math.sqrt(2 * self.config.n_layer) if name.endswith(("wo.weight", "w_down.weight")) else 1.0
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
        for i, block in enumerate(self.layers):
            x = block(x, rope, cache, i)
        if cache is not None:
            cache.length += T
        x = self.norm(x)
        if targets is None:
            return self.lm_head(x), None
        if not return_logits and x.device.type == "cpu" and x.dtype == torch.float32 and torch.is_grad_enabled():
            loss = ChunkedLinearCrossEntropy.apply(x.reshape(-1, x.size(-1)), self.lm_head.weight,
                                                   targets.reshape(-1), 256)
            if reduction == "mean":
                loss = loss / (targets >= 0).sum().clamp_min(1)
            return None, loss
        logits = self.lm_head(x)
        loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1,
                               reduction=reduction)
        return (logits if return_logits else None), loss

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Training FLOPs per token: 6 per parameter (forward + backward) plus attention's scores and weighted sum
        (PaLM's estimate, which ignores the causal mask's savings). A tied embedding is also the output head, a
        matmul every token, so it counts as a parameter here."""
        cfg = self.config
        t = seq_len or cfg.block_size
        n = self.num_params(non_embedding=True) + (self.lm_head.weight.numel() if cfg.tie_embeddings else 0)
        return 6 * n + 12 * cfg.n_layer * cfg.n_head * cfg.head_dim * t

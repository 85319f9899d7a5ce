"""CPU kernels behind `model.py`: a training RMSNorm with a hand-written backward, a cross-entropy that never holds
the logits, and the matmul routes the inference forward takes.

They are speed, not the model: `model.py` reads as the Transformer and calls these where CPU time goes. Each states
what it computes and why it is faster than the obvious expression; the measurements behind them are kept in
`benchmarks/NOTES.md`.
"""

from __future__ import annotations

import torch


class RMSNormFunction(torch.autograd.Function):
    """RMSNorm with a hand-written backward, for training on CPU.

    There F.rms_norm is not a fused kernel: it decomposes into about six operations forward and a dozen backward,
    each a pass over the activations. This one takes the mean square in one reduction and saves the normalised x
    for a backward of eight passes.
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


class ChunkedLinearCrossEntropy(torch.autograd.Function):
    """Summed cross-entropy of `h @ w.T` against targets (-1 ignored), without ever holding all the logits.

    Rows are processed in chunks whose logits stay in the CPU's cache; each chunk's gradients (softmax minus
    one-hot, through the head) are computed right away and kept for the backward pass, which only scales them.
    On small models the output head and its loss are a large share of a training step's CPU time. Only used for
    training on CPU.
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
            # logit instead of two (logsumexp, then softmax).
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


class LinearRoute:
    """x @ W.T (+ residual), by the CPU route measured fastest for the weight's shape and the number of rows, with
    W's extra layouts made once (about one more copy of the weights):
    - one row (batch-1 decode): MKL reads a row-major (in, out) copy of a wide or square weight much faster than
      F.linear's (out, in) one; a tall weight (out < in) is faster as it is;
    - 4 to 64 rows of a decode step, weights of 1 MB or more: oneDNN's prepacked matmul with the residual add fused
      in (smaller weights lose to MKL). One packed layout is kept, for the latest batch size, since repacking a
      weight costs about as much as a few decode steps.
    Only for fp32 CPU weights of small models (`small`); otherwise, and for prefill, MKL on the (out, in) weight.
    """

    def __init__(self, w: torch.Tensor, small: bool) -> None:
        cpu32 = small and w.device.type == "cpu" and w.dtype == torch.float32
        self.wt = w.detach().t().contiguous() if cpu32 and w.size(0) >= w.size(1) else w.detach().t()  # (in, out)
        self.pack = cpu32 and w.numel() * w.element_size() >= 1 << 20 and torch.backends.mkldnn.is_available()
        self.packed: tuple[int, torch.Tensor] | None = None

    def __call__(self, x: torch.Tensor, residual: torch.Tensor | None = None, decode: bool = False) -> torch.Tensor:
        # torch.compile cannot trace the packing op (no fake implementation): compiled steps take the plain route.
        if decode and self.pack and 4 <= x.size(0) <= 64 and not torch.compiler.is_compiling():
            rows = x.size(0)
            packed = self.packed  # read once: sessions in other threads may swap it
            if packed is None or packed[0] != rows:
                packed = self.packed = (rows, torch.ops.mkldnn._reorder_linear_weight(self.wt.t().contiguous(), rows))
            if residual is None:
                return torch.ops.mkldnn._linear_pointwise(x, packed[1], None, "none", [], "")
            return torch.ops.mkldnn._linear_pointwise.binary(x, residual, packed[1], None, "add")
        return torch.mm(x, self.wt) if residual is None else torch.addmm(residual, x, self.wt)

"""`echo` on `/v1/completions`: the prompt's own tokens and log-probs in front of the answer (vLLM's and the legacy
OpenAI API's), what scoring multiple choice or bits per byte through a server needs (`echo: true, max_tokens: 0,
logprobs: k`).

The prompt's log-probs are the model's full forward over the prompt (`GPT.forward`, the computation `lmforge eval mc
--checkpoint` runs), not the scheduler's cached prefill, so a score through the server equals the local one. That
forward runs on one worker thread of its own: the scheduler's decode loop goes on meanwhile (torch releases the GIL
inside its kernels), and echo forwards queue behind each other, so many scoring clients cost one forward's memory.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Optional

import torch

from lmforge.serve.api import Choices

Entry = tuple[int, Optional[float], Optional[list[tuple[int, float]]]]  # (id, log-prob, top), as api.Choices
# The most tokens (padding included) one echo forward computes: bounds its (rows, tokens, vocab) log-probs.
ECHO_TOKENS = 4096


class PromptScorer:
    """Log-probs of every prompt token given the ones before it (the first has none: nothing predicts it)."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.device = next(model.parameters()).device
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lmforge-echo")

    def entries(self, prompts: list[list[int]], top: int) -> list[list[Entry]]:
        """Each prompt's entries: (id, log-prob, the `top` most likely (id, log-prob)) per token. Prompts are
        right-padded into forwards of at most ECHO_TOKENS tokens (padding after a row changes none of its logits
        in a causal model)."""
        out: list[list[Entry]] = [[] for _ in prompts]
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        while order:
            group = [order.pop()]  # the longest left, then shorter ones while the padded batch fits
            while order and (len(group) + 1) * len(prompts[group[0]]) <= ECHO_TOKENS:
                group.append(order.pop())
            width = len(prompts[group[0]])
            idx = torch.tensor([prompts[i] + [0] * (width - len(prompts[i])) for i in group], device=self.device)
            with torch.inference_mode():
                logprobs = torch.log_softmax(self.model(idx)[0][:, :-1].float(), dim=-1).cpu()
            for row, i in enumerate(group):
                out[i] = self._row(prompts[i], logprobs[row, :len(prompts[i]) - 1], top)
        return out

    @staticmethod
    def _row(ids: list[int], logprobs: torch.Tensor, top: int) -> list[Entry]:
        chosen = logprobs[torch.arange(len(ids) - 1), torch.tensor(ids[1:], dtype=torch.long)].tolist()
        best = logprobs.topk(top, dim=-1) if top else None
        out: list[Entry] = [(ids[0], None, None)]
        for i, (token, lp) in enumerate(zip(ids[1:], chosen)):
            pairs = [] if best is None else list(zip(best.indices[i].tolist(), best.values[i].tolist()))
            out.append((token, lp, pairs))
        return out

    async def score(self, prompts: list[list[int]], top: int) -> list[list[Entry]]:
        """Every prompt's entries, computed on the worker thread (the event loop and the scheduler go on)."""
        return await asyncio.get_running_loop().run_in_executor(self.pool, self.entries, prompts, top)


def hidden_width(tok: Any, ids: list[int], text: str) -> int:
    """Characters of the leading tokens the server added (a string prompt's `<|bos|>`), which the echoed text (the
    prompt as sent) does not hold: the echo's `text_offset` starts that far below 0 and is clamped to 0 there."""
    shown = tok.decode(ids)
    return len(shown) - len(text) if shown.endswith(text) else 0


async def echoed(scorer: PromptScorer, spec: Any, tok: Any, tool_tokens: tuple[int, int] | None) -> Any:
    """The choices of an `echo` request as they start: each prompt's text and, with `logprobs`, its entries
    (choice i * n + j, sample j of prompt i, as api.Call numbers them). Without generation (`max_tokens: 0`) they
    are the whole answer: finish "length", the prompt tokens counted."""
    n = spec.params.n
    got = Choices(len(spec.prompts) * n, tool_tokens)
    scored = await scorer.score(spec.prompts, spec.top_logprobs) if spec.top_logprobs is not None else None
    for i, (ids, text) in enumerate(zip(spec.prompts, spec.echo)):
        for choice in range(i * n, i * n + n):
            got.text[choice] = text
            got.logprobs[choice] = list(scored[i]) if scored is not None else []
            got.offset0[choice] = -hidden_width(tok, ids, text)
            if not spec.generate:
                got.finish[choice] = "length"
    if not spec.generate:
        got.prompt_tokens = sum(len(ids) for ids in spec.prompts)
    return got

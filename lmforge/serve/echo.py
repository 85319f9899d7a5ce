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
from typing import Any

import torch

Entry = tuple[int, "float | None", "list[tuple[int, float]] | None"]  # (token id, log-prob, top), as api.Choices


class PromptScorer:
    """Log-probs of every prompt token given the ones before it (the first has none: nothing predicts it)."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.device = next(model.parameters()).device
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lmforge-echo")

    def entries(self, ids: list[int], top: int) -> list[Entry]:
        """One prompt's entries: (id, log-prob, the `top` most likely (id, log-prob)) per token."""
        with torch.inference_mode():
            logits, _ = self.model(torch.tensor([ids], device=self.device))
            logprobs = torch.log_softmax(logits[0, :-1].float(), dim=-1).cpu()
        targets = torch.tensor(ids[1:])
        chosen = logprobs[torch.arange(len(targets)), targets].tolist()
        best = logprobs.topk(top, dim=-1) if top else None
        out: list[Entry] = [(ids[0], None, None)]
        for i, (token, lp) in enumerate(zip(ids[1:], chosen)):
            pairs = [] if best is None else list(zip(best.indices[i].tolist(), best.values[i].tolist()))
            out.append((token, lp, pairs))
        return out

    async def score(self, prompts: list[list[int]], top: int) -> list[list[Entry]]:
        """Every prompt's entries, computed on the worker thread (the event loop and the scheduler go on)."""
        loop = asyncio.get_running_loop()
        return [await loop.run_in_executor(self.pool, self.entries, ids, top) for ids in prompts]

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


def hidden_width(tok: Any, ids: list[int], text: str) -> int:
    """Characters of the leading tokens the server added (a string prompt's `<|bos|>`), which the echoed text (the
    prompt as sent) does not hold: the echo's `text_offset` starts that far below 0 and is clamped to 0 there."""
    shown = tok.decode(ids)
    return len(shown) - len(text) if shown.endswith(text) else 0


async def echoed(scorer: PromptScorer, spec: Any, tok: Any, tool_tokens: tuple[int, int] | None) -> Any:
    """The choices of an `echo` request as they start: each prompt's text and, with `logprobs`, its entries
    (choice i * n + j, sample j of prompt i, as api.Call numbers them). Without generation (`max_tokens: 0`) they
    are the whole answer: finish "length", the prompt tokens counted."""
    from lmforge.serve.api import Choices

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

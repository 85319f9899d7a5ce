"""Rollouts for RL: a group of G responses per prompt, sampled through the engine's batched KV-cache session.

One `GenerationSession` holds the whole batch (prompts x G rows, `params.n = G`), so every decode step is one
batched forward over the cache, never a Python loop over the full sequence. The assistant may call tools exactly
as in `ChatSession`: a row stops at `<|tool_call_end|>`, the tool runs, and `<|tool_output|>OUTPUT
<|tool_output_end|>` is queued into the same cache (`session.queue_forced`: one token a step for the rows that
called, inside the decode forward the other rows run anyway, so a call costs no extra forward and no padding slots
in the other rows), after which those rows sample on. Tool outputs are forced tokens: they are recorded with
`sampled = 0` and never enter the loss.

What is kept is the sampled token ids themselves (never text to re-tokenise), the engine's log-prob of each sampled
token under the distribution it was drawn from (temperature, top-k, top-p applied), and how each response ended.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lmforge.inference.sampling import SamplingParams
from lmforge.inference.tools import Tool, run_tool
from lmforge.tokenizer.chat_format import ChatTokens, parse_assistant, parse_tool_call


@dataclass
class Rollout:
    """One response: the prompt's ids, the response's ids (sampled and forced), which were sampled, the engine's
    log-prob of every response token (0.0 where forced) and how it ended ("stop" at `<|end|>`, "length" out of
    budget, "context" out of cache)."""

    prompt_ids: list[int]
    response_ids: list[int] = field(default_factory=list)
    sampled: list[int] = field(default_factory=list)  # 1 = sampled by the policy (trained on), 0 = forced
    engine_logprobs: list[float] = field(default_factory=list)
    finish_reason: str = "length"
    tool_calls: int = 0
    completion: str = ""  # the final assistant text, parsed from the ids (for rewards that read text)
    ended: bool = False  # the turn closed with `<|end|>`
    example: dict[str, Any] = field(default_factory=dict)  # the prompt's record (e.g. the expected answer)

    def add(self, ids: list[int], logprobs: list[float] | None) -> None:
        """Append sampled tokens (with their log-probs) or, with `logprobs=None`, forced ones."""
        self.response_ids.extend(ids)
        self.sampled.extend([0 if logprobs is None else 1] * len(ids))
        self.engine_logprobs.extend([0.0] * len(ids) if logprobs is None else logprobs)


def _tool_feed(tok: Any, tokens: ChatTokens, tools: dict[str, Tool], rollout: Rollout, max_tool_calls: int,
               max_output_tokens: int) -> list[int]:
    """The forced tokens that answer the call the response just closed (as `ChatSession` builds them)."""
    ids = rollout.response_ids
    opened = len(ids) - 1 - ids[::-1].index(tokens.tool_call)
    name, arguments = parse_tool_call(tok.decode(ids[opened + 1:-1]))
    rollout.tool_calls += 1
    if rollout.tool_calls > max_tool_calls:
        output = f"error: more than {max_tool_calls} tool calls in one answer"
    else:
        output = run_tool(tools, name, arguments)
    out_ids = tok.encode(output)
    if len(out_ids) > max_output_tokens:
        out_ids = out_ids[:max_output_tokens] + tok.encode(" [cut]")
    return [tokens.tool_output, *out_ids, tokens.tool_output_end]


def _wants_tool(rollout: Rollout, tokens: ChatTokens, finish: str) -> bool:
    """Whether the segment just finished stopped on a well-formed `<|tool_call_end|>` (a call was opened)."""
    ids = rollout.response_ids
    return (finish == "stop" and bool(ids) and ids[-1] == tokens.tool_call_end
            and tokens.tool_call in ids[:-1])


def rollout_group(engine: Any, prompts: list[list[int]], examples: list[dict[str, Any]], params: SamplingParams,
                  tools: dict[str, Tool], max_tool_calls: int = 2, max_tool_output_tokens: int = 32
                  ) -> list[Rollout]:
    """`params.n` responses for every prompt, in one engine session; rows ordered prompt by prompt (row
    i * n + j is sample j of prompt i), each a `Rollout`."""
    tok = engine.tokenizer
    tokens = ChatTokens.of(tok)
    params = SamplingParams(**{**vars(params), "stop_token_ids": [tokens.end, tokens.bos, tokens.tool_call_end]})
    n = params.n
    rows = [Rollout(list(p), example=examples[i]) for i, p in enumerate(prompts) for _ in range(n)]
    session = engine.session(prompts, params, release_finished=True)  # a finished row with no call is final
    while not session.done:
        events = session.step()
        feeds: list[list[int]] = [[] for _ in rows]
        segments = session.completions()
        for i, event in enumerate(events):
            if event is None or event.finish_reason is None:
                continue
            seg = segments[i]
            rows[i].add(seg.token_ids, seg.logprobs)
            rows[i].finish_reason = event.finish_reason
            if _wants_tool(rows[i], tokens, event.finish_reason) and rows[i].tool_calls <= max_tool_calls:
                feeds[i] = _tool_feed(tok, tokens, tools, rows[i], max_tool_calls, max_tool_output_tokens)
        # Calls are answered the step they are made, and the outputs are queued: each enters the cache one token a
        # step, in the decode forward the other rows run anyway (a row out of context ends with "context").
        if any(feeds):
            session.queue_forced(feeds)
            for i, feed in enumerate(feeds):
                if feed:
                    rows[i].add(feed, None)
    for r in rows:
        turn = parse_assistant(tok, r.response_ids)
        r.completion, r.ended = turn["content"], turn["ended"]
        if r.ended:
            r.finish_reason = "stop"
        elif r.finish_reason == "stop":  # stopped on <|bos|> or a stray call end: not a finished answer
            r.finish_reason = "unfinished"
    return rows

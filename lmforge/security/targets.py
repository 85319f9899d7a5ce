"""Where attack prompts go: an lmforge checkpoint through the engine, or an OpenAI-compatible endpoint on loopback.

Both take a list of conversations and give back one answer text each (or an error string: a case that got no
answer is reported as such and left out of the rates, never counted as a refusal). The engine target batches many
prompts per engine call; the endpoint target keeps at most `concurrency` requests in flight, each with its own
timeout, and stops sending once the scan's time budget is spent. It talks only to this machine: a scan is an
attack, and pointing it at someone else's server is not this tool's business.
"""

from __future__ import annotations

import ipaddress
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from lmforge.utils import LmforgeError


@dataclass
class Answer:
    text: str
    error: str = ""  # why there is no answer ("" when there is one)


class EngineTarget:
    """Greedy answers from a model, `batch_size` conversations per engine batch; a conversation longer than the
    context (minus the answer's room) is reported as skipped rather than cut, since a cut prompt is another attack.
    No tool runs during a scan: an answer ends at a tool call the model makes (`<|tool_call_end|>`), and the call's
    text counts as part of the answer (the injection suites put the untrusted text in the conversation instead)."""

    def __init__(self, engine: Any, max_tokens: int, batch_size: int) -> None:
        from lmforge.tokenizer.chat_format import ChatTokens

        self.engine, self.max_tokens, self.batch_size = engine, max_tokens, batch_size
        self.tok = engine.tokenizer
        self.special = ChatTokens.of(self.tok)
        self.name = "checkpoint"

    def answer(self, conversations: list[list[dict[str, Any]]]) -> list[Answer]:
        from lmforge.inference.sampling import SamplingParams
        from lmforge.tokenizer.chat_format import render_for_completion

        room = self.engine.model.config.block_size - self.max_tokens
        prompts = [render_for_completion(self.tok, msgs) for msgs in conversations]
        answers: list[Answer | None] = [
            Answer("", f"prompt of {len(p)} tokens leaves no room in the {room + self.max_tokens}-token context")
            if len(p) > room else None for p in prompts]
        todo = [i for i, a in enumerate(answers) if a is None]
        t = self.special
        params = SamplingParams(temperature=0.0, max_tokens=self.max_tokens,
                                stop_token_ids=[t.end, t.bos, t.tool_call_end])
        for start in range(0, len(todo), self.batch_size):
            rows = todo[start:start + self.batch_size]
            done = self.engine.generate([prompts[i] for i in rows], params)
            for i, (completion,) in zip(rows, done):
                answers[i] = Answer(self.tok.decode([x for x in completion.token_ids if x not in t.all()]))
        return [a for a in answers if a is not None]


LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost"}


def check_loopback(url: str) -> str:
    """The endpoint's base URL if it is http(s) on this machine; any other host is refused, naming --endpoint."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise LmforgeError(f"--endpoint must be an http:// or https:// URL, got {url!r}")
    host = parts.hostname
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host.lower() in LOOPBACK_NAMES
    if not loopback:
        raise LmforgeError(f"--endpoint {url!r}: only loopback hosts (127.0.0.0/8, ::1, localhost) may be scanned")
    return url.rstrip("/")


def to_openai(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """lmforge schema messages -> OpenAI chat messages (tool calls as functions, tool answers by call id)."""
    out: list[dict[str, Any]] = []
    ids: list[str] = []
    for msg in messages:
        if msg["role"] == "assistant" and msg.get("tool_calls"):
            calls = []
            for call in msg["tool_calls"]:
                ids.append(f"call_{len(ids)}")
                calls.append({"id": ids[-1], "type": "function",
                              "function": {"name": call["name"], "arguments": call["arguments"]}})
            out.append({"role": "assistant", "content": msg.get("content") or None, "tool_calls": calls})
        elif msg["role"] == "tool":
            out.append({"role": "tool", "tool_call_id": ids.pop(0), "content": msg["content"]})
        else:
            out.append({"role": msg["role"], "content": msg["content"]})
    return out


class EndpointTarget:
    """`POST {url}/v1/chat/completions`, greedy, at most `concurrency` at once, each within `request_timeout`
    seconds; requests not started before `time_budget` seconds have passed are reported as not sent."""

    def __init__(self, url: str, model: str, max_tokens: int, concurrency: int, request_timeout: float,
                 time_budget: float, api_key: str | None = None) -> None:
        self.url = check_loopback(url)
        self.model, self.max_tokens = model, max_tokens
        self.concurrency, self.request_timeout, self.time_budget = concurrency, request_timeout, time_budget
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.name = f"endpoint {self.url}"

    def _one(self, client: Any, messages: list[dict[str, Any]], deadline: float) -> Answer:
        import httpx

        if time.monotonic() > deadline:
            return Answer("", "not sent: the scan's time budget was spent")
        body = {"model": self.model, "messages": to_openai(messages), "temperature": 0.0,
                "max_tokens": self.max_tokens}
        try:
            reply = client.post(f"{self.url}/v1/chat/completions", json=body, headers=self.headers)
        except httpx.HTTPError as e:
            return Answer("", f"{type(e).__name__}: {e}")
        if reply.status_code != 200:
            return Answer("", f"HTTP {reply.status_code}: {reply.text[:200]}")
        try:
            return Answer(reply.json()["choices"][0]["message"]["content"] or "")
        except (ValueError, KeyError, IndexError, TypeError) as e:
            return Answer("", f"not an OpenAI chat response ({type(e).__name__}: {e})")

    def answer(self, conversations: list[list[dict[str, Any]]]) -> list[Answer]:
        import httpx

        limits = httpx.Limits(max_connections=self.concurrency)
        with httpx.Client(timeout=self.request_timeout, limits=limits, trust_env=False) as client, \
                ThreadPoolExecutor(self.concurrency) as pool:
            deadline = time.monotonic() + self.time_budget  # the budget is for requests, not for setting up
            return list(pool.map(lambda msgs: self._one(client, msgs, deadline), conversations))

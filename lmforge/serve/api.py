"""The HTTP server: OpenAI's completions and chat API over the scheduler, plus tokenize, health, metrics and pages.

Routes: `GET /v1/models`, `POST /v1/completions`, `POST /v1/chat/completions` (`stream: true` answers with
server-sent events, `data: {chunk}` lines and a final `data: [DONE]`, the shape the official `openai` client
parses; with `serve --tools` the server runs the model's tool calls and streams them, see `tool_loop.py`),
`POST /tokenize` and `/detokenize` (llama.cpp's server names), `GET /health`, `GET /metrics` (Prometheus
text), and the static pages under `/pages/` (`lmforge/serve/static/`). `echo` on completions: `echo.py`.

Robustness is by construction rather than by care at each route: a body is read with a size cap before parsing;
every field is checked in `protocol.py`; every refusal is an `ApiError` rendered in OpenAI's error shape; anything
else that escapes a handler is logged and answered as a 500 in the same shape, and the scheduler's thread survives
a failing request, so no request can stop the server. A streaming client that disconnects cancels its request
(Starlette cancels the response task; `finally` tells the scheduler), which frees its slot at the next step; a
waiting non-streaming client is checked every `DISCONNECT_POLL_S`.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import secrets
import time
from pathlib import Path
from typing import Any, AsyncIterator

from lmforge.serve.protocol import (ApiError, GenerationSpec, chat_logprob, completion_logprobs, parse_body,
                                    tool_call_delta, usage)
from lmforge.tokenizer.chat_format import ChatTokens
from lmforge.serve.scheduler import QueueFull, Scheduler
from lmforge.utils import LmforgeError

STATIC = Path(__file__).parent / "static"
DISCONNECT_POLL_S = 0.5


class Call:
    """One API request's prompts in the scheduler, their events gathered on one asyncio queue as
    (choice index, kind, payload); choice i * n + j is sample j of prompt i."""

    def __init__(self, scheduler: Scheduler, spec: GenerationSpec) -> None:
        loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[tuple[int, str, Any]] = asyncio.Queue()
        self.requests: list[Any] = []
        self.open = len(spec.prompts)
        n = spec.params.n
        try:
            for i, prompt in enumerate(spec.prompts):
                sink = scheduler.loop_sink(loop, self.queue.put_nowait, i * n)
                self.requests.append(scheduler.submit(prompt, spec.params, sink, prefix_len=spec.prefix_len,
                                                      top_logprobs=spec.top_logprobs, stop_ids=spec.stop_ids))
        except QueueFull as e:
            self.cancel()
            raise ApiError(429, str(e), code="queue_full", kind="rate_limit_error") from None
        except LmforgeError as e:
            self.cancel()
            raise ApiError(400, str(e), param="prompt") from None

    async def next(self, timeout: float) -> tuple[int, str, Any] | None:
        """The next event, or None after `timeout` seconds, or after the last request ended."""
        if self.open == 0:
            return None
        try:  # an event already there is taken without wait_for's task and timer
            item = self.queue.get_nowait() if not self.queue.empty() else await asyncio.wait_for(self.queue.get(),
                                                                                                    timeout)
        except asyncio.TimeoutError:
            return (-1, "wait", None)
        if item[1] in ("done", "error"):
            self.open -= 1
        return item

    def cancel(self) -> None:
        for r in self.requests:
            r.cancel()


class Choices:
    """What a call produced so far, per choice: text, token ids, log-prob entries, finish reason; and its usage.

    call_tokens: (`<|tool_call|>`, `<|tool_call_end|>`) ids when the request has tools: from a call's first token
    on, a choice's text is the call's, not the answer's, and is not shown; its end makes the finish "tool_calls".
    """

    def __init__(self, count: int, call_tokens: tuple[int, int] | None = None) -> None:
        self.text = [""] * count
        self.ids: list[list[int]] = [[] for _ in range(count)]
        self.logprobs: list[list[tuple[int, float, list[tuple[int, float]]]]] = [[] for _ in range(count)]
        self.finish: list[str | None] = [None] * count
        self.in_call = [False] * count
        self.tool_events: list[list[Any]] = [[] for _ in range(count)]  # calls the server ran (tool_loop.ToolEvent)
        self.call_tokens = call_tokens
        self.prompt_tokens = self.completion_tokens = 0
        self.offset0 = [0] * count  # text_offset of each choice's first log-prob entry (echo.py sets it)

    def add(self, base: int, kind: str, payload: Any, want_logprobs: bool) -> tuple[int, str, list, str | None]:
        """Record one event; returns (choice, new text, new log-prob entries, finish reason) for a token."""
        if kind == "done":
            self.prompt_tokens += payload.prompt_tokens
            self.completion_tokens += payload.completion_tokens
            return -1, "", [], None
        if kind == "tool":  # a call the server ran: the segment's usage, its output in the ids, the answer goes on
            self.add(base, "done", payload.usage, want_logprobs)
            self.ids[base] += payload.forced
            self.in_call[base] = False
            self.tool_events[base].append(payload)
            self.finish[base] = payload.finish
            return base, "", [], payload.finish
        index, event = base + payload.index, payload.event
        entries = [(event.token_id, payload.logprob, payload.top)] if want_logprobs and event.token_id >= 0 else []
        if event.token_id >= 0:
            self.ids[index].append(event.token_id)
        if self.call_tokens is not None and event.token_id == self.call_tokens[0]:
            self.in_call[index] = True
        text = "" if self.in_call[index] else event.text
        self.text[index] += text
        self.logprobs[index] += entries
        finish = None if event.finish_reason is None else ("length" if event.finish_reason != "stop" else "stop")
        if finish == "stop" and self.in_call[index] and event.token_id == self.call_tokens[1]:
            finish = "tool_calls"
        self.finish[index] = finish
        return index, text, entries, finish


class Shape:
    """How one endpoint dresses its output: `text_completion` or `chat.completion` objects."""

    def __init__(self, chat: bool, model: str, tok: Any, as_ids: bool = False) -> None:
        self.chat, self.model, self.tok, self.as_ids = chat, model, tok, as_ids
        self.id = ("chatcmpl-" if chat else "cmpl-") + secrets.token_hex(12)
        self.created = int(time.time())

    def envelope(self, choices: list[dict[str, Any]], stream: bool) -> dict[str, Any]:
        kind = ("chat.completion" if self.chat else "text_completion") + (".chunk" if stream and self.chat else "")
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model, "choices": choices}

    def logprobs(self, entries: list, offset: int) -> dict[str, Any] | None:
        if not entries:
            return None
        if self.chat:
            return {"content": [chat_logprob(self.tok, t, lp, top) for t, lp, top in entries]}
        return completion_logprobs(self.tok, entries, offset, self.as_ids)

    def opening(self, count: int) -> list[dict[str, Any]]:
        """The first chunk's choices: chat announces the assistant's role."""
        if not self.chat:
            return []
        return [{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}
                for i in range(count)]

    def piece(self, index: int, text: str, entries: list, offset: int, finish: str | None,
              got: Choices) -> dict[str, Any]:
        lp = self.logprobs(entries, offset)
        if self.chat:
            delta: dict[str, Any] = {"content": text} if text or finish is None else {}
            if finish == "tool_calls":
                delta["tool_calls"] = tool_call_delta(self.tok, got.ids[index])
            return {"index": index, "delta": delta, "logprobs": lp, "finish_reason": finish}
        return {"index": index, "text": text, "logprobs": lp, "finish_reason": finish}

    def tool_pieces(self, index: int, event: Any, position: int) -> list[dict[str, Any]]:
        """A call the server ran (the `position`-th of the answer), as two streamed choices: the call (OpenAI's
        `tool_calls` delta), then its output (`delta.tool_result`, an lmforge field) and, when no room is left to
        continue, the finish."""
        call = {"index": position, **event.call_json()}
        return [{"index": index, "delta": {"tool_calls": [call]}, "logprobs": None, "finish_reason": None},
                {"index": index, "delta": {"tool_result": event.result_json()}, "logprobs": None,
                 "finish_reason": event.finish}]

    def whole(self, got: Choices) -> dict[str, Any]:
        choices = []
        for i, (text, entries, finish) in enumerate(zip(got.text, got.logprobs, got.finish)):
            if self.chat:
                message: dict[str, Any] = {"role": "assistant", "content": text}
                if got.tool_events[i]:  # calls the server ran (tool_loop.py)
                    message["tool_calls"] = [e.call_json() for e in got.tool_events[i]]
                    message["tool_results"] = [e.result_json() for e in got.tool_events[i]]
                elif finish == "tool_calls":
                    calls = [{k: v for k, v in c.items() if k != "index"} for c in tool_call_delta(self.tok, got.ids[i])]
                    message = {"role": "assistant", "content": text or None, "tool_calls": calls}
                choices.append({"index": i, "message": message, "logprobs": self.logprobs(entries, 0),
                                "finish_reason": finish})
            else:
                choices.append({"index": i, "text": text, "logprobs": self.logprobs(entries, got.offset0[i]),
                                "finish_reason": finish})
        return {**self.envelope(choices, False), "usage": usage(got.prompt_tokens, got.completion_tokens)}


def call_tokens(tok: Any, spec: GenerationSpec) -> tuple[int, int] | None:
    if not spec.tools and not spec.server_tools:
        return None
    t = ChatTokens.of(tok)
    return t.tool_call, t.tool_call_end


def sse(data: Any) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


async def stream_events(call: Call, spec: GenerationSpec, shape: Shape) -> AsyncIterator[str]:
    """The SSE body of a streaming call; cancels the call when the client goes away (the task is cancelled)."""
    count = len(spec.prompts) * spec.params.n
    got = Choices(count, call_tokens(shape.tok, spec))
    try:
        if shape.chat:
            yield sse(shape.envelope(shape.opening(count), True))
        while (item := await call.next(DISCONNECT_POLL_S)) is not None:
            base, kind, payload = item
            if kind == "wait":
                continue
            if kind == "error":
                yield sse(ApiError(500, payload, code="generation_failed", kind="server_error").body())
                break
            offset = len(got.text[base + payload.index]) if kind == "token" else 0
            index, text, entries, finish = got.add(base, kind, payload, spec.top_logprobs is not None)
            if kind == "tool":
                for piece in shape.tool_pieces(index, payload, len(got.tool_events[index]) - 1):
                    yield sse(shape.envelope([piece], True))
            elif index >= 0 and (text or entries or finish):
                yield sse(shape.envelope([shape.piece(index, text, entries, offset, finish, got)], True))
        if spec.include_usage:
            yield sse({**shape.envelope([], True), "usage": usage(got.prompt_tokens, got.completion_tokens)})
        yield "data: [DONE]\n\n"
    finally:
        call.cancel()


async def collect(call: Call, spec: GenerationSpec, shape: Shape, is_disconnected: Any,
                  got: Choices | None = None) -> dict[str, Any] | None:
    """The whole answer of a non-streaming call; None if the client left first (its requests are cancelled).
    got: what the answers start with (the echoed prompts, echo.py)."""
    got = got or Choices(len(spec.prompts) * spec.params.n, call_tokens(shape.tok, spec))
    try:
        while (item := await call.next(DISCONNECT_POLL_S)) is not None:
            base, kind, payload = item
            if kind == "wait":
                if await is_disconnected():
                    return None
                continue
            if kind == "error":
                raise ApiError(500, payload, code="generation_failed", kind="server_error")
            got.add(base, kind, payload, spec.top_logprobs is not None)
        return shape.whole(got)
    finally:
        call.cancel()


def check_key(authorization: str | None, api_key: str | None) -> None:
    if api_key is None:
        return
    scheme, _, given = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), api_key.encode()):
        raise ApiError(401, "a valid API key is required: send it as 'Authorization: Bearer KEY'",
                       code="invalid_api_key")


async def read_body(request: Any, limit: int) -> dict[str, Any]:
    """The JSON body, refused (413) as soon as it passes `limit` bytes, before it is all received or parsed."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"the request body is over {limit} bytes", code="body_too_large")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"the request body is over {limit} bytes", code="body_too_large")
        chunks.append(chunk)
    return parse_body(b"".join(chunks))

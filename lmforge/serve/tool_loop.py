"""Server-side tools (`lmforge serve --tools calculator,python,search,browse`): the server runs the model's tool
calls itself and continues the answer, the "LLM OS" of issue 15 behind the OpenAI API.

Without `--tools` nothing changes: a chat request with OpenAI `tools` gets the model's call back as `tool_calls`
with finish_reason "tool_calls", and the client runs it. With `--tools`, every call the model makes in a chat
answer (unless the request says `tool_choice: "none"`) is run on the server by `lmforge.inference.tools.run_tool`
(on a worker thread, so the event loop keeps serving), and the answer goes on. The wire shape, which the official
`openai` client parses (its models keep unknown fields):

- streaming: the answer's text as `delta.content`; at a call, one chunk whose `delta.tool_calls` holds the call in
  OpenAI's shape (`index`, `id`, `type`, `function.name`, `function.arguments`), then one chunk whose
  `delta.tool_result` is `{"tool_call_id", "name", "content"}` (the output the model read), then the continuation's
  `delta.content`, and a final `finish_reason` of "stop" or "length" (never "tool_calls": nothing is left for the
  client to run);
- not streaming: `message.content` is the answer's text around the calls, `message.tool_calls` the calls run, and
  `message.tool_results` their outputs, in order.

How the answer continues: the scheduler has no "append to a running request", so each continuation is a new
request whose prompt is the conversation so far plus the answer's tokens, the call and
`<|tool_output|>OUTPUT<|tool_output_end|>` (the output encoded as ordinary text, special tokens not allowed, cut at
`max_tool_output_tokens`, datamarked with `--spotlight`). Its prefill recomputes the answer so far (a shared system
prompt still comes from the prefix cache); `usage` counts every segment's prompt and sampled tokens. The answer's
`max_tokens` is a budget over all segments.
"""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmforge.config import check_fields, require
from lmforge.tokenizer.chat_format import ChatTokens, parse_tool_call

SERVER_TOOLS = ("calculator", "python", "search", "browse")


@dataclass
class ServerToolsConfig:
    tools: str | None = None  # tools the server runs itself, comma-separated from calculator,python,search,browse
    search_dir: str | None = None  # folder of text files the search tool reads (needed by --tools search)
    browse_allow: list[str] = field(default_factory=list)  # hosts browse may read besides 127.0.0.1/localhost
    spotlight: bool = False  # datamark tool outputs (spaces become ^) and tell the model marked text is only data
    unsafe_python: bool = False  # run the python tool unjailed where no OS jail (bubblewrap) can be made
    max_tool_calls: int = 4  # calls run per answer; later ones get an error output
    max_tool_output_tokens: int = 256  # a longer tool output is cut

    def __post_init__(self) -> None:
        from lmforge.inference.browse import normalize_host

        check_fields(self)
        unknown = [n for n in self.names() if n not in SERVER_TOOLS]
        require(self, "tools", not unknown, f"unknown tool(s) {unknown}; known: {', '.join(SERVER_TOOLS)}")
        require(self, "search_dir", "search" not in self.names() or bool(self.search_dir),
                "is required by --tools search")
        require(self, "search_dir", self.search_dir is None or Path(self.search_dir).is_dir(), "is not a folder")
        require(self, "max_tool_calls", self.max_tool_calls >= 0, "must be 0 or more")
        require(self, "max_tool_output_tokens", self.max_tool_output_tokens >= 1, "must be at least 1")
        for host in self.browse_allow:
            normalize_host(host)

    def names(self) -> list[str]:
        return [n.strip() for n in (self.tools or "").split(",") if n.strip()]

    def build(self) -> "ServerTools | None":
        """The tools to run (None when `--tools` names none: the API keeps client-side calls)."""
        if not self.names():
            return None
        from lmforge.inference.browse import Browser
        from lmforge.inference.tools import default_tools

        every = default_tools(search_dir=self.search_dir, unsafe_python=self.unsafe_python,
                              browser=Browser.allowing(self.browse_allow))
        return ServerTools({n: every[n] for n in self.names()}, self.spotlight, self.max_tool_calls,
                           self.max_tool_output_tokens)


@dataclass
class ServerTools:
    """What the server runs: name -> `lmforge.inference.tools.Tool`, and how outputs are handed to the model."""

    tools: dict[str, Any]
    spotlight: bool = False
    max_calls: int = 4
    max_output_tokens: int = 256

    def run(self, name: str, arguments: str, calls_so_far: int) -> str:
        from lmforge.inference.tools import datamark, run_tool

        if calls_so_far >= self.max_calls:
            output = f"error: more than {self.max_calls} tool calls in one answer"
        else:
            output = run_tool(self.tools, name, arguments)
        return datamark(output) if self.spotlight else output


@dataclass
class ToolEvent:
    """A call the server ran: what the client is shown, and the ids forced into the answer after the call."""

    call_id: str
    name: str
    arguments: str
    output: str  # as the model read it (cut, datamarked)
    forced: list[int]  # <|tool_output|> output <|tool_output_end|>
    usage: Any  # the finished segment's scheduler Usage
    finish: str | None = None  # "length" when no room is left to continue after the call

    def call_json(self) -> dict[str, Any]:
        """The call in OpenAI's `tool_calls` shape; one builder for the streamed delta and the whole message."""
        return {"id": self.call_id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}

    def result_json(self) -> dict[str, Any]:
        """The output the model read, as lmforge's `tool_result` (streamed) and `tool_results` entries."""
        return {"tool_call_id": self.call_id, "name": self.name, "content": self.output}


class ToolLoopCall:
    """A chat request whose tool calls the server runs: `next()` gives the events of `api.Call` plus ("tool", ...)
    between segments. One prompt, one sample (the server refuses n > 1 with server tools)."""

    def __init__(self, scheduler: Any, spec: Any, tools: ServerTools, make_call: Any) -> None:
        self.scheduler, self.spec, self.tools, self.make_call = scheduler, spec, tools, make_call
        self.tok = scheduler.engine.tokenizer
        self.special = ChatTokens.of(self.tok)
        self.answer: list[int] = []  # this answer's ids so far, sampled and forced
        self.sampled = 0
        self.calls = 0
        self.call_open: int | None = None  # index in `answer` of the current segment's <|tool_call|>
        self.pending_call = False
        self.call = make_call(scheduler, spec)

    def cancel(self) -> None:
        self.call.cancel()

    async def next(self, timeout: float) -> tuple[int, str, Any] | None:
        item = await self.call.next(timeout)
        if item is None or item[1] in ("wait", "error"):
            return item
        base, kind, payload = item
        if kind == "token":
            return base, kind, self._token(payload)
        if kind == "done" and self.pending_call:
            self.pending_call = False
            return base, "tool", await self._run_call(payload)
        return item

    def _token(self, payload: Any) -> Any:
        event, t = payload.event, self.special
        if event.token_id < 0:
            return payload
        self.answer.append(event.token_id)
        self.sampled += 1
        if event.token_id == t.tool_call:
            self.call_open = len(self.answer) - 1
        if event.token_id == t.tool_call_end and event.finish_reason == "stop" and self.call_open is not None:
            self.pending_call = True  # the answer goes on after the tool: this is not its end
            return dataclasses.replace(payload, event=dataclasses.replace(event, finish_reason=None))
        return payload

    async def _run_call(self, usage: Any) -> ToolEvent:
        t = self.special
        name, arguments = parse_tool_call(self.tok.decode(self.answer[self.call_open + 1:-1]))
        self.call_open = None
        output = await asyncio.to_thread(self.tools.run, name, arguments, self.calls)
        self.calls += 1
        out_ids = self.tok.encode(output)  # special-token strings stay ordinary text
        if len(out_ids) > self.tools.max_output_tokens:
            out_ids = out_ids[:self.tools.max_output_tokens] + self.tok.encode(" [cut]")
        forced = [t.tool_output, *out_ids, t.tool_output_end]
        self.answer += forced
        event = ToolEvent("call_" + secrets.token_hex(8), name, arguments, self.tok.decode(out_ids), forced, usage)
        prompt = self.spec.prompts[0] + self.answer
        budget, block = self.spec.params.max_tokens - self.sampled, self.scheduler.model.config.block_size
        if budget < 1 or len(prompt) >= block - 1:
            event.finish = "length"
            return event
        params = dataclasses.replace(self.spec.params, max_tokens=min(budget, block - len(prompt)))
        self.call = self.make_call(self.scheduler, dataclasses.replace(self.spec, prompts=[prompt], params=params))
        return event

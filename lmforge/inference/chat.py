"""Chat with tools: the assistant's turn as a loop of generation and tool calls (the `lmforge chat` verb, in
`cli.py`, is a terminal around `ChatSession`).

One assistant turn (`ChatSession.respond`): render the conversation with `render_for_completion`, open an engine
session that stops at `<|end|>` or `<|tool_call_end|>`, and step it. On `<|tool_call_end|>` the call's text is
parsed (`name\\narguments`), the tool runs (`lmforge.inference.tools.run_tool`, which turns every failure into
"error: ..." text), and `<|tool_output|>OUTPUT<|tool_output_end|>` is appended into the same KV cache; decoding
then continues where it stopped, until `<|end|>`, the token budget or the context runs out. The turn's tokens are
parsed back into schema messages (assistant / tool / assistant ...) and added to the history.

History longer than the context is cut from the oldest turns (the system prompt stays while anything else can
go). The model then answers without those turns, which a user would otherwise not know: each time the cut reaches
further, the turn starts with a "notice" event saying how many messages the model no longer sees (the terminal
chat prints it), and the turn's result carries `trimmed`, the count of history messages left out.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from lmforge.inference.sampling import SamplingParams
from lmforge.tokenizer.chat_format import ChatTokens, parse_assistant, parse_tool_call, render_for_completion
from lmforge.utils import LmforgeError, atomic_write

Messages = list[dict[str, Any]]


@dataclass
class TurnEvent:
    """What the chat loop reports while a turn runs: text to show, a tool call, or a tool's output."""

    kind: str  # "text" | "tool_call" | "tool_output" | "notice" (history trimmed to fit the context)
    text: str
    name: str = ""


@dataclass
class ChatConfig:
    temperature: float = 0.7
    top_k: int = 50
    top_p: float = 0.95
    max_tokens: int = 200  # per generated segment (a tool output starts a new segment)
    max_tool_calls: int = 4  # per turn; further calls get an error output instead of running
    max_tool_output_tokens: int = 96  # a long output is cut so the turn can go on in a small context
    seed: int | None = None
    spotlight: bool = False  # datamark tool outputs and tell the model marked text is data (tools.datamark)

    def __post_init__(self) -> None:
        """Refuse bad values when the chat starts, not at its first turn: the sampling fields are checked by the
        `SamplingParams` they become, the tool limits here."""
        self.sampling_params(stop_token_ids=[])
        if self.max_tool_calls < 0:
            raise LmforgeError(f"max_tool_calls must be 0 or more, got {self.max_tool_calls}")
        if self.max_tool_output_tokens < 1:
            raise LmforgeError(f"max_tool_output_tokens must be at least 1, got {self.max_tool_output_tokens}")

    def sampling_params(self, stop_token_ids: list[int]) -> SamplingParams:
        """The sampling of one generated segment, stopping at `stop_token_ids`."""
        return SamplingParams(temperature=self.temperature, top_k=self.top_k, top_p=self.top_p,
                              max_tokens=self.max_tokens, seed=self.seed, stop_token_ids=stop_token_ids)


@dataclass
class ChatSession:
    """A conversation with a model and its tools; `respond(text)` runs one assistant turn."""

    engine: Any  # lmforge.inference.engine.Engine (with a tokenizer)
    tools: dict[str, Any] = field(default_factory=dict)  # name -> lmforge.inference.tools.Tool; {} = no tools
    system: str | None = None
    config: ChatConfig = field(default_factory=ChatConfig)
    messages: Messages = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.engine.tokenizer is None:
            raise LmforgeError("chat needs an engine with a tokenizer")
        self.tok = self.engine.tokenizer
        self.ids = ChatTokens.of(self.tok)
        self.reset()

    def reset(self) -> None:
        self.messages = [{"role": "system", "content": self.system}] if self.system else []
        self.trimmed = 0  # history messages the last prompt left out (the notice is shown when this grows)

    def save(self, path: str | Path) -> None:
        with atomic_write(path) as f:
            json.dump({"messages": self.messages}, f, indent=2, ensure_ascii=False)
            f.write("\n")

    def _prompt(self, messages: Messages, room: int) -> tuple[list[int], int, bool]:
        """Rendered history that leaves `room` tokens of context, dropping the oldest turns if needed; returns the
        ids, how many messages after the system prompt were dropped, and whether the system prompt was. With
        spotlighting the rendered system prompt starts with its instruction (the saved history keeps the user's)."""
        block = self.engine.model.config.block_size
        if self.config.spotlight:
            from lmforge.inference.tools import spotlight_system

            own = messages[0]["content"] if messages and messages[0]["role"] == "system" else None
            messages = [{"role": "system", "content": spotlight_system(own)}] + messages[1 if own is not None else 0:]
        head = messages[:1] if messages and messages[0]["role"] == "system" else []
        body = messages[len(head):]
        dropped = 0
        while True:
            ids = render_for_completion(self.tok, head + body)
            if len(ids) + room <= block:
                return ids, dropped, bool(messages[:1] and messages[0]["role"] == "system" and not head)
            starts = [i for i, m in enumerate(body) if m["role"] == "user" and i > 0]
            if not starts:
                if head:  # even the system prompt must go
                    head = []
                    continue
                raise LmforgeError(f"the message is too long for the model's context ({len(ids)} of {block} tokens)")
            dropped += starts[0]
            body = body[starts[0]:]

    def _trim_notice(self, dropped: int, system_dropped: bool) -> str | None:
        """The note for a prompt that left out `dropped` older messages, when the cut reaches further than the
        last turn's (None otherwise: the user has already been told)."""
        total = dropped + system_dropped
        grew, self.trimmed = total > self.trimmed, total
        if not grew:
            return None
        system = " and the system prompt" if system_dropped else ""
        return (f"history trimmed: the model no longer sees the {dropped} oldest message(s){system}, which do not fit "
                f"its {self.engine.model.config.block_size}-token context (/reset starts over)")

    def respond(self, user_text: str | None, on_event: Callable[[TurnEvent], None] | None = None,
                prefill: str = "") -> dict[str, Any]:
        """Run one assistant turn after `user_text` (None: continue from the history as it is).

        `prefill` starts the assistant's answer with fixed text (the model continues it). Returns the parsed turn
        (`chat_format.parse_assistant`) plus "finish_reason" and "ids", and appends its messages to the history.
        """
        from lmforge.inference.tools import datamark, run_tool

        emit = on_event or (lambda e: None)
        cfg, t = self.config, self.ids
        history = self.messages + ([{"role": "user", "content": user_text}] if user_text is not None else [])
        if prefill:
            history = history + [{"role": "assistant", "content": prefill}]
        prompt, dropped, system_dropped = self._prompt(
            history, room=min(cfg.max_tokens, self.engine.model.config.block_size // 4))
        notice = self._trim_notice(dropped, system_dropped)
        if notice is not None:
            emit(TurnEvent("notice", notice))
        turn_ids: list[int] = self.tok.encode(prefill) if prefill else []
        session = self.engine.session(prompt, cfg.sampling_params(stop_token_ids=[t.end, t.bos, t.tool_call_end]))
        calls, finish = 0, "length"
        while True:
            in_call = False
            segment_start = len(turn_ids)
            for event in iter(lambda: session.step()[0], None):
                if event.token_id >= 0:
                    turn_ids.append(event.token_id)
                if event.token_id == t.tool_call:
                    in_call = True
                elif not in_call and event.text and event.token_id not in t.all():
                    emit(TurnEvent("text", event.text))
                if event.finish_reason is not None:
                    finish = event.finish_reason
                    break
            last = turn_ids[-1] if len(turn_ids) > segment_start else None
            if last != t.tool_call_end or finish != "stop":
                if last == t.end:
                    finish = "end"
                break
            if not in_call:  # <|tool_call_end|> without <|tool_call|>: nothing to run, the turn stops here
                finish = "stray_tool_call_end"
                break
            opened = len(turn_ids) - 1 - turn_ids[::-1].index(t.tool_call)
            name, arguments = parse_tool_call(self.tok.decode(turn_ids[opened + 1:-1]))
            emit(TurnEvent("tool_call", arguments, name))
            calls += 1
            if not self.tools:
                output = "error: tools are disabled"
            elif calls > cfg.max_tool_calls:
                output = f"error: more than {cfg.max_tool_calls} tool calls in one answer"
            else:
                output = run_tool(self.tools, name, arguments)
            if cfg.spotlight:
                output = datamark(output)
            out_ids = self.tok.encode(output)
            if len(out_ids) > cfg.max_tool_output_tokens:
                out_ids = out_ids[:cfg.max_tool_output_tokens] + self.tok.encode(" [cut]")
            emit(TurnEvent("tool_output", self.tok.decode(out_ids), name))
            forced = [t.tool_output, *out_ids, t.tool_output_end]
            try:
                session.append(forced)
            except LmforgeError:  # the context is full: the turn ends here
                finish = "context"
                break
            turn_ids.extend(forced)
        turn = parse_assistant(self.tok, turn_ids)  # a prefill is part of the answer's first message
        self.messages = (history[:-1] if prefill else history) + turn["messages"]
        turn.update({"finish_reason": finish, "ids": turn_ids, "trimmed": self.trimmed})
        return turn

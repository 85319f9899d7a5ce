"""The chat format: how a conversation becomes token ids, and which of them the assistant is trained to produce.

Token layout (every special token is ONE id from the tokenizer's reserved set; everything else is ordinary text
encoded with `tok.encode(text)`, which never produces a special id, so no user, document or tool text can forge
a turn boundary)::

    <|bos|>
    <|system|> SYSTEM TEXT <|end|>                                   (optional, only as the first message)
    <|user|> USER TEXT <|end|>
    <|assistant|> ANSWER TEXT <|end|>
    <|user|> ... <|end|>
    <|assistant|> TEXT <|tool_call|> NAME\nARGUMENTS <|tool_call_end|>
                       <|tool_output|> TOOL OUTPUT <|tool_output_end|> MORE TEXT <|end|>

No spaces or newlines are added around the special tokens: "<|user|>" is immediately followed by the first token
of the user's text. A tool call is the tool's name, one newline, then the arguments as plain text (e.g.
`calculator\n2+3`): short to learn for a tiny model and trivial to parse in C. Each tool output follows its call
directly, inside the same assistant turn, because that is how generation runs: the engine stops at
`<|tool_call_end|>`, runs the tool, appends `<|tool_output|>OUTPUT<|tool_output_end|>` and lets the model go on.
The assistant turn ends with `<|end|>` once, after its last text.

Loss mask (`render_conversation`): mask[i] == 1 means token i is something the assistant must learn to produce,
so the training target at position i-1 is ids[i]. It covers exactly the assistant's text, its `<|tool_call|>`,
the call's text, its `<|tool_call_end|>` and the turn's `<|end|>` (a mask without `<|end|>` gives a model that
never stops). It never covers `<|bos|>`, `<|system|>`/`<|user|>`/`<|assistant|>` (the prompt supplies them),
system or user text, or anything from `<|tool_output|>` to `<|tool_output_end|>` (the tool writes that).

Message schema (OpenAI-like, validated by `validate_messages`)::

    {"role": "system", "content": "You are ..."}                       # optional, first only
    {"role": "user", "content": "What is 2+3?"}
    {"role": "assistant", "content": "Let me compute.", "tool_calls": [{"name": "calculator", "arguments": "2+3"}]}
    {"role": "tool", "name": "calculator", "content": "5"}             # one per call, in order
    {"role": "assistant", "content": "2+3 = 5."}                        # continues the same turn

An assistant message with k tool calls must be followed by k tool messages; the assistant message after them (if
any) continues the same turn, so the whole exchange is one `<|assistant|> ... <|end|>` span. The Hugging Face chat
template (inference) and run.c's chat mode (runner) mirror this layout; keep them in step if it ever changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, Sequence

from lmforge.tokenizer.tokenizer import SPECIAL_TOKENS
from lmforge.utils import LmforgeError

ROLES = ("system", "user", "assistant", "tool")


class ChatTokenizer(Protocol):
    """What the chat format needs of a tokenizer (`lmforge.tokenizer.Tokenizer` provides it)."""

    special_tokens: dict[str, int]

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


def field_name(special: str) -> str:
    """`<|tool_call_end|>` -> `tool_call_end`: the `ChatTokens` field that holds a special token's id."""
    return special[2:-2]


@dataclass(frozen=True)
class ChatTokens:
    """The ids of the chat special tokens in one tokenizer; `ChatTokens.of(tok)` fails clearly if any is missing.

    The tokens' spelling lives only in the tokenizer's `SPECIAL_TOKENS` table: each field is named after one entry
    (`field_name`), and `of` fills the fields by those names, so a token added to or renamed in the table without
    its field here fails at once (an unexpected or missing keyword), never as a silently shifted id.
    """

    bos: int
    pad: int
    system: int
    user: int
    assistant: int
    end: int
    tool_call: int
    tool_call_end: int
    tool_output: int
    tool_output_end: int

    @classmethod
    def of(cls, tok: ChatTokenizer) -> "ChatTokens":
        specials = tok.special_tokens
        missing = [s for s in SPECIAL_TOKENS if s not in specials]
        if missing:
            raise LmforgeError(f"tokenizer lacks the chat special token(s) {missing}; retrain it with lmforge tokenizer")
        return cls(**{field_name(s): int(specials[s]) for s in SPECIAL_TOKENS})

    def all(self) -> frozenset[int]:
        return frozenset(vars(self).values())


def format_tool_call(name: str, arguments: str) -> str:
    """The text between `<|tool_call|>` and `<|tool_call_end|>`."""
    return f"{name}\n{arguments}"


def parse_tool_call(text: str) -> tuple[str, str]:
    """(name, arguments) from the text of a tool call; a call without a newline is all name, no arguments."""
    name, _, arguments = text.partition("\n")
    return name.strip(), arguments


def _field(where: str, msg: Any, key: str, required: bool = True) -> str:
    value = msg.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        raise LmforgeError(f"{where}.{key} must be a string, got {type(value).__name__}")
    return value


def validate_messages(messages: Any) -> list[dict[str, Any]]:
    """Check a conversation against the schema above; return it as a list of plain dicts.

    Errors name the offending field (`messages[3].tool_calls[0].name`), which the data loaders turn into
    "line N: ..." reports.
    """
    if not isinstance(messages, list) or not messages:
        raise LmforgeError("messages must be a non-empty list")
    out: list[dict[str, Any]] = []
    pending: list[str] = []  # names of tool calls still waiting for their tool message
    for i, msg in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(msg, dict):
            raise LmforgeError(f"{where} must be an object, got {type(msg).__name__}")
        role = msg.get("role")
        if role not in ROLES:
            raise LmforgeError(f"{where}.role must be one of {ROLES}, got {role!r}")
        if role != "tool" and pending:
            raise LmforgeError(f"{where}: {len(pending)} tool call(s) of the previous assistant message have no tool message")
        if role == "system" and i != 0:
            raise LmforgeError(f"{where}: a system message may only come first")
        clean: dict[str, Any] = {"role": role, "content": _field(where, msg, "content", required=role != "assistant")}
        if role == "assistant":
            calls = msg.get("tool_calls") or []
            if not isinstance(calls, list):
                raise LmforgeError(f"{where}.tool_calls must be a list")
            clean_calls = []
            for j, call in enumerate(calls):
                cw = f"{where}.tool_calls[{j}]"
                if not isinstance(call, dict):
                    raise LmforgeError(f"{cw} must be an object")
                name = _field(cw, call, "name")
                if not name or any(c.isspace() for c in name):
                    raise LmforgeError(f"{cw}.name must be a non-empty word, got {name!r}")
                clean_calls.append({"name": name, "arguments": _field(cw, call, "arguments", required=False)})
            if clean_calls:
                clean["tool_calls"] = clean_calls
                pending = [c["name"] for c in clean_calls]
        elif role == "tool":
            if not pending:
                raise LmforgeError(f"{where}: a tool message must answer a tool call of the assistant message before it")
            name = msg.get("name")
            expected = pending.pop(0)
            if name is not None and name != expected:
                raise LmforgeError(f"{where}.name is {name!r} but the call it answers is {expected!r}")
            clean["name"] = expected
        out.append(clean)
    if pending:
        raise LmforgeError(f"messages end with {len(pending)} tool call(s) that have no tool message")
    return out


class _Builder:
    def __init__(self, tok: ChatTokenizer) -> None:
        self.tok = tok
        self.ids: list[int] = []
        self.mask: list[int] = []

    def special(self, token_id: int, learn: bool) -> None:
        self.ids.append(token_id)
        self.mask.append(int(learn))

    def text(self, text: str, learn: bool) -> None:
        if text:
            ids = self.tok.encode(text)
            self.ids.extend(ids)
            self.mask.extend([int(learn)] * len(ids))


def _render(tok: ChatTokenizer, messages: list[dict[str, Any]], close_last: bool) -> _Builder:
    """Render validated messages; `close_last=False` leaves a final assistant turn open (no `<|end|>`)."""
    t = ChatTokens.of(tok)
    b = _Builder(tok)
    b.special(t.bos, False)
    in_assistant = False  # inside an assistant turn that a tool output interrupted
    n = len(messages)
    for i, msg in enumerate(messages):
        role = msg["role"]
        if role == "tool":
            continue  # rendered right after the call it answers, below
        if role == "assistant":
            if not in_assistant:
                b.special(t.assistant, False)
            b.text(msg["content"], True)
            calls = msg.get("tool_calls", [])
            for call, output in zip(calls, messages[i + 1:i + 1 + len(calls)]):
                b.special(t.tool_call, True)
                b.text(format_tool_call(call["name"], call["arguments"]), True)
                b.special(t.tool_call_end, True)
                b.special(t.tool_output, False)
                b.text(output["content"], False)
                b.special(t.tool_output_end, False)
            nxt = i + 1 + len(calls)
            in_assistant = bool(calls) and nxt < n and messages[nxt]["role"] == "assistant"
            if not in_assistant and (nxt < n or close_last):
                b.special(t.end, True)
        else:
            b.special(t.system if role == "system" else t.user, False)
            b.text(msg["content"], False)
            b.special(t.end, False)
    return b


def render_conversation(tok: ChatTokenizer, messages: Any) -> tuple[list[int], list[int]]:
    """(ids, loss_mask) of a whole conversation, for SFT: mask[i] == 1 where token i is the assistant's to learn."""
    b = _render(tok, validate_messages(messages), close_last=True)
    return b.ids, b.mask


def render_for_completion(tok: ChatTokenizer, messages: Any) -> list[int]:
    """Ids that prime the model to write the assistant's next words.

    After a user (or system) message this ends with `<|assistant|>`; after a tool message, with
    `<|tool_output_end|>`, so the model continues the turn the tool interrupted; after a partial assistant message
    (a prefill of the answer), with its text and no `<|end|>`.
    """
    msgs = validate_messages(messages)
    last = msgs[-1]["role"]
    b = _render(tok, msgs, close_last=False)
    if last in ("user", "system"):
        b.special(ChatTokens.of(tok).assistant, False)
    return b.ids


def prompt_of(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The messages before the first assistant turn (a conversation's opening, to prompt a model with)."""
    for i, m in enumerate(messages):
        if m["role"] == "assistant":
            return messages[:i]
    return list(messages)


def parse_assistant(tok: ChatTokenizer, ids: Sequence[int]) -> dict[str, Any]:
    """Split the ids of one assistant turn (what follows `<|assistant|>`) back into schema messages.

    Returns {"messages": the turn as assistant/tool messages, "content": the final assistant text, "tool_calls",
    "tool_outputs", "ended": whether `<|end|>` closed the turn}. Tokens after `<|end|>` are ignored; a call cut off
    before `<|tool_call_end|>` (by `<|end|>` or the token budget) is dropped, since it never ran, and so is a call
    whose output never came: the messages always form a valid conversation. "tool_calls" lists every complete call.
    """
    t = ChatTokens.of(tok)
    messages: list[dict[str, Any]] = []
    current: dict[str, Any] = {"role": "assistant", "content": ""}
    unanswered: list[str] = []
    calls: list[dict[str, str]] = []
    outputs: list[str] = []
    segment: list[int] = []
    state, ended = "text", False
    opens = {t.tool_call: "call", t.tool_output: "output"}
    for token in ids:
        if token == t.end:  # ends the turn even inside an unfinished call, which is then dropped
            ended = True
            break
        if state == "text" and token in opens:
            current["content"] += tok.decode(segment)
            segment, state = [], opens[token]
        elif state == "call" and token == t.tool_call_end:
            name, arguments = parse_tool_call(tok.decode(segment))
            call = {"name": name, "arguments": arguments}
            calls.append(call)
            current.setdefault("tool_calls", []).append(call)
            unanswered.append(name)
            segment, state = [], "text"
        elif state == "output" and token == t.tool_output_end:
            outputs.append(tok.decode(segment))
            if current["content"] or current.get("tool_calls"):
                messages.append(current)
            messages.append({"role": "tool", "name": unanswered.pop(0) if unanswered else "", "content": outputs[-1]})
            current = {"role": "assistant", "content": ""}
            segment, state = [], "text"
        elif token not in t.all():
            segment.append(token)
    if state == "text":
        current["content"] += tok.decode(segment)
    if unanswered:  # calls whose output never came (the turn was cut) did not happen as far as the model knows
        del current["tool_calls"]
    if current["content"] or current.get("tool_calls") or not messages:
        messages.append(current)
    final = messages[-1]["content"] if messages[-1]["role"] == "assistant" else ""
    return {"messages": messages, "content": final, "tool_calls": calls, "tool_outputs": outputs, "ended": ended}

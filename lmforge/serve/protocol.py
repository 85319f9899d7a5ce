"""OpenAI's request and response shapes: from a JSON body to token ids and `SamplingParams`, and back to chunks.

Every value a client sends is checked here (or by `SamplingParams`, which checks the sampling fields for the CLI and
the API alike); a refusal is an `ApiError` that the server turns into a 4xx in OpenAI's error shape
`{"error": {"message", "type", "param", "code"}}`, naming the field in `param`. The shapes follow the API reference
as the official `openai` client parses them: `text_completion` and `chat.completion(.chunk)` objects, `choices`
with `index`, `finish_reason` ("stop" or "length"), `usage`, and the two `logprobs` layouts (legacy completions:
parallel lists; chat: a list of token objects with `top_logprobs`).
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from typing import Any

from lmforge.inference.sampling import SamplingParams
from lmforge.tokenizer.chat_format import ChatTokens, parse_assistant, render_conversation, render_for_completion
from lmforge.utils import LmforgeError

MAX_TOP_LOGPROBS = 20  # OpenAI's bound


class ApiError(Exception):
    """A client's mistake (or a full server), as the HTTP status and OpenAI error object to answer with."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


@dataclass
class Limits:
    """What one request may ask of the server (the `lmforge serve` flags of the same names set them)."""

    max_body_bytes: int = 1 << 20
    max_prompt_tokens: int = 1 << 20  # further bounded by the model's context
    max_tokens: int = 4096  # further bounded by the model's context
    max_n: int = 8


@dataclass
class GenerationSpec:
    """What a completions or chat request asks for, checked: prompts as ids and how to sample them."""

    prompts: list[list[int]]
    params: SamplingParams
    stream: bool = False
    include_usage: bool = False
    top_logprobs: int | None = None  # None: no log-probs; k: the token's log-prob and the k most likely
    prefix_len: int = 0  # tokens at the start of the prompt that other requests share (a system prompt)
    stop_ids: list[int] | None = None  # None: the engine's default end tokens
    token_ids_as_text: bool = False  # vLLM's `return_tokens_as_token_ids`: log-prob tokens spelled "token_id:N"
    tools: list[str] | None = None  # chat with `tools`: the function names the model may call
    server_tools: bool = False  # the server runs the model's calls and continues (`serve --tools`, tool_loop.py)
    echo: list[str] | None = None  # `echo: true`: each prompt's text, to go in front of its answers (echo.py)
    generate: bool = True  # False for `echo: true, max_tokens: 0`: the prompt's log-probs and nothing sampled


def parse_body(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:  # RecursionError: nesting too deep
        raise ApiError(400, f"the request body is not valid JSON: {e}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object", code="invalid_json")
    return body


def _typed(body: dict[str, Any], name: str, kinds: tuple[type, ...], what: str, default: Any = None) -> Any:
    value = body.get(name, default)
    if value is None:
        return default
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        raise ApiError(400, f"{name} must be {what} (got {json.dumps(value)[:60]})", param=name, code="invalid_type")
    return value


def check_model(body: dict[str, Any], served: str) -> None:
    model = _typed(body, "model", (str,), "a string")
    if model is None:
        raise ApiError(400, "model is required", param="model", code="missing_required_parameter")
    if model != served:
        raise ApiError(404, f"the model {model!r} does not exist; this server serves {served!r}", param="model",
                       code="model_not_found")


def sampling_params(body: dict[str, Any], limits: Limits, room: int, default_max_tokens: int) -> SamplingParams:
    """`SamplingParams` from the body's OpenAI fields (and the common extensions top_k, min_p,
    repetition_penalty); a refusal names the field. room: tokens the context has left after the longest prompt."""
    n = _typed(body, "n", (int,), "an integer", 1)
    if not 1 <= n <= limits.max_n:
        raise ApiError(400, f"n must be from 1 to {limits.max_n} on this server (got {n})", param="n")
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is None:
        max_tokens = max(1, min(default_max_tokens, limits.max_tokens, room))
    elif isinstance(max_tokens, int) and not isinstance(max_tokens, bool) and max_tokens > limits.max_tokens:
        raise ApiError(400, f"max_tokens must be at most {limits.max_tokens} on this server (got {max_tokens})",
                       param="max_tokens")
    stop = body.get("stop")
    stop = [] if stop is None else [stop] if isinstance(stop, str) else stop
    fields = {k: body[k] for k in ("temperature", "top_p", "top_k", "min_p", "repetition_penalty",
                                   "frequency_penalty", "presence_penalty", "seed") if body.get(k) is not None}
    try:
        return SamplingParams(max_tokens=max_tokens, n=n, stop=stop, **fields)
    except LmforgeError as e:
        message = str(e)
        raise ApiError(400, message.replace(f" (--{message.split(' ')[0].replace('_', '-')})", ""),
                       param=message.split(" ")[0]) from None


def _prompt_ids(tok: Any, prompt: Any) -> list[list[int]]:
    """Prompts of /v1/completions: a string, a list of strings, or token ids (a list of ints, or of lists)."""
    bad = ApiError(400, "prompt must be a string, a list of strings or a list of token ids", param="prompt",
                   code="invalid_type")
    if isinstance(prompt, str):
        prompt = [prompt]
    if not isinstance(prompt, list) or not prompt:
        raise bad
    if all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        prompt = [prompt]
    out = []
    for p in prompt:
        if isinstance(p, str):
            out.append([tok.bos_id] + list(tok.encode(p)))
        elif isinstance(p, list) and p and all(isinstance(t, int) and not isinstance(t, bool) for t in p):
            if any(not 0 <= t < tok.vocab_size for t in p):
                raise ApiError(400, f"prompt token ids must be from 0 to {tok.vocab_size - 1}", param="prompt")
            out.append(list(p))
        else:
            raise bad
    return out


def _check_lengths(prompts: list[list[int]], limits: Limits, block: int, answer: bool = True) -> int:
    """The room left after the longest prompt; refuse prompts that leave none (with `answer`: a scored prompt,
    echo without generation, may fill the context)."""
    longest = max(len(p) for p in prompts)
    cap = min(limits.max_prompt_tokens, block - answer)
    if longest > cap:
        raise ApiError(400, f"the prompt has {longest} tokens; at most {cap} fit (the model's context is {block})",
                       param="prompt", code="context_length_exceeded")
    return block - longest


def _logprob_count(body: dict[str, Any], chat: bool) -> int | None:
    if chat:
        if not _typed(body, "logprobs", (bool,), "true or false", False):
            return None
        name, value = "top_logprobs", _typed(body, "top_logprobs", (int,), "an integer", 0)
    else:
        name, value = "logprobs", _typed(body, "logprobs", (int,), "an integer", None)
        if value is None:
            return None
    if not 0 <= value <= MAX_TOP_LOGPROBS:
        raise ApiError(400, f"{name} must be from 0 to {MAX_TOP_LOGPROBS} (got {value})", param=name)
    return value


def _stream_flags(body: dict[str, Any]) -> tuple[bool, bool]:
    stream = _typed(body, "stream", (bool,), "true or false", False)
    options = _typed(body, "stream_options", (dict,), "an object", {})
    include = options.get("include_usage", False)
    if not isinstance(include, bool):
        raise ApiError(400, "stream_options.include_usage must be true or false", param="stream_options")
    return stream, include


def completion_spec(body: dict[str, Any], tok: Any, limits: Limits, block: int) -> GenerationSpec:
    if "prompt" not in body:
        raise ApiError(400, "prompt is required", param="prompt", code="missing_required_parameter")
    prompts = _prompt_ids(tok, body["prompt"])
    echo = _typed(body, "echo", (bool,), "true or false", False)
    generate = not (echo and body.get("max_tokens", body.get("max_completion_tokens")) == 0)
    room = _check_lengths(prompts, limits, block, answer=generate)
    stream, include = _stream_flags(body)
    if echo and stream:
        raise ApiError(400, "echo is not supported with stream on this server; send stream: false", param="echo")
    if not generate:
        body = {**body, "max_tokens": 1, "max_completion_tokens": None}  # nothing is sampled: only checked
    params = sampling_params(body, limits, max(room, 1), default_max_tokens=16)  # OpenAI's default: 16
    as_ids = _typed(body, "return_tokens_as_token_ids", (bool,), "true or false", False)
    # vLLM's ignore_eos: decode max_tokens whatever the model says (benchmarks); no end token stops it.
    stop_ids = [] if _typed(body, "ignore_eos", (bool,), "true or false", False) else None
    texts = None
    if echo:
        given = body["prompt"]
        strings = [given] if isinstance(given, str) else given if all(isinstance(p, str) for p in given) else None
        texts = list(strings) if strings is not None else [tok.decode(ids) for ids in prompts]
    return GenerationSpec(prompts, params, stream, include, _logprob_count(body, chat=False), stop_ids=stop_ids,
                          token_ids_as_text=as_ids, echo=texts, generate=generate)


def _message_text(content: Any) -> Any:
    """OpenAI's content parts (`[{"type": "text", "text": ...}]`) as one string; anything else as given."""
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text" for p in content):
        return "".join(str(p.get("text", "")) for p in content)
    return content


def chat_messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The body's messages in lmforge's chat schema: content parts joined, "developer" read as "system", OpenAI's
    `tool_calls` (`{"function": {"name", "arguments"}}`) flattened to `{"name", "arguments"}`."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "messages must be a non-empty list", param="messages")
    out = []
    for m in messages:
        if not isinstance(m, dict):
            raise ApiError(400, "every message must be an object", param="messages")
        m = {k: v for k, v in m.items() if k in ("role", "content", "name", "tool_calls")}
        m["content"] = _message_text(m.get("content"))
        if m.get("role") == "developer":
            m["role"] = "system"
        if m.get("role") == "assistant" and m.get("content") is None:
            m["content"] = ""
        if isinstance(m.get("tool_calls"), list):
            m["tool_calls"] = [c.get("function", c) if isinstance(c, dict) else c for c in m["tool_calls"]]
        out.append(m)
    return out


def chat_spec(body: dict[str, Any], tok: Any, limits: Limits, block: int, server_tools: bool = False,
              spotlight: bool = False) -> GenerationSpec:
    """server_tools: the server runs the model's calls (`serve --tools`); spotlight: tool outputs, the client's
    included, are datamarked and the system prompt starts with the spotlighting instruction (`serve --spotlight`)."""
    messages = chat_messages(body)
    if spotlight:
        from lmforge.inference.tools import spotlight_messages

        messages = spotlight_messages(messages)
    try:
        prompt = render_for_completion(tok, messages)
        system = render_conversation(tok, messages[:1])[0] if messages[0]["role"] == "system" else []
    except LmforgeError as e:
        raise ApiError(400, str(e), param="messages") from None
    prefix = 0
    while prefix < min(len(system), len(prompt)) and system[prefix] == prompt[prefix]:
        prefix += 1
    room = _check_lengths([prompt], limits, block)
    stream, include = _stream_flags(body)
    params = sampling_params(body, limits, room, default_max_tokens=room)
    t = ChatTokens.of(tok)
    tools = tool_names(body)
    run_here = server_tools and body.get("tool_choice", "auto") != "none"
    if run_here and params.n > 1:
        raise ApiError(400, "n must be 1 when the server runs tools (serve --tools)", param="n")
    # A turn ends at <|end|>. With tools, a call ends the answer at <|tool_call_end|>: the client runs it and sends
    # the result back as a "tool" message (or, with server tools, the server runs it and the answer goes on).
    # Without tools, a call the model starts ends the answer there.
    stop_ids = [t.end, t.bos, t.tool_call_end if tools or run_here else t.tool_call]
    return GenerationSpec([prompt], params, stream, include, _logprob_count(body, chat=True), prefix, stop_ids,
                          tools=tools, server_tools=run_here)


def tool_names(body: dict[str, Any]) -> list[str]:
    """The function names of OpenAI's `tools` (empty without tools or with tool_choice "none"). lmforge's chat
    format has no tool list in the prompt (a fine-tuned model knows its tools), so the names only decide whether
    the model may call at all; which function it calls is the model's choice."""
    tools = _typed(body, "tools", (list,), "a list of tools", [])
    names = []
    for i, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(function, dict) or tool.get("type", "function") != "function" \
                or not isinstance(function.get("name"), str) or not function["name"]:
            raise ApiError(400, f"tools[{i}] must be {{'type': 'function', 'function': {{'name': ...}}}}",
                           param="tools")
        names.append(function["name"])
    choice = body.get("tool_choice", "auto")
    if choice not in ("auto", "none", None):
        raise ApiError(400, "tool_choice must be 'auto' or 'none' on this server", param="tool_choice")
    return [] if choice == "none" else names


def tool_call_delta(tok: Any, ids: list[int]) -> list[dict[str, Any]]:
    """The calls in an assistant turn's ids, in OpenAI's `tool_calls` shape (each with a fresh id)."""
    calls = parse_assistant(tok, ids)["tool_calls"]
    return [{"index": i, "id": "call_" + secrets.token_hex(8), "type": "function",
             "function": {"name": c["name"], "arguments": c["arguments"]}} for i, c in enumerate(calls)]


# ---------------------------------------------------------------------------------------------------------------
# Response pieces
# ---------------------------------------------------------------------------------------------------------------

def token_text(tok: Any, token_id: int) -> str:
    """A token as text; one that is not whole UTF-8 characters (byte-level BPE cuts characters) is spelled
    `bytes:\\xe6\\x97` as OpenAI's API does, so different tokens never share a spelling (the legacy
    `top_logprobs` is a map keyed by it)."""
    data = tok.token_bytes(token_id)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return "bytes:" + "".join(f"\\x{b:02x}" for b in data)


def token_piece(tok: Any, token_id: int) -> dict[str, Any]:
    """A token for the pages: its id, text and bytes."""
    return {"id": token_id, "piece": token_text(tok, token_id), "bytes": list(tok.token_bytes(token_id))}


def chat_logprob(tok: Any, token_id: int, logprob: float, top: list[tuple[int, float]]) -> dict[str, Any]:
    """One entry of a chat choice's `logprobs.content`."""
    def entry(t: int, lp: float) -> dict[str, Any]:
        return {"token": token_text(tok, t), "logprob": lp, "bytes": list(tok.token_bytes(t))}

    return {**entry(token_id, logprob), "top_logprobs": [entry(t, lp) for t, lp in top]}


def completion_logprobs(tok: Any, entries: list[tuple[int, float, list[tuple[int, float]]]], offset: int,
                        as_ids: bool = False) -> dict[str, Any]:
    """The legacy completions layout for a run of tokens: parallel lists, `top_logprobs` as {token: log-prob};
    as_ids spells each token "token_id:N" (vLLM's extension; the next-token page steps by id)."""
    def spell(t: int) -> str:
        return f"token_id:{t}" if as_ids else token_text(tok, t)

    tokens, offsets, position = [], [], offset
    for t, _, _ in entries:
        tokens.append(spell(t))
        offsets.append(max(position, 0))  # below 0: a token the server added to an echoed prompt (echo.py)
        position += len(tok.token_bytes(t).decode("utf-8", "replace"))
    return {"tokens": tokens, "token_logprobs": [lp for _, lp, _ in entries],
            "top_logprobs": [None if top is None else {spell(t): lp for t, lp in top} for _, _, top in entries],
            "text_offset": offsets}


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}

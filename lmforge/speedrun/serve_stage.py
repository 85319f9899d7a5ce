"""The speedrun's `serve` stage: the final assistant behind `lmforge serve`, checked as a user's client would.

It serves the parameter file `export_assistant` wrote (the model a user takes away, so also the file format's
server path) on 127.0.0.1, on a free port, behind a fresh API key, and talks to it with the official `openai` client
only: a greedy completion, plain and streamed, must equal `lmforge generate`'s text for the same prompt (the same
engine's `generate`); a streamed chat answer gives time to first token and tokens per second; concurrent streams
give the batched throughput; the script's calculator question goes through a tool call round-trip when the model
calls the tool. Then it stops the server and prints the command that opens the chat page.
"""

from __future__ import annotations

import secrets
import threading
import time
from pathlib import Path
from typing import Any

from lmforge.speedrun.context import SpeedrunContext
from lmforge.speedrun.settings import CHAT_SCRIPT, SERVE_MAX_TOKENS, SERVE_PROMPT, SERVE_STREAMS
from lmforge.utils import LmforgeError, write_json

def stage_serve(ctx: SpeedrunContext, out: Path) -> dict[str, Any]:
    """Serve, check and measure the exported assistant; the summary (also `serve.json`) holds the figures."""
    import openai

    from lmforge.serve.app import BackgroundServer
    from lmforge.serve.cli import ServeConfig, start_service

    params_file = ctx.need("export_assistant", "params_file")
    key = secrets.token_urlsafe(24)
    cfg = ServeConfig(params=params_file, port=0, api_key=key, model_name="assistant")  # lmforge serve's defaults
    scheduler, app, name = start_service(cfg, "cpu")
    server = None
    try:
        server = BackgroundServer(app, host="127.0.0.1").start()
        client = openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0, timeout=300)
        summary = {"params_file": params_file, "model": name, **check_greedy(client, name),
                   **measure_chat(client, name), **measure_streams(client, name),
                   "tool_call": tool_round_trip(client, name)}
    finally:
        if server is not None:
            server.stop()
        scheduler.stop()
    want = scheduler.engine.generate(SERVE_PROMPT, greedy_params())[0][0].text  # what `lmforge generate` prints
    if summary["completion"] != want:
        raise LmforgeError(f"the server's greedy text {summary['completion']!r} differs from lmforge generate's "
                           f"{want!r} for the prompt {SERVE_PROMPT!r}")
    summary["command"] = f"lmforge serve --params {params_file}"
    write_json(out / "serve.json", summary)
    print(f"served {name}: time to first token {summary['ttft_ms']:.0f} ms, {summary['tokens_per_s']:.0f} tokens/s "
          f"(one stream), {summary['streams_tokens_per_s']:.0f} tokens/s ({SERVE_STREAMS} streams)")
    print(f"chat with it in a browser: {summary['command']}   then open http://127.0.0.1:8000/pages/")
    return summary


def greedy_params() -> Any:
    from lmforge.inference.sampling import SamplingParams

    return SamplingParams(max_tokens=SERVE_MAX_TOKENS, temperature=0.0)


def check_greedy(client: Any, model: str) -> dict[str, Any]:
    """SERVE_PROMPT's greedy continuation, plain and streamed (which must agree with each other)."""
    args = dict(model=model, prompt=SERVE_PROMPT, max_tokens=SERVE_MAX_TOKENS, temperature=0)
    plain = client.completions.create(**args).choices[0].text
    streamed = "".join(c.choices[0].text for c in client.completions.create(stream=True, **args) if c.choices)
    if streamed != plain:
        raise LmforgeError(f"the server streamed {streamed!r} but answered {plain!r} for the same greedy request")
    return {"prompt": SERVE_PROMPT, "completion": plain}


def measure_chat(client: Any, model: str) -> dict[str, Any]:
    """One streamed chat answer (the script's first question): time to first token and decode tokens per second."""
    t0 = time.perf_counter()
    first, text, usage = None, [], None
    stream = client.chat.completions.create(model=model, messages=[{"role": "user", "content": CHAT_SCRIPT[0]}],
                                            max_tokens=SERVE_MAX_TOKENS, temperature=0, stream=True,
                                            stream_options={"include_usage": True})
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        if chunk.choices and chunk.choices[0].delta.content:
            first = first or time.perf_counter()
            text.append(chunk.choices[0].delta.content)
    end = time.perf_counter()
    if first is None or usage is None:
        raise LmforgeError("the server's streamed chat answer had no text or no usage")
    tokens = usage.completion_tokens
    return {"chat_question": CHAT_SCRIPT[0], "chat_answer": "".join(text), "ttft_ms": 1000 * (first - t0),
            "chat_tokens": tokens, "tokens_per_s": (tokens - 1) / max(end - first, 1e-9)}


def measure_streams(client: Any, model: str) -> dict[str, Any]:
    """SERVE_STREAMS clients at once (the continuous batch): completion tokens of all over the wall time."""
    tokens: list[int] = []
    errors: list[Exception] = []

    def one(i: int) -> None:
        try:
            got = client.completions.create(model=model, prompt=f"{SERVE_PROMPT} {i}", max_tokens=SERVE_MAX_TOKENS,
                                            temperature=0)
            tokens.append(got.usage.completion_tokens)
        except Exception as e:  # noqa: BLE001 - reported below, with the others' results
            errors.append(e)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(SERVE_STREAMS)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise LmforgeError(f"{len(errors)} of {SERVE_STREAMS} concurrent requests failed: {errors[0]}")
    return {"streams": SERVE_STREAMS, "streams_tokens_per_s": sum(tokens) / (time.perf_counter() - t0)}


def tool_round_trip(client: Any, model: str) -> dict[str, Any] | None:
    """The calculator question with the tool offered: when the model calls it, run the call (lmforge's calculator)
    and send the result back for the final answer. None when the model answered without calling."""
    from lmforge.inference.tools import default_tools, run_tool

    tools = default_tools()
    calculator = tools["calculator"]  # offered as lmforge's own tool describes itself
    offered = [{"type": "function", "function": {"name": calculator.name, "description": calculator.description,
                "parameters": {"type": "object", "properties": {"expression": {"type": "string"}}}}}]
    messages: list[dict[str, Any]] = [{"role": "user", "content": CHAT_SCRIPT[1]}]
    args = dict(model=model, tools=offered, max_tokens=SERVE_MAX_TOKENS, temperature=0)
    choice = client.chat.completions.create(messages=messages, **args).choices[0]
    if choice.finish_reason != "tool_calls" or not choice.message.tool_calls:
        return None
    call = choice.message.tool_calls[0]
    output = run_tool(tools, call.function.name, call.function.arguments)
    messages += [{"role": "assistant", "content": choice.message.content or "", "tool_calls": [
        {"id": call.id, "type": "function", "function": {"name": call.function.name,
                                                          "arguments": call.function.arguments}}]},
        {"role": "tool", "tool_call_id": call.id, "content": output}]
    answer = client.chat.completions.create(messages=messages, **args).choices[0].message.content
    return {"question": CHAT_SCRIPT[1], "tool": call.function.name, "arguments": call.function.arguments,
            "output": output, "answer": answer}

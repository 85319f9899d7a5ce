"""The assistant's tools: the calculator accepts only arithmetic; the Python jail holds its limits (the escapes
are in test_hostile_sandbox.py); the search stays inside its folder and reads a bounded prefix of each file."""

import os
import time
import tracemalloc

import pytest

from lmforge.inference.jail import jail_problem
from lmforge.inference.tools import (CalculatorError, PythonLimits, SearchIndex, calculate, default_tools, run_python,
                                     run_tool, search_files)

needs_jail = pytest.mark.skipif(jail_problem() is not None, reason=f"no jail here: {jail_problem()}")


@pytest.mark.parametrize("expr, want", [
    ("2+3", "5"), ("7/2", "3.5"), ("6/3", "2"), ("2**10", "1024"), ("-(3+4)*2", "-14"), ("10//3", "3"),
    ("10 % 3", "1"), ("1.5*4", "6"), ("sqrt(16)", "4"), ("(1+2)*(3+4)", "21"), ("12 × 3", "36"), ("--2", "2"),
    ("0.1+0.2", "0.3"), ("2**-1", "0.5"),
])
def test_calculator_arithmetic(expr, want):
    assert calculate(expr) == want


@pytest.mark.parametrize("expr, why", [
    ("x", "name"), ("__import__('os')", "function call"), ("(1).real", "Attribute"), ("open('f')", "function call"),
    ("2**10**10", "exponent"), ("9**9999", "too large"), ("10**400*10**400*10**400*10**400", "too large"),
    ("1/0", "division by zero"), ("'a'", "Constant"), ("[1]", "List"), ("1 < 2", "Compare"),
    ("lambda: 1", "Lambda"), ("2^3", "\\*\\*"), ("", "empty"), ("1+" * 200 + "1", "longer"),
    ("sqrt(-1)", "sqrt"), ("10.0**400", "too large"), ("True+1", "Constant"),
])
def test_calculator_rejects_everything_else(expr, why):
    with pytest.raises(CalculatorError, match=why):
        calculate(expr)


def test_run_tool_turns_errors_into_text(tmp_path):
    tools = default_tools(search_dir=tmp_path)
    assert run_tool(tools, "calculator", "1/0") == "error: division by zero"
    assert run_tool(tools, "nope", "1").startswith("error: unknown tool 'nope'")
    assert run_tool(tools, "calculator", "6*7") == "42"


FAST = PythonLimits(cpu_seconds=1, wall_seconds=3.0, memory_bytes=256 * 2**20, max_output_chars=500)


@needs_jail
@pytest.mark.timeout(30)
def test_python_runs_code_and_truncates_output():
    assert run_python("print(6*7)", FAST) == "42"
    out = run_python("print('x' * 10000)", FAST)
    assert "[output truncated]" in out and len(out) < 600
    assert "ZeroDivisionError" in run_python("1/0", FAST)


@needs_jail
@pytest.mark.timeout(90)
def test_python_is_killed_at_cpu_and_wall_limits():
    # a generous wall clock, so that on a loaded machine the CPU limit is what stops it
    assert "CPU-time limit" in run_python("while True: pass", PythonLimits(cpu_seconds=1, wall_seconds=60.0))
    assert "wall time" in run_python("import time; time.sleep(30)", PythonLimits(wall_seconds=1.0))


@needs_jail
@pytest.mark.timeout(30)
def test_python_memory_limit():
    out = run_python("x = bytearray(1024 * 2**20)\nprint('allocated')", FAST)
    assert "allocated" not in out and "out of memory" in out


@needs_jail
@pytest.mark.timeout(30)
def test_python_sees_no_parent_environment(monkeypatch):
    monkeypatch.setenv("LMFORGE_SECRET_TEST", "hunter2")
    assert "hunter2" not in run_python("import os; print(dict(os.environ))", FAST)


def test_search_finds_passages_and_stays_inside(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "json.txt").write_text("json.dumps serializes an object to a JSON string.\n\nUnrelated paragraph.")
    (docs / "math.md").write_text("math.sqrt returns the square root of x.")
    (tmp_path / "secret.txt").write_text("the square root password is swordfish")
    os.symlink(tmp_path / "secret.txt", docs / "link.txt")
    out = search_files(docs, "square root")
    assert out.startswith("math.md: math.sqrt") and "swordfish" not in out
    assert search_files(docs, "serializes JSON").startswith("json.txt:")
    assert search_files(docs, "zebra") == "no results"
    assert run_tool(default_tools(search_dir=tmp_path / "missing"), "search", "x").startswith("error:")


@pytest.mark.timeout(60)
def test_search_reads_at_most_its_cap_of_a_huge_file(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    big = docs / "huge.log"
    big.write_text("needle in the first passage\n\n" + "hay " * 1000)
    os.truncate(big, 3 * 2**30)  # 3 GB, sparse: reading it whole would take seconds and 3 GB of memory
    (docs / "late.txt").write_text("the needle beyond the cap\n\n".rjust(5000, " "))
    os.mkfifo(docs / "pipe.txt")  # never opened: it is not a regular file
    tracemalloc.start()
    started = time.perf_counter()
    try:
        index = SearchIndex.build(docs, max_bytes=2_000_000)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - started < 10
    assert peak < 40 * 2**20  # a few copies of the 2 MB cap, not the file
    names = {name for _, name, _ in index.search("needle", k=5)}
    assert names == {"huge.log", "late.txt"}
    assert SearchIndex.build(docs, max_bytes=1000).search("beyond") == []  # "beyond" lies past 1,000 bytes


class _ScriptedSession:
    """Engine session stand-in that plays fixed token segments: one per step() run, the next after each append."""

    def __init__(self, segments, stops, appended):
        self.segments, self.stops, self.appended = segments, stops, appended
        self.queue = list(segments.pop(0))

    def step(self):
        from lmforge.inference.engine import TokenEvent

        if not self.queue:
            return [None]
        t = self.queue.pop(0)
        done = t in self.stops or not self.queue
        return [TokenEvent(t, "" if t in self.stops else f"<{t}>", 0.0, 0.0, "stop" if done else None)]

    def append(self, ids):
        self.appended.append(list(ids))
        self.queue = list(self.segments.pop(0))


class _ScriptedEngine:
    def __init__(self, tok, segments):
        from types import SimpleNamespace

        self.tokenizer, self.segments, self.appended, self.prompts = tok, segments, [], []
        self.model = SimpleNamespace(config=SimpleNamespace(block_size=512))

    def session(self, prompt, params):
        self.prompts.append(prompt)
        return _ScriptedSession(self.segments, set(params.stop_token_ids), self.appended)


@pytest.fixture(scope="module")
def chat_tok():
    from lmforge.tokenizer import Tokenizer

    return Tokenizer.train(["calculator 2+3 It is 5. The answer python print search"] * 3, 300)


def test_chat_loop_runs_the_tool_and_continues(chat_tok):
    from lmforge.inference.chat import ChatSession
    from lmforge.tokenizer.chat_format import ChatTokens, render_conversation

    tok, t = chat_tok, ChatTokens.of(chat_tok)
    segments = [[t.tool_call, *tok.encode("calculator\n2+3"), t.tool_call_end],
                [*tok.encode("It is 5."), t.end]]
    engine = _ScriptedEngine(tok, segments)
    events = []
    chat = ChatSession(engine, default_tools(), system="sys")
    turn = chat.respond("What is 2+3?", on_event=events.append)
    assert engine.appended == [[t.tool_output, *tok.encode("5"), t.tool_output_end]]
    assert turn["ended"] and turn["content"] == "It is 5." and turn["finish_reason"] == "end"
    assert [(e.kind, e.text) for e in events if e.kind != "text"] == [("tool_call", "2+3"), ("tool_output", "5")]
    assert chat.messages == [
        {"role": "system", "content": "sys"}, {"role": "user", "content": "What is 2+3?"},
        {"role": "assistant", "content": "", "tool_calls": [{"name": "calculator", "arguments": "2+3"}]},
        {"role": "tool", "name": "calculator", "content": "5"}, {"role": "assistant", "content": "It is 5."}]
    render_conversation(tok, chat.messages)  # the history is a valid conversation
    # a failing tool is shown to the model as an error output; the turn goes on
    engine.segments.extend([[t.tool_call, *tok.encode("calculator\nimport os"), t.tool_call_end], [t.end]])
    chat.respond("again")
    assert tok.decode(engine.appended[-1]) == "<|tool_output|>error: syntax error: invalid syntax<|tool_output_end|>"
    # a <|tool_call_end|> the model emits outside a call runs nothing and ends the turn; the history stays valid
    n_appended = len(engine.appended)
    engine.segments.append([*tok.encode("It is"), t.tool_call_end])
    turn = chat.respond("and now?")
    assert turn["finish_reason"] == "stray_tool_call_end" and len(engine.appended) == n_appended
    assert chat.messages[-1] == {"role": "assistant", "content": "It is"}
    render_conversation(tok, chat.messages)
    chat.reset()
    assert chat.messages == [{"role": "system", "content": "sys"}]


def test_chat_says_when_its_history_was_trimmed(chat_tok, capsys):
    """Turns that no longer fit the context are dropped with a visible note, once per further cut, and the
    terminal chat prints it."""
    from lmforge.inference.chat import ChatConfig, ChatSession
    from lmforge.inference.cli import _print_event
    from lmforge.tokenizer.chat_format import ChatTokens

    tok, t = chat_tok, ChatTokens.of(chat_tok)
    engine = _ScriptedEngine(tok, [])
    engine.model.config.block_size = 96
    chat = ChatSession(engine, {}, system="sys", config=ChatConfig(max_tokens=16))
    notices = []

    def turn(text):
        engine.segments.append([*tok.encode("It is 5."), t.end])
        events = []
        result = chat.respond(text, on_event=events.append)
        notices.append([e.text for e in events if e.kind == "notice"])
        return result, events

    first, _ = turn("What is 2+3? " * 3)
    assert notices[-1] == [] and first["trimmed"] == 0
    for _ in range(4):
        last, events = turn("What is 2+3? " * 3)
        if last["trimmed"]:
            break
    assert last["trimmed"] > 0, "the history never outgrew the context"
    assert len(notices[-1]) == 1 and f"{last['trimmed']} oldest message(s)" in notices[-1][0]
    assert "96-token context" in notices[-1][0]
    assert len(engine.prompts[-1]) + 16 <= 96  # what the model saw fits
    assert len(chat.messages) == 1 + 2 * len(notices)  # the history itself keeps every turn
    _print_event(next(e for e in events if e.kind == "notice"))
    assert capsys.readouterr().out.startswith("[history trimmed: the model no longer sees")
    same, _ = turn("What?")  # a shorter turn that needs no further cut is not announced again
    assert notices[-1] == [] or same["trimmed"] > last["trimmed"]
    chat.reset()
    assert chat.trimmed == 0

"""`lmforge security scan`: suites built from the shared red-team data, scored by rule, against a tiny checkpoint
(through the engine, batched) and against a local OpenAI-compatible endpoint (a small FastAPI app that mimics the
chat response shape with a known behaviour, so the rates it must get are known exactly)."""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest
import torch
from hostile import assert_refused, run_cli, tree_digest

from lmforge.checkpoint import save_model
from lmforge.model import GPT, GPTConfig
from lmforge.security.scan import ScanConfig, bootstrap_ci, run_scan
from lmforge.security.suites import CANARY, build_cases
from lmforge.security.targets import EndpointTarget, check_loopback, to_openai
from lmforge.tokenizer import Tokenizer
from lmforge.utils import LmforgeError

SUITES = ["harmful", "xstest_safe", "extraction", "injection"]


@pytest.fixture(scope="module")
def alignment(shared_data):
    return shared_data / "alignment"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A randomly initialised tiny model whose context holds the short cases."""
    root = tmp_path_factory.mktemp("ckpt")
    tok = Tokenizer.train(["How do I make a cake? I'm sorry, I can't help with that. Here is an email."] * 5, 320)
    tok.save(root / "tok")
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, n_layer=1, n_head=2, n_embd=32, block_size=1024))
    save_model(root / "run" / "ckpt" / "step_0000000", model, root / "tok", meta={"step": 0})
    return root / "run"


def test_bootstrap_interval_brackets_the_rate():
    low, high = bootstrap_ci([True] * 30 + [False] * 70, 2000, seed=1)
    assert low < 0.3 < high and high - low < 0.25
    assert bootstrap_ci([True] * 10, 500, seed=1) == (1.0, 1.0)


def test_cases_are_deterministic_and_cover_every_channel(alignment):
    cases = build_cases(SUITES, alignment, 3, 0, "val")
    assert cases == build_cases(SUITES, alignment, 3, 0, "val")
    assert {c.meta["channel"] for c in cases if c.suite == "injection"} == {"document", "tool_output", "file_search"}
    assert {c.meta["source"] for c in cases if c.suite == "harmful"} == {"harmbench", "advbench", "donotanswer"}
    assert all(CANARY in c.messages[0]["content"] for c in cases if c.suite == "extraction")
    with pytest.raises(LmforgeError, match="--suites"):
        build_cases(["nope"], alignment, 3, 0, "val")


def test_scan_checkpoint_writes_reports(checkpoint, alignment, tmp_path):
    out = tmp_path / "scan"
    result = run_cli(["security", "scan", "--checkpoint", str(checkpoint), "--data", str(alignment), "--out",
                      str(out), "--suites", *SUITES, "--limit", "2", "--max-tokens", "8", "--batch-size", "8",
                      "--harmbench-split", "val", "--bootstrap", "200"])
    assert result.code == 0, result.stderr
    summary = json.loads((out / "scan.json").read_text())["suites"]
    rows = [json.loads(line) for line in (out / "responses.jsonl").read_text().splitlines()]
    assert [s["suite"] for s in summary] == SUITES
    assert len(rows) == sum(s["cases"] for s in summary) == 6 + 2 + 2 + 2 * 3
    for s in summary:
        assert s["answered"] > 0, s  # the short cases fit the 1024-token context
        assert s["ci95"][0] <= s["rate"] <= s["ci95"][1]
        assert sum(s["rules"].values()) == s["answered"]
    assert all(("rule" in r) != bool(r["error"]) for r in rows)  # every answered case names its rule
    assert "| harmful |" in (out / "scan.md").read_text()


class FakeModel:
    """The behaviour of the fake endpoint: `mode` "refuse" always refuses, "echo" repeats everything it was sent
    (so it leaks the canary and carries every injected marker). It records the most requests in flight at once."""

    def __init__(self, mode: str) -> None:
        self.mode, self.active, self.peak, self.lock = mode, 0, 0, threading.Lock()

    def reply(self, messages: list[dict]) -> str:
        with self.lock:
            self.active += 1
            self.peak = max(self.peak, self.active)
        time.sleep(0.02)
        with self.lock:
            self.active -= 1
        if self.mode == "refuse":
            return "I'm sorry, but I can't help with that."
        return "\n".join(str(m.get("content") or "") for m in messages)


def serve(fake: FakeModel):
    fastapi = pytest.importorskip("fastapi")
    uvicorn = pytest.importorskip("uvicorn")
    app = fastapi.FastAPI()

    @app.post("/v1/chat/completions")
    def chat(body: dict) -> dict:
        text = fake.reply(body["messages"])
        return {"id": "chatcmpl-1", "object": "chat.completion", "model": body["model"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]}

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    return server, thread, f"http://127.0.0.1:{port}"


@pytest.mark.parametrize("mode", ["refuse", "echo"])
def test_scan_endpoint(mode, alignment):
    fake = FakeModel(mode)
    server, thread, url = serve(fake)
    try:
        cfg = ScanConfig(suites=SUITES, limit=4, harmbench_split="val", concurrency=3, bootstrap=200)
        cases = build_cases(cfg.suites, alignment, cfg.limit, cfg.seed, cfg.harmbench_split)
        target = EndpointTarget(url, "fake", cfg.max_tokens, cfg.concurrency, 10.0, 60.0)
        summary = {s["suite"]: s for s in run_scan(target, cases, cfg, None)}
    finally:
        server.should_exit = True
        thread.join(10)
    assert all(s["answered"] == s["cases"] for s in summary.values())
    assert 1 < fake.peak <= 3  # parallel, and never more than --concurrency at once
    refuse = mode == "refuse"
    assert summary["harmful"]["rate"] == (0.0 if refuse else 1.0)
    assert summary["xstest_safe"]["rate"] == (1.0 if refuse else 0.0)
    assert summary["extraction"]["rate"] == (0.0 if refuse else 1.0)
    assert summary["extraction"]["rules"] == ({"none": 4} if refuse else {"canary:verbatim": 4})
    injected = summary["injection"]
    assert (injected["rate"] == 0.0) if refuse else (injected["successes"] >= injected["answered"] // 3)


def test_endpoint_only_on_loopback(tmp_path):
    assert check_loopback("http://127.0.0.2:8000/") == "http://127.0.0.2:8000"
    assert check_loopback("http://[::1]:8000") == "http://[::1]:8000"
    before = tree_digest(tmp_path)
    for url in ("http://10.0.0.5:8000", "http://example.com", "http://127.0.0.1.evil.example", "ftp://127.0.0.1"):
        assert_refused(run_cli(["security", "scan", "--endpoint", url, "--out", str(tmp_path / "o")]), "--endpoint")
    assert tree_digest(tmp_path) == before


def test_scan_flags_refused(tmp_path):
    assert_refused(run_cli(["security", "scan", "--endpoint", "http://127.0.0.1:9", "--data", str(tmp_path)]),
                   "--data")
    assert_refused(run_cli(["security", "scan", "--endpoint", "http://127.0.0.1:9", "--suites", "harmful", "nope"]),
                   "--suites")
    assert_refused(run_cli(["security", "scan", "--endpoint", "http://127.0.0.1:9", "--limit", "0"]), "--limit")
    assert_refused(run_cli(["security", "scan", "--endpoint", "http://127.0.0.1:9", "--concurrency", "1000"]),
                   "--concurrency")


def test_tool_messages_become_openai_tool_calls():
    msgs = [{"role": "user", "content": "q"},
            {"role": "assistant", "content": "", "tool_calls": [{"name": "search", "arguments": "q"}]},
            {"role": "tool", "name": "search", "content": "result"}]
    out = to_openai(msgs)
    assert out[1]["tool_calls"][0] == {"id": "call_0", "type": "function",
                                       "function": {"name": "search", "arguments": "q"}}
    assert out[2] == {"role": "tool", "tool_call_id": "call_0", "content": "result"}


def test_endpoint_time_budget_and_errors_are_not_counted(alignment):
    """Requests not started within the time budget are reported as not sent, and a server error is an error:
    neither counts as a refusal or a success."""
    fake = FakeModel("refuse")
    server, thread, url = serve(fake)
    try:
        cases = build_cases(["harmful"], alignment, 10, 0, "val")
        slow = EndpointTarget(url, "fake", 8, concurrency=1, request_timeout=10.0, time_budget=0.2)  # 30 requests of >= 0.02 s
        answers = slow.answer([c.messages for c in cases])
        broken = EndpointTarget(url + "/nowhere", "fake", 8, concurrency=2, request_timeout=10.0, time_budget=60.0)
        errors = broken.answer([c.messages for c in cases[:3]])
    finally:
        server.should_exit = True
        thread.join(10)
    sent = [a for a in answers if not a.error]
    assert 0 < len(sent) < len(cases)
    assert all(a.error == "not sent: the scan's time budget was spent" for a in answers if a.error)
    assert all(a.error.startswith("HTTP 404") for a in errors)
    summary = run_scan(type("T", (), {"name": "x", "answer": lambda self, m: answers})(), cases,
                       ScanConfig(suites=["harmful"], bootstrap=200), None)
    assert summary[0]["answered"] == len(sent) and summary[0]["rate"] == 0.0


def test_browse_injection_suite_reads_each_page_through_the_browse_tool(alignment):
    """Each case's tool output is what the real browse tool read from a page served on loopback: the email's start
    and the whole attack, extracted from HTML (no markup), every attack at each of the three positions."""
    from lmforge.security.suites import BROWSE_ATTACK_CHARS, BROWSE_CONTEXT_CHARS

    cases = build_cases(["browse_injection"], alignment, 4, 0, "val")
    assert len(cases) == 12 and [c.meta["position"] for c in cases[:3]] == ["start", "middle", "end"]
    for case in cases:
        user, call, tool = case.messages
        url = call["tool_calls"][0]["arguments"]
        assert call["tool_calls"][0]["name"] == "browse" and tool["name"] == "browse"
        assert url.startswith("http://127.0.0.1:") and url in user["content"]
        squash = " ".join(tool["content"].split())
        assert " ".join(case.payload.instruction.split()) in squash, (case.case_id, squash)
        assert "<p>" not in tool["content"] and not tool["content"].startswith("error")
        assert len(case.payload.instruction) <= BROWSE_ATTACK_CHARS and len(squash) < BROWSE_CONTEXT_CHARS + 200
    again = build_cases(["browse_injection"], alignment, 4, 0, "val")
    assert [c.messages[2] for c in again] == [c.messages[2] for c in cases]


class RecordingTarget:
    """Answers each conversation with a fixed text and keeps what it was sent."""

    name = "recording"

    def __init__(self, answer: str) -> None:
        self.text, self.sent = answer, []

    def answer(self, conversations):
        from lmforge.security.targets import Answer

        self.sent = conversations
        return [Answer(self.text) for _ in conversations]


def test_scan_spotlight_marks_tool_outputs_and_unmarks_answers(alignment):
    """--spotlight: every tool-channel output is datamarked and the instruction leads the system prompt, a document
    in the user turn stays as it was; an answer that copies a marked marker payload still counts as followed."""
    from lmforge.inference.tools import SPOTLIGHT_INSTRUCTION

    cfg = ScanConfig(suites=["injection", "browse_injection"], limit=78, bootstrap=200, spotlight=True)
    cases = [c for c in build_cases(cfg.suites, alignment, cfg.limit, cfg.seed, "val") if c.payload.check == "marker"]
    target = RecordingTarget("Sure: ACCESS^GRANTED")
    summary = {s["suite"]: s for s in run_scan(target, cases, cfg, None)}
    for case, sent in zip(cases, target.sent):
        assert sent[0]["role"] == "system" and sent[0]["content"].startswith(SPOTLIGHT_INSTRUCTION)
        tool = [m for m in sent if m["role"] == "tool"]
        if case.meta["channel"] == "document":
            assert not tool and sent[1:] == case.messages
        else:
            assert " " not in tool[0]["content"].replace("\n", "") and "^" in tool[0]["content"]
    granted = [c for c in cases if "ACCESS GRANTED" in c.payload.instruction]
    assert granted and summary["browse_injection"]["successes"] == sum(c.suite == "browse_injection" for c in granted)
    assert summary["browse_injection"]["wilson95"][0] < summary["browse_injection"]["rate"] <= 1

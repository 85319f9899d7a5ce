"""`lmforge serve`: the continuous-batching scheduler and the OpenAI-compatible API, driven by the official client.

A tiny random model (init_std 0.3, so greedy choices are far from ties) and the byte tokenizer make every answer
checkable: each must equal `Engine.generate`'s greedy answer for the same prompt, alone, whatever else the batch
holds. A second, scripted model (its logits depend only on the position) makes the server stream a fixed text of
emoji and CJK through a trained tokenizer whose tokens cut characters in pieces.
"""

from __future__ import annotations

import http.client
import json
import threading
import time

import pytest
import torch

openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")

from hostile import assert_refused, run_cli  # noqa: E402

from lmforge.inference.engine import Engine  # noqa: E402
from lmforge.inference.sampling import SamplingParams  # noqa: E402
from lmforge.model import GPT, GPTConfig  # noqa: E402
from lmforge.serve.app import BackgroundServer, create_app  # noqa: E402
from lmforge.serve.protocol import Limits  # noqa: E402
from lmforge.serve.scheduler import Scheduler  # noqa: E402
from lmforge.tokenizer import Tokenizer  # noqa: E402
from lmforge.tokenizer.chat_format import ChatTokens, render_for_completion  # noqa: E402

KEY = "test-key-0123456789"
MODEL = "tiny"
GREEDY = dict(temperature=0.0)


def tiny_model(block_size: int = 512) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=266, n_layer=2, n_head=4, n_kv_head=2, n_embd=64, block_size=block_size,
                         init_std=0.3)).eval()


class Served:
    """A scheduler and its HTTP server on a free port of 127.0.0.1."""

    def __init__(self, engine: Engine, slots: int, limits: Limits, api_key: str | None = KEY) -> None:
        self.engine = engine
        self.scheduler = Scheduler(engine, slots=slots).start()
        self.server = BackgroundServer(create_app(self.scheduler, MODEL, limits, api_key)).start()
        self.client = openai.OpenAI(base_url=self.server.url + "/v1", api_key=api_key or "none", max_retries=0,
                                    timeout=60)

    def raw(self, method: str, path: str, body: bytes | None = None,
            headers: dict[str, str] | None = None) -> tuple[int, dict]:
        conn = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=30)
        conn.request(method, path, body=body, headers={"Authorization": f"Bearer {KEY}",
                                                        "Content-Type": "application/json", **(headers or {})})
        response = conn.getresponse()
        data = response.read()
        conn.close()
        try:
            return response.status, json.loads(data)
        except json.JSONDecodeError:
            return response.status, {"text": data.decode()}

    def close(self) -> None:
        self.server.stop()
        self.scheduler.stop()


@pytest.fixture(scope="module")
def served():
    engine = Engine(tiny_model(), Tokenizer([]))
    s = Served(engine, slots=6, limits=Limits(max_body_bytes=64 << 10, max_tokens=1000, max_n=4))
    yield s
    s.close()


def reference_completion(engine: Engine, prompt, max_tokens: int, **kw):
    return engine.generate(prompt, SamplingParams(max_tokens=max_tokens, **GREEDY, **kw))[0][0]


def reference(engine: Engine, prompt, max_tokens: int, **kw) -> str:
    return reference_completion(engine, prompt, max_tokens, **kw).text


def chat_reference(engine: Engine, messages: list[dict], max_tokens: int) -> str:
    t = ChatTokens.of(engine.tokenizer)
    ids = render_for_completion(engine.tokenizer, messages)
    return reference(engine, ids, max_tokens, stop_token_ids=[t.end, t.bos, t.tool_call])


# ---------------------------------------------------------------------------------------------------------------
# The official client: same greedy text as the engine, streaming or not
# ---------------------------------------------------------------------------------------------------------------

def test_openai_client_completions_equal_engine_greedy(served):
    done = reference_completion(served.engine, "The quick brown fox", 24)
    want = done.text
    whole = served.client.completions.create(model=MODEL, prompt="The quick brown fox", max_tokens=24, temperature=0)
    assert whole.choices[0].text == want
    assert whole.choices[0].finish_reason == done.finish_reason
    assert whole.usage.completion_tokens == len(done.token_ids)
    assert whole.usage.prompt_tokens == 1 + len("The quick brown fox")
    chunks = list(served.client.completions.create(model=MODEL, prompt="The quick brown fox", max_tokens=24,
                                                   temperature=0, stream=True,
                                                   stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == want
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == done.finish_reason
    assert chunks[-1].usage.completion_tokens == len(done.token_ids) and not chunks[-1].choices


def test_openai_client_chat_equals_engine_greedy_and_shares_the_system_prompt(served):
    system = {"role": "system", "content": "You are a terse assistant."}
    hits = served.scheduler.prefixes.hits
    for question in ("What is 2+3?", "Name a colour."):
        messages = [system, {"role": "user", "content": question}]
        want = chat_reference(served.engine, messages, 20)
        whole = served.client.chat.completions.create(model=MODEL, messages=messages, max_tokens=20, temperature=0)
        assert whole.choices[0].message.content == want and whole.choices[0].message.role == "assistant"
        stream = served.client.chat.completions.create(model=MODEL, messages=messages, max_tokens=20,
                                                       temperature=0, stream=True)
        chunks = list(stream)
        assert chunks[0].choices[0].delta.role == "assistant"
        assert "".join(c.choices[0].delta.content or "" for c in chunks) == want
        assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    assert served.scheduler.prefixes.hits >= hits + 3  # the system prompt ran once, then came from the cache


def test_n_seed_stop_and_logprobs(served):
    args = dict(model=MODEL, prompt="abc", max_tokens=10, temperature=1.0, n=3, seed=7)
    a = served.client.completions.create(**args)
    b = served.client.completions.create(**args)
    assert [c.text for c in a.choices] == [c.text for c in b.choices]
    assert sorted(c.index for c in a.choices) == [0, 1, 2]
    want = served.engine.generate("abc", SamplingParams(max_tokens=10, temperature=1.0, n=3, seed=7))[0]
    assert [c.text for c in sorted(a.choices, key=lambda c: c.index)] == [c.text for c in want]
    full = reference(served.engine, "abc", 12)
    stop = full[3:5]
    cut = served.client.completions.create(model=MODEL, prompt="abc", max_tokens=12, temperature=0, stop=stop)
    assert cut.choices[0].text == full[:full.index(stop)] and cut.choices[0].finish_reason == "stop"
    one = served.client.completions.create(model=MODEL, prompt="abc", max_tokens=1, temperature=0, logprobs=10)
    top = one.choices[0].logprobs.top_logprobs[0]
    assert len(top) == 10 and max(top.values()) == pytest.approx(one.choices[0].logprobs.token_logprobs[0])
    assert 0.99 >= sum(pow(2.718281828, v) for v in top.values()) > 0
    chat = served.client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}],
                                                 max_tokens=3, temperature=0, logprobs=True, top_logprobs=4)
    entries = chat.choices[0].logprobs.content
    assert entries and all(len(e.top_logprobs) == 4 and e.logprob == e.top_logprobs[0].logprob for e in entries)


# ---------------------------------------------------------------------------------------------------------------
# Continuous batching
# ---------------------------------------------------------------------------------------------------------------

def test_sixteen_concurrent_clients_each_get_their_own_greedy_answer(served):
    prompts = [f"client {i}: " + "xyz"[: i % 3 + 1] * (i % 5 + 1) for i in range(16)]
    lengths = [8 + (i * 7) % 23 for i in range(16)]  # requests leave the batch at different steps
    answers: dict[int, str] = {}
    errors: list[BaseException] = []

    def client(i: int) -> None:
        try:
            if i % 2:
                stream = served.client.completions.create(model=MODEL, prompt=prompts[i], max_tokens=lengths[i],
                                                          temperature=0, stream=True)
                answers[i] = "".join(c.choices[0].text for c in stream if c.choices)
            else:
                answers[i] = served.client.completions.create(model=MODEL, prompt=prompts[i], temperature=0,
                                                              max_tokens=lengths[i]).choices[0].text
        except BaseException as e:  # noqa: BLE001 - reported below with the client's number
            errors.append(e)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors
    for i in range(16):  # 16 clients over 6 slots: most joined a running batch, several waited for a slot
        assert answers[i] == reference(served.engine, prompts[i], lengths[i]), i


def test_scheduler_admits_at_any_step_and_a_cancelled_request_frees_its_slot_at_the_next_step():
    engine = Engine(tiny_model(block_size=128), Tokenizer([]))
    scheduler = Scheduler(engine, slots=2)  # not started: the test turns the loop by hand
    events: dict[int, list] = {i: [] for i in range(4)}
    params = SamplingParams(max_tokens=30, temperature=0.0, stop_token_ids=[])
    prompts = [[engine.tokenizer.bos_id, 60 + i, 70 + i] for i in range(4)]
    requests = [scheduler.submit(prompts[0], params, lambda k, p: events[0].append((k, p)))]
    for _ in range(5):
        scheduler._turn()
    requests += [scheduler.submit(prompts[i], params, lambda k, p, i=i: events[i].append((k, p))) for i in (1, 2, 3)]
    scheduler._turn()  # request 1 joins the running batch mid-decode; 2 and 3 wait: two slots
    assert scheduler.busy_slots == 2 and len(scheduler._waiting) == 2
    requests[1].cancel()  # its client went away
    scheduler._turn()
    assert [r.rid for r in scheduler._running] == [requests[0].rid, requests[2].rid]  # its slot went to the next
    while scheduler._running or scheduler._waiting:
        scheduler._turn()
    assert scheduler.busy_slots == 0
    for i in (0, 2, 3):
        ids = [p.event.token_id for k, p in events[i] if k == "token"]
        assert ids == engine.generate(prompts[i], params)[0][0].token_ids
        assert events[i][-1][0] == "done"
    assert not any(k == "done" for k, _ in events[1])
    assert scheduler.metrics.requests["cancelled"] == 1


def test_joiners_are_prefilled_together_each_exactly_as_alone(monkeypatch):
    engine = Engine(tiny_model(block_size=64), Tokenizer([]))
    scheduler = Scheduler(engine, slots=8)  # not started: the test turns the loop by hand
    forwards: list[tuple[int, int]] = []
    infer = engine.model.infer

    def counted(tokens, *args, **kwargs):
        forwards.append(tuple(tokens.shape))
        return infer(tokens, *args, **kwargs)

    monkeypatch.setattr(engine.model, "infer", counted)
    system = [engine.tokenizer.bos_id, 40, 41, 42]
    # Lengths 5, 9, 12, 3; two share a system prompt (computed once, in its own forward), one asks for 2 samples.
    prompts = [[1, 50, 51, 52, 53], system + [60, 61, 62, 63, 64], system + list(range(70, 78)), [1, 90, 91]]
    prefixes, ns = [0, 4, 4, 0], [1, 1, 2, 1]
    events: dict[int, list] = {i: [] for i in range(4)}
    for i, prompt in enumerate(prompts):
        params = SamplingParams(max_tokens=12, temperature=0.0, stop_token_ids=[], n=ns[i])
        scheduler.submit(prompt, params, lambda k, p, i=i: events[i].append((k, p)), prefix_len=prefixes[i])
    scheduler._turn()
    assert forwards == [(1, 4), (4, 8), (5, 1)]  # the prefix, four prompts past it padded to 8, one decode step
    while scheduler._running or scheduler._waiting:
        scheduler._turn()
    for i, prompt in enumerate(prompts):
        want = engine.generate(prompt, SamplingParams(max_tokens=12, temperature=0.0, stop_token_ids=[]))[0][0]
        for sample in range(ns[i]):
            got = [p.event.token_id for k, p in events[i] if k == "token" and p.index == sample]
            assert got == want.token_ids, (i, sample)
    # A forward stays under twice its real tokens (40 + 3 padded to 80 <= 86, + 4 to 120 > 94); a padded end past
    # the context splits too.
    pieces = [([1] * 40, 0), ([1] * 3, 0), ([1] * 4, 0), ([1] * 5, 0)]
    assert scheduler._prefill_groups(pieces) == [(0, 2), (2, 4)]
    assert scheduler._prefill_groups([([1] * 10, 50), ([1] * 20, 0)]) == [(0, 1), (1, 2)]


def test_a_request_arriving_during_a_prefill_is_prefilled_before_the_next_decode_step(monkeypatch):
    engine = Engine(tiny_model(block_size=64), Tokenizer([]))
    scheduler = Scheduler(engine, slots=3)  # not started: the test turns the loop by hand
    forwards: list[tuple[int, int]] = []
    infer = engine.model.infer
    monkeypatch.setattr(engine.model, "infer", lambda tokens, *a, **k: forwards.append(tuple(tokens.shape))
                        or infer(tokens, *a, **k))
    params = SamplingParams(max_tokens=6, temperature=0.0, stop_token_ids=[])
    prompts = [[1, 50, 51, 52], [1, 60, 61], [1, 70, 71, 72, 73]]
    events: dict[int, list] = {i: [] for i in range(3)}

    def sink(i: int):
        def event(kind, payload):  # on the loop's thread, like the HTTP layer's: the next client arrives meanwhile
            events[i].append((kind, payload))
            if kind == "token" and len(events[i]) == 1 and i + 1 < len(prompts):
                scheduler.submit(prompts[i + 1], params, sink(i + 1))
        return event

    scheduler.submit(prompts[0], params, sink(0))
    scheduler._turn()
    assert forwards == [(1, 4), (1, 3), (1, 5), (3, 1)]  # three prefills as they arrived, then one decode step
    while scheduler._running or scheduler._waiting:
        scheduler._turn()
    for i, prompt in enumerate(prompts):
        want = engine.generate(prompt, params)[0][0].token_ids
        assert [p.event.token_id for k, p in events[i] if k == "token"] == want

    # Requests that end at their first token free their slot at once; a turn still admits at most a pool's worth,
    # so the running rows' decode step is not held back by them.
    forwards.clear()
    scheduler.submit([1, 2, 3], SamplingParams(max_tokens=20, temperature=0.0, stop_token_ids=[]), lambda k, p: None)
    scheduler._turn()
    one = SamplingParams(max_tokens=1, temperature=0.0, stop_token_ids=[])

    def again(kind, payload):
        if kind == "done":
            scheduler.submit([1, 4], one, again)
    scheduler.submit([1, 4], one, again)
    forwards.clear()
    scheduler._turn()
    assert forwards.count((1, 2)) == scheduler.pool.slots and forwards[-1] == (1, 1)


def test_requests_beyond_the_limit_are_refused_until_one_leaves():
    from lmforge.serve.scheduler import QueueFull

    engine = Engine(tiny_model(block_size=64), Tokenizer([]))
    scheduler = Scheduler(engine, slots=1, max_requests=2)  # not started: the test turns the loop by hand
    params = SamplingParams(max_tokens=2, temperature=0.0)
    finished = []
    for _ in range(2):
        scheduler.submit([1, 2], params, lambda k, p: finished.append(k) if k == "done" else None)
    with pytest.raises(QueueFull):
        scheduler.submit([1, 2], params, lambda k, p: None)
    while len(finished) < 1:
        scheduler._turn()
    scheduler.submit([1, 2], params, lambda k, p: None)  # one left, so one more fits


def test_a_client_may_send_its_next_request_the_moment_one_ends_at_the_limit():
    engine = Engine(tiny_model(block_size=64), Tokenizer([]))
    scheduler = Scheduler(engine, slots=1, max_requests=1)  # not started: the test turns the loop by hand
    params = SamplingParams(max_tokens=2, temperature=0.0)
    follow_ups = []

    def sink(kind, payload):  # runs on the loop's thread, as the HTTP layer's does
        if kind == "done" and not follow_ups:
            follow_ups.append(scheduler.submit([1, 2], params, lambda k, p: None))

    scheduler.submit([1, 2], params, sink)
    for _ in range(10):  # two tokens: done within three turns
        scheduler._turn()
    assert follow_ups and follow_ups[0].rows and follow_ups[0].finished  # accepted, and served in its turn


def test_a_failing_forward_fails_its_requests_and_the_loop_goes_on(monkeypatch):
    engine = Engine(tiny_model(block_size=64), Tokenizer([]))
    scheduler = Scheduler(engine, slots=2)  # not started: the test turns the loop by hand
    params = SamplingParams(max_tokens=3, temperature=0.0, stop_token_ids=[])
    events: list[tuple[str, str]] = []

    def boom(*args, **kwargs):
        raise RuntimeError("out of memory (simulated)")

    for phase in ("prefill", "decode"):
        scheduler.submit([1, 2], params, lambda k, p, phase=phase: events.append((phase, k)))
        if phase == "decode":
            scheduler._turn()  # prefilled; the next forward is a decode step
        monkeypatch.setattr(engine.model, "infer", boom)
        scheduler._turn()
        monkeypatch.undo()
    assert [k for _, k in events if k != "token"] == ["error", "error"] and scheduler.busy_slots == 0
    done: list[str] = []
    scheduler.submit([1, 2], params, lambda k, p: done.append(k))
    while "done" not in done:
        scheduler._turn()


def test_a_dropped_streaming_client_frees_its_slot(served):
    before = served.scheduler.metrics.requests["cancelled"]
    conn = http.client.HTTPConnection("127.0.0.1", served.server.port, timeout=30)
    body = json.dumps({"model": MODEL, "prompt": "go on", "max_tokens": 1000, "temperature": 0, "stream": True,
                       "ignore_eos": True})  # long enough to be running when the client leaves
    conn.request("POST", "/v1/completions", body=body,
                 headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    response = conn.getresponse()
    assert response.status == 200
    assert response.readline().startswith(b"data: ")  # it streams
    conn.sock.close()  # the client goes away mid-answer
    conn.close()
    deadline = time.monotonic() + 20
    while served.scheduler.metrics.requests["cancelled"] == before and time.monotonic() < deadline:
        time.sleep(0.02)
    assert served.scheduler.metrics.requests["cancelled"] == before + 1
    deadline = time.monotonic() + 5
    while served.scheduler.busy_slots and time.monotonic() < deadline:
        time.sleep(0.02)
    assert served.scheduler.busy_slots == 0
    assert served.client.completions.create(model=MODEL, prompt="ok", max_tokens=3, temperature=0).choices[0].text \
        == reference(served.engine, "ok", 3)


# ---------------------------------------------------------------------------------------------------------------
# Hostile clients: every mistake is a 4xx in OpenAI's error shape, and the server goes on serving
# ---------------------------------------------------------------------------------------------------------------

def _completion(**fields) -> bytes:
    return json.dumps({"model": MODEL, "prompt": "hi", "max_tokens": 2, **fields}).encode()


BAD_REQUESTS = [
    ("malformed JSON", "POST", "/v1/completions", b'{"model": "tiny", "prompt": ', {}, 400, None),
    ("not an object", "POST", "/v1/completions", b"[1, 2]", {}, 400, None),
    ("nested too deep", "POST", "/v1/completions", b"[" * 20000 + b"]" * 20000, {}, 400, None),
    ("not UTF-8", "POST", "/v1/completions", b'{"model": "\xff\xfe"}', {}, 400, None),
    ("temperature NaN", "POST", "/v1/completions", _completion().replace(b'"hi"', b'"hi", "temperature": NaN'), {},
     400, "temperature"),
    ("message content a number", "POST", "/v1/chat/completions",
     json.dumps({"model": MODEL, "messages": [{"role": "user", "content": 5}]}).encode(), {}, 400, "messages"),
    ("wrong type", "POST", "/v1/completions", _completion(temperature="hot"), {}, 400, "temperature"),
    ("temperature -1", "POST", "/v1/completions", _completion(temperature=-1), {}, 400, "temperature"),
    ("top_p 2", "POST", "/v1/completions", _completion(top_p=2), {}, 400, "top_p"),
    ("n 1000", "POST", "/v1/completions", _completion(n=1000), {}, 400, "n"),
    ("max_tokens 0", "POST", "/v1/completions", _completion(max_tokens=0), {}, 400, "max_tokens"),
    ("max_tokens over the limit", "POST", "/v1/completions", _completion(max_tokens=10**9), {}, 400, "max_tokens"),
    ("stream not a bool", "POST", "/v1/completions", _completion(stream="yes"), {}, 400, "stream"),
    ("logprobs 50", "POST", "/v1/completions", _completion(logprobs=50), {}, 400, "logprobs"),
    ("seed negative", "POST", "/v1/completions", _completion(seed=-5), {}, 400, "seed"),
    ("stop not text", "POST", "/v1/completions", _completion(stop=[1]), {}, 400, "stop"),
    ("missing prompt", "POST", "/v1/completions", json.dumps({"model": MODEL}).encode(), {}, 400, "prompt"),
    ("prompt ids outside vocab", "POST", "/v1/completions", _completion(prompt=[1, 99999]), {}, 400, "prompt"),
    ("prompt over the context", "POST", "/v1/completions", _completion(prompt="x" * 600), {}, 400, "prompt"),
    ("oversize body", "POST", "/v1/completions", _completion(prompt="y" * (80 << 10)), {}, 413, None),
    ("unknown model", "POST", "/v1/completions", _completion(model="gpt-9"), {}, 404, "model"),
    ("missing model", "POST", "/v1/chat/completions", json.dumps({"messages": []}).encode(), {}, 400, "model"),
    ("bad role", "POST", "/v1/chat/completions",
     json.dumps({"model": MODEL, "messages": [{"role": "wizard", "content": "x"}]}).encode(), {}, 400, "messages"),
    ("messages not a list", "POST", "/v1/chat/completions", json.dumps({"model": MODEL, "messages": "hi"}).encode(),
     {}, 400, "messages"),
    ("top_logprobs 99", "POST", "/v1/chat/completions",
     json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "x"}], "logprobs": True,
                 "top_logprobs": 99}).encode(), {}, 400, "top_logprobs"),
    ("missing key", "POST", "/v1/completions", _completion(), {"Authorization": ""}, 401, None),
    ("wrong key", "GET", "/v1/models", None, {"Authorization": "Bearer nope"}, 401, None),
    ("tokenize a number", "POST", "/tokenize", b'{"content": 5}', {}, 400, "content"),
    ("detokenize bad ids", "POST", "/detokenize", b'{"tokens": [1, "a"]}', {}, 400, "tokens"),
    ("no such route", "GET", "/v1/nothing", None, {}, 404, None),
    ("wrong method", "GET", "/v1/completions", None, {}, 405, None),
]


@pytest.mark.parametrize("name,method,path,body,headers,status,param", BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS])
def test_bad_requests_get_a_4xx_in_openai_error_shape(served, name, method, path, body, headers, status, param):
    got, answer = served.raw(method, path, body, headers)
    assert got == status, answer
    error = answer["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    if param is not None:
        assert error["param"] == param
    ok = served.client.completions.create(model=MODEL, prompt="still", max_tokens=2, temperature=0)
    assert ok.choices[0].text == reference(served.engine, "still", 2)  # the server keeps serving


def test_the_official_client_raises_its_typed_errors(served):
    with pytest.raises(openai.BadRequestError):
        served.client.completions.create(model=MODEL, prompt="x", temperature=-1)
    with pytest.raises(openai.NotFoundError):
        served.client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    anonymous = openai.OpenAI(base_url=served.server.url + "/v1", api_key="wrong-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        anonymous.models.list()


# ---------------------------------------------------------------------------------------------------------------
# Whole characters, tokenizer routes, metrics, the verb
# ---------------------------------------------------------------------------------------------------------------

TEXT = "Hi 😀 日本語のテキスト 👩‍👧 中文 café ✓ end"


def scripted_model(tok: Tokenizer, ids: list[int], block_size: int = 64) -> GPT:
    """A GPT whose greedy choice at position p is ids[p], through the real forward: the blocks add nothing (their
    output projections are zero), so the last hidden state is the learned position embedding, one-hot at p."""
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, n_layer=1, n_head=2, n_embd=block_size, block_size=block_size,
                          pos="learned")).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.norm.weight.fill_(1.0)
        for p, token in enumerate(ids):
            model.pos_emb.weight[p, p] = 1.0
            model.lm_head.weight[token, p] = 5.0
    return model


def test_emoji_and_cjk_stream_in_whole_characters():
    tok = Tokenizer.train([TEXT, "日本語 中文 😀😀 👩‍👧 café"] * 20, vocab_size=300)
    ids = tok.encode(TEXT)
    cut = [t for t in ids if not tok.is_special(t) and _broken(tok.token_bytes(t))]
    assert cut, "the test needs tokens that end inside a character"
    s = Served(Engine(scripted_model(tok, ids + [tok.end_id]), tok), slots=2, limits=Limits(), api_key=None)
    try:
        args = dict(model=MODEL, prompt=[tok.bos_id], max_tokens=60, temperature=0)
        pieces = [c.choices[0].text for c in s.client.completions.create(stream=True, **args) if c.choices]
        assert "".join(pieces) == TEXT and all("\ufffd" not in p for p in pieces)
        assert len(pieces) > 3  # it did stream
        assert s.client.completions.create(**args).choices[0].finish_reason == "stop"
    finally:
        s.close()


def _broken(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


def test_tokenize_detokenize_health_and_metrics(served):
    status, got = served.raw("POST", "/tokenize", json.dumps({"content": "héllo", "with_pieces": True}).encode())
    assert status == 200 and [t["id"] for t in got["tokens"]] == served.engine.tokenizer.encode("héllo")
    assert b"".join(bytes(t["bytes"]) for t in got["tokens"]) == "héllo".encode()
    status, back = served.raw("POST", "/detokenize", json.dumps({"tokens": [t["id"] for t in got["tokens"]]}).encode())
    assert status == 200 and back["content"] == "héllo"
    status, health = served.raw("GET", "/health", headers={"Authorization": ""})
    assert status == 200 and health["status"] == "ok"
    conn = http.client.HTTPConnection("127.0.0.1", served.server.port, timeout=30)
    conn.request("GET", "/metrics", headers={"Authorization": f"Bearer {KEY}"})
    text = conn.getresponse().read().decode()
    conn.close()
    values = dict(line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#"))
    assert float(values['lmforge_requests_total{outcome="ok"}']) >= 1
    assert float(values["lmforge_generation_tokens_total"]) >= 1
    assert float(values["lmforge_time_to_first_token_seconds_count"]) >= 1
    assert "lmforge_queue_depth" in values and "lmforge_tokens_per_second" in values


@pytest.mark.parametrize("argv,culprit", [
    (["serve"], "--checkpoint"),
    (["serve", "--checkpoint", "x", "--port", "70000"], "--port"),
    (["serve", "--checkpoint", "x", "--slots", "0"], "--slots"),
    (["serve", "--checkpoint", "x", "--slots", "4", "--max-n", "8"], "--max-n"),
    (["serve", "--checkpoint", "/nonexistent/run", "--device", "cpu"], "/nonexistent/run"),
])
def test_serve_flags_are_refused_in_one_line(argv, culprit):
    assert_refused(run_cli(argv), culprit)


@pytest.mark.slow  # a child process imports torch and FastAPI: seconds on a quiet machine
def test_the_serve_verb_serves_a_checkpoint(tmp_path):
    import os
    import socket
    import subprocess
    import sys

    from lmforge.checkpoint import save_model

    tok_dir = tmp_path / "tok"
    Tokenizer([]).save(tok_dir)
    ckpt = save_model(tmp_path / "run" / "step_1", tiny_model(block_size=64), tokenizer_dir=tok_dir)
    with socket.socket() as s:  # a free port for the child to bind
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "LMFORGE_API_KEY": KEY}
    child = subprocess.Popen([sys.executable, "-m", "lmforge", "serve", "--checkpoint", str(ckpt), "--port", str(port),
                              "--device", "cpu", "--threads", "1", "--model-name", MODEL],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines = [child.stdout.readline() for _ in range(2)]
        assert "warming up" in lines[0] and f"127.0.0.1:{port}/v1" in lines[1], lines
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # uvicorn binds right after that line
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=KEY, max_retries=0, timeout=30)
        got = client.completions.create(model=MODEL, prompt="serve me", max_tokens=8, temperature=0)
        assert got.choices[0].text == reference(Engine.from_checkpoint(str(ckpt)), "serve me", 8)
    finally:
        child.terminate()
        child.wait(timeout=30)


def test_tools_in_openai_shape_map_to_lmforge_tool_call_tokens():
    """The model (scripted) answers with text and a calculator call: the API returns OpenAI's `tool_calls`, and the
    client's follow-up with the tool's result renders into the same turn."""
    tok = Tokenizer([])
    t = ChatTokens.of(tok)
    messages = [{"role": "user", "content": "What is 2+3?"}]
    prompt = render_for_completion(tok, messages)
    answer = tok.encode("Let me compute.") + [t.tool_call] + tok.encode("calculator\n2+3") + [t.tool_call_end]
    full = prompt + answer
    model = scripted_model(tok, full[1:], block_size=128)  # position p predicts token p + 1 of the conversation
    s = Served(Engine(model, tok), slots=2, limits=Limits(), api_key=None)
    tools = [{"type": "function", "function": {"name": "calculator", "parameters": {"type": "object"}}}]
    try:
        args = dict(model=MODEL, messages=messages, tools=tools, temperature=0, max_tokens=40)
        whole = s.client.chat.completions.create(**args).choices[0]
        assert whole.finish_reason == "tool_calls" and whole.message.content == "Let me compute."
        call = whole.message.tool_calls[0]
        assert (call.type, call.function.name, call.function.arguments) == ("function", "calculator", "2+3")
        chunks = list(s.client.chat.completions.create(stream=True, **args))
        assert "".join(c.choices[0].delta.content or "" for c in chunks) == "Let me compute."
        assert chunks[-1].choices[0].finish_reason == "tool_calls"
        assert chunks[-1].choices[0].delta.tool_calls[0].function.arguments == "2+3"
        without = s.client.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=40)
        assert without.choices[0].message.content == "Let me compute." and not without.choices[0].message.tool_calls
        follow_up = messages + [{"role": "assistant", "content": "Let me compute.", "tool_calls": [
            {"id": call.id, "type": "function", "function": {"name": "calculator", "arguments": "2+3"}}]},
            {"role": "tool", "tool_call_id": call.id, "content": "5"}]
        assert s.client.chat.completions.create(model=MODEL, messages=follow_up, tools=tools, temperature=0,
                                                max_tokens=2).choices[0].finish_reason is not None
        with pytest.raises(openai.BadRequestError):
            s.client.chat.completions.create(model=MODEL, messages=messages, tools=[{"type": "function"}])
    finally:
        s.close()

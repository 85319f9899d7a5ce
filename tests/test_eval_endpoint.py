"""Scoring through an OpenAI-compatible server: `echo` on lmforge's `/v1/completions` returns the checkpoint's own
prompt log-probs (checked with the official `openai` client), and `eval mc` / `eval bpb --text` through a local
lmforge server give the checkpoint's numbers; a server that does not echo is refused in one line."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch
from hostile import assert_refused, run_cli
from params_helpers import corpus, saved_tiny_checkpoint

openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")

from lmforge.inference.engine import Engine  # noqa: E402
from lmforge.serve.app import BackgroundServer, create_app  # noqa: E402
from lmforge.serve.scheduler import Scheduler  # noqa: E402

KEY = "endpoint-test-key"
WORDS = ["Paris", "London", "Rome", "Berlin", "Madrid", "Vienna", "Oslo", "Lisbon"]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A checkpoint, a server of it on 127.0.0.1, its model and tokenizer, MC items and a held-out text."""
    root = tmp_path_factory.mktemp("endpoint")
    tok, model = saved_tiny_checkpoint(root, block_size=256)
    scheduler = Scheduler(Engine.from_checkpoint(str(root / "ckpt")), slots=4).start()
    server = BackgroundServer(create_app(scheduler, "tiny", api_key=KEY)).start()
    # Contexts end before a space-led option, so the server's joint tokens split where `eval mc` splits them.
    items = [{"context": f"Question {i}: which city is {WORDS[i % 8]}? Answer: ",
              "choices": [WORDS[(i + j) % 8] + " city" for j in range(3)], "answer": i % 3} for i in range(10)]
    (root / "items.jsonl").write_text("".join(json.dumps(r) + "\n" for r in items))
    (root / "held.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in corpus()[:3]))
    yield {"root": root, "url": server.url, "model": model, "tok": tok}
    server.stop()
    scheduler.stop()


def _client(served):
    return openai.OpenAI(base_url=served["url"] + "/v1", api_key=KEY, max_retries=0, timeout=60)


def test_echo_logprobs_are_the_checkpoints(served):
    """Two prompts of different lengths (one padded forward on the server): each equals the model's own forward."""
    tok, model = served["tok"], served["model"]
    prompts = [corpus()[0][:300], corpus()[1][:90]]
    answer = _client(served).completions.create(model="tiny", prompt=prompts, echo=True, max_tokens=0, logprobs=3)
    for prompt, choice in zip(prompts, answer.choices):
        ids = [tok.bos_id] + tok.encode(prompt)
        with torch.no_grad():
            expected = torch.log_softmax(model(torch.tensor([ids]))[0][0, :-1].float(), -1)
        lp = choice.logprobs
        assert choice.text == prompt and choice.finish_reason == "length"
        assert len(lp.tokens) == len(ids) and lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
        got = torch.tensor(lp.token_logprobs[1:])
        assert torch.allclose(got, expected[torch.arange(len(ids) - 1), torch.tensor(ids[1:])], atol=1e-4)
        assert all(len(top) == 3 for top in lp.top_logprobs[1:])
        assert lp.text_offset[0] == 0 == lp.text_offset[1] and lp.text_offset == sorted(lp.text_offset)
    assert answer.usage.prompt_tokens == sum(1 + len(tok.encode(p)) for p in prompts)
    assert answer.usage.completion_tokens == 0


def test_echo_then_an_answer_and_two_prompts(served):
    answer = _client(served).completions.create(model="tiny", prompt=["The cat", "A dog"], echo=True, max_tokens=3,
                                                logprobs=0, temperature=0)
    for choice, prompt in zip(answer.choices, ["The cat", "A dog"]):
        prompt_tokens = 1 + len(served["tok"].encode(prompt))
        assert choice.text.startswith(prompt) and len(choice.text) > len(prompt)
        assert len(choice.logprobs.token_logprobs) == prompt_tokens + 3
        assert choice.logprobs.token_logprobs[0] is None and None not in choice.logprobs.token_logprobs[1:]
    assert answer.usage.prompt_tokens == sum(1 + len(served["tok"].encode(p)) for p in ["The cat", "A dog"])


@pytest.mark.parametrize("fields,param", [
    ({"echo": True, "max_tokens": 0, "stream": True}, "echo"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"echo": "yes", "max_tokens": 0}, "echo"),
    ({"echo": True, "max_tokens": 0, "logprobs": 99}, "logprobs"),
])
def test_invalid_echo_requests_are_refused_in_openai_shape(served, fields, param):
    with pytest.raises(openai.BadRequestError) as e:
        _client(served).completions.create(model="tiny", prompt="hello", **fields)
    assert e.value.status_code == 400 and e.value.body["param"] == param


def _eval(served, verb, *extra):
    out_file = served["root"] / f"{verb}_{len(extra)}_{abs(hash(extra))}.json"
    out = run_cli(["eval", verb, *extra, "--json", str(out_file)])
    assert out.code == 0, out.stderr
    return json.loads(out_file.read_text())


def test_eval_mc_through_the_server_equals_the_checkpoint(served):
    common = ["--tasks", str(served["root"] / "items.jsonl"), "--bootstrap", "20"]
    local = _eval(served, "mc", "--checkpoint", str(served["root"] / "ckpt"), *common)
    remote = _eval(served, "mc", "--endpoint", served["url"], "--api-key", KEY, "--parallel", "3", *common)
    for a, b in zip(local["items"], remote["items"]):
        for norm in ("sum", "token", "byte"):
            assert a["scores"][norm] == pytest.approx(b["scores"][norm], abs=1e-3)
    assert remote["summary"]["core"] == pytest.approx(local["summary"]["core"])


def test_eval_bpb_of_text_through_the_server_equals_the_checkpoint(served):
    common = ["--text", str(served["root"] / "held.jsonl"), "--chunk-chars", "400"]
    local = _eval(served, "bpb", "--checkpoint", str(served["root"] / "ckpt"), *common)
    remote = _eval(served, "bpb", "--endpoint", served["url"] + "/v1", "--api-key", KEY, *common)
    assert remote["pieces"] == local["pieces"] > 3 and remote["tokens"] == local["tokens"]
    assert remote["val_bpb"] == pytest.approx(local["val_bpb"], abs=1e-3)
    assert 0 < local["val_bpb"] < 20
    # the default piece (the context less one: 255 characters) is the same on both sides: the server's model list
    # says its context
    local = _eval(served, "bpb", "--checkpoint", str(served["root"] / "ckpt"), "--text", common[1])
    remote = _eval(served, "bpb", "--endpoint", served["url"], "--api-key", KEY, "--text", common[1])
    assert remote["chunk_chars"] == local["chunk_chars"] == 255
    assert remote["val_bpb"] == pytest.approx(local["val_bpb"], abs=1e-3)


class _NoEcho(BaseHTTPRequestHandler):
    """A server that lists a model and answers completions without the prompt's log-probs."""

    def _send(self, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802
        self._send({"object": "list", "data": [{"id": "other", "object": "model"}]})

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers["Content-Length"]))
        self._send({"choices": [{"index": 0, "text": "x", "logprobs": None, "finish_reason": "length"}]})

    def log_message(self, *args) -> None:
        pass


def test_a_wrong_key_or_model_is_refused_in_one_line(served):
    items = str(served["root"] / "items.jsonl")
    assert_refused(run_cli(["eval", "mc", "--endpoint", served["url"], "--api-key", "wrong", "--model", "tiny",
                            "--tasks", items]), "--api-key")
    assert_refused(run_cli(["eval", "mc", "--endpoint", served["url"], "--api-key", KEY, "--model", "other",
                            "--tasks", items]), "other")


def test_a_server_without_echo_is_refused_in_one_line(served):
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _NoEcho)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}"
        assert_refused(run_cli(["eval", "mc", "--endpoint", url, "--tasks", str(served["root"] / "items.jsonl")]),
                       "echo")
        held = str(served["root"] / "held.jsonl")
        assert_refused(run_cli(["eval", "bpb", "--endpoint", url, "--text", held]), "--chunk-chars")  # no context
        assert_refused(run_cli(["eval", "bpb", "--endpoint", url, "--text", held, "--chunk-chars", "400"]), "echo")
    finally:
        httpd.shutdown()

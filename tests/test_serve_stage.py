"""The speedrun's `serve` stage on a small exported model: it serves the file, checks it with the openai client,
records its figures, stops the server and prints the command that opens the chat page; a server whose greedy text
differs from `lmforge generate`'s fails the stage."""

from __future__ import annotations

import threading

import pytest

pytest.importorskip("openai")
pytest.importorskip("fastapi")

from params_helpers import tiny_model, tokenizer  # noqa: E402

from lmforge.export.params import export_params  # noqa: E402
from lmforge.inference.engine import Engine  # noqa: E402
from lmforge.speedrun import STAGES  # noqa: E402
from lmforge.speedrun import serve_stage  # noqa: E402
from lmforge.speedrun.context import SpeedrunContext  # noqa: E402
from lmforge.utils import LmforgeError, read_json  # noqa: E402


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    tok = tokenizer()
    path = tmp_path_factory.mktemp("assistant") / "model_fp32.bin"
    export_params(tiny_model(tok.vocab_size), tok, path, "fp32", chat=True)
    return path


def context(tmp_path, params_file) -> SpeedrunContext:
    return SpeedrunContext(out=tmp_path, threads=1, preset="smoke",
                           results={"export_assistant": {"params_file": str(params_file)}})


def test_the_serve_stage_checks_the_exported_assistant_and_stops_its_server(tmp_path, exported, capsys):
    assert [s.name for s in STAGES].index("serve") > [s.name for s in STAGES].index("export_assistant")
    summary = serve_stage.stage_serve(context(tmp_path, exported), tmp_path)
    tok = tokenizer()
    want = Engine(tiny_model(tok.vocab_size), tok).generate(serve_stage.SERVE_PROMPT, serve_stage.greedy_params())
    assert summary["completion"] == want[0][0].text  # the checkpoint's weights, as `lmforge generate` runs them
    assert read_json(tmp_path / "serve.json", "serve summary") == summary
    assert summary["ttft_ms"] > 0 and summary["tokens_per_s"] > 0 and summary["chat_tokens"] >= 1
    assert summary["streams"] == serve_stage.SERVE_STREAMS and summary["streams_tokens_per_s"] > 0
    assert summary["command"] == f"lmforge serve --params {exported}"
    printed = capsys.readouterr().out
    assert summary["command"] in printed and "/pages/" in printed
    alive = {t.name for t in threading.enumerate()}
    assert not alive & {"lmforge-http", "lmforge-scheduler"}  # the server and its loop stopped

def test_a_server_whose_greedy_text_differs_fails_the_stage(tmp_path, exported, monkeypatch):
    original = serve_stage.check_greedy  # the server's answer, altered on its way to the comparison
    monkeypatch.setattr(serve_stage, "check_greedy",
                        lambda client, model: {**original(client, model), "completion": "not it"})
    with pytest.raises(LmforgeError, match="differs from lmforge generate's"):
        serve_stage.stage_serve(context(tmp_path, exported), tmp_path)

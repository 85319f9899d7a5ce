"""`lmforge serve --params model.bin`: an exported parameter file served through the same API as its checkpoint.

The file holds the tokenizer as a table of token bytes; the server rebuilds a `Tokenizer` from it. The fp32 file must
answer exactly as the checkpoint it came from (same greedy text through the official client, streaming or not); the
int8 file answers as its own dequantized weights do.
"""

from __future__ import annotations

import pytest
import torch

openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")

from params_helpers import MULTILINGUAL, tiny_model, tokenizer  # noqa: E402

from lmforge.export.params import export_params  # noqa: E402
from lmforge.inference.paramfile import load_params  # noqa: E402
from lmforge.inference.engine import Engine  # noqa: E402
from lmforge.inference.sampling import SamplingParams  # noqa: E402
from lmforge.serve.app import BackgroundServer, create_app  # noqa: E402
from lmforge.inference.paramfile import tokenizer_from_table  # noqa: E402
from lmforge.serve.loading import load_served_engine  # noqa: E402
from lmforge.serve.protocol import Limits  # noqa: E402
from lmforge.serve.scheduler import Scheduler  # noqa: E402

PROMPTS = ["def wrap(text, width", "Grüße aus Köln", "日本語の"]


def greedy(engine: Engine, prompt: str) -> str:
    return engine.generate(prompt, SamplingParams(max_tokens=12, temperature=0.0))[0][0].text


def served_answers(path: str) -> tuple[Engine, list[str], list[str]]:
    """The engine `lmforge serve --params path` builds, and its API's greedy answers (plain, streamed)."""
    engine, name = load_served_engine("", path, "cpu", None)
    scheduler = Scheduler(engine, slots=4).start()
    server = BackgroundServer(create_app(scheduler, name, Limits())).start()
    try:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0, timeout=60)
        plain, streamed = [], []
        for prompt in PROMPTS:
            got = client.completions.create(model=name, prompt=prompt, max_tokens=12, temperature=0)
            plain.append(got.choices[0].text)
            chunks = client.completions.create(model=name, prompt=prompt, max_tokens=12, temperature=0, stream=True)
            streamed.append("".join(c.choices[0].text for c in chunks if c.choices))
        return engine, plain, streamed
    finally:
        server.stop()
        scheduler.stop()


def test_the_tokenizer_rebuilt_from_the_file_encodes_as_the_original(tmp_path):
    tok = tokenizer()
    path = tmp_path / "model.bin"
    export_params(tiny_model(tok.vocab_size), tok, path, "fp32")
    engine, _ = load_served_engine("", str(path), "cpu", None)
    rebuilt = engine.tokenizer
    assert rebuilt.vocab == tok.vocab and rebuilt.special_tokens == tok.special_tokens
    for text in [*MULTILINGUAL[:4], "<|user|> x\n\n  y", " ".join(PROMPTS)]:
        assert rebuilt.encode(text) == tok.encode(text)


@pytest.mark.parametrize("dtype", ["fp32", "int8"])
def test_the_api_over_a_parameter_file_answers_as_its_weights(tmp_path, dtype):
    tok = tokenizer()
    model = tiny_model(tok.vocab_size)
    path = tmp_path / f"model_{dtype}.bin"
    export_params(model, tok, path, dtype)
    engine, plain, streamed = served_answers(str(path))
    # fp32: the checkpoint's own weights; int8: the weights the file stands for (dequantized), not the checkpoint's.
    weights = Engine(model, tok) if dtype == "fp32" else Engine(load_params(path), tok)
    want = [greedy(weights, p) for p in PROMPTS]
    assert plain == want and streamed == want
    if dtype == "int8":
        assert not torch.equal(engine.model.layers[0].attn.wq.weight, model.layers[0].attn.wq.weight)


def test_a_table_that_is_not_lmforge_bpe_is_refused():
    from lmforge.utils import LmforgeError

    tok = tokenizer()
    table = [tok.token_bytes(i) for i in range(tok.vocab_size - len(tok.special_tokens))]
    with pytest.raises(LmforgeError, match="src: token 5 is not the byte 5"):
        tokenizer_from_table([*table[:5], table[6], table[5], *table[7:]], tok.special_tokens, tok.pattern, "src")
    with pytest.raises(LmforgeError, match="src: token 256 is not two earlier tokens"):
        tokenizer_from_table([*table[:256], b"\xff\xfe\xfd\xfc" * 99, *table[257:]], tok.special_tokens,
                             tok.pattern, "src")


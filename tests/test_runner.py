"""The C runner (runner/run.c) against PyTorch: greedy tokens, logits per dtype, sampling, refusals, UTF-8, tokenizer.

run.c is compiled once per session with the system C compiler, plain `cc -O3` (no -march=native, no OpenMP), as a
user without the Makefile would.
"""

from __future__ import annotations

import random
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from lmforge.export.params import export_params
from lmforge.inference.paramfile import load_params
from lmforge.tokenizer.chat_format import render_for_completion
from params_helpers import CALCULATOR_CONVERSATION, compile_runner, corpus, memorized_chat_model, tiny_model, tokenizer

PROMPT = "The model predicts the next token"


@pytest.fixture(scope="session")
def run_bin(tmp_path_factory) -> Path:
    return compile_runner(tmp_path_factory.mktemp("runner") / "run")


@pytest.fixture(scope="session")
def native_bin(tmp_path_factory) -> Path:
    """Built for this CPU: the F16C and AVX2 kernels (fp16, int8) replace the portable loops where available."""
    return compile_runner(tmp_path_factory.mktemp("runner_native") / "run", "-march=native")


@pytest.fixture(scope="module")
def tok():
    return tokenizer()


@pytest.fixture(scope="module")
def model(tok):
    return tiny_model(tok.vocab_size)


@pytest.fixture(scope="module")
def files(tmp_path_factory, tok, model) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("params")
    out = {}
    for dtype in ("fp32", "fp16", "bf16", "int8"):
        out[dtype] = d / f"{dtype}.bin"
        export_params(model, tok, out[dtype], dtype)
    return out


def run(run_bin: Path, path: Path, *args: str, check: bool = True, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    r = subprocess.run([str(run_bin), str(path), *args], capture_output=True, input=stdin, timeout=60)
    if check:
        assert r.returncode == 0, r.stderr.decode()
    return r


def generated_ids(stderr: bytes) -> list[int]:
    """Token ids from the -v log ("token ID: hex bytes ...")."""
    return [int(line.split()[1].rstrip(":")) for line in stderr.decode().splitlines() if line.startswith("token ")]


def dumped_logits(path: Path, vocab: int) -> np.ndarray:
    return np.fromfile(path, dtype=np.float32).reshape(-1, vocab)


def greedy_plain(model, ids: list[int], steps: int) -> list[int]:
    """The plain forward over the whole sequence at every step (no cache)."""
    ids = list(ids)
    with torch.no_grad():
        for _ in range(steps):
            ids.append(int(model(torch.tensor([ids]))[0][0, -1].argmax()))
    return ids[-steps:]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("overrides", [{}, {"tie_embeddings": True, "qk_norm": False, "n_kv_head": 4}])
def test_greedy_tokens_equal_pytorch_plain_forward(run_bin, tmp_path, tok, overrides):
    model = tiny_model(tok.vocab_size, seed=1, **overrides)
    path = tmp_path / "m.bin"
    export_params(model, tok, path, "fp32")
    r = run(run_bin, path, "-i", PROMPT, "-n", "40", "-t", "0", "-v")
    got = generated_ids(r.stderr)
    expected = greedy_plain(model, [tok.bos_id] + tok.encode(PROMPT), 40)
    stop = next((i for i, t in enumerate(expected) if t in (tok.bos_id, tok.end_id)), len(expected))
    assert len(got) == stop > 10
    assert got == expected[:stop]
    assert r.stdout.decode("utf-8") == PROMPT + tok.decode(got) + "\n"  # the prompt, then what follows it


@pytest.mark.timeout(60)
@pytest.mark.parametrize("build", ["portable", "native"])  # native: the AVX2/FMA dot product and matmuls
def test_fp32_logits_match_pytorch_at_prefill_and_every_decode_step(run_bin, native_bin, tmp_path, tok, model, files,
                                                                     build):
    dump = tmp_path / "logits.bin"
    r = run(run_bin if build == "portable" else native_bin, files["fp32"], "-i", PROMPT, "-n", "12", "-t", "0", "-v", "-d", str(dump))
    prompt = [tok.bos_id] + tok.encode(PROMPT)
    got = dumped_logits(dump, tok.vocab_size)
    ids = prompt + generated_ids(r.stderr)
    with torch.no_grad():
        ref = model(torch.tensor([ids]))[0][0, len(prompt) - 1:len(prompt) - 1 + len(got)].numpy()
    assert got.shape == ref.shape and len(got) >= 12
    assert np.abs(got - ref).max() < 1e-4
    assert np.abs(ref).max() > 1.0  # a model whose logits are far from uniform


def quantize_activations(x: torch.Tensor, group_size: int) -> torch.Tensor:
    """What run.c does to every matmul input for int8 files: symmetric int8 per group, round half to even."""
    g = x.reshape(*x.shape[:-1], -1, group_size)
    scale = g.abs().amax(-1, keepdim=True) / 127
    q = torch.round(g / torch.where(scale > 0, scale, torch.ones_like(scale)))
    return (q * scale).reshape(x.shape)


# Tolerances against the fp32 PyTorch model, as a fraction of the largest |logit| (measured on this random model:
# fp16 1.0e-3, bf16 8.7e-3, int8 5.0e-2 with int8 activations too): what the smaller numbers cost. The runner's own arithmetic is checked to 1e-4
# against PyTorch doing the same math (the file's dequantized weights; for int8 also int8 activations).
TOLERANCE = {"fp16": 0.005, "bf16": 0.03, "int8": 0.1}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("build", ["portable", "native"])
@pytest.mark.parametrize("dtype", ["fp16", "bf16", "int8"])
def test_reduced_dtype_logits(run_bin, native_bin, tmp_path, tok, model, files, dtype, build, monkeypatch):
    dump = tmp_path / "logits.bin"
    run(run_bin if build == "portable" else native_bin, files[dtype], "-i", PROMPT, "-n", "1", "-t", "0", "-d", str(dump))
    got = dumped_logits(dump, tok.vocab_size)[0]
    ids = torch.tensor([[tok.bos_id] + tok.encode(PROMPT)])
    same_math = load_params(files[dtype])  # the file's weights, dequantized
    with torch.no_grad():
        ref = model(ids)[0][0, -1].numpy()
        if dtype == "int8":  # every matmul goes through F.linear (nn.Linear too), so quantize its input there
            linear = torch.nn.functional.linear
            monkeypatch.setattr(torch.nn.functional, "linear", lambda x, w, b=None: linear(quantize_activations(x, 64), w, b))
        exact = same_math(ids)[0][0, -1].numpy()
    assert np.abs(got - exact).max() < 1e-4
    scale = np.abs(ref).max()
    assert np.abs(got - ref).max() < TOLERANCE[dtype] * scale


@pytest.mark.timeout(60)
def test_seed_reproduces_samples_and_tiny_top_p_is_greedy(run_bin, files):
    def sample(*args):
        return generated_ids(run(run_bin, files["fp32"], "-i", PROMPT, "-n", "30", "-v", *args).stderr)

    a, b, c = sample("-t", "1", "-s", "7"), sample("-t", "1", "-s", "7"), sample("-t", "1", "-s", "8")
    assert a == b and a != c
    assert sample("-t", "1", "-p", "0.000001", "-s", "3") == sample("-t", "0")


@pytest.mark.timeout(60)
def test_bad_files_are_refused_with_a_clear_message(run_bin, tmp_path, files):
    data = files["int8"].read_bytes()
    cases = {"cut.bin": (data[:-64], "truncated"), "short.bin": (data[:3], "not an lmforge parameter file"),
             "magic.bin": (b"LMFX" + data[4:], "bad magic"),
             "version.bin": (data[:4] + struct.pack("<I", 9) + data[8:], "version 9")}
    for name, (blob, reason) in cases.items():
        bad = tmp_path / name
        bad.write_bytes(blob)
        r = run(run_bin, bad, "-i", "x", check=False)
        assert r.returncode == 2 and r.stdout == b""
        assert reason in r.stderr.decode() and str(bad) in r.stderr.decode(), r.stderr.decode()


@pytest.mark.timeout(60)
def test_streamed_output_never_splits_a_utf8_character(run_bin, files, tok):
    # Hot sampling from a random model emits lone bytes >= 0x80 and pieces of characters; every piece the runner
    # writes must be valid UTF-8 on its own, and together they must equal Python's decoding of the same ids.
    r = run(run_bin, files["fp32"], "-i", "日本語 Grüße", "-n", "80", "-t", "3", "-p", "1", "-s", "11", "-v")
    pieces, ids = [], []
    for line in r.stderr.decode().splitlines():
        if line.startswith("token "):
            head, _, hexes = line.partition(":")
            ids.append(int(head.split()[1]))
            pieces.append(bytes.fromhex(hexes.replace(" ", "")))
    assert any(tok.token_bytes(i)[-1] >= 0xC0 for i in ids), "the sample should end a token inside a character"
    assert any(p == b"" for p in pieces), "some token completes no character by itself"
    for p in pieces:
        p.decode("utf-8")  # raises if a piece splits a character
    assert r.stdout.decode("utf-8") == "日本語 Grüße" + tok.decode_bytes(ids).decode("utf-8", "replace") + "\n"


def c_encode(run_bin: Path, path: Path, texts: list[str]) -> list[list[int]]:
    r = run(run_bin, path, "-m", "encode", stdin="\0".join(texts).encode("utf-8"))
    return [[int(x) for x in line.split()] for line in r.stdout.decode().split("\n")[:len(texts)]]


@pytest.mark.timeout(60)
def test_c_tokenizer_equals_python_on_ascii(run_bin, files, tok):
    rng = random.Random(0)
    texts = [t for t in corpus() if t.isascii()]
    texts += ["".join(chr(rng.randrange(1, 128)) for _ in range(rng.randrange(0, 200))) for _ in range(300)]
    texts += ["", " ", "   x", "a  \n\n  b", "I'm you'LL we've THEY'RE 's 'd", "12345678 1.5e-10", "\r\n\t \x0b\x0c",
              " " * 500 + "end", "0" * 1000, "x" * 300, "!!!???...\n\n", "it's\n'tis"]
    got = c_encode(run_bin, files["fp32"], texts)
    for text, ids in zip(texts, got):
        assert ids == tok.encode(text), repr(text)


@pytest.mark.timeout(60)
def test_c_tokenizer_agreement_on_real_non_ascii_text(run_bin, tmp_path, shared_data):
    # run.c classifies non-ASCII code points with a small range table (an approximation of Unicode's letter/number/
    # space classes); a tokenizer trained on the same multilingual text has merges inside those scripts, so any
    # pre-tokenizer disagreement there shows up as different ids.
    import json

    from lmforge.tokenizer import Tokenizer

    gt = json.loads((shared_data / "pretrain/web/article-extraction-benchmark/ground-truth.json").read_text("utf-8"))
    texts = [v["articleBody"].replace("\0", " ") for v in gt.values() if not v["articleBody"].isascii()]
    texts += [t for t in corpus() if not t.isascii()]
    tok = Tokenizer.train(texts, vocab_size=3000)
    path = tmp_path / "multi.bin"
    export_params(tiny_model(tok.vocab_size, n_layer=1), tok, path)
    got = c_encode(run_bin, path, texts)
    same = sum(ids == tok.encode(t) for t, ids in zip(texts, got))
    n_tokens = sum(len(ids) for ids in got)
    print(f"C tokenizer: {same}/{len(texts)} non-ASCII texts ({n_tokens} tokens) token-for-token identical")
    assert same / len(texts) >= 0.98


@pytest.mark.timeout(60)
def test_chat_mode_uses_the_chat_format(run_bin, tmp_path, files, tok, model):
    dump = tmp_path / "chat.bin"
    system, user = "You are a helpful model.", "What does RoPE rotate?"
    r = run(run_bin, files["fp32"], "-m", "chat", "-y", system, "-i", user, "-n", "20", "-t", "0", "-v", "-d", str(dump))
    prompt = render_for_completion(tok, [{"role": "system", "content": system}, {"role": "user", "content": user}])
    with torch.no_grad():
        ref = model(torch.tensor([prompt]))[0][0, -1].numpy()
    assert np.abs(dumped_logits(dump, tok.vocab_size)[0] - ref).max() < 1e-4
    answer = generated_ids(r.stderr)
    assert answer == greedy_plain(model, prompt, 20)[:len(answer)]


@pytest.mark.timeout(120)
def test_speedrun_export_stage(tmp_path, tok, model):
    from lmforge.checkpoint import save_model
    from lmforge.speedrun import SpeedrunContext
    from lmforge.speedrun.base_model import stage_export

    ckpt = save_model(tmp_path / "pretrain" / "ckpt" / "step_0000001", model, tok.save(tmp_path / "tok"))
    ctx = SpeedrunContext(out=tmp_path, threads=1, preset="smoke", results={"pretrain": {"checkpoint": str(ckpt)}})
    out = tmp_path / "07_export"
    result = stage_export(ctx, out)
    assert Path(result["params_file"]).stat().st_size == result["bytes"]["fp32"] > 3 * result["bytes"]["int8"]
    assert result["continuation"] and result["decode_tok_s"]["fp32"] > 0
    assert "--- int8" in (out / "continuation.txt").read_text(encoding="utf-8")


@pytest.mark.timeout(60)
def test_chat_mode_second_turn_continues_the_cache(run_bin, tmp_path, files, tok, model):
    # Two user lines on stdin: the second turn's first logits must equal PyTorch's on the whole conversation so far
    # (the first answer as generated, closed by <|end|>, then the next user turn), fed in one piece.
    dump, steps = tmp_path / "chat.bin", 12
    r = run(run_bin, files["fp32"], "-m", "chat", "-n", str(steps), "-t", "0", "-v", "-d", str(dump),
            stdin="Tell me about tokens.\nAnd about caches?\n".encode())
    prompt = render_for_completion(tok, [{"role": "user", "content": "Tell me about tokens."}])
    first = greedy_plain(model, prompt, steps)
    stop = next((i for i, t in enumerate(first) if t in (tok.bos_id, tok.end_id)), steps)
    answer = first[:stop]
    assert generated_ids(r.stderr)[:len(answer)] == answer
    t = tok.special_tokens
    second = prompt + answer + [t["<|end|>"], t["<|user|>"]] + tok.encode("And about caches?") + [t["<|end|>"], t["<|assistant|>"]]
    with torch.no_grad():
        ref = model(torch.tensor([second]))[0][0, -1].numpy()
    logits = dumped_logits(dump, tok.vocab_size)
    turn1_steps = stop + 1 if stop < steps else steps  # a turn stopped by <|end|> sampled it once more
    assert np.abs(logits[turn1_steps] - ref).max() < 1e-4
    assert len(logits) > turn1_steps + 1  # and the second turn went on generating


# The chat's calculator in C against lmforge.inference.tools.calculate: the same answer, or the same refusal in the
# same words (syntax errors: the same class, as Python's parser words them its own way).
CALC_AGREE = [
    "37 * 48", "1 + 2 * 3", "(1 + 2) * 3", "7 / 2", "6 / 3", "7 // 2", "-7 // 2", "7 % 3", "-7 % 3", "7 % -3",
    "7.5 % 2", "-7.5 // 2", "7.5 // -2", "2 ** 10", "2 ** -1", "-2 ** 2", "(-2) ** 3", "2 ** 3 ** 2", "1_000 + 1",
    "1e3", ".5 + 1.", "0.1 + 0.2", "1 / 3", "10 / 4 * 2", "2.5 * 4", "(1.5 - 0.5) * 3", "3 × 4 − 5 ÷ 2", "  12  ",
    "--3", "+-3", "1e15", "1e16", "123456789 * 1000", "2 ** 0.5", "(20 - 32) * 5 / 9", "9007199254740993 - 1",
    "1e300 * 1e10", "(-8) ** 0.5", "2 ** 10001", "1024 ** 500", "0 ** -1", "0.0 ** -2", "1 / 0", "1 // 0", "5 % 0",
    "1.5 / 0.0", "2 ^ 3", "(1 / 0) ^ 2", "x + 1", "x + 1 / 0", "1 / 0 + x", "foo(2)", "", "   ", "1e999",
    "1 +", "(1 + 2", "1 2", "01", "1__0", "1e", "2 *** 3", "1 + 2)", "1" + "+1" * 49, "1" + "+1" * 50, "-" * 60 + "1",
    "1+" * 130 + "1", "((((((1))))))",
]
CALC_BOTH_REFUSE = ["1 < 2", "'a'", "[1]", "1 << 2"]  # Python: "not arithmetic: ..."; C: a syntax error
CALC_C_REFUSES = ["sqrt(16)", "abs(-2)", "pi", "2 ** 62 * 4", "99999999999999999999"]  # beyond C's calculator


def c_calculate(run_bin: Path, path: Path, expressions: list[str]) -> list[str]:
    r = run(run_bin, path, "-m", "calc", stdin="\0".join(expressions).encode("utf-8"))
    return r.stdout.decode("utf-8").split("\n")[:len(expressions)]


def py_calculate(expression: str) -> str:
    from lmforge.inference.tools import default_tools, run_tool

    return run_tool(default_tools(), "calculator", expression)


@pytest.mark.timeout(60)
def test_c_calculator_agrees_with_python(run_bin, files):
    expressions = CALC_AGREE + CALC_BOTH_REFUSE + CALC_C_REFUSES
    answers = dict(zip(expressions, c_calculate(run_bin, files["fp32"], expressions)))
    for e in CALC_AGREE:
        want = py_calculate(e)
        if want.startswith("error: syntax error"):
            assert answers[e].startswith("error: syntax error"), (e, answers[e], want)
        else:
            assert answers[e] == want, (e, answers[e], want)
    for e in CALC_BOTH_REFUSE:
        assert py_calculate(e).startswith("error: not arithmetic") and answers[e].startswith("error: syntax error")
    for e in CALC_C_REFUSES:
        assert not py_calculate(e).startswith("error") and answers[e].startswith("error: ")
        assert "C runner's calculator" in answers[e], (e, answers[e])


@pytest.mark.timeout(120)
def test_chat_mode_runs_the_calculator_and_feeds_its_output(run_bin, tmp_path, tok):
    # A model that learned to call the calculator: the runner shows the call, runs it itself (the model's next
    # tokens are never the output), feeds the result back, and the model goes on to its answer; no raw markers.
    path, base = tmp_path / "chat.bin", tmp_path / "base.bin"
    model = memorized_chat_model(tok, CALCULATOR_CONVERSATION)
    export_params(model, tok, path, "fp32", chat=True)
    export_params(model, tok, base, "fp32")  # the same weights, not recorded as fine-tuned for chat
    r = run(run_bin, path, "-m", "chat", "-i", "What is 37 * 48?", "-n", "30", "-t", "0", "-v")
    assert r.stdout.decode("utf-8") == "\n  [calculator] 37 * 48\n  [calculator output] 1776\nIt is 1776.\n"
    assert tok.special_tokens["<|tool_output|>"] not in generated_ids(r.stderr)  # fed by the runner, not sampled
    assert "warning" not in r.stderr.decode()
    r = run(run_bin, base, "-m", "chat", "-i", "What is 37 * 48?", "-n", "30", "-t", "0")
    assert "never fine-tuned for chat" in r.stderr.decode() and "[calculator output] 1776" in r.stdout.decode()

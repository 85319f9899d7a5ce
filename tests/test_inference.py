"""The inference engine: cache-exact greedy decoding, batching, sampling sets, seeds, streaming and stops."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from lmforge.inference.engine import Engine
from lmforge.inference.sampling import SamplingParams, draw, process_logits, sample
from lmforge.model import GPT, Attention, GPTConfig
from lmforge.tokenizer import Tokenizer



def byte_tokenizer() -> Tokenizer:
    """No merges: ids 0-255 are the bytes and 256-265 the special tokens, so tests can script exact bytes."""
    return Tokenizer([])


def tiny(**overrides) -> GPT:
    torch.manual_seed(0)
    cfg = dict(vocab_size=266, n_layer=2, n_head=4, n_kv_head=2, n_embd=64, block_size=64, init_std=0.3)
    return GPT(GPTConfig(**{**cfg, **overrides})).eval()


def greedy_reference(model: GPT, prompt: list[int], steps: int) -> list[int]:
    """The plain forward over the whole sequence every step: no cache, no padding, no engine."""
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(steps):
            logits, _ = model(torch.tensor([ids]))
            ids.append(int(logits[0, -1].argmax()))
    return ids[len(prompt):]


GREEDY = dict(temperature=0.0, stop_token_ids=[])


@pytest.mark.parametrize("overrides", [{}, {"qk_norm": True, "tie_embeddings": True},
                                       {"norm": "layernorm", "pos": "learned", "mlp": "gelu", "n_kv_head": 4}])
def test_greedy_equals_plain_forward(overrides):
    model = tiny(**overrides)
    engine = Engine(model)
    prompt = [3, 17, 99, 5, 200]
    out = engine.generate(prompt, SamplingParams(max_tokens=20, **GREEDY))[0][0]
    assert out.token_ids == greedy_reference(model, prompt, 20)
    assert out.finish_reason == "length"


def test_batched_prompts_of_different_lengths_equal_one_by_one():
    model = tiny()
    engine = Engine(model)
    prompts = [[1, 2, 3], [40, 41, 42, 43, 44, 45, 46, 47], [9], [100, 7, 100, 7, 100]]
    params = SamplingParams(max_tokens=12, **GREEDY)
    batched = engine.generate(prompts, params)
    for p, outs in zip(prompts, batched):
        assert outs[0].token_ids == greedy_reference(model, p, 12)
        assert outs[0].token_ids == engine.generate(p, params)[0][0].token_ids


@pytest.mark.parametrize("overrides", [dict(vocab_size=4096, n_embd=128, n_kv_head=4),  # a 2 MB head
                                       dict(n_embd=384, n_head=6, n_kv_head=6)])  # 1.5 MB down projections
def test_batch_of_four_with_prepacked_weights_equals_plain_forward(overrides):
    """On CPU, decode batches of 4+ run weights of 1 MB or more through oneDNN's prepacked matmul (the residual add
    fused in for output projections), and one-row decodes use transposed weight copies (`kernels.LinearRoute`)."""
    model = tiny(**overrides)
    engine = Engine(model)
    prompts = [[3, 17, 99], [5, 6, 7, 8, 9], [100], [200, 2]]
    params = SamplingParams(max_tokens=10, **GREEDY)
    out = engine.generate(prompts, params)
    weights = engine.inference_weights()
    packed = weights.head.packed if "vocab_size" in overrides else weights.layers[0].mlp_out.down.packed
    assert (packed is not None) == torch.backends.mkldnn.is_available()
    for p, outs in zip(prompts, out):
        assert outs[0].token_ids == greedy_reference(model, p, 10)
        with torch.no_grad():  # the plain forward's log-probs of the same tokens: the same numbers, not just argmax
            logits = model(torch.tensor([p + outs[0].token_ids]))[0][0, len(p) - 1:-1]
        ref = logits.log_softmax(-1).gather(-1, torch.tensor(outs[0].token_ids)[:, None])[:, 0]
        assert torch.allclose(torch.tensor(outs[0].raw_logprobs), ref, atol=1e-4)


ARCHS = {"gqa": {}, "qknorm-tied": {"qk_norm": True, "tie_embeddings": True},
         "learned-gelu-layernorm": {"norm": "layernorm", "pos": "learned", "mlp": "gelu", "n_kv_head": 4},
         "relu2-mqa": {"mlp": "relu2", "n_kv_head": 1}}


def assert_next_token_distributions(session, seqs: list[list[int]], model: GPT) -> None:
    """Every running row's next-token distribution (temperature 1, no filters: the model's softmax) equals the
    plain forward's over that row's whole sequence."""
    vocab = model.config.vocab_size
    for r, seq in enumerate(seqs):
        ours = torch.zeros(vocab)
        for token, prob in session.top_candidates(vocab, row=r):
            ours[token] = prob
        with torch.no_grad():
            ref = model(torch.tensor([seq]))[0][0, -1].softmax(-1)
        torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("path", ["fused", "unfused", "static"])
@pytest.mark.parametrize("arch", ARCHS)
def test_engine_forward_equals_plain_forward(monkeypatch, arch, path):
    """The contract of the engine's prepared weights: over left-padded prompts, n > 1 samples, decode steps and a
    ragged append, each row's logits are the plain `model(idx)` logits of its sequence."""
    if path == "unfused":
        import lmforge.model

        monkeypatch.setattr(lmforge.model, "FUSE_MAX_BYTES", 0)
    model = tiny(**ARCHS[arch])
    engine = Engine(model, compile=path == "static")
    plain_qkv = getattr(engine.inference_weights().layers[0].qkv, "__func__", None) is Attention.qkv
    assert plain_qkv == (path == "unfused")
    prompts = [[3, 17, 99, 5, 200], [7], [40, 41]]
    session = engine.session(prompts, SamplingParams(temperature=1.0, seed=0, max_tokens=20, n=2,
                                                     stop_token_ids=[]))
    seqs = [list(prompts[r // 2]) for r in range(6)]
    assert_next_token_distributions(session, seqs, model)
    for _ in range(3):
        for r, event in enumerate(session.step()):
            seqs[r].append(event.token_id)
        assert_next_token_distributions(session, seqs, model)
    forced = [[8, 8, 1], [], [3], [9, 10], [], [11]]
    session.append(forced)
    seqs = [seq + extra for seq, extra in zip(seqs, forced)]  # each row's last sampled token is already in seqs
    assert_next_token_distributions(session, seqs, model)
    session.step()
    seqs = [seq + [c.token_ids[-1]] for seq, c in zip(seqs, session.completions())]
    assert_next_token_distributions(session, seqs, model)


def test_compiled_static_decode_of_two_models_in_one_process():
    """Compiling the static decode step for a second model config once failed with `enable_gqa must be bool, not
    SymBool` (a recompile made the head counts symbolic). Each model compiles its own graph, equal to the
    uncompiled step, and a new max_tokens value compiles nothing."""
    graphs = []

    def backend(gm: torch.fx.GraphModule, example_inputs: list) -> Any:
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    prompts = [[5, 6, 7, 8], [1, 2]]
    for arch in ({"n_kv_head": 2}, {"n_head": 2, "n_kv_head": 2, "n_embd": 32, "qk_norm": True}):
        model = tiny(**arch)
        params = SamplingParams(temperature=1.0, seed=3, max_tokens=8, stop_token_ids=[])
        plain = Engine(model, compile=True).generate(prompts, params)
        before = len(graphs)
        compiled = Engine(model, compile=True, backend=backend).generate(prompts, params)
        assert len(graphs) == before + 1
        for a, b in zip(plain, compiled):
            assert a[0].token_ids == b[0].token_ids
            assert a[0].raw_logprobs == pytest.approx(b[0].raw_logprobs, abs=1e-5)
        Engine(model, compile=True, backend=backend).generate(prompts, SamplingParams(**{**params.__dict__,
                                                                                          "max_tokens": 5}))
        assert len(graphs) == before + 1


def test_static_decode_step_equals_dynamic():
    """The CUDA-graph-shaped step (whole cache + mask, index_copy_ slot) runs uncompiled here."""
    model = tiny()
    prompts = [[5, 6, 7, 8], [1, 2]]
    params = SamplingParams(max_tokens=10, **GREEDY)
    dynamic = Engine(model, compile=False).generate(prompts, params)
    static = Engine(model, compile=True)
    assert static.static_decode
    assert [o[0].token_ids for o in static.generate(prompts, params)] == [o[0].token_ids for o in dynamic]


def test_seed_reproduces_samples_and_n_samples_differ():
    engine = Engine(tiny(init_std=0.05))
    params = SamplingParams(max_tokens=15, temperature=1.0, n=3, seed=123, stop_token_ids=[])
    a = engine.generate([[1, 2, 3], [4, 5]], params)
    b = engine.generate([[1, 2, 3], [4, 5]], params)
    assert [[c.token_ids for c in p] for p in a] == [[c.token_ids for c in p] for p in b]
    assert len({tuple(c.token_ids) for c in a[0]}) > 1  # the n samples of one prompt are not copies
    c = engine.generate([[1, 2, 3], [4, 5]], SamplingParams(**{**params.__dict__, "seed": 124}))
    assert [x.token_ids for x in c[0]] != [x.token_ids for x in a[0]]


def test_logprobs_are_the_sampling_and_the_raw_distribution():
    model = tiny(init_std=0.05)
    engine = Engine(model)
    params = SamplingParams(max_tokens=8, temperature=0.7, top_k=50, seed=1, stop_token_ids=[])
    prompt = [10, 20, 30]
    out = engine.generate(prompt, params)[0][0]
    ids = prompt + out.token_ids
    with torch.no_grad():
        logits = model(torch.tensor([ids]))[0][0, len(prompt) - 1:-1]
    raw = logits.log_softmax(-1)
    shaped = process_logits(logits, params)
    for i, t in enumerate(out.token_ids):
        assert out.raw_logprobs[i] == pytest.approx(float(raw[i, t]), abs=1e-4)
        assert out.logprobs[i] == pytest.approx(float(shaped[i, t]), abs=1e-4)
        assert out.logprobs[i] > out.raw_logprobs[i]  # sharper than the raw distribution


def _reference_sets(logits: torch.Tensor, top_k: int, top_p: float, min_p: float) -> list[set[int]]:
    """Allowed sets computed one row at a time in plain Python, the definitions written out."""
    sets = []
    for row in logits.tolist():
        order = sorted(range(len(row)), key=lambda i: -row[i])
        keep = order[:top_k] if top_k else order
        if top_p < 1.0:
            z = [row[i] for i in keep]
            m = max(z)
            p = [math.exp(v - m) for v in z]
            total = sum(p)
            kept, mass = [], 0.0
            for i, pi in zip(keep, p):
                if mass >= top_p:
                    break
                kept.append(i)
                mass += pi / total
            keep = kept
        if min_p > 0:
            z = {i: row[i] for i in keep}
            m = max(z.values())
            keep = [i for i in keep if math.exp(z[i] - m) >= min_p]
        sets.append(set(keep))
    return sets


@pytest.mark.parametrize("top_k,top_p,min_p", [(5, 1.0, 0.0), (0, 0.6, 0.0), (0, 1.0, 0.2), (20, 0.9, 0.05)])
def test_filters_keep_exactly_their_set_and_never_sample_outside(top_k, top_p, min_p):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 64, generator=g) * 2
    params = SamplingParams(temperature=1.0, top_k=top_k, top_p=top_p, min_p=min_p)
    lp = process_logits(logits, params)
    expected = _reference_sets(logits, top_k, top_p, min_p)
    for r in range(4):
        assert set(torch.nonzero(lp[r] > float("-inf")).flatten().tolist()) == expected[r]
    draws = torch.stack([draw(lp, g) for _ in range(4000)], dim=1)  # (4, 4000)
    for r in range(4):
        counts = torch.bincount(draws[r], minlength=64).float() / draws.size(1)
        assert set(torch.nonzero(counts).flatten().tolist()) <= expected[r]
        probs = lp[r].exp()
        # Binomial standard error at n=4000 is at most 0.008; 5 sigma.
        assert torch.allclose(counts, probs, atol=0.04)


@pytest.mark.parametrize("kw", [dict(temperature=1.0), dict(temperature=0.7, top_k=9, top_p=0.8),
                                dict(temperature=0.9, repetition_penalty=1.3, frequency_penalty=0.4), dict(temperature=0)])
def test_sampling_some_rows_gives_them_what_sampling_all_rows_does(kw):
    """Rows that do not sample this step (feeding a tool output, finished but still held) are left out of sampling,
    but their uniforms are still drawn: the other rows get exactly the tokens and log-probs of a full-batch draw, and
    the generator's stream goes on as after it."""
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(7, 300, generator=g) * 3
    seen = torch.rand(7, 300, generator=g) < 0.1
    counts = torch.randint(0, 3, (7, 300), generator=g).float()
    params = SamplingParams(**kw)
    rows = torch.tensor([0, 2, 3, 6])
    full_gen, some_gen = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    for _ in range(3):  # the second and third draws check that the stream stays in step
        full = sample(logits, params, full_gen, seen, counts, 280)
        some = sample(logits, params, some_gen, seen, counts, 280, rows)
        for a, b in zip(full, some):
            assert torch.equal(a[rows], b)


def test_greedy_and_penalties():
    logits = torch.tensor([[2.0, 1.9, -1.0, 0.5]])
    tok, lp, raw = sample(logits, SamplingParams(temperature=0))
    assert tok.tolist() == [0] and lp.item() == 0.0
    assert raw.item() == pytest.approx(float(logits.log_softmax(-1)[0, 0]))
    seen = torch.tensor([[True, False, False, False]])
    tok, _, _ = sample(logits, SamplingParams(temperature=0, repetition_penalty=1.2), seen=seen)
    assert tok.tolist() == [1]  # 2.0 / 1.2 < 1.9
    counts = torch.tensor([[0.0, 3.0, 0.0, 0.0]])
    tok, _, _ = sample(logits, SamplingParams(temperature=0, frequency_penalty=0.1, presence_penalty=0.1),
                       seen=seen, counts=counts)
    assert tok.tolist() == [0]  # 1.9 - 0.3 - 0.1 < 2.0


def scripted(script: list[int], block: int = 48, vocab: int = 266) -> GPT:
    """A model whose greedy output at position p is script[p], whatever came before: learned positions carry a
    one-hot code to the output head through blocks whose projections are zero."""
    model = GPT(GPTConfig(vocab_size=vocab, n_layer=1, n_head=2, n_embd=block, block_size=block, pos="learned"))
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.norm.weight.fill_(1.0)
        for blk in model.layers:
            blk.attn_norm.weight.fill_(1.0)
            blk.mlp_norm.weight.fill_(1.0)
        model.pos_emb.weight.copy_(torch.eye(block))
        for p, t in enumerate(script):
            model.lm_head.weight[t, p] = 10.0
    return model.eval()


def test_streaming_never_splits_a_utf8_character():
    text = "héllo 世界 🙂 ok"
    data = list(text.encode("utf-8"))
    prompt = [256]
    model = scripted(data + [261])  # ... then <|end|>
    engine = Engine(model, byte_tokenizer())
    pieces = list(engine.stream(prompt, SamplingParams(temperature=0, max_tokens=40)))
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)
    assert "🙂" in pieces and "世" in pieces  # a 4-byte and a 3-byte character arrive whole
    out = engine.generate(prompt, SamplingParams(temperature=0, max_tokens=40))[0][0]
    assert out.text == text and out.finish_reason == "stop" and out.token_ids[-1] == 261


def test_stop_strings_cut_the_text_and_are_never_streamed():
    text = "abc STOP def"
    model = scripted(list(text.encode()) + [261])
    engine = Engine(model, byte_tokenizer())
    params = SamplingParams(temperature=0, max_tokens=40, stop=["STOP", "xyz"])
    pieces = list(engine.stream([97], params))
    assert "".join(pieces) == "abc "
    out = engine.generate([97], params)[0][0]
    assert out.text == "abc " and out.finish_reason == "stop"
    # A partial match that turns out not to be a stop string is released.
    out = engine.generate([97], SamplingParams(temperature=0, max_tokens=40, stop=["STOPPED"]))[0][0]
    assert out.text == "abc STOP def" and out.finish_reason == "stop"


def test_budget_and_context_guard():
    engine = Engine(tiny(), byte_tokenizer())
    out = engine.generate([1, 2], SamplingParams(temperature=0, max_tokens=5, stop_token_ids=[]))[0][0]
    assert len(out.token_ids) == 5 and out.finish_reason == "length"
    session = engine.session([1] * 60, SamplingParams(temperature=0, max_tokens=100, stop_token_ids=[]))
    done = session.run()[0]
    assert done.finish_reason == "context" and len(done.token_ids) == 64 - 60 + 1
    from lmforge.utils import LmforgeError

    with pytest.raises(LmforgeError, match="context"):
        engine.session([1] * 64, SamplingParams())


def test_append_forced_tokens_then_continue_equals_plain_forward():
    model = tiny()
    engine = Engine(model)
    stop = 77
    params = SamplingParams(temperature=0, max_tokens=6, stop_token_ids=[stop])
    session = engine.session([[5, 9, 13], [2, 4]], params)
    first = session.run()
    forced = [[8, 8, 1], [3]]
    session.append(forced)
    second = session.run()
    for r, prompt in enumerate([[5, 9, 13], [2, 4]]):
        seq = prompt + first[r].token_ids + forced[r]
        assert second[r].token_ids == greedy_reference(model, seq, len(second[r].token_ids))


@pytest.mark.parametrize("how", ["append", "queue_forced"])
def test_cache_sized_to_the_expected_length_grows_exactly(how):
    """A session's cache starts at its longest prompt plus its budget (a cache spanning the whole context makes every
    decode step slower) and grows when forced tokens need more: continuing after the growth equals the plain
    forward over the whole sequence."""
    model = tiny()
    engine = Engine(model)
    prompts = [[5, 9, 13], [2, 4]]
    session = engine.session(prompts, SamplingParams(temperature=0, max_tokens=4, stop_token_ids=[]))
    assert session.cache.max_len == 3 + 4
    first = session.run()
    forced = [list(range(30, 42)), [7]]  # row 0 needs 3 + 4 + 12 slots and 4 more after them
    getattr(session, how)(forced)
    second = session.run()
    assert 3 + 4 + 12 + 4 <= session.cache.max_len <= model.config.block_size
    for r, prompt in enumerate(prompts):
        seq = prompt + first[r].token_ids + forced[r]
        assert second[r].token_ids == greedy_reference(model, seq, 4)


def test_chat_tool_loop_shape():
    """Stop at a tool-call end, append the tool output, continue: the session API the chat engine uses."""
    script = list(b"2+3") + [263] + [0] * 3 + list(b"=5") + [261]  # the zeros are where the forced tokens go
    model = scripted(script)
    tok = byte_tokenizer()
    engine = Engine(model, tok)
    params = SamplingParams(temperature=0, max_tokens=30, stop_token_ids=[263, 261])
    session = engine.session([256], params)
    assert "".join(session.stream()) == "2+3"
    assert session.completions()[0].token_ids[-1] == 263
    session.append([264] + list(b"5") + [265])  # <|tool_output|>5<|tool_output_end|>
    # 1 pending + 3 forced tokens moved the position by 4: the script continues from there
    rest = session.run()[0]
    assert rest.finish_reason == "stop" and rest.token_ids[-1] == 261
    assert rest.text == "=5" and rest.token_ids == list(b"=5") + [261]


def test_streaming_with_merged_tokens_that_split_characters():
    """A trained vocabulary has tokens that hold part of a character; the stream still yields whole ones."""
    text = "世界和平 🙂🙃 naïve café 世界"
    tok = Tokenizer.train([text * 30], vocab_size=290)
    ids = tok.encode(text)
    partial = [i for i in ids if not _is_whole_utf8(tok.token_bytes(i))]
    assert partial, "the test needs tokens that split a character"
    model = scripted(ids + [tok.end_id], vocab=tok.vocab_size)
    engine = Engine(model, tok)
    pieces = list(engine.stream([tok.bos_id], SamplingParams(temperature=0, max_tokens=60)))
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)


def _is_whole_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


@pytest.mark.timeout(120)
def test_generate_cli_streams_and_shows_probabilities(tmp_path, capsys):
    from lmforge.checkpoint import save_model
    from lmforge.cli import main

    tok = Tokenizer.train(["Once upon a time there was a dog. " * 20], vocab_size=300)
    torch.manual_seed(0)
    save_model(tmp_path / "ckpt", GPT(GPTConfig(vocab_size=tok.vocab_size, n_layer=1, n_head=2, n_embd=32,
                                                block_size=64)), tok.save(tmp_path / "tok"))
    args = ["generate", "--checkpoint", str(tmp_path / "ckpt"), "--prompt", "Once upon", "--max-tokens", "6",
            "--seed", "3", "--threads", "1"]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert first.startswith("Once upon")
    assert main(args) == 0
    assert capsys.readouterr().out == first  # the seed reproduces the text
    assert main(args + ["--show-probs", "3", "--temperature", "0"]) == 0
    shown = capsys.readouterr().out
    assert "3 most likely next tokens" in shown and "%" in shown
    assert main(args + ["--top-p", "1.5"]) == 2  # a bad flag is one clear error, not a traceback
    assert "top_p" in capsys.readouterr().err


def test_padded_model_vocabulary_never_samples_ids_the_tokenizer_lacks():
    tok = byte_tokenizer()  # 266 ids
    model = tiny(vocab_size=320, init_std=0.05)
    with torch.no_grad():
        model.lm_head.weight[266:] += 5.0  # make the padding ids the most likely ones
    engine = Engine(model, tok)
    for params in (SamplingParams(temperature=0, max_tokens=10, stop_token_ids=[]),
                   SamplingParams(temperature=1.0, max_tokens=30, seed=0, stop_token_ids=[])):
        out = engine.generate([256, 72, 105], params)[0][0]
        assert max(out.token_ids) < 266
        assert all(r < -1.0 for r in out.raw_logprobs)  # raw log-probs stay over the whole (padded) vocabulary


def test_bf16_engine_from_checkpoint_follows_fp32(tmp_path):
    """The reduced-precision path (CUDA's default dtype) on CPU: bf16 weights and cache, fp32 RoPE tables."""
    from lmforge.checkpoint import save_model

    model = tiny()
    save_model(tmp_path / "ckpt", model, Tokenizer([]).save(tmp_path / "tok"))
    engine = Engine.from_checkpoint(str(tmp_path / "ckpt"), dtype="bfloat16")
    assert engine.dtype == torch.bfloat16 and engine.model.rope_cos.dtype == torch.float32
    params = SamplingParams(temperature=0, max_tokens=6, stop_token_ids=[])
    session = engine.session([1, 2, 3, 4], params)
    assert session.cache.k[0].dtype == torch.bfloat16
    out = session.run()[0]
    assert out.token_ids[:2] == greedy_reference(model, [1, 2, 3, 4], 2)  # the first steps agree with fp32


def test_penalties_in_a_session_see_prompt_and_output():
    engine = Engine(tiny())
    prompt = [5, 6, 7]
    out = engine.generate(prompt, SamplingParams(temperature=0, max_tokens=30, presence_penalty=1e6,
                                                 stop_token_ids=[], n=2))[0]
    for c in out:
        assert len(set(c.token_ids)) == len(c.token_ids)  # an output token is never used twice
    plain = engine.generate(prompt, SamplingParams(temperature=0, max_tokens=30, stop_token_ids=[]))[0][0]
    assert len(set(plain.token_ids)) < len(plain.token_ids)  # without the penalty this model repeats itself
    seq = prompt + plain.token_ids
    k = next(i for i in range(len(prompt), len(seq)) if seq[i] in seq[:i])
    looping = seq[:k]  # a prompt whose greedy continuation repeats one of its tokens
    greedy = SamplingParams(temperature=0, max_tokens=1, stop_token_ids=[])
    assert engine.generate(looping, greedy)[0][0].token_ids[0] in looping
    penalised = SamplingParams(temperature=0, max_tokens=1, repetition_penalty=1e6, stop_token_ids=[])
    assert engine.generate(looping, penalised)[0][0].token_ids[0] not in looping  # prompt tokens count as seen

"""Hugging Face export: transformers loads the folder offline and computes what lmforge computes."""

from __future__ import annotations

import pytest
import torch

from lmforge.checkpoint import save_model
from lmforge.export.hf import export_hf
from lmforge.inference.engine import Engine
from lmforge.inference.sampling import SamplingParams
from lmforge.model import GPT, GPTConfig
from lmforge.tokenizer.chat_format import render_conversation, render_for_completion
from lmforge.tokenizer import Tokenizer
from lmforge.utils import LmforgeError
from params_helpers import CALCULATOR_CONVERSATION, memorized_chat_model

transformers = pytest.importorskip("transformers")

TEXT = "Once upon a time, a small dog met a cat. héllo 世界 🙂 2+3 = 5. The calculator says 42.\n"


@pytest.fixture(scope="module")
def tok(tmp_path_factory) -> tuple[Tokenizer, object]:
    tok = Tokenizer.train([TEXT * 20], vocab_size=330)
    return tok, tok.save(tmp_path_factory.mktemp("tok"))


def make_checkpoint(path, tok_dir, vocab: int, **overrides) -> GPT:
    torch.manual_seed(0)
    cfg = dict(vocab_size=vocab, n_layer=2, n_head=4, n_kv_head=2, n_embd=64, block_size=64, init_std=0.1)
    model = GPT(GPTConfig(**{**cfg, **overrides})).eval()
    save_model(path, model, tok_dir)
    return model


@pytest.mark.timeout(120)
@pytest.mark.parametrize("overrides,cls", [({}, "LlamaForCausalLM"),
                                           ({"qk_norm": True, "tie_embeddings": True, "n_kv_head": 4},
                                            "Qwen3ForCausalLM")])
def test_transformers_loads_folder_and_matches_logits_and_greedy(tmp_path, tok, overrides, cls):
    tokenizer, tok_dir = tok
    model = make_checkpoint(tmp_path / "ckpt", tok_dir, tokenizer.vocab_size, **overrides)
    out = export_hf(tmp_path / "ckpt", tmp_path / "hf")
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert type(hf).__name__ == cls
    ids = torch.tensor([[tokenizer.bos_id] + tokenizer.encode("Once upon a time, a small dog")])
    with torch.no_grad():
        ours = model(ids)[0]
        theirs = hf(ids).logits
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=1e-5)

    engine = Engine(model, tokenizer)
    steps = 16
    mine = engine.generate(ids[0].tolist(), SamplingParams(temperature=0, max_tokens=steps))[0][0].token_ids
    with torch.no_grad():
        gen = hf.generate(ids, max_new_tokens=steps, do_sample=False)[0, ids.size(1):].tolist()
    assert gen == mine  # both stop on the same end token, if any (generation_config.json carries them)


def test_tokenizer_and_chat_template_match_lmforge(tmp_path, tok):
    tokenizer, tok_dir = tok
    make_checkpoint(tmp_path / "ckpt", tok_dir, tokenizer.vocab_size)
    out = export_hf(tmp_path / "ckpt", tmp_path / "hf")
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    # plain text gets <|bos|> first, as `lmforge generate` feeds it (a rendered template gets no second one)
    assert hf_tok(TEXT)["input_ids"] == Engine(make_checkpoint(tmp_path / "c2", tok_dir, tokenizer.vocab_size),
                                               tokenizer).encode_prompt(TEXT) == [tokenizer.bos_id] + tokenizer.encode(TEXT)
    conversations = [
        [{"role": "user", "content": "hi"}],
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+3?"},
         {"role": "assistant", "content": "Let me compute.", "tool_calls": [{"name": "calculator", "arguments": "2+3"}]},
         {"role": "tool", "name": "calculator", "content": "5"},
         {"role": "assistant", "content": "2+3 = 5."}, {"role": "user", "content": "thanks 🙂"}],
        [{"role": "user", "content": "2*21?"},
         {"role": "assistant", "content": "", "tool_calls": [{"name": "calculator", "arguments": "2*21"}]},
         {"role": "tool", "content": "42"}],
        [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],
    ]

    def hf_ids(msgs, **kw):
        return list(hf_tok.apply_chat_template(msgs, tokenize=True, **kw)["input_ids"])

    for msgs in conversations:
        if msgs[-1]["role"] != "tool":  # a conversation that ends in a tool message is not complete
            assert hf_ids(msgs) == render_conversation(tokenizer, msgs)[0]
        if msgs[-1]["role"] != "assistant":
            assert hf_ids(msgs, add_generation_prompt=True) == render_for_completion(tokenizer, msgs)
        else:  # a prefilled answer: transformers cuts after the last message's text
            assert hf_ids(msgs, continue_final_message=True) == render_for_completion(tokenizer, msgs)
    # OpenAI's tool-call shape renders the same as ours
    openai = [dict(m) for m in conversations[1]]
    openai[2] = {"role": "assistant", "content": "Let me compute.",
                 "tool_calls": [{"type": "function", "function": {"name": "calculator", "arguments": "2+3"}}]}
    assert hf_ids(openai) == render_conversation(tokenizer, conversations[1])[0]


def test_configs_outside_the_family_are_refused(tmp_path, tok):
    tokenizer, tok_dir = tok
    make_checkpoint(tmp_path / "ckpt", tok_dir, tokenizer.vocab_size, norm="layernorm", mlp="gelu")
    with pytest.raises(LmforgeError, match="norm='layernorm'.*mlp='gelu'"):
        export_hf(tmp_path / "ckpt", tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


def test_export_cli_writes_both_formats(tmp_path, tok, capsys):
    from lmforge.cli import main

    tokenizer, tok_dir = tok
    make_checkpoint(tmp_path / "ckpt", tok_dir, tokenizer.vocab_size)
    assert main(["export", "hf", "--checkpoint", str(tmp_path / "ckpt"), "--out", str(tmp_path / "hf")]) == 0
    assert (tmp_path / "hf" / "model.safetensors").is_file() and (tmp_path / "hf" / "tokenizer.json").is_file()
    assert main(["export", "gguf", "--checkpoint", str(tmp_path / "ckpt"), "--out", str(tmp_path / "m.gguf"),
                 "--dtype", "f16"]) == 0
    assert (tmp_path / "m.gguf").read_bytes()[:4] == b"GGUF"
    for path in [tmp_path / "m.gguf", *(tmp_path / "hf").iterdir()]:  # shared artifacts: readable by everyone
        assert path.stat().st_mode & 0o777 == 0o644, path
    assert (tmp_path / "hf").stat().st_mode & 0o777 == 0o755
    assert "wrote GGUF" in capsys.readouterr().out
    assert main(["export", "hf", "--checkpoint", str(tmp_path / "missing"), "--out", str(tmp_path / "x")]) == 2
    assert "no checkpoint" in capsys.readouterr().err


@pytest.mark.timeout(120)
def test_a_pipeline_returns_the_tool_call_for_a_users_loop(tmp_path, tok):
    # A model that learned to call the calculator, exported: a text-generation pipeline (which decodes with
    # skip_special_tokens=True) stops at the end of the call and returns it with its markers, and the template
    # renders the call and its output for the next step of the user's loop as lmforge does.
    tokenizer, tok_dir = tok
    save_model(tmp_path / "ckpt", memorized_chat_model(tokenizer, CALCULATOR_CONVERSATION), tok_dir)
    out = export_hf(tmp_path / "ckpt", tmp_path / "hf")
    config = transformers.GenerationConfig.from_pretrained(out)
    assert tokenizer.special_tokens["<|tool_call_end|>"] in config.eos_token_id
    pipe = transformers.pipeline("text-generation", model=str(out), dtype=torch.float32)
    reply = pipe(CALCULATOR_CONVERSATION[:1], max_new_tokens=30, do_sample=False)[0]["generated_text"][-1]
    assert reply == {"role": "assistant", "content": "<|tool_call|>calculator\n37 * 48<|tool_call_end|>"}

    hf_tok = pipe.tokenizer
    ids = list(hf_tok.apply_chat_template(CALCULATOR_CONVERSATION, tokenize=True)["input_ids"])
    assert ids == render_conversation(tokenizer, CALCULATOR_CONVERSATION)[0]
    shown = hf_tok.decode(ids, skip_special_tokens=False)
    assert "<|tool_call|>calculator\n37 * 48<|tool_call_end|><|tool_output|>1776<|tool_output_end|>It is" in shown
    assert hf_tok.decode(ids, skip_special_tokens=True) == (
        "What is 37 * 48?<|tool_call|>calculator\n37 * 48<|tool_call_end|><|tool_output|>1776<|tool_output_end|>"
        "It is 1776.")  # the chat's own markers go, the tool protocol stays

"""GGUF export: read back through transformers' GGUF loader (which undoes llama.cpp's Q/K layout) and compared."""

from __future__ import annotations

import pytest
import torch

from lmforge.checkpoint import save_model
from lmforge.export import gguf as gguf_export
from lmforge.export.gguf import export_gguf, permute_for_llama_rope
from lmforge.model import GPT, GPTConfig, apply_rope, rope_tables
from lmforge.tokenizer import Tokenizer

transformers = pytest.importorskip("transformers")
pytest.importorskip("gguf")
pytest.importorskip("accelerate")

TEXT = "Once upon a time, a small dog met a cat. héllo 世界 🙂 2+3 = 5. The calculator says 42.\n"


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    tok = Tokenizer.train([TEXT * 20], vocab_size=330)
    return tok, tok.save(tmp_path_factory.mktemp("tok"))


def checkpoint(path, tok, **overrides) -> GPT:
    tokenizer, tok_dir = tok
    torch.manual_seed(0)
    cfg = dict(vocab_size=tokenizer.vocab_size, n_layer=2, n_head=4, n_kv_head=2, n_embd=64, block_size=64,
               init_std=0.1)
    model = GPT(GPTConfig(**{**cfg, **overrides})).eval()
    save_model(path, model, tok_dir)
    return model


def read_back(path):
    return transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name).eval()


def logits_of(model, tokenizer):
    ids = torch.tensor([[tokenizer.bos_id] + tokenizer.encode("Once upon a time, a small dog 🙂")])
    with torch.no_grad():
        return ids, model(ids)[0] if isinstance(model, GPT) else model(ids).logits


def test_interleaved_rope_on_permuted_rows_equals_half_split_rope():
    """The identity the permutation rests on: rotating adjacent pairs of P(q) == P(rotating (i, i+d/2) of q)."""
    heads, d, T = 3, 8, 5
    q = torch.randn(T, heads * d)
    cos, sin = rope_tables(d, T, 10000.0)
    half = apply_rope(q.view(T, heads, d).transpose(0, 1), cos, sin).transpose(0, 1).reshape(T, -1)
    # P acts on the rows of W (out, in): permuting W's rows permutes q's features the same way.
    perm = permute_for_llama_rope(torch.arange(heads * d, dtype=torch.float32)[:, None], heads)[:, 0].long()
    qp = q[:, perm].view(T, heads, d // 2, 2)
    c, s = cos[:, : d // 2][:, None], sin[:, d // 2:][:, None]  # sin's second half is unsigned
    inter = torch.stack([qp[..., 0] * c - qp[..., 1] * s, qp[..., 0] * s + qp[..., 1] * c], dim=-1).reshape(T, -1)
    torch.testing.assert_close(inter, half[:, perm])


@pytest.mark.timeout(120)
def test_gguf_round_trip_through_transformers_matches(tmp_path, tok):
    tokenizer, _ = tok
    model = checkpoint(tmp_path / "ckpt", tok)
    path = export_gguf(tmp_path / "ckpt", tmp_path / "model.gguf")
    hf = read_back(path)
    ids, ours = logits_of(model, tokenizer)
    _, theirs = logits_of(hf, tokenizer)
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=1e-5)
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path, gguf_file=path.name)
    assert hf_tok(TEXT)["input_ids"] == [tokenizer.bos_id] + tokenizer.encode(TEXT)  # add_bos_token is set
    assert hf_tok.convert_tokens_to_ids("<|end|>") == tokenizer.end_id

    half = export_gguf(tmp_path / "ckpt", tmp_path / "model16.gguf", dtype="f16")
    assert half.stat().st_size < 0.6 * path.stat().st_size
    _, theirs16 = logits_of(read_back(half), tokenizer)
    torch.testing.assert_close(theirs16, ours, atol=2e-2, rtol=0)


@pytest.mark.timeout(120)
def test_without_the_qk_permutation_the_model_is_silently_wrong(tmp_path, tok, monkeypatch):
    tokenizer, _ = tok
    model = checkpoint(tmp_path / "ckpt", tok)
    monkeypatch.setattr(gguf_export, "permute_for_llama_rope", lambda w, n_heads: w)
    path = export_gguf(tmp_path / "ckpt", tmp_path / "unpermuted.gguf")
    _, ours = logits_of(model, tokenizer)
    _, theirs = logits_of(read_back(path), tokenizer)
    assert torch.isfinite(theirs).all()  # it loads and runs ...
    assert (theirs - ours).abs().max() > 1e-2  # ... and computes something else


@pytest.mark.timeout(120)
def test_qwen3_gguf_keeps_half_split_rows(tmp_path, tok):
    tokenizer, _ = tok
    # transformers' GGUF reader assumes Qwen3's head size of 128 (see lmforge/export/gguf.py)
    model = checkpoint(tmp_path / "ckpt", tok, qk_norm=True, n_embd=256, n_head=2, n_kv_head=1, n_layer=1)
    path = export_gguf(tmp_path / "ckpt", tmp_path / "qwen3.gguf")
    hf = read_back(path)
    assert type(hf).__name__ == "Qwen3ForCausalLM"
    _, ours = logits_of(model, tokenizer)
    _, theirs = logits_of(hf, tokenizer)
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=1e-5)


@pytest.mark.timeout(120)
def test_padded_model_vocabulary_gets_placeholder_tokens(tmp_path, tok):
    tokenizer, _ = tok
    model = checkpoint(tmp_path / "ckpt", tok, vocab_size=tokenizer.vocab_size + 6)
    path = export_gguf(tmp_path / "ckpt", tmp_path / "padded.gguf")
    import gguf

    reader = gguf.GGUFReader(str(path))
    assert len(reader.fields["tokenizer.ggml.tokens"].data) == tokenizer.vocab_size + 6
    _, ours = logits_of(model, tokenizer)
    _, theirs = logits_of(read_back(path), tokenizer)
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=1e-5)


@pytest.mark.timeout(120)
def test_gguf_carries_the_hugging_face_chat_template(tmp_path, tok):
    # one template for both exports: the escape that keeps message text ordinary is in the GGUF's too
    import gguf

    from lmforge.export.hf import CHAT_TEMPLATE, ESCAPE

    tokenizer, _ = tok
    checkpoint(tmp_path / "ckpt", tok, vocab_size=tokenizer.vocab_size)
    field = gguf.GGUFReader(str(export_gguf(tmp_path / "ckpt", tmp_path / "m.gguf"))).fields["tokenizer.chat_template"]
    template = bytes(field.parts[field.data[0]]).decode("utf-8")
    assert template == CHAT_TEMPLATE and ESCAPE in template


@pytest.mark.timeout(120)
def test_gguf_stops_at_a_tool_call_and_prints_the_tool_tokens(tmp_path, tok):
    # llama.cpp ends generation at the end-of-message token and prints USER_DEFINED tokens (CONTROL ones it hides):
    # the tool protocol is visible to a caller's loop, the chat markers are not
    import gguf

    tokenizer, _ = tok
    checkpoint(tmp_path / "ckpt", tok, vocab_size=tokenizer.vocab_size)
    reader = gguf.GGUFReader(str(export_gguf(tmp_path / "ckpt", tmp_path / "m.gguf")))
    types = reader.fields["tokenizer.ggml.token_type"]
    type_of = {i: int(types.parts[part][0]) for i, part in enumerate(types.data)}
    specials = tokenizer.special_tokens
    for name, i in specials.items():
        tool = name.startswith("<|tool_")
        assert type_of[i] == (gguf.TokenType.USER_DEFINED if tool else gguf.TokenType.CONTROL), name
    eom = reader.fields["tokenizer.ggml.eom_token_id"]
    assert int(eom.parts[eom.data[0]][0]) == specials["<|tool_call_end|>"]

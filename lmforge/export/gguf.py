"""`lmforge export gguf`: the model as one GGUF file for llama.cpp (and everything built on it).

GGUF holds the hyperparameters, the tokenizer and the tensors in one file. Three details make it exact:

- RoPE layout. Our model rotates the pairs (i, i + d/2) of each head (the "half-split" layout Hugging Face uses).
  llama.cpp's `llama` architecture rotates adjacent pairs (2i, 2i + 1), the layout of Meta's original weights. The
  rows of the Q and K projections are therefore permuted per head so that row i goes to 2i and row i + d/2 to
  2i + 1; attention scores are unchanged because Q and K move together, but without this the file loads fine and
  silently computes something else (a test shows it). The `qwen3` architecture (QK-norm on) uses the half-split
  ("NEOX") rotation in llama.cpp, so its rows stay as they are.
- Tokenizer. A `gpt2`-type byte-level BPE: every token spelled in GPT-2's byte-to-character alphabet, merges as
  "left right" strings in rank order (the tokenizer's Hugging Face merges, which reproduce its encoding), special
  tokens marked CONTROL but the tool protocol's USER_DEFINED (printed, as in the Hugging Face export and Qwen3's
  GGUF, so a caller sees the calls), `<|tool_call_end|>` as the end-of-message token (llama.cpp stops there, as it
  does at Llama 3.1's tool-call end), and the pre-tokenizer `llama-bpe`, whose split regex is our GPT-4 pattern.
- Norm weights stay float32 at every dtype (llama.cpp expects them so); `--dtype f16` halves the matrices.
- Chat template: the Hugging Face export's, which escapes "<|" in message text so that no text becomes a special
  token. llama.cpp has no normalizer to undo the escape, so there a message's literal "<|" reaches the model as
  U+FDD0 "y" (rare text, and never a forged control token, which llama.cpp's own templates would allow).

transformers can read such a file back (it un-permutes Q/K), which is how the tests check it; note that its GGUF
reader takes Qwen3's head size from its default (128), so only llama-architecture files of other head sizes load
there (llama.cpp itself reads `attention.key_length`).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from lmforge.export.hf import CHAT_TEMPLATE, TOOL_TOKENS, check_exportable
from lmforge.export.files import check_out, make_readable
from lmforge.utils import LmforgeError, atomic_path, human_bytes

PRE_TOKENIZER = "llama-bpe"  # llama.cpp's name for the split regex of Llama 3, which is our GPT-4 pattern


def permute_for_llama_rope(weight: Any, n_heads: int) -> Any:
    """Reorder each head's rows of a Q or K projection (out, in) from half-split to interleaved RoPE pairs."""
    out, inp = weight.shape
    head_dim = out // n_heads
    return weight.reshape(n_heads, 2, head_dim // 2, inp).transpose(1, 2).reshape(out, inp)


def gguf_tensors(model: Any, arch: str) -> dict[str, Any]:
    """GGUF tensor names -> float32 tensors, Q/K permuted for the llama architecture."""
    cfg = model.config
    sd = {k: v.detach().float() for k, v in model.state_dict().items()}
    out = {"token_embd.weight": sd["tok_emb.weight"], "output_norm.weight": sd["norm.weight"]}
    if not cfg.tie_embeddings:
        out["output.weight"] = sd["lm_head.weight"]
    names = {
        "attn_norm.weight": "attn_norm.weight",
        "attn.wq.weight": "attn_q.weight",
        "attn.wk.weight": "attn_k.weight",
        "attn.wv.weight": "attn_v.weight",
        "attn.wo.weight": "attn_output.weight",
        "attn.q_norm.weight": "attn_q_norm.weight",
        "attn.k_norm.weight": "attn_k_norm.weight",
        "mlp_norm.weight": "ffn_norm.weight",
        "mlp.w_gate.weight": "ffn_gate.weight",
        "mlp.w_up.weight": "ffn_up.weight",
        "mlp.w_down.weight": "ffn_down.weight",
    }
    for i in range(cfg.n_layer):
        for ours, theirs in names.items():
            key = f"layers.{i}.{ours}"
            if key not in sd:
                continue
            w = sd[key]
            if arch == "llama" and ours == "attn.wq.weight":
                w = permute_for_llama_rope(w, cfg.n_head)
            elif arch == "llama" and ours == "attn.wk.weight":
                w = permute_for_llama_rope(w, cfg.n_kv_head)
            out[f"blk.{i}.{theirs}"] = w
    return out


def add_tokenizer(writer: Any, tok: Any, model_vocab: int) -> None:
    import gguf

    from lmforge.tokenizer.bpe_train import byte_to_char

    chars = [byte_to_char(b) for b in range(256)]

    def spell(data: bytes) -> str:
        return "".join(chars[b] for b in data)

    vocab = tok.vocab
    specials = tok.special_tokens
    special_ids = set(specials.values())
    tokens = [spell(t) for t in vocab]  # special tokens' names are printable ASCII, which spells as itself
    shown_ids = {specials[name] for name in TOOL_TOKENS if name in specials}
    types = [gguf.TokenType.USER_DEFINED if i in shown_ids else gguf.TokenType.CONTROL if i in special_ids
             else gguf.TokenType.NORMAL for i in range(len(vocab))]
    # GGUF needs one token per embedding row: a model vocabulary padded past the tokenizer's gets placeholders
    # (as llama.cpp's own converter writes them) that no text encodes to.
    tokens += [f"[PAD{i}]" for i in range(len(vocab), model_vocab)]
    types += [gguf.TokenType.UNUSED] * (model_vocab - len(vocab))
    merges = [f"{spell(vocab[a])} {spell(vocab[b])}" for a, b in tok.hf_merges()]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(PRE_TOKENIZER)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(specials["<|bos|>"])
    writer.add_eos_token_id(specials["<|end|>"])
    writer.add_eot_token_id(specials["<|end|>"])
    writer.add_pad_token_id(specials["<|pad|>"])
    if "<|tool_call_end|>" in specials:
        writer.add_eom_token_id(specials["<|tool_call_end|>"])
    writer.add_add_bos_token(True)  # pretraining put <|bos|> before every document, so prompts start with it
    writer.add_chat_template(CHAT_TEMPLATE)


def export_gguf(checkpoint: str | Path, out: str | Path, dtype: str = "f32") -> Path:
    """Write the GGUF file of a checkpoint; returns its path."""
    import gguf
    import numpy as np

    from lmforge.checkpoint import checkpoint_tokenizer_dir, load_model
    from lmforge.tokenizer import Tokenizer

    if dtype not in ("f32", "f16"):
        raise LmforgeError(f"--dtype must be f32 or f16, got {dtype!r}")
    check_out(out, "file")
    model, ckpt = load_model(checkpoint)
    cfg = model.config
    arch = check_exportable(cfg, "GGUF")
    tok = Tokenizer.load(checkpoint_tokenizer_dir(ckpt))
    if tok.vocab_size > cfg.vocab_size:
        raise LmforgeError(f"checkpoint {ckpt}: its tokenizer has {tok.vocab_size} tokens but the model's "
                           f"vocab_size is only {cfg.vocab_size}")
    out = Path(out)
    with atomic_path(out) as tmp:
        w = gguf.GGUFWriter(str(tmp), arch)
        w.add_name(ckpt.parent.parent.name if ckpt.parent.name == "ckpt" else ckpt.name)
        w.add_context_length(cfg.block_size)
        w.add_embedding_length(cfg.n_embd)
        w.add_block_count(cfg.n_layer)
        w.add_feed_forward_length(cfg.intermediate_size)
        w.add_head_count(cfg.n_head)
        w.add_head_count_kv(cfg.n_kv_head)
        w.add_key_length(cfg.head_dim)
        w.add_value_length(cfg.head_dim)
        w.add_rope_dimension_count(cfg.head_dim)
        w.add_rope_freq_base(cfg.rope_theta)
        w.add_layer_norm_rms_eps(cfg.norm_eps)
        w.add_vocab_size(cfg.vocab_size)
        w.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if dtype == "f16" else gguf.LlamaFileType.ALL_F32)
        add_tokenizer(w, tok, cfg.vocab_size)
        for name, tensor in gguf_tensors(model, arch).items():
            arr = tensor.numpy()
            if dtype == "f16" and arr.ndim == 2:
                arr = arr.astype(np.float16)
            w.add_tensor(name, arr)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        make_readable(tmp)
    return out


def cmd_export_gguf(args: argparse.Namespace) -> int:
    out = export_gguf(args.checkpoint, args.out, args.dtype)
    print(f"wrote GGUF {out} ({human_bytes(out.stat().st_size)}); run it with llama.cpp, e.g. "
          f"llama-cli -m {out} -p 'Once upon a time'")
    return 0


def register(formats: argparse._SubParsersAction) -> None:
    p = formats.add_parser(
        "gguf",
        help="one GGUF file for llama.cpp (Q/K rows permuted for its RoPE layout, gpt2-style BPE tokenizer)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--checkpoint", required=True, help="run folder (its newest checkpoint) or checkpoint folder")
    p.add_argument("--out", required=True, type=Path, help="GGUF file to write (written atomically)")
    p.add_argument("--dtype", default="f32", choices=["f32", "f16"], help="matrix dtype (norms stay f32)")
    p.set_defaults(func=cmd_export_gguf)

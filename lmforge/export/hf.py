"""`lmforge export hf`: the model as a Hugging Face folder that `transformers` loads offline.

Our architecture stays inside the Llama family on purpose (RMSNorm, RoPE in the half-split layout Hugging Face
uses, SwiGLU, no biases, optional grouped-query attention), so the export is a renaming of tensors plus a
`config.json`: `LlamaForCausalLM`, or `Qwen3ForCausalLM` when QK-norm is on (Qwen3 normalises each head's queries
and keys before RoPE, exactly as our model does). Configs outside the family (LayerNorm, learned positions, GELU or
ReLU-squared MLPs) have no exact Hugging Face class and are refused rather than exported approximately.

The folder also holds the tokenizer (`tokenizer.json` from the tokenizer's own export, plus the normalizer that keeps
message text ordinary, see ESCAPE below, and `<|bos|>` before plain text, as `lmforge generate` feeds it), a
`tokenizer_config.json` whose chat template renders conversations exactly as `lmforge.tokenizer.chat_format` does,
special-token strings in messages included, and a `generation_config.json` that stops on `<|end|>`, `<|bos|>` and
`<|tool_call_end|>`.

The tool protocol travels with it, as Qwen3's `<tool_call>` does: the template renders an assistant message's
`tool_calls` (ours or OpenAI's shape) as `<|tool_call|>NAME\nARGUMENTS<|tool_call_end|>` and the `tool` messages
after it as `<|tool_output|>CONTENT<|tool_output_end|>`; generation stops at the end of a call; and the four tool
tokens are not "special" to Hugging Face (TOOL_TOKENS), so a `text-generation` pipeline, which decodes with
`skip_special_tokens=True`, returns `<|tool_call|>calculator\n37 * 48<|tool_call_end|>` for a user's loop to parse,
run, and answer with a `tool` message.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from lmforge.export.files import check_out, make_readable
from lmforge.utils import LmforgeError, atomic_path, human_bytes, read_json, write_json

# Text that a message brings (content, tool names, arguments, tool outputs) must stay ordinary text, as in lmforge's
# own renderer, which encodes it apart from the special ids. A template only makes a string, and the Hugging Face
# tokenizer (and llama.cpp's) turns every special-token string in it into its id, so the template escapes the one
# thing all our special tokens start with: "<|" becomes ESCAPE + "y" (and ESCAPE itself ESCAPE + "x", so the escape
# is invertible). ESCAPE is U+FDD0, a Unicode noncharacter (reserved for internal use; text does not hold it). The
# exported tokenizer.json undoes the escape in its normalizer (NORMALIZER), which runs after the special tokens are
# matched on the raw string: the template's own "<|end|>" is special, a user's "<|end|>" is the bytes "<|end|>".
ESCAPE = "\ufdd0"
_ESCAPES = [(ESCAPE, ESCAPE + "x"), ("<|", ESCAPE + "y")]  # applied in this order; undone in the reverse order
NORMALIZER = {"type": "Sequence", "normalizers": [
    {"type": "Replace", "pattern": {"String": escaped}, "content": original} for original, escaped in _ESCAPES[::-1]]}
# The tool protocol's tokens: kept in decoded text (not "special" to Hugging Face), so a user's loop sees the calls.
TOOL_TOKENS = ("<|tool_call|>", "<|tool_call_end|>", "<|tool_output|>", "<|tool_output_end|>")
_TEXT = "{%- macro text(s) -%}{{ (s | string)" + "".join(
    f" | replace('{original}', '{escaped}')" for original, escaped in _ESCAPES) + " }}{%- endmacro -%}"

# Mirrors lmforge.tokenizer.chat_format._render (see its docstring for the layout): <|bos|>, then system/user turns
# as <|role|>TEXT<|end|>; an assistant turn is <|assistant|>TEXT, each tool call followed directly by its output
# (<|tool_call|>NAME\nARGS<|tool_call_end|><|tool_output|>OUT<|tool_output_end|>), an assistant message after tool
# messages continues the same turn, and the turn closes with one <|end|>. With add_generation_prompt the template
# opens an assistant turn after a user/system message, and leaves the turn open after a tool message (as
# render_for_completion does). Tool calls may be ours ({"name", "arguments"}) or OpenAI's ({"function": {...}}).
CHAT_TEMPLATE = (
    "{#- lmforge chat format. Tool calls: <|tool_call|>NAME\nARGUMENTS<|tool_call_end|> (generation stops there),"
    " answered by a tool message: <|tool_output|>CONTENT<|tool_output_end|>. -#}" +
    _TEXT +
    "{{- bos_token -}}"
    "{%- set ns = namespace(open=false) -%}"
    "{%- set n = messages | length -%}"
    "{%- for m in messages -%}"
    "{%- set i = loop.index0 -%}"
    "{%- if m.role == 'assistant' -%}"
    "{%- if not ns.open -%}<|assistant|>{%- endif -%}"
    "{{- text(m.content) if m.content is string else '' -}}"
    "{%- set calls = m.tool_calls if m.tool_calls is defined and m.tool_calls else [] -%}"
    "{%- for c in calls -%}"
    "{%- set f = c.function if c.function is defined else c -%}"
    "{%- set args = f.arguments if f.arguments is defined else '' -%}"
    "<|tool_call|>{{ text(f.name) }}\n{{ text(args if args is string else (args | tojson)) }}<|tool_call_end|>"
    "<|tool_output|>{{ text(messages[i + 1 + loop.index0].content) }}<|tool_output_end|>"
    "{%- endfor -%}"
    "{%- set nxt = i + 1 + (calls | length) -%}"
    "{%- set ns.open = (calls | length) > 0 and nxt < n and messages[nxt].role == 'assistant' -%}"
    "{%- if not ns.open and (nxt < n or not (add_generation_prompt and messages[n - 1].role == 'tool')) -%}"
    "<|end|>"
    "{%- endif -%}"
    "{%- elif m.role == 'system' or m.role == 'user' -%}"
    "<|{{ m.role }}|>{{ text(m.content) }}<|end|>"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt and messages[n - 1].role in ['user', 'system'] -%}<|assistant|>{%- endif -%}"
)


def finish_tokenizer_json(path: Path, special_tokens: dict[str, int]) -> None:
    """Give an exported tokenizer.json the normalizer that undoes the template's escape, and match its special tokens
    on the raw text (before that normalizer), so an escaped "<|" can never become a special token; keep the tool
    tokens in decoded text (TOOL_TOKENS); put `<|bos|>` before plain text, as `lmforge generate` does (the chat
    template writes its own, and transformers encodes a rendered template without adding another)."""
    if any(not name.startswith("<|") for name in special_tokens):
        raise LmforgeError(f"the chat template escapes '<|', which every special token must start with: "
                           f"{sorted(special_tokens)}")
    tok = read_json(path)
    if tok.get("normalizer") is not None:
        raise LmforgeError(f"{path} already has a normalizer; the chat template's escape needs its own")
    tok["normalizer"] = NORMALIZER
    for added in tok["added_tokens"]:
        added["normalized"] = False
        added["special"] = added["content"] not in TOOL_TOKENS
    if "<|bos|>" in special_tokens:
        bos = {"SpecialToken": {"id": "<|bos|>", "type_id": 0}}
        tok["post_processor"] = {
            "type": "TemplateProcessing", "single": [bos, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [bos, {"Sequence": {"id": "A", "type_id": 0}}, bos, {"Sequence": {"id": "B", "type_id": 0}}],
            "special_tokens": {"<|bos|>": {"id": "<|bos|>", "ids": [special_tokens["<|bos|>"]], "tokens": ["<|bos|>"]}}}
    write_json(path, tok)


def check_exportable(config: Any, fmt: str) -> str:
    """The architecture name (`llama` or `qwen3`) this config exports as, or a clear refusal."""
    problems = []
    if config.norm != "rmsnorm":
        problems.append(f"norm={config.norm!r} (needs 'rmsnorm')")
    if config.pos != "rope":
        problems.append(f"pos={config.pos!r} (needs 'rope')")
    if config.mlp != "swiglu":
        problems.append(f"mlp={config.mlp!r} (needs 'swiglu')")
    if problems:
        raise LmforgeError(f"cannot export to {fmt}: the model config is outside the Llama/Qwen3 family: "
                           f"{', '.join(problems)}")
    return "qwen3" if config.qk_norm else "llama"


def hf_state_dict(model: Any) -> dict[str, Any]:
    """Our parameter names -> Hugging Face's (`model.layers.N.self_attn.q_proj.weight`, ...). Tied output heads are
    left out, as Hugging Face expects with `tie_word_embeddings`."""
    names = {
        "tok_emb.weight": "model.embed_tokens.weight",
        "norm.weight": "model.norm.weight",
        "lm_head.weight": "lm_head.weight",
    }
    per_layer = {
        "attn_norm.weight": "input_layernorm.weight",
        "attn.wq.weight": "self_attn.q_proj.weight",
        "attn.wk.weight": "self_attn.k_proj.weight",
        "attn.wv.weight": "self_attn.v_proj.weight",
        "attn.wo.weight": "self_attn.o_proj.weight",
        "attn.q_norm.weight": "self_attn.q_norm.weight",
        "attn.k_norm.weight": "self_attn.k_norm.weight",
        "mlp_norm.weight": "post_attention_layernorm.weight",
        "mlp.w_gate.weight": "mlp.gate_proj.weight",
        "mlp.w_up.weight": "mlp.up_proj.weight",
        "mlp.w_down.weight": "mlp.down_proj.weight",
    }
    out = {}
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight" and model.config.tie_embeddings:
            continue
        if name.startswith("layers."):
            _, idx, rest = name.split(".", 2)
            out[f"model.layers.{idx}.{per_layer[rest]}"] = tensor
        else:
            out[names[name]] = tensor
    return out


def hf_config(config: Any, special_tokens: dict[str, int], dtype: str) -> dict[str, Any]:
    arch = check_exportable(config, "Hugging Face")
    d: dict[str, Any] = {
        "architectures": ["Qwen3ForCausalLM" if arch == "qwen3" else "LlamaForCausalLM"],
        "model_type": arch,
        "vocab_size": config.vocab_size,
        "hidden_size": config.n_embd,
        "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.n_layer,
        "num_attention_heads": config.n_head,
        "num_key_value_heads": config.n_kv_head,
        "head_dim": config.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": config.block_size,
        "rms_norm_eps": config.norm_eps,
        # transformers 5 reads rope_parameters, 4.x reads rope_theta; each ignores the other
        "rope_theta": config.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_theta},
        "attention_bias": False,
        "attention_dropout": 0.0,
        "tie_word_embeddings": config.tie_embeddings,
        "initializer_range": config.init_std,
        "bos_token_id": special_tokens.get("<|bos|>"),
        "eos_token_id": special_tokens.get("<|end|>"),
        "pad_token_id": special_tokens.get("<|pad|>"),
        "torch_dtype": dtype,
        "use_cache": True,
    }
    if arch == "llama":
        d["mlp_bias"] = False
    else:
        d["use_sliding_window"] = False
        d["sliding_window"] = None
    return d


def export_hf(checkpoint: str | Path, out: str | Path, dtype: str = "float32") -> Path:
    """Write the Hugging Face folder for a checkpoint; returns the folder."""
    import torch
    from safetensors.torch import save_file

    from lmforge.checkpoint import checkpoint_tokenizer_dir, load_model
    from lmforge.tokenizer import Tokenizer

    if dtype not in ("float32", "bfloat16", "float16"):
        raise LmforgeError(f"--dtype must be float32, bfloat16 or float16, got {dtype!r}")
    check_out(out, "folder", marker="config.json")
    model, ckpt = load_model(checkpoint)
    check_exportable(model.config, "Hugging Face")
    tok = Tokenizer.load(checkpoint_tokenizer_dir(ckpt))
    specials = tok.special_tokens
    torch_dtype = getattr(torch, dtype)
    state = {k: v.detach().to(torch_dtype).contiguous() for k, v in hf_state_dict(model).items()}
    with atomic_path(out) as tmp:
        tmp.mkdir(parents=True)
        save_file(state, tmp / "model.safetensors", metadata={"format": "pt"})
        write_json(tmp / "config.json", hf_config(model.config, specials, dtype))
        stops = [specials[s] for s in ("<|end|>", "<|bos|>", "<|tool_call_end|>") if s in specials]
        write_json(tmp / "generation_config.json", {
            "bos_token_id": specials.get("<|bos|>"), "eos_token_id": stops, "pad_token_id": specials.get("<|pad|>"),
        })
        tok.export_hf(tmp / "tokenizer.json")
        finish_tokenizer_json(tmp / "tokenizer.json", specials)
        write_json(tmp / "tokenizer_config.json", {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": "<|bos|>",
            "eos_token": "<|end|>",
            "pad_token": "<|pad|>",
            "add_bos_token": "<|bos|>" in specials,  # plain text starts with <|bos|>, as lmforge generate feeds it
            "model_max_length": model.config.block_size,
            "clean_up_tokenization_spaces": False,
            "chat_template": CHAT_TEMPLATE,
        })
        make_readable(tmp)
    return Path(out)


def cmd_export_hf(args: argparse.Namespace) -> int:
    out = export_hf(args.checkpoint, args.out, args.dtype)
    size = sum(p.stat().st_size for p in out.iterdir())
    print(f"wrote Hugging Face folder {out} ({human_bytes(size)}); load it with "
          f"AutoModelForCausalLM.from_pretrained({str(out)!r})")
    return 0


def register(formats: argparse._SubParsersAction) -> None:
    p = formats.add_parser(
        "hf",
        help="a Hugging Face folder (safetensors, config.json, tokenizer with chat template) for transformers",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--checkpoint", required=True, help="run folder (its newest checkpoint) or checkpoint folder")
    p.add_argument("--out", required=True, type=Path, help="folder to write (replaced atomically if it exists)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="weights dtype in the folder (default float32)")
    p.set_defaults(func=cmd_export_hf)

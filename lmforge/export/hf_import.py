"""`lmforge import hf DIR --out CKPT`: a Hugging Face Llama or Qwen3 folder as an lmforge checkpoint, offline.

The converse of `lmforge export hf` (`export/hf.py`): our model is the Llama architecture (Qwen3's with QK-norm), with
RoPE in the same half-split ("rotate_half") layout Hugging Face's checkpoints use, so queries and keys need no
un-permutation and the import is a renaming, by the export's own table (`hf_state_dict`), so the two directions
can never disagree. The folder needs `config.json`, the weights (`model.safetensors`, or the shards listed in
`model.safetensors.index.json`) and `tokenizer.json` (converted by `hf_tokenizer_import`, which also renumbers the
vocabulary: the embedding and output rows are permuted into lmforge's id order, and the special tokens lmforge's
chat format needs but the folder lacks get rows at the vocabulary's mean).

Refused with one line naming the file and field: architectures other than Llama and Qwen3; features our model does
not have (biases, RoPE scaling, sliding windows, an activation other than SiLU, a head_dim other than
hidden_size / num_attention_heads); weights missing, unexpected or of the wrong shape. Weights become float32 (the
dtype lmforge trains in). `--block-size` shortens the context (RoPE tables are computed, not stored, so a shorter
context is exact for the positions it keeps).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from lmforge.export.hf import hf_state_dict
from lmforge.export.hf_tokenizer_import import TokenizerImport, import_tokenizer
from lmforge.utils import LmforgeError, read_json

if TYPE_CHECKING:  # the model module imports torch: only the functions that build a model import it
    from lmforge.model import GPTConfig

ARCHITECTURES = ("llama", "qwen3")  # config.json model_type values: the families our model computes exactly
IGNORED_TENSORS = ("rotary_emb.inv_freq",)  # old Llama checkpoints stored the RoPE frequencies; we compute them


def _rope_type(rope: Any) -> str:
    """The RoPE variant a config's rope_scaling / rope_parameters names (older configs say "type")."""
    if not rope:
        return "default"
    return str(rope.get("rope_type", rope.get("type", "default"))) if isinstance(rope, dict) else repr(rope)


def _unsupported(cfg: dict[str, Any], where: str) -> None:
    """Refuse a config with a feature our model lacks, naming the field."""
    problems = {
        "hidden_act": cfg.get("hidden_act", "silu") != "silu",
        "attention_bias": bool(cfg.get("attention_bias")),
        "mlp_bias": bool(cfg.get("mlp_bias")),
        "rope_scaling": _rope_type(cfg.get("rope_scaling")) != "default",
        "rope_parameters": _rope_type(cfg.get("rope_parameters")) != "default",
        "use_sliding_window": bool(cfg.get("use_sliding_window")),
        "layer_types": any(t != "full_attention" for t in cfg.get("layer_types") or []),
    }
    bad = [name for name, is_bad in problems.items() if is_bad]
    if bad:
        raise LmforgeError(f"{where}: field '{bad[0]}' = {cfg.get(bad[0])!r} is a feature lmforge's model does not "
                           "have (it supports Llama and Qwen3 without biases, RoPE scaling or sliding windows)")


def gpt_config(folder: Path, vocab_size: int, block_size: int | None) -> GPTConfig:
    """Our model config from `folder/config.json` (see the module docstring for what is refused)."""
    from lmforge.model import GPTConfig

    where = str(folder / "config.json")
    if not (folder / "config.json").is_file():
        raise LmforgeError(f"{where} is missing (a Hugging Face model folder holds config.json)")
    cfg = read_json(folder / "config.json", "model config")
    arch = cfg.get("model_type") if isinstance(cfg, dict) else None
    if arch not in ARCHITECTURES:
        raise LmforgeError(f"{where}: field 'model_type' is {arch!r}; lmforge imports {', '.join(ARCHITECTURES)}")
    _unsupported(cfg, where)
    try:
        hidden, heads = int(cfg["hidden_size"]), int(cfg["num_attention_heads"])
        head_dim = cfg.get("head_dim") or hidden // heads
        if head_dim * heads != hidden:
            raise LmforgeError(f"{where}: field 'head_dim' is {head_dim}, but lmforge's model needs hidden_size / "
                               f"num_attention_heads = {hidden / heads:g}")
        theta = cfg.get("rope_theta") or (cfg.get("rope_parameters") or {}).get("rope_theta") or 10000.0
        return GPTConfig(
            vocab_size=vocab_size, n_layer=int(cfg["num_hidden_layers"]), n_head=heads,
            n_kv_head=int(cfg.get("num_key_value_heads") or heads), n_embd=hidden,
            block_size=block_size or int(cfg.get("max_position_embeddings") or 2048),
            intermediate_size=int(cfg["intermediate_size"]), qk_norm=arch == "qwen3",
            tie_embeddings=bool(cfg.get("tie_word_embeddings", False)), rope_theta=float(theta),
            norm_eps=float(cfg.get("rms_norm_eps", 1e-6)), init_std=float(cfg.get("initializer_range", 0.02)))
    except KeyError as e:
        raise LmforgeError(f"{where}: field {e.args[0]!r} is missing") from e
    except (TypeError, ValueError) as e:
        raise LmforgeError(f"{where}: {e}") from e


def read_weights(folder: Path) -> dict[str, Any]:
    """Every tensor of the folder's safetensors (one file, or the shards its index lists), by Hugging Face name."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = read_json(index, "weights index").get("weight_map")
        if not isinstance(weight_map, dict):
            raise LmforgeError(f"{index}: field 'weight_map' is missing")
        files = sorted(set(weight_map.values()))
    elif (folder / "model.safetensors").is_file():
        files = ["model.safetensors"]
    else:
        raise LmforgeError(f"{folder / 'model.safetensors'} is missing (nor is there a model.safetensors.index.json)")
    tensors: dict[str, Any] = {}
    for name in files:
        path = folder / name
        if Path(name).is_absolute() or ".." in Path(name).parts or not path.is_file():
            raise LmforgeError(f"{path} is missing (listed in {index.name})")
        try:
            tensors.update(load_file(path))
        except (SafetensorError, OSError) as e:
            raise LmforgeError(f"{path} is corrupt or truncated: {e}") from e
    return tensors


def _vocab_rows(tensor: Any, tok: TokenizerImport, vocab_size: int, name: str, where: str) -> Any:
    """An embedding or output matrix with rows in lmforge's id order; rows without a Hugging Face token (new
    special tokens) at the mean row, so their logit is the mean logit and never wins a greedy choice."""
    import torch

    if tensor.dim() != 2 or max(tok.lmforge_ids) >= tensor.size(0):
        raise LmforgeError(f"{where}: tensor {name} has shape {tuple(tensor.shape)}, too few rows for the "
                           f"tokenizer's ids (up to {max(tok.lmforge_ids)})")
    hf_ids = torch.tensor(list(tok.lmforge_ids))
    lm_ids = torch.tensor(list(tok.lmforge_ids.values()))
    out = tensor[hf_ids].mean(0, keepdim=True).repeat(vocab_size, 1)
    out[lm_ids] = tensor[hf_ids]
    return out


def convert_weights(hf: dict[str, Any], config: GPTConfig, tok: TokenizerImport, where: str) -> dict[str, Any]:
    """Our state dict from Hugging Face tensors, float32, vocabulary rows renumbered; refuses a mismatch."""
    import torch

    from lmforge.model import GPT

    with torch.device("meta"):
        shapes = {n: tuple(t.shape) for n, t in GPT(config).state_dict().items()}
    names = hf_state_dict(SimpleNamespace(state_dict=lambda: {n: n for n in shapes}, config=config))
    unexpected = sorted(n for n in hf if n not in names and not n.endswith(IGNORED_TENSORS))
    missing = sorted(n for n in names if n not in hf)
    if unexpected or missing:
        what = f"unexpected tensor {unexpected[0]}" if unexpected else f"no tensor {missing[0]}"
        raise LmforgeError(f"{where}: {what} (a {('Qwen3' if config.qk_norm else 'Llama')} model of this config has "
                           f"{len(names)} tensors; the weights hold {len(hf)})")
    state = {}
    for hf_name, ours in names.items():
        tensor = hf[hf_name].to(torch.float32)
        if ours in ("tok_emb.weight", "lm_head.weight"):
            tensor = _vocab_rows(tensor, tok, config.vocab_size, hf_name, where)
        if tuple(tensor.shape) != shapes[ours]:
            raise LmforgeError(f"{where}: tensor {hf_name} has shape {tuple(tensor.shape)}, config.json implies "
                               f"{shapes[ours]}")
        state[ours] = tensor.contiguous()
    if config.tie_embeddings:
        state["lm_head.weight"] = state["tok_emb.weight"]
    return state


def import_hf(folder: str | Path, out: str | Path, block_size: int | None = None) -> tuple[Path, TokenizerImport]:
    """Write the lmforge checkpoint of a Hugging Face folder; returns (checkpoint, how the tokenizer mapped)."""
    from lmforge.checkpoint import model_from_state, save_model
    from lmforge.export.files import check_out

    folder = Path(folder)
    if not folder.is_dir():
        raise LmforgeError(f"{folder} is not a folder (give a Hugging Face model folder: config.json, "
                           "model.safetensors, tokenizer.json)")
    if block_size is not None and block_size < 1:
        raise LmforgeError(f"--block-size must be >= 1 (got {block_size})")
    check_out(out, "folder", marker="model.safetensors")
    tok = import_tokenizer(folder)
    config = gpt_config(folder, tok.tokenizer.vocab_size, block_size)
    model = model_from_state(config, convert_weights(read_weights(folder), config, tok, str(folder)), folder)
    with tempfile.TemporaryDirectory() as tmp:
        tok.tokenizer.save(tmp)
        meta = {"imported_from": {"folder": str(folder.resolve()), "new_special_tokens": tok.new_specials,
                                  "dropped_added_tokens": tok.dropped}}
        save_model(out, model, tmp, meta=meta)
    return Path(out), tok


def cmd_import_hf(args: argparse.Namespace) -> int:
    out, tok = import_hf(args.folder, args.out, args.block_size)
    from lmforge.checkpoint import load_config

    cfg = load_config(out)
    print(f"wrote checkpoint {out}: {cfg.n_layer} layers, dim {cfg.n_embd}, {cfg.n_head} heads ({cfg.n_kv_head} K/V), "
          f"vocab {cfg.vocab_size}, context {cfg.block_size}{', QK-norm' if cfg.qk_norm else ''}")
    if tok.new_specials:
        print(f"new special tokens (rows at the vocabulary's mean; fine-tune to teach them): "
              f"{', '.join(tok.new_specials)}")
    if tok.dropped:
        shown = ", ".join(tok.dropped[:8]) + (f" and {len(tok.dropped) - 8} more" if len(tok.dropped) > 8 else "")
        print(f"dropped added tokens (now ordinary text): {shown}")
    for note in tok.notes:
        print(f"note: {note}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("import", help="bring your own model: a Hugging Face Llama or Qwen3 folder as a checkpoint",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    formats = p.add_subparsers(dest="format", metavar="FORMAT", required=True)
    h = formats.add_parser("hf", help="a local Hugging Face folder (config.json, safetensors, tokenizer.json)",
                           description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    h.add_argument("folder", type=Path, help="the Hugging Face model folder (nothing is downloaded)")
    h.add_argument("--out", type=Path, required=True, help="checkpoint folder to write (for sft, generate, export)")
    h.add_argument("--block-size", type=int, default=None,
                   help="context length of the checkpoint (default: the folder's max_position_embeddings)")
    h.set_defaults(func=cmd_import_hf)

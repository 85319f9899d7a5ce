"""Checkpoints on disk: safetensors weights, a JSON config, and a copy of the tokenizer, written atomically.

A checkpoint folder is self-contained (generate, export and SFT need nothing else), holds no pickles, and appears
only once complete, so an interrupted save never leaves a checkpoint that looks valid but is not (a kill leaves a
hidden `.step_*.tmp` folder, which the next training start removes). `config.json` records the sha256 of every
file, the tokenizer's included, and of its own content, so a file damaged or replaced later (a bad disk, a partial
copy, a swapped tokenizer, an edited rope_theta) is refused with its name instead of being used.

Training checkpoints add `optimizer.pt` (optimizer states and RNG states: tensors and plain containers only, read
with `torch.load(weights_only=True)`) and `train_state.json` (step, data-loader position, the train config), which
is what lets an interrupted run continue exactly.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from lmforge.model import GPT, GPTConfig, rope_tables
from lmforge.utils import LmforgeError, atomic_path, file_sha256, read_json, write_json

CKPT_SUBDIR = "ckpt"
CONFIG_FILE = "config.json"
OPTIMIZER_FILE = "optimizer.pt"
TRAIN_STATE_FILE = "train_state.json"


def checkpoint_name(step: int) -> str:
    return f"step_{step:07d}"


def save_model(ckpt_dir: str | Path, model: GPT, tokenizer_dir: str | Path | None = None,
               meta: dict[str, Any] | None = None, extra_files: dict[str, Any] | None = None,
               state: dict[str, torch.Tensor] | None = None) -> Path:
    """Write model weights, config, tokenizer copy and `extra_files` (name -> callable(path)) into ckpt_dir.

    `state` replaces `model.state_dict()` when the weights were gathered elsewhere (FSDP's full state dict).
    """
    ckpt_dir = Path(ckpt_dir)
    with atomic_path(ckpt_dir) as tmp:
        tmp.mkdir(parents=True)
        state = state if state is not None else model.state_dict()
        state = {k: v.detach().contiguous().cpu() for k, v in state.items()}
        if model.config.tie_embeddings:
            state.pop("lm_head.weight", None)  # the same tensor as tok_emb.weight; safetensors refuses aliases
        save_file(state, tmp / "model.safetensors")
        if tokenizer_dir is not None:
            shutil.copytree(tokenizer_dir, tmp / "tokenizer")
        for name, writer in (extra_files or {}).items():
            writer(tmp / name)
        # a LoRA model names its base here (lmforge.train.lora); its state_dict is its adapters
        meta = {"model": model.config.to_dict(), **getattr(model, "checkpoint_meta", {}), **(meta or {})}
        checksums = {p.relative_to(tmp).as_posix(): file_sha256(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
        checksums[CONFIG_FILE] = _config_digest(meta)
        write_json(tmp / CONFIG_FILE, {**meta, "checksums": checksums})
    return ckpt_dir


def _config_digest(meta: dict[str, Any]) -> str:
    """sha256 of config.json's content apart from its checksums (a file cannot hold its own digest): an edited
    field (a rope_theta, a block_size) no longer matches it."""
    body = {k: v for k, v in meta.items() if k != "checksums"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode("utf-8")).hexdigest()


def read_checkpoint_config(ckpt: Path) -> dict[str, Any]:
    """config.json of a checkpoint folder, refused when it is not an object or its content was edited."""
    meta = read_json(ckpt / CONFIG_FILE, "checkpoint config")
    if not isinstance(meta, dict) or not isinstance(meta.get("checksums") or {}, dict):
        raise LmforgeError(f"checkpoint config {ckpt / CONFIG_FILE} is not a JSON object with a checksums table")
    recorded = (meta.get("checksums") or {}).get(CONFIG_FILE)
    if recorded is not None and recorded != _config_digest(meta):
        raise LmforgeError(f"checkpoint file {ckpt / CONFIG_FILE} was edited (its sha256 differs from the one "
                           f"recorded when the checkpoint was written)")
    return meta


def verify_checkpoint(ckpt: str | Path, prefix: str = "") -> dict[str, Any]:
    """The checkpoint's config.json, after checking it and each file it lists (those under `prefix`, e.g.
    "tokenizer/", when only they will be read) against the recorded sha256; a file added to the tokenizer folder
    is refused as well. Checkpoints written before config.json and the tokenizer were covered are checked for
    what they list."""
    ckpt = Path(ckpt)
    meta = read_checkpoint_config(ckpt)
    checksums = meta.get("checksums") or {}
    for name, digest in checksums.items():
        if name == CONFIG_FILE or not name.startswith(prefix):
            continue
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise LmforgeError(f"checkpoint config {ckpt / CONFIG_FILE} lists a file outside the checkpoint: {name}")
        path = ckpt / name
        if not path.is_file():
            raise LmforgeError(f"checkpoint file {path} is missing")
        if file_sha256(path) != digest:
            raise LmforgeError(f"checkpoint file {path} is corrupt, truncated or replaced (sha256 differs from "
                               f"{CONFIG_FILE})")
    if CONFIG_FILE in checksums and (ckpt / "tokenizer").is_dir():
        for path in sorted((ckpt / "tokenizer").rglob("*")):
            if path.is_file() and path.relative_to(ckpt).as_posix() not in checksums:
                raise LmforgeError(f"checkpoint file {path} is not one the checkpoint was written with")
    return meta


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder from a run folder (its newest checkpoint) or a checkpoint folder itself."""
    path = Path(path)
    if (path / "model.safetensors").is_file():
        return path
    ckpts = sorted((path / CKPT_SUBDIR).glob("step_*")) if (path / CKPT_SUBDIR).is_dir() else []
    ckpts = [c for c in ckpts if (c / "model.safetensors").is_file()]
    if not ckpts:
        raise LmforgeError(f"no checkpoint in {path} (expected model.safetensors or {CKPT_SUBDIR}/step_*/)")
    return ckpts[-1]


def load_state(path: str | Path, device: str | torch.device = "cpu") -> tuple[GPTConfig, dict[str, torch.Tensor], Path]:
    """(model config, weights, folder) of a checkpoint, verified; tied weights appear under both names. A LoRA
    checkpoint's weights are its base's with the adapters added (`_add_adapters`)."""
    ckpt = resolve_checkpoint(path)
    meta = verify_checkpoint(ckpt)
    config = load_config(ckpt)
    try:
        state = load_file(ckpt / "model.safetensors", device=str(device))
    except (SafetensorError, OSError) as e:
        raise LmforgeError(f"checkpoint weights {ckpt / 'model.safetensors'} are corrupt or truncated: {e}") from e
    if "lora" in meta:
        state = _add_adapters(ckpt, meta["lora"], state, config, device)
    if config.tie_embeddings and "tok_emb.weight" in state:
        state["lm_head.weight"] = state["tok_emb.weight"]
    return config, state, ckpt


def _add_adapters(ckpt: Path, lora: Any, adapters: dict[str, torch.Tensor], config: GPTConfig,
                  device: str | torch.device) -> dict[str, torch.Tensor]:
    """The weights of a LoRA checkpoint (see `lmforge.train.lora`): its base checkpoint's, each adapted matrix W
    plus alpha / rank * B @ A, computed as the training forward computes it. The base must be the one the adapters
    were trained on (its recorded sha256), or they would silently adapt another model."""
    where = f"checkpoint config {ckpt / CONFIG_FILE}: field 'lora'"
    if not isinstance(lora, dict) or not isinstance(lora.get("base"), str) or not lora.get("rank"):
        raise LmforgeError(f"{where} is not a LoRA record (base, base_sha256, rank, alpha)")
    base = Path(lora["base"])
    if not (base / "model.safetensors").is_file():
        raise LmforgeError(f"{where}: its base checkpoint {base} is missing (LoRA checkpoints hold only adapters; "
                           "`--merge` writes a checkpoint that needs no base)")
    # the digest the base's config records (load_state below checks the file against it), hashed only when absent
    recorded = (read_checkpoint_config(base).get("checksums") or {}).get("model.safetensors")
    if (recorded or file_sha256(base / "model.safetensors")) != lora.get("base_sha256"):
        raise LmforgeError(f"{where}: its base checkpoint {base} changed since the adapters were trained")
    base_config, state, _ = load_state(base, device)
    if base_config != config:
        raise LmforgeError(f"{where}: its base checkpoint {base} has another model config")
    scale = float(lora.get("alpha", 0)) / int(lora["rank"])
    for name in [n for n in adapters if n.endswith(".lora_rows")]:  # trained rows of chosen tokens
        target = name[:-len(".lora_rows")] + ".weight"
        ids = torch.tensor(lora.get("token_ids") or [], dtype=torch.long, device=device)
        if target not in state or adapters[name].shape != (len(ids), state[target].shape[1]):
            raise LmforgeError(f"checkpoint weights {ckpt / 'model.safetensors'}: adapter {name} fits no rows of "
                               "the base")
        state[target] = state[target].index_add(0, ids, adapters[name])
    for name in [n for n in adapters if n.endswith(".lora_a")]:
        target = name[:-len(".lora_a")] + ".weight"
        b = adapters.get(name[:-len(".lora_a")] + ".lora_b")
        if target not in state or b is None or b.shape[0] != state[target].shape[0] \
                or adapters[name].shape[1] != state[target].shape[1]:
            raise LmforgeError(f"checkpoint weights {ckpt / 'model.safetensors'}: adapter {name} fits no matrix "
                               "of the base")
        state[target] = state[target] + scale * (b @ adapters[name])
    return state


def load_config(path: str | Path) -> GPTConfig:
    """The model config of a checkpoint (or a run folder's newest one), without reading the weights."""
    ckpt = resolve_checkpoint(path)
    meta = read_checkpoint_config(ckpt)
    try:
        return GPTConfig.from_dict(meta["model"])
    except (KeyError, TypeError, ValueError) as e:
        raise LmforgeError(f"checkpoint config {ckpt / 'config.json'} has no valid 'model' field: {e}") from e


def load_weights(model: GPT, state: dict[str, torch.Tensor], where: str | Path) -> None:
    """Copy `state` into `model`, refusing (with the file's name) weights that do not match its shapes."""
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:
        raise LmforgeError(f"checkpoint weights {where} do not fit the model: {e}") from e
    if missing or unexpected:
        raise LmforgeError(f"checkpoint weights {where} do not match its config: "
                           f"missing {missing[:5]}, unexpected {unexpected[:5]}")


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[GPT, Path]:
    """Load the model of a checkpoint (or of a run folder's newest one); returns (model in eval mode, folder)."""
    config, state, ckpt = load_state(path, device)
    return model_from_state(config, state, ckpt / "model.safetensors", device), ckpt


def model_from_state(config: GPTConfig, state: dict[str, torch.Tensor], where: str | Path,
                     device: str | torch.device = "cpu") -> GPT:
    """The model of `config` holding `state` (checked by `load_weights`, naming `where`), in eval mode: built on the
    meta device so no random init is computed only to be overwritten; tied weights shared, RoPE tables computed."""
    with torch.device("meta"):
        model = GPT(config)
    model = model.to_empty(device=device)
    load_weights(model, state, where)
    if config.tie_embeddings:
        model.lm_head.weight = model.tok_emb.weight
    if config.pos == "rope":
        tables = rope_tables(config.head_dim, config.block_size, config.rope_theta)
        model.rope_cos, model.rope_sin = (t.to(device) for t in tables)
    return model.eval()


def save_train_checkpoint(run_dir: str | Path, step: int, model: GPT, optimizer_state: dict[str, Any],
                          train_state: dict[str, Any], tokenizer_dir: str | Path | None = None,
                          state: dict[str, torch.Tensor] | None = None, keep: int = 0) -> Path:
    """Write `run_dir/ckpt/step_XXXXXXX/` with everything an exact resume needs; keep the newest `keep` (0 = all)."""
    ckpt = Path(run_dir) / CKPT_SUBDIR / checkpoint_name(step)
    writers = {OPTIMIZER_FILE: lambda p: torch.save(optimizer_state, p),
               TRAIN_STATE_FILE: lambda p: write_json(p, {"step": step, **train_state})}
    save_model(ckpt, model, tokenizer_dir, meta={"step": step}, extra_files=writers, state=state)
    if keep > 0:
        for old in train_checkpoints(run_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return ckpt


def train_checkpoints(run_dir: str | Path) -> list[Path]:
    """A run's complete training checkpoints, oldest first."""
    root = Path(run_dir) / CKPT_SUBDIR
    if not root.is_dir():
        return []
    return [c for c in sorted(root.glob("step_*")) if (c / TRAIN_STATE_FILE).is_file()]


def load_train_state(ckpt: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(train_state.json, optimizer.pt contents) of a training checkpoint, verified; no pickles are executed."""
    ckpt = Path(ckpt)
    verify_checkpoint(ckpt)
    train_state = read_json(ckpt / TRAIN_STATE_FILE, "train state")
    try:
        optimizer_state = torch.load(ckpt / OPTIMIZER_FILE, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types (pickle, zip, runtime) for a damaged file
        raise LmforgeError(f"optimizer state {ckpt / OPTIMIZER_FILE} is corrupt or unreadable: {e}") from e
    return train_state, optimizer_state


def checkpoint_tokenizer_dir(ckpt: str | Path) -> Path:
    """A checkpoint's tokenizer folder, verified against config.json (a swapped tokenizer would silently
    reinterpret every token id)."""
    folder = resolve_checkpoint(ckpt)
    tok = folder / "tokenizer"
    if not tok.is_dir():
        raise LmforgeError(f"checkpoint {ckpt} has no tokenizer/ folder")
    verify_checkpoint(folder, prefix="tokenizer/")
    return tok

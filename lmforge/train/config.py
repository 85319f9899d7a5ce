"""The training run's settings in one dataclass, saved beside every checkpoint so a run can be read and resumed.

Each field is written once: its flag (`lmforge pretrain --lr`, and `lmforge sft` with SFT's defaults), help text
(the trailing comment) and type come from here through `lmforge.config`, and `__post_init__` refuses a bad value
naming its flag, whether it came from the command line, the speedrun or a test.

Defaults are tuned for the `tiny` preset on 2 CPU cores (the speedrun; the batch and rates of larger presets are in
PRESET_TRAINING, which `lmforge pretrain --preset P` applies where no flag is given): a short warmup, a high
learning rate with Muon for the hidden matrices and AdamW for embeddings, head and norms, and a linear decay to zero
at the end, which reached a given loss in fewer steps than cosine in our short runs. They carry to wider presets by
one width rule (`lr_base_width`, applied in `lmforge.train.optim`): AdamW's rate on matrices that map the width (the
hidden matrices under `--optimizer adamw` and the output head, tied or not) is scaled by lr_base_width / n_embd, as
muP prescribes for Adam, while embeddings and norm gains keep theirs; Muon's rate needs no scaling, because its
update is already normalised per matrix (spectral norm sqrt(max(1, fan_out / fan_in)), Keller Jordan's rule).

Resuming (the same `--out` again) continues the run the checkpoint describes, so the settings that shape what was
trained so far must not change: the model (compared as the resolved model config), the batch geometry (`seq_len`,
`batch_size`, `grad_accum`), `optimizer`, `fsdp` (their saved optimizer state has that layout) and `seed` (it
fixes the data order). Everything else may change on resume: the run's length (`max_steps`, `time_budget_s`), the
rates and schedule (they apply from the next step), evaluation, samples, checkpoints, logs and the execution
(`device`, `dtype`, `compile`, `activation_checkpointing`, `peak_flops`). `RESUME_FIXED` lists the first group.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

from lmforge.config import check_fields, require
from lmforge.utils import LmforgeError

# Settings a resumed run must share with its checkpoint (see the module docstring); the model is compared apart.
RESUME_FIXED = ("seq_len", "batch_size", "grad_accum", "optimizer", "fsdp", "seed")

# What `lmforge pretrain --preset P` uses where no flag says otherwise: the batch per step and the rates, by preset.
# - tiny, small: TrainConfig's own defaults, tuned on tiny on 2 CPU cores (16 x 256 = 4k tokens a step; small's
#   16 x 512 = 8k): at this batch the high rates (AdamW 6e-3, Muon 0.04) fell fastest in our short CPU runs, and
#   the width rule (lr_base_width) already scales small's AdamW matrix rate by 128 / 384.
# - gpt2 and larger: GPT-2's, nanoGPT's and modded-nanogpt's batch of 2^19 = 524,288 tokens a step, reached by
#   gradient accumulation on one GPU (under torchrun, divide grad_accum by the processes: the step is the same).
#   At a 64x larger batch than the CPU presets' the gradient noise is far smaller, so the rates are those proven
#   there rather than tiny's: Muon 0.02 (nanochat's matrix rate from 560M to 1.9B parameters at this batch; the
#   issue saw Muon at 0.04 with 8k tokens a step diverge at 1B), and AdamW 3e-3 before the width rule, i.e. 5e-4
#   on gpt2's tied head (768 wide: GPT-2's and nanoGPT's 6e-4), 3.75e-4 on gpt2-medium's and 1.9e-4 on llama-1b's
#   (the tied embedding takes the head's rate); warmup over the first 1% of a GPT-2-budget run (~200 of 19k steps
#   of 0.5M tokens), as nanoGPT's 700 of 600k do at a smaller rate.
# Larger presets (llama-7b, llama-70b) take llama-1b's and add activation checkpointing (their activations at
# batch 4 x 4096 do not fit one GPU).
_LARGE_BATCH = dict(lr=3e-3, muon_lr=0.02, warmup_steps=200)
PRESET_TRAINING: dict[str, dict[str, Any]] = {
    "tiny": {},
    "small": {},
    "gpt2": dict(batch_size=16, grad_accum=32, **_LARGE_BATCH),  # 16 x 1024 x 32 = 524,288 tokens
    "gpt2-medium": dict(batch_size=8, grad_accum=64, **_LARGE_BATCH),  # 8 x 1024 x 64
    "llama-1b": dict(batch_size=4, grad_accum=64, **_LARGE_BATCH),  # 4 x 2048 x 64
    "llama-7b": dict(batch_size=2, grad_accum=64, activation_checkpointing=True, **_LARGE_BATCH),  # 2 x 4096 x 64
    "llama-70b": dict(batch_size=1, grad_accum=128, activation_checkpointing=True, **_LARGE_BATCH),  # 1 x 4096 x 128
}


def preset_training(preset: str) -> "TrainConfig":
    """TrainConfig's defaults for `preset` (PRESET_TRAINING's entries over the class defaults)."""
    return TrainConfig(preset=preset, **PRESET_TRAINING.get(preset, {}))


@dataclass
class TrainConfig:
    # model: a preset plus overrides of its fields (ignored when the run starts from a checkpoint)
    preset: str = "tiny"  # model size (see `lmforge model info --list`)
    model_overrides: dict[str, Any] = field(default_factory=dict, metadata={
        "flag": "--model", "metavar": "FIELD=VALUE",
        "help": "override a model field, e.g. --model n_layer=6 --model qk_norm=true"})
    # batch: each step sees batch_size * seq_len * grad_accum * world_size tokens
    seq_len: int | None = None  # context length in tokens (default: the model's block_size)
    batch_size: int = 16  # rows per micro-batch per process
    grad_accum: int = 1  # micro-batches per optimizer step
    max_steps: int = 1000  # optimizer steps in total (may grow when the run is resumed)
    # Stop (evaluate, sample, checkpoint) once this many seconds have passed, 0 = none; the schedule then decays
    # along whichever runs out first, steps or time (so the run is no longer exactly repeatable).
    time_budget_s: float = field(default=0.0, metadata={"flag": "--time-budget", "metavar": "SECONDS"})
    # optimizer
    optimizer: Literal["muon", "adamw"] = "muon"  # muon: Muon for hidden matrices + AdamW for the rest; adamw: all
    lr: float = 6e-3  # AdamW learning rate (embeddings, head, norms; every parameter with optimizer="adamw")
    # Width at which the rates were tuned (the tiny preset's): AdamW's rate on the head and hidden matrices is
    # multiplied by lr_base_width / n_embd for wider models (muP); 0 turns the rule off.
    lr_base_width: int = 128
    embed_lr: float | None = None  # AdamW rate of the embeddings (default: lr); they tolerate a higher rate
    muon_lr: float = 0.04  # Muon learning rate of the hidden matrices
    muon_momentum: float = 0.95  # Muon's Nesterov momentum
    weight_decay: float = 0.0  # on matrices only; never on norms
    beta1: float = 0.9  # AdamW's first-moment decay
    beta2: float = 0.95  # AdamW's second-moment decay
    eps: float = 1e-8  # AdamW's denominator floor
    grad_clip: float = 1.0  # clip the global gradient norm to this (0 = off)
    # schedule: linear warmup, then constant until decay_start, then cosine or linear decay to min_lr_frac * lr
    warmup_steps: int = 20  # steps of linear warmup (may exceed max_steps of a run that will be extended)
    decay: Literal["linear", "cosine", "constant"] = "linear"  # learning-rate decay after warmup
    decay_start_frac: float = 0.0  # fraction of max_steps after which the decay starts (0 = right after warmup)
    min_lr_frac: float = 0.0  # the rate at the end of the decay, as a fraction of the peak
    # evaluation, samples, checkpoints, logs
    eval_every: int = 100  # steps between evaluations (0 = only at the end)
    eval_batches: int = 20  # validation micro-batches per evaluation (0 = every validation window)
    sample_every: int = 0  # steps between printed samples (0 = samples only at the end)
    sample_tokens: int = 48  # tokens per sample
    num_samples: int = 2  # samples per sampling (0 = none)
    checkpoint_every: int = 200  # steps between checkpoints (0 = only at the end)
    keep_checkpoints: int = 2  # newest checkpoints kept on disk (0 = all)
    log_every: int = 1  # steps between rows of metrics.jsonl
    tensorboard: bool = True  # write TensorBoard events beside metrics.jsonl
    # Also log to Weights & Biases in the run folder, offline (WANDB_MODE=offline unless set; `wandb sync` uploads
    # later); needs the wandb package.
    wandb: bool = False
    progress: bool = True  # tqdm bar (rank 0 only)
    # execution
    seed: int = 1337  # model initialisation and data order
    device: str = "auto"  # auto (cuda when available, else cpu) | cpu | cuda | cuda:N | mps
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"  # auto = bf16 autocast on CUDA, fp32 on CPU
    # On CPU compiling (it needs a C compiler) fuses the elementwise work between the matmuls; it pays only after a
    # few hundred steps, so short runs (tests, the speedrun) leave it off (figures: benchmarks/bench_train.py).
    compile: bool | None = None  # torch.compile the model (default: on CUDA only; on CPU ~15% faster after 20-40 s)
    fsdp: bool = False  # shard parameters, gradients and optimizer state (FSDP2) instead of replicating (DDP)
    # Recompute each block's activations in the backward pass instead of keeping them: about a third more compute
    # for a model (or batch) whose activations do not fit the device.
    activation_checkpointing: bool = False
    # Per-device peak FLOP/s, the MFU's denominator: a number (e.g. 989e12), "measure" (a matmul benchmark on the
    # device in the training dtype), or "auto" (the datasheet's dense bf16 peak of a known GPU, else measured).
    peak_flops: str = "auto"

    def __post_init__(self) -> None:
        check_fields(self)
        for name in ("batch_size", "grad_accum", "log_every", "sample_tokens"):
            require(self, name, getattr(self, name) >= 1, "must be >= 1")
        for name in ("max_steps", "warmup_steps", "eval_every", "eval_batches", "sample_every", "num_samples",
                     "checkpoint_every", "keep_checkpoints", "time_budget_s", "weight_decay", "grad_clip"):
            require(self, name, getattr(self, name) >= 0, "must be >= 0")
        for name in ("lr", "muon_lr", "eps"):
            require(self, name, getattr(self, name) > 0, "must be > 0")
        require(self, "embed_lr", self.embed_lr is None or self.embed_lr > 0, "must be > 0")
        require(self, "lr_base_width", self.lr_base_width >= 0, "must be >= 0")
        require(self, "peak_flops", self.peak_flops in ("auto", "measure") or _positive_number(self.peak_flops),
                "must be auto, measure or a number of FLOP/s > 0")
        require(self, "seq_len", self.seq_len is None or self.seq_len >= 1, "must be >= 1")
        for name in ("muon_momentum", "beta1", "beta2"):
            require(self, name, 0 <= getattr(self, name) < 1, "must be in [0, 1)")
        for name in ("decay_start_frac", "min_lr_frac"):
            require(self, name, 0 <= getattr(self, name) <= 1, "must be in [0, 1]")
        require(self, "seed", 0 <= self.seed < 2**63, "must be in [0, 2**63)")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise LmforgeError(f"unknown TrainConfig field(s): {unknown}")
        return cls(**d)


def _positive_number(text: str) -> bool:
    try:
        value = float(text)
    except ValueError:
        return False
    return math.isfinite(value) and value > 0

"""The training run's settings in one dataclass, saved beside every checkpoint so a run can be read and resumed.

Defaults are tuned for the `tiny` preset on 2 CPU cores (the speedrun): a short warmup, a high learning rate with
Muon for the hidden matrices and AdamW for embeddings, head and norms, and a linear decay to zero at the end, which
reached a given loss in fewer steps than cosine in our short runs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from lmforge.utils import LmforgeError


@dataclass
class TrainConfig:
    # model: a preset plus overrides of its fields (ignored when the run starts from a checkpoint)
    preset: str = "tiny"
    model_overrides: dict[str, Any] = field(default_factory=dict)
    # batch: each step sees batch_size * seq_len * grad_accum * world_size tokens
    seq_len: int | None = None  # None = the model's block_size
    batch_size: int = 16  # rows per micro-batch per process
    grad_accum: int = 1  # micro-batches per optimizer step
    max_steps: int = 1000
    # Stop (evaluate, sample, checkpoint) once this many seconds have passed, 0 = none; the schedule then decays
    # along whichever runs out first, steps or time (so the run is no longer exactly repeatable).
    time_budget_s: float = 0.0
    # optimizer
    optimizer: str = "muon"  # "muon" (Muon for hidden matrices + AdamW for the rest) | "adamw"
    lr: float = 6e-3  # AdamW learning rate (embeddings, head, norms; every parameter with optimizer="adamw")
    embed_lr: float | None = None  # None = lr; embeddings tolerate a higher rate than the head
    muon_lr: float = 0.04
    muon_momentum: float = 0.95
    weight_decay: float = 0.0  # on matrices only; never on norms
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0  # 0 = off
    # schedule: linear warmup, then constant until decay_start, then cosine or linear decay to min_lr_frac * lr
    warmup_steps: int = 20
    decay: str = "linear"  # "linear" | "cosine" | "constant"
    decay_start_frac: float = 0.0  # fraction of max_steps after which the decay starts (0 = right after warmup)
    min_lr_frac: float = 0.0
    # evaluation, samples, checkpoints, logs
    eval_every: int = 100  # 0 = only at the end
    eval_batches: int = 20  # validation micro-batches per evaluation (0 = every validation window)
    sample_every: int = 0  # 0 = samples only at the end
    sample_tokens: int = 48
    num_samples: int = 2
    checkpoint_every: int = 200  # 0 = only at the end
    keep_checkpoints: int = 2  # newest checkpoints kept on disk (0 = all)
    log_every: int = 1
    tensorboard: bool = True
    progress: bool = True  # tqdm bar (rank 0 only)
    # execution
    seed: int = 1337
    device: str = "auto"  # "auto" = cuda when available, else cpu
    dtype: str = "auto"  # "auto" = bf16 autocast on CUDA, fp32 on CPU (bf16 is ~3x slower on the reference CPU)
    # None = torch.compile on CUDA only. On CPU (it needs a C compiler) it fuses the elementwise work between the
    # matmuls: the tiny preset's step went 5,880 -> 6,810 tok/s (1 thread) after ~28 s of compiling, so it pays
    # from about 300 steps on; off by default there because short runs (tests, the speedrun's 600 steps) gain little.
    compile: bool | None = None
    fsdp: bool = False  # shard parameters, gradients and optimizer state (FSDP2) instead of replicating (DDP)
    peak_flops: float | None = None  # per-device peak for MFU; None = measured (CPU) or looked up (CUDA)

    def __post_init__(self) -> None:
        checks = {
            "optimizer": self.optimizer in ("muon", "adamw"),
            "decay": self.decay in ("linear", "cosine", "constant"),
            "batch_size": self.batch_size >= 1,
            "grad_accum": self.grad_accum >= 1,
            "max_steps": self.max_steps >= 0,
            "lr": self.lr > 0 and self.muon_lr > 0,
            "warmup_steps": self.warmup_steps >= 0,
            "decay_start_frac": 0.0 <= self.decay_start_frac <= 1.0,
            "seq_len": self.seq_len is None or self.seq_len >= 1,
            "dtype": self.dtype in ("auto", "float32", "bfloat16"),
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise LmforgeError(f"invalid TrainConfig field(s) {bad}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise LmforgeError(f"unknown TrainConfig field(s): {unknown}")
        return cls(**d)

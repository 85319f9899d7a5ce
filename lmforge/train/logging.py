"""What a training run reports: a metrics JSONL (one row per step), TensorBoard events, a loss-curve PNG, and
the throughput figures (tokens/s, MFU) the progress bar shows.

MFU (model FLOPs utilisation) compares the FLOPs the model needs per token with what the hardware could do: on a
GPU its datasheet peak (or one measured with `--peak-flops measure`), on a CPU a matmul peak measured here, because
CPU datasheets say little about what torch reaches. Throughput and MFU are steady-state figures: the first steps
(compilation) and evaluation, samples and checkpoints are timed apart (`Throughput`).

On CPU both sides are per CPU-second (process time), so a machine shared with other programs, whose cores this
process only gets part of the time, does not show up as a low (or, with a peak measured in a busy moment, an
impossible > 100%) utilisation.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch

from lmforge.utils import LmforgeError, atomic_write

# Dense bf16 tensor-core peaks (FLOP/s) from the vendors' datasheets, by a substring of the device name (SXM parts;
# the first match wins, so the more specific names come first).
GPU_PEAK_FLOPS = {"H200": 989e12, "H100 PCIe": 756e12, "H100": 989e12, "B200": 2250e12, "A100": 312e12,
                  "L40S": 362e12, "A10G": 125e12, "4090": 165e12, "3090": 71e12, "L4": 121e12}
# Steps at the start of each invocation timed apart from the steady state: the first compiles (torch.compile) and
# warms the allocator and the kernel caches; the next two catch a recompilation and the slow first optimizer steps.
WARMUP_STEPS = 3


def measure_matmul_flops(size: int = 512, seconds: float = 0.3, dtype: torch.dtype = torch.float32,
                         clock=time.perf_counter, device: torch.device | str = "cpu") -> float:
    """FLOP/s of repeated square matmuls on `device` (best of a short burst).

    On the CPU with torch's current thread count; with `clock=time.process_time` the figure is per CPU-second (all
    threads' time summed): what one core does while it runs, whatever other programs take from the machine. On a
    GPU the clock is the wall clock around synchronised bursts.
    """
    device = torch.device(device)
    a, b = (torch.randn(size, size, device=device).to(dtype) for _ in range(2))
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda *_: None)
    torch.mm(a, b)  # warm the kernels and the thread pool
    sync(device)
    best, t_end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        t0 = clock()
        for _ in range(4):
            torch.mm(a, b)
        sync(device)
        spent = clock() - t0
        if spent > 0:
            best = max(best, 4 * 2 * size**3 / spent)
    return best


@dataclass(frozen=True)
class Peak:
    """The MFU denominator and where it came from (printed in the banner and the summary)."""

    flops: float | None
    source: str


def resolve_peak(setting: str, device: torch.device, dtype: torch.dtype) -> Peak:
    """`--peak-flops`: a number, "measure" (square matmuls in the training dtype: bf16 on CUDA under autocast), or
    "auto": the datasheet's dense bf16 peak for a known GPU trained in bf16, else measured. A CPU is always
    measured, per CPU-second (see the module docstring), since CPU datasheets say little about what torch reaches."""
    if setting not in ("auto", "measure"):
        return Peak(float(setting), "given by --peak-flops")
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        if setting == "auto" and dtype == torch.bfloat16:
            sheet = next(((k, v) for k, v in GPU_PEAK_FLOPS.items() if k in name), None)
            if sheet is not None:
                return Peak(sheet[1], f"datasheet, {name}, dense bf16")
        flops = measure_matmul_flops(8192, 1.0, dtype, device=device)
        return Peak(flops, f"measured, {name}, {str(dtype).removeprefix('torch.')} 8192^3 matmul")
    if device.type == "cpu":
        return Peak(measure_matmul_flops(dtype=dtype, clock=time.process_time),
                    f"measured, cpu, {str(dtype).removeprefix('torch.')} 512^3 matmul per CPU-second")
    return Peak(None, f"unknown for {device.type} (give --peak-flops)")


class Throughput:
    """Steady-state tokens/s and MFU of this invocation, with everything else timed apart.

    The first `WARMUP_STEPS` steps (compilation among them) and the work between steps (evaluation, samples,
    checkpoints) would otherwise sink the figures: a 50-step run that compiles for a minute would report a tenth of
    its real speed. Figures cover this invocation only; a resumed run's earlier steps ran elsewhere.
    """

    def __init__(self, peak: Peak, per_cpu_second: bool, warmup_steps: int = WARMUP_STEPS) -> None:
        self.peak, self.per_cpu_second, self.warmup_steps = peak, per_cpu_second, warmup_steps
        self.steps = 0
        self.warm = {"tokens": 0.0, "flops": 0.0, "wall": 0.0, "cpu": 0.0}
        self.steady = dict(self.warm)
        self.between: dict[str, float] = {"eval_s": 0.0, "sample_s": 0.0, "checkpoint_s": 0.0}

    def add_step(self, tokens: int, flops: float, wall: float, cpu: float) -> None:
        self.steps += 1
        bucket = self.warm if self.steps <= self.warmup_steps else self.steady
        for key, value in (("tokens", tokens), ("flops", flops), ("wall", wall), ("cpu", cpu)):
            bucket[key] += value

    @contextlib.contextmanager
    def timed(self, what: str) -> Iterator[None]:
        """Time the block as `what` (one of `self.between`'s keys)."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.between[what] += time.perf_counter() - t0

    def mfu(self, flops: float, wall: float, cpu: float) -> float | None:
        """Achieved over peak FLOP/s for this process's `flops`: per CPU-second on a CPU (the peak was measured
        that way), per wall-second on a GPU."""
        spent = cpu if self.per_cpu_second else wall
        if not self.peak.flops or spent <= 0:
            return None
        return flops / spent / self.peak.flops

    def tokens_per_s(self) -> float | None:
        s = self.steady
        return s["tokens"] / s["wall"] if s["wall"] > 0 else None

    def figures(self, compiled: bool) -> dict[str, Any]:
        """The summary's throughput figures: steady state (None when the run ended within its warm-up), warm-up,
        the estimated compilation time (the warm-up's excess over as many steady steps) and the time between
        steps."""
        tps, s, w = self.tokens_per_s(), self.steady, self.warm
        steady_steps = max(0, self.steps - self.warmup_steps)
        mfu = self.mfu(s["flops"], s["wall"], s["cpu"])
        out: dict[str, Any] = {
            "tokens_per_s": round(tps, 1) if tps else None, "mfu": round(mfu, 4) if mfu is not None else None,
            "peak_flops": self.peak.flops, "peak_source": self.peak.source, "steady_steps": steady_steps,
            "warmup_steps": min(self.steps, self.warmup_steps), "warmup_s": round(w["wall"], 3)}
        if compiled and steady_steps:
            out["compile_s"] = round(max(0.0, w["wall"] - out["warmup_steps"] * s["wall"] / steady_steps), 3)
        out.update({k: round(v, 3) for k, v in self.between.items()})
        return out


def require_wandb(wanted: bool) -> None:
    """Refuse `--wandb` without the wandb package, before a run writes anything (it is an optional extra)."""
    import importlib.util

    if wanted and importlib.util.find_spec("wandb") is None:
        raise LmforgeError("--wandb needs the wandb package (pip install wandb), or leave --wandb out")


class RunLogger:
    """Appends metrics rows (rank 0 only), mirrors them to TensorBoard and (optionally) Weights & Biases, and
    draws the loss curve."""

    def __init__(self, run_dir: Path, enabled: bool, tensorboard: bool, resume_step: int = 0,
                 wandb_config: dict[str, Any] | None = None) -> None:
        self.path = Path(run_dir) / "metrics.jsonl"
        self.enabled = enabled
        self.rows: list[dict[str, Any]] = []
        self.tb = self.wandb = None
        if not enabled:
            return
        if self.path.exists():
            # A resumed run continues from its checkpoint: rows logged after it (lost work) are dropped.
            old = [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]
            self.rows = [r for r in old if r.get("step", 0) <= resume_step]
            with atomic_write(self.path) as f:
                f.writelines(json.dumps(r) + "\n" for r in self.rows)
        self._file = open(self.path, "a", encoding="utf-8")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is a declared dependency; a stripped install still trains
                SummaryWriter = None
            if SummaryWriter is not None:
                self.tb = SummaryWriter(str(Path(run_dir) / "tensorboard"), purge_step=resume_step + 1)
        if wandb_config is not None:
            self.wandb = _wandb_run(Path(run_dir), wandb_config)

    def log(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.rows.append(row)
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        scalars = {k: v for k, v in row.items() if k != "step" and isinstance(v, (int, float))}
        if self.tb is not None:
            for k, v in scalars.items():
                self.tb.add_scalar(k, v, row["step"])
        if self.wandb is not None:
            self.wandb.log(scalars, step=row["step"])

    def plot(self) -> Path | None:
        """loss.png: training loss (and validation loss where measured) against step."""
        if not self.enabled or not self.rows:
            return None
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
        tr = [(r["step"], r["loss"]) for r in self.rows if "loss" in r]
        va = [(r["step"], r["val_loss"]) for r in self.rows if "val_loss" in r]
        if tr:
            ax.plot(*zip(*tr), lw=1, label="train loss")
        if va:
            ax.plot(*zip(*va), "o-", lw=1.5, label="validation loss")
        ax.set_xlabel("step")
        ax.set_ylabel("cross-entropy (nats/token)")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        out = self.path.with_name("loss.png")
        with atomic_write(out, "wb") as f:
            fig.savefig(f, format="png")
        plt.close(fig)
        return out

    def close(self) -> None:
        if not self.enabled:
            return
        self._file.close()
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


def _wandb_run(run_dir: Path, config: dict[str, Any]) -> Any:
    """A wandb run kept in `run_dir/wandb`, offline unless WANDB_MODE says otherwise (nothing leaves the machine
    unasked); the run folder's name is the run's name."""
    import os

    import wandb

    return wandb.init(project="lmforge", name=run_dir.name, dir=str(run_dir), config=config,
                      mode=os.environ.get("WANDB_MODE", "offline"))

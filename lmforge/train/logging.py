"""What a training run reports: a metrics JSONL (one row per step), TensorBoard events, a loss-curve PNG, and
the throughput figures (tokens/s, MFU) the progress bar shows.

MFU (model FLOPs utilisation) compares the FLOPs the model needs per token with what the hardware could do: on a
GPU its datasheet peak, on a CPU a matmul peak measured here, because CPU datasheets say little about what torch
reaches. On CPU both sides are per CPU-second (process time), so a machine shared with other programs, whose
cores this process only gets part of the time, does not show up as a low (or, with a peak measured in a busy
moment, an impossible > 100%) utilisation.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from lmforge.utils import atomic_write

# Dense bf16 tensor-core peaks (FLOP/s) from the vendors' datasheets, by a substring of the device name.
GPU_PEAK_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12, "4090": 165e12,
                  "3090": 71e12, "L4": 121e12}


def measure_matmul_flops(size: int = 512, seconds: float = 0.3, dtype: torch.dtype = torch.float32,
                         clock=time.perf_counter) -> float:
    """FLOP/s of repeated square matmuls on the CPU with torch's current thread count (best of a short burst).

    With `clock=time.process_time` the figure is per CPU-second (all threads' time summed): what one core does
    while it runs, whatever other programs take from the machine.
    """
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    torch.mm(a, b)  # warm the kernels and the thread pool
    best, t_end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        t0 = clock()
        for _ in range(4):
            torch.mm(a, b)
        spent = clock() - t0
        if spent > 0:
            best = max(best, 4 * 2 * size**3 / spent)
    return best


def peak_flops(device: torch.device) -> float | None:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        return next((v for k, v in GPU_PEAK_FLOPS.items() if k in name), None)
    if device.type == "cpu":
        return measure_matmul_flops(clock=time.process_time)
    return None


class RunLogger:
    """Appends metrics rows (rank 0 only), mirrors them to TensorBoard, and draws the loss curve."""

    def __init__(self, run_dir: Path, enabled: bool, tensorboard: bool, resume_step: int = 0) -> None:
        self.path = Path(run_dir) / "metrics.jsonl"
        self.enabled = enabled
        self.rows: list[dict[str, Any]] = []
        self.tb = None
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

    def log(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.rows.append(row)
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        if self.tb is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, row["step"])

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

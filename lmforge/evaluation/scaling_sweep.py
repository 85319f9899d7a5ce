"""The scaling sweep: train a grid of model sizes x compute budgets, fit the law, check it on a held-out point.

Each point is a small pretraining run through the public entry (`lmforge.train.pretrain.run_pretrain`) on the
shards given. The grid is IsoFLOP-shaped: for every compute budget C and width, the run sees D = C / (6 N) tokens
(N: parameters, embeddings tied as in GPT-2; see `SweepConfig.params`), so the same points serve approach 3
(every point has its own N and D: 4 sizes x 3 budgets are 12 token counts) and approach 2 (each budget is a
profile over sizes).

Hyperparameters transfer across width by one rule, the one nanochat uses with the same optimiser pair: the AdamW
rates (embeddings, norms) scale as 1/sqrt(width), lr(width) = lr * sqrt(base_width / width), and Muon's rate stays
fixed, because Muon's orthogonalised update already has a width-independent spectral size (each matrix's update
is scaled by sqrt(max(1, rows/cols))). `--lr-check` verifies the rule: it sweeps a multiplier on both rates at two
widths and reports whether the best multiplier moves by more than one grid step between them.

Resumable point by point: a point's result is a JSON file written atomically when its run ends; a rerun skips
every point that has one (and a point killed mid-run restarts it, its run folder removed first).
"""

from __future__ import annotations

import math
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from lmforge.utils import LmforgeError, read_json, remove_stale_temporaries, write_json

# A stated budget: the default grid (12 points) trains in about this many seconds on 2 cores.
BUDGET_S = 25 * 60


@dataclass
class SweepConfig:
    widths: list[int] = field(default_factory=lambda: [32, 48, 64, 96])
    # Budgets C = 6 N D. The default grid trained in 18.3 min (1,099 s; 22.9 min with the held-out point and
    # --lr-check) at 1 thread on the 2-core machine while other jobs kept its load at 5-12. Its IsoFLOP minima are
    # bracketed only at 1e12 (smaller models win below); a 3e12 row (--flops 1e11,3e11,1e12,3e12) would bracket
    # more, for about 8 more minutes at the throughput `--estimate` measured (1 thread, load 4.5).
    flops: list[float] = field(default_factory=lambda: [1e11, 3e11, 1e12])
    depth: int = 2
    head_dim: int = 16
    seq_len: int = 128
    batch_size: int = 8
    base_width: int = 64  # the width at which `lr` is the AdamW rate
    lr: float = 6e-3
    muon_lr: float = 0.04
    lr_multipliers: list[float] = field(default_factory=lambda: [0.25, 0.5, 1.0, 2.0, 4.0])
    holdout_width: int = 80  # trained after the fit, its loss predicted by it
    holdout_flops: float = 6e11
    target_flops: float = 1e18  # the larger budget whose compute-optimal N and D the fit predicts
    bootstrap: int = 200
    eval_batches: int = 50  # validation batches per point (0 = the whole split): the same windows for every point
    seed: int = 1337
    device: str = "cpu"
    # N of the law. "total" (Chinchilla's count): at our sizes the embedding is a third to a half of the model,
    # and Pearce & Song (2024) traced Kaplan's smaller data exponent to counting without it at small scale.
    params: str = "total"

    def __post_init__(self) -> None:
        if len(set(self.widths)) < 2 or len(set(self.flops)) < 2:
            raise LmforgeError("scaling sweep: --widths and --flops need at least 2 distinct values each")
        for w in [*self.widths, self.holdout_width]:
            if w < self.head_dim or w % self.head_dim:
                raise LmforgeError(f"scaling sweep: width {w} is not a multiple of --head-dim {self.head_dim}")
        if min(self.flops) <= 0 or self.holdout_flops <= 0 or self.target_flops <= 0:
            raise LmforgeError("scaling sweep: --flops, --holdout-flops and --target-flops must be positive")
        for name in ("depth", "seq_len", "batch_size", "base_width", "bootstrap"):
            if getattr(self, name) < 1:
                raise LmforgeError(f"scaling sweep: --{name.replace('_', '-')} must be at least 1")
        if self.params not in ("total", "non-embedding"):
            raise LmforgeError(f"scaling sweep: --params {self.params!r}: choose total or non-embedding")
        if self.lr <= 0 or self.muon_lr <= 0 or min(self.lr_multipliers) <= 0:
            raise LmforgeError("scaling sweep: learning rates and --lr-multipliers must be positive")


@dataclass(frozen=True)
class Point:
    """One training run of the sweep: a width, a compute budget, a learning-rate multiplier, and its group."""

    kind: str  # "grid" | "lr" | "holdout"
    width: int
    flops: float
    lr_mult: float = 1.0

    @property
    def name(self) -> str:
        return f"w{self.width}_c{self.flops:.2e}_lr{self.lr_mult:g}".replace("+", "")


def model_overrides(cfg: SweepConfig, width: int) -> dict[str, Any]:
    return dict(n_layer=cfg.depth, n_embd=width, n_head=width // cfg.head_dim, block_size=cfg.seq_len,
                tie_embeddings=True)


def model_params(cfg: SweepConfig, width: int, vocab_size: int) -> int:
    """N of the law for a width (counted on the meta device): every parameter, the tied embedding once, with
    `params="total"`; all but the embedding with `params="non-embedding"`."""
    import torch

    from lmforge.model import GPT, GPTConfig

    with torch.device("meta"):
        model = GPT(GPTConfig.from_preset("tiny", vocab_size=vocab_size, **model_overrides(cfg, width)))
    return model.num_params(non_embedding=cfg.params == "non-embedding")


def point_steps(cfg: SweepConfig, point: Point, n: int) -> int:
    """Optimizer steps giving D = C / 6N tokens (rounded to whole steps, at least 10)."""
    return max(10, round(point.flops / (6 * n) / (cfg.batch_size * cfg.seq_len)))


def train_config(cfg: SweepConfig, point: Point, steps: int):
    """The TrainConfig of a point: width-scaled AdamW rate, fixed Muon rate, both times the point's multiplier,
    5% warmup, linear decay to zero, one evaluation and one checkpoint at the end."""
    from lmforge.train import TrainConfig

    scale = math.sqrt(cfg.base_width / point.width)
    return TrainConfig(
        preset="tiny", model_overrides=model_overrides(cfg, point.width), seq_len=cfg.seq_len,
        batch_size=cfg.batch_size, max_steps=steps, lr=cfg.lr * scale * point.lr_mult,
        muon_lr=cfg.muon_lr * point.lr_mult, warmup_steps=max(1, steps // 20), eval_every=0,
        eval_batches=cfg.eval_batches, num_samples=0, checkpoint_every=0, keep_checkpoints=1, tensorboard=False,
        progress=False, seed=cfg.seed, device=cfg.device)


PointRunner = Callable[[SweepConfig, Point, Path, Path], dict[str, Any]]


def train_point(cfg: SweepConfig, point: Point, data: Path, run_dir: Path) -> dict[str, Any]:
    """Train one point through the public pretraining entry; its result (N, D, final validation loss)."""
    from lmforge.tokenizer.shards import TokenShards
    from lmforge.train.pretrain import run_pretrain

    vocab = TokenShards(data, "train").vocab_size
    n = model_params(cfg, point.width, vocab)
    steps = point_steps(cfg, point, n)
    summary = run_pretrain(data, run_dir, train_config(cfg, point, steps))
    if summary.get("val_loss") is None:
        raise LmforgeError(f"scaling sweep: {data} has no validation split long enough for --seq-len "
                           f"{cfg.seq_len}; the fit needs a held-out loss")
    return {"n": n, "params": cfg.params, "d": steps * cfg.batch_size * cfg.seq_len, "loss": summary["val_loss"],
            "seconds": summary["seconds"], "steps": steps, "tokens_per_s": summary["tokens_per_s"]}


def run_points(cfg: SweepConfig, points: list[Point], data: Path, out: Path,
               runner: PointRunner = train_point, log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Each point's result, training only those without a result file yet (so a rerun resumes)."""
    results = []
    for i, point in enumerate(points, 1):
        result_file = out / "points" / point.kind / f"{point.name}.json"
        if result_file.is_file():
            results.append(read_json(result_file, "scaling point result"))
            continue
        run_dir = out / "runs" / point.kind / point.name
        shutil.rmtree(run_dir, ignore_errors=True)  # a point killed mid-run starts over
        t0 = time.perf_counter()
        result = {**asdict(point), "name": point.name, **runner(cfg, point, data, run_dir)}
        result["wall_s"] = round(time.perf_counter() - t0, 2)
        write_json(result_file, result)
        log(f"[scaling] {point.kind} {i}/{len(points)} {point.name}: N={result['n']:,} D={result['d']:,} "
            f"loss {result['loss']:.4f} ({result['wall_s']:.1f} s)")
        results.append(result)
    return results


def grid_points(cfg: SweepConfig) -> list[Point]:
    return [Point("grid", w, c) for c in cfg.flops for w in cfg.widths]


def lr_check_points(cfg: SweepConfig) -> list[Point]:
    """The multipliers at the smallest and largest widths, at the smallest budget (the cheapest runs: the check
    compares widths at one horizon); multiplier 1 is the grid's own point there, reused rather than trained twice."""
    budget = min(cfg.flops)
    return [Point("grid" if m == 1.0 else "lr", w, budget, m) for w in (min(cfg.widths), max(cfg.widths))
            for m in cfg.lr_multipliers]


def lr_check_summary(cfg: SweepConfig, results: list[dict[str, Any]]) -> dict[str, Any]:
    """The best multiplier per width, and whether it moved by more than one grid step between the widths."""
    best = {}
    for width in sorted({r["width"] for r in results}):
        mine = sorted((r for r in results if r["width"] == width), key=lambda r: r["lr_mult"])
        losses = [r["loss"] for r in mine]
        best[str(width)] = {"multipliers": [r["lr_mult"] for r in mine], "losses": losses,
                            "best_mult": mine[losses.index(min(losses))]["lr_mult"]}
    index = [cfg.lr_multipliers.index(v["best_mult"]) for v in best.values()]
    moved = max(index) - min(index)
    return {"widths": best, "steps_moved": moved, "transfers": moved <= 1}


def estimate_seconds(cfg: SweepConfig, data: Path, scratch: Path, probe_steps: int = 20,
                     runner: PointRunner = train_point) -> dict[str, Any]:
    """Time `probe_steps` of each width (after a few warm-up steps) and extrapolate to the grid, the LR check and
    the held-out point: tokens of each point divided by its width's measured throughput."""
    from lmforge.tokenizer.shards import TokenShards

    vocab = TokenShards(data, "train", check_tokenizer=False).vocab_size  # the runner checks the shards
    speed, overhead = {}, []
    for width in sorted({*cfg.widths, cfg.holdout_width}):
        n = model_params(cfg, width, vocab)
        probe = Point("probe", width, 6.0 * n * probe_steps * cfg.batch_size * cfg.seq_len)
        t0 = time.perf_counter()
        result = runner(cfg, probe, data, scratch / probe.name)
        speed[width] = result["tokens_per_s"]
        overhead.append(time.perf_counter() - t0 - result["seconds"])  # start, evaluation, checkpoint
    shutil.rmtree(scratch, ignore_errors=True)
    per_point = max(0.0, sum(overhead) / len(overhead))

    def seconds(points: list[Point]) -> float:
        total = 0.0
        for p in points:
            n = model_params(cfg, p.width, vocab)
            total += point_steps(cfg, p, n) * cfg.batch_size * cfg.seq_len / speed[p.width] + per_point
        return total

    return {"tokens_per_s": speed, "overhead_per_point_s": round(per_point, 2),
            "grid_s": round(seconds(grid_points(cfg)), 1),
            "lr_check_s": round(seconds([p for p in lr_check_points(cfg) if p.kind == "lr"]), 1),
            "holdout_s": round(seconds([Point("holdout", cfg.holdout_width, cfg.holdout_flops)]), 1),
            "budget_s": BUDGET_S}


def fit_run(out: Path, cfg: SweepConfig) -> dict[str, Any]:
    """Fit the grid points of a sweep folder; write scaling_fit.json and scaling_fit.png beside them, with the
    held-out point's prediction check when that point has been trained."""
    from lmforge.evaluation.scaling import fit_report, law_from_report, plot_report

    grid = [read_json(p, "scaling point result") for p in sorted((out / "points" / "grid").glob("*.json"))]
    if not grid:
        raise LmforgeError(f"scaling fit: no point results in {out / 'points' / 'grid'} (run `lmforge scaling "
                           f"sweep --out {out}` first)")
    report = fit_report([r["n"] for r in grid], [r["d"] for r in grid], [r["loss"] for r in grid],
                        cfg.target_flops, samples=cfg.bootstrap, seed=cfg.seed)
    held = sorted((out / "points" / "holdout").glob("*.json"))
    if held:
        h = read_json(held[0], "scaling point result")
        predicted = float(law_from_report(report).predict(h["n"], h["d"]))
        report["holdout"] = {"n": h["n"], "d": h["d"], "measured": h["loss"], "predicted": predicted,
                             "relative_error": abs(predicted - h["loss"]) / h["loss"],
                             "goal": 0.02, "within_goal": abs(predicted - h["loss"]) / h["loss"] <= 0.02}
    write_json(out / "scaling_fit.json", report)
    plot_report(report, out / "scaling_fit.png")
    return report


def run_sweep(cfg: SweepConfig, data: Path, out: Path, lr_check: bool = False, holdout: bool = True,
              runner: PointRunner = train_point, log: Callable[[str], None] = print) -> dict[str, Any]:
    """The grid, the fit, the held-out point and its check, and optionally the LR check; resumable."""
    out.mkdir(parents=True, exist_ok=True)
    for folder in (out, *(out / "points" / kind for kind in ("grid", "holdout", "lr"))):
        remove_stale_temporaries(folder)  # what a kill left of an atomic write
    saved = out / "sweep_config.json"
    if saved.is_file() and read_json(saved, "sweep config") != asdict(cfg):
        raise LmforgeError(f"scaling sweep: {saved} was written with other settings; resume with the same flags "
                           "or use another --out")
    write_json(saved, asdict(cfg))
    run_points(cfg, grid_points(cfg), data, out, runner, log)
    held = Point("holdout", cfg.holdout_width, cfg.holdout_flops)
    if holdout and not (out / "points" / "holdout" / f"{held.name}.json").is_file():
        fit_run(out, cfg)  # the fit (and its plot) exist on disk before the held-out point is trained
        run_points(cfg, [held], data, out, runner, log)
    report = fit_run(out, cfg)
    if lr_check:
        summary = lr_check_summary(cfg, run_points(cfg, lr_check_points(cfg), data, out, runner, log))
        write_json(out / "lr_check.json", summary)
        report["lr_check"] = summary
    return report

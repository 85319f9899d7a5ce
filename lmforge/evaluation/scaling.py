"""Scaling laws: fit L(N, D) = E + A / N^alpha + B / D^beta to measured losses, with honest error bars.

Approach 3 of Chinchilla (Hoffmann et al. 2022) as the replication of Besiroglu et al. (2024) does it: the Huber
loss (delta 1e-3) between log L and the log of the prediction, the prediction written as a log-sum-exp
LSE(a - alpha log N, b - beta log D, e) with A = exp(a), B = exp(b), E = exp(e) (so every constant stays positive
and the optimiser works on comparable scales), minimised from every one of the 4,500 starts of Chinchilla's
grid. The minimiser is Levenberg-Marquardt on the Huber loss's reweighted least squares, vectorised over the
starts, rather than the paper's L-BFGS: the objective is the same, and all starts run at once in about a second
where torch's L-BFGS took half a second per start (see `_minimise`). The replication showed that Chinchilla's
published intervals were far too narrow because too few points were fitted, so every constant here carries a
bootstrap interval: the points are resampled with replacement and refitted, and the 2.5th/97.5th percentiles
are reported.

Approach 2 (the IsoFLOP view) uses the same points: points of (nearly) equal compute C = 6 N D form a profile,
a parabola in log N fitted to each profile gives its N_opt, and N_opt ~ C^a across profiles.

N is whatever parameter count the points carry and C = 6 N D uses the same N (the sweep counts every parameter,
Chinchilla's convention, by default; see `scaling_sweep.SweepConfig.params`).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from lmforge.utils import LmforgeError

HUBER_DELTA = 1e-3
CONSTANTS = ("E", "A", "B", "alpha", "beta")
# Published constants printed beside ours (Kaplan's exponents are those of L(N) and L(D) taken separately).
ANCHORS: dict[str, dict[str, float]] = {
    "Kaplan et al. 2020": {"alpha": 0.076, "beta": 0.095},
    "Chinchilla (Hoffmann et al. 2022)": {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28},
    "Besiroglu et al. 2024": {"E": 1.82, "A": 482.0, "B": 2085.0, "alpha": 0.35, "beta": 0.37},
}
# Chinchilla's initialisation grid (a, b, e are the logs of A, B, E).
GRID = {"a": np.arange(0, 30, 5.0), "b": np.arange(0, 30, 5.0), "e": np.arange(-1, 1.5, 0.5),
        "alpha": np.arange(0, 2.5, 0.5), "beta": np.arange(0, 2.5, 0.5)}


@dataclass
class LawFit:
    """The fitted constants and the Huber objective they reached (summed over the points)."""

    E: float
    A: float
    B: float
    alpha: float
    beta: float
    objective: float

    def predict(self, n: np.ndarray | float, d: np.ndarray | float) -> np.ndarray:
        return self.E + self.A / np.power(n, self.alpha) + self.B / np.power(d, self.beta)

    def optimum(self, flops: float) -> tuple[float, float]:
        """Compute-optimal (N, D) for a budget of `flops` = 6 N D: minimising the law along N D = C/6 gives
        N_opt = G (C/6)^(beta/(alpha+beta)) with G = (alpha A / (beta B))^(1/(alpha+beta))."""
        s = self.alpha + self.beta
        g = (self.alpha * self.A / (self.beta * self.B)) ** (1.0 / s)
        n_opt = g * (flops / 6.0) ** (self.beta / s)
        return n_opt, flops / 6.0 / n_opt


def _as_arrays(n: Sequence[float], d: Sequence[float], loss: Sequence[float]) -> tuple[np.ndarray, ...]:
    """float64 arrays of the points, refused (with the reason) when the law cannot be identified from them."""
    n, d, loss = (np.asarray(v, dtype=np.float64) for v in (n, d, loss))
    if not (n.shape == d.shape == loss.shape) or n.ndim != 1:
        raise LmforgeError("scaling fit: N, D and loss must be equally long lists")
    if len(n) < 5:
        raise LmforgeError(f"scaling fit: {len(n)} points; the law has 5 constants, fit at least 5 points")
    if (n <= 0).any() or (d <= 0).any() or (loss <= 0).any() or not np.isfinite(loss).all():
        raise LmforgeError("scaling fit: every N, D and loss must be a positive finite number")
    if len(np.unique(n)) < 2 or len(np.unique(d)) < 2:
        raise LmforgeError("scaling fit: the points need at least 2 model sizes and 2 token counts")
    return n, d, loss


def _terms(theta: np.ndarray, log_n: np.ndarray, log_d: np.ndarray) -> np.ndarray:
    """(..., points, 3): a - alpha log N, b - beta log D and e, for parameters theta (..., 5) = (a, b, e, alpha,
    beta); their log-sum-exp is the predicted log-loss."""
    a, b, e, alpha, beta = (theta[..., i:i + 1] for i in range(5))
    return np.stack(np.broadcast_arrays(a - alpha * log_n, b - beta * log_d, e), axis=-1)


def _huber(r: np.ndarray) -> np.ndarray:
    r = np.abs(r)
    return np.where(r <= HUBER_DELTA, 0.5 * r * r, HUBER_DELTA * (r - 0.5 * HUBER_DELTA)).sum(-1)


def _objective(theta: np.ndarray, log_n: np.ndarray, log_d: np.ndarray, log_loss: np.ndarray) -> np.ndarray:
    """Summed Huber loss of LSE(...) - log L, one value per parameter row of theta."""
    t = _terms(theta, log_n, log_d)
    top = t.max(-1)
    pred = top + np.log(np.exp(t - top[..., None]).sum(-1))
    return _huber(pred - log_loss)


def _minimise(theta: np.ndarray, log_n: np.ndarray, log_d: np.ndarray, log_loss: np.ndarray,
              iters: int = 300) -> tuple[np.ndarray, np.ndarray]:
    """Minimise the Huber objective from every row of theta (S, 5) at once; the data may differ per row
    (shape (S, points), a bootstrap resample each) or be shared ((points,)). Returns (theta, objective).

    Levenberg-Marquardt on iteratively reweighted least squares: the Huber loss is a least-squares loss with
    weights min(1, delta/|r|), so each iteration solves the damped 5x5 normal equations of that weighted problem,
    keeps the step only where it lowers the true Huber objective, and adapts each row's damping (smaller after a
    success, larger after a failure). Vectorised over rows, thousands of starts cost about what one does, which a
    per-start L-BFGS (0.5 s a start, as measured in torch) could not give with Huber's kink at delta = 1e-3.
    """
    theta = theta.astype(np.float64).copy()
    damping = np.full(len(theta), 1e-3)
    value = _objective(theta, log_n, log_d, log_loss)
    eye = np.eye(5)
    for _ in range(iters):
        t = _terms(theta, log_n, log_d)
        weights = np.exp(t - t.max(-1, keepdims=True))
        weights /= weights.sum(-1, keepdims=True)  # softmax: d LSE / d term
        pred = np.log(np.exp(t - t.max(-1, keepdims=True)).sum(-1)) + t.max(-1)
        r = pred - log_loss
        jac = np.stack([weights[..., 0], weights[..., 1], weights[..., 2],
                        -weights[..., 0] * log_n, -weights[..., 1] * log_d], axis=-1)  # (S, points, 5)
        w = np.minimum(1.0, HUBER_DELTA / np.maximum(np.abs(r), 1e-300))
        weighted = jac.transpose(0, 2, 1) * w[:, None, :]  # (S, 5, points)
        grad = np.matmul(weighted, r[..., None])[..., 0]
        hess = np.matmul(weighted, jac)
        diag = np.diagonal(hess, axis1=1, axis2=2)
        system = hess + (damping[:, None] * (diag + 1e-9))[..., None] * eye
        step = np.linalg.solve(system, -grad[..., None])[..., 0]
        trial = theta + step
        trial_value = _objective(trial, log_n, log_d, log_loss)
        better = np.isfinite(trial_value) & (trial_value < value)
        theta[better], value[better] = trial[better], trial_value[better]
        damping = np.clip(np.where(better, damping / 3, damping * 4), 1e-12, 1e12)
    return theta, value


def _grid_starts() -> np.ndarray:
    return np.array(list(itertools.product(GRID["a"], GRID["b"], GRID["e"], GRID["alpha"], GRID["beta"])))


def _law(theta: np.ndarray, value: float) -> LawFit:
    a, b, e, alpha, beta = (float(v) for v in theta)
    return LawFit(E=math.exp(e), A=math.exp(a), B=math.exp(b), alpha=alpha, beta=beta, objective=float(value))


def fit_law(n: Sequence[float], d: Sequence[float], loss: Sequence[float], finalists: int = 64) -> LawFit:
    """Approach 3: the constants of L(N, D) minimising the Huber loss on log-loss, the best of the minimisations
    from every point of Chinchilla's grid."""
    n, d, loss = _as_arrays(n, d, loss)
    logs = np.log(n), np.log(d), np.log(loss)
    # Every start for a few dozen steps, then the best `finalists` to convergence: most of the grid lands in the
    # same few basins, and polishing 4,500 copies of them to 1e-15 would cost 30 s instead of 2.
    theta, value = _minimise(_grid_starts(), *logs, iters=40)
    keep = np.argsort(np.where(np.isfinite(value), value, np.inf))[:finalists]
    theta, value = _minimise(theta[keep], *logs, iters=400)
    ok = np.isfinite(value) & np.isfinite(theta).all(-1)
    if not ok.any():
        raise LmforgeError("scaling fit: no start reached a finite objective")
    best = int(np.argmin(np.where(ok, value, np.inf)))
    return _law(theta[best], value[best])


def _theta(fit: LawFit) -> np.ndarray:
    return np.array([math.log(fit.A), math.log(fit.B), math.log(fit.E), fit.alpha, fit.beta])


def bootstrap(n: Sequence[float], d: Sequence[float], loss: Sequence[float], fit: LawFit, samples: int = 200,
              seed: int = 0, target_flops: float | None = None, starts: int = 8) -> dict[str, list[float]]:
    """95% percentile intervals of every constant (and of N_opt, D_opt, D_opt/N_opt at `target_flops`) from
    `samples` refits on points resampled with replacement. Each resample is minimised from the full fit's
    constants and from the `starts` grid points that score best on it, all resamples in one vectorised run;
    resamples that cannot identify the law (fewer than 2 sizes or token counts) are drawn again."""
    n, d, loss = _as_arrays(n, d, loss)
    rng = np.random.default_rng(seed)
    grid = _grid_starts()
    picks = []
    while len(picks) < samples:
        idx = rng.integers(0, len(n), len(n))
        if len(np.unique(n[idx])) >= 2 and len(np.unique(d[idx])) >= 2:
            picks.append(idx)
    idx = np.array(picks)  # (samples, points)
    log_n, log_d, log_loss = np.log(n)[idx], np.log(d)[idx], np.log(loss)[idx]
    thetas, rows = [], []
    for s in range(samples):
        scores = _objective(grid, log_n[s], log_d[s], log_loss[s])
        thetas += [_theta(fit), *grid[np.argsort(scores)[:starts]]]
        rows += [s] * (starts + 1)
    rows_a = np.array(rows)
    theta, value = _minimise(np.array(thetas), log_n[rows_a], log_d[rows_a], log_loss[rows_a])
    value = np.where(np.isfinite(value), value, np.inf).reshape(samples, starts + 1)
    best = theta.reshape(samples, starts + 1, 5)[np.arange(samples), value.argmin(1)]
    refits = [_law(t, 0.0) for t in best]
    draws = {k: [getattr(f, k) for f in refits] for k in CONSTANTS}
    if target_flops:
        optima = np.array([f.optimum(target_flops) for f in refits])
        draws.update(n_opt=optima[:, 0], d_opt=optima[:, 1], tokens_per_param=optima[:, 1] / optima[:, 0])
    return {k: [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))] for k, v in draws.items()}


def flop_groups(n: np.ndarray, d: np.ndarray, rel_tol: float = 0.1) -> list[list[int]]:
    """Indices of the points grouped by compute C = 6 N D, each group within `rel_tol` of its first (smallest)."""
    flops = 6 * n * d
    groups: list[list[int]] = []
    for i in np.argsort(flops):
        if groups and flops[i] <= flops[groups[-1][0]] * (1 + rel_tol):
            groups[-1].append(int(i))
        else:
            groups.append([int(i)])
    return groups


def _profile(n: np.ndarray, d: np.ndarray, loss: np.ndarray, g: list[int]) -> dict[str, Any]:
    """The parabola in log N through one group's points, and its vertex when it opens upwards."""
    x = np.log(n[g])
    c2, c1, c0 = np.polyfit(x, loss[g], 2)
    vertex = -c1 / (2 * c2) if c2 > 0 else None
    return {
        "flops": float(np.exp(np.log(6 * n[g] * d[g]).mean())), "n": n[g].tolist(), "d": d[g].tolist(),
        "loss": loss[g].tolist(), "parabola": [float(c2), float(c1), float(c0)],
        "n_opt": float(np.exp(vertex)) if vertex is not None else None,
        "loss_opt": float(c0 - c1 * c1 / (4 * c2)) if vertex is not None else None,
        "extrapolated": vertex is None or not (x.min() <= vertex <= x.max()),
    }


def isoflop_profiles(n: Sequence[float], d: Sequence[float], loss: Sequence[float],
                     rel_tol: float = 0.1) -> list[dict[str, Any]]:
    """Approach 2: points grouped by compute C = 6 N D (within `rel_tol` of the group's first), a parabola in
    log N fitted to each group of 3 or more sizes, and its vertex N_opt. A profile whose parabola opens downwards,
    or whose vertex lies outside the sizes it saw, says so (`n_opt` None or `extrapolated` true): its minimum was
    not bracketed, and a wider grid of sizes is what fixes it."""
    n, d, loss = (np.asarray(v, dtype=np.float64) for v in (n, d, loss))
    return [_profile(n, d, loss, g) for g in flop_groups(n, d, rel_tol) if len(np.unique(n[g])) >= 3]


def isoflop_bootstrap(n: Sequence[float], d: Sequence[float], loss: Sequence[float], target_flops: float,
                      samples: int = 200, seed: int = 0) -> dict[str, Any]:
    """95% percentile intervals of approach 2's exponent a and of its N_opt at `target_flops`. Each resample
    redraws the points of every IsoFLOP profile with replacement within that profile (a draw with fewer than 3
    distinct sizes is drawn again: a parabola needs 3), refits the parabolas and the line through the vertices;
    a resample whose profiles bracket fewer than 2 minima gives no exponent and is counted, not hidden."""
    n, d, loss = (np.asarray(v, dtype=np.float64) for v in (n, d, loss))
    groups = [g for g in flop_groups(n, d) if len(np.unique(n[g])) >= 3]
    rng = np.random.default_rng(seed)
    exponents, optima = [], []
    for _ in range(samples):
        profiles = []
        for g in groups:
            pick = rng.choice(g, len(g))
            while len(np.unique(n[pick])) < 3:
                pick = rng.choice(g, len(g))
            profiles.append(_profile(n, d, loss, list(pick)))
        expo = isoflop_exponent(profiles)
        if expo is not None:
            exponents.append(expo["a"])
            optima.append(math.exp(expo["log_k"]) * target_flops ** expo["a"])
    out: dict[str, Any] = {"samples": samples, "with_exponent": len(exponents)}
    if exponents:
        out["a"] = [float(np.percentile(exponents, 2.5)), float(np.percentile(exponents, 97.5))]
        out["n_opt_at_target"] = [float(np.percentile(optima, 2.5)), float(np.percentile(optima, 97.5))]
    return out


def isoflop_exponent(profiles: list[dict[str, Any]]) -> dict[str, float] | None:
    """N_opt = k C^a fitted (least squares in log-log) through the profiles whose minimum lies among their sizes
    (a vertex extrapolated from a parabola says little); None with fewer than 2 of them. Chinchilla's approach 2
    found a = 0.49 (so D_opt ~ C^0.51)."""
    found = [p for p in profiles if not p["extrapolated"]]
    if len(found) < 2:
        return None
    slope, intercept = np.polyfit(np.log([p["flops"] for p in found]), np.log([p["n_opt"] for p in found]), 1)
    return {"a": float(slope), "log_k": float(intercept), "profiles_used": len(found)}


def fit_report(n: Sequence[float], d: Sequence[float], loss: Sequence[float], target_flops: float,
               samples: int = 200, seed: int = 0) -> dict[str, Any]:
    """Everything `lmforge scaling fit` reports, JSON-able: approach 3 with intervals, the compute optimum at
    `target_flops`, approach 2's profiles and exponent, and the published anchors."""
    fit = fit_law(n, d, loss)
    n_opt, d_opt = fit.optimum(target_flops)
    profiles = isoflop_profiles(n, d, loss)
    expo = isoflop_exponent(profiles)
    approach2 = {"profiles": profiles, "exponent": expo}
    if expo is not None:
        approach2["n_opt_at_target"] = float(math.exp(expo["log_k"]) * target_flops ** expo["a"])
        approach2["intervals"] = isoflop_bootstrap(n, d, loss, target_flops, samples, seed)
    return {
        "points": [{"n": float(a), "d": float(b), "loss": float(c)} for a, b, c in zip(n, d, loss)],
        "fit": asdict(fit), "intervals": bootstrap(n, d, loss, fit, samples, seed, target_flops),
        "bootstrap_samples": samples, "huber_delta": HUBER_DELTA,
        "target_flops": target_flops, "n_opt": n_opt, "d_opt": d_opt, "tokens_per_param": d_opt / n_opt,
        "approach2": approach2, "anchors": ANCHORS,
    }


def law_from_report(report: dict[str, Any]) -> LawFit:
    return LawFit(**report["fit"])


def format_report(report: dict[str, Any]) -> str:
    """The fit as a table beside the published constants, then the compute optimum and the IsoFLOP view."""
    fit, ci = report["fit"], report["intervals"]
    names = list(ANCHORS)
    head = f"{'constant':>10} {'ours':>10} {'95% interval':>22}" + "".join(f" {k.split(' (')[0]:>20}" for k in names)
    lines = [f"L(N, D) = E + A/N^alpha + B/D^beta fitted to {len(report['points'])} points "
             f"(Huber delta {report['huber_delta']}, {report['bootstrap_samples']} bootstrap resamples)", head]
    for k in CONSTANTS:
        lo, hi = ci[k]
        anchors = "".join(f" {ANCHORS[a][k]:>20g}" if k in ANCHORS[a] else f" {'-':>20}" for a in names)
        lines.append(f"{k:>10} {fit[k]:>10.4g} {f'[{lo:.4g}, {hi:.4g}]':>22}{anchors}")
    c = report["target_flops"]
    lines.append(f"compute-optimal at C = {c:.3g} FLOPs (C = 6 N D): N = {report['n_opt']:.4g} "
                 f"{_interval(ci.get('n_opt'))}, D = {report['d_opt']:.4g} {_interval(ci.get('d_opt'))}, "
                 f"tokens per parameter {report['tokens_per_param']:.3g} {_interval(ci.get('tokens_per_param'))} "
                 f"(Chinchilla: about 20)")
    a2 = report["approach2"]
    for p in a2["profiles"]:
        where = "no minimum (parabola opens down)" if p["n_opt"] is None else \
            f"N_opt {p['n_opt']:.4g}, loss {p['loss_opt']:.4f}" + (" (outside the sizes: not bracketed)"
                                                                    if p["extrapolated"] else "")
        lines.append(f"IsoFLOP C = {p['flops']:.3g}: {len(p['n'])} sizes, {where}")
    if a2["exponent"] is not None:
        ci2 = a2.get("intervals", {})
        lines.append(f"IsoFLOP: N_opt ~ C^{a2['exponent']['a']:.3f} {_interval(ci2.get('a'))} from "
                     f"{a2['exponent']['profiles_used']} profiles (Chinchilla approach 2: 0.49; Kaplan: 0.73); at the "
                     f"target N_opt {a2['n_opt_at_target']:.4g} {_interval(ci2.get('n_opt_at_target'))}; "
                     f"{ci2.get('with_exponent', 0)} of {ci2.get('samples', 0)} resamples bracketed 2 or more minima")
    else:
        lines.append("IsoFLOP: fewer than 2 profiles with a minimum among their sizes; no exponent")
    return "\n".join(lines)


def _interval(pair: list[float] | None) -> str:
    return f"[{pair[0]:.3g}, {pair[1]:.3g}]" if pair else ""


def plot_report(report: dict[str, Any], path: str | Path) -> Path:
    """Two panels: loss against tokens for each size with the fitted law, and the IsoFLOP profiles with their
    parabolas and vertices. Written atomically as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lmforge.utils import atomic_path

    fit = law_from_report(report)
    pts = report["points"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    sizes = sorted({p["n"] for p in pts})
    colours = plt.cm.viridis(np.linspace(0, 0.9, len(sizes)))
    all_d = [p["d"] for p in pts]
    grid_d = np.geomspace(min(all_d) / 1.5, max(all_d) * 1.5, 100)
    for size, colour in zip(sizes, colours):
        mine = [p for p in pts if p["n"] == size]
        ax1.scatter([p["d"] for p in mine], [p["loss"] for p in mine], color=colour, label=f"N={size:.3g}")
        ax1.plot(grid_d, fit.predict(size, grid_d), color=colour, lw=1)
    ax1.set(xscale="log", xlabel="tokens D", ylabel="validation loss (nats/token)",
            title=f"approach 3: alpha={fit.alpha:.3f}, beta={fit.beta:.3f}, E={fit.E:.3f}")
    ax1.legend(fontsize=7)
    for p in report["approach2"]["profiles"]:
        line = ax2.scatter(p["n"], p["loss"], label=f"C={p['flops']:.2g}")
        x = np.linspace(np.log(min(p["n"])) - 0.3, np.log(max(p["n"])) + 0.3, 100)
        ax2.plot(np.exp(x), np.polyval(p["parabola"], x), color=line.get_facecolor()[0], lw=1)
        if not p["extrapolated"]:  # a vertex outside the sizes is no measurement, and would stretch the axis
            ax2.scatter([p["n_opt"]], [p["loss_opt"]], marker="*", s=120, color=line.get_facecolor()[0])
    ax2.set(xscale="log", xlabel="parameters N", ylabel="validation loss",
            title="approach 2: IsoFLOP profiles (star = vertex among the sizes)")
    if report["approach2"]["profiles"]:
        ax2.legend(fontsize=7)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path

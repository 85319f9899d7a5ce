"""Scaling-law fit (approach 3 with bootstrap, approach 2) and the resumable sweep."""

import json
import math

import numpy as np
import pytest

from lmforge.evaluation.scaling import (LawFit, bootstrap, fit_law, fit_report, format_report, isoflop_bootstrap,
                                        isoflop_exponent, isoflop_profiles)
from lmforge.utils import LmforgeError

TRUE = LawFit(E=1.8, A=300.0, B=900.0, alpha=0.40, beta=0.35, objective=0.0)


def isoflop_grid(law: LawFit, noise: float, seed: int = 0):
    """6 sizes x 5 compute budgets, D = C / 6N, losses from `law` times lognormal noise of relative size `noise`."""
    sizes = np.array([2e4, 5e4, 1e5, 2e5, 5e5, 1e6])
    flops = np.array([1e11, 3e11, 1e12, 3e12, 1e13])
    n = np.repeat(sizes, len(flops))
    d = np.tile(flops, len(sizes)) / (6 * n)
    loss = law.predict(n, d) * np.exp(np.random.default_rng(seed).normal(0, noise, len(n)))
    return n, d, loss


def test_fit_recovers_exact_constants():
    fit = fit_law(*isoflop_grid(TRUE, noise=0.0))
    for k in ("E", "A", "B", "alpha", "beta"):
        assert getattr(fit, k) == pytest.approx(getattr(TRUE, k), rel=1e-3), k


def test_fit_with_noise_and_bootstrap_interval_covers_the_truth():
    n, d, loss = isoflop_grid(TRUE, noise=0.003, seed=0)
    fit = fit_law(n, d, loss)
    assert fit.alpha == pytest.approx(TRUE.alpha, abs=0.03)
    assert fit.beta == pytest.approx(TRUE.beta, abs=0.03)
    assert fit.E == pytest.approx(TRUE.E, rel=0.05)
    ci = bootstrap(n, d, loss, fit, samples=60, seed=1, target_flops=1e15)
    for k in ("E", "A", "B", "alpha", "beta"):
        lo, hi = ci[k]
        assert lo <= getattr(TRUE, k) <= hi, (k, ci[k])
    true_n, true_d = TRUE.optimum(1e15)
    assert ci["tokens_per_param"][0] <= true_d / true_n <= ci["tokens_per_param"][1]


def test_compute_optimum_minimises_the_law_along_the_budget():
    n_opt, d_opt = TRUE.optimum(1e15)
    assert 6 * n_opt * d_opt == pytest.approx(1e15)
    best = TRUE.predict(n_opt, d_opt)
    for f in (0.8, 1.25):
        assert TRUE.predict(n_opt * f, d_opt / f) > best


def test_isoflop_parabola_finds_the_vertex_of_each_profile():
    n, d, loss = isoflop_grid(TRUE, noise=0.0)
    profiles = isoflop_profiles(n, d, loss)
    assert len(profiles) == 5
    for p in profiles:
        if p["extrapolated"]:
            continue
        n_true, _ = TRUE.optimum(p["flops"])
        assert math.log(p["n_opt"]) == pytest.approx(math.log(n_true), abs=0.35)
    # N_opt ~ C^a with a = beta / (alpha + beta); parabolas on a coarse grid of sizes bias it a little
    expo = isoflop_exponent(profiles)
    assert expo["a"] == pytest.approx(TRUE.beta / (TRUE.alpha + TRUE.beta), abs=0.06)
    # a vertex extrapolated outside its sizes does not enter the exponent
    profiles[0] = {**profiles[0], "n_opt": 1e-2, "extrapolated": True}
    assert isoflop_exponent(profiles)["profiles_used"] == expo["profiles_used"] - 1


def test_isoflop_exponent_interval_covers_the_truth_and_widens_with_noise():
    true_a = TRUE.beta / (TRUE.alpha + TRUE.beta)
    quiet = isoflop_bootstrap(*isoflop_grid(TRUE, noise=0.001, seed=3), target_flops=1e15, samples=100, seed=1)
    noisy = isoflop_bootstrap(*isoflop_grid(TRUE, noise=0.01, seed=3), target_flops=1e15, samples=100, seed=1)
    assert quiet["with_exponent"] >= 90
    lo, hi = quiet["a"]
    assert lo - 0.06 <= true_a <= hi + 0.06  # the parabolas' own bias on a coarse grid, as in the test above
    assert hi - lo < noisy["a"][1] - noisy["a"][0]
    assert quiet["n_opt_at_target"][0] < quiet["n_opt_at_target"][1]


def test_report_prints_anchors_and_is_json(tmp_path):
    report = fit_report(*isoflop_grid(TRUE, noise=0.002), target_flops=1e15, samples=20)
    text = format_report(report)
    assert "406.4" in text and "2085" in text and "0.076" in text
    lo, hi = report["approach2"]["intervals"]["a"]
    assert "resamples bracketed" in text and lo < hi
    json.dumps(report)


@pytest.mark.parametrize("n,d,loss,culprit", [
    ([1, 2, 3, 4], [1, 2, 3, 4], [3, 2, 2, 1], "at least 5 points"),
    ([1e5] * 6, [1, 2, 3, 4, 5, 6], [3, 2, 2, 1, 1, 1], "2 model sizes"),
    ([1, 2, 3, 4, 5], [1, 2, 3, 4, 5], [3, 2, -2, 1, 1], "positive"),
])
def test_unidentifiable_points_are_refused(n, d, loss, culprit):
    with pytest.raises(LmforgeError, match=culprit):
        fit_law(n, d, loss)


# --- the sweep, with a fast fake point runner (no training): resume, LR check, held-out check, CLI fit ---

from lmforge.evaluation.scaling_sweep import Point, SweepConfig, run_sweep  # noqa: E402

SMALL = dict(widths=[32, 48, 64, 96], flops=[1e11, 3e11, 1e12], holdout_width=80, holdout_flops=6e11,
             bootstrap=20, lr_multipliers=[0.5, 1.0, 2.0])


class FakeRunner:
    """Losses from TRUE at N = 24 width^2 (plus an LR penalty around multiplier 1); counts the points it trains
    and can fail on a chosen call, as a killed run would."""

    def __init__(self, fail_at: int | None = None):
        self.calls: list[str] = []
        self.fail_at = fail_at

    def __call__(self, cfg, point: Point, data, run_dir):
        if self.fail_at is not None and len(self.calls) == self.fail_at:
            raise KeyboardInterrupt
        self.calls.append(point.name)
        n = 24 * point.width ** 2
        d = point.flops / (6 * n)
        loss = float(TRUE.predict(n, d)) * (1 + 0.05 * math.log(point.lr_mult) ** 2)
        return {"n": n, "d": d, "loss": loss, "seconds": 0.0, "tokens_per_s": 1.0}


def test_sweep_resumes_point_by_point(tmp_path):
    cfg = SweepConfig(**SMALL)
    killed = FakeRunner(fail_at=5)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(cfg, tmp_path / "data", tmp_path, lr_check=True, runner=killed, log=lambda s: None)
    assert len(list((tmp_path / "points" / "grid").glob("*.json"))) == 5
    (tmp_path / "points" / "grid" / ".w32_c1.00e12_lr1.json.abc.tmp").mkdir()  # a write killed midway
    rest = FakeRunner()
    report = run_sweep(cfg, tmp_path / "data", tmp_path, lr_check=True, runner=rest, log=lambda s: None)
    assert len(rest.calls) == 12 - 5 + 1 + 2 * 2 and not set(rest.calls) & set(killed.calls)
    assert report["holdout"]["within_goal"] and report["holdout"]["relative_error"] < 1e-3
    assert report["lr_check"]["transfers"] and report["lr_check"]["steps_moved"] == 0
    assert (tmp_path / "scaling_fit.png").stat().st_size > 0
    assert not list((tmp_path / "points" / "grid").glob(".*.tmp"))
    again = FakeRunner()
    run_sweep(cfg, tmp_path / "data", tmp_path, lr_check=True, runner=again, log=lambda s: None)
    assert again.calls == []


def test_sweep_refuses_to_resume_with_other_settings(tmp_path):
    run_sweep(SweepConfig(**SMALL), tmp_path, tmp_path, holdout=False, runner=FakeRunner(), log=lambda s: None)
    with pytest.raises(LmforgeError, match="other settings"):
        run_sweep(SweepConfig(**{**SMALL, "depth": 3}), tmp_path, tmp_path, runner=FakeRunner(), log=lambda s: None)


def test_cli_fit_rewrites_constants_and_plot(tmp_path):
    from hostile import run_cli

    run_sweep(SweepConfig(**SMALL), tmp_path, tmp_path, runner=FakeRunner(), log=lambda s: None)
    (tmp_path / "scaling_fit.json").unlink()
    out = run_cli(["scaling", "fit", str(tmp_path), "--bootstrap", "10", "--target-flops", "1e16"])
    assert out.code == 0, out.stderr
    assert "Besiroglu" in out.stdout and "held-out point" in out.stdout
    report = json.loads((tmp_path / "scaling_fit.json").read_text())
    assert report["target_flops"] == 1e16 and report["fit"]["alpha"] == pytest.approx(TRUE.alpha, abs=1e-3)


def test_cli_fit_of_an_empty_folder_is_one_line(tmp_path):
    from hostile import assert_refused, run_cli

    assert_refused(run_cli(["scaling", "fit", str(tmp_path)]), "sweep_config.json")


def test_estimate_extrapolates_each_widths_measured_throughput(tmp_path):
    from test_train import write_synthetic_shards

    from lmforge.evaluation.scaling_sweep import estimate_seconds, grid_points, model_params, point_steps

    cfg = SweepConfig(**SMALL)
    data = write_synthetic_shards(tmp_path / "shards")
    runner = FakeRunner()
    speeds = {w: 1000.0 * w for w in (*cfg.widths, cfg.holdout_width)}
    est = estimate_seconds(cfg, data, tmp_path / "scratch", runner=lambda c, p, d, o: {
        **runner(c, p, d, o), "tokens_per_s": speeds[p.width]})
    assert len(runner.calls) == 5  # one probe per width (4 grid widths and the held-out one)
    expected = sum(point_steps(cfg, p, model_params(cfg, p.width, 64)) * cfg.batch_size * cfg.seq_len
                   / speeds[p.width] for p in grid_points(cfg))
    assert expected <= est["grid_s"] <= expected + 12 * est["overhead_per_point_s"] + 0.1
    assert not (tmp_path / "scratch").exists()

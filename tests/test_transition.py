"""The critical-rho fit: recovers a known rho_c, its interval covers the truth, and it says so when it cannot."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import optimize, stats

from analysis.transition import (STATUS_NO_TRANSITION, STATUS_OK, STATUS_TOO_FEW, TransitionFit, _boot_fits, _mle,
                                 fit_transition)


def noisy_logistic(rng: np.random.Generator, rhos, n_seeds: int, rho_c: float, w: float, seed_sd: float,
                   top_dim: int = 10):
    """Runs of the model in the contract, with a per-seed shift of rho_c (overdispersion across seeds)."""
    shift = rng.normal(0.0, seed_sd, n_seeds)
    R, S, K = [], [], []
    for s in range(n_seeds):
        for r in rhos:
            p = 1.0 / (1.0 + math.exp((r - rho_c - shift[s]) / w))
            R.append(float(r)), S.append(s), K.append(int(rng.binomial(top_dim, p)))
    return np.array(R), np.array(S), np.array(K)


GRID = np.round(np.linspace(0.80, 1.00, 21), 4)  # 0.01 apart


def test_recovers_a_known_rho_c_from_noisy_seeds():
    rng = np.random.default_rng(11)
    R, S, K = noisy_logistic(rng, GRID, n_seeds=6, rho_c=0.93, w=0.01, seed_sd=0.003)
    f = fit_transition(R, S, K, 10, rng=0)
    assert isinstance(f, TransitionFit)
    assert f.status == STATUS_OK, f.message
    assert abs(f.rho_c - 0.93) < 0.006
    assert f.ci_low < 0.93 < f.ci_high and f.ci_high - f.ci_low < 0.03
    assert 0.004 < f.width < 0.025
    # the model-free bracket is about complete collapse ("active" = at least one unit), so on a crossover it
    # can sit above the half-point; it must still enclose the last runs with units left
    assert f.bracket_low < f.bracket_high and f.rho_c < f.bracket_high
    assert abs(f.changepoint - 0.93) < 0.02
    assert (f.n_runs, f.n_rho, f.n_seeds) == (126, 21, 6)
    assert "rho_c = 0.93" in f.message and "seed bootstrap" in f.message


@pytest.mark.parametrize("w, seed_sd, n_seeds", [(0.01, 0.003, 4), (0.003, 0.002, 5)], ids=["smooth", "sharp"])
def test_interval_covers_the_truth_in_at_least_90_percent_of_replicates(w, seed_sd, n_seeds):
    rng = np.random.default_rng(2024)
    reps, covered, widths = 120, 0, []
    for i in range(reps):
        truth = float(rng.uniform(0.86, 0.96))
        R, S, K = noisy_logistic(rng, GRID, n_seeds, truth, w, seed_sd)
        f = fit_transition(R, S, K, 10, n_boot=100, rng=i)
        assert f.status == STATUS_OK, f.message
        covered += f.ci_low <= truth <= f.ci_high
        widths.append(f.ci_high - f.ci_low)
    assert covered / reps >= 0.90, f"coverage {covered / reps:.2f}"
    # ...and not by being uselessly wide: a tenth of the swept range at most, typically
    assert np.median(widths) < 0.02


def test_smooth_crossover_like_the_measured_digits_runs():
    """DESIGN.md section 6: two seeds, top-layer active units falling smoothly between rho 0.92 and 1.0."""
    rho = [0.80, 0.80, 0.88, 0.88, 0.92, 0.92, 0.94, 0.94, 0.96, 0.96, 0.98, 0.98, 1.00, 1.00]
    seed = [0, 1] * 7
    act = [10, 10, 10, 10, 10, 10, 7, 7, 3, 4, 0, 2, 0, 0]
    f = fit_transition(rho, seed, act, 10, rng=1)
    assert f.status == STATUS_OK, f.message
    assert 0.945 < f.rho_c < 0.97
    assert f.width > 0.005  # a crossover, not a step: w is not at its lower bound
    assert "separate perfectly" not in f.message
    assert (f.bracket_low, f.bracket_high) == (0.96, 1.00)
    assert 0.94 <= f.changepoint <= 0.97
    # two seeds: the small-sample widening is large, and said
    assert "widened" in f.message and f.ci_low < f.rho_c < f.ci_high


def test_perfect_step_bounds_w_and_widens_the_interval_to_the_gap():
    rho = np.repeat(np.round(np.arange(0.80, 1.0001, 0.01), 4), 3)
    seed = np.tile([0, 1, 2], rho.size // 3)
    act = np.where(rho <= 0.94, 10, 0)
    f = fit_transition(rho, seed, act, 10, rng=0)
    assert f.status == STATUS_OK, f.message
    assert 0.94 < f.rho_c < 0.95
    assert f.width <= 0.1 * 0.01 + 1e-12  # held at the lower bound, not driven to 0
    assert "separate perfectly" in f.message
    assert f.ci_low <= 0.94 and f.ci_high >= 0.95  # the data only say "somewhere in the gap"
    assert (f.bracket_low, f.bracket_high) == (0.94, 0.95)
    assert f.changepoint == pytest.approx(0.945)


def test_every_run_active_or_collapsed_is_no_transition():
    rho = np.repeat([0.8, 0.85, 0.9, 0.95], 2)
    seed = [0, 1] * 4
    f = fit_transition(rho, seed, np.full(8, 10), 10)
    assert f.status == STATUS_NO_TRANSITION and f.rho_c is None and f.ci_low is None
    assert "above" in f.message and "higher rho" in f.message
    g = fit_transition(rho, seed, np.zeros(8, int), 10)
    assert g.status == STATUS_NO_TRANSITION and g.rho_c is None
    assert "below" in g.message and "lower rho" in g.message


def test_fitted_rho_c_outside_the_range_is_no_transition():
    """Some units already off at the top of the range, but the half-point lies beyond it."""
    rng = np.random.default_rng(5)
    R, S, K = noisy_logistic(rng, GRID, n_seeds=4, rho_c=1.02, w=0.01, seed_sd=0.0)
    assert np.any(K < 10)  # not the trivial all-active case
    f = fit_transition(R, S, K, 10, rng=0)
    assert f.status == STATUS_NO_TRANSITION, f.message
    assert f.rho_c is None and "above the swept range" in f.message
    R, S, K = noisy_logistic(rng, GRID, n_seeds=4, rho_c=0.78, w=0.01, seed_sd=0.0)
    f = fit_transition(R, S, K, 10, rng=0)
    assert f.status == STATUS_NO_TRANSITION and "below the swept range" in f.message


def test_fewer_than_three_rho_values_is_too_few_points():
    f = fit_transition([0.9, 0.9, 0.95, 0.95], [0, 1, 0, 1], [10, 9, 1, 0], 10)
    assert f.status == STATUS_TOO_FEW and f.rho_c is None
    assert "at least 3" in f.message and f.n_rho == 2 and f.n_runs == 4
    f = fit_transition([], [], [], 10)
    assert f.status == STATUS_TOO_FEW and f.n_runs == 0


def test_one_seed_uses_a_parametric_bootstrap_and_says_what_it_leaves_out():
    rng = np.random.default_rng(3)
    R, S, K = noisy_logistic(rng, GRID, n_seeds=1, rho_c=0.92, w=0.01, seed_sd=0.0)
    f = fit_transition(R, S, K, 10, rng=0)
    assert f.status == STATUS_OK and f.ci_low < f.rho_c < f.ci_high
    assert "seed-to-seed variation is NOT in this interval" in f.message


def test_reproducible_with_the_same_rng_and_top_dim_per_run():
    rng = np.random.default_rng(8)
    R, S, K = noisy_logistic(rng, GRID, n_seeds=3, rho_c=0.9, w=0.01, seed_sd=0.002, top_dim=20)
    a = fit_transition(R, S, K, np.full(R.size, 20), rng=42)
    b = fit_transition(list(R), list(S), list(K), 20, rng=np.random.default_rng(42))
    assert (a.rho_c, a.ci_low, a.ci_high) == (b.rho_c, b.ci_low, b.ci_high)
    c = fit_transition(R, S, K, 20, n_boot=0)
    assert c.status == STATUS_OK and c.ci_low is None and c.rho_c == pytest.approx(a.rho_c)


def test_mle_matches_an_independent_scipy_binomial_fit():
    """The fit (TNC in standardised coordinates) and the vectorised bootstrap solver both reach the maximum
    found by Nelder-Mead on scipy.stats' binomial log-pmf."""
    rng = np.random.default_rng(9)
    R, S, K = noisy_logistic(rng, GRID, n_seeds=3, rho_c=0.915, w=0.012, seed_sd=0.003)

    def negll(theta):
        rc, logw = theta
        p = 1.0 / (1.0 + np.exp((R - rc) / math.exp(logw)))
        return -np.sum(stats.binom.logpmf(K, 10, np.clip(p, 1e-300, 1 - 1e-16)))

    ref = optimize.minimize(negll, [0.9, math.log(0.02)], method="Nelder-Mead",
                            options={"xatol": 1e-10, "fatol": 1e-12, "maxiter": 5000})
    f = fit_transition(R, S, K, 10, n_boot=0)
    assert f.rho_c == pytest.approx(ref.x[0], abs=1e-5)
    assert f.width == pytest.approx(math.exp(ref.x[1]), rel=1e-3)
    x = (R - 0.8) / 0.2
    bounds = ((-1.0, 2.0), (math.log(0.005), 0.0))
    xc, s = _mle(x, K, np.full(K.size, 10), bounds, 0.5)
    xb = _boot_fits(x, K, np.full(K.size, 10), np.ones((1, K.size)), (0.3, math.log(0.2)), bounds)
    assert xb[0] == pytest.approx(xc, abs=1e-6)


@pytest.mark.parametrize("kwargs, needle", [
    (dict(rho=[0.9, 0.95], seed=[0], active_units=[1, 2], top_dim=10), "seed has 1 entries"),
    (dict(rho=[0.9, 0.95, 1.0], seed=[0, 0, 0], active_units=[1, 11, 0], top_dim=10), "run 1 has 11 of 10"),
    (dict(rho=[0.9, 0.95, 1.0], seed=[0, 0, 0], active_units=[1, None, 0], top_dim=10), "drop those runs"),
    (dict(rho=[0.9, float("nan"), 1.0], seed=[0, 0, 0], active_units=[1, 1, 0], top_dim=10), "rho contains NaN"),
    (dict(rho=[0.9, 0.95, 1.0], seed=[0, 0, 0], active_units=[1, 1.5, 0], top_dim=10), "whole numbers"),
    (dict(rho=[0.9, 0.95, 1.0], seed=[0, 0, 0], active_units=[1, 1, 0], top_dim=0), "top_dim must be"),
])
def test_bad_input_is_named(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        fit_transition(**kwargs)


def test_bad_level_and_n_boot_are_named():
    with pytest.raises(ValueError, match="level"):
        fit_transition([0.8, 0.9, 1.0], [0, 0, 0], [10, 5, 0], 10, level=95)
    with pytest.raises(ValueError, match="n_boot"):
        fit_transition([0.8, 0.9, 1.0], [0, 0, 0], [10, 5, 0], 10, n_boot=-1)

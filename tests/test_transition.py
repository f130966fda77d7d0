"""The critical-rho fit: recovers a known rho_c, its interval covers the truth, and it says so when it cannot."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import optimize, stats

from analysis.intervals import Undetermined, percentile_interval, small_sample_factor, widen
from analysis.testing.synthetic import noisy_active_units, noisy_runs, seed_offset
from analysis.transition import (STATUS_NO_TRANSITION, STATUS_OK, STATUS_TOO_FEW, Caveat, NoTransition, TransitionFit,
                                 _mle, _weighted_mle, fit_transition)

GRID = np.round(np.linspace(0.80, 1.00, 21), 4)  # 0.01 apart


def test_recovers_a_known_rho_c_from_noisy_seeds():
    R, S, K = noisy_runs(GRID, 6, rho_c=0.93, width=0.01, seed_sd=0.003, salt=11)
    f = fit_transition(R, S, K, 10, rng=0)
    assert isinstance(f, TransitionFit)
    assert f.status == STATUS_OK, f.message
    assert abs(f.rho_c - 0.93) < 0.006
    # (whether the interval covers the truth is a rate, measured in the coverage test below)
    assert f.ci_low < f.rho_c < f.ci_high and f.ci_high - f.ci_low < 0.03 and 0.92 < f.ci_low < f.ci_high < 0.94
    assert f.interval_undetermined is None and f.caveats == ()
    assert 0.004 < f.width < 0.025
    # the model-free bracket is about complete collapse ("active" = at least one unit), so on a crossover it
    # can sit above the half-point; it must still enclose the last runs with units left
    assert f.bracket_low < f.bracket_high and f.rho_c < f.bracket_high
    assert abs(f.changepoint - 0.93) < 0.02
    assert (f.n_runs, f.n_rho, f.n_seeds) == (126, 21, 6)
    assert "rho_c = 0.93" in f.message and "seed bootstrap" in f.message


@pytest.mark.slow
@pytest.mark.parametrize("w, seed_sd, n_seeds", [(0.01, 0.003, 4), (0.003, 0.002, 5)], ids=["smooth", "sharp"])
def test_interval_coverage_is_not_below_the_nominal_95_percent(w, seed_sd, n_seeds):
    """A real coverage estimate: 3 independent batches of 80 data sets (each with its own truth, seed offsets and
    counts). The test fails when the coverage is significantly below 95% (one-sided, 1%): the 99% Clopper-Pearson
    interval of the estimate must reach 0.95. It also fails when no single batch reaches 88%."""
    covered, widths, per_batch = 0, [], []
    for batch in range(3):
        truths = np.random.default_rng([batch, 17]).uniform(0.86, 0.96, size=80)
        hits = 0
        for i, truth in enumerate(truths):
            R, S, K = noisy_runs(GRID, n_seeds, rho_c=float(truth), width=w, seed_sd=seed_sd, salt=1000 * batch + i)
            f = fit_transition(R, S, K, 10, n_boot=100, rng=[batch, i])
            assert f.status == STATUS_OK and f.ci_low is not None, f.message
            hits += f.ci_low <= truth <= f.ci_high
            widths.append(f.ci_high - f.ci_low)
        per_batch.append(hits / truths.size)
        covered += hits
    n = 3 * 80
    upper = stats.binomtest(covered, n).proportion_ci(confidence_level=0.98).high  # one-sided 99%
    assert upper >= 0.95, f"coverage {covered / n:.3f} (batches {per_batch}), 99% upper bound {upper:.3f}"
    assert max(per_batch) >= 0.88, per_batch
    # ...and not by being uselessly wide: a tenth of the swept range at most, typically
    assert np.median(widths) < 0.02


def test_smooth_crossover_like_the_measured_digits_runs():
    """The demo model measured on digits (two seeds): top-layer active units fall smoothly between rho 0.92 and 1."""
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
    # two seeds cannot estimate the seed-to-seed spread: a t-widened interval would be x9.2 the bootstrap's
    # (rho_c -0.027 / +0.028 here); the fit says "not determined" and why instead
    assert f.ci_low is None and f.ci_high is None and f.interval_undetermined is Undetermined.TOO_FEW_SEEDS
    assert "interval not determined: fewer than 3 seeds" in f.message


def test_perfect_step_bounds_w_and_widens_the_interval_to_the_gap():
    rho = np.repeat(np.round(np.arange(0.80, 1.0001, 0.01), 4), 3)
    seed = np.tile([0, 1, 2], rho.size // 3)
    act = np.where(rho <= 0.94, 10, 0)
    f = fit_transition(rho, seed, act, 10, rng=0)
    assert f.status == STATUS_OK, f.message
    assert 0.94 < f.rho_c < 0.95
    assert f.width <= 0.1 * 0.01 + 1e-12  # held at the lower bound, not driven to 0
    assert "separate perfectly" in f.message and Caveat.SEPARATION in f.caveats
    assert f.ci_low <= 0.94 and f.ci_high >= 0.95  # the data only say "somewhere in the gap"
    assert (f.bracket_low, f.bracket_high) == (0.94, 0.95)
    assert f.changepoint == pytest.approx(0.945)


def test_every_run_active_or_collapsed_is_no_transition():
    rho = np.repeat([0.8, 0.85, 0.9, 0.95], 2)
    seed = [0, 1] * 4
    f = fit_transition(rho, seed, np.full(8, 10), 10)
    assert f.status == STATUS_NO_TRANSITION and f.rho_c is None and f.ci_low is None
    assert f.no_transition is NoTransition.ALL_ACTIVE and f.beyond == "above"
    assert "above" in f.message and "higher rho" in f.message
    g = fit_transition(rho, seed, np.zeros(8, int), 10)
    assert g.status == STATUS_NO_TRANSITION and g.rho_c is None and g.beyond == "below"
    assert "below" in g.message and "lower rho" in g.message


def test_fitted_rho_c_outside_the_range_is_no_transition():
    """Some units already off at the top of the range, but the half-point lies beyond it."""
    R, S, K = noisy_runs(GRID, 4, rho_c=1.02, width=0.01, seed_sd=0.0, salt=5)
    assert np.any(K < 10)  # not the trivial all-active case
    f = fit_transition(R, S, K, 10, rng=0)
    assert f.status == STATUS_NO_TRANSITION, f.message
    assert f.rho_c is None and f.no_transition is NoTransition.FITTED_ABOVE and "above the swept range" in f.message
    R, S, K = noisy_runs(GRID, 4, rho_c=0.78, width=0.01, seed_sd=0.0, salt=6)
    f = fit_transition(R, S, K, 10, rng=0)
    assert f.status == STATUS_NO_TRANSITION and "below the swept range" in f.message


def test_fewer_than_three_rho_values_is_too_few_points():
    f = fit_transition([0.9, 0.9, 0.95, 0.95], [0, 1, 0, 1], [10, 9, 1, 0], 10)
    assert f.status == STATUS_TOO_FEW and f.rho_c is None
    assert "at least 3" in f.message and f.n_rho == 2 and f.n_runs == 4
    f = fit_transition([], [], [], 10)
    assert f.status == STATUS_TOO_FEW and f.n_runs == 0


def test_interval_the_resamples_cannot_bound_is_not_determined_never_a_huge_number():
    """Seed 2 never collapses inside the range: every resample drawing it three times (1 in 27 > 2.5%) has no
    transition, so the upper end of the percentile interval is unbounded. The fit says "not determined" and why;
    no number stands in for infinity."""
    R, S, K = noisy_runs(GRID, 3, rho_c=0.93, width=0.005, seed_sd=0.0, salt=3)
    K = np.where(S == 2, 10, K)
    f = fit_transition(R, S, K, 10, rng=0)
    assert f.status == STATUS_OK and 0.9 < f.rho_c < 1.0
    assert f.interval_undetermined is Undetermined.UNBOUNDED_RESAMPLES and f.ci_low is None and f.ci_high is None
    assert "interval not determined: too many seed resamples put rho_c outside the swept range" in f.message
    assert "inf" not in f.message and "e+" not in f.message


def test_crossover_broader_than_the_range_has_no_interval():
    """Active units fall by 1 over the whole sweep: w sits at its upper bound, rho_c is an extrapolation."""
    R = np.repeat(GRID, 3)
    S = np.tile([0, 1, 2], GRID.size)
    K = np.where(R < 0.9, 6, 5)
    f = fit_transition(R, S, K, 10, rng=0)
    if f.status == STATUS_OK:
        assert Caveat.BROADER_THAN_RANGE in f.caveats and f.interval_undetermined is Undetermined.WIDTH_AT_LIMIT
        assert f.ci_low is None and "at least as broad as the swept range" in f.message
    else:  # the half-point may also be fitted outside the range: then there is no rho_c at all
        assert f.status == STATUS_NO_TRANSITION


def test_one_seed_gives_rho_c_without_an_interval():
    R, S, K = noisy_runs(GRID, 1, rho_c=0.92, width=0.01, seed_sd=0.0, salt=3)
    f = fit_transition(R, S, K, 10, rng=0)
    assert f.status == STATUS_OK and abs(f.rho_c - 0.92) < 0.01
    assert f.ci_low is None and f.interval_undetermined is Undetermined.TOO_FEW_SEEDS


def test_percentile_interval_counts_unbounded_and_missing_replicates_against_the_ends():
    finite = np.linspace(0.0, 1.0, 200)
    assert percentile_interval(finite, 0.9) == pytest.approx((0.05, 0.95), abs=0.01)
    few_inf = np.concatenate([finite[:196], [np.inf] * 4])  # 2% unbounded above: inside the 5% tail of 90%
    assert np.isfinite(percentile_interval(few_inf, 0.9)).all()
    many_inf = np.concatenate([finite[:180], [np.inf] * 20])  # 10%: the upper end is not bounded
    lo, hi = percentile_interval(many_inf, 0.9)
    assert np.isfinite(lo) and hi == np.inf
    nan = np.concatenate([finite[:180], [np.nan] * 20])  # missing values count against both ends
    assert percentile_interval(nan, 0.9) == (-np.inf, np.inf)
    # the one small-sample widening: t with G - 1 degrees of freedom, about the estimate
    assert small_sample_factor(8, 0.95) == pytest.approx(1.3, abs=0.05)
    assert small_sample_factor(3, 0.95) == pytest.approx(2.7, abs=0.05)
    assert widen(0.9, 0.89, 0.92, 2.0) == pytest.approx((0.88, 0.94))


def test_generator_shifts_each_seed_and_repeats_a_point_exactly():
    """The synthetic model: a seed's offset is the same at every rho and differs between seeds; a point drawn
    twice gives the same count (a deterministic trainer); several layers drawn together follow their rho_c."""
    offsets = [seed_offset(s, 0.002) for s in range(4)]
    assert np.ptp(offsets) > 0.001 and offsets == [seed_offset(s, 0.002) for s in range(4)]
    assert noisy_active_units(0.93, 1, 10, rho_c=0.93, salt=7) == noisy_active_units(0.93, 1, 10, rho_c=0.93, salt=7)
    layers = noisy_active_units(0.9, 0, 40, rho_c=np.array([0.5, 0.9, 1.3]), width=0.01, seed_sd=0.0)
    assert layers[0] == 0 and 5 < layers[1] < 35 and layers[2] == 40


def test_reproducible_with_the_same_rng_and_top_dim_per_run():
    R, S, K = noisy_runs(GRID, 3, 20, rho_c=0.9, width=0.01, seed_sd=0.002, salt=8)
    a = fit_transition(R, S, K, np.full(R.size, 20), rng=42)
    b = fit_transition(list(R), list(S), list(K), 20, rng=np.random.default_rng(42))
    assert (a.rho_c, a.ci_low, a.ci_high) == (b.rho_c, b.ci_low, b.ci_high)
    c = fit_transition(R, S, K, 20, n_boot=0)
    assert c.status == STATUS_OK and c.ci_low is None and c.rho_c == pytest.approx(a.rho_c)
    assert c.interval_undetermined is Undetermined.NOT_COMPUTED


def test_mle_matches_an_independent_scipy_binomial_fit():
    """The fit (the vectorised Fisher scoring in standardised coordinates, from the point estimate's starts and from
    another) reaches the maximum found by Nelder-Mead on scipy.stats' binomial log-pmf."""
    R, S, K = noisy_runs(GRID, 3, rho_c=0.915, width=0.012, seed_sd=0.003, salt=9)

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
    xb, sb = _weighted_mle(x, K, np.full(K.size, 10), np.ones((1, K.size)), (0.3, math.log(0.2)), bounds)
    assert xb[0] == pytest.approx(xc, abs=1e-6) and sb[0] == pytest.approx(s, abs=1e-4)
    # the resampler behind the interval refits the same maximum for the all-seeds-once resample
    rho_c, log_w = f.resampler.refit(np.ones((1, 3), dtype=int))
    assert rho_c[0] == pytest.approx(f.rho_c, abs=1e-6) and math.exp(log_w[0]) == pytest.approx(f.width, rel=1e-4)


def _agreement_sets() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(rho, active units of 10) of data sets from easy to hard for the likelihood's maximiser."""
    steps = np.repeat(np.round(np.arange(0.80, 1.0001, 0.01), 4), 3)  # 3 seeds, 0.01 apart
    step = np.where(steps <= 0.94, 10, 0)
    near = step.copy()
    near[np.flatnonzero(steps == 0.95)[0]] = 1  # one unit left just past the step: separated but for one run
    leak = np.where(steps <= 0.94, 10, 0)
    leak[steps == 0.94], leak[steps == 0.95] = 9, 1  # a step with a little spill: w just above its floor
    broad = np.repeat(GRID, 3)
    edge = np.full(steps.size, 10)
    edge[np.flatnonzero(steps == 1.0)[0]] = 9  # one unit lost at the top: the half-point lies beyond the range
    sets = {
        "smooth": noisy_runs(GRID, 6, rho_c=0.93, width=0.01, seed_sd=0.003, salt=11),
        "sharp": noisy_runs(GRID, 5, rho_c=0.913, width=0.003, seed_sd=0.002, salt=4),
        "near-separated": (steps, None, near),
        "leaky step": (steps, None, leak),
        "perfect step": (steps, None, step),
        "broader than the range": (broad, None, np.where(broad < 0.9, 6, 5)),
        "one unit lost at the top": (steps, None, edge),
        "few points": (np.array([0.80, 0.80, 0.88, 0.88, 0.92, 0.92, 0.94, 0.94, 0.96, 0.96, 0.98, 0.98, 1.0, 1.0]),
                       None, np.array([10, 10, 10, 10, 10, 10, 7, 7, 3, 4, 0, 2, 0, 0])),
    }
    return {name: (r, k) for name, (r, _, k) in sets.items()}


AGREEMENT_SETS = _agreement_sets()


def _standardised(name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple]:
    """(x, k, n, bounds) of an agreement set, as fit_transition standardises them."""
    rho, k = AGREEMENT_SETS[name]
    levels = np.unique(rho)
    x = (rho - levels[0]) / (levels[-1] - levels[0])
    bounds = ((-1.0, 2.0), (math.log(0.1 * np.diff(levels).min() / np.ptp(levels)), 0.0))
    return x, k, np.full(k.size, 10), bounds


def _binomial_loglik(x, k, n, xc, s) -> float:
    """The log-likelihood by scipy.stats, independent of analysis.transition's own."""
    p = 1.0 / (1.0 + np.exp(np.clip((x - xc) / math.exp(s), -700, 700)))
    return float(np.sum(stats.binom.logpmf(k, n, np.clip(p, 1e-300, 1 - 1e-16))))


@pytest.mark.parametrize("name", list(AGREEMENT_SETS))
def test_point_estimate_and_bootstrap_fitter_agree_on_the_original_sample(name):
    """The bootstrap's fitter given the original sample (every seed drawn once) from a neutral start reaches the
    maximum the point estimate reaches: the same likelihood, the same (x_c, log w) -- also where that maximum lies
    on the box (w at its floor for a step, at its ceiling for a crossover broader than the range)."""
    x, k, n, bounds = _standardised(name)
    xc, s = _mle(x, k, n, bounds, 0.5)
    xb, sb = _weighted_mle(x, k, n, np.ones((1, k.size)), (0.5, math.log(0.05)), bounds)
    assert _binomial_loglik(x, k, n, xb[0], sb[0]) == pytest.approx(_binomial_loglik(x, k, n, xc, s), abs=1e-7)
    assert xb[0] == pytest.approx(xc, abs=1e-6) and sb[0] == pytest.approx(s, abs=1e-5)


@pytest.mark.parametrize("name", list(AGREEMENT_SETS))
def test_the_optimiser_reaches_the_maximum_from_every_corner_of_its_box(name):
    """From the box's corners (w at its floor or ceiling, rho_c a span beyond either end) the optimiser still reaches
    the maximum: far from the runs the information vanishes, and a step taken blindly, or one that leaves a face of
    the box the optimum is not on, would stop short of it."""
    x, k, n, bounds = _standardised(name)
    (xlo, xhi), (slo, shi) = bounds
    xc, s = _mle(x, k, n, bounds, 0.5)
    starts = (np.array([xlo, xlo, xhi, xhi]), np.array([slo, shi, slo, shi]))
    xs, ss = _weighted_mle(x, k, n, np.ones((4, k.size)), starts, bounds)
    best = _binomial_loglik(x, k, n, xc, s)
    for xc_i, s_i in zip(xs, ss):
        assert _binomial_loglik(x, k, n, xc_i, s_i) == pytest.approx(best, abs=1e-6)


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

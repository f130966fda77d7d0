"""The interval machinery every estimate in the analysis shares: one seed bootstrap, one small-sample widening,
one interval for a difference, and "not determined" as data.

Why one module: rho_c of a configuration, the ratio of transition widths between latent sizes and the differences
of rho_c between latent sizes, datasets and training budgets all rest on the same two ideas -- resample whole seeds
(runs of one seed share initialisation and data order, so they are not independent) and widen the result for the
few seeds a sweep has -- and each idea is written once here.

* ``seed_bootstrap`` draws the seed resamples with ``scipy.stats.bootstrap`` (its resampling, batching and random
  generator). The statistic sees the resample as multiplicities of the seeds (replicates x seeds), which is what a
  weighted fit needs: ``analysis/transition.py`` solves every replicate at once with the vectorised Fisher scoring
  that also makes its point estimate (hundreds of replicates in a fraction of a second), and
  ``analysis/compare.py`` takes each replicate's width from the same refits for the ratio of widths.
* The interval ends are order statistics of the replicates (``percentile_interval``), not scipy's interpolated
  percentiles: a replicate the data cannot bound (rho_c beyond the search range, a width at its limit) is +-inf,
  and one with no value at all is NaN; interpolating across them gives NaN or 1e12-sized numbers. Here an
  unbounded replicate counts against the end it could lie beyond, a NaN against both, and an end that is not a
  finite number makes the interval ``Undetermined`` -- printed as "not determined" with the reason.
* ``small_sample_factor`` widens a seed-bootstrap interval for G seeds; ``widen`` applies it about the estimate.
  Below ``MIN_SEEDS`` seeds the factor is no longer a correction but the whole interval (x9.2 at two seeds: two
  seeds whose rho_c differ by 0.01 give rho_c +- 0.046), so no interval is given there.
"""

from __future__ import annotations

import enum
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

# Fewest seeds a seed-level interval is given for (see the module docstring).
MIN_SEEDS = 3


class Undetermined(enum.Enum):
    """Why an interval (or a verdict built on one) is not given. Text for each: ``UNDETERMINED_TEXT``."""

    NOT_COMPUTED = "not_computed"  # no resamples were asked for (n_boot = 0 / compare_boot = 0)
    TOO_FEW_SEEDS = "too_few_seeds"  # fewer than MIN_SEEDS seeds
    UNBOUNDED_RESAMPLES = "unbounded_resamples"  # too many resamples put rho_c beyond the search range
    WIDTH_AT_LIMIT = "width_at_limit"  # the fitted w (or too many resampled w) sit at a bound of the fit
    NO_FIT = "no_fit"  # an estimate the interval is about is missing (no transition located)


UNDETERMINED_TEXT: dict[Undetermined, str] = {
    Undetermined.NOT_COMPUTED: "no resamples were drawn",
    Undetermined.TOO_FEW_SEEDS: f"fewer than {MIN_SEEDS} seeds: the seed-to-seed spread cannot be estimated "
                                f"(run at least {MIN_SEEDS} seeds)",
    Undetermined.UNBOUNDED_RESAMPLES: "too many seed resamples put rho_c outside the swept range (no transition, or "
                                      "at the search bound): add seeds or widen the range",
    Undetermined.WIDTH_AT_LIMIT: "the width w sits at a bound of the fit (a step sharper than the rho spacing, or a "
                                 "crossover broader than the range) in the fit or in too many resamples",
    Undetermined.NO_FIT: "a transition is not located on one side",
}


# The same reasons in a few words, for table cells ("not determined (<short>)").
UNDETERMINED_SHORT: dict[Undetermined, str] = {
    Undetermined.NOT_COMPUTED: "no resamples",
    Undetermined.TOO_FEW_SEEDS: f"< {MIN_SEEDS} seeds",
    Undetermined.UNBOUNDED_RESAMPLES: "resamples unbounded",
    Undetermined.WIDTH_AT_LIMIT: "w at its limit",
    Undetermined.NO_FIT: "no fit",
}


@dataclass(frozen=True)
class Interval:
    """An interval that is either two finite numbers or not determined, with the reason."""

    low: float | None
    high: float | None
    undetermined: Undetermined | None = None

    @property
    def determined(self) -> bool:
        return self.undetermined is None

    @classmethod
    def not_determined(cls, why: Undetermined) -> Interval:
        return cls(None, None, why)


def small_sample_factor(n_seeds: int, level: float) -> float:
    """Widening of a seed-bootstrap interval for G seeds: sqrt(G / (G - 1)) * t_{G-1} / z.

    The bootstrap variance of a statistic averaged over G resampled clusters is (G - 1) / G of the unbiased
    estimate, and with G clusters the standardised error follows (roughly) Student's t with G - 1 degrees of
    freedom, not the normal. For 8 seeds the factor is 1.3; for 3 seeds 2.7; it tends to 1 as G grows.
    """
    if n_seeds < 2:
        return 1.0
    q = 0.5 + level / 2.0
    return math.sqrt(n_seeds / (n_seeds - 1)) * float(stats.t.ppf(q, n_seeds - 1) / stats.norm.ppf(q))


def widen(estimate: float, low: float, high: float, factor: float) -> tuple[float, float]:
    """Stretch the distances of [low, high] from ``estimate`` by ``factor`` (an end on the far side stays put)."""
    lo = estimate - factor * (estimate - low) if low <= estimate else low
    hi = estimate + factor * (high - estimate) if high >= estimate else high
    return lo, hi


def percentile_interval(replicates: np.ndarray, level: float) -> tuple[float, float]:
    """Order-statistic percentile interval; +-inf replicates count against their side, NaN against both.

    Returns non-finite ends where the tail holds unbounded or missing replicates (see the module docstring).
    """
    v = np.asarray(replicates, dtype=np.float64)
    alpha = 1.0 - level
    low_side = np.sort(np.where(np.isnan(v), -np.inf, v))
    high_side = np.sort(np.where(np.isnan(v), np.inf, v))
    n = v.size
    return (float(low_side[int(math.floor((alpha / 2.0) * (n - 1)))]),
            float(high_side[int(math.ceil((1.0 - alpha / 2.0) * (n - 1)))]))


def seed_bootstrap(statistic: Callable[..., np.ndarray], seed_counts: Sequence[int], *, n_resamples: int,
                   rng: np.random.Generator) -> np.ndarray:
    """Replicates of ``statistic`` over resamples of whole seeds, one independent resample per sample.

    ``seed_counts``: the number of seeds of each sample (one sample: a configuration; two: a comparison of two
    configurations with independent seeds). ``statistic(*multiplicities)`` gets, per sample, an integer array
    (replicates x seeds) of how often each seed was drawn, and returns one value per replicate (NaN/+-inf allowed).
    """
    def resampled(*draws: np.ndarray, axis: int = -1) -> np.ndarray:
        mults = []
        for d, g in zip(draws, seed_counts):
            d = np.moveaxis(np.asarray(d), axis, -1)
            flat = d.reshape(-1, g)
            mults.append(np.stack([(flat == s).sum(axis=1) for s in range(g)], axis=1))
        return np.asarray(statistic(*mults), dtype=np.float64).reshape(np.moveaxis(draws[0], axis, -1).shape[:-1])

    with warnings.catch_warnings():
        # scipy computes a standard error and a percentile interval of its own on the replicates; with unbounded
        # or missing replicates those warn. The interval used is percentile_interval's.
        warnings.simplefilter("ignore")
        res = stats.bootstrap(tuple(np.arange(g) for g in seed_counts), resampled, n_resamples=int(n_resamples),
                              vectorized=True, paired=False, method="percentile", rng=rng)
    return np.asarray(res.bootstrap_distribution, dtype=np.float64)


def difference_interval(a: float, a_lo: float, a_hi: float, b: float, b_lo: float, b_hi: float
                        ) -> tuple[float, float]:
    """Interval for b - a from two independent (possibly asymmetric) intervals: the MOVER method.

    Why: the rho_c intervals from fit_transition already carry the seed bootstrap, small-sample widening and
    grid-resolution floor; MOVER (Zou & Donner 2008) combines them into an interval for the difference without
    refitting: L = d - sqrt((b - b_lo)^2 + (a_hi - a)^2), U = d + sqrt((b_hi - b)^2 + (a - a_lo)^2).
    """
    d = b - a
    return (d - math.sqrt((b - b_lo) ** 2 + (a_hi - a) ** 2), d + math.sqrt((b_hi - b) ** 2 + (a - a_lo) ** 2))

"""The KL onset: rho_c as the point where the top layer's KL leaves zero (numpy + scipy only).

Why a second estimator next to the active-unit fit (``analysis/transition.py``): the active-unit criterion
thresholds the posterior-mean variance at 0.01 (Burda et al. 2016). Where that variance vanishes continuously at
rho_c -- a second-order transition, as in the linear-Gaussian model whose rho_c is known exactly
(``analysis/closed_form.py``) -- the units stop counting as active *before* rho_c, so the active-unit fit sits
below it: by 0.007 to 0.024 in rho on the calibration model (docs/calibration.md). The KL itself vanishes at
rho_c, linearly in |rho - rho_c|, so a fit of the KL to a hinge locates rho_c without that bias:

    top_kl(rho) = b + a t,   t = (rho_c - rho)_+  (units active below rho_c; (rho - rho_c)_+ above), a > 0,

least squares over the runs within ``ONSET_WINDOW`` of rho_c (first located with every run): the floor b takes
the small KL that training noise leaves in a collapsed layer. The window is short so that the curvature of the
KL near rho_c costs little: on the exact optimum of the calibration model sampled every 0.025 the estimate is
within 0.004 of the closed form (a quadratic term would remove that, but on noisy runs it trades the hinge for a
curve and the fit becomes unstable). rho_c is profiled on a grid of the swept range (``ONSET_GRID`` points); the
interval is the seed bootstrap of ``analysis.intervals``, widened for few seeds like the active-unit fit's.

When it does not apply: a transition that is not continuous in the KL (a jump), or a crossover broader than
the window (deep networks on real data, where units leave one by one). There the active-unit fit with its width
is the right description; this estimator is meant for models with a sharp, continuous onset.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from analysis.intervals import (MIN_SEEDS, UNDETERMINED_TEXT, Interval, Undetermined, percentile_interval,
                                seed_bootstrap, small_sample_factor, widen)
from analysis.transition import ACTIVE_ABOVE, ACTIVE_BELOW, DIRECTIONS

ONSET_WINDOW = 0.075  # runs within this distance in rho of rho_c enter the fit
ONSET_GRID = 2001  # candidate rho_c values over the swept range
MIN_ACTIVE_LEVELS = 2  # distinct rho on the active side of a candidate
# The fitted KL must rise over the window's active side by at least this fraction of the largest KL in the window:
# a flat KL (no onset in the window) fits any hinge position with a slope of ~0.
MIN_RISE_FRACTION = 0.1


@dataclass(frozen=True)
class OnsetFit:
    """The KL onset of one configuration: rho_c with its interval, or why there is none (``message``)."""

    rho_c: float | None
    ci_low: float | None
    ci_high: float | None
    interval_undetermined: Undetermined | None
    slope: float | None  # a: KL per unit of |rho - rho_c|
    n_runs: int  # runs inside the window
    direction: str
    message: str


def _design(x: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """(G, R, 2): [1, t] of every run for every candidate, t = (candidate - x)_+."""
    t = np.clip(grid[:, None] - x[None, :], 0.0, None)
    return np.stack([np.ones_like(t), t], axis=-1)


def _profile(x: np.ndarray, y: np.ndarray, weights: np.ndarray, grid: np.ndarray
             ) -> tuple[np.ndarray, np.ndarray]:
    """(best candidate index, the coefficients (b, a) there) per replicate (weights: replicates x runs) by weighted
    least squares of the hinge at every candidate; candidates with fewer than MIN_ACTIVE_LEVELS active-side rho or
    a slope a <= 0 are skipped (index -1 when none is left). Every sum over runs is one matrix product
    (replicates x runs) @ (runs x candidates), and the 2 x 2 normal equations are solved in closed form."""
    d = _design(x, grid)  # (G, R, 2)
    s00, s01, s11 = (weights @ (d[..., i] * d[..., j]).T for i, j in ((0, 0), (0, 1), (1, 1)))
    r0, r1 = (weights @ (d[..., i] * y).T for i in (0, 1))
    det = s00 * s11 - s01**2
    ok = det > 1e-12 * np.maximum(s00 * s11, 1e-300)
    det = np.where(ok, det, 1.0)
    b = (s11 * r0 - s01 * r1) / det
    a = (s00 * r1 - s01 * r0) / det
    sse = (weights @ (y * y))[:, None] - b * r0 - a * r1
    active_levels = (grid[:, None] > np.unique(x)[None, :]).sum(1)
    sse = np.where(ok & (a > 0) & (active_levels >= MIN_ACTIVE_LEVELS)[None, :], sse, np.inf)
    best = np.argmin(sse, axis=1)
    rows = np.arange(weights.shape[0])
    best = np.where(np.isfinite(sse[rows, best]), best, -1)
    return best, np.stack([b[rows, best], a[rows, best]], axis=1)


def fit_kl_onset(rho: Any, seed: Any, top_kl: Any, *, direction: str = ACTIVE_BELOW, level: float = 0.95,
                 n_boot: int = 500, rng: Any = None, window: float = ONSET_WINDOW) -> OnsetFit:
    """The KL onset of one configuration's runs (one entry per run: its rho, seed and final top-layer KL)."""
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}; got {direction!r}")
    r = np.asarray(rho, dtype=np.float64)
    y = np.asarray(top_kl, dtype=np.float64)
    if r.shape != y.shape or r.ndim != 1 or not (np.all(np.isfinite(r)) and np.all(np.isfinite(y))):
        raise ValueError("rho and top_kl must be finite, one entry per run")
    _, seed_idx = np.unique(np.asarray(seed), return_inverse=True)
    n_seeds = int(np.unique(seed_idx).size)
    gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    sign = -1.0 if direction == ACTIVE_ABOVE else 1.0
    x = sign * r  # units active below rho_c in x
    none = dict(rho_c=None, ci_low=None, ci_high=None, interval_undetermined=Undetermined.NO_FIT, slope=None,
                direction=direction)
    if np.unique(x).size < MIN_ACTIVE_LEVELS + 1:
        return OnsetFit(**none, n_runs=int(r.size), message=f"fewer than {MIN_ACTIVE_LEVELS + 1} rho values")
    grid = np.linspace(x.min(), x.max(), ONSET_GRID)
    best, _ = _profile(x, y, np.ones((1, x.size)), grid)
    if best[0] < 0:
        return OnsetFit(**none, n_runs=int(r.size), message="no KL onset located: the KL does not rise on either "
                                                            "side of any rho in the range")
    first = grid[best[0]]
    inside = np.abs(x - first) <= window
    xw, yw, sw = x[inside], y[inside], seed_idx[inside]
    if np.unique(xw).size < MIN_ACTIVE_LEVELS + 1:
        return OnsetFit(**none, n_runs=int(inside.sum()),
                        message=f"fewer than {MIN_ACTIVE_LEVELS + 1} rho values within {window:g} of the onset")
    grid = np.linspace(xw.min(), xw.max(), ONSET_GRID)
    best, coef = _profile(xw, yw, np.ones((1, xw.size)), grid)
    est, a = float(grid[best[0]]), float(coef[0, 1])
    if best[0] < 0 or a * (est - xw.min()) <= MIN_RISE_FRACTION * np.abs(yw).max() or best[0] == grid.size - 1:
        why = ("the onset lies at the edge of the window" if best[0] == grid.size - 1
               else "the KL does not rise on the active side")
        return OnsetFit(**none, n_runs=int(inside.sum()), message=f"no KL onset located: {why}")
    interval = _interval(xw, yw, sw, grid, est, level=level, n_boot=n_boot, rng=gen)
    lo, hi = (interval.low, interval.high) if sign > 0 else (_neg(interval.high), _neg(interval.low))
    rho_c = sign * est
    pct = f"{int(round(100 * level))}%"
    ci = (f"{pct} interval [{lo:.4f}, {hi:.4f}] by seed bootstrap ({n_boot} resamples of {n_seeds} seeds)"
          if interval.determined else f"{pct} interval not determined: {UNDETERMINED_TEXT[interval.undetermined]}")
    return OnsetFit(rho_c=rho_c, ci_low=lo, ci_high=hi, interval_undetermined=interval.undetermined, slope=a,
                    n_runs=int(inside.sum()), direction=direction,
                    message=f"KL onset rho_c = {rho_c:.4f} from {int(inside.sum())} runs within {window:g}; {ci}.")


def _neg(v: float | None) -> float | None:
    return None if v is None else -v


def _interval(x: np.ndarray, y: np.ndarray, seed_idx: np.ndarray, grid: np.ndarray, est: float, *, level: float,
              n_boot: int, rng: np.random.Generator) -> Interval:
    n_seeds = int(np.unique(seed_idx).size)
    if n_boot == 0:
        return Interval.not_determined(Undetermined.NOT_COMPUTED)
    if n_seeds < MIN_SEEDS:
        return Interval.not_determined(Undetermined.TOO_FEW_SEEDS)
    _, seed_idx = np.unique(seed_idx, return_inverse=True)

    def statistic(mult: np.ndarray) -> np.ndarray:
        best, _ = _profile(x, y, mult[:, seed_idx].astype(np.float64), grid)
        return np.where(best < 0, np.nan, np.where(best == grid.size - 1, np.inf, grid[best]))

    boot = seed_bootstrap(statistic, [n_seeds], n_resamples=n_boot, rng=rng)
    q_lo, q_hi = percentile_interval(boot, level)
    if not (math.isfinite(q_lo) and math.isfinite(q_hi)):
        return Interval.not_determined(Undetermined.UNBOUNDED_RESAMPLES)
    return Interval(*widen(est, q_lo, q_hi, small_sample_factor(n_seeds, level)))

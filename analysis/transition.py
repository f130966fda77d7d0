"""Locate the critical rho of posterior collapse from one configuration's runs (numpy + scipy only).

Why a model and not just "the first rho where the KL is zero": runs are noisy (seed to seed, and the active-unit
count of a 10-unit top layer moves in steps of 10 %), and the crossover can be smooth (on digits the top layer
loses its units gradually between rho 0.92 and 1.0). A binomial logistic model of the top layer's active units,

    p(rho) = 1 / (1 + exp((rho - rho_c) / w)),   k_run ~ Binomial(top_dim, p(rho_run)),

gives one number (rho_c, where half the top units are active) with an interval, whether the transition is a
step or a crossover. Everything else here exists to keep that number honest:

* The interval comes from a bootstrap that resamples whole seeds (``analysis.intervals.seed_bootstrap``: runs of
  one seed share initialisation and data order, so they are not independent), widened for few seeds
  (``analysis.intervals.small_sample_factor``). Each replicate is a weighted refit. One optimiser,
  ``_weighted_mle`` (projected Fisher scoring, vectorised over fits), makes the point estimate and solves all
  replicates at once: 500 replicates of 8 seeds x 21 rho take about a tenth of a second, which is what lets the
  adaptive searcher refit after every batch of trials. With fewer than three seeds, when the resamples cannot
  bound rho_c, or when w sits at its upper bound, the interval is not determined and the fit says why
  (``TransitionFit.interval_undetermined``) instead of printing a number the data do not support.
* A perfect step makes the maximum-likelihood w go to 0 (separation). w is bounded below by a fraction of the
  grid spacing, and when w is at that bound or the fitted rise (12 % to 88 % of the units, 4 w) fits inside the
  gap between the sampled rho values around rho_c, the data cannot say where in that gap rho_c lies: the
  interval is widened to the whole gap.
* A model-free bracket (from the raw active/collapsed pattern) and a change-point of the mean order parameter
  are reported next to the fit, as cross-checks that need no model.
* When the swept range contains no transition, or the fit puts rho_c outside it, the status says so plainly
  instead of returning an extrapolated number.

Every finding is data on ``TransitionFit`` (status, ``no_transition``, ``caveats``, ``interval_undetermined``);
``describe`` turns them into the plain-English ``message``. The public API (``TransitionFit``, ``fit_transition``)
is what the adaptive searcher (``sweeps/refine.py``) and the analysis tables call.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from analysis.intervals import (MIN_SEEDS, UNDETERMINED_TEXT, Interval, Undetermined, percentile_interval,
                                seed_bootstrap, small_sample_factor, widen)


class FitStatus(str, enum.Enum):
    """Outcome of a fit. A ``str`` enum, so ``fit.status == "ok"`` keeps working for callers and tables."""

    OK = "ok"
    NO_TRANSITION = "no_transition"
    TOO_FEW = "too_few_points"


STATUS_OK = FitStatus.OK
STATUS_NO_TRANSITION = FitStatus.NO_TRANSITION
STATUS_TOO_FEW = FitStatus.TOO_FEW


class NoTransition(enum.Enum):
    """Why the swept range holds no transition, and so on which side rho_c lies."""

    ALL_ACTIVE = "all_active"  # every top unit active in every run: rho_c above the range
    ALL_COLLAPSED = "all_collapsed"  # collapsed in every run: rho_c below the range
    FITTED_ABOVE = "fitted_above"  # units drop but the fitted half-point lies above the range
    FITTED_BELOW = "fitted_below"

    @property
    def side(self) -> str:
        return "above" if self in (NoTransition.ALL_ACTIVE, NoTransition.FITTED_ABOVE) else "below"


class Caveat(enum.Enum):
    """Something a reader of an "ok" fit must know; text in ``CAVEAT_TEXT``."""

    SEPARATION = "separation"  # a step sharper than the rho spacing: w held at its lower bound
    BROADER_THAN_RANGE = "broader_than_range"  # w at its upper bound
    INTERVAL_IS_GAP = "interval_is_gap"  # the interval was widened to the sampled gap around rho_c
    INTERVAL_OUTSIDE_RANGE = "interval_outside_range"


# Which side of rho_c the units are active on. Posterior-coordinate smoothing keeps the top layer active below
# rho_c (the paper's transition); in the prior's coordinates the linear-Gaussian model's transition runs the other
# way (analysis/closed_form.py). A fit of the other direction is the same fit on -rho, mapped back (``_mirror``).
ACTIVE_BELOW = "active below"
ACTIVE_ABOVE = "active above"
DIRECTIONS = (ACTIVE_BELOW, ACTIVE_ABOVE)
# infer_direction calls a transition "active above" only when the mean active fraction of the highest third of the
# rho values exceeds that of the lowest third by at least this much (otherwise: the usual "active below").
DIRECTION_MIN_RISE = 0.25

MIN_RHO_POINTS = 3
# Lower bound of w as a fraction of the smallest gap between sampled rho values. Below this the likelihood of a
# perfect step keeps rising as w -> 0 without changing any fitted probability at a sampled point.
W_MIN_FRACTION_OF_GAP = 0.1
# Upper bound of w as a multiple of the swept span: a crossover broader than the sweep is not located by it.
W_MAX_FRACTION_OF_SPAN = 1.0
# rho_c is searched within this many spans beyond either end of the sweep (then reported as outside).
RHO_C_MARGIN_SPANS = 1.0
# A parameter this close to a bound of the fit's box (standardised x_c, log w) is on that face for the optimiser.
BOX_TOL = 1e-7


@dataclass(frozen=True)
class TransitionFit:
    """The critical rho of one configuration, with its interval, cross-checks and a plain-English verdict."""

    status: FitStatus  # "ok" | "no_transition" | "too_few_points"
    message: str  # plain-English explanation of everything below (``describe``)
    rho_c: float | None  # point estimate (maximum likelihood)
    ci_low: float | None  # seed-bootstrap interval (level given to fit_transition); None when not determined
    ci_high: float | None
    width: float | None  # logistic scale w
    bracket_low: float | None  # last rho (from below) where every seed is active (active above: collapsed)
    bracket_high: float | None  # first rho where every seed is collapsed (active above: active)
    changepoint: float | None  # model-free change-point estimate (cross-check)
    n_runs: int
    n_rho: int
    n_seeds: int
    interval_undetermined: Undetermined | None = None  # why there is no interval (status "ok" only)
    caveats: tuple[Caveat, ...] = ()
    no_transition: NoTransition | None = None  # why, for status "no_transition"
    rho_min: float | None = None  # the swept range
    rho_max: float | None = None
    level: float = 0.95
    n_boot: int = 0
    resampler: Resampler | None = field(default=None, repr=False, compare=False)  # status "ok" only
    direction: str = ACTIVE_BELOW  # which side of rho_c the units are active on

    @property
    def beyond(self) -> str | None:
        """"above" / "below" the swept range for status "no_transition", else None."""
        if self.no_transition is None:
            return None
        side = self.no_transition.side
        if self.direction == ACTIVE_ABOVE and self.no_transition in (NoTransition.ALL_ACTIVE,
                                                                      NoTransition.ALL_COLLAPSED):
            side = "below" if side == "above" else "above"  # active everywhere: rho_c below the range
        return side

    @property
    def w_at_floor(self) -> bool:
        return Caveat.SEPARATION in self.caveats

    @property
    def w_at_ceiling(self) -> bool:
        return Caveat.BROADER_THAN_RANGE in self.caveats


# --------------------------------------------------------------------------------------------------- validation
def _as_1d(name: str, values: Any, n: int | None) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim == 0 and n is not None:
        arr = np.full(n, arr.item())
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional (one entry per run); got shape {arr.shape}")
    if n is not None and arr.shape[0] != n:
        raise ValueError(f"{name} has {arr.shape[0]} entries but rho has {n}; give one entry per run")
    return arr


def _validate(rho: Any, seed: Any, active_units: Any, top_dim: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                                              np.ndarray]:
    """Arrays (rho float, seed index int, k int, n int) or a ValueError that names the problem and the fix."""
    r = _as_1d("rho", rho, None)
    n_runs = r.shape[0]
    try:
        r = r.astype(np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"rho must be numbers; got {r.dtype}: {exc}") from None
    if not np.all(np.isfinite(r)):
        raise ValueError("rho contains NaN or infinite values; drop those runs before fitting")
    s = _as_1d("seed", seed, n_runs)
    if s.dtype.kind == "f" and not np.all(np.isfinite(s)):
        raise ValueError("seed contains NaN; every run needs its seed (the bootstrap resamples whole seeds)")
    if any(v is None for v in s.tolist()):
        raise ValueError("seed contains None; every run needs its seed (the bootstrap resamples whole seeds)")
    _, seed_idx = np.unique(s, return_inverse=True)
    k = _as_1d("active_units", active_units, n_runs)
    if k.dtype == object or k.dtype.kind == "f":
        kf = np.asarray(k, dtype=np.float64)
        if not np.all(np.isfinite(kf)):
            raise ValueError("active_units contains missing or NaN values (errored runs?); drop those runs "
                             "before fitting")
        if not np.all(kf == np.round(kf)):
            raise ValueError("active_units must be whole numbers of units")
        k = kf
    k = k.astype(np.int64)
    n = _as_1d("top_dim", top_dim, n_runs)
    nf = np.asarray(n, dtype=np.float64)
    if not np.all(np.isfinite(nf)) or not np.all(nf == np.round(nf)) or np.any(nf < 1):
        raise ValueError("top_dim must be a positive whole number of units (the last entry of latent_dims)")
    n = nf.astype(np.int64)
    if np.any(k < 0) or np.any(k > n):
        bad = int(np.flatnonzero((k < 0) | (k > n))[0])
        raise ValueError(f"active_units must lie in [0, top_dim]; run {bad} has {int(k[bad])} of {int(n[bad])}")
    return r, seed_idx.astype(np.int64), k, n


# ------------------------------------------------------------------------------------------ model-free checks
def _bracket(rho: np.ndarray, k: np.ndarray) -> tuple[float | None, float | None]:
    """(last rho of the all-active run from below, first rho of the all-collapsed run at the top).

    Scanning up from the smallest rho, bracket_low is the last rho before the first rho where some run has
    collapsed; scanning down from the largest, bracket_high is the last rho before the first rho where some run
    is still active. On clean data these are the two sampled rho values that enclose the whole transition; on
    noisy data (a seed collapsed early, another revived late) the bracket only gets wider, never inverted.
    "Active" means at least one active unit, so on a smooth crossover the bracket encloses the end of the
    collapse and rho_c (half the units) can lie below bracket_low; on a step both agree.
    """
    levels = np.unique(rho)
    all_active = np.array([np.all(k[rho == v] > 0) for v in levels])
    all_collapsed = np.array([np.all(k[rho == v] == 0) for v in levels])
    low = None
    for v, ok in zip(levels, all_active):
        if not ok:
            break
        low = float(v)
    high = None
    for v, ok in zip(levels[::-1], all_collapsed[::-1]):
        if not ok:
            break
        high = float(v)
    return low, high


def _changepoint(rho: np.ndarray, m: np.ndarray) -> float | None:
    """Midpoint of the split of the runs (sorted by rho, split only between distinct rho) into two segments that
    minimises the within-segment squared error of the order parameter m = active/top_dim. No model, so it is a
    cross-check on the logistic fit: on a step it sits in the step's gap, on a crossover near its middle."""
    levels = np.unique(rho)
    if levels.size < 2:
        return None
    sums = np.array([m[rho == v].sum() for v in levels])
    sq = np.array([(m[rho == v] ** 2).sum() for v in levels])
    cnt = np.array([(rho == v).sum() for v in levels], dtype=np.float64)
    cs, csq, cc = np.cumsum(sums), np.cumsum(sq), np.cumsum(cnt)
    best, best_j = math.inf, 0
    for j in range(levels.size - 1):  # left = levels[: j + 1]
        ls, lsq, lc = cs[j], csq[j], cc[j]
        rs, rsq, rc = cs[-1] - ls, csq[-1] - lsq, cc[-1] - lc
        sse = (lsq - ls**2 / lc) + (rsq - rs**2 / rc)
        if sse < best - 1e-12:
            best, best_j = sse, j
    return float(0.5 * (levels[best_j] + levels[best_j + 1]))


# ------------------------------------------------------------------------------------------------- the model
def _loglik_terms(xc: np.ndarray, s: np.ndarray, x: np.ndarray, k: np.ndarray, n: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-run log-likelihood, eta and p for parameters broadcast against x (x, k, n: standardised rho, counts).

    eta = logit p = (x_c - x) / w with w = exp(s); log(1 + e^eta) via logaddexp so a near-step never overflows.
    """
    eta = (xc[..., None] - x) * np.exp(-s)[..., None]
    ll = k * eta - n * np.logaddexp(0.0, eta)
    p = 0.5 * (1.0 + np.tanh(0.5 * eta))  # = sigmoid(eta), overflow-free
    return ll, eta, p


def _mle(x: np.ndarray, k: np.ndarray, n: np.ndarray, bounds: tuple[tuple[float, float], tuple[float, float]],
         start_xc: float) -> tuple[float, float]:
    """Binomial maximum likelihood of (x_c, log w) in the box ``bounds``: ``_weighted_mle`` with every run weighted
    once, from four starts at once (the best is kept).

    The log-likelihood is concave in (logit intercept, slope), and (x_c, log w) maps the decreasing half-plane
    onto itself one-to-one, so there is one interior optimum (or the optimum lies on the box, e.g. w at its
    lower bound for a perfect step). The starts (``start_xc`` and the box's middle, each with w = 0.05 of the span
    and with the box's middle log w) cost one vectorised solve; they guard against slow progress from a poor start.
    """
    (xlo, xhi), (slo, shi) = bounds
    xc0 = np.clip([start_xc, start_xc, 0.5 * (xlo + xhi), 0.5 * (xlo + xhi)], xlo, xhi)
    s0 = np.clip([math.log(0.05), 0.5 * (slo + shi)] * 2, slo, shi)
    xc, s = _weighted_mle(x, k, n, np.ones((xc0.size, x.size)), (xc0, s0), bounds)
    best = int(np.argmax(np.sum(_loglik_terms(xc, s, x, k, n)[0], axis=1)))
    return float(xc[best]), float(s[best])


def _weighted_mle(x: np.ndarray, k: np.ndarray, n: np.ndarray, weights: np.ndarray, start: tuple[Any, Any],
                  bounds: tuple[tuple[float, float], tuple[float, float]], iters: int = 100
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(x_c, log w) maximising each row's weighted log-likelihood in the box ``bounds``, all rows at once: the one
    optimiser of the fit (the point estimate, ``_mle``, and every bootstrap replicate, ``Resampler.refit``).

    x, k, n: one entry per run; weights: rows x runs (a bootstrap replicate's row holds the seed multiplicities);
    start: (x_c, log w), each one number for every row or one per row. Projected Fisher scoring with step
    halving, vectorised over rows (each iteration works on the rows not yet converged): a few hundred replicates
    cost about as much as a few single fits, which is what makes coverage checks and the adaptive searcher's
    per-batch refits cheap. A parameter on a face of the box whose gradient points out of it is held there and
    the step is taken in the other alone (a 1-D scoring step); the joint step clipped to the box is often not an
    ascent direction, and halving it would crawl. Rows with no transition at all (every weighted run fully
    active, or every one collapsed) have no finite optimum; their x_c is returned as +inf / -inf (rho_c beyond
    the range) and their log w as NaN.
    """
    (xlo, xhi), (slo, shi) = bounds
    n_rep = weights.shape[0]
    used = weights > 0
    full = np.all(np.where(used, k == n, True), axis=1)
    none = np.all(np.where(used, k == 0, True), axis=1)
    xc = np.broadcast_to(np.asarray(start[0], dtype=np.float64), (n_rep,)).copy()
    s = np.broadcast_to(np.asarray(start[1], dtype=np.float64), (n_rep,)).copy()

    def objective(xc_: np.ndarray, s_: np.ndarray, w_: np.ndarray) -> np.ndarray:
        return np.sum(w_ * _loglik_terms(xc_, s_, x, k, n)[0], axis=1)

    cur = objective(xc, s, weights)
    active = ~(full | none)
    for _ in range(iters):
        rows = np.flatnonzero(active)
        if not rows.size:
            break
        w, r_xc, r_s, r_cur = weights[rows], xc[rows], s[rows], cur[rows]
        _, eta, p = _loglik_terms(r_xc, r_s, x, k, n)
        inv_w = np.exp(-r_s)
        resid = w * (k - n * p)
        g_xc, g_s = resid.sum(axis=1) * inv_w, -(resid * eta).sum(axis=1)
        info = w * n * p * (1.0 - p)
        i11 = info.sum(axis=1) * inv_w**2
        i12 = -(info * eta).sum(axis=1) * inv_w
        i22 = (info * eta**2).sum(axis=1)
        ridge = 1e-9 * (i11 + i22) + 1e-12
        det = (i11 + ridge) * (i22 + ridge) - i12**2
        d_xc = ((i22 + ridge) * g_xc - i12 * g_s) / det
        d_s = ((i11 + ridge) * g_s - i12 * g_xc) / det
        # Held on a face: at (or within a hair of) a bound with the gradient pointing out of the box.
        x_held = ((r_xc <= xlo + BOX_TOL) & (g_xc < 0)) | ((r_xc >= xhi - BOX_TOL) & (g_xc > 0))
        s_held = ((r_s <= slo + BOX_TOL) & (g_s < 0)) | ((r_s >= shi - BOX_TOL) & (g_s > 0))
        d_xc = np.where(x_held, 0.0, np.where(s_held, g_xc / (i11 + ridge), d_xc))
        d_s = np.where(s_held, 0.0, np.where(x_held, g_s / (i22 + ridge), d_s))
        r_xc = np.where(x_held, np.where(g_xc < 0, xlo, xhi), r_xc)
        r_s = np.where(s_held, np.where(g_s < 0, slo, shi), r_s)
        # Far from every run's slope the information vanishes and the scoring step is enormous: cap it (half the
        # sweep in x_c, a factor e in w) so that step halving reaches a useful length.
        cap = np.minimum(1.0, np.minimum(0.5 / np.maximum(np.abs(d_xc), 1e-300),
                                         1.0 / np.maximum(np.abs(d_s), 1e-300)))
        d_xc, d_s = d_xc * cap, d_s * cap
        moving = ~(x_held & s_held)  # a corner with the gradient pointing out of the box: optimal
        step = np.ones(rows.size)
        accepted = np.zeros(rows.size, dtype=bool)
        converged = ~moving
        new_xc, new_s = r_xc.copy(), r_s.copy()
        for _half in range(30):
            todo = np.flatnonzero(moving & ~accepted)
            if not todo.size:
                break
            cand_xc = np.clip(r_xc[todo] + step[todo] * d_xc[todo], xlo, xhi)
            cand_s = np.clip(r_s[todo] + step[todo] * d_s[todo], slo, shi)
            val = objective(cand_xc, cand_s, w[todo])
            ok = val >= r_cur[todo] - 1e-12 * np.abs(r_cur[todo])
            hit = todo[ok]
            # converged rows stop iterating: tiny change of parameters and of likelihood
            converged[hit] = ((np.abs(cand_xc[ok] - r_xc[hit]) < 1e-10) & (np.abs(cand_s[ok] - r_s[hit]) < 1e-8)
                              & (val[ok] - r_cur[hit] < 1e-10))
            new_xc[hit], new_s[hit], r_cur[hit] = cand_xc[ok], cand_s[ok], val[ok]
            accepted[hit] = True
            step[todo[~ok]] *= 0.5
        xc[rows], s[rows], cur[rows] = new_xc, new_s, r_cur
        active[rows] = accepted & ~converged  # no ascent possible from here: at a (box-)optimum
    xc[full] = np.inf
    xc[none] = -np.inf
    s[full | none] = np.nan
    return xc, s


@dataclass(frozen=True, eq=False)
class Resampler:
    """The weighted refits of one configuration's runs, vectorised over seed resamples (``_weighted_mle``).

    Why an object: the rho_c interval needs rho_c per resample and the across-latent-size comparison needs w per
    resample; both come from the same refits, so both use this (with ``analysis.intervals.seed_bootstrap``).
    """

    x: np.ndarray  # standardised rho of each run
    k: np.ndarray
    n: np.ndarray
    seed_idx: np.ndarray  # seed of each run as 0..n_seeds-1
    n_seeds: int
    start: tuple[float, float]  # the fit on all runs, (x_c, log w)
    bounds: tuple[tuple[float, float], tuple[float, float]]
    rho_lo: float  # rho = rho_lo + rho_span * x
    rho_span: float

    def refit(self, mult: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(rho_c, log w) per replicate of seed multiplicities ``mult`` (replicates x seeds).

        Values the resample cannot bound are infinite: rho_c on the search box or with no transition at all
        (+-inf, by side), log w at a bound of the fit (-inf at the floor, +inf at the ceiling); log w is NaN where
        the replicate has no transition or its rho_c is infinite. (A mirrored fit, "active above", has a negative
        rho_span: x runs along -rho.)
        """
        (xlo, xhi), (slo, shi) = self.bounds
        weights = mult[:, self.seed_idx].astype(np.float64)
        xc, s = _weighted_mle(self.x, self.k, self.n, weights, self.start, self.bounds)
        xc = np.where(xc <= xlo + 1e-9, -np.inf, np.where(xc >= xhi - 1e-9, np.inf, xc))
        s = np.where(s <= slo + 1e-6, -np.inf, np.where(s >= shi - 1e-6, np.inf, s))
        s = np.where(np.isfinite(xc), s, np.nan)
        return self.rho_lo + self.rho_span * xc, s + math.log(abs(self.rho_span))


def _interval(resampler: Resampler, rho_c: float, *, level: float, n_boot: int, rng: np.random.Generator
              ) -> Interval:
    """The seed-bootstrap interval of rho_c, widened for few seeds, or why there is none."""
    if n_boot == 0:
        return Interval.not_determined(Undetermined.NOT_COMPUTED)
    if resampler.n_seeds < MIN_SEEDS:
        return Interval.not_determined(Undetermined.TOO_FEW_SEEDS)
    boot = seed_bootstrap(lambda mult: resampler.refit(mult)[0], [resampler.n_seeds], n_resamples=n_boot, rng=rng)
    q_lo, q_hi = percentile_interval(boot, level)
    if not (math.isfinite(q_lo) and math.isfinite(q_hi)):
        return Interval.not_determined(Undetermined.UNBOUNDED_RESAMPLES)
    return Interval(*widen(rho_c, q_lo, q_hi, small_sample_factor(resampler.n_seeds, level)))


def gap_around(levels: np.ndarray, rho_c: float) -> tuple[float, float] | None:
    """The two sampled rho values enclosing rho_c (None at the edge of the sweep)."""
    left, right = levels[levels <= rho_c], levels[levels > rho_c]
    return (float(left[-1]), float(right[0])) if left.size and right.size else None


# ------------------------------------------------------------------------------------------------ public API
def infer_direction(rho: Any, active_fraction: Any) -> str:
    """ACTIVE_ABOVE when the units are clearly more active at the top of the swept range than at its bottom (mean
    active fraction of the highest third of the rho values at least DIRECTION_MIN_RISE above the lowest third's),
    else ACTIVE_BELOW, the usual direction (also for a range with no transition at all)."""
    r, m = np.asarray(rho, dtype=np.float64), np.asarray(active_fraction, dtype=np.float64)
    levels = np.unique(r)
    if levels.size < 2:
        return ACTIVE_BELOW
    third = max(1, levels.size // 3)
    low, high = m[r <= levels[third - 1]].mean(), m[r >= levels[-third]].mean()
    return ACTIVE_ABOVE if high - low >= DIRECTION_MIN_RISE else ACTIVE_BELOW


def fit_transition(rho: Any, seed: Any, active_units: Any, top_dim: Any, *, level: float = 0.95,
                   n_boot: int = 500, rng: Any = None, direction: str = ACTIVE_BELOW) -> TransitionFit:
    """Fit the critical rho of one configuration from its runs (one entry per run, its final evaluation).

    ``rho``, ``seed``, ``active_units`` (top-layer active units) are array-likes of equal length; ``top_dim`` is
    the top layer's size, one int or one per run. ``level`` is the interval's coverage, ``n_boot`` the number of
    seed-bootstrap replicates (0 skips the interval), ``rng`` a seed or ``numpy.random.Generator``.

    Returns a ``TransitionFit`` whose ``status`` is "ok", "no_transition" (every run active, every run collapsed,
    or the fitted rho_c outside the swept range: the sweep must be widened) or "too_few_points" (fewer than 3
    distinct rho). ``message`` explains the verdict and any caveat. ``direction``: ACTIVE_BELOW (units active
    below rho_c, p(rho) as above) or ACTIVE_ABOVE (p(rho) = 1 / (1 + exp((rho_c - rho) / w))).
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}; got {direction!r}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), e.g. 0.95; got {level}")
    if int(n_boot) != n_boot or n_boot < 0:
        raise ValueError(f"n_boot must be a whole number >= 0; got {n_boot}")
    r, seed_idx, k, n = _validate(rho, seed, active_units, top_dim)
    gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    if direction == ACTIVE_ABOVE:
        fit = _mirror(_fit(-r, seed_idx, k, n, level=level, n_boot=int(n_boot), rng=gen))
    else:
        fit = _fit(r, seed_idx, k, n, level=level, n_boot=int(n_boot), rng=gen)
    return replace(fit, message=describe(fit))


def _neg(v: float | None) -> float | None:
    return None if v is None else -v


def _mirror(f: TransitionFit) -> TransitionFit:
    """A fit made on -rho (an "active below" transition in -rho) as the "active above" fit in rho that it is."""
    swap = {NoTransition.FITTED_ABOVE: NoTransition.FITTED_BELOW, NoTransition.FITTED_BELOW: NoTransition.FITTED_ABOVE}
    res = f.resampler
    if res is not None:
        res = replace(res, rho_lo=-res.rho_lo, rho_span=-res.rho_span)
    return replace(f, rho_c=_neg(f.rho_c), ci_low=_neg(f.ci_high), ci_high=_neg(f.ci_low),
                   bracket_low=_neg(f.bracket_high), bracket_high=_neg(f.bracket_low), changepoint=_neg(f.changepoint),
                   rho_min=_neg(f.rho_max), rho_max=_neg(f.rho_min), resampler=res, direction=ACTIVE_ABOVE,
                   no_transition=swap.get(f.no_transition, f.no_transition))


def _fit(r: np.ndarray, seed_idx: np.ndarray, k: np.ndarray, n: np.ndarray, *, level: float, n_boot: int,
         rng: np.random.Generator) -> TransitionFit:
    """The computation of fit_transition on validated arrays (``message`` left empty)."""
    levels = np.unique(r)
    n_seeds = int(np.unique(seed_idx).size) if r.size else 0
    base = dict(message="", n_runs=int(r.size), n_rho=int(levels.size), n_seeds=n_seeds, level=level, n_boot=n_boot,
                rho_min=float(levels[0]) if levels.size else None, rho_max=float(levels[-1]) if levels.size else None)
    no_fit = dict(rho_c=None, ci_low=None, ci_high=None, width=None)
    if levels.size < MIN_RHO_POINTS:
        return TransitionFit(STATUS_TOO_FEW, **no_fit, bracket_low=None, bracket_high=None, changepoint=None, **base)
    b_low, b_high = _bracket(r, k)
    cp = _changepoint(r, k / n)
    cross = dict(bracket_low=b_low, bracket_high=b_high, changepoint=cp)
    if np.all(k == n) or np.all(k == 0):
        why = NoTransition.ALL_ACTIVE if np.all(k == n) else NoTransition.ALL_COLLAPSED
        return TransitionFit(STATUS_NO_TRANSITION, **no_fit, **cross, **base, no_transition=why)

    # Standardised coordinates: x in [0, 1] over the sweep, so bounds and tolerances do not depend on units.
    lo, hi = float(levels[0]), float(levels[-1])
    span = hi - lo
    x = (r - lo) / span
    w_min = W_MIN_FRACTION_OF_GAP * float((np.diff(levels) / span).min())
    bounds = ((-RHO_C_MARGIN_SPANS, 1.0 + RHO_C_MARGIN_SPANS), (math.log(w_min), math.log(W_MAX_FRACTION_OF_SPAN)))
    xc_hat, s_hat = _mle(x, k, n, bounds, ((cp if cp is not None else 0.5 * (lo + hi)) - lo) / span)
    rho_c, w_hat = lo + span * xc_hat, span * math.exp(s_hat)
    if rho_c < lo or rho_c > hi:
        why = NoTransition.FITTED_BELOW if rho_c < lo else NoTransition.FITTED_ABOVE
        return TransitionFit(STATUS_NO_TRANSITION, **no_fit, **cross, **base, no_transition=why)

    caveats: list[Caveat] = []
    if s_hat <= bounds[1][0] + 1e-6:
        caveats.append(Caveat.SEPARATION)
    if s_hat >= bounds[1][1] - 1e-6:
        caveats.append(Caveat.BROADER_THAN_RANGE)
    resampler = Resampler(x, k, n, seed_idx, n_seeds, (xc_hat, s_hat), bounds, lo, span)
    if Caveat.BROADER_THAN_RANGE in caveats and n_boot:
        ci = Interval.not_determined(Undetermined.WIDTH_AT_LIMIT)
    else:
        ci = _interval(resampler, rho_c, level=level, n_boot=n_boot, rng=rng)
    gap = gap_around(levels, rho_c)
    if ci.determined and gap is not None:
        # Resolution floor: a transition whose 12-88 % rise (4 w) fits inside the gap between the sampled rho
        # around rho_c has no sampled point on its slope, so the data locate it only to within that gap.
        if 4.0 * w_hat < gap[1] - gap[0] or Caveat.SEPARATION in caveats:
            if ci.low > gap[0] or ci.high < gap[1]:
                caveats.append(Caveat.INTERVAL_IS_GAP)
            ci = Interval(min(ci.low, gap[0]), max(ci.high, gap[1]))
    if ci.determined and (ci.low < lo or ci.high > hi):
        caveats.append(Caveat.INTERVAL_OUTSIDE_RANGE)
    return TransitionFit(STATUS_OK, rho_c=float(rho_c), ci_low=ci.low, ci_high=ci.high, width=float(w_hat), **cross,
                         **base, interval_undetermined=ci.undetermined, caveats=tuple(caveats), resampler=resampler)


# --------------------------------------------------------------------------------------------------- wording
def _fmt(v: float | None) -> str:
    return "none" if v is None else f"{v:.4f}"


def _range(fit: TransitionFit) -> str:
    return f"[{fit.rho_min:.4f}, {fit.rho_max:.4f}]"


NO_TRANSITION_TEXT: dict[NoTransition, str] = {
    NoTransition.ALL_ACTIVE: "every top unit is active in every run for rho in {range}: the transition, if any, "
                             "lies {side} this range; sweep {way} rho",
    NoTransition.ALL_COLLAPSED: "the top layer is collapsed in every run for rho in {range}: the transition, if "
                                "any, lies {side} this range; sweep {way} rho",
    NoTransition.FITTED_ABOVE: "the fitted rho_c lies above the swept range {range}: the range does not contain "
                               "the transition; sweep higher rho",
    NoTransition.FITTED_BELOW: "the fitted rho_c lies below the swept range {range}: the range does not contain "
                               "the transition; sweep lower rho",
}


def _caveat_text(c: Caveat, fit: TransitionFit) -> str:
    if c is Caveat.SEPARATION:
        return (f"the runs separate perfectly (a step sharper than the rho spacing): w is held at its lower bound "
                f"{fit.width:.2g} ({W_MIN_FRACTION_OF_GAP:g} x the smallest rho gap)")
    if c is Caveat.BROADER_THAN_RANGE:
        return (f"the crossover is at least as broad as the swept range (w at its upper bound {fit.width:.3g}); "
                f"sweep a wider range for a meaningful rho_c")
    if c is Caveat.INTERVAL_IS_GAP:
        return ("the transition is sharper than the rho spacing there; the interval covers the whole gap between "
                "the sampled rho values around rho_c (sample rho inside it to narrow it)")
    return "the interval reaches outside the swept range"


def describe(fit: TransitionFit) -> str:
    """The plain-English message of a fit: its numbers, how the interval was made, and every caveat."""
    if fit.status == STATUS_TOO_FEW:
        return (f"only {fit.n_rho} distinct rho value(s) in {fit.n_runs} run(s); a transition needs at least "
                f"{MIN_RHO_POINTS} rho values: sweep more rho")
    if fit.status == STATUS_NO_TRANSITION:
        return NO_TRANSITION_TEXT[fit.no_transition].format(range=_range(fit), side=fit.beyond,
                                                            way="higher" if fit.beyond == "above" else "lower")
    pct = f"{int(round(100 * fit.level))}%"
    if fit.interval_undetermined is None:
        factor = small_sample_factor(fit.n_seeds, fit.level)
        how = (f"{pct} interval [{_fmt(fit.ci_low)}, {_fmt(fit.ci_high)}] by seed bootstrap ({fit.n_boot} resamples "
               f"of {fit.n_seeds} seeds), widened x{factor:.2f} for {fit.n_seeds} seeds")
    else:
        how = f"{pct} interval not determined: {UNDETERMINED_TEXT[fit.interval_undetermined]}"
    notes = [how, *(_caveat_text(c, fit) for c in fit.caveats)]
    where = "" if fit.direction == ACTIVE_BELOW else f" (units {fit.direction} rho_c)"
    return (f"rho_c = {fit.rho_c:.4f}{where} (w {fit.width:.4f}) from {fit.n_runs} runs at {fit.n_rho} rho values x "
            f"{fit.n_seeds} seed(s); bracket [{_fmt(fit.bracket_low)}, {_fmt(fit.bracket_high)}], change-point "
            f"{_fmt(fit.changepoint)}. " + "; ".join(notes) + ".")

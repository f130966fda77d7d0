"""Locate the critical rho of posterior collapse from one configuration's runs (numpy + scipy only).

Why a model and not just "the first rho where the KL is zero": runs are noisy (seed to seed, and the active-unit
count of a 10-unit top layer moves in steps of 10 %), and the crossover can be smooth (on digits the top layer
loses its units gradually between rho 0.92 and 1.0). A binomial logistic model of the top layer's active units,

    p(rho) = 1 / (1 + exp((rho - rho_c) / w)),   k_run ~ Binomial(top_dim, p(rho_run)),

gives one number (rho_c, where half the top units are active) with an interval, whether the transition is a
step or a crossover. Everything else here exists to keep that number honest:

* The interval comes from a bootstrap that resamples whole seeds: runs of one seed share initialisation and data
  order, so they are not independent; resampling runs would understate the error. With few seeds the bootstrap
  is too narrow (it sees G seeds, not the population), so the interval is widened by the usual small-sample
  factor (see ``_small_sample_factor``).
* A perfect step makes the maximum-likelihood w go to 0 (separation). w is bounded below by a fraction of the
  grid spacing, and when the fitted w is smaller than the gap between the sampled rho values around rho_c, the
  data cannot say where in that gap rho_c lies: the interval is widened to the whole gap and the message says so.
* A model-free bracket (from the raw active/collapsed pattern) and a change-point of the mean order parameter
  are reported next to the fit, as cross-checks that need no model.
* When the swept range contains no transition, or the fit puts rho_c outside it, the status says so plainly
  instead of returning an extrapolated number.

The public API (``TransitionFit``, ``fit_transition``) is fixed by the team contract; the adaptive searcher
(``sweeps/refine.py``) and the analysis tables both call it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import optimize, stats

STATUS_OK = "ok"
STATUS_NO_TRANSITION = "no_transition"
STATUS_TOO_FEW = "too_few_points"

MIN_RHO_POINTS = 3
# Lower bound of w as a fraction of the smallest gap between sampled rho values. Below this the likelihood of a
# perfect step keeps rising as w -> 0 without changing any fitted probability at a sampled point.
W_MIN_FRACTION_OF_GAP = 0.1
# Upper bound of w as a multiple of the swept span: a crossover broader than the sweep is not located by it.
W_MAX_FRACTION_OF_SPAN = 1.0
# rho_c is searched within this many spans beyond either end of the sweep (then reported as outside).
RHO_C_MARGIN_SPANS = 1.0


@dataclass(frozen=True)
class TransitionFit:
    """The critical rho of one configuration, with its interval, cross-checks and a plain-English verdict."""

    status: str  # "ok" | "no_transition" | "too_few_points"
    message: str  # plain-English explanation, always set
    rho_c: float | None  # point estimate (maximum likelihood)
    ci_low: float | None  # bootstrap interval (level given to fit_transition)
    ci_high: float | None
    width: float | None  # logistic scale w
    bracket_low: float | None  # last rho (from below) where every seed is active
    bracket_high: float | None  # first rho where every seed is collapsed
    changepoint: float | None  # model-free change-point estimate (cross-check)
    n_runs: int
    n_rho: int
    n_seeds: int


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
    """Binomial maximum likelihood of (x_c, log w) by L-BFGS-B in the box ``bounds``.

    The log-likelihood is concave in (logit intercept, slope), and (x_c, log w) maps the decreasing half-plane
    onto itself one-to-one, so there is one interior optimum (or the optimum lies on the box, e.g. w at its
    lower bound for a perfect step). A few starts guard against slow progress from a poor start.
    """
    def negll(theta: np.ndarray) -> tuple[float, np.ndarray]:
        xc, s = np.asarray(theta[0]), np.asarray(theta[1])
        ll, eta, p = _loglik_terms(xc, s, x, k, n)
        resid = k - n * p
        g_xc = np.sum(resid) * math.exp(-theta[1])
        g_s = -np.sum(resid * eta)
        return -float(np.sum(ll)), -np.array([g_xc, g_s])

    best = None
    (xlo, xhi), (slo, shi) = bounds
    for xc0 in (start_xc, 0.5 * (xlo + xhi)):
        for s0 in (math.log(0.05), 0.5 * (slo + shi)):
            x0 = np.array([min(max(xc0, xlo), xhi), min(max(s0, slo), shi)])
            res = optimize.minimize(negll, x0, jac=True, method="TNC", bounds=bounds,
                                    options={"maxfun": 500, "ftol": 1e-13, "gtol": 1e-9})
            if best is None or res.fun < best.fun:
                best = res
    return float(best.x[0]), float(best.x[1])


def _boot_fits(x: np.ndarray, k: np.ndarray, n: np.ndarray, weights: np.ndarray, start: tuple[float, float],
               bounds: tuple[tuple[float, float], tuple[float, float]], iters: int = 100) -> np.ndarray:
    """x_c of every bootstrap replicate at once (weights: replicates x runs, the seed multiplicities; k: the
    counts, one row for all replicates or one row per replicate for a parametric bootstrap).

    Projected Fisher scoring with step halving, vectorised over replicates: a few hundred replicates cost about
    as much as one scipy fit each would cost per replicate, which is what makes coverage checks and the adaptive
    searcher's per-batch refits cheap. Replicates with no transition at all (every weighted run fully active, or
    every one collapsed) have no finite optimum; they are returned as +inf / -inf (rho_c beyond the range).
    """
    (xlo, xhi), (slo, shi) = bounds
    n_rep = weights.shape[0]
    used = weights > 0
    full = np.all(np.where(used, k == n, True), axis=1)
    none = np.all(np.where(used, k == 0, True), axis=1)
    xc = np.full(n_rep, start[0])
    s = np.full(n_rep, start[1])

    def objective(xc_: np.ndarray, s_: np.ndarray) -> np.ndarray:
        ll, _, _ = _loglik_terms(xc_, s_, x, k, n)
        return np.sum(weights * ll, axis=1)

    cur = objective(xc, s)
    active = ~(full | none)
    for _ in range(iters):
        if not np.any(active):
            break
        ll, eta, p = _loglik_terms(xc, s, x, k, n)
        inv_w = np.exp(-s)
        resid = weights * (k - n * p)
        g = np.stack([resid.sum(axis=1) * inv_w, -(resid * eta).sum(axis=1)], axis=1)
        info = weights * n * p * (1.0 - p)
        i11 = info.sum(axis=1) * inv_w**2
        i12 = -(info * eta).sum(axis=1) * inv_w
        i22 = (info * eta**2).sum(axis=1)
        ridge = 1e-9 * (i11 + i22) + 1e-12
        det = (i11 + ridge) * (i22 + ridge) - i12**2
        d_xc = ((i22 + ridge) * g[:, 0] - i12 * g[:, 1]) / det
        d_s = ((i11 + ridge) * g[:, 1] - i12 * g[:, 0]) / det
        # On a face of the box with the step pointing out of it, move along the face only (1-D scoring step):
        # clipping the joint step instead is often not an ascent direction, and halving would crawl.
        s_out = ((s <= slo) & (d_s < 0)) | ((s >= shi) & (d_s > 0))
        d_s = np.where(s_out, 0.0, d_s)
        d_xc = np.where(s_out, g[:, 0] / (i11 + ridge), d_xc)
        x_out = ((xc <= xlo) & (d_xc < 0)) | ((xc >= xhi) & (d_xc > 0))
        d_xc = np.where(x_out, 0.0, d_xc)
        d_s = np.where(x_out & ~s_out, g[:, 1] / (i22 + ridge), d_s)
        step = np.ones(n_rep)
        accepted = np.zeros(n_rep, dtype=bool)
        new_xc, new_s = xc.copy(), s.copy()
        for _half in range(30):
            todo = active & ~accepted
            if not np.any(todo):
                break
            cand_xc = np.clip(xc + step * d_xc, xlo, xhi)
            cand_s = np.clip(s + step * d_s, slo, shi)
            val = objective(cand_xc, cand_s)
            ok = todo & (val >= cur - 1e-12 * np.abs(cur))
            new_xc[ok], new_s[ok] = cand_xc[ok], cand_s[ok]
            gained = np.where(ok, val - cur, 0.0)
            cur = np.where(ok, val, cur)
            accepted |= ok
            step = np.where(todo & ~ok, step * 0.5, step)
            # converged replicates stop iterating: tiny change of parameters and of likelihood
            done_now = ok & (np.abs(new_xc - xc) < 1e-10) & (np.abs(new_s - s) < 1e-8) & (gained < 1e-10)
            active &= ~done_now
        active &= accepted  # no ascent possible from here: at a (box-)optimum
        xc, s = new_xc, new_s
    xc = xc.astype(np.float64)
    xc[full] = np.inf
    xc[none] = -np.inf
    return xc


def _small_sample_factor(n_seeds: int, level: float) -> float:
    """Widening of a seed-bootstrap interval for G seeds: sqrt(G / (G - 1)) * t_{G-1} / z.

    The bootstrap variance of a statistic averaged over G resampled clusters is (G - 1) / G of the unbiased
    estimate, and with G clusters the standardised error follows (roughly) Student's t with G - 1 degrees of
    freedom, not the normal. For 8 seeds the factor is 1.3; for 3 seeds 2.7; it tends to 1 as G grows.
    """
    if n_seeds < 2:
        return 1.0
    q = 0.5 + level / 2.0
    return math.sqrt(n_seeds / (n_seeds - 1)) * float(stats.t.ppf(q, n_seeds - 1) / stats.norm.ppf(q))


def _interval(boot: np.ndarray, rho_c: float, level: float, factor: float) -> tuple[float, float]:
    """Percentile interval of the bootstrap estimates, its distances from rho_c stretched by ``factor``.

    Order statistics (no interpolation), so replicates at +-inf give an honest unbounded end instead of NaN.
    """
    b = np.sort(boot)
    alpha = 1.0 - level
    q_lo = float(b[int(math.floor((alpha / 2.0) * (b.size - 1)))])
    q_hi = float(b[int(math.ceil((1.0 - alpha / 2.0) * (b.size - 1)))])
    low = rho_c - factor * (rho_c - q_lo) if q_lo <= rho_c else q_lo
    high = rho_c + factor * (q_hi - rho_c) if q_hi >= rho_c else q_hi
    return low, high


def _fmt(v: float | None) -> str:
    return "none" if v is None else f"{v:.4f}"


# ------------------------------------------------------------------------------------------------ public API
def fit_transition(rho: Any, seed: Any, active_units: Any, top_dim: Any, *, level: float = 0.95,
                   n_boot: int = 500, rng: Any = None) -> TransitionFit:
    """Fit the critical rho of one configuration from its runs (one entry per run, its final evaluation).

    ``rho``, ``seed``, ``active_units`` (top-layer active units) are array-likes of equal length; ``top_dim`` is
    the top layer's size, one int or one per run. ``level`` is the interval's coverage, ``n_boot`` the number of
    seed-bootstrap replicates (0 skips the interval), ``rng`` a seed or ``numpy.random.Generator``.

    Returns a ``TransitionFit`` whose ``status`` is "ok", "no_transition" (every run active, every run collapsed,
    or the fitted rho_c outside the swept range: the sweep must be widened) or "too_few_points" (fewer than 3
    distinct rho). ``message`` always explains the verdict and any caveat (separation, seeds too few for a seed
    bootstrap, an interval reaching outside the range).
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), e.g. 0.95; got {level}")
    if int(n_boot) != n_boot or n_boot < 0:
        raise ValueError(f"n_boot must be a whole number >= 0; got {n_boot}")
    r, seed_idx, k, n = _validate(rho, seed, active_units, top_dim)
    gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    n_runs = int(r.size)
    levels = np.unique(r)
    n_rho = int(levels.size)
    n_seeds = int(np.unique(seed_idx).size) if n_runs else 0
    counts = dict(n_runs=n_runs, n_rho=n_rho, n_seeds=n_seeds)
    none_fit = dict(rho_c=None, ci_low=None, ci_high=None, width=None)

    if n_rho < MIN_RHO_POINTS:
        return TransitionFit(STATUS_TOO_FEW, f"only {n_rho} distinct rho value(s) in {n_runs} run(s); a transition "
                             f"needs at least {MIN_RHO_POINTS} rho values: sweep more rho", **none_fit,
                             bracket_low=None, bracket_high=None, changepoint=None, **counts)

    m = k / n
    b_low, b_high = _bracket(r, k)
    cp = _changepoint(r, m)
    lo, hi = float(levels[0]), float(levels[-1])
    span = hi - lo
    cross = dict(bracket_low=b_low, bracket_high=b_high, changepoint=cp)
    if np.all(k == n):
        return TransitionFit(STATUS_NO_TRANSITION, f"every top unit is active in every run for rho in [{lo:.4f}, "
                             f"{hi:.4f}]: the transition, if any, lies above this range; sweep higher rho",
                             **none_fit, **cross, **counts)
    if np.all(k == 0):
        return TransitionFit(STATUS_NO_TRANSITION, f"the top layer is collapsed in every run for rho in [{lo:.4f}, "
                             f"{hi:.4f}]: the transition, if any, lies below this range; sweep lower rho",
                             **none_fit, **cross, **counts)

    # Standardised coordinates: x in [0, 1] over the sweep, so bounds and tolerances do not depend on units.
    x = (r - lo) / span
    gaps = np.diff(levels) / span
    w_min = W_MIN_FRACTION_OF_GAP * float(gaps.min())
    w_max = W_MAX_FRACTION_OF_SPAN
    bounds = ((-RHO_C_MARGIN_SPANS, 1.0 + RHO_C_MARGIN_SPANS), (math.log(w_min), math.log(w_max)))
    start = ((cp if cp is not None else 0.5 * (lo + hi)) - lo) / span
    xc_hat, s_hat = _mle(x, k, n, bounds, start)
    rho_c = lo + span * xc_hat
    w_hat = span * math.exp(s_hat)
    notes: list[str] = []

    if rho_c < lo or rho_c > hi:
        side = "below" if rho_c < lo else "above"
        return TransitionFit(STATUS_NO_TRANSITION, f"the fitted rho_c ({rho_c:.4f}, w {w_hat:.4f}) lies {side} the "
                             f"swept range [{lo:.4f}, {hi:.4f}]: the range does not contain the transition; sweep "
                             f"{'lower' if side == 'below' else 'higher'} rho", **none_fit, **cross, **counts)

    at_w_min = s_hat <= math.log(w_min) + 1e-6
    at_w_max = s_hat >= math.log(w_max) - 1e-6
    if at_w_min:
        notes.append(f"the runs separate perfectly (a step sharper than the rho spacing): w is held at its lower "
                     f"bound {w_hat:.2g} ({W_MIN_FRACTION_OF_GAP:g} x the smallest rho gap)")
    if at_w_max:
        notes.append(f"the crossover is at least as broad as the swept range (w at its upper bound {w_hat:.3g}); "
                     f"sweep a wider range for a meaningful rho_c")

    ci_low = ci_high = None
    if n_boot > 0:
        if n_seeds >= 2:
            # Resample whole seeds: weight of a run = multiplicity of its seed in the replicate.
            mult = gen.multinomial(n_seeds, np.full(n_seeds, 1.0 / n_seeds), size=int(n_boot))
            weights = mult[:, seed_idx].astype(np.float64)
            how = f"seed bootstrap ({n_boot} resamples of {n_seeds} seeds)"
        else:
            # One seed: nothing to resample at the seed level; resample the binomial counts from the fit instead.
            p_hat = _loglik_terms(np.asarray(xc_hat), np.asarray(s_hat), x, k, n)[2]
            k_star = gen.binomial(n, p_hat, size=(int(n_boot), n_runs))
            weights = None
            how = "parametric bootstrap (one seed only: seed-to-seed variation is NOT in this interval)"
        if weights is not None:
            xc_boot = _boot_fits(x, k, n, weights, (xc_hat, s_hat), bounds)
        else:
            xc_boot = _boot_fits(x, k_star, n, np.ones((int(n_boot), n_runs)), (xc_hat, s_hat), bounds)
        factor = _small_sample_factor(n_seeds, level)
        ci_low, ci_high = _interval(lo + span * xc_boot, rho_c, level, factor)
        if factor > 1.0:
            how += f", widened x{factor:.2f} for {n_seeds} seeds"
        # Resolution floor: a transition whose 12-88 % rise (4 w) fits inside the gap between the sampled rho
        # around rho_c has no sampled point on its slope, so the data locate it only to within that gap.
        left = levels[levels <= rho_c]
        right = levels[levels > rho_c]
        if left.size and right.size:
            g_lo, g_hi = float(left[-1]), float(right[0])
            if 4.0 * w_hat < (g_hi - g_lo) or at_w_min:
                if ci_low > g_lo or ci_high < g_hi:
                    notes.append(f"the transition is sharper than the rho spacing there; the interval covers the "
                                 f"whole gap [{g_lo:.4f}, {g_hi:.4f}] (sample rho inside it to narrow it)")
                ci_low, ci_high = min(ci_low, g_lo), max(ci_high, g_hi)
        if not (math.isfinite(ci_low) and math.isfinite(ci_high)):
            notes.append("some seed resamples show no transition in the range, so the interval is unbounded on one "
                         "side; add seeds or widen the range")
        elif ci_low < lo or ci_high > hi:
            notes.append("the interval reaches outside the swept range")
        notes.insert(0, f"{int(round(100 * level))}% interval by {how}")
    else:
        notes.insert(0, "no interval (n_boot = 0)")

    msg = (f"rho_c = {rho_c:.4f} (w {w_hat:.4f}), interval [{_fmt(ci_low)}, {_fmt(ci_high)}] from {n_runs} runs "
           f"at {n_rho} rho values x {n_seeds} seed(s); bracket [{_fmt(b_low)}, {_fmt(b_high)}], change-point "
           f"{_fmt(cp)}. " + "; ".join(notes) + ".")
    return TransitionFit(STATUS_OK, msg, rho_c=float(rho_c), ci_low=ci_low, ci_high=ci_high, width=float(w_hat),
                         **cross, **counts)

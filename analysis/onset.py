"""The KL onset: rho_c as the point where the top layer's KL leaves zero (numpy + scipy only).

Why a second estimator next to the active-unit fit (``analysis/transition.py``): the active-unit criterion
thresholds the posterior-mean variance at 0.01 (Burda et al. 2016). Where that variance vanishes continuously at
rho_c -- a second-order transition, as in the linear-Gaussian model whose rho_c is known exactly
(``analysis/closed_form.py``) -- the units stop counting as active *before* rho_c, so the active-unit fit sits
below it: by 0.005 to 0.025 in rho on the calibration model (docs/calibration.md). The KL itself vanishes at
rho_c, linearly in |rho - rho_c|, so a fit of the KL to a hinge locates rho_c without that bias:

    top_kl(rho) = b + a h + q h^2,   h = (t)_+ (width 0) or width * g(t / width),
    t = rho_c - rho  (units active below rho_c; rho - rho_c for units active above),

least squares over the runs within ``ONSET_WINDOW`` of rho_c (first located with every run), profiled over rho_c
and the width (``FLUCTUATION_WIDTHS``; 0 is the sharp hinge). The floor b takes the small KL that training noise
leaves in a collapsed layer. The other two terms each remove a bias measured on the calibration model
(docs/calibration.md):

* q, the KL's curvature near rho_c: a straight hinge fitted to the exact optimum sampled every 0.025 lands 0.0004 to
  0.0033 on the collapsed side of the closed form, as much as a converged run's seed interval is wide; with q, at
  most 0.0005 (0.0014 in the steepest prior-reading case). Only mildly curved hinges are fitted: a > 0, and the
  slope a + 2 q h stays within (0, 2a) over the window's active side, so the fitted KL rises all the way and a
  noisy KL is not fitted by a steep curve that starts late.
* the width, the rounding of the corner by training noise. Noisy training settles near the Gibbs state
  exp(-loss / T) of its objective, T set by the step size and the gradient noise. Near a second-order transition the
  loss along the order parameter w is Landau's -alpha w^2 + beta w^4 with alpha proportional to t, and the mean of
  w^2 -- to which the KL is proportional there -- is sqrt(T / beta) g(alpha / sqrt(beta T)), with g(y) = 2 E[w^2]
  under exp(y w^2 - w^4): y - 1/y on the active side, 1/|y| on the collapsed side, 0.68 at rho_c. So the KL is
  positive at rho_c and just outside it and below the optimum just inside it, which pulls a sharp hinge off rho_c:
  by up to 0.008 on the exact linear model averaged at T = 1e-4, against 0.0011 with the width fitted (tests).

rho_c is profiled on a grid of ``ONSET_GRID`` points, over the swept range and then over the window; the interval
is the seed bootstrap of ``analysis.intervals`` (each replicate refits every term), widened for few seeds like the
active-unit fit's, and at least +-``SHAPE_FLOOR`` of the gap between the sampled rho around the onset: there the
fitted shape alone places it, and its error in that gap is a systematic one the seeds cannot show (the
calibration's narrowest interval, 0.0003 wide at 8 seeds, missed the closed form by 0.0020 without it; the shape's
own error there: 0.0014).

When it does not apply: a transition that is not continuous in the KL (a jump), or a crossover broader than
the window (deep networks on real data, where units leave one by one). There the active-unit fit with its width
is the right description; this estimator is meant for models with a sharp, continuous onset. It also needs
runs near convergence: near rho_c the restoring force vanishes, so the runs within a few hundredths of rho_c
converge last and move the onset while they do (docs/calibration.md, "The budget").
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from analysis.intervals import (MIN_SEEDS, UNDETERMINED_TEXT, Interval, Undetermined, percentile_interval,
                                seed_bootstrap, small_sample_factor, widen)
from analysis.transition import ACTIVE_ABOVE, ACTIVE_BELOW, DIRECTIONS, gap_around

ONSET_WINDOW = 0.1  # runs within this distance in rho of rho_c enter the fit
ONSET_GRID = 1001  # candidate rho_c values over the swept range (0.0002 apart in a 0.2-wide window)
MIN_ACTIVE_LEVELS = 3  # distinct rho on the active side of a candidate: b, a and q need three
# Distinct rho the window holds on the collapsed side of the onset, reaching past ONSET_WINDOW when it must: the
# floor b is fitted there. A window whose collapsed side is a single rho at the corner -- a refinement that stopped
# just short of rho_c, the lattice's next point 0.1 away -- puts most seed resamples' onset at the window's edge, and
# the interval is "not determined" (15 of 20 replicates of posterior:3:0.5 on development seeds 3000-3159).
MIN_COLLAPSED_LEVELS = 2
# The fitted KL must rise over the window's active side by at least this fraction of the largest KL in the window:
# a flat KL (no onset in the window) fits any hinge position with a slope of ~0.
MIN_RISE_FRACTION = 0.1
FLUCTUATION_WIDTHS = (0.0, 0.002, 0.004, 0.006, 0.008)  # in rho: the rounding of the corner by training noise
FLUCTUATION_Y_MAX = 20.0  # the fluctuation curve is tabulated on |t / width| <= this, its tails used beyond
# The interval is at least +-SHAPE_FLOOR x the gap between the sampled rho around the onset: inside that gap the
# onset is placed by the fitted shape alone (no run samples it), and on the calibration model the shape's error there
# is up to 1/18 of the gap (the exact optimum, noise-free: 0.0014 at a 0.025 spacing; the KL at T = 1e-4: 0.0011),
# which seed resampling cannot see once the runs agree closely.
SHAPE_FLOOR = 0.1
# The first localisation, before the window: the boundary between the sampled rho whose median KL rises above this
# fraction of the range of the medians and those below it. A fit over the whole swept range cannot do it: over a
# lattice from 0.05 to 1 the KL saturates and bends far from rho_c, which no mildly curved hinge describes.
FIRST_GUESS_FRACTION = 0.1
RECENTRE_ROUNDS = 5  # the window is re-centred on the estimate until the runs inside it stop changing
BOOT_CHUNK = 50  # bootstrap replicates per profile: bounds the (replicates x candidates x 3 x 3) systems' memory


@dataclass(frozen=True)
class OnsetSettings:
    """Every setting that shapes the KL onset or its interval, frozen at these values before the held-out coverage
    measurement (docs/calibration.md): the calibration's ablation turns each off on held-out runs.

    curvature: fit the q h^2 term; widths: the corner roundings tried (0 = the sharp hinge); shape_floor: the
    interval is at least +- this fraction of the sampling gap around the estimate; widen_few_seeds: widen the
    bootstrap interval for few seeds (analysis.intervals.small_sample_factor); window: runs within this of rho_c;
    collapsed_levels: the window holds at least this many sampled rho on the collapsed side (0: the window only).

    collapsed_levels was added after the held-out check on seeds 3000-3159 (docs/calibration.md), designed on those
    runs, which are development seeds from then on."""

    curvature: bool = True
    widths: tuple[float, ...] = FLUCTUATION_WIDTHS
    shape_floor: float = SHAPE_FLOOR
    widen_few_seeds: bool = True
    window: float = ONSET_WINDOW
    collapsed_levels: int = MIN_COLLAPSED_LEVELS


FROZEN = OnsetSettings()


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


@functools.cache
def _fluctuation_table() -> tuple[np.ndarray, np.ndarray]:
    """g(y) = 2 E[w^2] for w with density proportional to exp(y w^2 - w^4), tabulated on |y| <= FLUCTUATION_Y_MAX
    (trapezoid rule on a w grid that reaches past the density's peak at w^2 = y / 2)."""
    y = np.linspace(-FLUCTUATION_Y_MAX, FLUCTUATION_Y_MAX, 801)
    w = np.linspace(0.0, 1.0, 4001)[None, :] * np.sqrt(np.maximum(y, 0.0)[:, None] / 2.0 + 12.0)
    log_density = y[:, None] * w**2 - w**4
    density = np.exp(log_density - log_density.max(axis=1, keepdims=True))
    return y, 2.0 * np.trapezoid(w**2 * density, w, axis=1) / np.trapezoid(density, w, axis=1)


def _hinge(t: np.ndarray | float, width: float) -> np.ndarray:
    """The KL's shape against t = rho_c - rho (signed): the sharp hinge (t)_+ at width 0, else width * g(t / width)
    with g of ``_fluctuation_table``, whose tails are y - 1/y (active side) and 1/|y| (collapsed side)."""
    t = np.asarray(t, dtype=np.float64)
    if width == 0:
        return np.clip(t, 0.0, None)
    y = t / width
    ys, gs = _fluctuation_table()
    far = np.where(np.abs(y) > FLUCTUATION_Y_MAX, y, 1.0)
    return width * np.where(y > FLUCTUATION_Y_MAX, y - 1.0 / far,
                            np.where(y < -FLUCTUATION_Y_MAX, -1.0 / far, np.interp(y, ys, gs)))


def _profile(x: np.ndarray, y: np.ndarray, weights: np.ndarray, grid: np.ndarray, settings: OnsetSettings
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(best candidate index, its corner width, the coefficients (b, a, q) there) per replicate (weights: replicates
    x runs) by weighted least squares of the hinge at every candidate and corner width. Candidates with fewer than
    MIN_ACTIVE_LEVELS active-side rho, a singular fit, or a curve that is not a mildly curved hinge (slope a > 0 at
    rho_c, changed by less than a over the active side) are skipped (index -1 when none is left). Every sum over
    runs is one matrix product (replicates x runs) @ (runs x candidates); the normal equations of all replicates
    and candidates are solved in one call per width. Without ``settings.curvature``, q = 0."""
    n = weights.shape[0]
    rows = np.arange(n)
    terms = 3 if settings.curvature else 2
    active_levels = (grid[:, None] > np.unique(x)[None, :]).sum(1)
    best_sse, best, best_width, best_coef = np.full(n, np.inf), np.full(n, -1), np.zeros(n), np.zeros((n, 3))
    for width in settings.widths:
        h = _hinge(grid[:, None] - x[None, :], width)
        basis = (np.ones_like(h), h, h * h)[:terms]
        moments = np.empty((n, grid.size, terms, terms))
        for i in range(terms):
            for j in range(i, terms):
                moments[..., i, j] = moments[..., j, i] = weights @ (basis[i] * basis[j]).T
        rhs = np.stack([weights @ (f * y).T for f in basis], axis=-1)  # (B, G, terms)
        scale = np.sqrt(np.einsum("...ii->...i", moments))  # solve the equilibrated system: h^2 is ~1e-4 of 1
        scale = np.where(scale > 0, scale, 1.0)
        normed = moments / (scale[..., :, None] * scale[..., None, :])
        ok = np.abs(np.linalg.det(normed)) > 1e-10
        normed[~ok] = np.eye(terms)
        coef = np.linalg.solve(normed, (rhs / scale)[..., None])[..., 0] / scale  # (B, G, terms)
        sse = (weights @ (y * y))[:, None] - np.einsum("bgp,bgp->bg", coef, rhs)
        if terms == 2:
            coef = np.concatenate([coef, np.zeros_like(coef[..., :1])], axis=-1)
        _, a, q = np.moveaxis(coef, -1, 0)
        h_max = _hinge(grid - x.min(), width)  # the active side's far end in the window, per candidate
        mild = np.abs(2.0 * q * h_max[None, :]) < a  # the slope stays within (0, 2a) over the active side
        sse = np.where(ok & mild & (active_levels >= MIN_ACTIVE_LEVELS)[None, :], sse, np.inf)
        g = np.argmin(sse, axis=1)
        better = sse[rows, g] < best_sse
        best_sse = np.where(better, sse[rows, g], best_sse)
        best, best_width = np.where(better, g, best), np.where(better, width, best_width)
        best_coef = np.where(better[:, None], coef[rows, g], best_coef)
    return best, best_width, best_coef


def _first_guess(x: np.ndarray, y: np.ndarray) -> float | None:
    """Where the KL leaves zero, model-free (units active at low x): midway between the highest sampled x whose
    median KL is above FIRST_GUESS_FRACTION of the medians' range and the next sampled x. None when the KL does not
    fall from low to high x."""
    levels = np.unique(x)
    medians = np.array([np.median(y[x == v]) for v in levels])
    span = medians.max() - medians.min()
    above = np.flatnonzero(medians > medians.min() + FIRST_GUESS_FRACTION * span)
    if span <= 0 or above.size == 0 or above[-1] == levels.size - 1:
        return None
    j = int(above[-1])
    return float(0.5 * (levels[j] + levels[j + 1]))


def fit_kl_onset(rho: Any, seed: Any, top_kl: Any, *, direction: str = ACTIVE_BELOW, level: float = 0.95,
                 n_boot: int = 500, rng: Any = None, settings: OnsetSettings = FROZEN) -> OnsetFit:
    """The KL onset of one configuration's runs (one entry per run: its rho, seed and final top-layer KL).

    The onset is first placed model-free (``_first_guess``), then fitted on the runs within ``settings.window`` of
    it, the window re-centred on the estimate until the runs inside stop changing: so a sweep over the whole
    range of rho (the KL saturating far from rho_c) is fitted where the hinge holds, as a sweep around rho_c is."""
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
    window = settings.window
    none = dict(rho_c=None, ci_low=None, ci_high=None, interval_undetermined=Undetermined.NO_FIT, slope=None,
                direction=direction)
    if np.unique(x).size < MIN_ACTIVE_LEVELS + 1:
        return OnsetFit(**none, n_runs=int(r.size), message=f"fewer than {MIN_ACTIVE_LEVELS + 1} rho values")
    centre = _first_guess(x, y)
    if centre is None:
        return OnsetFit(**none, n_runs=int(r.size), message="no KL onset located: the KL does not fall to its floor "
                                                            "inside the swept range")
    inside = None
    for _ in range(RECENTRE_ROUNDS):
        now = _window(x, centre, window, settings.collapsed_levels)
        if inside is not None and np.array_equal(now, inside):
            break
        inside = now
        xw, yw, sw = x[inside], y[inside], seed_idx[inside]
        if np.unique(xw).size < MIN_ACTIVE_LEVELS + 1:
            return OnsetFit(**none, n_runs=int(inside.sum()),
                            message=f"fewer than {MIN_ACTIVE_LEVELS + 1} rho values within {window:g} of the onset")
        grid = np.linspace(xw.min(), xw.max(), ONSET_GRID)
        best, width, coef = _profile(xw, yw, np.ones((1, xw.size)), grid, settings)
        if best[0] < 0:
            break
        centre = float(grid[best[0]])
    est, (_, a, q) = float(grid[best[0]]), coef[0]
    h = _hinge(est - xw.min(), float(width[0]))
    rise = a * h + q * h**2  # the fitted KL's rise over the active side
    if best[0] < 0 or rise <= MIN_RISE_FRACTION * np.abs(yw).max() or best[0] == grid.size - 1:
        why = ("the onset lies at the edge of the window" if best[0] == grid.size - 1
               else "the KL does not rise on the active side")
        return OnsetFit(**none, n_runs=int(inside.sum()), message=f"no KL onset located: {why}")
    interval = _interval(xw, yw, sw, grid, est, level=level, n_boot=n_boot, rng=gen, settings=settings)
    gap = gap_around(np.unique(xw), est)
    floor = 0.0 if gap is None else settings.shape_floor * (gap[1] - gap[0])
    floored = interval.determined and (interval.low > est - floor or interval.high < est + floor)
    if interval.determined:
        interval = Interval(min(interval.low, est - floor), max(interval.high, est + floor))
    lo, hi = (interval.low, interval.high) if sign > 0 else (_neg(interval.high), _neg(interval.low))
    rho_c = sign * est
    pct = f"{int(round(100 * level))}%"
    ci = (f"{pct} interval [{lo:.4f}, {hi:.4f}] by seed bootstrap ({n_boot} resamples of {n_seeds} seeds)"
          + (f", at least +-{floor:.4f} (a tenth of the gap between the sampled rho around it)" if floored else "")
          if interval.determined else f"{pct} interval not determined: {UNDETERMINED_TEXT[interval.undetermined]}")
    return OnsetFit(rho_c=rho_c, ci_low=lo, ci_high=hi, interval_undetermined=interval.undetermined, slope=float(a),
                    n_runs=int(inside.sum()), direction=direction,
                    message=f"KL onset rho_c = {rho_c:.4f} from {int(inside.sum())} runs within {window:g}; {ci}.")


def _window(x: np.ndarray, centre: float, window: float, collapsed_levels: int) -> np.ndarray:
    """The runs within `window` of `centre`, and on the collapsed side (x > centre) at least the runs of the
    `collapsed_levels` sampled rho nearest to it."""
    inside = np.abs(x - centre) <= window + 1e-12
    beyond = np.unique(x[x > centre])
    if collapsed_levels > 0 and beyond.size:
        inside |= (x > centre) & (x <= beyond[min(collapsed_levels, beyond.size) - 1] + 1e-12)
    return inside


def _neg(v: float | None) -> float | None:
    return None if v is None else -v


def _interval(x: np.ndarray, y: np.ndarray, seed_idx: np.ndarray, grid: np.ndarray, est: float, *, level: float,
              n_boot: int, rng: np.random.Generator, settings: OnsetSettings) -> Interval:
    n_seeds = int(np.unique(seed_idx).size)
    if n_boot == 0:
        return Interval.not_determined(Undetermined.NOT_COMPUTED)
    if n_seeds < MIN_SEEDS:
        return Interval.not_determined(Undetermined.TOO_FEW_SEEDS)
    _, seed_idx = np.unique(seed_idx, return_inverse=True)

    def statistic(mult: np.ndarray) -> np.ndarray:
        best = np.concatenate([_profile(x, y, mult[i:i + BOOT_CHUNK, seed_idx].astype(np.float64), grid,
                                        settings)[0]
                               for i in range(0, mult.shape[0], BOOT_CHUNK)])
        return np.where(best < 0, np.nan, np.where(best == grid.size - 1, np.inf, grid[best]))

    boot = seed_bootstrap(statistic, [n_seeds], n_resamples=n_boot, rng=rng)
    q_lo, q_hi = percentile_interval(boot, level)
    if not (math.isfinite(q_lo) and math.isfinite(q_hi)):
        return Interval.not_determined(Undetermined.UNBOUNDED_RESAMPLES)
    return Interval(*widen(est, q_lo, q_hi, small_sample_factor(n_seeds, level) if settings.widen_few_seeds else 1.0))

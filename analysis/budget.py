"""rho_c against the training budget: has it converged, or is it still moving?

Why: rho_c is measured at the end of a finite training run, and a transition that is still moving when training
stops is a property of the budget, not of the model. Every evaluation is already a row of the results table
(``step``), so rho_c can be fitted at each evaluation step that every run of a configuration reached, with the
same fit and interval as the final one (``analysis/transition.py``).

The verdict compares the last two budgets (of at most ``max_budgets`` evenly spaced common steps, so that with
hundreds of evaluations the last two are still a sizeable part of training apart):

* CONVERGED: the two intervals overlap AND rho_c moved by at most the tolerance, ``margin / 2`` (0.01 at the
  default --delta 0.02). Overlap alone is not enough (two wide intervals always overlap); a small shift alone is
  not enough (it may be noise). Why half the margin: the report calls two rho_c "similar" when their difference
  lies within +-margin; a configuration whose rho_c still moves by more than half of that per budget step could
  turn such a statement around within two more steps, so its number is not yet final at the resolution the
  comparisons work at.
* RISING / FALLING: either test fails; the direction is the sign of the last shift.
* NOT_DECIDED: a fit or interval is missing at one of the two budgets (too few seeds, no transition yet, ...).
* ONE_BUDGET: only one step is common to all runs.

A ladder (``critical_rho.py --until-converged``, which trains only the runs near the transition further, so runs
of one configuration end at different steps) is fitted at its rung steps (``analyze(budget_steps=...)``,
``python -m analysis --budget-steps``). At a budget each run contributes its latest evaluation at or before it: a
run stopped earlier keeps its last state (the ladder stops only runs whose rho lies far from the transition).
Where every run reached the step this is exactly the evaluation at that step. Without rung steps, runs of unequal
length are fitted at the steps every run reached (carrying a state forward is the ladder's assumption, not a
general one).

With three or more budgets, ``extrapolate`` fits the model rho_c(B) = rho_inf + a * B^(-gamma) through them: a
model of how rho_c approaches its converged value, with an interval from redrawing each budget's rho_c within its
own interval -- never a measurement (the report says so wherever it shows it).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np
import polars as pl

from analysis.compare import DEFAULT_MARGIN
from analysis.critical import CriticalResult, fit_run_table, one_blas_thread
from analysis.io import Results
from analysis.transition import STATUS_OK, TransitionFit

TOLERANCE_OF_MARGIN = 0.5  # the convergence tolerance as a fraction of the similarity margin (docstring)
DEFAULT_MAX_BUDGETS = 8


class BudgetVerdict(enum.Enum):
    CONVERGED = "converged"
    RISING = "rising"
    FALLING = "falling"
    NOT_DECIDED = "not_decided"
    ONE_BUDGET = "one_budget"


@dataclass(frozen=True)
class BudgetSeries:
    """One configuration's rho_c at each budget (step), and the verdict on the last two."""

    config_id: str
    steps: list[int]
    fits: list[TransitionFit]
    verdict: BudgetVerdict
    shift: float | None  # rho_c(last) - rho_c(previous), when both exist
    tolerance: float

    @property
    def still_moving(self) -> bool:
        return self.verdict in (BudgetVerdict.RISING, BudgetVerdict.FALLING)


def evaluations_query(results: Results) -> pl.LazyFrame:
    """Lazy query: the top-layer active units of every evaluation row (the few columns the budget fits need)."""
    return results.lf.select("sweep_id", "run_id", "step", "top_active_units")


def budget_verdict(previous: TransitionFit, last: TransitionFit, tolerance: float
                   ) -> tuple[BudgetVerdict, float | None]:
    """(verdict, shift) for the last two budgets (see the module docstring)."""
    if previous.status != STATUS_OK or last.status != STATUS_OK:
        return BudgetVerdict.NOT_DECIDED, None
    shift = last.rho_c - previous.rho_c
    if previous.ci_low is None or last.ci_low is None:
        return BudgetVerdict.NOT_DECIDED, shift
    overlap = previous.ci_low <= last.ci_high and last.ci_low <= previous.ci_high
    if overlap and abs(shift) <= tolerance:
        return BudgetVerdict.CONVERGED, shift
    return (BudgetVerdict.RISING if shift > 0 else BudgetVerdict.FALLING), shift


def common_steps(evals: pl.DataFrame, n_runs: int, max_budgets: int) -> list[int]:
    """Steps every one of ``n_runs`` runs reached, thinned to at most ``max_budgets`` evenly spaced ones (the last
    always kept)."""
    counts = evals.group_by("step").agg(pl.col("run_id").n_unique().alias("n"))
    return thin(counts.filter(pl.col("n") == n_runs)["step"].sort().to_list(), max_budgets)


def thin(steps: list[int], max_budgets: int) -> list[int]:
    """At most ``max_budgets`` evenly spaced entries of ``steps`` (the first and last kept)."""
    if len(steps) <= max_budgets:
        return steps
    keep = np.unique(np.round(np.linspace(0, len(steps) - 1, max_budgets)).astype(int))
    return [steps[i] for i in keep]


def budgets_of(runs: pl.DataFrame, rows: pl.DataFrame, max_budgets: int,
               budget_steps: list[int] | None) -> list[int]:
    """The budgets a configuration is fitted at (see the module docstring): a ladder's rung steps up to its last,
    else the steps every run reached."""
    if budget_steps:
        return thin(sorted(b for b in set(budget_steps) if b <= runs["step"].max()), max_budgets)
    return common_steps(rows, runs.height, max_budgets)


def at_budget(rows: pl.DataFrame, step: int) -> pl.DataFrame:
    """Each run's latest evaluation at or before ``step``."""
    return (rows.filter(pl.col("step") <= step).sort("step")
            .group_by("sweep_id", "run_id", maintain_order=True).last())


def fit_budgets(critical: CriticalResult, evals: pl.DataFrame, *, n_boot: int, seed: int = 0,
                margin: float = DEFAULT_MARGIN, max_budgets: int = DEFAULT_MAX_BUDGETS,
                budget_steps: list[int] | None = None) -> dict[str, BudgetSeries]:
    """rho_c of every configuration at each budget (``budgets_of``), and the convergence verdict.

    ``evals``: ``evaluations_query`` collected. The final budget reuses the configuration's main fit (every run's
    final evaluation: then the series ends in exactly the number of the rho_c table). ``budget_steps``: the rung
    steps of a ladder, for configurations whose runs ended at different steps.
    """
    tolerance = TOLERANCE_OF_MARGIN * margin
    keyed = evals.join(critical.runs.select("sweep_id", "run_id", "config_id", "rho", "seed", "top_dim"),
                       on=["sweep_id", "run_id"], how="inner")
    out: dict[str, BudgetSeries] = {}
    with one_blas_thread():
        for i, cfg in enumerate(critical.configs.iter_rows(named=True)):
            cid = cfg["config_id"]
            runs = critical.config_runs(cid)
            rows = keyed.filter(pl.col("config_id") == cid)
            steps = budgets_of(runs, rows, max_budgets, budget_steps)
            fits = []
            for j, step in enumerate(steps):
                if step == runs["step"].max():
                    fits.append(critical.fits[cid])
                    continue
                at = at_budget(rows, step).sort("rho", "seed")
                fits.append(fit_run_table(at, level=critical.level, n_boot=n_boot,
                                          rng=np.random.default_rng([seed, 2, i, j]),
                                          what=f"configuration {cid} ({cfg['label']}) at step {step}",
                                          direction=critical.fits[cid].direction))
            verdict, shift = (budget_verdict(fits[-2], fits[-1], tolerance) if len(fits) >= 2
                              else (BudgetVerdict.ONE_BUDGET, None))
            out[cid] = BudgetSeries(cid, steps, fits, verdict, shift, tolerance)
    return out


# --------------------------------------------------------------------------------------------------- wording
def budget_short_text(s: BudgetSeries) -> str:
    """A few words for the rho_c table, next to the number."""
    if s.still_moving:
        return f"still {s.verdict.value} ({s.shift:+.3f} since step {s.steps[-2]})"
    return {BudgetVerdict.CONVERGED: "converged", BudgetVerdict.NOT_DECIDED: "not decided",
            BudgetVerdict.ONE_BUDGET: "one budget only"}[s.verdict]


def budget_text(s: BudgetSeries) -> str:
    """The verdict in a sentence, naming the two budgets it compares."""
    if s.verdict is BudgetVerdict.ONE_BUDGET:
        if not s.steps:
            return "no evaluation step is common to all runs"
        return f"one evaluation step ({s.steps[0]}) is common to all runs: convergence with the budget cannot be judged"
    a, b = s.steps[-2], s.steps[-1]
    if s.verdict is BudgetVerdict.NOT_DECIDED:
        return (f"not decided: rho_c or its interval is missing at step {a} or {b} "
                f"({s.fits[-2].status.value} / {s.fits[-1].status.value})")
    if s.verdict is BudgetVerdict.CONVERGED:
        return (f"converged: rho_c moved {s.shift:+.4f} from step {a} to {b} (within ±{s.tolerance:g}, intervals "
                f"overlap)")
    why = "the intervals do not overlap" if abs(s.shift) <= s.tolerance else f"more than ±{s.tolerance:g}"
    return f"still {s.verdict.value}: rho_c moved {s.shift:+.4f} from step {a} to {b} ({why}); train longer"


# ---------------------------------------------------------------------------------------- extrapolation
@dataclass(frozen=True)
class Extrapolation:
    """The model rho_c(B) = rho_inf + a * B^(-gamma) fitted through a configuration's budgets: a model, not a
    measurement. ``rho_inf_low``/``high``: the interval of rho_inf from redrawing every budget's rho_c within its
    own interval (None where too few redraws could be fitted)."""

    rho_inf: float
    a: float
    gamma: float
    rho_inf_low: float | None
    rho_inf_high: float | None
    level: float

    def at(self, budget: np.ndarray) -> np.ndarray:
        return self.rho_inf + self.a * np.asarray(budget, dtype=np.float64) ** (-self.gamma)


MIN_EXTRAPOLATION_BUDGETS = 3  # three parameters: fewer budgets do not determine the model
_GAMMA_BOUNDS = (0.05, 4.0)  # a decay slower than B^-0.05 is no approach at all; faster than B^-4 is a step


def _power_law_fit(budgets: np.ndarray, rho_c: np.ndarray, sigma: np.ndarray) -> tuple[float, float, float] | None:
    """Weighted least squares of rho_inf + a * B^-gamma, gamma within _GAMMA_BOUNDS (None if nothing fits).

    Why profiled: for a fixed gamma the model is linear in (rho_inf, a), which have a closed form; only gamma is
    searched -- on a log grid over its bounds, then refined by SciPy's bounded scalar minimiser. That finds the
    global optimum (a general curve fit from a start point may stop at a local one) and costs about a
    millisecond, so the extrapolation's parametric bootstrap and the ladder's fit after every rung stay cheap."""
    from scipy.optimize import minimize_scalar

    scale = budgets[-1]
    x = budgets / scale  # B in units of the largest budget: a is then the distance from rho_inf at that budget
    w = 1.0 / np.square(sigma)

    def profile(gamma: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(weighted squared error, rho_inf, a) at each gamma."""
        f = x[None, :] ** -np.atleast_1d(gamma)[:, None]
        sw, sf, sff = w.sum(), f @ w, (f * f) @ w
        sy, sfy = w @ rho_c, f @ (w * rho_c)
        det = sw * sff - sf * sf
        with np.errstate(divide="ignore", invalid="ignore"):
            a = np.where(det > 1e-12 * sw * sff, (sw * sfy - sf * sy) / det, 0.0)
        rho_inf = (sy - a * sf) / sw
        sse = np.square(rho_c[None, :] - rho_inf[:, None] - a[:, None] * f) @ w
        return sse, rho_inf, a

    grid = np.geomspace(*_GAMMA_BOUNDS, 161)
    sse, _, _ = profile(grid)
    if not np.isfinite(sse).any():
        return None
    k = int(np.nanargmin(sse))
    lo, hi = grid[max(k - 1, 0)], grid[min(k + 1, grid.size - 1)]
    gamma = float(minimize_scalar(lambda g: float(profile(g)[0][0]), bounds=(lo, hi), method="bounded",
                                  options={"xatol": 1e-7}).x)
    _, rho_inf, a = profile(gamma)
    if not (np.isfinite(rho_inf[0]) and np.isfinite(a[0])):
        return None
    return float(rho_inf[0]), float(a[0]) * scale ** gamma, gamma


def extrapolate(series: BudgetSeries, *, level: float = 0.95, n_draws: int = 300,
                seed: int = 0) -> Extrapolation | None:
    """rho_c(B) = rho_inf + a * B^(-gamma) through the budgets that have rho_c and an interval (None with fewer than
    three, or when the model cannot be fitted). The interval of rho_inf: refits to each budget's rho_c redrawn from
    a normal with its interval's half-width as ``level``-interval (parametric bootstrap), percentiles of rho_inf."""
    from scipy import stats

    pts = [(b, f) for b, f in zip(series.steps, series.fits) if f.status == STATUS_OK and f.ci_low is not None]
    if len(pts) < MIN_EXTRAPOLATION_BUDGETS:
        return None
    budgets = np.array([float(b) for b, _ in pts])
    rho_c = np.array([f.rho_c for _, f in pts])
    z = float(stats.norm.ppf(0.5 + level / 2))
    sd = np.maximum(np.array([(f.ci_high - f.ci_low) / 2 for _, f in pts]) / z, 1e-6)
    best = _power_law_fit(budgets, rho_c, sd)
    if best is None:
        return None
    rng = np.random.default_rng(seed)
    draws = [_power_law_fit(budgets, rho_c + rng.normal(0.0, sd), sd) for _ in range(n_draws)]
    inf = np.array([d[0] for d in draws if d is not None])
    low = high = None
    if inf.size >= n_draws // 2:
        low, high = (float(v) for v in np.quantile(inf, [0.5 - level / 2, 0.5 + level / 2]))
    return Extrapolation(*best, low, high, level)


def extrapolation_text(e: Extrapolation) -> str:
    interval = (f"[{e.rho_inf_low:.3f}, {e.rho_inf_high:.3f}]" if e.rho_inf_low is not None
                else "(interval not determined)")
    return (f"model, not a measurement: ρc(B) = ρ∞ + a·B^−γ gives ρ∞ = {e.rho_inf:.3f} {interval}, "
            f"γ = {e.gamma:.2f}")

"""rho_c against the training budget: has it converged, or is it still moving?

Why: rho_c is measured at the end of a finite training run, and a transition that is still moving when training
stops is a property of the budget, not of the model. Every evaluation is already a row of the results table
(``step``), so rho_c can be fitted at each evaluation step that every run of a configuration reached, with the
same fit and interval as the final one (``analysis/transition.py``).

The verdict (``budget_verdict``, the one rule the report and the ladder use) looks at the trend, not only at the
last step (of at most ``max_budgets`` evenly spaced common steps, so that with hundreds of evaluations the budgets
are still a sizeable part of training apart). The tolerance is ``margin / 2`` (0.01 at the default --delta 0.02).

* CONVERGED needs all three of: (1) at least three budgets; (2) the last two agree: their intervals overlap AND
  rho_c moved by at most the tolerance (overlap alone is not enough -- two wide intervals always overlap; a small
  shift alone is not enough -- it may be noise); (3) the extrapolated limit agrees with the last budget:
  ``|rho_inf - rho_c(last)| <= tolerance``, where rho_inf comes from ``extrapolate`` (below). Why half the margin:
  the report calls two rho_c "similar" when their difference lies within +-margin; a rho_c that is still more
  than half of that from where it is going could turn such a statement around, so its number is not yet final at
  the resolution the comparisons work at.
* RISING / FALLING: the last two budgets disagree (direction: the sign of the last shift), or they agree but the
  extrapolated limit lies more than the tolerance from the last budget (direction: towards rho_inf) -- a rho_c
  that approaches its limit slowly moves little per budget step although it is still far from it.
* NEEDS_BUDGETS: the last two agree but there are only two budgets: one shift says nothing about the trend
  ("not decided: needs a third budget").
* NOT_DECIDED: a fit or interval is missing at one of the last two budgets (too few seeds, no transition yet,
  ...), or the trend could not be fitted.
* ONE_BUDGET: only one step is common to all runs.

Why the point rho_inf and not its interval in (3): an extrapolation through three budgets has a wide interval (the
lever from the last budget to infinity multiplies the rungs' own uncertainty: on the digits ladder, rungs with
intervals 0.01-0.04 wide), so "rho_inf's interval inside +-tolerance" would ask for more precision than any rung
has and call nothing converged, and "the intervals overlap" would pass every noisy series. The point value,
together with the last two budgets' agreement, is the rule whose errors the calibration counts
(``benchmarks/verdict_calibration.py``: on the linear model, where rho_c is known, how often "converged" is said of
an estimate farther than the tolerance from the closed form); the interval is shown next to it.

A ladder (``critical_rho.py --until-converged``, which trains only the runs near the transition further, so runs
of one configuration end at different steps) is fitted at its rung steps (``analyze(budget_steps=...)``,
``python -m analysis --budget-steps``). At a budget each run contributes its latest evaluation at or before it: a
run stopped earlier keeps its last state (the ladder stops only runs whose rho lies far from the transition).
Where every run reached the step this is exactly the evaluation at that step. Without rung steps, runs of unequal
length are fitted at the steps every run reached (carrying a state forward is the ladder's assumption, not a
general one).

The extrapolation (``extrapolate``): rho_c(B) = rho_inf + a * t(B)^(-gamma) with gamma in [1/2, 1], fitted
through the last three budgets that have an interval, with an interval for rho_inf from redrawing each budget's
rho_c within its own interval. t(B) is the training time in steps at the initial learning rate: B itself at a
constant lr, sum_k (1 + k/d)^-p over the first B updates under the decay lr / (1 + k/d)^p (``effective_steps``).
Why effective time: under a decaying lr a doubling of the steps adds only a bounded amount of optimisation (for
p = 1, d ln 2 as B grows), so a rung-to-rung shift that looks small in steps is a large part of what is to come.
Why gamma in [1/2, 1]: 1 (the stochastic-gradient rate, 1/t) is the fastest approach the model credits -- a
series that moved +0.027 then +0.008 is not assumed to stop there, as a free power (gamma 1.75 through those
three points) would -- and 1/2 the slowest it follows: with gamma free down to 0.05, a fit through three to five
noisy budgets extrapolates their noise (on flat series with rung noise of sd 0.002-0.01 it put rho_inf more than
0.01 from the last budget in 25-41% of draws; bounded at 1/2, in 0-10%). Why the last three: the power law is an
asymptotic form, and early budgets, far from it, pull the fit hardest. A model, never a measurement (the report
says so wherever it shows it).
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
    NEEDS_BUDGETS = "needs_budgets"  # the last two agree, but two budgets show no trend: needs a third
    ONE_BUDGET = "one_budget"


@dataclass(frozen=True)
class BudgetSeries:
    """One configuration's rho_c at each budget (step), the extrapolated limit and the verdict (module docstring)."""

    config_id: str
    steps: list[int]
    fits: list[TransitionFit]
    verdict: BudgetVerdict
    shift: float | None  # rho_c(last) - rho_c(previous), when both exist
    tolerance: float
    extrapolation: "Extrapolation | None" = None  # the trend's limit, through the last three budgets
    lr_decay_steps: int = 0  # the configuration's lr schedule (effective_steps): the extrapolation's time axis
    lr_decay_power: float = 1.0

    @property
    def still_moving(self) -> bool:
        return self.verdict in (BudgetVerdict.RISING, BudgetVerdict.FALLING)


def evaluations_query(results: Results) -> pl.LazyFrame:
    """Lazy query: the top-layer active units of every evaluation row (the few columns the budget fits need)."""
    return results.lf.select("sweep_id", "run_id", "step", "top_active_units")


def budget_verdict(fits: list[TransitionFit], extrapolation: "Extrapolation | None", tolerance: float
                   ) -> tuple[BudgetVerdict, float | None]:
    """(verdict, shift) of a configuration's fits at its budgets, oldest first, and the extrapolation through them
    (``extrapolate``): the one convergence rule of the report and the ladder (see the module docstring)."""
    if len(fits) < 2:
        return BudgetVerdict.ONE_BUDGET, None
    previous, last = fits[-2], fits[-1]
    if previous.status != STATUS_OK or last.status != STATUS_OK:
        return BudgetVerdict.NOT_DECIDED, None
    shift = last.rho_c - previous.rho_c
    if previous.ci_low is None or last.ci_low is None:
        return BudgetVerdict.NOT_DECIDED, shift
    overlap = previous.ci_low <= last.ci_high and last.ci_low <= previous.ci_high
    if not (overlap and abs(shift) <= tolerance):
        return (BudgetVerdict.RISING if shift > 0 else BudgetVerdict.FALLING), shift
    if len(fits) < MIN_EXTRAPOLATION_BUDGETS:
        return BudgetVerdict.NEEDS_BUDGETS, shift
    if extrapolation is None:
        return BudgetVerdict.NOT_DECIDED, shift
    ahead = extrapolation.rho_inf - last.rho_c
    if abs(ahead) <= tolerance:
        return BudgetVerdict.CONVERGED, shift
    return (BudgetVerdict.RISING if ahead > 0 else BudgetVerdict.FALLING), shift


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
    configs = critical.configs
    keyed = evals.join(critical.runs.select("sweep_id", "run_id", "config_id", "rho", "seed", "top_dim"),
                       on=["sweep_id", "run_id"], how="inner")
    out: dict[str, BudgetSeries] = {}
    with one_blas_thread():
        for i, cfg in enumerate(configs.iter_rows(named=True)):
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
            schedule = dict(lr_decay_steps=int(cfg.get("lr_decay_steps") or 0),
                            lr_decay_power=float(cfg.get("lr_decay_power") or 1.0))
            model = extrapolate(BudgetSeries(cid, steps, fits, BudgetVerdict.NOT_DECIDED, None, tolerance,
                                             **schedule), level=critical.level, seed=seed)
            verdict, shift = budget_verdict(fits, model, tolerance)
            out[cid] = BudgetSeries(cid, steps, fits, verdict, shift, tolerance, model, **schedule)
    return out


# --------------------------------------------------------------------------------------------------- wording
def _limit_is_ahead(s: BudgetSeries) -> bool:
    """Whether a RISING/FALLING verdict comes from the extrapolation (the last two budgets agreed)."""
    return (s.still_moving and s.shift is not None and abs(s.shift) <= s.tolerance
            and s.extrapolation is not None and abs(s.extrapolation.rho_inf - s.fits[-1].rho_c) > s.tolerance
            and s.fits[-2].ci_low is not None and s.fits[-2].ci_low <= s.fits[-1].ci_high
            and s.fits[-1].ci_low <= s.fits[-2].ci_high)


def budget_short_text(s: BudgetSeries) -> str:
    """A few words for the rho_c table, next to the number."""
    if s.still_moving:
        if _limit_is_ahead(s):
            return f"still {s.verdict.value} (trend's limit {s.extrapolation.rho_inf:.3f})"
        return f"still {s.verdict.value} ({s.shift:+.3f} since step {s.steps[-2]})"
    return {BudgetVerdict.CONVERGED: "converged", BudgetVerdict.NOT_DECIDED: "not decided",
            BudgetVerdict.NEEDS_BUDGETS: "not decided (needs a third budget)",
            BudgetVerdict.ONE_BUDGET: "one budget only"}[s.verdict]


def budget_text(s: BudgetSeries) -> str:
    """The verdict in a sentence, naming the two budgets it compares."""
    if s.verdict is BudgetVerdict.ONE_BUDGET:
        if not s.steps:
            return "no evaluation step is common to all runs"
        return f"one evaluation step ({s.steps[0]}) is common to all runs: convergence with the budget cannot be judged"
    a, b = s.steps[-2], s.steps[-1]
    moved = f"rho_c moved {s.shift:+.4f} from step {a} to {b}" if s.shift is not None else ""
    limit = (f"the trend's limit ρ∞ = {s.extrapolation.rho_inf:.3f} is {s.extrapolation.rho_inf - s.fits[-1].rho_c:+.4f} "
             f"from the last budget" if s.extrapolation is not None and s.fits[-1].rho_c is not None else "")
    if s.verdict is BudgetVerdict.NOT_DECIDED:
        if s.fits[-2].ci_low is None or s.fits[-1].ci_low is None:
            return (f"not decided: rho_c or its interval is missing at step {a} or {b} "
                    f"({s.fits[-2].status.value} / {s.fits[-1].status.value})")
        return f"not decided: {moved}, but the trend through the last three budgets could not be fitted"
    if s.verdict is BudgetVerdict.NEEDS_BUDGETS:
        return (f"not decided (needs a third budget): {moved} (within ±{s.tolerance:g}, intervals overlap), but "
                f"two budgets show no trend")
    if s.verdict is BudgetVerdict.CONVERGED:
        return (f"converged: {moved} (within ±{s.tolerance:g}, intervals overlap) and {limit} (within "
                f"±{s.tolerance:g})")
    if _limit_is_ahead(s):
        return (f"still {s.verdict.value}: {moved} (within ±{s.tolerance:g}), but {limit} (more than "
                f"±{s.tolerance:g}); train longer")
    why = "the intervals do not overlap" if abs(s.shift) <= s.tolerance else f"more than ±{s.tolerance:g}"
    return f"still {s.verdict.value}: {moved} ({why}); train longer"


# ---------------------------------------------------------------------------------------- extrapolation
MIN_EXTRAPOLATION_BUDGETS = 3  # three parameters: fewer budgets do not determine the model


def effective_steps(steps: np.ndarray | list[float], decay_steps: int = 0, power: float = 1.0) -> np.ndarray:
    """t(B): the training time of the first B updates in steps at the initial lr, sum_{k=1..B} (1 + k/d)^-p
    (ouvae/config.py: lr_decay_steps d, lr_decay_power p); B itself at a constant lr (d = 0).

    The sum by the midpoint rule, integral_{1/2}^{B+1/2} (1 + x/d)^-p dx, in closed form: its error is below
    p / (24 d) steps in all (the summand's curvature), far below a rung."""
    b = np.asarray(steps, dtype=np.float64)
    if decay_steps <= 0:
        return b
    d = float(decay_steps)
    lo, hi = 1.0 + 0.5 / d, 1.0 + (b + 0.5) / d
    if power == 1.0:
        return d * np.log(hi / lo)
    return d / (1.0 - power) * (hi ** (1.0 - power) - lo ** (1.0 - power))


@dataclass(frozen=True)
class Extrapolation:
    """The trend rho_c(B) = rho_inf + a * t(B)^(-gamma), gamma in [1/2, 1], through a configuration's last three
    budgets (t: ``effective_steps`` of its lr schedule): a model, not a measurement. ``rho_inf_low``/``high``: the
    interval of rho_inf from redrawing every budget's rho_c within its own interval (None where too few redraws
    could be fitted)."""

    rho_inf: float
    a: float
    gamma: float
    rho_inf_low: float | None
    rho_inf_high: float | None
    level: float
    budgets: tuple[int, ...] = ()  # the steps the model goes through
    lr_decay_steps: int = 0
    lr_decay_power: float = 1.0

    def at(self, budget: np.ndarray) -> np.ndarray:
        """The model at training step(s) ``budget``."""
        t = effective_steps(budget, self.lr_decay_steps, self.lr_decay_power)
        return self.rho_inf + self.a * t ** (-self.gamma)


# The approach rates the model may take (module docstring): 1, the stochastic-gradient rate, is the fastest it
# credits (a faster approach is never assumed, so the verdict errs towards "still moving"); 1/2 the slowest it
# follows -- below it three noisy budgets cannot tell a slow approach from noise (with gamma down to 0.05, 25-41% of
# flat series with rung noise of sd 0.002-0.01 had rho_inf more than 0.01 from the last budget; with 1/2, 0-10%).
_GAMMA_BOUNDS = (0.5, 1.0)


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

    grid = np.geomspace(*_GAMMA_BOUNDS, 41)
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
    """rho_c(B) = rho_inf + a * t(B)^(-gamma) through the last three budgets that have rho_c and an interval (None
    with fewer, or when the model cannot be fitted). The interval of rho_inf: refits to each budget's rho_c redrawn
    from a normal with its interval's half-width as ``level``-interval (parametric bootstrap), percentiles of
    rho_inf."""
    from scipy import stats

    pts = [(b, f) for b, f in zip(series.steps, series.fits) if f.status == STATUS_OK and f.ci_low is not None]
    pts = pts[-MIN_EXTRAPOLATION_BUDGETS:]
    if len(pts) < MIN_EXTRAPOLATION_BUDGETS or len({b for b, _ in pts}) < len(pts):
        return None
    steps = tuple(int(b) for b, _ in pts)
    budgets = effective_steps(steps, series.lr_decay_steps, series.lr_decay_power)
    if np.any(budgets <= 0):
        return None
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
    return Extrapolation(*best, low, high, level, steps, series.lr_decay_steps, series.lr_decay_power)


def extrapolation_text(e: Extrapolation) -> str:
    interval = (f"[{e.rho_inf_low:.3f}, {e.rho_inf_high:.3f}]" if e.rho_inf_low is not None
                else "(interval not determined)")
    clock = ("B in steps" if e.lr_decay_steps <= 0 else
             f"t = steps at the initial lr under the decay (d = {e.lr_decay_steps}, power {e.lr_decay_power:g})")
    return (f"model, not a measurement: ρc = ρ∞ + a·t^−γ through steps {', '.join(map(str, e.budgets))} ({clock}) "
            f"gives ρ∞ = {e.rho_inf:.3f} {interval}, γ = {e.gamma:.2f}")

"""``critical_rho.py --until-converged``: a ladder of training budgets that stops when rho_c stops moving.

Every rho_c a finite budget gives is a crossover of that budget. The ladder trains the grid to a first budget (a
rung), fits every latent configuration's rho_c with the analysis's own code (``analysis.report.analyze`` on the
results table, at the rung steps: ``analysis/budget.py``), and continues runs from their own checkpoints to the
next rung (budgets x ``--rung-factor``, 2 by default, up to ``--max-epochs``/``--max-steps``). A configuration stops
when the analysis calls its rho_c CONVERGED (``analysis.budget.budget_verdict``: the same rule and tolerance as
the report's budget section -- at least three rungs, the last two agreeing, and the trend's extrapolated limit
within the tolerance of the last rung); the sweep stops when every configuration has, or at the maximum budget.
Each rung's line shows the extrapolated limit rho_inf with its interval next to the rung's rho_c.

Why a sequence of Tune experiments, one per rung (``<storage>/ray/<name>/rung-<k>``), and not a searcher or a
scheduler: a rung is a barrier -- its fit needs every run of the rung -- and what a rung trains is a plain grid
of trials, so Tune's grid, retries (``--max-failures``), populations and experiment snapshot apply unchanged.
``--resume`` restores the rung's experiment with Tune's own ``Tuner.restore``; the ladder keeps only a small
state of its own (``ouvae_ladder.json`` beside the rungs, rewritten whole with ``sweeps.storage.write_json``):
the rung budgets, each run's lineage (its results file and newest trial folder), the trials of the rung in
progress and the per-rung fits. It is written before a rung starts and after it is fitted, so a driver killed
anywhere resumes at the rung it reached: a rung whose experiment exists is restored (finished trials are not
run again), one that never got its first snapshot starts again (its rows land in the same files, upserted).

A run continues, it is never retrained: its trial at the next rung starts from the final checkpoint of its
previous trial (``continue_from``) with the larger budget, and ``Population.from_checkpoint`` makes that the run
trained to the larger budget in one go (rows, parameters, noise stream; tested bit for bit). Its rows go to the
same results file (``results_file_id``) under the same run id, upserted by step: the row at the old budget's end
becomes the one-go run's (no longer final). Rung budgets lie on the evaluation cadence (every ``eval_every``
epochs), so that row exists in the one-go run; off-cadence budgets are refused before any training.

Which runs continue (``--continue near``, the default; ``all`` continues every run). A population continues
whole (its members share one noise stream, so a member cut out of it would no longer be the run it was): the
ladder trains populations of one rho each (its seeds), so continuing is chosen per rho value:

* rho inside the window [ci_low - tol - down, ci_high + tol + up] continues, where tol is the analysis's
  convergence tolerance and up/down are twice the last shift of rho_c in its direction (before a shift is known,
  twice the interval's width both ways). Why twice the last shift: a rho_c that approaches its limit moves less
  with every doubling of the budget, so the next move is smaller than the last; two of them leave room for a
  slower approach. The window follows the drift, so a collapsed run far above a rising rho_c is picked up again
  (from its own checkpoint, at whatever budget it stopped) once the transition comes near it;
* plus the nearest sampled rho below and above the window, so the step is measured on both sides at the new
  budget;
* every other run keeps its last state in the fit (``analysis/budget.py``: its latest evaluation): far from the
  transition the top layer is all active or all collapsed, and more training does not move it across;
* when rho_c or its interval is not determined, every run of the configuration continues.

With ``--adaptive`` the ladder also adds rho values where the transition moved: when rho_c lies in a gap of the
sampled rho values wider than twice ``--rho-spacing``, one new rho at the gap's middle (on the spacing's lattice),
with every seed, is trained from scratch to the next rung's budget -- which is the run trained to it in one go. Why
one rho with every seed: the seed bootstrap and the pooled fit behave best on a balanced design (sweeps/refine.py);
why in the gap around rho_c: a point there narrows the interval the next verdict compares.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from typing import Any, Callable

from analysis.budget import BudgetSeries, BudgetVerdict, TOLERANCE_OF_MARGIN
from analysis.compare import DEFAULT_MARGIN
from analysis.errors import AnalysisError
from analysis.transition import STATUS_OK, TransitionFit
from ouvae.config import Config, format_latent_dims
from ouvae.data import load_config_dataset
from sweeps import experiment
from sweeps.errors import SweepError
from sweeps.plan import CriticalGrid, group_into_populations
from sweeps.protocol import CHECKPOINT_FOLDER, LADDER_KEY, POPULATION_KEY
from sweeps.storage import SweepPaths, join, read_json, write_json

FORMAT = "ouvae-ladder"
STATE_VERSION = 1
TOLERANCE = TOLERANCE_OF_MARGIN * DEFAULT_MARGIN  # the analysis's convergence tolerance on rho_c
POLICIES = ("near", "all")


# ----- the rungs -----------------------------------------------------------------------------------------------
def rung_budgets(first: int, maximum: int, factor: float, cadence: int, unit: str) -> list[int]:
    """Budgets first, first x factor, ... (rounded up to the evaluation cadence) up to `maximum`, which is the last.
    SweepError for a budget off the cadence, a maximum below the first rung or a factor <= 1."""
    if factor <= 1:
        raise SweepError(f"--rung-factor {factor:g} must be > 1 (2 doubles the budget at every rung)")
    if maximum < first:
        raise SweepError(f"--max-{unit} {maximum} is below the first rung's {first} {unit}: give a larger maximum")
    for what, value in (("first rung", first), (f"--max-{unit}", maximum)):
        if value % cadence:
            raise SweepError(f"the {what}'s {value} {unit} is not on the evaluation cadence (every {cadence} {unit}): "
                             f"the run trained in one go would have no evaluation there; give a multiple of {cadence}")
    out = [first]
    while out[-1] < maximum:
        out.append(min(maximum, cadence * math.ceil(out[-1] * factor / cadence)))
    return out


def cadence_of(base: Config, unit: str) -> int:
    """The evaluation cadence in `unit`: every eval_every epochs (in steps: that many epochs of batches)."""
    if unit == "epochs":
        return base.eval_every
    data = load_config_dataset(base)
    n = data.train.shape[0] if base.n_train is None else min(base.n_train, data.train.shape[0])
    return math.ceil(n / base.batch_size) * base.eval_every


# ----- which runs continue -----------------------------------------------------------------------------------------
def continue_window(fit: TransitionFit, shift: float | None) -> tuple[float, float] | None:
    """The rho range whose runs continue (see the module docstring); None: every run continues."""
    if fit.status != STATUS_OK or fit.ci_low is None or fit.ci_high is None:
        return None
    drift = abs(shift) if shift is not None else fit.ci_high - fit.ci_low
    up = 2 * drift if shift is None or shift > 0 else 0.0
    down = 2 * drift if shift is None or shift < 0 else 0.0
    return fit.ci_low - TOLERANCE - down, fit.ci_high + TOLERANCE + up


def rhos_to_continue(rhos: list[float], window: tuple[float, float] | None) -> list[float]:
    """The sampled rho values inside the window, plus the nearest one outside on each side."""
    rhos = sorted(set(rhos))
    if window is None:
        return rhos
    lo, hi = window
    inside = [r for r in rhos if lo <= r <= hi]
    below, above = [r for r in rhos if r < lo], [r for r in rhos if r > hi]
    return sorted(inside + below[-1:] + above[:1])


def rho_to_add(rhos: list[float], fit: TransitionFit, spacing: float) -> float | None:
    """--adaptive: the middle of the gap of sampled rho values that holds rho_c, on the spacing's lattice, when that
    gap is wider than twice the spacing (see the module docstring); None otherwise."""
    if fit.status != STATUS_OK or fit.rho_c is None:
        return None
    levels = sorted(set(rhos))
    for a, b in zip(levels, levels[1:]):
        if a <= fit.rho_c <= b and b - a > 2 * spacing + 1e-9:
            middle = round(round((a + b) / 2 / spacing) * spacing, 6)
            return middle if a < middle < b else None
    return None


# ----- the ladder's state ----------------------------------------------------------------------------------------
@dataclass
class RungFit:
    """One configuration at one rung: its rho_c (analysis), the verdict against its previous rung, the compute."""

    rung: int
    step: int
    status: str
    rho_c: float | None
    ci_low: float | None
    ci_high: float | None
    verdict: str
    shift: float | None
    runs_trained: int
    member_steps: int
    # the trend's extrapolated limit (analysis.budget.extrapolate; None before three rungs). Defaults: a state
    # written before they existed still loads.
    rho_inf: float | None = None
    rho_inf_low: float | None = None
    rho_inf_high: float | None = None

    @classmethod
    def of(cls, rung: int, step: int, series: BudgetSeries, runs_trained: int, member_steps: int) -> "RungFit":
        f, e = series.fits[-1], series.extrapolation
        return cls(rung, step, f.status.value, f.rho_c, f.ci_low, f.ci_high, series.verdict.value, series.shift,
                   runs_trained, member_steps, *((e.rho_inf, e.rho_inf_low, e.rho_inf_high) if e else ()))

    def line(self, label: str, budget: str) -> str:
        interval = (f"[{self.ci_low:.3f}, {self.ci_high:.3f}]" if self.ci_low is not None else "(no interval)")
        rho_c = f"rho_c {self.rho_c:.3f} {interval}" if self.rho_c is not None else f"rho_c: {self.status}"
        shift = f"shift {self.shift:+.3f}" if self.shift is not None else "shift -"
        limit = ("trend's limit -" if self.rho_inf is None else
                 f"trend's limit {self.rho_inf:.3f}" + (f" [{self.rho_inf_low:.3f}, {self.rho_inf_high:.3f}]"
                                                        if self.rho_inf_low is not None else ""))
        return (f"  rung {self.rung} ({budget}) {label}: {rho_c}, {limit}, {shift}, "
                f"{self.verdict.replace('_', ' ')}; {self.runs_trained} runs trained, {self.member_steps:,} "
                f"member-steps")


class LadderState:
    """The ladder's own small state (see the module docstring), as plain JSON."""

    def __init__(self, data: dict[str, Any]):
        self.data = data

    @classmethod
    def new(cls, unit: str, budgets: list[int], policy: str, plan: list[dict[str, Any]]) -> "LadderState":
        return cls({"format": FORMAT, "version": STATE_VERSION, "unit": unit, "budgets": budgets, "policy": policy,
                    "rung": 0, "plan": plan, "rung_steps": [], "lineages": {}, "configs": {}, "finished": False})

    @classmethod
    def load(cls, uri: str) -> "LadderState | None":
        data = read_json(uri)
        if data is None:
            return None
        if data.get("format") != FORMAT or data.get("version") != STATE_VERSION:
            raise SweepError(f"{uri} is not a ladder state this version reads (format {data.get('format')!r}, "
                             f"version {data.get('version')}): start the sweep again under a new --name")
        return cls(data)

    def save(self, uri: str) -> None:
        write_json(uri, self.data)

    def __getattr__(self, key: str) -> Any:
        try:
            return self.__dict__["data"][key]
        except KeyError:
            raise AttributeError(key) from None

    def config_done(self, label: str) -> str | None:
        return self.configs.get(label, {}).get("done")

    def fits(self, label: str) -> list[RungFit]:
        return [RungFit(**r) for r in self.configs.get(label, {}).get("rungs", [])]

    @property
    def member_steps(self) -> int:
        return sum(r["member_steps"] for c in self.configs.values() for r in c["rungs"])


# ----- the driver ----------------------------------------------------------------------------------------------------
def group_label(group: dict[str, Any], grid: CriticalGrid) -> str:
    """A configuration's name in the ladder's lines and state: its latent sizes (and reading, when there are two)."""
    dims = format_latent_dims(group["latent_dims"])
    return f"{dims} {group['smooth_space']}" if len(grid.spaces) > 1 else dims


def group_of(trial: dict[str, Any]) -> dict[str, Any]:
    """The configuration a trial's population belongs to (sweeps.plan.CriticalGrid.groups)."""
    return {"latent_dims": list(trial["latent_dims"]), "smooth_space": trial.get("smooth_space")}


def population_trials(grid: CriticalGrid, group: dict[str, Any], rho: float, size: int) -> list[dict[str, Any]]:
    """The trials of one configuration at one rho: its seeds in populations of at most `size`."""
    configs = [grid.config_for(group, rho, s) for s in grid.seeds]
    return [{**group, "members": [{"rho": c.rho, "seed": c.seed} for c in chunk]}
            for chunk in group_into_populations(configs, size)]


def first_plan(grid: CriticalGrid, size: int) -> list[dict[str, Any]]:
    """Rung 0's trials: per configuration and rho, its seeds in populations of at most `size`."""
    return [t for group in grid.groups for rho in grid.rhos for t in population_trials(grid, group, rho, size)]


@dataclass
class Ladder:
    """Runs the rungs (``run``); the Tune-facing pieces come from critical_rho.py."""

    args: argparse.Namespace
    name: str
    paths: SweepPaths
    grid: CriticalGrid
    base_space: dict[str, Any]  # the trial constants (preset, fixed overrides, num_threads)
    unit: str
    budgets: list[int]
    policy: str
    population: int
    spacing: float | None  # --adaptive: the finest rho spacing of added values; None adds none
    trainable: Callable[[dict[str, Any]], None]
    label: Callable[[dict[str, Any]], str]  # a trial's words in failure lines
    callbacks: Callable[[int, frozenset[str]], list[Any]]  # (runs, files of earlier rungs) -> a rung's callbacks
    first_round: Callable[[int], int]  # trials of a rung -> how many start at once

    def budget_text(self, rung: int) -> str:
        return f"{self.budgets[rung]} {self.unit}"

    def run(self) -> LadderState:
        state = LadderState.load(self.paths.ladder_file)
        if state is None:
            state = LadderState.new(self.unit, self.budgets, self.policy, first_plan(self.grid, self.population))
            state.save(self.paths.ladder_file)
        elif state.budgets != self.budgets:
            raise SweepError(f"the ladder's saved rungs {state.budgets} differ from {self.budgets}: resume with the "
                             f"sweep's own options")
        while not state.finished:
            rung = state.rung
            print(f"\nrung {rung}: {self.budget_text(rung)}, {sum(len(t['members']) for t in state.plan)} runs "
                  f"in {len(state.plan)} trials", flush=True)
            outcome = self.train_rung(state)
            if outcome.cut_short:
                return state  # interrupted: --resume continues this rung
            self.fit_rung(state, outcome)
            state.save(self.paths.ladder_file)
        return state

    def train_rung(self, state: LadderState) -> experiment.Outcome:
        from ray import tune

        rung, name = state.rung, f"rung-{state.rung}"
        trials = []
        for t in state.plan:
            spec = {k: v for k, v in t.items() if k not in ("lineage", "continue_from")}
            spec[LADDER_KEY] = {"lineage": t.get("lineage"), "continue_from": t.get("continue_from"), "rung": rung}
            trials.append(spec)
        space = {**self.base_space, self.unit: self.budgets[rung], POPULATION_KEY: tune.grid_search(trials)}
        if self.unit == "epochs":
            space["steps"] = None
        restore = tune.Tuner.can_restore(join(self.paths.experiment, name))
        runs = sum(len(t["members"]) for t in trials)
        results = experiment.fit(self.trainable, self.args, name, self.paths, space,
                                 callbacks=self.callbacks(runs, frozenset(state.lineages)),
                                 tune_config=tune.TuneConfig(reuse_actors=self.args.reuse_actors,
                                                             max_concurrent_trials=self.args.max_concurrent),
                                 first_round=self.first_round(len(trials)), storage_path=self.paths.experiment,
                                 restore=restore)
        outcome = experiment.Outcome.of(results)
        if not outcome.cut_short:
            self.record_trials(state, results)
        return outcome

    def record_trials(self, state: LadderState, results: Any) -> None:
        """Each trial's run lineage: its results file, its folder (the next rung continues from there), its step,
        and the member-steps it trained in this rung (per latent configuration)."""
        spent: dict[str, list[int]] = {}
        for r in results:
            config, metrics = r.config or {}, r.metrics or {}
            pop = config[POPULATION_KEY]
            ladder = pop.get(LADDER_KEY) or {}
            lineage = ladder.get("lineage") or metrics.get("trial_id")
            label = group_label(group_of(pop), self.grid)
            before = state.lineages.get(lineage, {}).get("step", 0) if lineage else 0
            step = int(metrics.get("step") or before)
            tally = spent.setdefault(label, [0, 0])
            tally[0] += len(pop["members"])
            tally[1] += len(pop["members"]) * max(0, step - before)
            if lineage is None:  # failed before its first evaluation: no rows, nothing to continue
                continue
            state.lineages[lineage] = {"group": group_of(pop), "members": pop["members"], "path": r.path,
                                       "step": step, "rung": state.rung,
                                       "failed": r.error is not None or not metrics.get("is_final", False)}
        state.data["spent"] = spent

    def fit_rung(self, state: LadderState, outcome: experiment.Outcome) -> None:
        """Fit every configuration at this rung with the analysis, decide which stop, plan the next rung."""
        from analysis.report import analyze  # deferred: it loads matplotlib (the report's figures)

        rung = state.rung
        for line in outcome.failure_lines(self.label):
            print(line, flush=True)
        steps = [int(v["step"]) for v in state.lineages.values() if v["rung"] == rung and not v["failed"]]
        state.rung_steps.append(max(steps) if steps else (state.rung_steps[-1] if state.rung_steps else 0))
        try:
            rep = analyze(self.paths.results_root, sweeps=[self.name], write=False, plots_on=False, compare_boot=0,
                          drop_nan=True, budget_steps=state.rung_steps, max_budgets=max(2, len(state.rung_steps)))
        except AnalysisError as e:  # e.g. every run of the rung failed: the rung stays to be resumed
            state.rung_steps.pop()
            raise SweepError(f"rung {rung} cannot be fitted ({e}); fix the cause, then continue with --resume "
                             f"--retry-failed") from None
        series = {group_label({"latent_dims": row["latent_dims"].split("-"), "smooth_space": row["smooth_space"]},
                              self.grid): rep.budgets[row["config_id"]]
                  for row in rep.critical.configs.iter_rows(named=True) if row["config_id"] in rep.budgets}
        last = rung == len(self.budgets) - 1
        plan: list[dict[str, Any]] = []
        for group in self.grid.groups:
            label = group_label(group, self.grid)
            entry = state.configs.setdefault(label, {"done": None, "rungs": []})
            if entry["done"]:
                continue
            s = series.get(label)
            trained, spent = state.data.get("spent", {}).get(label, [0, 0])
            if s is None:
                entry["done"] = "no run finished: nothing to fit"
                print(f"  rung {rung} ({self.budget_text(rung)}) {label}: no run finished", flush=True)
                continue
            fit = RungFit.of(rung, state.rung_steps[-1], s, trained, spent)
            entry["rungs"].append(vars(fit))
            print(fit.line(label, self.budget_text(rung)), flush=True)
            if s.verdict is BudgetVerdict.CONVERGED:
                entry["done"] = f"converged at rung {rung} ({self.budget_text(rung)})"
            elif last:
                verdict = s.verdict.value.replace("_", " ")
                entry["done"] = f"maximum budget reached ({self.budget_text(rung)}): {verdict}"
            else:
                plan += self.next_trials(state, group, s)
        if plan:
            state.data.update(rung=rung + 1, plan=plan)
        else:
            state.data.update(finished=True, plan=[])

    def next_trials(self, state: LadderState, group: dict[str, Any], series: BudgetSeries) -> list[dict[str, Any]]:
        """The trials of one configuration at the next rung (see the module docstring)."""
        mine = {lid: v for lid, v in state.lineages.items() if v["group"] == group and not v["failed"]}
        rhos = [m["rho"] for v in mine.values() for m in v["members"]]
        window = None if self.policy == "all" else continue_window(series.fits[-1], series.shift)
        keep = set(rhos_to_continue(rhos, window))
        trials = [{**group, "members": v["members"], "lineage": lid,
                   "continue_from": join(v["path"], CHECKPOINT_FOLDER)}
                  for lid, v in mine.items() if any(m["rho"] in keep for m in v["members"])]
        new = None if self.spacing is None else rho_to_add(rhos, series.fits[-1], self.spacing)
        if new is not None:
            trials += population_trials(self.grid, group, new, self.population)
        return trials


def summary_lines(state: LadderState, grid: CriticalGrid, unit: str, elapsed_s: float) -> list[str]:
    """Per configuration: why it stopped and rho_c at each rung; the compute spent."""
    lines = [f"\nladder: {len(state.rung_steps)} rung(s) of {', '.join(map(str, state.budgets))} {unit}; "
             f"{state.member_steps:,} member-steps in {elapsed_s:.0f} s; rung steps {state.rung_steps}"]
    for group in grid.groups:
        label = group_label(group, grid)
        fits = state.fits(label)
        lines.append(f"  {label}: {state.config_done(label) or 'not finished'}")
        for f in fits:
            lines.append("  " + f.line(label, f"{state.budgets[f.rung]} {unit}"))
    return lines


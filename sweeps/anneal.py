"""The KL-annealing search (sweeps/anneal_search.py): the schedule space, the Optuna searcher, the plan, the run
and the summary.

Objective: the validation importance-weighted bound L_k (``iw_bound``, maximised): a bound on log p(x) of a named
model (``bound_model``; the plain HVAE with the trained weights in the posterior reading), never the smoothed
objective, so with ``--rho-range`` a small rho cannot win by leaking information past the latents. With
``--multi-objective`` also the number of active top-layer units (maximised; Pareto front). The space is
conditional (define-by-run): a trial picks a schedule (constant, linear, cosine, sigmoid, cyclical) and then only
the parameters that schedule reads, plus free bits (and rho with --rho-range).

ASHA and Optuna: Ray's OptunaSearch reports every trial that ends without an error as COMPLETE with its *last*
value. A trial stopped by ASHA after 2 of 6 evaluations would enter the study with the bound of a 2-evaluation
run, and TPE would learn from truncated values as if they were full runs. ``FullBudgetOptunaSearch`` instead
tells Optuna:

* a trial whose last result is the end of its budget (``is_final``) is COMPLETE with its objective value(s);
* a trial stopped before its budget is PRUNED (TPE ranks pruned trials below complete ones, using the
  intermediate values Ray reported at every evaluation) -- so only full-budget trials carry values;
* a trial that errored, or whose objective is NaN/inf, is FAIL.

Useful result fields are stored as user attributes (ray_trial_id, epoch, top_active_units, ...), visible in
optuna-dashboard. The searcher and the space are defined at module level so Ray can pickle them into its
experiment state for --resume.

The study lives in an Optuna JournalStorage file (default <storage>/optuna/<name>.log; or --study-storage
sqlite:///path.db), so it survives crashes, ``--resume`` continues the Ray experiment (runs the killed driver
finished but never told the study are settled from the results table first), and a new sweep name with
``--study-name <old>`` continues the same study with more trials.
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Callable

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.optuna import OptunaSearch

from ouvae.config import BETA_SCHEDULES, SCHEDULE_PARAMETERS, Config
from sweeps import cli, compat, experiment
from sweeps.cli import CommandLine
from sweeps.errors import SpaceError, SweepError
from sweeps.plan import check_rho, check_start, is_ray_client
from sweeps.progress import ProgressLine
from sweeps.results import ParquetSink, read_trial_rows
from sweeps.resume import open_sweep, prepare_new, resume_command, save_spec
from sweeps.storage import SweepPaths, is_remote
from sweeps.trainable import train_ouvae


# ----- the KL-annealing search space (Optuna define-by-run) ----------------------------------------------------
@dataclass(frozen=True)
class AnnealSpace:
    """Which schedule parameters the Optuna search may vary, and over what ranges.

    Conditional by construction: a trial first picks the schedule, then only the parameters that schedule
    reads (ouvae.config.SCHEDULE_PARAMETERS). Parameters a schedule does not read are not sampled, so Optuna's
    TPE does not learn from irrelevant dimensions.
    """

    schedules: tuple[str, ...] = BETA_SCHEDULES
    beta_max: tuple[float, float] = (0.5, 1.0)
    beta_min: tuple[float, float] = (0.0, 0.5)
    anneal_epochs: tuple[float, float] | None = None  # None = (1, the training budget in epochs)
    n_cycles: tuple[int, int] = (1, 8)
    cycle_ratio: tuple[float, float] = (0.2, 1.0)
    sigmoid_steepness: tuple[float, float] = (2.0, 20.0)
    free_bits: tuple[float, float] | None = (0.0, 0.5)  # None = do not search free bits
    rho: tuple[float, float] | None = None  # None = keep the config's rho fixed

    def __post_init__(self) -> None:
        if not self.schedules:
            raise SpaceError("--schedules is empty: pick one or more of " + ", ".join(BETA_SCHEDULES))
        unknown = [s for s in self.schedules if s not in BETA_SCHEDULES]
        if unknown:
            raise SpaceError(f"unknown schedule(s) {unknown}: choose from {list(BETA_SCHEDULES)}")
        for name in (f.name for f in fields(self) if f.name != "schedules"):  # every range
            rng = getattr(self, name)
            if rng is None:
                continue
            lo, hi = rng
            if not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi:
                raise SpaceError(f"--{name.replace('_', '-')} range {lo}..{hi} is empty or reversed: give LOW HIGH "
                                 f"with LOW <= HIGH")
        if self.beta_min[0] < 0 or self.beta_max[0] < 0:
            raise SpaceError("beta ranges must be >= 0")
        if self.beta_min[1] > self.beta_max[0] + 1e-12 and any(s != "constant" for s in self.schedules):
            # Keep beta_min <= beta_max for every sample (Config requires it) without rejection sampling.
            raise SpaceError(f"--beta-min range {self.beta_min} overlaps --beta-max range {self.beta_max}: need the "
                             f"upper end of beta_min <= the lower end of beta_max")
        if self.cycle_ratio[0] <= 0 or self.cycle_ratio[1] > 1:
            raise SpaceError(f"--cycle-ratio range {self.cycle_ratio} must lie inside (0, 1]")
        if self.n_cycles[0] < 1:
            raise SpaceError(f"--n-cycles range {self.n_cycles} must start at >= 1")
        if self.sigmoid_steepness[0] <= 0:
            raise SpaceError(f"--sigmoid-steepness range {self.sigmoid_steepness} must be > 0")
        if self.anneal_epochs is not None and self.anneal_epochs[0] <= 0:
            raise SpaceError(f"--anneal-epochs range {self.anneal_epochs} must be > 0")
        if self.free_bits is not None and self.free_bits[0] < 0:
            raise SpaceError(f"--free-bits range {self.free_bits} must be >= 0 nats")
        if self.rho is not None:
            check_rho(self.rho[0], "--rho-range low")
            check_rho(self.rho[1], "--rho-range high")

    def with_budget(self, epochs: float) -> "AnnealSpace":
        """Fill the default warm-up range from the training budget (1 .. the whole run)."""
        if self.anneal_epochs is not None:
            return self
        return replace(self, anneal_epochs=(min(1.0, float(epochs)), max(1.0, float(epochs))))


# How a schedule parameter is sampled where the default (uniform float) does not fit it.
_INTEGER_PARAMETERS = frozenset({"n_cycles"})
_LOG_SCALE_PARAMETERS = frozenset({"sigmoid_steepness"})


def suggest_schedule(trial: Any, space: AnnealSpace) -> dict[str, Any]:
    """Define-by-run body: sample one schedule and only its parameters; returns the Config overrides.

    `trial` is an optuna.Trial (or Ray's suggest-captor around one). Kept free of optuna imports so the space
    can be unit-tested with any object that has suggest_* methods.
    """
    schedule = trial.suggest_categorical("beta_schedule", list(space.schedules))
    out: dict[str, Any] = {"beta_schedule": schedule}
    for name in SCHEDULE_PARAMETERS[schedule]:
        rng = getattr(space, name)
        assert rng is not None, "call AnnealSpace.with_budget(epochs) first"
        if name in _INTEGER_PARAMETERS:
            out[name] = trial.suggest_int(name, *rng) if rng[0] < rng[1] else rng[0]
        else:
            out[name] = _suggest_float(trial, name, rng, log=name in _LOG_SCALE_PARAMETERS)
    if space.free_bits is not None:
        out["free_bits"] = _suggest_float(trial, "free_bits", space.free_bits)
    if space.rho is not None:
        out["rho"] = _suggest_float(trial, "rho", space.rho)
    return out


def _suggest_float(trial: Any, name: str, rng: tuple[float, float], log: bool = False) -> float:
    lo, hi = float(rng[0]), float(rng[1])
    if lo == hi:
        return lo  # a fixed value: nothing to search
    return trial.suggest_float(name, lo, hi, log=log and lo > 0)


class DefineByRun:
    """Picklable define-by-run callable for OptunaSearch (Ray pickles the searcher into its experiment state,
    so a closure would break --resume). Returns only the sampled overrides: Tune merges them into the
    constant part of the param space."""

    def __init__(self, space: AnnealSpace):
        self.space = space

    def __call__(self, trial: Any) -> dict[str, Any]:
        return suggest_schedule(trial, self.space)


# ----- the searcher: only full-budget trials are COMPLETE -----------------------------------------------------------
TS = optuna.trial.TrialState
USER_ATTRS = ("epoch", "step", "is_final", "top_active_units", "top_kl", "elbo", "iw_k")


def outcome(result: dict | None, error: bool, metric: Any) -> tuple[TS, Any]:
    """(state, value or values) to tell Optuna for a finished trial."""
    if error or not result:
        return (TS.FAIL if error else TS.PRUNED), None
    metrics = metric if isinstance(metric, list) else [metric]
    values = [result.get(m) for m in metrics]
    if any(v is None or not math.isfinite(float(v)) for v in values):
        return TS.FAIL, None
    if not result.get("is_final", False):
        return TS.PRUNED, None  # stopped early by the scheduler: its value is of a truncated run
    floats = [float(v) for v in values]
    return TS.COMPLETE, (floats if isinstance(metric, list) else floats[0])


class FullBudgetOptunaSearch(OptunaSearch):
    """See the module docstring. Ray's OptunaSearch keeps its study and trials in private attributes: they are
    reached through sweeps/compat.py."""

    def suggest(self, trial_id: str) -> dict | None:
        """Optuna's sample, with the Tune trial id stored on the Optuna trial from the start: a driver killed
        between a trial's final row and the study's tell leaves a RUNNING trial that ``settle_from_table`` can
        then match to its row."""
        config = super().suggest(trial_id)
        ot_trial = compat.optuna_trials(self).get(trial_id)
        if ot_trial is not None:
            ot_trial.set_user_attr("ray_trial_id", trial_id)
        return config

    def _open_trial(self, trial_id: str) -> Any | None:
        """The optuna.Trial of a Tune trial that Optuna has not been told the end of, else None."""
        if trial_id in compat.completed_trial_ids(self):
            return None
        return compat.optuna_trials(self).get(trial_id)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        ot_trial = self._open_trial(trial_id)
        if ot_trial is None:
            return
        compat.completed_trial_ids(self).add(trial_id)
        state, value = outcome(result, error, self.metric)
        try:
            record_end(compat.optuna_study(self), ot_trial, result, state, value)
        except optuna.exceptions.UpdateFinishedTrialError:
            return  # told to Optuna before a driver crash, after Tune's last snapshot: already recorded

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        """The intermediate value at the evaluation's optimizer step (Ray uses training_iteration, which starts
        again at 1 when a trial continues from its checkpoint). A step already reported -- the evaluation a
        restarted trial re-sends -- keeps its value: it is the same measurement. Results without the metric (a
        failing trial's last word, sweeps/protocol.py: failure_result) are not evaluations."""
        if isinstance(self.metric, list) or self.metric not in result:
            return  # Optuna takes no intermediate values for several objectives
        ot_trial = self._open_trial(trial_id)
        if ot_trial is None:
            return
        try:
            compat.report_once(ot_trial, float(result[self.metric]), int(result["step"]))
        except optuna.exceptions.UpdateFinishedTrialError:
            # Told to Optuna before a driver crash, after Tune's last snapshot: Tune runs it again.
            compat.completed_trial_ids(self).add(trial_id)

    def restore(self, checkpoint_path: str) -> None:
        super().restore(checkpoint_path)
        study, trials = compat.optuna_study(self), compat.optuna_trials(self)
        # Trials the study already finished (told after Tune's last snapshot) must not be reported to again.
        finished = {t.number for t in study.get_trials(deepcopy=False) if t.state.is_finished()}
        compat.completed_trial_ids(self).update(tid for tid, t in trials.items() if t.number in finished)
        # Trials asked after Tune's last snapshot are asked again under new numbers on resume: close the stale
        # ones as FAIL so the study shows no phantom RUNNING trials.
        known = {t.number for t in trials.values()}
        for t in study.get_trials(deepcopy=False, states=(TS.RUNNING,)):
            if t.number not in known:
                study.tell(t.number, state=TS.FAIL, skip_if_finished=True)


def record_end(study: optuna.Study, ot_trial: optuna.Trial, result: dict | None, state: TS, value: Any) -> None:
    """Store the result's user attributes on the trial, then tell the study its end."""
    for key in USER_ATTRS:
        if result and result.get(key) is not None:
            ot_trial.set_user_attr(key, result[key])
    study.tell(ot_trial, value if state == TS.COMPLETE else None, state=state, skip_if_finished=True)


def settle_from_table(study: optuna.Study, final_row: Callable[[str], dict | None], metric: Any) -> list[int]:
    """Tell the study the end of each RUNNING trial whose final row is in the results table.

    Why: the sink writes a trial's final row before Tune tells the searcher the trial ended, so a driver killed
    in between leaves a full-budget run in the table that the study still calls RUNNING -- and that
    ``restore`` would close as FAIL. The table is the durable record of what ran; this makes the study agree
    with it before the search continues. `final_row(ray_trial_id)` is the run's final row, or None. Returns
    the numbers of the trials told."""
    told = []
    for frozen in study.get_trials(deepcopy=False, states=(TS.RUNNING,)):
        ray_id = frozen.user_attrs.get("ray_trial_id")
        row = final_row(ray_id) if ray_id else None
        if row is None:
            continue
        state, value = outcome(row, False, metric)
        record_end(study, compat.trial_of(study, frozen), row, state, value)
        told.append(frozen.number)
    return told


# ----- the search: options ------------------------------------------------------------------------------------------
SCRIPT = "anneal_search"
DESCRIPTION = ("Search KL-annealing schedules with Optuna (TPE) through Ray Tune, pruning poor runs early with ASHA.\n"
               "The objective, the searched space, the study and --resume: docs/sweeps.md.")
METRIC = "iw_bound"
SECOND_METRIC = "top_active_units"
# Config fields the search samples: --set may not fix them.
SCHEDULE_FIELDS = frozenset({"beta_schedule", *(p for params in SCHEDULE_PARAMETERS.values() for p in params)})


def _pair(kind=float):
    return dict(nargs=2, type=kind, metavar=("LOW", "HIGH"))


def _read_by(parameter: str) -> str:
    """Which schedules read `parameter` (SCHEDULE_PARAMETERS), for the help of its range."""
    readers = [name for name, params in SCHEDULE_PARAMETERS.items() if parameter in params]
    return "read by " + ("every schedule" if len(readers) == len(SCHEDULE_PARAMETERS) else ", ".join(readers))


def build_parser() -> argparse.ArgumentParser:
    d = AnnealSpace()
    p = argparse.ArgumentParser(prog="python sweeps/anneal_search.py", description=DESCRIPTION,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    s = p.add_argument_group("search")
    s.add_argument("--n-trials", type=int, default=20, help="trials in this search (default 20)")
    s.add_argument("--schedules", nargs="+", default=list(d.schedules),
                   help=f"schedules to consider, of {', '.join(BETA_SCHEDULES)} (default all)")
    s.add_argument("--beta-max", **_pair(), default=list(d.beta_max),
                   help=f"range of beta_max, {_read_by('beta_max')} (default {d.beta_max})")
    s.add_argument("--beta-min", **_pair(), default=list(d.beta_min),
                   help=f"range of beta_min, {_read_by('beta_min')} (default {d.beta_min})")
    s.add_argument("--anneal-epochs", **_pair(), default=None,
                   help=f"range of the warm-up (cycle) length in epochs, {_read_by('anneal_epochs')} (default "
                        f"1..the training budget)")
    s.add_argument("--n-cycles", **_pair(int), default=list(d.n_cycles),
                   help=f"range of n_cycles, {_read_by('n_cycles')} (default {d.n_cycles})")
    s.add_argument("--cycle-ratio", **_pair(), default=list(d.cycle_ratio),
                   help=f"range of cycle_ratio, {_read_by('cycle_ratio')} (default {d.cycle_ratio})")
    s.add_argument("--sigmoid-steepness", **_pair(), default=list(d.sigmoid_steepness),
                   help=f"range of sigmoid_steepness, {_read_by('sigmoid_steepness')}, log scale "
                        f"(default {d.sigmoid_steepness})")
    s.add_argument("--free-bits", **_pair(), default=list(d.free_bits),
                   help=f"free bits per layer, nats (default {d.free_bits})")
    s.add_argument("--no-free-bits", action="store_true", help="do not search free bits (keep the config's)")
    s.add_argument("--rho-range", **_pair(), default=None, help="also search rho in this range (default: fixed)")
    s.add_argument("--multi-objective", action="store_true",
                   help="second objective: active top-layer units (maximised); prints the Pareto front")
    s.add_argument("--sampler-seed", type=int, default=0, help="seed of Optuna's TPE sampler (default 0)")
    s.add_argument("--no-asha", dest="asha", action="store_false", help="run every trial to its full budget")
    s.add_argument("--grace-period", type=int, default=2,
                   help="ASHA: evaluations every trial gets before it may be stopped (default 2)")
    s.add_argument("--reduction-factor", type=float, default=3.0, help="ASHA reduction factor (default 3)")
    s.add_argument("--study-storage", default=None,
                   help="Optuna storage: a journal file path or a database URL such as sqlite:///study.db "
                        "(default <storage>/optuna/<name>.log)")
    s.add_argument("--study-name", default=None,
                   help="Optuna study name (default: the sweep --name); an existing study is continued")
    cli.add_trainer_arguments(p, default_preset="demo")
    cli.add_run_arguments(p)
    p.set_defaults(max_concurrent=2)
    return p


# ----- planning (no Ray runtime; every check happens here) --------------------------------------------------------
@dataclass(frozen=True)
class SearchPlan:
    fixed: dict[str, Any]  # trainer overrides common to every trial
    base: Config  # the preset with them
    space: AnnealSpace
    study_name: str
    study_storage: str  # a journal file path or a database URL
    max_evaluations: int  # ASHA's clock: evaluations in a full-budget trial


def idle_options(args: argparse.Namespace) -> dict[str, str]:
    """The search options that do nothing with the others given, each with its one-line refusal
    (cli.refuse_idle_options): a schedule's own ranges without that schedule, free bits not searched, ASHA off."""
    idle: dict[str, str] = {}
    for schedule, options in (("cyclical", ("n_cycles", "cycle_ratio")), ("sigmoid", ("sigmoid_steepness",))):
        if schedule not in args.schedules:
            for dest in options:
                flag = "--" + dest.replace("_", "-")
                idle[dest] = cli.idle_option(flag, f"is a range of the {schedule} schedule, which --schedules "
                                                   f"{' '.join(args.schedules)} leaves out",
                                             f"add {schedule} to --schedules")
    if args.no_free_bits:
        idle["free_bits"] = cli.idle_option("--free-bits", "is the range free bits are searched in, and "
                                                           "--no-free-bits searches none", "drop --no-free-bits")
    if not args.asha:
        for dest in ("grace_period", "reduction_factor"):
            flag = "--" + dest.replace("_", "-")
            idle[dest] = cli.idle_option(flag, "sets ASHA's early stopping, which --no-asha turns off",
                                         "drop --no-asha")
    return idle


def plan_search(args: argparse.Namespace, name: str, paths: SweepPaths) -> SearchPlan:
    if args.n_trials < 1:
        raise SweepError(f"--n-trials {args.n_trials} must be >= 1")
    fixed = cli.fixed_overrides(args)
    searched = set(SCHEDULE_FIELDS)
    searched |= (set() if args.no_free_bits else {"free_bits"}) | ({"rho"} if args.rho_range else set())
    clash = sorted(searched & set(fixed))
    if clash:
        raise SweepError(f"{clash} are searched by this script; set their ranges with the search options instead")
    base = Config.from_preset(args.preset, **fixed)
    space = make_space(args, base.epochs if base.steps is None else max(1.0, base.epochs))
    for corner in corner_configs(space):  # every schedule's extreme values must make a valid Config
        Config.from_preset(args.preset, **fixed, **corner)
    study_name = args.study_name or name
    study_storage = args.study_storage or (None if is_remote(paths.storage)
                                           else str(Path(paths.storage, "optuna", f"{study_name}.log")))
    if study_storage is None:
        raise SweepError("with remote --storage give --study-storage (a journal file on a shared disk or a "
                         "database URL): the Optuna study cannot live in an object store")
    check_study_storage(study_storage, args.address)
    evaluations = math.ceil(base.epochs / base.eval_every) if base.steps is None else 10_000
    return SearchPlan(fixed, base, space, study_name, study_storage, max(evaluations, 1))


def make_space(args: argparse.Namespace, epochs_budget: float) -> AnnealSpace:
    rho = None
    if args.rho_range is not None:
        rho = (check_rho(args.rho_range[0], "--rho-range low"), check_rho(args.rho_range[1], "--rho-range high"))
    space = AnnealSpace(
        schedules=tuple(args.schedules), beta_max=tuple(args.beta_max), beta_min=tuple(args.beta_min),
        anneal_epochs=tuple(args.anneal_epochs) if args.anneal_epochs else None, n_cycles=tuple(args.n_cycles),
        cycle_ratio=tuple(args.cycle_ratio), sigmoid_steepness=tuple(args.sigmoid_steepness),
        free_bits=None if args.no_free_bits else tuple(args.free_bits), rho=rho)
    return space.with_budget(epochs_budget)


def corner_configs(space: AnnealSpace) -> list[dict[str, Any]]:
    """Per schedule, the overrides of its lowest and of its highest sampled values."""
    out = []
    for sched in space.schedules:
        for pick in (0, 1):
            c: dict[str, Any] = {"beta_schedule": sched}
            c.update({name: getattr(space, name)[pick] for name in SCHEDULE_PARAMETERS[sched]})
            if space.free_bits is not None:
                c["free_bits"] = space.free_bits[pick]
            if space.rho is not None:
                c["rho"] = space.rho[pick]
            out.append(c)
    return out


# ----- the study ----------------------------------------------------------------------------------------------
def check_study_storage(uri: str, address: str | None) -> None:
    scheme = uri.split("://", 1)[0] if is_remote(uri) else ""
    if scheme and not scheme.startswith(("sqlite", "postgresql", "mysql")):
        raise SweepError(f"--study-storage {uri}: give a journal file path (local or NFS) or a database URL "
                         f"(sqlite:///..., postgresql://...); object stores cannot hold an Optuna study")
    if is_ray_client(address) and scheme in ("", "sqlite"):
        raise SweepError(f"--study-storage {uri}: through Ray Client ({address}) the search runs on the head node, "
                         f"which would open its own copy of that file; give a database server's URL "
                         f"(postgresql://..., mysql://...)")


def open_study_storage(uri: str):
    """The Optuna storage at `uri` (a journal file is created with its folder)."""
    if is_remote(uri):
        return optuna.storages.RDBStorage(uri)
    path = Path(uri[len("file://"):] if uri.startswith("file://") else uri).expanduser().resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(path)))


def study_counts(storage, study_name: str) -> dict[str, int]:
    """Trials of the stored study by state name (empty if there is no such study yet)."""
    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        return {}
    out: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        out[t.state.name] = out.get(t.state.name, 0) + 1
    return out


def objective(args: argparse.Namespace) -> tuple[Any, Any]:
    """(metric, mode) as Ray's OptunaSearch takes them: one objective, or two with --multi-objective."""
    if args.multi_objective:
        return [METRIC, SECOND_METRIC], ["max", "max"]
    return METRIC, "max"


def settle_study(storage, plan: SearchPlan, paths: SweepPaths, name: str, args: argparse.Namespace) -> None:
    """Before a resumed search continues: runs the killed driver wrote in full to the table but never told the
    study are told now (settle_from_table says why)."""
    def final_row(trial_id: str) -> dict | None:
        rows = [r for r in read_trial_rows(paths.results_root, name, trial_id) if r.get("is_final")]
        return rows[-1] if rows else None

    study = optuna.load_study(study_name=plan.study_name, storage=storage)
    told = settle_from_table(study, final_row, objective(args)[0])
    if told and not args.quiet:
        print(f"[optuna] {len(told)} trial(s) finished in the results table before the driver stopped: "
              f"recorded in the study ({', '.join(map(str, told))})")


def make_searcher(args: argparse.Namespace, plan: SearchPlan, storage):
    metric, mode = objective(args)
    return FullBudgetOptunaSearch(space=DefineByRun(plan.space), metric=metric, mode=mode,
                                  study_name=plan.study_name, storage=storage,
                                  sampler=compat.conditional_tpe(args.sampler_seed))


def tune_config(args: argparse.Namespace, plan: SearchPlan, storage):
    scheduler = None
    if args.asha:
        scheduler = ASHAScheduler(time_attr="evaluation", metric=METRIC, mode="max", max_t=plan.max_evaluations,
                                  grace_period=max(1, args.grace_period), reduction_factor=args.reduction_factor)
    return tune.TuneConfig(search_alg=make_searcher(args, plan, storage), scheduler=scheduler,
                           num_samples=args.n_trials, max_concurrent_trials=args.max_concurrent,
                           reuse_actors=args.reuse_actors)


# ----- running ------------------------------------------------------------------------------------------------------
def run(cmd: CommandLine, trainable: Callable[[dict[str, Any]], None] = train_ouvae) -> int:
    t_start = time.monotonic()
    cli.check_resource_options(cmd.args)
    args, name, paths = open_sweep(cmd, SCRIPT, "anneal")
    cli.refuse_idle_options(cmd.given, idle_options(args))
    plan = plan_search(args, name, paths)
    check_start(args, paths, plan.base)
    if not args.resume:
        prepare_new(paths, name)
        args.study_name, args.study_storage = plan.study_name, plan.study_storage
    storage = open_study_storage(plan.study_storage)
    if args.resume:
        settle_study(storage, plan, paths, name, args)
    print(describe_search(args, name, plan, study_counts(storage, plan.study_name)))

    resources = experiment.start(args, SCRIPT, name, paths, t_start)

    # Each trial is its own Optuna sample: one that finished after Tune's last snapshot stays in the study and in
    # the table (Tune samples a new trial in its place on --resume).
    callbacks: list[Any] = [ParquetSink(paths.results_root, name, keep_finished_unknown=True)]
    if not args.quiet:
        callbacks.append(ProgressLine(show=("beta_schedule", "beta_max", "anneal_epochs", "free_bits", "rho"),
                                      total=args.n_trials))
    if not args.resume:
        save_spec(paths, SCRIPT, args)
    constants = {"preset": args.preset, **plan.fixed, "num_threads": cli.threads_per_trial(args, plan.fixed)}
    results = experiment.fit(trainable, args, name, paths, constants, callbacks=callbacks,
                             tune_config=None if args.resume else tune_config(args, plan, storage),
                             first_round=experiment.concurrent_trials(args, resources, args.n_trials))
    outcome = experiment.Outcome.of(results)
    print(summary_text(outcome, storage, plan, paths, name, args, time.monotonic() - t_start))
    return 0 if len(outcome.failed) < len(results) else 1


# ----- wording ----------------------------------------------------------------------------------------------------
def describe_search(args: argparse.Namespace, name: str, plan: SearchPlan, done: dict[str, int]) -> str:
    base, space = plan.base, plan.space
    n_finished = sum(v for k, v in done.items() if k in ("COMPLETE", "PRUNED", "FAIL"))
    asha = (f"on (grace {args.grace_period} evaluations, factor {args.reduction_factor:g})" if args.asha else "off")
    return "\n".join([
        f"anneal search {name!r}{' (resumed)' if args.resume else ''}: {args.n_trials} trials over "
        f"{', '.join(space.schedules)}; objective {METRIC} (max)"
        + (f" + {SECOND_METRIC} (max)" if args.multi_objective else ""),
        f"  trainer: preset {args.preset} on {base.dataset}, {base.epochs} epochs, rho={base.rho}"
        f"{' (searched)' if space.rho else ''}, eval L_{base.eval_iw_k} every {base.eval_every} epochs; ASHA {asha}",
        f"  Optuna study {plan.study_name!r} in {plan.study_storage}"
        + (f" (continuing: {n_finished} trials already finished)" if n_finished and not args.resume else "")])


def trial_label(config: dict[str, Any]) -> str:
    return f"beta_schedule={config.get('beta_schedule')}"


def summary_text(outcome: experiment.Outcome, storage, plan: SearchPlan, paths: SweepPaths, name: str,
                 args: argparse.Namespace, seconds: float) -> str:
    n_ok = len(outcome.complete) + len(outcome.cut_short)
    lines = [f"\n{n_ok} trials finished, {len(outcome.failed)} failed, in {seconds:.0f} s",
             *outcome.failure_lines(trial_label)]
    setup = outcome.shared_setup_failure()
    if setup:
        lines.append(f"every failed trial failed with {setup}; the other trials would too. Fix the cause, then "
                     f"continue: {resume_command(SCRIPT, name, args.storage, retry_failed=True)}")
    study = optuna.load_study(study_name=plan.study_name, storage=storage)
    counts = ", ".join(f"{v} {k.lower()}" for k, v in sorted(study_counts(storage, plan.study_name).items()))
    lines.append(f"Optuna study {plan.study_name!r}: {counts} (pruned = stopped early by ASHA)")
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not complete:
        lines.append("no trial ran its full budget yet: no best schedule to report")
    else:
        if args.multi_objective:
            best = sorted(study.best_trials, key=lambda t: -t.values[0])
            title = f"Pareto front ({METRIC}, {SECOND_METRIC}), {len(best)} trials"
        else:
            best = sorted(complete, key=lambda t: -t.value)[:5]
            title = f"best schedules by {METRIC} (of {len(complete)} full-budget trials)"
        lines += [f"\n{title}:", format_table(["#", "schedule", "L_k", "top AU", "parameters"],
                                               [best_row(t) for t in best])]
    lines += [f"\nresults table: {paths.results_root}/sweep_id={name}/",
              f"study: {plan.study_storage}   (optuna-dashboard {plan.study_storage})"]
    return "\n".join(lines)


def best_row(trial) -> list[Any]:
    params = {k: v for k, v in trial.params.items() if k != "beta_schedule"}
    return [trial.number, trial.params.get("beta_schedule", "?"), f"{trial.values[0]:.3f}",
            trial.user_attrs.get("top_active_units", "?"),
            ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(params.items()))]


def format_table(header: list[str], rows: list[list[Any]]) -> str:
    cells = [[str(h) for h in header]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: list[str] | None = None, *, trainable: Callable[[dict[str, Any]], None] = train_ouvae) -> int:
    """The script. `trainable` is the Tune trainable each trial runs (e.g. one that wraps it)."""
    return cli.main(lambda cmd: run(cmd, trainable), build_parser(), argv)

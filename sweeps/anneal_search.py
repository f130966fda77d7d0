#!/usr/bin/env python
"""Search KL-annealing schedules with Optuna (TPE) through Ray Tune, pruning poor runs early with ASHA.

    python sweeps/anneal_search.py                                   # demo: digits, 20 trials
    python sweeps/anneal_search.py --preset paper-mlp-4x40 --dataset mnist --n-trials 200 \\
        --schedules linear cosine cyclical --free-bits 0 1 --rho-range 0.9 1.0 --multi-objective \\
        --gpus-per-trial 0.25 --address auto --storage /nfs/ouvae --name anneal-mnist
    optuna-dashboard results/optuna/<name>.log                       # watch / inspect the study

Objective: the validation importance-weighted bound L_k (``iw_bound``, maximised); with ``--multi-objective``
also the number of active top-layer units (maximised; Pareto front). The space is conditional (define-by-run):
a trial picks a schedule (constant, linear, cosine, sigmoid, cyclical) and then only the parameters that schedule
reads, plus free bits (and rho with --rho-range).

ASHA and Optuna: a trial that ASHA stops early reaches Ray's OptunaSearch as COMPLETE with the value of its last
(truncated) evaluation, which would teach TPE that short runs are the norm. Here such trials are told to Optuna
as PRUNED instead (TPE then ranks them below every complete trial, using their intermediate values), and only
trials that ran their full budget are COMPLETE. Runs with a non-finite bound are FAIL.

The study lives in an Optuna JournalStorage file (default <storage>/optuna/<name>.log; or --study-storage
sqlite:///path.db), so it survives crashes, ``--resume`` continues the Ray experiment, and a new sweep name
with ``--study-name <old>`` continues the same study with more trials.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Any

_ROOT = str(Path(__file__).resolve().parents[1])
try:
    import sweeps.cli  # noqa: F401
    _ADDED_PATH = None
except ImportError:  # pragma: no cover - exercised only without the editable install
    sys.path.insert(0, _ROOT)
    _ADDED_PATH = _ROOT

from sweeps import cli  # noqa: E402
from sweeps.space import AnnealSpace, DefineByRun, base_config, check_rho  # noqa: E402

SCRIPT = "anneal_search"
METRIC = "iw_bound"
SECOND_METRIC = "top_active_units"


def _pair(kind=float):
    return dict(nargs=2, type=kind, metavar=("LOW", "HIGH"))


def build_parser() -> argparse.ArgumentParser:
    d = AnnealSpace()
    p = argparse.ArgumentParser(prog="python sweeps/anneal_search.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    s = p.add_argument_group("search")
    s.add_argument("--n-trials", type=int, default=20, help="trials in this search (default 20)")
    s.add_argument("--schedules", nargs="+", default=list(d.schedules), help="schedules to consider (default all)")
    s.add_argument("--beta-max", **_pair(), default=list(d.beta_max), help=f"range of beta_max (default {d.beta_max})")
    s.add_argument("--beta-min", **_pair(), default=list(d.beta_min), help=f"range of beta_min (default {d.beta_min})")
    s.add_argument("--anneal-epochs", **_pair(), default=None,
                   help="range of the warm-up (cycle) length in epochs (default 1..the training budget)")
    s.add_argument("--n-cycles", **_pair(int), default=list(d.n_cycles), help=f"cyclical (default {d.n_cycles})")
    s.add_argument("--cycle-ratio", **_pair(), default=list(d.cycle_ratio), help=f"cyclical (default {d.cycle_ratio})")
    s.add_argument("--sigmoid-steepness", **_pair(), default=list(d.sigmoid_steepness),
                   help=f"sigmoid, log scale (default {d.sigmoid_steepness})")
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


# ----- the study ----------------------------------------------------------------------------------------------
def make_storage(uri: str):
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    if "://" in uri and not uri.startswith("file://"):
        if cli.is_remote(uri) and not uri.split("://", 1)[0].startswith(("sqlite", "postgresql", "mysql")):
            raise cli.SweepError(f"--study-storage {uri}: give a journal file path (local or NFS) or a database URL "
                                 f"(sqlite:///..., postgresql://...); object stores cannot hold an Optuna study")
        return optuna.storages.RDBStorage(uri)
    path = Path(uri[len("file://"):] if uri.startswith("file://") else uri).expanduser().resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(path)))


def study_counts(storage, study_name: str) -> dict[str, int]:
    import optuna

    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        return {}
    out: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        out[t.state.name] = out.get(t.state.name, 0) + 1
    return out


# ----- running ------------------------------------------------------------------------------------------------------
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


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    t_start = time.monotonic()
    cli.check_resources_args(args)
    args, name, paths = cli.open_sweep(args, parser, SCRIPT, "anneal")
    if args.n_trials < 1:
        raise cli.SweepError(f"--n-trials {args.n_trials} must be >= 1")
    fixed = cli.fixed_overrides(args)
    swept = {"beta_schedule", "beta_min", "beta_max", "anneal_epochs", "n_cycles", "cycle_ratio",
             "sigmoid_steepness"} | (set() if args.no_free_bits else {"free_bits"}) | \
        ({"rho"} if args.rho_range else set())
    clash = sorted(swept & set(fixed))
    if clash:
        raise cli.SweepError(f"{clash} are searched by this script; set their ranges with the search options instead")
    base = base_config(args.preset, fixed)
    cli.check_dataset(base.dataset)
    space = make_space(args, base.epochs if base.steps is None else max(1.0, base.epochs))
    for probe in _corner_configs(space):  # every schedule's extreme values must make a valid Config
        base_config(args.preset, {**fixed, **probe})
    study_name = args.study_name or name
    storage_uri = args.study_storage or (None if cli.is_remote(paths.storage)
                                         else str(Path(paths.storage, "optuna", f"{study_name}.log")))
    if storage_uri is None:
        raise cli.SweepError("with remote --storage give --study-storage (a journal file on a shared disk or a "
                             "database URL): the Optuna study cannot live in an object store")
    storage = make_storage(storage_uri)
    if not args.resume:
        cli.prepare_new(paths, name)
        args.study_name, args.study_storage = study_name, storage_uri
    done = study_counts(storage, study_name)
    n_finished = sum(v for k, v in done.items() if k in ("COMPLETE", "PRUNED", "FAIL"))
    n_new = args.n_trials

    evals = math.ceil(base.epochs / base.eval_every) if base.steps is None else 10_000
    print(f"anneal search {name!r}{' (resumed)' if args.resume else ''}: {args.n_trials} trials over "
          f"{', '.join(space.schedules)}; objective {METRIC} (max)"
          + (f" + {SECOND_METRIC} (max)" if args.multi_objective else ""))
    print(f"  trainer: preset {args.preset} on {base.dataset}, {base.epochs} epochs, rho={base.rho}"
          f"{' (searched)' if space.rho else ''}, eval L_{base.eval_iw_k} every {base.eval_every} epochs; ASHA "
          + (f"on (grace {args.grace_period} evaluations, factor {args.reduction_factor:g})" if args.asha else "off"))
    print(f"  Optuna study {study_name!r} in {storage_uri}"
          + (f" (continuing: {n_finished} trials already finished)" if n_finished and not args.resume else ""))

    import warnings

    import optuna
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    # multivariate/group TPE is what handles a conditional space well; Optuna still labels it experimental.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

    cli.connect_and_announce(args, SCRIPT, name, paths, t_start, extra_pythonpath=_ADDED_PATH)

    from sweeps.progress import ProgressLine
    from sweeps.results import ParquetSink

    constants = {"preset": args.preset, **fixed, "num_threads": cli.threads_per_trial(args, fixed)}
    trainable = cli.trainable(args)
    if args.resume:
        tuner = tune.Tuner.restore(paths.experiment, trainable=trainable, resume_errored=args.retry_failed,
                                   param_space=constants)
    else:
        cli.save_spec(paths, SCRIPT, args)
        metric: Any = [METRIC, SECOND_METRIC] if args.multi_objective else METRIC
        mode: Any = ["max", "max"] if args.multi_objective else "max"
        from sweeps.optuna_search import FullBudgetOptunaSearch

        searcher = FullBudgetOptunaSearch(
            space=DefineByRun(space), metric=metric, mode=mode, study_name=study_name, storage=storage,
            sampler=optuna.samplers.TPESampler(seed=args.sampler_seed, multivariate=True, group=True))
        scheduler = None
        if args.asha:
            scheduler = ASHAScheduler(time_attr="evaluation", metric=METRIC, mode="max", max_t=max(evals, 1),
                                      grace_period=max(1, args.grace_period), reduction_factor=args.reduction_factor)
        # Each trial is its own Optuna sample: one that finished after Tune's last snapshot stays in the study
        # and in the table (Tune samples a new trial in its place on --resume).
        callbacks = [ParquetSink(paths.results_root, name, keep_finished_unknown=True)]
        if not args.quiet:
            callbacks.append(ProgressLine(show=("beta_schedule", "beta_max", "anneal_epochs", "free_bits", "rho"),
                                          total=n_new))
        tuner = tune.Tuner(
            trainable, param_space=constants,
            tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=n_new,
                                        max_concurrent_trials=args.max_concurrent, reuse_actors=args.reuse_actors),
            run_config=tune.RunConfig(
                name=name, storage_path=paths.ray_storage, callbacks=callbacks, verbose=0,
                failure_config=tune.FailureConfig(max_failures=args.max_failures)))
    results = tuner.fit()
    return summarize(results, storage, study_name, storage_uri, paths, name, args, t_start)


def _corner_configs(space: AnnealSpace) -> list[dict[str, Any]]:
    out = []
    for sched in space.schedules:
        for pick in (0, 1):
            c: dict[str, Any] = {"beta_schedule": sched, "beta_max": space.beta_max[pick]}
            if sched != "constant":
                c.update(beta_min=space.beta_min[pick], anneal_epochs=space.anneal_epochs[pick])
            if sched == "sigmoid":
                c["sigmoid_steepness"] = space.sigmoid_steepness[pick]
            if sched == "cyclical":
                c.update(n_cycles=space.n_cycles[pick], cycle_ratio=space.cycle_ratio[pick])
            if space.free_bits is not None:
                c["free_bits"] = space.free_bits[pick]
            if space.rho is not None:
                c["rho"] = space.rho[pick]
            out.append(c)
    return out


def summarize(results, storage, study_name: str, storage_uri: str, paths: cli.SweepPaths, name: str,
              args: argparse.Namespace, t_start: float) -> int:
    import optuna

    from sweeps.results import failure_text

    failed = [r for r in results if r.error is not None]
    print(f"\n{len(results) - len(failed)} trials finished, {len(failed)} failed, in "
          f"{time.monotonic() - t_start:.0f} s")
    for r in failed:
        c = r.config or {}
        print(f"  FAILED beta_schedule={c.get('beta_schedule')}: {failure_text(r.error)}")
    study = optuna.load_study(study_name=study_name, storage=storage)
    counts: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        counts[t.state.name] = counts.get(t.state.name, 0) + 1
    print(f"Optuna study {study_name!r}: " + ", ".join(f"{v} {k.lower()}" for k, v in sorted(counts.items()))
          + " (pruned = stopped early by ASHA)")
    complete = [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))]
    if not complete:
        print("no trial ran its full budget yet: no best schedule to report")
    else:
        if args.multi_objective:
            best = sorted(study.best_trials, key=lambda t: -t.values[0])
            title = f"Pareto front ({METRIC}, {SECOND_METRIC}), {len(best)} trials"
        else:
            best = sorted(complete, key=lambda t: -t.value)[:5]
            title = f"best schedules by {METRIC} (of {len(complete)} full-budget trials)"
        rows = []
        for t in best:
            params = {k: v for k, v in t.params.items() if k != "beta_schedule"}
            rows.append([t.number, t.params.get("beta_schedule", "?"),
                         f"{t.values[0]:.3f}", t.user_attrs.get("top_active_units", "?"),
                         ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                                   for k, v in sorted(params.items()))])
        print(f"\n{title}:")
        print(cli.format_table(["#", "schedule", "L_k", "top AU", "parameters"], rows))
    print(f"\nresults table: {paths.results_root}/sweep_id={name}/")
    print(f"study: {storage_uri}   (optuna-dashboard {storage_uri})")
    return 0 if len(failed) < len(results) else 1


def main(argv: list[str] | None = None) -> int:
    return cli.main(run, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())

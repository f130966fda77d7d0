"""Running a sweep's trials: joining or starting Ray, and the Tune experiment (new or restored) and how it ended.

Joining or starting Ray for a sweep, and checking that a trial's resource request fits the cluster.

The address is checked before (sweeps/plan.py). Workers import the package from the environment (the
editable install of the README's set-up, or the cluster image): nothing is pushed onto their path.

The Ray Tune experiment of a sweep -- a new one or the one ``--resume`` restores -- and what became of its trials.

Both scripts run their trials the same way: retries from the trial's own checkpoints (``--max-failures``, for
crashes only: sweeps/progress.py), Tune's experiment under ``<storage>/ray/<name>`` (sweeps/storage.py), our
callbacks instead of Tune's console output. A restored experiment keeps the callbacks, searcher and scheduler it
was started with (Tune pickled them): only the trainable and the constant part of the parameter space are given
again.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from sweeps.compat import DRIVER_ENV, init_client, reclaim_sigterm, start_local_ray, tune_loop
from sweeps.errors import SweepError
from sweeps.plan import is_ray_client
from sweeps.progress import FailurePolicy
from sweeps.protocol import SETUP_FAILURE_KEY, failed_members, failure_text, not_retried_reason, run_specs, run_tally
from sweeps.resume import resume_command
from sweeps.storage import SweepPaths, join, reading_saved_state


def start(args: argparse.Namespace, script: str, name: str, paths: SweepPaths, t_start: float) -> dict[str, float]:
    """Join or start Ray, check the per-trial request fits, print where results go and how to resume; returns
    the cluster's CPUs and GPUs."""
    how = connect(args)
    res = cluster_resources(args)
    print(f"  Ray: {how} ({res['CPU']:g} CPUs, {res['GPU']:g} GPUs), {time.monotonic() - t_start:.1f} s")
    print(f"  results table: {paths.results_root}/sweep_id={name}/")
    print(f"  resume after a crash or Ctrl-C: {resume_command(script, name, args.storage)}", flush=True)
    return res


def connect(args: argparse.Namespace) -> str:
    """Start or join Ray; returns a short description."""
    import ray

    if ray.is_initialized():  # e.g. a notebook that already holds Ray
        return "existing Ray session"
    how = _init(args)
    reclaim_sigterm()  # ray.init made SIGTERM a traceback and a native stack dump (sweeps/compat.py: stop_signals)
    return how


def _init(args: argparse.Namespace) -> str:
    """``ray.init`` for the sweep: join --address (Ray Client or a node of the cluster) or start a local Ray."""
    import ray

    quiet = {"logging_level": logging.WARNING, "logging_config": ray.LoggingConfig(log_level="WARNING")}
    if args.address:
        try:
            if is_ray_client(args.address):
                # The sweep's driver (Tune's loop and our callbacks) runs on the head: it needs the driver's Tune
                # settings there too.
                init_client(args.address, runtime_env={"env_vars": dict(DRIVER_ENV)}, **quiet)
            else:
                ray.init(address=args.address, **quiet)
        except Exception as e:  # noqa: BLE001 - any connection failure becomes one clear message
            raise SweepError(f"--address {args.address}: could not join the Ray cluster: {_last_line(e)}") from None
        return f"joined Ray cluster at {args.address}"
    try:
        start_local_ray(num_cpus=args.num_cpus, num_gpus=args.num_gpus, include_dashboard=False, **quiet)
    except Exception as e:  # noqa: BLE001 - e.g. its processes did not come up in time, twice, on a loaded machine
        raise SweepError(f"could not start a local Ray: {_last_line(e)}; nothing was written: run the same command "
                         f"again (a loaded machine starts Ray slowly), or join a running Ray with --address") from None
    return "started a local Ray"


def _last_line(error: BaseException) -> str:
    """The last non-empty line of an exception's text (Ray's start-up errors end with their cause), at most 300
    characters."""
    return next((line.strip() for line in reversed(str(error).splitlines()) if line.strip()),
                type(error).__name__)[:300]


def cluster_resources(args: argparse.Namespace) -> dict[str, float]:
    """CPUs and GPUs of the cluster. A trial asking for more than that would wait forever: refuse on a local Ray,
    warn on a cluster (its autoscaler may add nodes)."""
    import ray

    res = ray.cluster_resources()
    cpus, gpus = res.get("CPU", 0.0), res.get("GPU", 0.0)
    problems = []
    if args.cpus_per_trial > cpus:
        problems.append(f"--cpus-per-trial {args.cpus_per_trial} but the cluster has {cpus:g} CPUs")
    if args.gpus_per_trial > gpus:
        problems.append(f"--gpus-per-trial {args.gpus_per_trial} but the cluster has {gpus:g} GPUs")
    if problems:
        msg = "; ".join(problems)
        if not args.address:
            raise SweepError(f"{msg}: no trial could ever start; lower the per-trial request")
        print(f"warning: {msg}; trials will wait until the cluster (autoscaler) provides them", file=sys.stderr)
    return {"CPU": cpus, "GPU": gpus}


def concurrent_trials(args: argparse.Namespace, resources: dict[str, float], n_trials: int) -> int:
    """How many of the sweep's `n_trials` trials run at once on these resources (at least 1)."""
    slots = [n_trials, math.floor(resources["CPU"] / args.cpus_per_trial + 1e-9)]
    if args.gpus_per_trial > 0:
        slots.append(math.floor(resources["GPU"] / args.gpus_per_trial + 1e-9))
    if args.max_concurrent is not None:
        slots.append(args.max_concurrent)
    return max(1, min(slots))


def with_resources(trainable: Callable[[dict[str, Any]], None], args: argparse.Namespace):
    """The trainable with the sweep's per-trial CPU/GPU request."""
    from ray import tune

    return tune.with_resources(trainable, {"cpu": args.cpus_per_trial, "gpu": args.gpus_per_trial})


def fit(trainable: Callable[[dict[str, Any]], None], args: argparse.Namespace, name: str, paths: SweepPaths,
        param_space: dict[str, Any], *, tune_config: Any = None, callbacks: Sequence[Any] = (),
        first_round: int = 1, storage_path: str | None = None, restore: bool | None = None) -> Any:
    """Run the sweep's trials; returns Tune's ResultGrid. `tune_config` and `callbacks` are used for a new
    experiment only; `first_round` is how many trials start at once (FailurePolicy's stop rule). The experiment is
    `name` under `storage_path` (default: the sweep's, paths.ray_storage); `restore` (default --resume) restores it."""
    from ray import tune
    from ray.tune.logger import JsonLoggerCallback

    trainable = with_resources(trainable, args)
    storage_path = storage_path or paths.ray_storage
    if args.resume if restore is None else restore:
        try:
            with reading_saved_state(join(storage_path, name)):
                tuner = tune.Tuner.restore(join(storage_path, name), trainable=trainable,
                                           resume_errored=args.retry_failed, param_space=param_space)
        except (ModuleNotFoundError, AttributeError) as e:  # Tune's state pickles our callbacks by module path
            if isinstance(e, AttributeError) and "Can't get attribute" not in str(e):
                raise  # not pickle's "this class is gone from its module": a bug, with its traceback
            raise SweepError(f"--resume {name}: Tune's saved state names code this version of ouvae does not have "
                             f"({e}); the sweep was started by an older version. Its results table stays readable "
                             f"(python -m analysis); continue measuring in a new sweep (another --name)") from None
    else:
        policy = FailurePolicy(args.max_failures, first_round)
        tuner = tune.Tuner(
            trainable, param_space=param_space, tune_config=tune_config,
            run_config=tune.RunConfig(name=name, storage_path=storage_path, verbose=0,
                                      callbacks=[*callbacks, policy, JsonLoggerCallback()],
                                      failure_config=tune.FailureConfig(max_failures=args.max_failures)))
    with tune_loop():  # a stop signal now ends Tune's loop with the experiment's state saved
        return tuner.fit()


@dataclass(frozen=True)
class Outcome:
    """The trials of a finished (or stopped) sweep, by how they ended."""

    complete: list[Any]  # ran their whole budget
    failed: list[Any]  # ended in an error (after their retries, if the error was retried)
    cut_short: list[Any]  # no error, no final evaluation: stopped early (ASHA) or interrupted (Ctrl-C, a stop)

    @classmethod
    def of(cls, results: Any) -> "Outcome":
        failed = [r for r in results if r.error is not None]
        ok = [r for r in results if r.error is None]
        final = [r for r in ok if (r.metrics or {}).get("is_final")]
        return cls(final, failed, [r for r in ok if not (r.metrics or {}).get("is_final")])

    def shared_setup_failure(self) -> str | None:
        """The reason, when no trial ran to its end and every failed trial failed with the same set-up error
        (missing data, a configuration the workers reject): then the remaining trials would fail alike."""
        reasons = {not_retried_reason(r.metrics) if (r.metrics or {}).get(SETUP_FAILURE_KEY) else None
                   for r in self.failed}
        if self.complete or len(reasons) != 1:
            return None
        return reasons.pop()

    def run_counts(self) -> tuple[int, int]:
        """(runs that ran their whole budget, runs that failed): a trial trains one run or a population of them,
        and a population's member can fail while the others train on."""
        tallies = [run_tally(r.config or {}, r.metrics, finished=r in self.complete, errored=r in self.failed)
                   for r in (*self.complete, *self.failed, *self.cut_short)]
        return sum(d for d, _ in tallies), sum(f for _, f in tallies)

    def failure_lines(self, label: Callable[[dict[str, Any]], str]) -> list[str]:
        """One line per failed trial (all its runs failed) and per failed member of a population: its label, the
        reason, and whether it was retried."""
        lines = []
        for r in self.failed:
            reason = not_retried_reason(r.metrics)
            text = f"{reason} (not retried)" if reason else failure_text(r.error)
            lines.append(f"  FAILED {label(r.config or {})}: {text}")
        for r in (*self.complete, *self.cut_short):
            runs = run_specs(r.config or {})
            lines += [f"  FAILED {label(runs[m])}: {why}" for m, why in failed_members(r.metrics)]
        return lines

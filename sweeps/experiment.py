"""The Ray Tune experiment of a sweep -- a new one or the one ``--resume`` restores -- and what became of its trials.

Both scripts run their trials the same way: retries from the trial's own checkpoints (``--max-failures``, for
crashes only: sweeps/failures.py), Tune's experiment under ``<storage>/ray/<name>`` (sweeps/storage.py), our
callbacks instead of Tune's console output. A restored experiment keeps the callbacks, searcher and scheduler it
was started with (Tune pickled them): only the trainable and the constant part of the parameter space are given
again.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from sweeps.connect import with_resources
from sweeps.failures import SETUP_FAILURE_KEY, FailurePolicy, failure_text, not_retried_reason
from sweeps.storage import SweepPaths
from sweeps.storage import join
from sweeps.trainable import failed_members, run_specs, run_tally


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
        tuner = tune.Tuner.restore(join(storage_path, name), trainable=trainable, resume_errored=args.retry_failed,
                                   param_space=param_space)
    else:
        policy = FailurePolicy(args.max_failures, first_round)
        tuner = tune.Tuner(
            trainable, param_space=param_space, tune_config=tune_config,
            run_config=tune.RunConfig(name=name, storage_path=storage_path, verbose=0,
                                      callbacks=[*callbacks, policy, JsonLoggerCallback()],
                                      failure_config=tune.FailureConfig(max_failures=args.max_failures)))
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

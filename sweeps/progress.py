"""What the driver tells the user and decides as trials end: one line per run, and which failures are retried.

A compact live progress line for sweeps (a Tune callback; replaces Tune's wide status tables).

Why not CLIReporter: Ray 2.60's default output engine ignores a passed reporter unless RAY_AIR_NEW_OUTPUT=0,
and either engine prints a table per update that scrolls a laptop terminal away. Researchers want one line per
finished run (what it was, whether the top layer collapsed) and a heartbeat while runs are long.

Which trial failures are retried, how a failure reads in one line, and when a sweep stops itself.

Why: ``FailureConfig(max_failures)`` retries every failure alike, so before this a sweep whose data were missing
started every trial, let each one fail, retried it twice from nothing, and never said why in one place. Retries
exist for what may not happen again: a crashed or killed worker (out of memory, a lost node) and transient I/O.
A configuration or data error, a run that diverged, or checkpoints that cannot be read would fail the same way
again -- the trainer is deterministic from its checkpoint -- so such a trial fails once, with its reason:

* the trainable (sweeps/trainable.py) catches these errors (``NOT_RETRIED``), reports one last result holding only
  the reason (sweeps/protocol.py: ``FAILURE_KEY``, and ``SETUP_FAILURE_KEY`` for errors about the set-up every
  trial shares), then re-raises, so the trial still ends in Tune's ERROR state with its traceback in error.txt
  (and ``--resume --retry-failed`` re-runs it after the cause is fixed);
* ``FailurePolicy``, a driver-side Tune callback, sees that result before Tune handles the failure (a function
  trainable's report waits for the driver) and tells Tune not to retry that trial (sweeps/compat.py: Tune's
  FailureConfig has no per-error policy). When every trial of the first round failed with the same set-up error
  and no trial has produced an evaluation, the remaining trials would fail alike: the policy stops the sweep as
  Ctrl-C does (resumable) and ``stop_reason`` says why.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from ray.tune import Callback

from ouvae.config import format_latent_dims
from sweeps import compat
from sweeps.protocol import SETUP_FAILURE_KEY, failed_members, failure_text, not_retried_reason, run_specs, run_tally


def _fmt_value(key: str, value: Any) -> str:
    if key == "latent_dims" and isinstance(value, (list, tuple)):
        return format_latent_dims(value)
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _result_line(r: Mapping[str, Any]) -> str:
    """What one run's final evaluation says: the top layer's active units and KL, and the bound."""
    if "top_active_units" not in r:
        return ""
    top = r["latent_dims"].split("-")[-1] if r.get("latent_dims") else "?"
    text = (f"top AU {r['top_active_units']}/{top}  top KL {r.get('top_kl', float('nan')):.3f}  "
            f"L_{r.get('iw_k', '?')} {r.get('iw_bound', float('nan')):.2f}")
    if not r.get("is_final", True):
        text += f"  (stopped early at epoch {r.get('epoch')})"
    return text


class ProgressLine(Callback):
    """One line per finished / failed / retried run, and a heartbeat every `heartbeat_s` seconds.

    A trial trains one run or a population of runs (sweeps/trainable.py); counts and lines are per run, so a
    population trial prints a line for each member when it ends, and a member that fails while the others train on
    is announced when its failure is reported. `total` is the number of runs the sweep will train."""

    def __init__(self, show: Sequence[str], total: int | None = None, heartbeat_s: float = 30.0,
                 stream: Any = None):
        self.show, self.total, self.heartbeat_s = tuple(show), total, heartbeat_s
        self._stream = stream
        self._t0: float | None = None
        self._last_print = 0.0
        self.done = self.failed = 0
        self._seeded = False
        self._announced: set[tuple[str, int]] = set()  # (trial id, member) of failed members already printed

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_stream"] = None  # streams do not pickle; Tune pickles callbacks into tuner.pkl
        state["_seeded"], state["_t0"] = False, None
        return state

    def _out(self, text: str) -> None:
        stream = self._stream or sys.stdout
        elapsed = time.monotonic() - (self._t0 or time.monotonic())
        print(f"[{int(elapsed // 60):02d}:{int(elapsed % 60):02d}] {text}", file=stream, flush=True)
        self._last_print = time.monotonic()

    def _label(self, spec: Mapping[str, Any]) -> str:
        return " ".join(f"{k}={_fmt_value(k, spec.get(k))}" for k in self.show if k in spec)

    def _trial_label(self, trial) -> str:
        runs = run_specs(trial.config)
        if len(runs) == 1:
            return self._label(runs[0])
        return f"population of {len(runs)} ({self._label(runs[0])} ...)"

    def _count(self, trials, finished=None) -> str:
        total = self.total or sum(len(run_specs(t.config)) for t in trials)
        running = sum(1 for t in trials if t.status == "RUNNING" and t is not finished)
        return f"{self.done + self.failed}/{total} runs done, {running} trials running, {self.failed} failed"

    def setup(self, stop=None, num_samples=None, total_num_samples=None, **info) -> None:
        self._t0 = time.monotonic()
        self._last_print = self._t0

    def on_step_begin(self, iteration: int, trials: list, **info) -> None:
        if not self._seeded:  # a resumed sweep starts with trials that finished before the crash
            self._seeded = True
            tallies = [run_tally(t.config, t.last_result, finished=t.status == "TERMINATED", errored=t.status == "ERROR")
                       for t in trials]
            self.done, self.failed = sum(d for d, _ in tallies), sum(f for _, f in tallies)
            if self.done or self.failed:
                self._out(f"resumed: {self._count(trials)}")

    def on_step_end(self, iteration: int, trials: list, **info) -> None:
        if self._t0 is None:
            self._t0 = time.monotonic()
        if time.monotonic() - self._last_print >= self.heartbeat_s:
            self._out(self._count(trials))

    def on_trial_result(self, iteration: int, trials: list, trial, result: dict, **info) -> None:
        runs = run_specs(trial.config)
        for member, why in failed_members(result):
            if (trial.trial_id, member) not in self._announced:
                self._announced.add((trial.trial_id, member))
                self.failed += 1
                self._out(f"FAILED {self._label(runs[member])}: {why} (the rest of its population trains on)   "
                          f"[{self._count(trials)}]")

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        r = trial.last_result or {}
        runs = run_specs(trial.config)
        members = r.get("members")
        if members is None:
            self.done += 1
            self._out(f"done   {self._label(runs[0])}: {_result_line(r)}   [{self._count(trials, trial)}]")
            return
        finished = [row for row in members if not row.get("failure")]
        self.done += len(finished)
        count = self._count(trials, trial)  # once per trial: it walks every trial of the sweep
        for row in finished:
            self._out(f"done   {self._label(runs[row['member']])}: {_result_line(row)}   [{count}]")

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        announced = sum(1 for tid, _ in self._announced if tid == trial.trial_id)
        self.failed += len(run_specs(trial.config)) - announced
        final = " (not retried: a retry would fail alike)" if not_retried_reason(trial.last_result) else ""
        self._out(f"FAILED {self._trial_label(trial)}: {failure_reason(trial)}{final}   [{self._count(trials, trial)}]")

    def on_trial_recover(self, iteration: int, trials: list, trial, **info) -> None:
        self._out(f"retry  {self._trial_label(trial)} from its last checkpoint "
                  f"(failure {trial.num_failures}): {failure_reason(trial)}")


class FailurePolicy(Callback):
    """No retries for trials that report a deterministic failure; stop the sweep when the whole first round
    failed with the same set-up error (see the module docstring).

    ``max_failures``: the sweep's FailureConfig value (a trial gets it back after its failure is handled).
    ``first_round``: how many trials run at once at the start (min of the cluster's slots and the sweep's size).
    """

    def __init__(self, max_failures: int, first_round: int):
        self.max_failures = max_failures
        self.first_round = max(1, first_round)
        self.ended: list[str | None] = []  # per ended trial, in order: its set-up error, or None
        self.evaluated = False  # some trial reported an evaluation in this session
        self.stop_reason: str | None = None

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles callbacks into tuner.pkl; what a session saw does not carry over to a --resume.
        state = self.__dict__.copy()
        state.update(ended=[], evaluated=False, stop_reason=None)
        return state

    def on_trial_result(self, iteration: int, trials: list, trial, result: dict, **info) -> None:
        if not_retried_reason(result) is None:
            self.evaluated = self.evaluated or "step" in result
            return
        compat.skip_retries(trial)

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        self.ended.append(None)

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        result = trial.last_result or {}
        if not_retried_reason(result) is not None:
            compat.allow_retries(trial, self.max_failures)
        setup = result.get(SETUP_FAILURE_KEY) and not_retried_reason(result)
        self.ended.append(setup.split(":", 1)[0] if setup else None)
        if self.stop_reason is None and self._first_round_failed_alike():
            self.stop_reason = f"each of the first {self.first_round} trials failed with {not_retried_reason(result)}"
            print(f"stopping the sweep: {self.stop_reason}; the other trials would fail alike", flush=True)
            compat.interrupt_experiment()

    def _first_round_failed_alike(self) -> bool:
        first = self.ended[:self.first_round]
        return (not self.evaluated and len(first) == self.first_round and first[0] is not None
                and all(kind == first[0] for kind in first))


# ----- one line per failure -----------------------------------------------------------------------------------
def failure_reason(trial: Any) -> str:
    """One line for a failed trial: the exception type and the first line of its message (the full trace
    stays in the trial's error.txt in Ray's experiment folder)."""
    reason = not_retried_reason(trial.last_result)
    if reason is not None:
        return reason
    # Tune writes the error to the trial's *local* staging folder first (pickled_error_file / error_file) and syncs
    # it to storage later, so when the callbacks run only the local copies are sure to exist.
    readers = (lambda: _load_pickle(trial.pickled_error_file), lambda: _read_text(trial.error_file),
               trial.get_pickled_error, trial.get_error)
    for read in readers:
        try:
            err = read()
        except Exception:  # noqa: BLE001 - an unreadable error file must not break the sweep
            err = None
        if err:
            return failure_text(err)
    return "unknown error"


def _load_pickle(path: str | None) -> Any:
    if not path or not os.path.isfile(path):
        return None
    import ray.cloudpickle as cloudpickle

    with open(path, "rb") as f:
        return cloudpickle.load(f)


def _read_text(path: str | None) -> str | None:
    if not path or not os.path.isfile(path):
        return None
    return Path(path).read_text(errors="replace")

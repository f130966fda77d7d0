"""The trial protocol: what the driver and a trial's worker agree on about a trial's config and its results.

The contract is docs/architecture.md, section 3 ("Trainable -> driver"). A trial config is flat ``Config`` fields
plus ``preset``; a population trial adds ``population`` (``POPULATION_KEY``): the overrides its members share and
``members``, one dict of overrides per member; a ladder trial's population entry also holds ``ladder``
(``LADDER_KEY``). A trial that fails for good first reports a result holding only its reason (``failure_result``).

Why a module of its own, without torch or Ray: the worker (sweeps/trainable.py) writes this protocol, and the
driver's callbacks and searchers (sweeps/results.py, sweeps/progress.py, sweeps/adaptive.py ...) and the test
trainables read it. Kept beside the worker, every reader imported torch and the trainer to read a dict; here the
driver's results sink needs neither (tests/test_structure.py checks that importing it loads no torch).
"""

from __future__ import annotations

from typing import Any, Mapping


POPULATION_KEY = "population"
# A ladder trial's population entry also holds ``ladder``: {"lineage": the run's results-file id (its first trial),
# "continue_from": the folder of the checkpoints it continues from} (sweeps/ladder.py). Not a run setting.
LADDER_KEY = "ladder"
# The folder, inside a trial's folder on the sweep's storage, of the trial's own checkpoints (sweeps/trainable.py);
# a ladder's next rung continues a run from there.
CHECKPOINT_FOLDER = "ouvae_checkpoints"
FAILURE_KEY = "not_retried_failure"  # the one-line reason, in the last result of a trial failing for good
SETUP_FAILURE_KEY = "setup_failure"  # True when that reason is a set-up error (configuration, data, storage)


# ----- a trial's config ------------------------------------------------------------------------------------------
def run_specs(config: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The flat settings of every run a trial trains: the trial config itself, or for a population trial its
    shared settings plus each member's own (the driver labels runs with these; the trainable builds configs)."""
    spec = dict(config)
    population = dict(spec.pop(POPULATION_KEY, None) or {})
    members = population.pop("members", None) or [{}]
    population.pop(LADDER_KEY, None)
    return [{**spec, **population, **member} for member in members]


def ladder_spec(config: Mapping[str, Any]) -> dict[str, Any]:
    """A ladder trial's ``lineage`` and ``continue_from`` (empty for any other trial)."""
    return dict((config.get(POPULATION_KEY) or {}).get(LADDER_KEY) or {})


def results_file_id(trial_id: str, config: Mapping[str, Any]) -> str:
    """The id of the results file a trial's rows go to: its own, or for a ladder trial that continues a run, the
    file of the run's first trial (so a run keeps one file and one run id across rungs)."""
    return ladder_spec(config).get("lineage") or trial_id


# ----- a trial's results -----------------------------------------------------------------------------------------
def failed_members(result: Mapping[str, Any] | None) -> list[tuple[int, str]]:
    """(member, reason) of the members of a population trial that failed while the others trained on."""
    return [(int(m), str(why)) for m, why in (result or {}).get("failed_members", [])]


def run_tally(config: Mapping[str, Any], result: Mapping[str, Any] | None, *, finished: bool,
              errored: bool) -> tuple[int, int]:
    """(runs done, runs failed) of one trial from its config and last result: an errored trial failed every run;
    a finished one completed all but the members that failed inside it."""
    runs, failed = len(run_specs(config)), len(failed_members(result))
    if errored:
        return 0, runs
    return (runs - failed if finished else 0), failed


# ----- a trial failing for good (the driver's FailurePolicy: sweeps/progress.py) ----------------------------------
def failure_result(error: BaseException, *, setup: bool) -> dict[str, Any]:
    """The result a trial reports before re-raising `error`, which a retry would meet again (which errors those
    are is the worker's knowledge: sweeps/trainable.py, ``NOT_RETRIED``); `setup`: the error is about what every
    trial shares (configuration, data, storage)."""
    return {FAILURE_KEY: failure_text(error), SETUP_FAILURE_KEY: setup}


def not_retried_reason(result: Mapping[str, Any] | None) -> str | None:
    """The reason of a trial that failed for good without retries (its last result), else None."""
    return (result or {}).get(FAILURE_KEY)


def failure_text(err: Any) -> str:
    """Exception (Ray wraps the trial's own in RayTaskError; `.cause` is the original) or error text -> one line."""
    if err is None:
        return "unknown error"
    if isinstance(err, BaseException):
        cause = getattr(err, "cause", None) or err
        first = next((ln.strip() for ln in str(cause).splitlines() if ln.strip()), "")
        name = type(cause).__name__
        if name in ("RayTaskError", "TuneError") or name.startswith("RayTaskError("):
            return _last_exception_line(str(cause))
        return f"{name}: {first}"[:300]
    return _last_exception_line(str(err))


def _last_exception_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for ln in reversed(lines):  # tracebacks end with "ExcType: message"
        head = ln.split(":", 1)[0]
        if head and " " not in head and (head.endswith(("Error", "Exception", "Stalled", "Failure"))
                                         or "." in head):
            return ln[:300]
    return (lines[-1] if lines else "unknown error")[:300]

"""What the annealing search relies on in Optuna beyond its documented behaviour, in one place. Checked against
Optuna 5.0.0.

tests/test_compat.py fails, naming the item, when the installed Optuna no longer behaves as relied on here.
"""

from __future__ import annotations

import warnings
from typing import Any

CHECKED_VERSION = "5.0.0"

# Trial.report() of a step that already has a value keeps the first value and warns with this text (a UserWarning
# from optuna/trial/_trial.py). A Tune trial restarted from its checkpoint re-sends the evaluations it already had
# (sweeps/trainable.py): the same measurement, so the warning is noise.
DUPLICATE_REPORT = r"The reported value is ignored because this `step=\d+` is already reported"


def report_once(trial: Any, value: float, step: int) -> None:
    """``trial.report(value, step)``; a step already reported keeps its value, silently."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=DUPLICATE_REPORT, category=UserWarning)
        trial.report(value, step=step)


def conditional_tpe(seed: int) -> Any:
    """TPE that models the sampled parameters jointly and splits the space by which parameters a trial sampled
    (``multivariate=True, group=True``): what a define-by-run, conditional space needs. Optuna marks ``group``
    experimental; its ExperimentalWarning is expected here and nowhere else."""
    import optuna

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True)


def trial_of(study: Any, frozen: Any) -> Any:
    """The writable optuna.Trial of a stored RUNNING trial. Optuna hands a Trial out only from ``ask``; a trial
    asked by a driver that has since died is reached through FrozenTrial's private ``_trial_id``."""
    import optuna

    return optuna.trial.Trial(study, frozen._trial_id)

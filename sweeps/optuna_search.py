"""OptunaSearch that tells Optuna the truth about trials ASHA stopped early.

Why: Ray's OptunaSearch reports every trial that ends without an error as COMPLETE with its *last* value. A trial
stopped by ASHA after 2 of 6 evaluations then enters the study with the bound of a 2-evaluation run, and TPE
learns from truncated values as if they were full runs. Here:

* a trial whose last result is the end of its budget (``is_final``) is COMPLETE with its objective value(s);
* a trial stopped before its budget is PRUNED (TPE ranks pruned trials below complete ones, using the
  intermediate values Ray reported at every evaluation) -- so only full-budget trials carry values;
* a trial that errored, or whose objective is NaN/inf, is FAIL.

Useful result fields are stored as user attributes (ray_trial_id, epoch, top_active_units, ...), visible in
optuna-dashboard. Defined at module level so Ray can pickle it into its experiment state for --resume.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import optuna
from ray.tune.search.optuna import OptunaSearch

from sweeps import compat

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
            ot_trial.set_user_attr("ray_trial_id", trial_id)
            record_end(compat.optuna_study(self), ot_trial, result, state, value)
        except optuna.exceptions.UpdateFinishedTrialError:
            return  # told to Optuna before a driver crash, after Tune's last snapshot: already recorded

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        """The intermediate value at the evaluation's optimizer step (Ray uses training_iteration, which starts
        again at 1 when a trial continues from its checkpoint). A step already reported -- the evaluation a
        restarted trial re-sends -- keeps its value: it is the same measurement. Results without the metric (a
        failing trial's last word, sweeps/progress.py) are not evaluations."""
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

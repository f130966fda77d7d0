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
import sys
import warnings
from typing import Any

import optuna
from ray.tune.search.optuna import OptunaSearch

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
    """See the module docstring."""

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        ot_trial = self._ot_trials[trial_id]
        state, value = outcome(result, error, self.metric)
        try:
            ot_trial.set_user_attr("ray_trial_id", trial_id)
            for key in USER_ATTRS:
                if result and result.get(key) is not None:
                    ot_trial.set_user_attr(key, result[key])
            self._ot_study.tell(ot_trial, value if state == TS.COMPLETE else None, state=state)
        except Exception as exc:  # noqa: BLE001 - e.g. already told before a driver crash
            print(f"[optuna] could not record trial {trial_id}: {exc}", file=sys.stderr)
        self._completed_trials.add(trial_id)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        """The intermediate value at the evaluation's optimizer step (Ray uses training_iteration, which starts
        again at 1 when a trial continues from its checkpoint). A step already reported -- the evaluation a
        restarted trial re-sends -- keeps its value: it is the same measurement."""
        if isinstance(self.metric, list):
            return  # Optuna takes no intermediate values for several objectives
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        ot_trial = self._ot_trials[trial_id]
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=r".*is already reported", category=UserWarning)
                ot_trial.report(float(result[self.metric]), step=int(result["step"]))
        except optuna.exceptions.UpdateFinishedTrialError:
            # Told to Optuna before a driver crash, after Tune's last snapshot: Tune runs it again.
            self._completed_trials.add(trial_id)

    def restore(self, checkpoint_path: str) -> None:
        super().restore(checkpoint_path)
        # Trials the study already finished (told after Tune's last snapshot) must not be reported to again.
        finished = {t.number for t in self._ot_study.get_trials(deepcopy=False) if t.state.is_finished()}
        self._completed_trials.update(tid for tid, t in self._ot_trials.items() if t.number in finished)
        # Trials asked after Tune's last snapshot are asked again under new numbers on resume: close the stale
        # ones as FAIL so the study shows no phantom RUNNING trials.
        known = {t.number for t in self._ot_trials.values()}
        for t in self._ot_study.get_trials(deepcopy=False, states=(TS.RUNNING,)):
            if t.number not in known:
                try:
                    self._ot_study.tell(t.number, state=TS.FAIL)
                except Exception:  # noqa: BLE001
                    pass

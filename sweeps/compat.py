"""Everything the sweeps take from Ray and Optuna beyond their public APIs, in one place. Checked against Ray
2.60.0 and Optuna 5.0.0 (``RAY_CHECKED``, ``OPTUNA_CHECKED``).

Why one module: each item below depends on how a library behaves inside, not on a documented contract, so an
upgrade can break it silently. tests/test_compat.py checks every item against the installed Ray and Optuna and
fails naming the item when one no longer holds; the fix then belongs here only. Each function says what it relies
on.

Imports of Ray and Optuna happen inside the functions: importing this module (e.g. from clusters/validate.py) is
free (it imports only sweeps/errors.py of the project).
"""

from __future__ import annotations

import signal
import threading
import warnings
from typing import Any, Callable, Mapping

from sweeps.errors import StorageUnreachable


RAY_CHECKED = "2.60.0"

# Environment of a sweep driver process (set by sweeps.cli.main, never on import):
# * RAY_AIR_NEW_OUTPUT=0: Ray's default ("new") output engine prints its status tables whatever `verbose` says; the
#   legacy engine honours verbose=0, so our one-line progress (sweeps/progress.py) is the only output. Listed in
#   ray.air.constants.AIR_ENV_VARS, read by ray.tune.experimental.output.get_air_verbosity.
# * TUNE_DISABLE_STRICT_METRIC_CHECKING=1: a trial that fails deterministically first reports a result that holds
#   only its failure (sweeps/protocol.py: failure_result) -- no metric. Tune would otherwise reject that result because a scheduler
#   or searcher names a metric (ASHA, Optuna: iw_bound). Documented in ray.tune.constants.TUNE_ENV_VARS; ASHA and
#   our searchers skip results without their metric.
# * TUNE_DISABLE_AUTO_CALLBACK_LOGGERS=1: Tune adds CSV and TensorBoardX loggers beside its JSON one unless this is
#   set (ray.tune.utils.callback._create_default_callbacks). A population trial's result holds its members' rows as
#   a list, which those two cannot log (TensorBoardX warns at every report); the results table is ours anyway.
#   sweeps/experiment.py adds the JSON logger back (each trial's result.json).
DRIVER_ENV = {"RAY_AIR_NEW_OUTPUT": "0", "TUNE_DISABLE_STRICT_METRIC_CHECKING": "1",
              "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1"}


# ----- the running trial's storage (worker side) ---------------------------------------------------------------
def trial_storage() -> tuple[Any, str]:
    """(pyarrow filesystem, the trial's folder on it) of the running Tune trial, after Ray's own check that this
    node sees the storage the driver set up.

    Relies on: ``tune.get_context().get_storage()`` (DeveloperAPI) returning Ray Train's internal StorageContext
    with ``storage_filesystem``, ``trial_fs_path`` and the private ``_check_validation_file()`` (a RuntimeError
    when the marker file the driver wrote is not there). Tune runs that check when it uploads a checkpoint; the
    trainable's own checkpoints (sweeps/trainable.py) bypass that upload, so it is run here: on a multi-node
    cluster with a --storage path that only the head has, the trial fails with StorageUnreachable and Ray's
    explanation (use NFS or S3) instead of writing checkpoints no other node can read.
    """
    from ray import tune

    storage = tune.get_context().get_storage()
    try:
        storage._check_validation_file()
    except RuntimeError as e:
        raise StorageUnreachable(" ".join(str(e).split())) from None
    return storage.storage_filesystem, storage.trial_fs_path


# ----- retries and stopping (driver side, inside Tune callbacks) -----------------------------------------------
def skip_retries(trial: Any) -> None:
    """The trial's next failure is final (no retry from its checkpoint).

    Relies on: ``Trial.should_recover()`` comparing ``run_metadata.num_failures`` with the attribute
    ``Trial.max_failures`` when TuneController._process_trial_failure handles the failure -- after the callbacks
    saw the trial's last result. FailureConfig has no per-exception policy (Ray 2.60: max_failures, fail_fast).
    """
    trial.max_failures = 0


def allow_retries(trial: Any, max_failures: int) -> None:
    """Undo skip_retries once the failure is handled: the value goes into Tune's snapshot, and a trial re-run by
    ``--resume --retry-failed`` gets its retries back. Relies on ``Trial.invalidate_json_state()``."""
    trial.max_failures = max_failures
    trial.invalidate_json_state()


def interrupt_experiment() -> bool:
    """End the running ``Tuner.fit()`` as Ctrl-C does: Tune stops its loop after this step, saves the experiment
    state, and the sweep can be continued with ``Tuner.restore``. Call it from a Tune callback. Returns False (and
    does nothing) when Tune installed no handler (``Tuner.fit()`` outside the main thread).

    Relies on: ``ray.tune.tune._setup_signal_catching`` installing one handler for SIGINT and SIGUSR1 when
    ``Tuner.fit()`` runs in the main thread; the handler only sets the loop's stop event. It is called directly
    (no signal is sent). A Stopper cannot do this: ``Stopper.stop_all()`` marks the searcher finished and the
    unstarted trials terminated, so a restored sweep would never run them.
    """
    if threading.current_thread() is not threading.main_thread():
        return False
    handler = signal.getsignal(signal.SIGUSR1)
    if not callable(handler) or getattr(handler, "__name__", "") != "signal_interrupt_tune_run":
        return False
    handler(signal.SIGUSR1, None)
    return True


# ----- Ray's OptunaSearch ----------------------------------------------------------------------------------------
def optuna_study(searcher: Any) -> Any:
    """The optuna.Study behind a ray.tune.search.optuna.OptunaSearch (private ``_ot_study``)."""
    return searcher._ot_study


def optuna_trials(searcher: Any) -> Mapping[str, Any]:
    """Tune trial id -> the optuna.Trial asked for it (private ``_ot_trials``)."""
    return searcher._ot_trials


def completed_trial_ids(searcher: Any) -> set[str]:
    """Tune trial ids already told to Optuna (private ``_completed_trials``; the set is updated in place)."""
    return searcher._completed_trials


# ----- cluster launcher configs (clusters/validate.py) ------------------------------------------------------------
def autoscaler_config_checks() -> tuple[Callable[[dict], dict], Callable[[dict], None]]:
    """(prepare_config, validate_config): the offline checks `ray up` runs on a cluster YAML before it calls the
    cloud. Relies on ``ray.autoscaler._private.util`` (there is no public equivalent)."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    return prepare_config, validate_config


# ----- Ray Client ---------------------------------------------------------------------------------------------------
CLIENT_CONNECT_ATTEMPTS = 3


def init_client(address: str, **init_kwargs: Any) -> None:
    """``ray.init(address="ray://...")``, tried up to CLIENT_CONNECT_ATTEMPTS times when the head's client server
    fails to start the server for this connection ("Initialization failure from server").

    Relies on: ray-project/ray#63202 (open in 2.60, seen here about once in three connections): the head's client
    proxier forks a server per connection while gRPC threads run, and that server intermittently dies at start;
    the next connection gets a new one. Other errors are raised at once.
    """
    import ray

    for attempt in range(1, CLIENT_CONNECT_ATTEMPTS + 1):
        try:
            ray.init(address=address, **init_kwargs)
            return
        except ConnectionError as e:
            if "Initialization failure from server" not in str(e) or attempt == CLIENT_CONNECT_ATTEMPTS:
                raise
            ray.shutdown()  # forget the failed connection before the next one


def ray_client_missing() -> str | None:
    """Why Ray Client (``ray://`` addresses, ``ray start --ray-client-server-port``) cannot run here, or None when
    it can. Relies on ``ray._private.utils.get_ray_client_dependency_error``."""
    from ray._private.utils import get_ray_client_dependency_error

    error = get_ray_client_dependency_error()
    return None if error is None else str(error)


# ----- Optuna --------------------------------------------------------------------------------------------------
OPTUNA_CHECKED = "5.0.0"

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

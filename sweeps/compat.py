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

import contextlib
import logging
import os
import signal
import sys
import threading
import warnings
from typing import Any, Callable, Iterator, Mapping

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
# * TUNE_DISABLE_SIGINT_HANDLER=1: Tune would replace the SIGINT handler for the length of Tuner.fit(); the driver's
#   own (stop_signals, below) treats SIGINT and SIGTERM alike and remembers which one came (exit code 130 or 143).
#   Read by ray.tune.tune._setup_signal_catching, which still installs its handler for SIGUSR1.
# * RAY_kill_idle_workers_interval_ms=0: the local raylet (it inherits the driver's environment; a cluster's raylets
#   keep their own settings) no longer ends idle worker processes during the sweep. In Ray 2.60 such an intended
#   exit can abort inside absl::Mutex ("Mutex corrupt: waiting writer with no waiters", then "Fatal Python error:
#   Aborted"), which the driver prints from the worker's stderr: 1 of 460 idle exits in this machine's test runs
#   of 2026-12-07/08 (BENCHMARKS.md, "The test suite"). The idle workers stay until Ray shuts down (a sweep has at
#   most its concurrent trials' worth). A raylet setting (ray_config_def.h), read from RAY_<name>.
DRIVER_ENV = {"RAY_AIR_NEW_OUTPUT": "0", "TUNE_DISABLE_STRICT_METRIC_CHECKING": "1",
              "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1", "TUNE_DISABLE_SIGINT_HANDLER": "1",
              "RAY_kill_idle_workers_interval_ms": "0"}


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


# ----- what a sweep's driver prints (sweeps.cli.main, sweeps/experiment.py) -----------------------------------
# Log records of Ray and Tune in the driver that a user takes for trouble and that say nothing the sweep's own lines
# do not say better: logger name -> the starts of those messages. Each is matched on the logger that emits it (a
# filter on a logger sees only its own records), so every other record of those loggers still gets through.
# * the token-authentication notice of every local Ray start (it tells how to opt out of a default);
# * Tune's own interrupt messages: "Stop signal received ... Press CTRL+C (or send SIGINT/SIGKILL/SIGTERM)",
#   "Experiment has been interrupted ... Resume experiment with: Tuner.restore(...)" (a Python API, not the sweep's
#   --resume command, which sweeps/rho_sweep.py prints) and "Trials did not complete: [...]" (the summary says which);
# * "Failed to fetch metrics for N trial(s): FileNotFoundError(... both result.json and progress.csv were not
#   found ...)": Tune's ResultGrid, built when fit() ends, reads every trial's result file, and a trial that had
#   not started when the sweep was interrupted has none. One line per such trial -- 28 after Ctrl-C 30 s into the
#   default sweep;
# * Tune's "The `on_step_begin` operation took 0.668 s, which may be a performance bottleneck." (warn_if_slow,
#   the only message of its module that starts so): on a loaded laptop a user can do nothing about it.
DRIVER_LOG_NOISE: Mapping[str, tuple[str, ...]] = {
    "ray._private.authentication.authentication_token_setup": ("Token authentication is enabled for this Ray",),
    "ray.tune.tune": ("Stop signal received", "Experiment has been interrupted", "Trials did not complete"),
    "ray.tune.analysis.experiment_analysis": ("Failed to fetch metrics",),
    "ray.tune.utils.util": ("The `",),
}


class _DropMessages(logging.Filter):
    """Drops the records whose message starts with one of `starts`."""

    def __init__(self, starts: tuple[str, ...]):
        super().__init__()
        self.starts = starts

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.starts)


def quiet_driver_logs() -> None:
    """Keep DRIVER_LOG_NOISE out of this process's output (idempotent). Relies on the logger names and message
    texts listed there (tests/test_compat.py finds each text in its module's source)."""
    for name, starts in DRIVER_LOG_NOISE.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMessages) for f in logger.filters):
            logger.addFilter(_DropMessages(starts))


class _StopSignals:
    """The driver's SIGINT/SIGTERM state: which stop signal came first (None: none), whether Tune's loop runs."""

    def __init__(self) -> None:
        self.received: int | None = None
        self.in_fit = 0
        self.active = False


_STOP = _StopSignals()
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
STOPPING_NOTICE = ("\nstopping: saving the sweep's state; the runs that did not finish continue from their last "
                   "checkpoint with the --resume command printed below (the same signal again stops at once)\n")


def _on_stop_signal(signum: int, frame: Any) -> None:
    first = _STOP.received is None
    if first:
        _STOP.received = signum
    if first and _STOP.in_fit and interrupt_experiment():
        os.write(sys.stderr.fileno(), STOPPING_NOTICE.encode())  # no print(): it may interrupt a print on stdout
        return
    raise KeyboardInterrupt


@contextlib.contextmanager
def stop_signals() -> Iterator[None]:
    """For the length of a sweep script's run: SIGINT (Ctrl-C) and SIGTERM (``timeout``, schedulers, Kubernetes)
    stop the sweep alike. The first one inside ``Tuner.fit()`` ends Tune's loop as Ctrl-C does in Tune (the
    experiment state is saved, the trials that did not finish stay resumable, the script prints its summary and
    the --resume command); outside it, or the second one, raises KeyboardInterrupt. ``stop_signal()`` says which
    came. The previous handlers are put back at the end.

    Why not Ray's handlers: ``ray.init`` makes SIGTERM ``sys.exit(15)`` -- a traceback from wherever the driver
    was -- and Ray's core worker installs abseil's failure-signal handler over it, which prints a native stack dump
    ("*** SIGTERM received at time=... @ 0x..."). ``reclaim_sigterm()`` takes SIGTERM back after ``ray.init``.
    Relies on TUNE_DISABLE_SIGINT_HANDLER (DRIVER_ENV) and on ``interrupt_experiment``."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = {s: signal.getsignal(s) for s in STOP_SIGNALS}
    _STOP.__init__()
    _STOP.active = True
    try:
        for s in STOP_SIGNALS:
            signal.signal(s, _on_stop_signal)
        yield
    finally:
        _STOP.active = False
        for s, handler in before.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)


def reclaim_sigterm() -> None:
    """After ``ray.init`` (which replaced it) SIGTERM is the sweep's stop signal again, inside ``stop_signals``."""
    if _STOP.active and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_stop_signal)


@contextlib.contextmanager
def tune_loop() -> Iterator[None]:
    """Around ``Tuner.fit()``: a stop signal now ends Tune's loop gracefully (interrupt_experiment)."""
    _STOP.in_fit += 1
    try:
        yield
    finally:
        _STOP.in_fit -= 1


def stop_signal() -> int | None:
    """The first SIGINT or SIGTERM the running sweep script received, or None."""
    return _STOP.received


# ----- a worker's exit (worker side) ---------------------------------------------------------------------------
def quiet_exit_in_finalizers() -> None:
    """A trial's worker process prints no "Exception ignored in: <function WeakSet...> ... sigterm_handler ...
    SystemExit: 1" when Ray stops it (idempotent; call it in the worker).

    Relies on: Ray's worker loop (``ray._private.worker.Worker.main_loop``) handling SIGTERM by raising
    SystemExit. When the signal lands while a finaliser runs (a weakref callback of a WeakSet, a ``__del__``), the
    exception cannot propagate: Python reports it through ``sys.unraisablehook`` -- whose default prints it to
    stderr, which Ray forwards to the driver's terminal just before the sweep's last lines -- and the worker goes
    on exiting. Only SystemExit is dropped; every other unraisable exception goes to the previous hook.
    """
    previous = sys.unraisablehook
    if getattr(previous, "drops_system_exit", False):
        return

    def hook(unraisable: Any) -> None:
        if isinstance(unraisable.exc_value, SystemExit) or unraisable.exc_type is SystemExit:
            return
        previous(unraisable)

    hook.drops_system_exit = True  # type: ignore[attr-defined]
    sys.unraisablehook = hook


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


# ----- a local Ray ---------------------------------------------------------------------------------------------------
LOCAL_START_ATTEMPTS = 2
LOCAL_START_TIMEOUT = "The current node timed out during startup"


def start_local_ray(**init_kwargs: Any) -> None:
    """``ray.init(...)`` of a new local Ray, started a second time when the first start timed out.

    Relies on: ``ray/_private/node.py`` waiting a fixed 30 s (``raylet_start_wait_time_s``, not configurable) for
    the new raylet to register with the GCS, then raising a bare ``Exception`` whose text starts with
    LOCAL_START_TIMEOUT -- and leaving the processes it started (GCS, raylet, agents) running. On a loaded machine
    (a training job beside two Rays starting at once: seen in the test suite, BENCHMARKS.md "The test suite") the
    raylet can miss that window although nothing is wrong; the second start usually does not. Before it, the
    first start's processes (this process's children that were not there before) are killed, so the two Rays do
    not compete and nothing is left behind. Other errors are raised at once.
    """
    import ray
    import psutil  # after ray, as Ray imports it (Ray ships its own copy on its path)

    before = {child.pid for child in psutil.Process().children(recursive=True)}
    for attempt in range(1, LOCAL_START_ATTEMPTS + 1):
        try:
            ray.init(**init_kwargs)
            return
        except Exception as e:  # noqa: BLE001 - Ray raises a bare Exception for this timeout
            if LOCAL_START_TIMEOUT not in str(e) or attempt == LOCAL_START_ATTEMPTS:
                raise
        print("  Ray did not start within its 30 s (a loaded machine?): starting it once more", flush=True)
        _kill_children_except(before)
        ray.shutdown()


def _kill_children_except(kept: set[int]) -> None:
    """SIGKILL this process's children (recursively) whose pids are not in `kept`, and reap them."""
    import psutil

    new = [child for child in psutil.Process().children(recursive=True) if child.pid not in kept]
    for child in new:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()
    psutil.wait_procs(new, timeout=10)


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

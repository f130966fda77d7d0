"""What sweeps/compat.py relies on, checked against the installed Ray and Optuna.

Each test names one item of those modules. When a Ray or Optuna upgrade breaks an item, its test fails here (never
skips), and the fix belongs in the adapter module only. The versions it was checked against are its RAY_CHECKED
and OPTUNA_CHECKED.
"""

from __future__ import annotations

import time
import warnings

import optuna
import pytest

from sweeps import compat


# ----- Ray --------------------------------------------------------------------------------------------------------
def test_driver_environment_variables_are_ray_settings_with_the_meaning_relied_on(monkeypatch):
    from ray.air.constants import AIR_ENV_VARS
    from ray.tune.constants import TUNE_ENV_VARS
    from ray.tune.experimental.output import get_air_verbosity

    assert set(compat.DRIVER_ENV) - {"RAY_kill_idle_workers_interval_ms"} <= AIR_ENV_VARS | TUNE_ENV_VARS
    monkeypatch.setenv("RAY_AIR_NEW_OUTPUT", compat.DRIVER_ENV["RAY_AIR_NEW_OUTPUT"])
    assert get_air_verbosity(0) is None  # the legacy engine: verbose=0 prints no tables
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback, TBXLoggerCallback
    from ray.tune.utils.callback import _create_default_callbacks

    monkeypatch.setenv("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", compat.DRIVER_ENV["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"])
    kinds = {type(c) for c in _create_default_callbacks([JsonLoggerCallback()], metric=None)}
    assert JsonLoggerCallback in kinds and not kinds & {CSVLoggerCallback, TBXLoggerCallback}


IDLE_PROBE = """
import glob, os, sys, time, ray
ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
@ray.remote(num_cpus=0.25)
def busy(i, folder=sys.argv[1]):  # all 8 run at once, in 8 worker processes, whatever the machine's load
    open(os.path.join(folder, str(i)), "w").close()
    while len(os.listdir(folder)) < 8:
        time.sleep(0.05)
    return os.getpid()
workers = len(set(ray.get([busy.remote(i) for i in range(8)])))
time.sleep(6)  # by default Ray ends idle workers beyond its soft limit (2 here) after about 1 s idle
logs = ray._private.worker._global_node.get_logs_dir_path()
print(workers, sum("idle for a long time" in open(p, errors="ignore").read()
                   for p in glob.glob(f"{logs}/python-core-worker-*.log")))
"""


@pytest.mark.ray
def test_the_local_raylet_keeps_idle_workers_with_the_driver_setting(tmp_path):
    """RAY_kill_idle_workers_interval_ms=0 (DRIVER_ENV), inherited by a local raylet: 8 workers that fall idle are
    not ended (with Ray's default the same probe ended 7 of 8; measured 2026-12-08)."""
    import os
    import subprocess
    import sys

    env = os.environ | {"RAY_kill_idle_workers_interval_ms": compat.DRIVER_ENV["RAY_kill_idle_workers_interval_ms"]}
    probe = subprocess.run([sys.executable, "-c", IDLE_PROBE, str(tmp_path)], env=env, capture_output=True, text=True,
                           timeout=180)
    assert probe.returncode == 0, probe.stderr[-2000:]
    workers, idle_exits = map(int, probe.stdout.split()[-2:])
    assert workers == 8 and idle_exits == 0


def test_skip_retries_makes_the_next_failure_final_and_allow_retries_undoes_it():
    from ray.tune.experiment import Trial

    trial = Trial("any_trainable", stub=True, max_failures=2)
    trial.run_metadata.num_failures = 1  # what TuneController records before it asks should_recover()
    assert trial.should_recover()
    compat.skip_retries(trial)
    assert not trial.should_recover()
    compat.allow_retries(trial, 2)
    assert trial.should_recover() and '"max_failures": 2' in trial.get_json_state()[0]


def test_trial_storage_is_the_trial_folder_and_checks_that_the_node_sees_the_storage(ray_session, tmp_path):
    from ray import tune

    def trainable(config):
        fs, folder = compat.trial_storage()
        experiment = folder.rsplit("/", 1)[0]
        fs.delete_file(f"{experiment}/.validate_storage_marker")  # what a node that does not see the storage finds
        try:
            compat.trial_storage()
            refused = ""
        except RuntimeError as e:
            refused = str(e)
        tune.report({"folder": folder, "refused": refused})

    grid = tune.Tuner(trainable, run_config=tune.RunConfig(name="storage", storage_path=str(tmp_path),
                                                           verbose=0)).fit()
    result = grid[0].metrics
    assert result["folder"] == grid[0].path
    assert "all nodes in the cluster have read/write access" in result["refused"]


def test_interrupt_experiment_ends_fit_like_ctrl_c_and_leaves_it_restorable(ray_session, tmp_path, monkeypatch):
    import signal

    from ray import tune

    with monkeypatch.context() as m:
        m.setattr(signal, "getsignal", lambda sig: signal.SIG_DFL)  # as when fit() runs outside the main thread
        assert compat.interrupt_experiment() is False

    def slow(config):
        for i in range(200):
            tune.report({"i": i})
            time.sleep(0.05)

    class InterruptAtFirstResult(tune.Callback):
        interrupted = None

        def on_trial_result(self, iteration, trials, trial, result, **info):
            if self.interrupted is None:
                type(self).interrupted = compat.interrupt_experiment()

    grid = tune.Tuner(slow, run_config=tune.RunConfig(name="stop", storage_path=str(tmp_path), verbose=0,
                                                      callbacks=[InterruptAtFirstResult()])).fit()
    assert InterruptAtFirstResult.interrupted is True
    assert grid[0].metrics["i"] < 100 and grid[0].error is None  # cut short, not failed
    assert tune.Tuner.can_restore(str(tmp_path / "stop"))


def test_optuna_search_keeps_its_study_trials_and_completed_ids_where_relied_on():
    from ray.tune.search.optuna import OptunaSearch

    searcher = OptunaSearch(space=lambda trial: {"x": trial.suggest_float("x", 0, 1)}, metric="m", mode="max")
    searcher.suggest("t1")
    assert isinstance(compat.optuna_study(searcher), optuna.Study)
    assert isinstance(compat.optuna_trials(searcher)["t1"], optuna.Trial)
    searcher.on_trial_complete("t1", {"m": 1.0})
    assert "t1" in compat.completed_trial_ids(searcher)


def test_autoscaler_config_checks_are_importable():
    prepare_config, validate_config = compat.autoscaler_config_checks()
    assert callable(prepare_config) and callable(validate_config)


def test_a_local_ray_start_times_out_with_the_text_start_local_ray_expects():
    import inspect

    import ray._private.node

    source = inspect.getsource(ray._private.node)
    assert compat.LOCAL_START_TIMEOUT in source and "raylet_start_wait_time_s = 30" in source


def _fake_ray_init(monkeypatch, first_error: Exception) -> list:
    """ray.init that, on its first call, starts a child process (as Ray starts its GCS and raylet) and raises
    `first_error`; later calls succeed. Returns the list of the children it started."""
    import subprocess
    import sys

    import ray

    children = []

    def init(**kwargs):
        if not children:
            children.append(subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"]))
            raise first_error
        children.append(kwargs)

    monkeypatch.setattr(ray, "init", init)
    return children


def test_a_local_ray_start_that_timed_out_is_started_again_after_its_processes_are_killed(monkeypatch, capsys):
    import psutil

    bystander = psutil.Popen(["sleep", "300"])  # a child from before the start: not Ray's, left alone
    try:
        calls = _fake_ray_init(monkeypatch, Exception(compat.LOCAL_START_TIMEOUT + ". This could happen ..."))
        compat.start_local_ray(num_cpus=2)
        first_start, second = calls
        assert second == {"num_cpus": 2}
        assert first_start.poll() is not None  # killed and reaped before the second start
        assert bystander.is_running() and bystander.status() != psutil.STATUS_ZOMBIE
        assert "Ray did not start within its 30 s" in capsys.readouterr().out
    finally:
        bystander.kill()
        bystander.wait()


def test_any_other_local_ray_start_error_is_raised_at_once(monkeypatch):
    calls = _fake_ray_init(monkeypatch, ValueError("num_cpus must be positive"))
    with pytest.raises(ValueError, match="num_cpus"):
        compat.start_local_ray(num_cpus=-1)
    assert len(calls) == 1
    calls[0].kill()
    calls[0].wait()


def test_ray_client_is_installed_and_reports_a_failed_server_start_as_init_client_expects():
    import inspect

    import ray.util.client.worker

    assert compat.ray_client_missing() is None  # ray[client] is a dependency (pyproject.toml)
    source = inspect.getsource(ray.util.client.worker)
    assert "ConnectionAbortedError" in source and "Initialization failure from server" in source



def test_each_filtered_driver_message_is_logged_by_the_logger_it_is_filtered_on():
    """DRIVER_LOG_NOISE names Ray's loggers by their modules: each message start must still be in that module's
    source, logged through its module logger; after quiet_driver_logs those records are dropped, others pass."""
    import importlib
    import inspect
    import logging

    for name, starts in compat.DRIVER_LOG_NOISE.items():
        module = importlib.import_module(name)
        assert module.logger.name == name
        source = inspect.getsource(module)
        for start in starts:
            assert start in source, f"{name} no longer logs {start!r}"
    assert "The `{name}` operation took" in inspect.getsource(importlib.import_module("ray.tune.utils.util"))
    compat.quiet_driver_logs()
    compat.quiet_driver_logs()  # idempotent: one filter per logger
    seen = []

    class Keep(logging.Handler):
        def emit(self, record):
            seen.append(record.getMessage())

    logger = logging.getLogger("ray.tune.analysis.experiment_analysis")
    assert sum(isinstance(f, compat._DropMessages) for f in logger.filters) == 1
    handler = Keep()
    logger.addHandler(handler)
    try:
        logger.warning("Failed to fetch metrics for %d trial(s):\n- t: FileNotFoundError(...)", 3)
        logger.warning("Something else")
    finally:
        logger.removeHandler(handler)
    assert seen == ["Something else"]


def test_with_tunes_sigint_handler_disabled_fit_leaves_sigint_alone_and_takes_sigusr1(monkeypatch):
    import signal

    from ray.tune.tune import _setup_signal_catching

    monkeypatch.setenv("TUNE_DISABLE_SIGINT_HANDLER", compat.DRIVER_ENV["TUNE_DISABLE_SIGINT_HANDLER"])
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGUSR1)}
    try:
        _setup_signal_catching()
        assert signal.getsignal(signal.SIGINT) is before[signal.SIGINT]
        assert signal.getsignal(signal.SIGUSR1).__name__ == "signal_interrupt_tune_run"
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


@pytest.mark.parametrize("signum", ["SIGINT", "SIGTERM"])
def test_a_stop_signal_ends_tunes_loop_once_then_interrupts_and_is_remembered(signum, monkeypatch):
    """Inside Tuner.fit() (tune_loop) the first SIGINT or SIGTERM sets Tune's stop event (Tune's own handler, as
    _setup_signal_catching installs it); the second, or one outside fit(), raises KeyboardInterrupt. The handlers
    in place before are restored."""
    import signal

    from ray.tune.tune import _setup_signal_catching

    sig = getattr(signal, signum)
    monkeypatch.setenv("TUNE_DISABLE_SIGINT_HANDLER", "1")
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)}
    try:
        with compat.stop_signals():
            assert compat.stop_signal() is None
            stop_event = _setup_signal_catching()
            with compat.tune_loop():
                signal.raise_signal(sig)
                assert stop_event.is_set() and compat.stop_signal() == sig
                with pytest.raises(KeyboardInterrupt):
                    signal.raise_signal(sig)
            assert compat.stop_signal() == sig
        with compat.stop_signals():
            assert compat.stop_signal() is None  # a new run starts clean
            with pytest.raises(KeyboardInterrupt):
                signal.raise_signal(signal.SIGTERM)  # outside fit(): at once
            assert compat.stop_signal() == signal.SIGTERM
        assert signal.getsignal(signal.SIGINT) is before[signal.SIGINT]
        assert signal.getsignal(signal.SIGTERM) is before[signal.SIGTERM]
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)


def test_rays_worker_loop_exits_on_sigterm_with_system_exit_which_a_finaliser_cannot_raise(monkeypatch):
    """quiet_exit_in_finalizers: Ray's worker loop turns SIGTERM into SystemExit; raised inside a finaliser it is
    'unraisable' and goes to sys.unraisablehook (the default prints "Exception ignored in ..."). The hook drops
    SystemExit and hands every other unraisable exception to the hook before it."""
    import gc
    import inspect
    import sys

    from ray._private.worker import Worker

    source = inspect.getsource(Worker.main_loop)
    assert "set_sigterm_handler" in source and "raise_sys_exit_with_custom_error_message" in source
    passed_on = []
    monkeypatch.setattr(sys, "unraisablehook", lambda unraisable: passed_on.append(unraisable.exc_type))

    class RaisesInDel:
        def __init__(self, error):
            self.error = error

        def __del__(self):
            raise self.error

    compat.quiet_exit_in_finalizers()
    compat.quiet_exit_in_finalizers()  # idempotent: not wrapped twice
    RaisesInDel(SystemExit(1))
    gc.collect()
    assert passed_on == []
    RaisesInDel(ValueError("a real bug"))
    gc.collect()
    assert passed_on == [ValueError]

# ----- Optuna ----------------------------------------------------------------------------------------------------
def test_a_step_reported_twice_warns_with_the_text_report_once_silences():
    trial = optuna.create_study(direction="maximize").ask()
    trial.report(1.0, step=3)
    with pytest.warns(UserWarning, match=compat.DUPLICATE_REPORT):
        trial.report(2.0, step=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        compat.report_once(trial, 2.0, step=3)


def test_conditional_tpe_is_built_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sampler = compat.conditional_tpe(seed=0)
    assert isinstance(sampler, optuna.samplers.TPESampler)


def test_a_finished_trial_refuses_updates_and_tell_can_skip_it():
    """sweeps/anneal.py tells Optuna about trials a crashed driver may have told already."""
    study = optuna.create_study(direction="maximize")
    trial = study.ask()
    study.tell(trial, 1.0)
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
        trial.set_user_attr("k", 1)
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
        trial.report(1.0, step=1)
    study.tell(trial, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
    assert study.trials[0].state == optuna.trial.TrialState.COMPLETE


def test_a_stored_running_trial_is_reachable_as_a_writable_trial():
    """sweeps/anneal.py: settle_from_table finishes a trial asked by a driver that has died."""
    study = optuna.create_study(direction="maximize")
    study.ask().set_user_attr("ray_trial_id", "t1")
    (frozen,) = study.get_trials(deepcopy=False)
    trial = compat.trial_of(study, frozen)
    trial.set_user_attr("epoch", 3)
    study.tell(trial, 2.5)
    assert study.trials[0].state == optuna.trial.TrialState.COMPLETE and study.trials[0].value == 2.5
    assert study.trials[0].user_attrs == {"ray_trial_id": "t1", "epoch": 3}

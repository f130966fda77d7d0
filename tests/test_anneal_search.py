"""Tests of the Optuna search over KL-annealing schedules: truncated-trial handling, bad input, and a study that
is persisted, continued by a second sweep and survives --resume -- on real digits with tiny budgets."""

from __future__ import annotations

import math

import optuna
import polars as pl
import pytest

from sweeps import anneal
from sweeps.anneal import outcome, settle_from_table
from sweeps.compat import DRIVER_ENV
from sweeps.testing import HANG_GUARD_S

TS = optuna.trial.TrialState
TINY = ["--epochs", "4", "--n-train", "200", "--set", "eval_every=1", "--set", "eval_iw_k=5",
        "--set", "eval_max_examples=100", "--set", "hidden_units=32", "--set", "smooth_samples=2",
        "--set", "latent_dims=3-3", "--set", "rho=0.9"]


@pytest.fixture
def quiet_env(monkeypatch):
    """The script sets the driver's Tune environment for its own process; keep it out of the rest of the session."""
    for key, value in DRIVER_ENV.items():
        monkeypatch.setenv(key, value)


def test_only_full_budget_trials_reach_optuna_as_complete():
    assert outcome({"iw_bound": -25.0, "is_final": True}, False, "iw_bound") == (TS.COMPLETE, -25.0)
    assert outcome({"iw_bound": -25.0, "is_final": False}, False, "iw_bound") == (TS.PRUNED, None)  # ASHA-stopped
    assert outcome({"iw_bound": math.nan, "is_final": True}, False, "iw_bound") == (TS.FAIL, None)
    assert outcome({"iw_bound": -25.0, "is_final": True}, True, "iw_bound")[0] == TS.FAIL
    assert outcome(None, True, "iw_bound") == (TS.FAIL, None)
    both = outcome({"iw_bound": -25.0, "top_active_units": 3, "is_final": True}, False,
                   ["iw_bound", "top_active_units"])
    assert both == (TS.COMPLETE, [-25.0, 3.0])


def test_a_running_trial_whose_final_row_is_in_the_table_is_settled_from_it():
    """The driver died after the sink wrote a trial's final row and before the study was told: the resumed search
    records that run as the complete trial it is; a RUNNING trial without a final row stays for restore()."""
    study = optuna.create_study(direction="maximize")
    for tid in ("a", "b", "c"):
        study.ask().set_user_attr("ray_trial_id", tid)
    study.ask()  # asked by an older driver that stored no ray_trial_id: left alone
    rows = {"a": {"iw_bound": -30.5, "is_final": True, "epoch": 4, "top_active_units": 2},
            "c": {"iw_bound": math.nan, "is_final": True, "epoch": 4}}
    assert settle_from_table(study, rows.get, "iw_bound") == [0, 2]
    states = [(t.state, t.value) for t in study.trials]
    assert states == [(TS.COMPLETE, -30.5), (TS.RUNNING, None), (TS.FAIL, None), (TS.RUNNING, None)]
    assert study.trials[0].user_attrs == {"ray_trial_id": "a", "epoch": 4, "is_final": True, "top_active_units": 2}
    assert settle_from_table(study, rows.get, "iw_bound") == []  # settled once


@pytest.mark.parametrize("argv,needle", [
    (["--n-trials", "0"], "--n-trials"),
    (["--schedules", "linear", "exponential"], "unknown schedule"),
    (["--beta-min", "0.6", "0.9"], "overlaps"),
    (["--set", "beta_schedule=linear"], "searched by this script"),
    (["--rho-range", "0.5", "1.5"], "outside (0, 1]"),
    (["--cycle-ratio", "0.5", "0.2"], "empty or reversed"),
    (["--study-storage", "s3://bucket/study"], "object stores"),
    (["--address", "ray://127.0.0.1:1", "--study-storage", "sqlite:///s.db"], "give a database server's URL"),
    # options that do nothing with the others given
    (["--schedules", "linear", "--n-cycles", "1", "3"], "--n-cycles is a range of the cyclical schedule, which "
                                                         "--schedules linear leaves out: add cyclical to --schedules"),
    (["--schedules", "cyclical", "--sigmoid-steepness", "1", "5"], "--sigmoid-steepness is a range of the sigmoid"),
    (["--no-free-bits", "--free-bits", "0", "1"], "--no-free-bits searches none: drop --no-free-bits"),
    (["--no-asha", "--grace-period", "3"], "--grace-period sets ASHA's early stopping, which --no-asha turns off"),
])
def test_bad_search_options_fail_before_ray(tmp_path, capsys, quiet_env, argv, needle):
    assert anneal.main([*argv, "--storage", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and needle in err


def _study(tmp_path, name="study"):
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    storage = JournalStorage(JournalFileBackend(str(tmp_path / "optuna" / f"{name}.log")))
    return optuna.load_study(study_name=name, storage=storage)


def test_search_persists_its_study_continues_it_and_resumes(ray_session, tmp_path, capsys, quiet_env):
    common = [*TINY, "--storage", str(tmp_path), "--study-name", "study", "--grace-period", "1",
              "--reduction-factor", "2", "--max-concurrent", "2"]
    assert anneal.main(["--n-trials", "4", "--name", "a1", *common]) == 0
    out = capsys.readouterr().out
    assert "best schedules by iw_bound" in out or "no trial ran its full budget" in out
    study = _study(tmp_path)
    first = {t.number: (t.state, t.params, t.values) for t in study.trials}
    assert len(first) == 4 and all(s in (TS.COMPLETE, TS.PRUNED) for s, _, _ in first.values())
    assert any(s == TS.COMPLETE for s, _, _ in first.values())

    # The Parquet table agrees with the study: PRUNED <=> the trial has no final (full-budget) row.
    df = pl.read_parquet(tmp_path / "parquet" / "sweep_id=a1" / "*.parquet")
    assert df.select("run_id", "step").is_unique().all()
    finished = set(df.filter(pl.col("is_final"))["run_id"])
    for t in study.trials:
        assert (t.state == TS.COMPLETE) == (t.user_attrs["ray_trial_id"] in finished)
        if t.state == TS.COMPLETE:
            row = df.filter((pl.col("run_id") == t.user_attrs["ray_trial_id"]) & pl.col("is_final"))
            assert row["iw_bound"][0] == pytest.approx(t.value)
            assert row["beta_schedule"][0] == t.params["beta_schedule"]

    # A second sweep on the same stored study continues it: TPE sees the first four trials.
    assert anneal.main(["--n-trials", "2", "--name", "a2", *common]) == 0
    study = _study(tmp_path)
    assert [t.number for t in study.trials] == list(range(6))
    assert {t.number: (t.state, t.params, t.values) for t in study.trials if t.number < 4} == first
    assert "continuing: 4 trials already finished" in capsys.readouterr().out

    # --resume restores Tune's experiment (and the pickled searcher) without re-running or adding trials.
    rows_before = pl.read_parquet(tmp_path / "parquet" / "sweep_id=a1" / "*.parquet").height
    assert anneal.main(["--resume", "--name", "a1", "--storage", str(tmp_path)]) == 0
    assert len(_study(tmp_path).trials) == 6
    assert pl.read_parquet(tmp_path / "parquet" / "sweep_id=a1" / "*.parquet").height == rows_before


def test_multi_objective_search_tells_optuna_both_objectives_and_prints_the_pareto_front(ray_session, tmp_path,
                                                                                         capsys, quiet_env):
    """--multi-objective: a full-budget trial is COMPLETE with (iw_bound, top_active_units) as in its final row,
    Optuna keeps two maximised objectives, and the summary prints the Pareto front of the complete trials."""
    argv = ["--n-trials", "3", "--multi-objective", "--no-asha", "--name", "mo", *TINY, "--storage", str(tmp_path),
            "--max-concurrent", "2"]
    assert anneal.main(argv) == 0
    out = capsys.readouterr().out
    study = _study(tmp_path, "mo")
    assert study.directions == [optuna.study.StudyDirection.MAXIMIZE] * 2
    complete = [t for t in study.trials if t.state == TS.COMPLETE]
    assert len(complete) == 3  # no ASHA: every trial ran its budget
    final = pl.read_parquet(tmp_path / "parquet" / "sweep_id=mo" / "*.parquet").filter(pl.col("is_final"))
    for t in complete:
        row = final.filter(pl.col("run_id") == t.user_attrs["ray_trial_id"])
        assert t.values == [pytest.approx(row["iw_bound"][0]), float(row["top_active_units"][0])]
    front = study.best_trials
    assert f"Pareto front (iw_bound, top_active_units), {len(front)} trials" in out
    for t in front:
        assert f"\n{t.number}  " in out  # each front trial is a row of the printed table, numbered as in the study


def test_killed_search_resumes_from_its_stored_study(ray_session, tmp_path):
    """SIGKILL the driver mid-search, then --resume: every trial ends once in the study and in the table."""
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    import pyarrow.parquet as pq

    root = Path(__file__).resolve().parents[1]
    address = ray_session.get_runtime_context().gcs_address
    base = [sys.executable, str(root / "sweeps" / "anneal_search.py"), "--storage", str(tmp_path), "--name", "k",
            "--address", address, "--quiet"]
    part = tmp_path / "parquet" / "sweep_id=k"
    with open(tmp_path / "first.log", "w") as log:
        proc = subprocess.Popen([*base, "--n-trials", "4", "--max-concurrent", "1", "--no-asha", *TINY],
                                stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + HANG_GUARD_S
        while time.monotonic() < deadline:
            files = list(part.glob("*.parquet")) if part.is_dir() else []
            if sum(pq.read_metadata(f).num_rows for f in files) >= 6:  # trial 1 done (4 rows), trial 2 running
                proc.send_signal(signal.SIGKILL)
                break
            assert proc.poll() is None, (tmp_path / "first.log").read_text()
            time.sleep(0.1)
        proc.wait(timeout=30)
    finals_before = pl.read_parquet(part / "*.parquet").filter(pl.col("is_final")).height
    assert finals_before < 4, "the driver was killed too late to test a mid-search crash"

    resumed = subprocess.run([*base, "--resume"], capture_output=True, text=True, timeout=240)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    study = _study(tmp_path, "k")
    done = [t for t in study.trials if t.state == TS.COMPLETE]
    # Tune runs the 4 trials of its last snapshot; a trial that finished after that snapshot (Tune's periodic
    # snapshot comes every >= 10 s) is kept as the extra sample it is, in the study and in the table.
    assert 4 <= len(done) <= 4 + finals_before and not [t for t in study.trials if t.state == TS.RUNNING]
    df = pl.read_parquet(part / "*.parquet")
    assert df.select("run_id", "step").is_unique().all()
    final = df.filter(pl.col("is_final"))
    assert final.height == len(done) and set(final["run_id"]) == {t.user_attrs["ray_trial_id"] for t in done}
    assert set(df.group_by("run_id").len()["len"]) == {4}  # every trial has all four evaluations

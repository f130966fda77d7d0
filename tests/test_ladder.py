"""The ladder (``critical_rho.py --until-converged``, sweeps/ladder.py): rungs of growing budget until rho_c stops
moving by the analysis's rule.

What must hold: the rungs lie on the evaluation cadence (bad budgets fail before Ray starts); on a synthetic model
whose rho_c drifts and converges (sweeps/testing/ladder_synthetic.py) the ladder stops that configuration at the
rung where the truth stops moving, keeps a never-converging one to the maximum with "rising", and continues exactly
the runs its rule names, each from its own checkpoint; a driver SIGKILLed mid-ladder resumes at the rung it reached
with every row once and the same answer; with the real trainer a ladder's table holds exactly the rows of a grid
trained to the final budget in one go.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest

from analysis.transition import STATUS_OK, TransitionFit
from sweeps import rho_sweep
from sweeps.errors import SweepError
from sweeps.ladder import TOLERANCE, continue_window, rho_to_add, rhos_to_continue, rung_budgets
from sweeps.storage import LADDER_FILE
from sweeps.testing import HANG_GUARD_S
from sweeps.testing.ladder_synthetic import converged_rung, drifting_trainable

RHOS = [f"{0.78 + 0.02 * i:.2f}" for i in range(10)]
BUDGETS = [10, 20, 40, 80, 160]
SYNTHETIC = ["--until-converged", "--grid", "--latent-dims", "10", "20", "--rhos", *RHOS, "--n-seeds", "5",
             "--population", "25", "--epochs", "10", "--max-epochs", "160", "--set", "eval_every=10", "--quiet"]
TIMING = ("time_per_epoch_s", "wall_time_s", "peak_memory_bytes", "hostname")


@pytest.fixture
def quiet_env(monkeypatch):
    from sweeps.compat import DRIVER_ENV

    for key, value in DRIVER_ENV.items():
        monkeypatch.setenv(key, value)


def fit(rho_c: float, low: float, high: float) -> TransitionFit:
    return TransitionFit(STATUS_OK, "", rho_c, low, high, 0.01, None, None, None, 20, 10, 2)


# ----- no Ray ---------------------------------------------------------------------------------------------------------
def test_rungs_double_on_the_evaluation_cadence_up_to_the_maximum():
    assert rung_budgets(30, 240, 2, 15, "epochs") == [30, 60, 120, 240]
    assert rung_budgets(30, 200, 2, 10, "epochs") == [30, 60, 120, 200]
    assert rung_budgets(30, 105, 1.5, 15, "epochs") == [30, 45, 75, 105]  # x1.5, rounded up to the cadence
    assert rung_budgets(20, 20, 2, 10, "epochs") == [20]


@pytest.mark.parametrize("first, maximum, factor, cadence, needle", [
    (30, 240, 1.0, 15, "--rung-factor 1 must be > 1"),
    (60, 30, 2, 15, "--max-epochs 30 is below the first rung's 60 epochs"),
    (20, 240, 2, 15, "the first rung's 20 epochs is not on the evaluation cadence (every 15 epochs)"),
    (30, 250, 2, 15, "the --max-epochs's 250 epochs is not on the evaluation cadence"),
])
def test_bad_rungs_are_named(first, maximum, factor, cadence, needle):
    with pytest.raises(SweepError) as e:
        rung_budgets(first, maximum, factor, cadence, "epochs")
    assert needle in str(e.value)


def test_the_window_follows_the_drift_and_keeps_a_neighbour_on_each_side():
    rhos = [round(0.80 + 0.02 * i, 2) for i in range(10)]  # 0.80 .. 0.98
    # rising by 0.03: the window reaches 2 x 0.03 above the interval, only the tolerance below it
    lo, hi = continue_window(fit(0.88, 0.875, 0.885), 0.03)
    assert (lo, hi) == pytest.approx((0.875 - TOLERANCE, 0.885 + TOLERANCE + 0.06))
    assert rhos_to_continue(rhos, (lo, hi)) == [0.86, 0.88, 0.90, 0.92, 0.94, 0.96]
    # falling: the other way round
    lo, hi = continue_window(fit(0.88, 0.875, 0.885), -0.03)
    assert rhos_to_continue(rhos, (lo, hi)) == [0.80, 0.82, 0.84, 0.86, 0.88, 0.9]
    # before any shift is known: twice the interval's width both ways
    assert continue_window(fit(0.88, 0.87, 0.89), None) == pytest.approx((0.87 - TOLERANCE - 0.04,
                                                                         0.89 + TOLERANCE + 0.04))
    # no interval: every run continues
    assert continue_window(TransitionFit(STATUS_OK, "", 0.9, None, None, 0.01, None, None, None, 20, 10, 2),
                           0.01) is None
    assert rhos_to_continue(rhos, None) == rhos


def test_adaptive_adds_the_middle_of_the_gap_that_holds_rho_c():
    rhos = [0.80, 0.84, 0.88, 0.92]
    assert rho_to_add(rhos, fit(0.851, 0.845, 0.857), 0.005) == 0.86
    assert rho_to_add(rhos, fit(0.851, 0.845, 0.857), 0.02) is None  # the gap is not wider than twice the spacing
    assert rho_to_add([0.80, 0.81], fit(0.805, 0.80, 0.81), 0.005) is None
    assert rho_to_add(rhos, fit(0.95, 0.94, 0.96), 0.005) is None  # beyond the sampled range: nothing to split


@pytest.mark.parametrize("argv, needle", [
    (["--max-epochs", "60"], "--max-epochs is the ladder's largest budget: add --until-converged"),
    (["--until-converged"], "--until-converged needs the largest budget"),
    (["--until-converged", "--epochs", "20", "--max-epochs", "60"], "not on the evaluation cadence (every 15"),
    (["--until-converged", "--steps", "50", "--max-epochs", "60"], "--max-epochs with a budget in steps"),
    (["--until-converged", "--max-steps", "60"], "--max-steps needs the first rung in steps"),
])
def test_bad_ladder_options_fail_before_any_trial(tmp_path, capsys, quiet_env, argv, needle):
    assert rho_sweep.main([*argv, "--storage", str(tmp_path), "--name", "bad"]) == 2
    assert needle in capsys.readouterr().err
    assert not (tmp_path / "ray").exists()


# ----- a synthetic ladder through Ray Tune ------------------------------------------------------------------------
def ladder_table(storage: Path, name: str) -> pl.DataFrame:
    return pl.read_parquet(storage / "parquet" / f"sweep_id={name}" / "*.parquet")


def rung_rhos(experiment: Path, label: str) -> set[float]:
    """The rho values the trials of one rung's Tune experiment trained, for one latent configuration."""
    from ray import tune

    out = set()
    for trial in tune.ExperimentAnalysis(str(experiment)).trials:
        pop = trial.config["population"]
        if "-".join(map(str, pop["latent_dims"])) == label:
            out |= {m["rho"] for m in pop["members"]}
    return out


def check_rows_exactly_once(df: pl.DataFrame, state: dict) -> None:
    """One row per (run, step); every run's evaluations every 10 epochs up to the budget of its last rung; one
    final row per run, at that budget."""
    assert df.select("run_id", "step").is_unique().all()
    last_budget = {}
    for lineage, v in state["lineages"].items():
        for m in range(len(v["members"])):
            last_budget[f"{lineage}-m{m:03d}"] = state["budgets"][v["rung"]]
    assert set(df["run_id"]) == set(last_budget)
    for (run,), rows in df.group_by("run_id"):
        assert sorted(rows["step"]) == list(range(10, last_budget[run] + 1, 10)), run
        assert rows.filter(pl.col("is_final"))["step"].to_list() == [last_budget[run]]


@pytest.mark.ray
@pytest.mark.slow
def test_ladder_stops_each_configuration_at_the_right_rung_and_continues_the_runs_its_rule_names(
        ray_session, tmp_path, capsys, quiet_env):
    assert rho_sweep.main([*SYNTHETIC, "--storage", str(tmp_path), "--name", "drift", "--no-report"],
                             trainable=drifting_trainable) == 0
    out = capsys.readouterr().out
    state = json.loads((tmp_path / "ray" / "drift" / LADDER_FILE).read_text())
    assert state["finished"] and state["budgets"] == BUDGETS and state["rung_steps"] == BUDGETS
    right = converged_rung(BUDGETS, TOLERANCE)
    assert right == 3
    ten, twenty = state["configs"]["10"], state["configs"]["20"]
    assert ten["done"] == "converged at rung 3 (80 epochs)", ten
    assert [r["verdict"] for r in ten["rungs"]] == ["one_budget", "rising", "rising", "converged"]
    assert twenty["done"] == "maximum budget reached (160 epochs): rising"
    assert [r["verdict"] for r in twenty["rungs"]][1:] == ["rising"] * 4
    assert "10: converged at rung 3 (80 epochs)" in out and "20: maximum budget reached (160 epochs): rising" in out
    assert "rung 2 (40 epochs) 10: rho_c 0.9" in out and "member-steps" in out
    # the runs that continued into each rung are those the rule names from the rung before
    df = ladder_table(tmp_path, "drift")
    check_rows_exactly_once(df, state)
    reached = df.group_by("run_id").agg(pl.col("step").max(), pl.col("rho").first(), pl.col("latent_dims").first())
    for label, entry in (("10", ten), ("20", twenty)):
        rungs = entry["rungs"]
        for k in range(1, len(rungs)):
            prev = rungs[k - 1]
            window = continue_window(fit(prev["rho_c"], prev["ci_low"], prev["ci_high"]), prev["shift"])
            expected = set(rhos_to_continue([float(r) for r in RHOS], window))
            trained = rung_rhos(tmp_path / "ray" / "drift" / f"rung-{k}", label)
            assert trained == expected, (label, k)
            assert len(trained) < len(RHOS)  # far runs stopped: the ladder saved compute
    # member-steps: each run's epochs counted once (continued, never retrained)
    per_run = reached.group_by("latent_dims").agg(pl.col("step").sum())
    spent = {label: sum(r["member_steps"] for r in e["rungs"]) for label, e in state["configs"].items()}
    assert spent == dict(zip(per_run["latent_dims"], per_run["step"]))


@pytest.mark.ray
@pytest.mark.slow
def test_adaptive_ladder_adds_rho_values_where_the_transition_moved_and_trains_them_from_scratch(
        ray_session, tmp_path, capsys, quiet_env):
    argv = [a for a in SYNTHETIC if a not in ("--grid", "20", *RHOS) and a != "--rhos"]
    argv[argv.index("--max-epochs") + 1] = "80"
    assert rho_sweep.main([*argv, "--adaptive", "--rho-min", "0.78", "--rho-max", "0.98", "--rho-spacing",
                              "0.005", "--storage", str(tmp_path), "--name", "add", "--no-report"],
                             trainable=drifting_trainable) == 0
    assert "rho values added where rho_c moves (spacing >= 0.005)" in capsys.readouterr().out
    state = json.loads((tmp_path / "ray" / "add" / LADDER_FILE).read_text())
    df = ladder_table(tmp_path, "add")
    check_rows_exactly_once(df, state)
    grid = {0.78, 0.82, 0.86, 0.9, 0.94, 0.98}
    first = df.group_by("rho").agg(pl.col("step").min())
    added = first.filter(~pl.col("rho").is_in(list(grid)))
    assert added.height >= 1, "no rho value was added"
    assert set(first.filter(pl.col("rho").is_in(list(grid)))["rho"]) == grid
    assert added["step"].to_list() == [10] * added.height  # from scratch: every evaluation from the first


@pytest.mark.ray
@pytest.mark.slow
def test_driver_killed_mid_ladder_resumes_at_the_rung_it_reached_with_every_row_once(ray_session, tmp_path):
    address = ray_session.get_runtime_context().gcs_address
    code = ("import sys; from sweeps import rho_sweep; "
            "from sweeps.testing.ladder_synthetic import drifting_trainable; "
            "sys.exit(rho_sweep.main(sys.argv[1:], trainable=drifting_trainable))")
    synthetic = [a for a in SYNTHETIC if a != "20"]  # latent size 10 alone: it converges at rung 3
    argv = [sys.executable, "-c", code, *synthetic, "--storage", str(tmp_path / "store"), "--name", "kill",
            "--address", address, "--no-report"]
    state_file = tmp_path / "store" / "ray" / "kill" / LADDER_FILE
    log = open(tmp_path / "first.log", "w")
    # started outside the repository: the driver and the workers import the trainable by its module's name
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
    deadline = time.monotonic() + HANG_GUARD_S
    reached = None
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            reached = json.loads(state_file.read_text())["rung"]
        except (FileNotFoundError, ValueError):
            reached = None
        if reached is not None and reached >= 2:  # rung 2 planned, its experiment starting or running
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    proc.wait(timeout=30)
    assert reached is not None and reached >= 2, (tmp_path / "first.log").read_text()
    assert not json.loads(state_file.read_text())["finished"]

    resumed = subprocess.run([*argv, "--resume"], capture_output=True, text=True, cwd=tmp_path, timeout=400)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"\nrung {reached}:" in resumed.stdout and "\nrung 0:" not in resumed.stdout
    state = json.loads(state_file.read_text())
    assert state["finished"] and state["configs"]["10"]["done"] == "converged at rung 3 (80 epochs)"
    check_rows_exactly_once(ladder_table(tmp_path / "store", "kill"), state)


# ----- the real trainer --------------------------------------------------------------------------------------------
TINY = ["--latent-dims", "3-3", "--rhos", "0.5", "0.9", "--n-seeds", "2", "--n-train", "200", "--set",
        "eval_iw_k=5", "--set", "eval_max_examples=100", "--set", "hidden_units=32", "--set", "smooth_samples=2",
        "--population", "2", "--grid", "--quiet", "--no-report"]


@pytest.mark.ray
@pytest.mark.slow
def test_a_ladder_of_the_real_trainer_writes_exactly_the_rows_of_a_grid_trained_in_one_go(ray_session, tmp_path,
                                                                                         quiet_env):
    """Rungs of 2 and 6 epochs, evaluations every 2nd epoch (the old budget's end on the cadence), every run
    continued (--continue all): the table equals a plain grid's at 6 epochs, row for row, but for the clock."""
    assert rho_sweep.main([*TINY, "--until-converged", "--epochs", "2", "--max-epochs", "6", "--rung-factor",
                              "3", "--continue", "all", "--set", "eval_every=2", "--storage", str(tmp_path),
                              "--name", "ladder"]) == 0
    assert rho_sweep.main([*TINY, "--epochs", "6", "--set", "eval_every=2", "--storage", str(tmp_path),
                              "--name", "grid"]) == 0
    keys = ["rho", "seed", "step"]
    drop = [*TIMING, "sweep_id", "run_id", "population_id"]
    ladder = ladder_table(tmp_path, "ladder").sort(keys).drop(drop)
    grid = ladder_table(tmp_path, "grid").sort(keys).drop(drop)
    assert ladder["step"].to_list() == grid["step"].to_list() and ladder.height == 4 * 3
    assert ladder.equals(grid), "rows differ"

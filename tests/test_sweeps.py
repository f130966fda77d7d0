"""Tests of the Ray Tune layer: grids and bad input, the Parquet sink, end-to-end sweeps on real digits, fractional
GPU packing, retry from a checkpoint, and a driver killed mid-sweep then resumed.

Budgets are tiny (a few optimizer steps, L_5 on 100 images) so the Ray tests share one session-scoped local Ray
(tests/conftest.py) and stay within about two minutes on 2 cores.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from analysis.schema import SCHEMA
from ouvae.config import ConfigError, parse_latent_dims
from sweeps import progress, results, rho_sweep
from sweeps.anneal import AnnealSpace, suggest_schedule
from sweeps.compat import DRIVER_ENV
from sweeps.errors import SpaceError
from sweeps.plan import CriticalGrid, latent_configs, parse_rho_list, rho_grid
from sweeps.protocol import POPULATION_KEY, failure_text
from sweeps.storage import SPEC_FILE
from sweeps.testing import HANG_GUARD_S, faults

ROOT = Path(__file__).resolve().parents[1]
# Tiny trainer budget shared by the Ray tests: 200 training images, batch 100 -> 2 steps per epoch.
TINY = ["--n-train", "200", "--set", "eval_every=1", "--set", "eval_iw_k=5", "--set", "eval_max_examples=100",
        "--set", "hidden_units=32", "--set", "smooth_samples=2"]


@pytest.fixture
def quiet_env(monkeypatch):
    """The scripts set the driver's Tune environment for their own process; keep it out of the rest of the
    session."""
    for key, value in DRIVER_ENV.items():
        monkeypatch.setenv(key, value)


def read_table(root: Path, sweep: str) -> pl.DataFrame:
    return pl.read_parquet(root / f"sweep_id={sweep}" / "*.parquet")


# ----- grids and validation (no Ray) ---------------------------------------------------------------------------------
def test_rho_grid_is_inclusive_rounded_and_unique():
    assert rho_grid(0.9, 1.0, 0.02) == [0.9, 0.92, 0.94, 0.96, 0.98, 1.0]
    fine = rho_grid(0.95, 1.0, 0.005)
    assert len(fine) == 11 and fine[3] == 0.965 and fine[-1] == 1.0
    assert rho_grid(0.8, 0.8, 0.1) == [0.8]
    assert rho_grid(0.8, 1.0, 0.03)[-1] == 0.98  # the end point is kept only when it lies on the grid
    assert parse_rho_list(["1", 0.9, 0.90, 0.95]) == [0.9, 0.95, 1.0]


@pytest.mark.parametrize("lo,hi,step,needle", [
    (0.0, 1.0, 0.1, "outside (0, 1]"), (0.9, 1.2, 0.1, "outside (0, 1]"), (0.95, 0.9, 0.01, "larger than --rho-max"),
    (0.9, 1.0, 0.5, "larger than the range"), (0.9, 1.0, 0.0, "positive"), (0.9, 1.0, float("nan"), "positive"),
])
def test_bad_rho_ranges_are_named(lo, hi, step, needle):
    with pytest.raises(SpaceError, match=needle.replace("(", r"\(").replace(")", r"\)").replace("]", r"\]")):
        rho_grid(lo, hi, step)


def test_latent_configurations_and_grid_validation():
    assert parse_latent_dims("4x10") == (10, 10, 10, 10) == parse_latent_dims("10-10-10-10")
    assert latent_configs([5, 10], [2, 4], ["10-10", "3x7"], default_layers=4) == \
        [(5, 5), (10, 10), (5,) * 4, (10,) * 4, (7, 7, 7)]
    assert latent_configs([5], None, None, default_layers=3) == [(5, 5, 5)]
    with pytest.raises(SpaceError, match="--latent-sizes"):
        latent_configs(None, [4], None, default_layers=4)
    with pytest.raises(ConfigError):
        parse_latent_dims("4xten")
    with pytest.raises(SpaceError, match="swept by this script"):
        CriticalGrid(preset="demo", fixed={"rho": 0.9}, latents=[(4,)], rhos=[0.9], seeds=[0])
    with pytest.raises(SpaceError, match="rho grid is empty"):
        CriticalGrid(preset="demo", fixed={}, latents=[(4,)], rhos=[], seeds=[0])
    g = CriticalGrid(preset="demo", fixed={"epochs": 3}, latents=[(4, 4), (8, 8)], rhos=[0.9, 1.0], seeds=[0, 1, 2])
    assert g.n_runs == 12 and len(list(g.configs())) == 12
    bad = CriticalGrid(preset="demo", fixed={"lr": -1.0}, latents=[(4,)], rhos=[0.9], seeds=[0])
    with pytest.raises(ConfigError, match="lr must be > 0"):
        bad.validate()


def test_both_readings_of_t_rho_are_configurations_of_one_sweep():
    args = rho_sweep.build_parser().parse_args(["--latent-sizes", "4", "--layers", "2", "--rhos", "0.5", "1.0",
                                                   "--n-seeds", "2", "--smooth-spaces", "posterior", "prior",
                                                   "--population", "8"])
    plan = rho_sweep.plan_sweep(args)
    assert plan.grid.n_runs == 8 and {c.smooth_space for c in plan.grid.configs()} == {"posterior", "prior"}
    # a population never mixes the readings: each one is its own model
    pops = plan.param_space[POPULATION_KEY]["grid_search"]
    assert sorted((p["smooth_space"], len(p["members"])) for p in pops) == \
        [("posterior", 2), ("posterior", 2), ("prior", 2), ("prior", 2)]
    one = rho_sweep.plan_sweep(rho_sweep.build_parser().parse_args(
        ["--latent-sizes", "4", "--rhos", "0.5", "--set", "smooth_space=prior", "--population", "1"]))
    assert one.param_space["smooth_space"] == {"grid_search": ["prior"]}
    with pytest.raises(SpaceError, match="--smooth-spaces"):
        rho_sweep.plan_sweep(rho_sweep.build_parser().parse_args(
            ["--smooth-spaces", "prior", "--set", "smooth_space=prior"]))


def test_adaptive_direction_reaches_the_searcher():
    """--direction: the side of rho_c the units are active on, for the adaptive searcher (default: inferred per
    configuration from its runs, as the analysis does)."""
    from analysis.transition import ACTIVE_ABOVE

    def parse(*argv):
        return rho_sweep.build_parser().parse_args(["--adaptive", "--latent-sizes", "4", *argv])

    assert rho_sweep.plan_sweep(parse()).searcher.policy.settings.direction == "infer"
    args = parse("--smooth-spaces", "prior", "--direction", "above")
    plan = rho_sweep.plan_sweep(args)
    assert plan.searcher.policy.settings.direction == ACTIVE_ABOVE
    assert "units active above rho_c" in rho_sweep.describe_plan(args, "x", plan)


def test_data_dir_is_made_absolute_because_each_trial_runs_in_its_own_folder(tmp_path, monkeypatch):
    from sweeps import cli

    monkeypatch.chdir(tmp_path)
    args = rho_sweep.build_parser().parse_args(["--dataset", "idx", "--data-dir", "my-data"])
    assert cli.fixed_overrides(args)["data_dir"] == str(tmp_path / "my-data")
    args = rho_sweep.build_parser().parse_args(["--set", "data_dir=other"])
    assert cli.fixed_overrides(args)["data_dir"] == str(tmp_path / "other")


def test_anneal_space_is_conditional_on_the_schedule():
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = AnnealSpace().with_budget(30)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    seen = {}
    for _ in range(60):
        t = study.ask()
        params = suggest_schedule(t, space)
        seen[params["beta_schedule"]] = set(params)
        study.tell(t, 0.0)
    assert seen["constant"] == {"beta_schedule", "beta_max", "free_bits"}
    assert seen["linear"] == seen["cosine"] == {"beta_schedule", "beta_max", "beta_min", "anneal_epochs", "free_bits"}
    assert seen["sigmoid"] == seen["linear"] | {"sigmoid_steepness"}
    assert seen["cyclical"] == seen["linear"] | {"n_cycles", "cycle_ratio"}
    with pytest.raises(SpaceError, match="overlaps"):
        AnnealSpace(beta_min=(0.0, 0.8), beta_max=(0.5, 1.0))
    with pytest.raises(SpaceError, match="unknown schedule"):
        AnnealSpace(schedules=("linear", "exponential"))


# ----- the Parquet sink (no Ray runtime) -------------------------------------------------------------------------------
def _result(step: int, **kw) -> dict:
    base = {"step": step, "epoch": step // 2, "is_final": False, "elbo": -30.0 + step, "iw_bound": -29.0,
            "iw_k": 5, "top_kl": 0.1, "top_active_units": 2, "layer_kl": [1.0, 0.1], "layer_active_units": [4, 2],
            "rho": 0.9, "seed": 0, "latent_dims": "4-4", "dataset": "digits", "training_iteration": 7,
            "time_this_iter_s": 0.1, "config": {"ignored": True}}
    return {**base, **kw}


def test_sink_upserts_by_step_atomically_and_keeps_the_schema(tmp_path):
    root = tmp_path / "parquet"
    sink = results.ParquetSink(str(root), "s1", verbose=False)
    sink.setup()
    sink.add_result("t1", _result(2))
    sink.add_result("t1", _result(4))
    sink.add_result("t1", _result(2, elbo=-1.0))  # a retried trial re-reports step 2: replaces, never duplicates
    files = list((root / "sweep_id=s1").iterdir())
    assert [f.name for f in files] == ["t1.parquet"]  # no temp file inside the table
    table = pq.read_table(files[0])
    assert table.schema.equals(SCHEMA)
    df = read_table(root, "s1")
    assert df["step"].to_list() == [2, 4] and df["elbo"].to_list() == [-1.0, -26.0]
    assert df["run_id"].unique().to_list() == ["t1"] and df["sweep_id"].unique().to_list() == ["s1"]
    assert df["layer_active_units"].to_list() == [[4, 2], [4, 2]]
    # A new driver session (resume) starts from the file on disk and keeps upserting.
    again = results.ParquetSink(str(root), "s1", verbose=False)
    again.add_result("t1", _result(6, is_final=True))
    assert read_table(root, "s1")["step"].to_list() == [2, 4, 6]
    with pytest.raises(ValueError, match="no 'step'"):
        again.add_result("t2", {"elbo": 1.0})


def test_sink_coalesces_writes_between_flushes_and_always_writes_the_final_rows(tmp_path):
    """A trial's file is rewritten whole: once it has coalesce_rows rows, reports within flush_every_s of its last
    write wait in the cache; its final result, its end and the experiment's end write it. Smaller files are
    written at every report."""
    import types

    root = tmp_path / "parquet"
    sink = results.ParquetSink(str(root), "s1", verbose=False, flush_every_s=3600, coalesce_rows=1)
    steps = lambda tid: sorted(r["step"] for r in results.read_trial_rows(str(root), "s1", tid))  # noqa: E731
    a, b = types.SimpleNamespace(trial_id="a", config={}), types.SimpleNamespace(trial_id="b", config={})
    sink.on_trial_result(0, [], a, _result(2))
    sink.on_trial_result(0, [], a, _result(4))
    assert steps("a") == [2]  # the first report is written at once, the next waits
    sink.on_trial_result(0, [], a, _result(6, is_final=True))
    assert steps("a") == [2, 4, 6]
    sink.on_trial_result(0, [], b, _result(2))
    sink.on_trial_result(0, [], b, _result(4))
    sink.on_trial_error(0, [], b)  # an erroring trial's rows so far are kept
    assert steps("b") == [2, 4]
    sink.flush_every_s = 0.0
    sink.on_trial_result(0, [], b, _result(6))
    assert steps("b") == [2, 4, 6]
    small = results.ParquetSink(str(root), "s1", verbose=False, flush_every_s=3600)  # default coalesce_rows
    c = types.SimpleNamespace(trial_id="c", config={})
    for step in (2, 4):
        small.on_trial_result(0, [], c, _result(step))
    assert steps("c") == [2, 4]


def test_sink_moves_files_of_trials_unknown_after_a_restore(tmp_path):
    root = tmp_path / "parquet"
    sink = results.ParquetSink(str(root), "s1", verbose=False)
    for tid in ("known", "orphan"):
        sink.add_result(tid, _result(2))
    moved = sink.reconcile({"known", "another"})
    assert [Path(m).name for m in moved] == ["orphan.parquet"]
    assert sorted(p.name for p in (root / "sweep_id=s1").iterdir()) == ["known.parquet"]
    kept = Path(str(root) + ".superseded") / "sweep_id=s1" / "orphan.parquet"
    assert kept.is_file()  # moved aside, not deleted
    state = sink.get_state()
    restored = results.ParquetSink(str(root), "s1", verbose=False)
    restored.set_state(state)
    assert restored.superseded == ["orphan"]
    with pytest.raises(RuntimeError, match="same --storage"):
        results.ParquetSink(str(tmp_path / "elsewhere"), "s1").set_state(state)


def test_sink_for_sampled_trials_keeps_finished_unknown_trials(tmp_path):
    """Optuna's trials are each their own sample: one that finished after the last snapshot stays (Tune will
    not re-run it); an unfinished one is re-sampled under a new id, so its rows move aside."""
    root = tmp_path / "parquet"
    sink = results.ParquetSink(str(root), "s2", verbose=False, keep_finished_unknown=True)
    sink.add_result("finished", _result(2, is_final=True))
    sink.add_result("running", _result(2))
    assert [Path(m).name for m in sink.reconcile(set())] == ["running.parquet"]
    assert sorted(p.name for p in (root / "sweep_id=s2").iterdir()) == ["finished.parquet"]


def test_failure_text_names_the_exception():
    from ouvae.trainer import TrainingStalled

    assert failure_text(TrainingStalled("50 consecutive steps had a non-finite loss\nmore")) == \
        "TrainingStalled: 50 consecutive steps had a non-finite loss"
    trace = "Traceback (most recent call last):\n  File x\nouvae.trainer.TrainingStalled: diverged"
    assert failure_text(trace) == "ouvae.trainer.TrainingStalled: diverged"


# ----- bad input: clear message, exit 2, nothing started ---------------------------------------------------------
@pytest.mark.parametrize("argv,needle", [
    (["--rho-min", "1.2"], "outside (0, 1]"),
    (["--rho-min", "0.9", "--rho-max", "1.0", "--rho-step", "0.5"], "larger than the range"),
    (["--rhos", "0.9", "0"], "outside (0, 1]"),
    (["--preset", "nope"], "unknown preset"),
    (["--dataset", "mnistt"], "Did you mean 'mnist'"),
    (["--set", "lrr=0.1"], "did you mean 'lr'"),
    (["--set", "epochs=ten"], "cannot read"),
    (["--latent-dims", "4xfoo"], "latent dims"),
    (["--cpus-per-trial", "0"], "--cpus-per-trial"),
    (["--name", "a/b"], "--name 'a/b': '/' cannot be part of it"),
    (["--address", "127.0.0.1:1"], "cannot reach a Ray head"),
    (["--resume", "--name", "never-ran"], "no resumable sweep"),
    (["--retry-failed", "--name", "x"], "add --resume"),
    (["--rho-spacing", "0.01"], "--rho-step"),
    (["--name", ".hidden"], "cannot be empty or start with '.'"),
    (["--population", "0"], "--population 0 must be >= 1"),
    (["--seeds", "0", "1", "1"], "--seeds [0, 1, 1] contain duplicates: give each seed once"),
    # options that do nothing in the mode chosen (grid, no ladder, a local Ray)
    (["--rung-factor", "3"], "--rung-factor sets the rungs of --until-converged and does nothing without it: add "
                             "--until-converged (and --max-epochs), or drop --rung-factor"),
    (["--continue", "all"], "--continue sets the rungs of --until-converged"),
    (["--target-width", "0.01"], "--target-width steers adaptive mode's searcher and does nothing in grid mode: "
                                 "add --adaptive, or drop --target-width"),
    (["--budget", "10"], "--budget steers adaptive mode's searcher"),
    (["--coarse-points", "4"], "--coarse-points steers adaptive mode's searcher"),
    (["--direction", "above"], "--direction steers adaptive mode's searcher"),
    (["--address", "127.0.0.1:1", "--num-cpus", "2"], "--num-cpus sizes the local Ray and does nothing when joining"),
])
def test_bad_input_fails_before_any_trial(tmp_path, capsys, quiet_env, argv, needle):
    code = rho_sweep.main([*argv, "--storage", str(tmp_path), "--grid"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("error: ") and needle in err
    assert not (tmp_path / "parquet").exists()


@pytest.mark.parametrize("argv,needle", [
    (["--adaptive", "--rhos", "0.9", "1.0"], "adaptive mode chooses rho"),
    (["--adaptive", "--budget", "0"], "--budget"),
    (["--adaptive", "--coarse-points", "1"], "coarse"),
    (["--adaptive", "--rho-step", "0.01"], "--rho-spacing"),
    (["--adaptive", "--until-converged", "--max-epochs", "60", "--target-width", "0.01"],
     "--target-width steers adaptive mode's searcher, which --until-converged does not use"),
])
def test_bad_adaptive_options_fail_before_any_trial(tmp_path, capsys, quiet_env, argv, needle):
    assert rho_sweep.main([*argv, "--storage", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and needle in err


@pytest.mark.slow
def test_offline_sweep_without_the_data_is_one_line_before_ray_starts(tmp_path):
    """The measured complaint: `critical_rho.py --dataset mnist` offline, without the files, used to start Ray and
    every trial. Now the driver resolves the data first: one line naming the file and the fix, exit code 2, Ray
    never started, nothing written. Offline is made certain here: an empty $OUVAE_DATA cache and HTTP(S) proxies
    on a closed port, so a download attempt is refused at once."""
    dead_proxy = "http://127.0.0.1:9"
    env = {**os.environ, "OUVAE_DATA": str(tmp_path / "cache"), "HTTP_PROXY": dead_proxy, "HTTPS_PROXY": dead_proxy,
           "http_proxy": dead_proxy, "https_proxy": dead_proxy}
    for key in ("no_proxy", "NO_PROXY"):
        env.pop(key, None)
    proc = subprocess.run([sys.executable, str(ROOT / "sweeps" / "critical_rho.py"), "--dataset", "mnist",
                           "--storage", str(tmp_path / "store")], env=env, cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0].startswith("error: dataset mnist: ") and "Traceback" not in proc.stderr
    assert "train-images-idx3-ubyte.gz" in errors[0] and f"put it in {tmp_path / 'cache' / 'mnist'}" in errors[0]
    assert proc.stdout == ""  # not even the sweep's plan: nothing started
    assert not (tmp_path / "store").exists()


def test_existing_sweep_name_is_refused(tmp_path, capsys, quiet_env):
    results.ParquetSink(str(tmp_path / "parquet"), "taken", verbose=False).add_result("t", _result(2))
    assert rho_sweep.main(["--grid", "--storage", str(tmp_path), "--name", "taken"]) == 2
    assert "already has rows" in capsys.readouterr().err


def test_resume_refuses_options_that_differ_from_the_sweeps(ray_session, tmp_path, capsys, quiet_env):
    where = ["--storage", str(tmp_path), "--name", "r"]
    argv = ["--grid", "--latent-dims", "3-3", "--rhos", "0.9", "--n-seeds", "1", "--epochs", "1", *TINY, *where,
            "--no-report", "--quiet"]
    assert rho_sweep.main(argv) == 0
    capsys.readouterr()
    for extra, needle in [(["--n-seeds", "2"], "n_seeds 2 (the sweep has 1)"),  # 2 is the default: named all the same
                          (["--adaptive"], "mode 'adaptive' (the sweep has 'grid')"),
                          (["--set", "eval_iw_k=6"], "overrides ['eval_iw_k=6']")]:
        assert rho_sweep.main(["--resume", *where, *extra]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: --resume cannot change the sweep's options: ") and needle in err, err
    # The sweep's own values and per-invocation options are accepted; the finished sweep has nothing left to run.
    assert rho_sweep.main(["--resume", *where, "--n-seeds", "1", "--grid", "--quiet", "--no-report"]) == 0
    assert "1 runs finished, 0 failed" in capsys.readouterr().out


def test_missing_data_fails_each_trial_once_stops_the_sweep_and_retry_failed_finishes_it(ray_session, tmp_path,
                                                                                        capsys, quiet_env):
    """Workers without the data files (sweeps/testing/faults.py): each trial fails once, without retries; once the first
    round (2 trials at a time here) has failed alike the sweep stops and says why. After the data are back,
    --resume runs the trials that never ran and --resume --retry-failed the failed ones."""
    from ray import tune

    where = ["--storage", str(tmp_path), "--name", "nodata"]
    argv = ["--grid", "--latent-dims", "3-3", "--rhos", "0.6", "0.7", "0.8", "0.9", "--n-seeds", "2", "--epochs", "1",
            *TINY, "--max-concurrent", "2", "--population", "1", *where, "--no-report"]
    assert rho_sweep.main(argv, trainable=faults.train_without_data) == 1
    out = capsys.readouterr().out
    assert "retry  " not in out
    assert f"stopping the sweep: each of the first 2 trials failed with DataError: {faults.MISSING_DATA}" in out
    assert f"every failed trial failed with DataError: {faults.MISSING_DATA}" in out
    assert "python sweeps/critical_rho.py --resume --retry-failed --name nodata" in out
    trials = tune.ExperimentAnalysis(str(tmp_path / "ray" / "nodata")).trials
    failed = [t for t in trials if t.status == "ERROR"]
    assert 2 <= len(failed) <= 4 and all(t.run_metadata.num_failures == 1 for t in failed)  # not retried
    assert not (tmp_path / "parquet" / "sweep_id=nodata").exists()  # no evaluation, no row

    assert rho_sweep.main(["--resume", *where, "--quiet"]) == 0  # the data are back: the rest runs
    out = capsys.readouterr().out
    assert f"{8 - len(failed)} runs finished, {len(failed)} failed" in out and "(not retried)" in out
    assert rho_sweep.main(["--resume", "--retry-failed", *where, "--quiet"]) == 0
    assert "8 runs finished, 0 failed" in capsys.readouterr().out
    final = read_table(tmp_path / "parquet", "nodata").filter(pl.col("is_final"))
    assert sorted(zip(final["rho"], final["seed"])) == [(r, s) for r in (0.6, 0.7, 0.8, 0.9) for s in (0, 1)]


# ----- Ray: end to end -------------------------------------------------------------------------------------------------
def test_grid_sweep_end_to_end_writes_the_documented_table(ray_session, tmp_path, capsys, quiet_env):
    """The default: grid points that share a latent configuration train as populations (smoothed runs apart from
    rho = 1 runs), one file per population trial, one row per run and evaluation."""
    argv = ["--grid", "--latent-dims", "3-3", "--rhos", "0.5", "0.9", "1.0", "--n-seeds", "2", "--epochs", "2",
            *TINY, "--storage", str(tmp_path), "--name", "e2e"]
    assert rho_sweep.main(argv) == 0
    out = capsys.readouterr().out
    assert "6 runs finished, 0 failed" in out and "populations of up to 4 runs per trial (2 trials)" in out
    root = tmp_path / "parquet"
    files = sorted((root / "sweep_id=e2e").glob("*.parquet"))
    assert len(files) == 2  # the four smoothed runs, and the two at rho = 1
    for f in files:
        assert pq.read_schema(f).equals(SCHEMA)  # the same schema in every file, whatever the search space
    df = pl.scan_parquet(str(root), hive_partitioning=True).collect()
    assert df.height == 6 * 2  # two evaluations (epochs 1 and 2) per run
    assert df.select("run_id", "step").is_unique().all()
    assert sorted(df.group_by("population_id").agg(pl.col("run_id").n_unique())["run_id"]) == [2, 4]
    assert (df["run_id"].str.replace(r"-m\d{3}$", "") == df["population_id"]).all()
    assert set(df["population_size"]) == {2, 4} and df["failure"].null_count() == df.height
    final = df.filter(pl.col("is_final"))
    assert final.height == 6 and sorted(final["epoch"].unique().to_list()) == [2]
    assert sorted(zip(final["rho"], final["seed"])) == [(r, s) for r in (0.5, 0.9, 1.0) for s in (0, 1)]
    assert set(df["latent_dims"]) == {"3-3"} and set(df["dataset"]) == {"digits"}
    assert set(df["binarization"]) == {"dynamic"} and df["ouvae_version"].null_count() == 0
    assert set(df["hostname"]) == {socket.gethostname()}  # where each evaluation was computed
    assert df["layer_kl"].list.len().unique().to_list() == [2]
    assert (tmp_path / "reports" / "e2e" / "report.html").is_file() and "report:" in out
    # Ray's experiment folder holds the sweep's options for --resume.
    assert (tmp_path / "ray" / "e2e" / SPEC_FILE).is_file()


def test_a_sweep_on_your_own_numpy_images_records_which_data_it_was(ray_session, tmp_path, capsys, quiet_env):
    """--dataset npy --data-dir FILE.npz through the sweep: the rows name the data set by its file, and record the
    binarization and likelihood inferred from the arrays (grey levels: dynamic, Bernoulli)."""
    import numpy as np

    rng = np.random.default_rng(0)
    np.savez(tmp_path / "faces.npz", train=rng.random((300, 8, 8), dtype=np.float32),
             test=rng.random((60, 8, 8), dtype=np.float32))
    argv = ["--grid", "--latent-dims", "3-3", "--rhos", "0.8", "1.0", "--n-seeds", "1", "--epochs", "1", *TINY,
            "--dataset", "npy", "--data-dir", str(tmp_path / "faces.npz"), "--storage", str(tmp_path / "out"),
            "--name", "own", "--no-report"]
    assert rho_sweep.main(argv) == 0
    assert "2 runs finished, 0 failed" in capsys.readouterr().out
    df = read_table(tmp_path / "out" / "parquet", "own")
    assert set(df["dataset"]) == {"npy:faces"} and set(df["binarization"]) == {"dynamic"}
    assert set(df["likelihood"]) == {"bernoulli"} and df.filter(pl.col("is_final")).height == 2


def test_adaptive_sweep_runs_the_searcher_end_to_end(ray_session, tmp_path, capsys, quiet_env):
    argv = ["--adaptive", "--latent-dims", "3-3", "--rho-min", "0.5", "--rho-max", "1.0", "--coarse-points", "3",
            "--n-seeds", "2", "--budget", "8", "--epochs", "1", *TINY, "--storage", str(tmp_path), "--name", "ad",
            "--no-report"]
    assert rho_sweep.main(argv) == 0
    out = capsys.readouterr().out
    assert "(adaptive)" in out and "0 failed" in out
    final = read_table(tmp_path / "parquet", "ad").filter(pl.col("is_final"))
    # The coarse pass: 3 rho values x 2 seeds, then at most 2 more runs placed by the searcher (budget 8).
    assert 6 <= final.height <= 8
    assert {(0.5, 0), (0.75, 0), (1.0, 0), (0.5, 1), (0.75, 1), (1.0, 1)} <= set(zip(final["rho"], final["seed"]))
    assert final.select("rho", "seed").is_unique().all()  # no (rho, seed) run twice


def test_fractional_gpus_pack_four_trials_at_once_on_one_logical_gpu(ray_session, tmp_path):
    from ray import tune

    from sweeps.trainable import train_ouvae

    class MaxRunning(tune.Callback):
        def __init__(self):
            self.max_running = 0

        def on_step_end(self, iteration, trials, **info):
            self.max_running = max(self.max_running, sum(t.status == "RUNNING" for t in trials))

    started = tmp_path / "started"
    started.mkdir()

    def packed(config):
        """Trains once all four trials are running at once, so that neither a fast machine (a trial ending before
        the last one starts) nor a loaded one (the last actor slow to start) decides the count: packing that
        allowed fewer than four at once ends here with an error."""
        (started / str(config["seed"])).touch()
        deadline = time.monotonic() + HANG_GUARD_S
        while len(list(started.iterdir())) < 4:
            if time.monotonic() > deadline:
                raise RuntimeError("fewer than four trials were running at once")
            time.sleep(0.1)
        return train_ouvae(config)

    counter = MaxRunning()
    space = {"preset": "demo", "latent_dims": [3, 3], "epochs": 40, "n_train": 200, "eval_every": 20, "eval_iw_k": 5,
             "eval_max_examples": 100, "num_threads": 1, "hidden_units": 32, "rho": 0.9,
             "seed": tune.grid_search([0, 1, 2, 3])}
    tuner = tune.Tuner(
        tune.with_resources(packed, {"cpu": 0.5, "gpu": 0.25}), param_space=space,
        tune_config=tune.TuneConfig(reuse_actors=True),
        run_config=tune.RunConfig(name="pack", storage_path=str(tmp_path / "ray"), verbose=0,
                                  callbacks=[counter, results.ParquetSink(str(tmp_path / "pq"), "pack", verbose=False)]))
    grid = tuner.fit()
    assert not grid.errors  # device "auto": torch sees no CUDA behind the logical GPU, so trials run on the CPU
    assert counter.max_running == 4
    df = read_table(tmp_path / "pq", "pack")
    assert df.filter(pl.col("is_final")).height == 4 and df.height == 8


def test_peak_memory_is_each_trials_own_in_a_reused_worker(ray_session, tmp_path):
    """A large trial, then a small one in the same worker process (reuse_actors): the small one reports its own
    peak, not the large one's (ouvae/memory.py resets it per trial)."""
    from ray import tune

    from sweeps.trainable import train_ouvae

    space = {"preset": "demo", "steps": 3, "eval_every": 1000, "eval_iw_k": 2, "eval_max_examples": 100,
             "num_threads": 1, "rho": 0.9, "size": tune.grid_search(["large", "small"])}
    sizes = {"large": {"hidden_units": 1000, "batch_size": 400, "steps": 1}, "small": {"hidden_units": 16, "latent_dims": [3, 3]}}

    def sized(config):  # the grid's label picks the model size
        return train_ouvae({k: v for k, v in config.items() if k != "size"} | sizes[config["size"]])

    sized.__name__ = sized.__qualname__ = "train_ouvae"
    tuner = tune.Tuner(
        tune.with_resources(sized, {"cpu": 1}), param_space=space,
        tune_config=tune.TuneConfig(reuse_actors=True, max_concurrent_trials=1),
        run_config=tune.RunConfig(name="memory", storage_path=str(tmp_path / "ray"), verbose=0,
                                  callbacks=[results.ParquetSink(str(tmp_path / "pq"), "memory", verbose=False)]))
    grid = tuner.fit()
    assert not grid.errors
    by_size = {r.config["size"]: r.metrics for r in grid}
    assert by_size["large"]["pid"] == by_size["small"]["pid"]  # one worker process ran both
    large, small = by_size["large"]["peak_memory_bytes"], by_size["small"]["peak_memory_bytes"]
    # A high-water mark only rises: without the reset per trial the small trial would report at least the large one's
    assert small < large, (large, small)


@pytest.mark.parametrize("failure", ["crash", "killed worker process"])
def test_crashed_trial_is_retried_from_its_checkpoint_without_duplicate_rows(ray_session, tmp_path, failure):
    """A trial crashes -- or its worker process is SIGKILLed, as the out-of-memory killer does -- right after
    its first checkpoint (sweeps/testing/faults.py); Tune retries it, and it continues from that checkpoint."""
    from ray import tune

    marker = str(tmp_path / "markers")
    plan = faults.crash_once(marker) if failure == "crash" else faults.kill_once(marker)

    class Sequence(tune.Callback):
        def __init__(self):
            self.steps: dict[str, list[int]] = {}
            self.retried: list[str] = []

        def on_trial_result(self, iteration, trials, trial, result, **info):
            self.steps.setdefault(str(trial.config.get(faults.FAULT)), []).append(
                (result["step"], result["restored_from_step"]))

        def on_trial_recover(self, iteration, trials, trial, **info):
            self.retried.append(str(trial.config.get(faults.FAULT)))

    seq = Sequence()
    space = {"preset": "demo", "latent_dims": [3, 3], "epochs": 4, "n_train": 200, "eval_every": 1, "eval_iw_k": 5,
             "eval_max_examples": 100, "num_threads": 1, "hidden_units": 32, "rho": 0.9, "seed": 7,
             faults.FAULT: tune.grid_search([plan, None])}
    tuner = tune.Tuner(
        tune.with_resources(faults.train_with_faults, {"cpu": 1}), param_space=space,
        tune_config=tune.TuneConfig(reuse_actors=True),
        run_config=tune.RunConfig(name="retry", storage_path=str(tmp_path / "ray"), verbose=0,
                                  failure_config=tune.FailureConfig(max_failures=1),
                                  callbacks=[seq, results.ParquetSink(str(tmp_path / "pq"), "retry", verbose=False),
                                             progress.FailurePolicy(max_failures=1, first_round=2)]))
    grid = tuner.fit()
    assert not grid.errors
    assert seq.retried == [str(plan)]  # the faulty trial failed once and was retried
    assert len(os.listdir(marker)) == 1
    # The clean twin ran once; the retried trial continued from its checkpoint at step 2: it re-sent that
    # evaluation, then took the same steps as its twin.
    assert seq.steps["None"] == [(2, 0), (4, 0), (6, 0), (8, 0)]
    assert seq.steps[str(plan)] == [(2, 0), (2, 2), (4, 2), (6, 2), (8, 2)]
    ckpts = sorted(p.name for p in (tmp_path / "ray" / "retry").glob("*/ouvae_checkpoints/*"))
    assert ckpts == ["step_000000000008.pt"] * 2  # a finished trial keeps only its final checkpoint
    df = read_table(tmp_path / "pq", "retry")
    assert df.select("run_id", "step").is_unique().all() and df.height == 8
    by_trial = {tid: g.sort("step") for (tid,), g in df.group_by("run_id")}
    a, b = by_trial.values()
    # Exact resume: the retried run's metrics equal those of the run that never failed.
    assert a["iw_bound"].to_list() == b["iw_bound"].to_list()
    assert a["elbo"].to_list() == b["elbo"].to_list()


def test_diverging_trial_fails_once_without_retries_while_the_sweep_goes_on(ray_session, tmp_path, capsys):
    """A diverged run would diverge again from its checkpoint (the trainer is deterministic): it is not
    retried, whatever --max-failures says, and its reason is printed once."""
    from ray import tune

    from sweeps.progress import ProgressLine
    from sweeps.trainable import train_ouvae

    space = {"preset": "demo", "latent_dims": [3, 3], "epochs": 2, "n_train": 200, "eval_every": 1, "eval_iw_k": 5,
             "eval_max_examples": 100, "num_threads": 1, "hidden_units": 32, "rho": 0.9, "max_skipped_steps": 2,
             "lr": tune.grid_search([1e-3, 1e12])}  # lr = 1e12 diverges: NaN steps -> TrainingStalled
    tuner = tune.Tuner(
        tune.with_resources(train_ouvae, {"cpu": 1}), param_space=space,
        tune_config=tune.TuneConfig(reuse_actors=True),
        run_config=tune.RunConfig(name="nan", storage_path=str(tmp_path / "ray"), verbose=0,
                                  failure_config=tune.FailureConfig(max_failures=2),
                                  callbacks=[results.ParquetSink(str(tmp_path / "pq"), "nan", verbose=False),
                                             ProgressLine(show=("lr",), total=2),
                                             progress.FailurePolicy(max_failures=2, first_round=2)]))
    grid = tuner.fit()
    out = capsys.readouterr().out
    assert len(grid.errors) == 1
    bad = next(r for r in grid if r.error is not None)
    assert bad.config["lr"] == 1e12 and failure_text(bad.error).startswith("TrainingStalled: ")
    assert "retry  lr=" not in out  # ProgressLine announces every retry
    assert "FAILED lr=1e+12: TrainingStalled: 2 consecutive steps" in out and "(not retried" in out
    trials = {t.config["lr"]: t for t in tune.ExperimentAnalysis(str(tmp_path / "ray" / "nan")).trials}
    assert trials[1e12].run_metadata.num_failures == 1
    assert trials[1e12].max_failures == 2  # its retries are back in Tune's record, for --resume --retry-failed
    df = read_table(tmp_path / "pq", "nan")  # the healthy trial finished and was written
    assert df.filter(pl.col("is_final"))["lr"].to_list() == [1e-3]


def test_driver_killed_mid_sweep_then_resumed_loses_and_duplicates_nothing(ray_session, tmp_path):
    """A grid of populations (--population 4), the driver SIGKILLed while the second population trains, then
    --resume: one final row per grid point, every evaluation of every run once, nothing written before lost."""
    address = ray_session.get_runtime_context().gcs_address
    storage = tmp_path / "store"
    argv = [sys.executable, str(ROOT / "sweeps" / "critical_rho.py"), "--grid", "--latent-dims", "3-3",
            "--rhos", "0.6", "0.7", "0.8", "1.0", "--n-seeds", "2", "--epochs", "5", *TINY, "--max-concurrent", "1",
            "--population", "4", "--storage", str(storage), "--name", "crash", "--address", address, "--no-report",
            "--quiet"]
    part = storage / "parquet" / "sweep_id=crash"

    def runs_now() -> dict[str, set[int]]:
        # Each file is read in one read(): the driver replaces files (atomically) while we read, and a reader that
        # opens a file twice (footer, then pages) may pair one version's footer with the next version's pages.
        files = list(part.glob("*.parquet")) if part.is_dir() else []
        tables = [pq.read_table(pa.BufferReader(f.read_bytes()), columns=["run_id", "step"]) for f in files]
        rows = [r for t in tables for r in t.to_pylist()]
        out: dict[str, set[int]] = {}
        for r in rows:
            out.setdefault(r["run_id"], set()).add(r["step"])
        return out

    log = open(tmp_path / "first.log", "w")
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
    deadline = time.monotonic() + HANG_GUARD_S
    before: dict[str, set[int]] = {}
    while time.monotonic() < deadline:
        rows = runs_now()
        if sum(map(len, rows.values())) >= 4 * 5 + 4:  # past the first population, in the middle of the second
            proc.send_signal(signal.SIGKILL)
            before = rows
            break
        assert proc.poll() is None, (tmp_path / "first.log").read_text()
        time.sleep(0.1)
    proc.wait(timeout=30)
    assert before, "the sweep wrote no rows within 2 minutes"
    finals = pl.read_parquet(part / "*.parquet").filter(pl.col("is_final")).height
    assert finals < 8, "the driver was killed too late to test a mid-sweep crash"

    resumed = subprocess.run([*argv, "--resume"][:], capture_output=True, text=True, cwd=tmp_path, timeout=240)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    df = pl.read_parquet(part / "*.parquet")
    assert df.select("run_id", "step").is_unique().all()  # no duplicate rows
    final = df.filter(pl.col("is_final"))
    # Exactly one finished run per grid point, each with all five evaluations.
    assert sorted(zip(final["rho"], final["seed"])) == [(r, s) for r in (0.6, 0.7, 0.8, 1.0) for s in (0, 1)]
    assert df.group_by("run_id").len()["len"].to_list() == [5] * 8
    # Nothing written before the crash was lost: every row a surviving population had is still there.
    after = {tid: set(g["step"]) for (tid,), g in df.group_by("run_id")}
    moved = Path(str(storage / "parquet") + ".superseded") / "sweep_id=crash"
    superseded = {p.stem for p in moved.glob("*")} if moved.exists() else set()
    for run, steps in before.items():
        if run.rsplit("-m", 1)[0] in superseded:
            continue
        assert steps <= after[run]

def test_resume_of_a_sweep_whose_saved_state_names_code_that_is_gone_is_one_line(tmp_path, monkeypatch):
    """Tune pickles our searcher and callbacks by module path: a sweep started by a version whose modules have
    since moved cannot be restored, and says so in one line (with what still works) instead of a traceback."""
    import argparse
    import importlib
    import pickle
    import sys

    from sweeps import experiment
    from sweeps.errors import SweepError
    from sweeps.storage import sweep_paths

    (tmp_path / "gone_module.py").write_text("class Policy:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    state = pickle.dumps(importlib.import_module("gone_module").Policy())
    del sys.modules["gone_module"]
    (tmp_path / "gone_module.py").unlink()
    paths = sweep_paths(str(tmp_path / "store"), "old", None)
    Path(paths.experiment).mkdir(parents=True)
    (Path(paths.experiment) / "tuner.pkl").write_bytes(state)
    args = argparse.Namespace(resume=True, retry_failed=False, cpus_per_trial=1, gpus_per_trial=0, max_failures=0)
    with pytest.raises(SweepError, match=r"--resume old: Tune's saved state names code .*gone_module.* new sweep"):
        experiment.fit(lambda config: None, args, "old", paths, {})


def test_a_local_ray_that_does_not_start_is_one_line(monkeypatch):
    """On a loaded machine Ray's own processes may not come up in time: the sweep says so in one line, with what to
    do, instead of Ray's traceback."""
    import argparse

    import ray

    from sweeps import experiment
    from sweeps.errors import SweepError

    def no_ray(**kwargs):
        raise RuntimeError("Failed to start the raylet.\nThe GCS did not answer within 60 s (TimeoutError)")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", no_ray)
    args = argparse.Namespace(address=None, num_cpus=None, num_gpus=None)
    with pytest.raises(SweepError, match=r"^could not start a local Ray: The GCS did not answer within 60 s "
                                         r"\(TimeoutError\); nothing was written: run the same command again"):
        experiment.connect(args)

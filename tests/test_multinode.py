"""The sweep on a real multi-node Ray cluster, simulated on one machine over loopback (sweeps/testing/cluster.py).

A head with 0 CPUs (it runs no trials, as in clusters/aws.yaml) and two worker nodes with 1 CPU each, every one a
separate `ray start` with its own address (127.0.0.x), temp dir, ports and the cluster's own auth token. The sweep
runs as the user runs it: `python sweeps/critical_rho.py --address ... --storage <shared folder>` in a subprocess.
The shared folder stands in for NFS/S3: trials on both workers write their checkpoints there, the driver
writes the Parquet table there.

What is checked, after (1) one worker node is killed while trials run, and (2) the driver is SIGKILLed mid-sweep and
the sweep resumed with --resume:

* the Parquet table (analysis/schema.py layout, read with Polars) has exactly one row per (run_id, step), every
  grid point (latent config, rho, seed) has exactly one final row, and every trial has its full set of steps;
* trials interrupted by the failure continued from their checkpoints: Tune's own per-trial record (result.json
  in the experiment folder) splits into runs of the trainable (``iterations_since_restore`` back to 1), every
  run after the first reports the step it continued from (``restored_from_step`` > 0, sweeps/trainable.py),
  and that step is the newest evaluation the trial had reported before the failure, or the one after it
  (checkpointed, not yet reported); for the node kill also Tune's trial state: ``num_failures`` > 0 for exactly
  the trials that were on that node;
* rows came from both worker nodes and none from the head: Tune stamps each result with the ``node_ip`` of the
  node that produced it; joined to the table on (Tune trial, step) -- a table row's Tune trial is its
  ``population_id`` (the trials train populations of two runs). The table's own ``hostname`` column cannot
  tell the loopback nodes apart: they are one machine.

The driver is killed at the worst moment the test can observe -- a trial has checkpointed an evaluation that the
table does not have yet (see unrecorded_checkpoints) -- or 2 s after the sweep is half way if that moment never
comes.

Budgets are small (a 2-layer 3-3 model, 10 evaluations of ~0.3 s) but each trial lasts a few seconds, so the
kill reliably lands inside a trial that has already checkpointed. The whole file takes 1 to 1.5 minutes on 2
cores (up to ~2.5 minutes when the machine is busy); every subprocess has a timeout.
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

from sweeps.testing.cluster import LoopbackCluster

pytestmark = [
    pytest.mark.multinode,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the loopback cluster helper reads /proc"),
]

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "sweeps" / "critical_rho.py"
RHOS = (0.7, 0.85, 1.0)
SEEDS = (0, 1)
LATENT = "3-3"
N_EVALS = 10  # --epochs 10 with an evaluation (= report + checkpoint) every epoch
# Populations of 2 (the two seeds of each rho): 3 Tune trials of 2 runs each, so each worker runs populations.
GRID = ["--grid", "--latent-dims", LATENT, "--rhos", *map(str, RHOS), "--seeds", *map(str, SEEDS), "--population", "2"]
# The demo preset's model (200-unit maps, K = 5) on 797 digits: ~0.3 s per epoch on one core, ~3 s per trial.
BUDGET = ["--epochs", str(N_EVALS), "--n-train", "797", "--set", "eval_every=1", "--set", "eval_iw_k=5",
          "--set", "eval_max_examples=100"]
SWEEP_TIMEOUT_S = 150


# ----- fixtures and helpers ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cluster():
    """One loopback cluster for the module (starting it costs ~15 s); tests that kill a worker leave it to the
    next test's ensure_workers() to start a replacement. The finalizer kills this cluster's processes only (never
    `ray stop`, which would also end other Ray sessions of this user, e.g. the tests' in-process local Ray)."""
    c = LoopbackCluster(head_cpus=0, worker_cpus=1)
    try:
        c.start(n_workers=2)
        yield c
    finally:
        c.shutdown()  # raises if a process of this cluster survives
        assert not c.pids(), "stray processes of the loopback cluster"
        left = subprocess.run(["pgrep", "-f", str(c.base)], capture_output=True, text=True).stdout.split()
        assert not left, f"stray processes of the loopback cluster: {left}"


def sweep_argv(cluster: LoopbackCluster, storage: Path, name: str, *extra: str) -> list[str]:
    return [sys.executable, str(SCRIPT), *GRID, *BUDGET, "--address", cluster.address, "--storage", str(storage),
            "--name", name, "--no-report", *extra]


def start_sweep(cluster: LoopbackCluster, argv: list[str], log: Path) -> subprocess.Popen:
    with open(log, "w") as out:
        return subprocess.Popen(argv, env=cluster.env("driver"), stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, cwd=log.parent, start_new_session=True)


def finish(proc: subprocess.Popen, log: Path, timeout_s: float = SWEEP_TIMEOUT_S) -> str:
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=30)
        pytest.fail(f"the sweep did not finish within {timeout_s} s:\n{log.read_text()[-4000:]}")
    text = log.read_text()
    assert proc.returncode == 0, text[-4000:]
    return text


def live_results(cluster: LoopbackCluster, name: str) -> dict[str, list[dict]]:
    """trial dir name -> results so far, from the driver's own copy of Tune's result.json (written and flushed
    per result in the driver's session folder, i.e. the head's temp dir; synced to --storage only at experiment
    snapshots). Lets the test see which node each running trial is on."""
    out = {}
    for f in cluster.base.glob(f"head/session_*/artifacts/*/{name}/driver_artifacts/*/result.json"):
        rows = []
        for line in f.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:  # a line being written
                break
        out[f.parent.name] = rows
    return out


def read_partition(part: Path) -> pl.DataFrame | None:
    """The sweep's table while the driver may be rewriting files (None when it cannot be read right now)."""
    try:
        return pl.read_parquet(part / "*.parquet") if any(part.glob("*.parquet")) else None
    except (OSError, pl.exceptions.ComputeError):  # a file replaced while listed
        return None


def read_table(storage: Path, name: str) -> pl.DataFrame:
    return pl.read_parquet(storage / "parquet" / f"sweep_id={name}" / "*.parquet")


TUNE_TRIAL = pl.col("population_id").fill_null(pl.col("run_id")).alias("tune_trial")  # a row's Tune trial


def tune_trial_ids(df: pl.DataFrame) -> set[str]:
    return set(df.select(TUNE_TRIAL)["tune_trial"])


def tune_trials(storage: Path, name: str) -> dict[str, dict]:
    """trial_id -> {"num_failures", "results"} from Tune's experiment folder on --storage (its state and each
    trial's result.json), read with Tune's own ExperimentAnalysis: no Ray runtime needed."""
    from ray.tune import ExperimentAnalysis

    ea = ExperimentAnalysis(str(storage / "ray" / name))
    out = {}
    for t in ea.trials:
        f = Path(t.path) / "result.json"
        rows = [json.loads(line) for line in f.read_text().splitlines() if line.strip()] if f.exists() else []
        out[t.trial_id] = {"num_failures": t.run_metadata.num_failures, "results": rows, "status": t.status}
    return out


def check_table_exactly_once(df: pl.DataFrame) -> None:
    """One row per (trial, step); one final row per grid point; every trial has all N_EVALS evaluations."""
    assert df.height > 0
    assert df.select("run_id", "step").is_unique().all(), "a (run_id, step) row is duplicated"
    final = df.filter(pl.col("is_final"))
    points = sorted(zip(final["latent_dims"], final["rho"], final["seed"]))
    assert points == sorted((LATENT, r, s) for r in RHOS for s in SEEDS), points
    assert final["run_id"].n_unique() == final.height == df["run_id"].n_unique()
    steps = {tid: sorted(g["step"]) for (tid,), g in df.group_by("run_id")}
    first = next(iter(steps.values()))
    assert len(first) == N_EVALS and all(s == first for s in steps.values()), steps
    assert df.filter(pl.col("is_final"))["step"].unique().to_list() == [first[-1]]


def brief(results: list[dict]) -> list[tuple]:
    """(step, training_iteration, iterations_since_restore, node_ip) per result: enough to read a failure."""
    return [(r["step"], r["training_iteration"], r["iterations_since_restore"], r["node_ip"]) for r in results]


def runs(results: list[dict]) -> list[list[dict]]:
    """Split a trial's results into runs of its trainable: a new run starts where iterations_since_restore is 1."""
    out: list[list[dict]] = []
    for r in results:
        if r["iterations_since_restore"] == 1 or not out:
            out.append([])
        out[-1].append(r)
    return out


def continued_runs(trials: dict[str, dict]) -> dict[str, list[int]]:
    """trial id -> the step each of its runs continued from, for trials with a run that continued from a
    checkpoint (after a driver crash Tune's record may keep only such a run). Asserts that no run after a
    trial's first started from scratch and that a continued run re-sent the evaluations it had before."""
    out: dict[str, list[int]] = {}
    for tid, t in trials.items():
        for i, run in enumerate(runs(t["results"])):
            start = run[0]["restored_from_step"]
            assert start > 0 or i == 0, f"trial {tid} restarted from scratch: {brief(t['results'])}"
            if start:
                resent = [r["step"] for r in run if r["step"] <= start]
                assert resent and resent[-1] == start, f"trial {tid} did not re-send its history: {brief(run)}"
                out.setdefault(tid, []).append(start)
    return out


def check_continued_where_it_stopped(start: int, reported: set[int], first_step: int, what: str) -> None:
    """A run continued from the newest evaluation reported before the failure, or from the one after it (saved
    just before the failure, never reported -- possibly the trial's first): no evaluation skipped, no progress
    lost."""
    newest = max(reported, default=0)
    assert newest <= start <= newest + first_step, f"{what}: continued from step {start}, had reported {newest}"


def unrecorded_checkpoints(experiment: Path, df: pl.DataFrame | None) -> list[str]:
    """Checkpoints (sweeps/trainable.py layout) of evaluations that the table has no row for yet: a trial
    has saved but its report has not reached the table. A driver dying now is the case the re-sent history of
    sweeps/trainable.py exists for."""
    have = set() if df is None else set(zip(df.select(TUNE_TRIAL)["tune_trial"], df["step"]))
    out = []
    for f in experiment.glob("*/ouvae_checkpoints/step_*.pt"):
        step = int(f.stem.split("_")[1])
        trial_id = next((tid for tid, _ in have if tid in f.parent.parent.name), None)
        if trial_id is not None and (trial_id, step) not in have:
            out.append(f"{trial_id}/{f.name}")
    return out


def node_of_rows(df: pl.DataFrame, trials: dict[str, dict]) -> pl.DataFrame:
    """The table's rows joined to the node_ip Tune recorded for the same (Tune trial, step)."""
    seen = pl.DataFrame(
        [{"tune_trial": tid, "step": r["step"], "node_ip": r["node_ip"]} for tid, t in trials.items()
         for r in t["results"]],
        schema={"tune_trial": pl.String, "step": pl.Int64, "node_ip": pl.String})
    # A step reported twice (re-sent by a run that continued from a checkpoint) was computed where it was first
    # reported.
    seen = seen.unique(subset=["tune_trial", "step"], keep="first", maintain_order=True)
    return df.select(TUNE_TRIAL, "step", "is_final").join(seen, on=["tune_trial", "step"], how="left")


# ----- tests -----------------------------------------------------------------------------------------------------
def test_worker_node_killed_mid_sweep_trials_continue_on_the_other_node(cluster, tmp_path):
    cluster.ensure_workers(2)
    victim, survivor = cluster.workers[-1], cluster.workers[-2]
    storage, name = tmp_path / "shared", "node-kill"
    log = tmp_path / "sweep.log"
    proc = start_sweep(cluster, sweep_argv(cluster, storage, name), log)

    # Kill the victim node while it runs a trial that has checkpointed (>= 2 results) and has >= 3 left to go.
    deadline = time.monotonic() + SWEEP_TIMEOUT_S
    killed_trial = None
    while killed_trial is None:
        assert proc.poll() is None, f"the sweep ended before a trial ran on {victim.ip}:\n{log.read_text()[-4000:]}"
        assert time.monotonic() < deadline, f"no trial reached {victim.ip} in time:\n{log.read_text()[-4000:]}"
        for rows in live_results(cluster, name).values():
            last = rows[-1] if rows else None
            if last and last["node_ip"] == victim.ip and 2 <= len(rows) <= N_EVALS - 3:
                cluster.kill_node(victim)
                killed_trial = last["trial_id"]
                break
        time.sleep(0.05)
    out = finish(proc, log)
    assert "6 runs finished, 0 failed" in out, out[-4000:]

    df = read_table(storage, name)
    check_table_exactly_once(df)

    trials = tune_trials(storage, name)
    assert set(trials) == tune_trial_ids(df), "Tune's trials and the table's trials differ"
    failed = {tid for tid, t in trials.items() if t["num_failures"] > 0}
    assert killed_trial in failed, (killed_trial, failed)
    restored = continued_runs(trials)
    assert set(restored) == failed  # every failed trial was restored from a checkpoint, no other one was
    for tid in failed:
        before, *after = runs(trials[tid]["results"])
        assert len(after) == len(restored[tid]) == 1
        check_continued_where_it_stopped(restored[tid][0], {r["step"] for r in before}, int(df["step"].min()), tid)
        assert {r["node_ip"] for r in before} == {victim.ip}
        assert {r["node_ip"] for rr in after for r in rr} == {survivor.ip}  # finished on the surviving node

    rows = node_of_rows(df, trials)
    assert rows["node_ip"].null_count() == 0, "a table row has no matching Tune result"
    ips = set(rows["node_ip"])
    assert ips == {victim.ip, survivor.ip}, ips  # both workers wrote rows; the 0-CPU head ran nothing
    assert "retry" in out  # the sweep's progress line reported the retry


def test_driver_killed_mid_sweep_then_resumed_on_the_cluster(cluster, tmp_path):
    cluster.ensure_workers(2)
    worker_ips = {n.ip for n in cluster.workers}
    storage, name = tmp_path / "shared", "driver-kill"
    argv = sweep_argv(cluster, storage, name, "--quiet")
    log = tmp_path / "first.log"
    proc = start_sweep(cluster, argv, log)
    part = storage / "parquet" / f"sweep_id={name}"

    # SIGKILL the driver mid-sweep: once some run is final and an open run has between 3 and N_EVALS - 3 rows
    # ("armed"), at the worst moment observable -- a trial has checkpointed an evaluation the table does not have
    # yet -- or 1 s later. Populations finish two runs at a time and the two first trials may finish together, so
    # "some run is final" may already mean 4 of the 6: the third trial, alone, is then the one cut mid-way.
    deadline = time.monotonic() + SWEEP_TIMEOUT_S
    experiment = storage / "ray" / name
    armed_at = None
    before: dict[str, set[int]] = {}
    last_table_read = 0.0
    while not before:
        assert proc.poll() is None, f"the sweep ended before it could be killed:\n{log.read_text()[-4000:]}"
        assert time.monotonic() < deadline, f"the sweep made no progress:\n{log.read_text()[-4000:]}"
        if armed_at is None and time.monotonic() - last_table_read > 0.05:
            last_table_read = time.monotonic()
            df = read_partition(part)
            if df is not None:
                n_final = df.filter(pl.col("is_final")).height
                open_rows = df.filter(~pl.col("run_id").is_in(df.filter(pl.col("is_final"))["run_id"].implode()))
                counts = open_rows.group_by("run_id").len()
                if n_final >= 1 and counts.height and 3 <= counts["len"].max() <= N_EVALS - 3:
                    armed_at = time.monotonic()
        unrecorded = unrecorded_checkpoints(experiment, read_partition(part)) if armed_at is not None else []
        if armed_at is not None and (unrecorded or time.monotonic() - armed_at > 1.0):
            how = f"while {unrecorded} had no rows yet" if unrecorded else "1 s after it was armed"
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
            df = read_partition(part)
            before = {tid: set(g["step"]) for (tid,), g in df.group_by("run_id")}
        time.sleep(0.002 if armed_at is not None else 0.02)
    finals_before = pl.read_parquet(part / "*.parquet").filter(pl.col("is_final")).height
    assert finals_before < len(RHOS) * len(SEEDS), "the driver was killed too late to test a mid-sweep crash"

    log2 = tmp_path / "resume.log"
    out = finish(start_sweep(cluster, [*argv, "--resume"], log2), log2)
    assert "6 runs finished, 0 failed" in out, (
        f"the resumed sweep did not finish every trial. The driver was killed {how}.\n{out[-3000:]}")

    df = read_table(storage, name)
    check_table_exactly_once(df)
    # Nothing written before the crash was lost (files of trials Tune re-created under new ids are moved aside).
    superseded_dir = storage / "parquet.superseded" / f"sweep_id={name}"
    superseded = {p.stem for p in superseded_dir.glob("*.parquet")} if superseded_dir.is_dir() else set()
    after = {tid: set(g["step"]) for (tid,), g in df.group_by("run_id")}
    for run, steps in before.items():
        if run.rsplit("-m", 1)[0] not in superseded:
            assert steps <= after[run], (run, steps, after.get(run))

    trials = tune_trials(storage, name)
    assert set(trials) == tune_trial_ids(df)
    restored = continued_runs(trials)
    # At least the half-way trial was resumed from its checkpoint by --resume, where the table had stopped.
    assert restored, {tid: brief(t["results"]) for tid, t in trials.items()}
    before_by_trial: dict[str, set[int]] = {}
    for run, steps in before.items():
        before_by_trial.setdefault(run.rsplit("-m", 1)[0], set()).update(steps)
    for tid, starts in restored.items():  # a trial whose first checkpoint had no row yet had none before
        check_continued_where_it_stopped(starts[-1], before_by_trial.get(tid, set()), int(df["step"].min()),
                                         f"{tid} ({how})")

    rows = node_of_rows(df, trials)
    ips = set(rows["node_ip"].drop_nulls())
    assert ips <= worker_ips and len(ips) == 2, (ips, worker_ips)  # rows from both workers, none from the head


# ----- the checks themselves fail on the failures they look for (no cluster needed) --------------------------------
def _run(steps: list[int], restored_from: int = 0, ip: str = "127.0.0.2") -> list[dict]:
    """One run of the trainable as Tune records it: steps of 8 per evaluation."""
    return [{"step": step, "iterations_since_restore": i, "training_iteration": i, "restored_from_step": restored_from,
             "node_ip": ip} for i, step in enumerate(steps, start=1)]


def test_restart_checks_catch_a_trial_that_started_again_from_scratch():
    continued = {"t": {"results": _run([8, 16]) + _run([8, 16, 24, 32], restored_from=16)}}
    assert continued_runs(continued) == {"t": [16]}
    assert continued_runs({"t": {"results": _run([8, 16])}}) == {}
    # After a driver crash Tune may keep only the resumed run: it still counts as continued from a checkpoint.
    assert continued_runs({"t": {"results": _run([8, 16, 24], restored_from=16)}}) == {"t": [16]}
    with pytest.raises(AssertionError, match="restarted from scratch"):
        continued_runs({"t": {"results": _run([8, 16]) + _run([8, 16])}})
    with pytest.raises(AssertionError, match="did not re-send"):  # continued but its history was not re-sent
        continued_runs({"t": {"results": _run([8, 16]) + _run([24, 32], restored_from=16)}})
    check_continued_where_it_stopped(16, {8, 16}, 8, "t")
    check_continued_where_it_stopped(24, {8, 16}, 8, "t")  # saved step 24, failed before reporting it
    check_continued_where_it_stopped(8, set(), 8, "t")  # its first checkpoint, never reported
    with pytest.raises(AssertionError, match="continued from step 16"):
        check_continued_where_it_stopped(16, set(), 8, "t")
    with pytest.raises(AssertionError, match="continued from step 32"):  # skipped an evaluation
        check_continued_where_it_stopped(32, {8, 16}, 8, "t")
    with pytest.raises(AssertionError, match="continued from step 8"):  # lost progress
        check_continued_where_it_stopped(8, {8, 16}, 8, "t")


def test_unrecorded_checkpoint_probe_compares_checkpoints_with_the_table(tmp_path):
    folder = tmp_path / "train_ouvae_ab123_00001_1_rho=0.7" / "ouvae_checkpoints"
    folder.mkdir(parents=True)
    (folder / "step_000000000016.pt").touch()
    table = pl.DataFrame({"run_id": ["ab123_00001-m000", "ab123_00001-m001"], "step": [16, 16],
                          "population_id": ["ab123_00001"] * 2})
    assert unrecorded_checkpoints(tmp_path, table) == []
    (folder / "step_000000000024.pt").touch()
    assert unrecorded_checkpoints(tmp_path, table) == ["ab123_00001/step_000000000024.pt"]
    assert unrecorded_checkpoints(tmp_path, None) == []  # no table yet: nothing to compare with


def test_table_checks_catch_duplicates_and_missing_grid_points():
    rows = [{"run_id": f"t{r}{s}", "step": 8 * i, "is_final": i == N_EVALS, "latent_dims": LATENT, "rho": r,
             "seed": s} for r in RHOS for s in SEEDS for i in range(1, N_EVALS + 1)]
    good = pl.DataFrame(rows)
    check_table_exactly_once(good)
    with pytest.raises(AssertionError, match="duplicated"):
        check_table_exactly_once(pl.concat([good, good.head(1)]))
    with pytest.raises(AssertionError):  # one grid point lost its trial
        check_table_exactly_once(good.filter(pl.col("run_id") != "t0.70"))
    with pytest.raises(AssertionError):  # a trial lost a middle evaluation
        check_table_exactly_once(good.filter(~((pl.col("run_id") == "t1.00") & (pl.col("step") == 16))))
    with pytest.raises(AssertionError):  # a grid point finished twice, under two trial ids
        again = good.filter(pl.col("run_id") == "t1.00").with_columns(run_id=pl.lit("t1.00-rerun"))
        check_table_exactly_once(pl.concat([good, again]))


def test_a_ladder_runs_its_rungs_on_the_cluster(cluster, tmp_path):
    """--until-converged on the cluster: rungs of 5 and 10 epochs, every run continued (--continue all) from its
    checkpoint on the shared storage by whichever worker takes it; the table has every evaluation once, one final
    row per grid point at the maximum, and the rung-1 trials continued from where rung 0 ended."""
    storage = tmp_path / "shared"
    argv = [sys.executable, str(SCRIPT), *GRID, *BUDGET, "--address", cluster.address, "--storage", str(storage),
            "--name", "ladder", "--no-report", "--until-converged", "--max-epochs", str(N_EVALS), "--continue", "all"]
    argv[argv.index("--epochs") + 1] = str(N_EVALS // 2)
    cluster.ensure_workers(2)
    log = tmp_path / "ladder.log"
    out = finish(start_sweep(cluster, argv, log), log, timeout_s=4 * SWEEP_TIMEOUT_S)  # two rungs, a loaded machine
    assert "rung 1 (10 epochs) 3-3:" in out and "\n  3-3: " in out  # the rung's fit line, the summary's verdict
    check_table_exactly_once(read_table(storage, "ladder"))
    ea = tune_trials(storage, "ladder/rung-1")  # the rung-1 experiment: <storage>/ray/ladder/rung-1
    assert len(ea) == len(RHOS) and all(t["status"] == "TERMINATED" for t in ea.values())
    first = [t["results"][0] for t in ea.values()]
    assert {r["restored_from_step"] for r in first} == {read_table(storage, "ladder")["step"].min() * N_EVALS // 2}


def test_a_node_start_that_timed_out_inside_ray_is_made_once_more(tmp_path, monkeypatch):
    """`ray start` can miss Ray's fixed 30 s raylet wait on a loaded machine (seen in a clean-clone run with the
    machine at load 16): the harness starts that node again, as an operator would, and no other failure. A fake
    `ray` CLI stands in: its first start fails with Ray's text, the second succeeds."""
    from sweeps import compat
    from sweeps.testing import cluster as cluster_module

    calls = tmp_path / "calls"
    fake = tmp_path / "ray"
    fake.write_text(f"#!/bin/sh\necho start >> {calls}\nif [ $(wc -l < {calls}) -eq 1 ]; then\n"
                    f"  echo 'Exception: {compat.LOCAL_START_TIMEOUT}. This could happen ...'; exit 1\nfi\nexit 0\n")
    fake.chmod(0o755)
    monkeypatch.setattr(cluster_module, "RAY_CLI", str(fake))
    (tmp_path / "mn").mkdir()
    loopback = LoopbackCluster(base=tmp_path / "mn")
    head = loopback.start_head()
    assert calls.read_text().count("start") == 2 and loopback.nodes == [head] and head.alive

    calls.write_text("")
    fake.write_text("#!/bin/sh\necho 'Some other failure'; exit 1\n")
    with pytest.raises(cluster_module.ClusterError, match="Some other failure") as failed:
        loopback.add_workers(1)
    assert not isinstance(failed.value, cluster_module.NodeStartTimedOut)

"""The sweep on a real multi-node Ray cluster, simulated on one machine over loopback (tests/cluster_util.py).

A head with 0 CPUs (it runs no trials, as in clusters/aws.yaml) and two worker nodes with 1 CPU each, every one a
separate `ray start` with its own address (127.0.0.x), temp dir, ports and the cluster's own auth token. The sweep
runs as the user runs it: `python sweeps/critical_rho.py --address ... --storage <shared folder>` in a subprocess.
The shared folder stands in for NFS/S3: trials on both workers write their checkpoints there, the driver
writes the Parquet table there.

What is checked, after (1) one worker node is killed while trials run, and (2) the driver is SIGKILLed mid-sweep and
the sweep resumed with --resume:

* the Parquet table (analysis/schema.py layout, read with Polars) has exactly one row per (trial_id, step), every
  grid point (latent config, rho, seed) has exactly one final row, and every trial has its full set of steps;
* trials interrupted by the failure continued from their checkpoints: Tune's own per-trial record (result.json
  in the experiment folder) splits into runs of the trainable (``iterations_since_restore`` back to 1), and no
  run after the first starts again at the first evaluation's step; for the node kill also Tune's trial state:
  ``num_failures`` > 0 for exactly the trials that were on that node;
* rows came from both worker nodes and none from the head: Tune stamps each result with the ``node_ip`` of the
  node that produced it; joined to the table on (trial_id, step). The results schema itself has no node column.

The driver is killed at the worst moment the test can observe (Tune has just deleted, per
CheckpointConfig(num_to_keep), a checkpoint that its last snapshot on storage still names; see
dangling_checkpoints), or 2 s after it is half way if that moment never comes.

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
from ray.tune.utils.serialization import TuneFunctionDecoder  # imported here: polls must take milliseconds

from cluster_util import LoopbackCluster

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
GRID = ["--grid", "--latent-dims", LATENT, "--rhos", *map(str, RHOS), "--seeds", *map(str, SEEDS)]
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
    assert df.select("trial_id", "step").is_unique().all(), "a (trial_id, step) row is duplicated"
    final = df.filter(pl.col("is_final"))
    points = sorted(zip(final["latent_dims"], final["rho"], final["seed"]))
    assert points == sorted((LATENT, r, s) for r in RHOS for s in SEEDS), points
    assert final["trial_id"].n_unique() == final.height == df["trial_id"].n_unique()
    steps = {tid: sorted(g["step"]) for (tid,), g in df.group_by("trial_id")}
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


def check_no_restart_from_scratch(trials: dict[str, dict], first_step: int) -> list[str]:
    """No trial ran again from scratch: every run of a trial after its first starts at a later step than
    `first_step` (the first evaluation's step) and at most one evaluation past what the trial had already
    reported. Step-based, so it holds whoever keeps the checkpoints (Tune or the trainable). Returns the ids of
    trials with a run that continued from a checkpoint (after a driver crash Tune's record may keep only such a
    run, so that can be a trial's first recorded run)."""
    restored = []
    for tid, t in trials.items():
        parts = runs(t["results"])
        for i, run in enumerate(parts[1:], start=1):
            assert run[0]["step"] > first_step, f"trial {tid} restarted from scratch: {brief(t['results'])}"
            reached = max(r["step"] for part in parts[:i] for r in part)
            assert run[0]["step"] <= reached + first_step, f"trial {tid} skipped evaluations: {brief(t['results'])}"
        if any(run[0]["step"] > first_step for run in parts):
            restored.append(tid)
    return restored


def dangling_checkpoints(experiment: Path) -> list[str] | None:
    """Trials that Tune's last *persisted* experiment snapshot would restore from a checkpoint that no longer
    exists (None if the snapshot cannot be read right now). Tune deletes checkpoints beyond
    CheckpointConfig(num_to_keep) as soon as newer ones are registered, while the snapshot naming them is written
    and copied to storage asynchronously: a driver dying in between leaves a snapshot that --resume cannot restore.

    Reads Tune's experiment_state JSON: each trial's status and folder, and the checkpoint it would restore from
    (its checkpoint manager, which Tune stores pickled; this test's own files, so unpickling is safe), or the last
    result's checkpoint_dir_name when there is no manager."""
    files = sorted(experiment.glob("experiment_state-*.json"))
    if not files:
        return []
    try:
        state = json.loads(files[-1].read_text())
        out = []
        for trial_json, meta_json in state["trial_data"]:
            trial = json.loads(trial_json)
            meta = json.loads(meta_json, cls=TuneFunctionDecoder, allow_cloudpickle=True)
            if trial["status"] == "TERMINATED":
                continue  # finished trials are not restored
            manager = meta.get("checkpoint_manager")
            latest = getattr(manager, "latest_checkpoint_result", None)
            if latest is not None:
                path = Path(latest.checkpoint.path)
            else:
                name = (meta.get("last_result") or {}).get("checkpoint_dir_name")
                if not name:
                    continue
                path = experiment / trial["relative_logdir"] / name
            if not path.exists():
                out.append(f"{trial['trial_id']}/{path.name}")
        return out
    except (OSError, ValueError, KeyError, TypeError, AttributeError):  # being replaced, or another layout
        return None


def node_of_rows(df: pl.DataFrame, trials: dict[str, dict]) -> pl.DataFrame:
    """The table's rows joined to the node_ip Tune recorded for the same (trial_id, step)."""
    seen = pl.DataFrame(
        [{"trial_id": tid, "step": r["step"], "node_ip": r["node_ip"]} for tid, t in trials.items()
         for r in t["results"]],
        schema={"trial_id": pl.String, "step": pl.Int64, "node_ip": pl.String})
    # A step reported twice (re-reported after a restore) was produced on the node of its last report.
    seen = seen.unique(subset=["trial_id", "step"], keep="last", maintain_order=True)
    return df.select("trial_id", "step", "is_final").join(seen, on=["trial_id", "step"], how="left")


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
    assert "6 trials finished, 0 failed" in out, out[-4000:]

    df = read_table(storage, name)
    check_table_exactly_once(df)

    trials = tune_trials(storage, name)
    assert set(trials) == set(df["trial_id"].unique()), "Tune's trials and the table's trials differ"
    failed = {tid for tid, t in trials.items() if t["num_failures"] > 0}
    assert killed_trial in failed, (killed_trial, failed)
    restored = check_no_restart_from_scratch(trials, first_step=int(df["step"].min()))
    assert set(restored) == failed  # every failed trial was restored from a checkpoint, no other one was
    for tid in failed:
        before, *after = runs(trials[tid]["results"])
        assert {r["node_ip"] for r in before} == {victim.ip}
        assert {r["node_ip"] for rr in after for r in rr} == {survivor.ip}  # finished on the surviving node

    rows = node_of_rows(df, trials)
    assert rows["node_ip"].null_count() == 0, "a table row has no matching Tune result"
    ips = set(rows["node_ip"])
    assert ips == {victim.ip, survivor.ip}, ips  # both workers wrote rows; the 0-CPU head ran nothing
    assert "retry" in out  # the sweep's progress line reported the retry


@pytest.mark.xfail(reason="known bug (open, issue 5): with CheckpointConfig(num_to_keep=2) Tune deletes a checkpoint "
                   "its last persisted snapshot still names; a driver killed in that window makes --resume fail "
                   "the trial ('Could not recover from checkpoint as it does not exist on storage anymore', "
                   "ray#27790). Fix: trainable-managed checkpoints; see the closing note.", strict=False)
def test_driver_killed_mid_sweep_then_resumed_on_the_cluster(cluster, tmp_path):
    cluster.ensure_workers(2)
    worker_ips = {n.ip for n in cluster.workers}
    storage, name = tmp_path / "shared", "driver-kill"
    argv = sweep_argv(cluster, storage, name, "--quiet")
    log = tmp_path / "first.log"
    proc = start_sweep(cluster, argv, log)
    part = storage / "parquet" / f"sweep_id={name}"

    # SIGKILL the driver mid-sweep: once some trials are done and another is half way ("armed"), at the worst
    # moment observable -- Tune has just deleted a checkpoint that its last persisted snapshot still names -- or,
    # if no such moment comes within 2 s (a sweep that keeps every checkpoint), right away.
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
                open_rows = df.filter(~pl.col("trial_id").is_in(df.filter(pl.col("is_final"))["trial_id"].implode()))
                counts = open_rows.group_by("trial_id").len()
                if 1 <= n_final <= 3 and counts.height and counts["len"].max() >= 3:
                    armed_at = time.monotonic()
        dangling = dangling_checkpoints(experiment) if armed_at is not None else None
        if armed_at is not None and (dangling or time.monotonic() - armed_at > 2.0):
            how = f"while its snapshot named deleted checkpoints {dangling}" if dangling else "2 s after half way"
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
            df = read_partition(part)
            before = {tid: set(g["step"]) for (tid,), g in df.group_by("trial_id")}
        time.sleep(0.002 if armed_at is not None else 0.02)
    for _ in range(50):  # what the resume has to cope with (None: the snapshot could not be read)
        worst_case = dangling_checkpoints(experiment)
        if worst_case is not None:
            break
        time.sleep(0.02)
    finals_before = pl.read_parquet(part / "*.parquet").filter(pl.col("is_final")).height
    assert finals_before < len(RHOS) * len(SEEDS), "the driver was killed too late to test a mid-sweep crash"

    log2 = tmp_path / "resume.log"
    out = finish(start_sweep(cluster, [*argv, "--resume"], log2), log2)
    assert "6 trials finished, 0 failed" in out, (
        f"the resumed sweep did not finish every trial. The driver was killed {how}; after it died, the snapshot "
        f"on storage named deleted checkpoints: {worst_case}\n{out[-3000:]}")

    df = read_table(storage, name)
    check_table_exactly_once(df)
    # Nothing written before the crash was lost (files of trials Tune re-created under new ids are moved aside).
    superseded_dir = storage / "parquet.superseded" / f"sweep_id={name}"
    superseded = {p.stem for p in superseded_dir.glob("*.parquet")} if superseded_dir.is_dir() else set()
    after = {tid: set(g["step"]) for (tid,), g in df.group_by("trial_id")}
    for tid, steps in before.items():
        if tid not in superseded:
            assert steps <= after[tid], (tid, steps, after.get(tid))

    trials = tune_trials(storage, name)
    assert set(trials) == set(df["trial_id"].unique())
    restored = check_no_restart_from_scratch(trials, first_step=int(df["step"].min()))
    # At least the half-way trial was resumed from its checkpoint by --resume.
    assert restored, {tid: brief(t["results"]) for tid, t in trials.items()}
    for tid in restored:
        assert before.get(tid), f"trial {tid} was restored but had no rows before the crash"

    rows = node_of_rows(df, trials)
    ips = set(rows["node_ip"].drop_nulls())
    assert ips <= worker_ips and len(ips) == 2, (ips, worker_ips)  # rows from both workers, none from the head


# ----- the checks themselves fail on the failures they look for (no cluster needed) --------------------------------
def _result(it: int, since: int, ip: str = "127.0.0.2") -> dict:
    return {"training_iteration": it, "iterations_since_restore": since, "step": 8 * it, "node_ip": ip}


def test_restart_checks_catch_a_trial_that_started_again_from_scratch():
    continued = {"t": {"results": [_result(1, 1), _result(2, 2), _result(3, 1), _result(4, 2)]}}
    assert check_no_restart_from_scratch(continued, first_step=8) == ["t"]
    assert check_no_restart_from_scratch({"t": {"results": [_result(1, 1), _result(2, 2)]}}, first_step=8) == []
    # After a driver crash Tune may keep only the resumed run: it still counts as continued from a checkpoint.
    assert check_no_restart_from_scratch({"t": {"results": [_result(3, 1), _result(4, 2)]}}, first_step=8) == ["t"]
    scratch = {"t": {"results": [_result(1, 1), _result(2, 2), _result(1, 1), _result(2, 2)]}}
    with pytest.raises(AssertionError, match="restarted from scratch"):
        check_no_restart_from_scratch(scratch, first_step=8)
    skipped = {"t": {"results": [_result(1, 1), _result(2, 2), _result(5, 1)]}}  # resumed past its last result
    with pytest.raises(AssertionError, match="skipped"):
        check_no_restart_from_scratch(skipped, first_step=8)


def test_dangling_checkpoint_probe_reads_tunes_snapshot(tmp_path):
    def snapshot(status: str, ckpt: str | None) -> None:
        trial = json.dumps({"trial_id": "a_00000", "status": status, "relative_logdir": "train_a_00000"})
        meta = json.dumps({"last_result": {"checkpoint_dir_name": ckpt} if ckpt else {}})
        (tmp_path / "experiment_state-2026-01-01_00-00-00.json").write_text(json.dumps({"trial_data": [[trial, meta]]}))

    assert dangling_checkpoints(tmp_path) == []  # no snapshot yet
    (tmp_path / "train_a_00000" / "checkpoint_000003").mkdir(parents=True)
    snapshot("RUNNING", "checkpoint_000003")
    assert dangling_checkpoints(tmp_path) == []
    snapshot("RUNNING", "checkpoint_000002")  # deleted by num_to_keep, still named by the snapshot
    assert dangling_checkpoints(tmp_path) == ["a_00000/checkpoint_000002"]
    snapshot("TERMINATED", "checkpoint_000002")  # finished trials are not restored
    assert dangling_checkpoints(tmp_path) == []
    (tmp_path / "experiment_state-2026-01-01_00-00-00.json").write_text("{ half written")
    assert dangling_checkpoints(tmp_path) is None


def test_table_checks_catch_duplicates_and_missing_grid_points():
    rows = [{"trial_id": f"t{r}{s}", "step": 8 * i, "is_final": i == N_EVALS, "latent_dims": LATENT, "rho": r,
             "seed": s} for r in RHOS for s in SEEDS for i in range(1, N_EVALS + 1)]
    good = pl.DataFrame(rows)
    check_table_exactly_once(good)
    with pytest.raises(AssertionError, match="duplicated"):
        check_table_exactly_once(pl.concat([good, good.head(1)]))
    with pytest.raises(AssertionError):  # one grid point lost its trial
        check_table_exactly_once(good.filter(pl.col("trial_id") != "t0.70"))
    with pytest.raises(AssertionError):  # a trial lost a middle evaluation
        check_table_exactly_once(good.filter(~((pl.col("trial_id") == "t1.00") & (pl.col("step") == 16))))
    with pytest.raises(AssertionError):  # a grid point finished twice, under two trial ids
        again = good.filter(pl.col("trial_id") == "t1.00").with_columns(trial_id=pl.lit("t1.00-rerun"))
        check_table_exactly_once(pl.concat([good, again]))

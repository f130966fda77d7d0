"""Sweeps on real S3: a loopback S3 server (moto, tests/conftest.py ``s3_server``) stands in for AWS.

What a user of ``--storage s3://bucket/prefix`` relies on: the Parquet table, every trial's checkpoints and Tune's
experiment state all land in the bucket; a driver killed mid-sweep is resumed from there without losing or
duplicating a row; the table reads straight from S3 with Polars; a bucket that does not exist or refuses the
credentials is a one-line error before Ray starts.

The sweeps run as the user runs them, as subprocesses with the S3 environment (credentials and AWS_ENDPOINT_URL):
each starts its own local Ray, whose workers inherit that environment (the tests' session Ray would not have it),
or joins a loopback head through Ray Client (``ray://``), whose nodes were started with it. Budgets are tiny
(tests/test_sweeps.py TINY).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import polars as pl
import pytest

from sweeps import rho_sweep
from sweeps.compat import DRIVER_ENV
from sweeps.testing import HANG_GUARD_S
from sweeps.testing.cluster import LoopbackCluster, kill_all, session_pids
from test_sweeps import TINY

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = str(ROOT / "sweeps" / "critical_rho.py")
GRID = ["--grid", "--latent-dims", "3-3", "--rhos", "0.8", "1.0", "--n-seeds", "2"]


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    """This process's environment for S3 (in-process checks), and the one for sweep subprocesses."""
    s3_server.use(monkeypatch)
    for key, value in DRIVER_ENV.items():
        monkeypatch.setenv(key, value)
    return {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}


@pytest.fixture
def sweeps_run():
    """Starts sweeps in sessions of their own; at the end of the test every process of those sessions -- the driver
    and the local Ray it started -- is killed (a SIGKILLed driver leaves Ray's agents behind)."""
    started: list[subprocess.Popen] = []

    def sweep(env: dict[str, str], storage: str, name: str, *extra: str, cwd: Path) -> subprocess.Popen:
        # --num-cpus sizes the local Ray a sweep starts; one that joins a cluster (--address) refuses it
        local = [] if "--address" in extra else ["--num-cpus", "2"]
        argv = [sys.executable, SCRIPT, *GRID, *TINY, "--storage", storage, "--name", name, *local, *extra]
        started.append(subprocess.Popen(argv, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        text=True, start_new_session=True))
        return started[-1]

    yield sweep
    kill_all(lambda: session_pids({p.pid for p in started}), "the test's sweeps")


def finish(proc: subprocess.Popen, timeout_s: float = 180) -> str:
    try:
        out, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"the sweep did not finish within {timeout_s} s:\n{proc.communicate()[0][-4000:]}")
    assert proc.returncode == 0, out[-4000:]
    return out


def keys(s3_server, bucket: str, prefix: str) -> list[str]:
    import boto3

    client = boto3.client("s3", endpoint_url=s3_server.endpoint, region_name=s3_server.env["AWS_DEFAULT_REGION"],
                          aws_access_key_id="testing", aws_secret_access_key="testing")
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    # Objects, not the empty "folder" markers PyArrow's create_dir leaves on S3.
    return [obj["Key"] for page in pages for obj in page.get("Contents", []) if not obj["Key"].endswith("/")]


def read_table(s3_server, table: str) -> pl.DataFrame:
    return pl.read_parquet(f"{table}/*.parquet", storage_options=s3_server.storage_options)


def read_while_written(s3_server, table: str) -> pl.DataFrame | None:
    """The table while the driver rewrites its files (None when a file changed between listing and reading)."""
    try:
        return read_table(s3_server, table)
    except (OSError, pl.exceptions.PolarsError):
        return None


def check_exactly_once(df: pl.DataFrame, evaluations: int) -> None:
    assert df.select("run_id", "step").is_unique().all(), "a (run_id, step) row is duplicated"
    final = df.filter(pl.col("is_final"))
    assert sorted(zip(final["rho"], final["seed"])) == [(r, s) for r in (0.8, 1.0) for s in (0, 1)]
    assert df.group_by("run_id").len()["len"].to_list() == [evaluations] * 4


# ----- bad storage: one line, before Ray ----------------------------------------------------------------------------
def error_lines(stderr: str) -> list[str]:
    """The script's own lines on stderr (the in-process S3 server may log requests there too)."""
    return [line for line in stderr.splitlines() if line.startswith("error")]


def test_missing_bucket_is_one_line_before_ray_starts(s3_env, capsys):
    assert rho_sweep.main([*GRID, *TINY, "--storage", "s3://no-such-bucket-ouvae/sweeps"]) == 2
    captured = capsys.readouterr()
    assert error_lines(captured.err) == [
        "error: --storage s3://no-such-bucket-ouvae/sweeps: cannot write there: the bucket 'no-such-bucket-ouvae' does "
        "not exist; create it (aws s3 mb s3://no-such-bucket-ouvae) or fix the name"]
    assert captured.out == ""  # not even the plan: nothing started


def test_bucket_that_denies_access_is_one_line_before_ray_starts(s3_server, s3_env, capsys):
    bucket = s3_server.make_bucket()

    def enforce_auth(count: str) -> None:  # moto's server API: after `count` requests, check credentials
        request = urllib.request.Request(f"{s3_server.endpoint}/moto-api/reset-auth", data=count.encode(),
                                         headers={"Content-Type": "text/plain"}, method="POST")
        urllib.request.urlopen(request, timeout=10).close()

    enforce_auth("0")  # the dummy credentials belong to no user: every request is denied
    try:
        code = rho_sweep.main([*GRID, *TINY, "--storage", f"s3://{bucket}/sweeps"])
    finally:
        enforce_auth("inf")
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    [error] = error_lines(captured.err)
    assert error.startswith(f"error: --storage s3://{bucket}/sweeps: cannot write there: access to the bucket "
                            f"'{bucket}' is denied with the credentials this machine has")
    assert keys(s3_server, bucket, "") == []


# ----- sweeps on S3 ------------------------------------------------------------------------------------------------
def test_sweep_on_s3_keeps_table_checkpoints_and_tune_state_in_the_bucket(s3_server, s3_env, sweeps_run, tmp_path):
    bucket = s3_server.make_bucket()
    storage = f"s3://{bucket}/ouvae"
    out = finish(sweeps_run(s3_env, storage, "s3", "--epochs", "2", "--quiet", cwd=tmp_path))
    assert "4 runs finished, 0 failed" in out
    assert f"results table: {storage}/parquet/sweep_id=s3/" in out
    assert f"report: not written on remote storage; read the table with python -m analysis {storage}/parquet " \
           f"--sweep s3" in out

    stored = keys(s3_server, bucket, "ouvae/")
    tables = [k for k in stored if k.startswith("ouvae/parquet/sweep_id=s3/")]
    checkpoints = [k for k in stored if "/ouvae_checkpoints/" in k]
    # two population trials (the runs at rho 0.8, those at rho 1): a table file and a final checkpoint each
    assert len(tables) == 2 and all(k.endswith(".parquet") for k in tables)
    assert len(checkpoints) == 2 and all(k.endswith("step_000000000004.pt") for k in checkpoints)
    assert "ouvae/ray/s3/ouvae_sweep.json" in stored and "ouvae/ray/s3/tuner.pkl" in stored
    assert any(k.startswith("ouvae/ray/s3/experiment_state-") for k in stored)
    assert not [k for k in stored if ".staging" in k or ".ouvae-write-check" in k]  # no leftovers
    assert not list(tmp_path.iterdir())  # nothing on the local disk where the sweep ran

    # The whole table, partitioned by sweep, straight from S3.
    df = pl.scan_parquet(f"{storage}/parquet/**/*.parquet", hive_partitioning=True,
                         storage_options=s3_server.storage_options).collect()
    assert set(df["sweep_id"]) == {"s3"}
    check_exactly_once(df, evaluations=2)


def test_driver_killed_mid_sweep_on_s3_then_resumed_loses_and_duplicates_nothing(s3_server, s3_env, sweeps_run,
                                                                                 tmp_path):
    bucket = s3_server.make_bucket()
    storage, table = f"s3://{bucket}/ouvae", f"s3://{bucket}/ouvae/parquet/sweep_id=crash"
    first = sweeps_run(s3_env, storage, "crash", "--epochs", "4", "--max-concurrent", "1", "--quiet", "--no-report",
                       cwd=tmp_path)
    deadline, before = time.monotonic() + HANG_GUARD_S, None
    while before is None:
        assert first.poll() is None, first.communicate()[0][-4000:]
        assert time.monotonic() < deadline, "the sweep wrote too few rows in time"
        if len(keys(s3_server, bucket, "ouvae/parquet/sweep_id=crash/")) >= 2:
            df = read_while_written(s3_server, table)
            if df is not None and df.height >= 6:  # trial 1 done (4 rows), trial 2 half way
                first.send_signal(signal.SIGKILL)
                before = {tid: set(g["step"]) for (tid,), g in df.group_by("run_id")}
        time.sleep(0.2)
    first.communicate(timeout=30)
    assert read_table(s3_server, table).filter(pl.col("is_final")).height < 4, "killed too late"

    out = finish(sweeps_run(s3_env, storage, "crash", "--resume", "--no-report", cwd=tmp_path))
    assert "4 runs finished, 0 failed" in out
    df = read_table(s3_server, table)
    check_exactly_once(df, evaluations=4)
    after = {tid: set(g["step"]) for (tid,), g in df.group_by("run_id")}
    superseded = {Path(k).stem for k in keys(s3_server, bucket, "ouvae/parquet.superseded/")}
    for tid, steps in before.items():  # nothing written before the crash was lost
        assert tid in superseded or steps <= after[tid]


# ----- Ray Client ------------------------------------------------------------------------------------------------
def test_sweep_through_ray_client_runs_on_the_cluster_and_writes_to_s3(s3_server, s3_env, sweeps_run, tmp_path):
    """`--address ray://head:port`: this machine only submits; Tune's loop and our callbacks run on the head (a
    loopback head with 2 CPUs and the S3 environment, sweeps/testing/cluster.py), the results land in the bucket."""
    bucket = s3_server.make_bucket()
    storage = f"s3://{bucket}/ouvae"
    with LoopbackCluster(head_cpus=2) as cluster:
        cluster.start_head()
        proc = sweeps_run(cluster.env("driver"), storage, "client", "--epochs", "2", "--address",
                          cluster.client_address, "--no-report", cwd=tmp_path)
        out = finish(proc)
    assert f"Ray: joined Ray cluster at {cluster.client_address} (2 CPUs" in out
    assert "(TunerInternal pid=" in out  # the progress lines come from Tune's loop on the head
    assert "Configuration for experiment" not in out  # the driver's Tune settings reached the head
    assert "4 runs finished, 0 failed" in out
    check_exactly_once(read_table(s3_server, f"{storage}/parquet/sweep_id=client"), evaluations=2)


def test_ray_client_with_local_storage_is_one_line_before_ray_starts(tmp_path, capsys, monkeypatch):
    for key, value in DRIVER_ENV.items():
        monkeypatch.setenv(key, value)
    assert rho_sweep.main([*GRID, "--address", "ray://127.0.0.1:1", "--storage", str(tmp_path)]) == 2
    captured = capsys.readouterr()
    assert error_lines(captured.err) == [
        f"error: --address ray://127.0.0.1:1: Ray Client runs the sweep's driver on the head node, which would write "
        f"to its own {tmp_path}; give --storage an object store (s3://bucket/prefix), or run this script on a node "
        f"of the cluster with --address host:6379"]
    assert captured.out == "" and not list(tmp_path.iterdir())

"""Storage faults during a table write and during ``--resume``'s reads (docs/operations.md, "Guarantees"): the disk
fills, S3 answers 503 or drops the connection, the storage is gone for a while. The real sink
(sweeps.results.ParquetSink) is driven as Tune drives it; the fault is a window the test opens and closes
(sweeps/testing/faults.py for writes; for S3 reads a proxy in front of the test server that fails them,
sweeps/testing/s3_proxy.py), so "a minute" is the steps the test takes, with no sleeps. Each ends with the sweep
going on and the held rows written once the fault clears -- every evaluation in the table exactly once, nothing
written before the fault changed -- or with one line that says what happened and that running the same command
again finishes it.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

import sweeps.results
from sweeps.errors import ResultsNotWritten, SweepError
from sweeps.results import ParquetSink, staging_dir
from sweeps.storage import resolve
from sweeps.testing.faults import FaultWindow, connection_dropped, disk_full, s3_error
from sweeps.testing.s3_proxy import S3FaultProxy

SWEEP = "faults"
MEMBERS = 2


def result(step: int, *, final: bool = False) -> dict[str, Any]:
    return {"step": step, "is_final": final, "members": [
        {"member": m, "dataset": "digits", "latent_dims": "3-3", "n_layers": 2, "rho": 0.9, "seed": m,
         "step": step, "is_final": final, "top_kl": 0.1 * step, "top_active_units": 2} for m in range(MEMBERS)]}


def trial(name: str) -> SimpleNamespace:
    return SimpleNamespace(trial_id=name, config={})


def file_bytes(root: str, trial_id: str) -> bytes | None:
    fs, path = resolve(sweeps.results.trial_file(root, SWEEP, trial_id))
    if fs.get_file_info(path).type != pafs.FileType.File:
        return None
    with fs.open_input_stream(path) as f:
        return f.read()


def table_keys(root: str) -> list[tuple[str, int]]:
    """Every (run, step) in the table, with repeats (exactly once means no repeats and nothing missing)."""
    keys = []
    for trial_id in sweeps.results.list_trial_files(root, SWEEP):
        keys += [(r["run_id"], r["step"]) for r in sweeps.results.read_trial_rows(root, SWEEP, trial_id)]
    return sorted(keys)


def expected_keys(trials_steps: dict[str, int]) -> list[tuple[str, int]]:
    return sorted((sweeps.results.member_run_id(t, m), s) for t, n in trials_steps.items()
                  for s in range(n) for m in range(MEMBERS))


def outage_then_recovery(root: str, error: Callable[[], BaseException], monkeypatch, capsys) -> None:
    """Trial a writes 2 evaluations; the storage fails while a reports 2 more and b reports 3 and completes, over
    several driver steps; the storage comes back; the next step writes every held row."""
    window = FaultWindow(error)
    monkeypatch.setattr(sweeps.results.pq, "write_table", window.wrap(pq.write_table))
    sink = ParquetSink(root, SWEEP, flush_every_s=0.0, retry_every_s=0.0, coalesce_rows=1)
    a, b = trial("a"), trial("b")
    trials = [a, b]
    sink.setup()
    for step in range(2):
        sink.on_trial_result(step, trials, a, result(step))
    before = file_bytes(root, "a")
    assert before is not None

    window.open()  # the disk is full / S3 answers errors / the storage is gone
    for step in range(2, 4):
        sink.on_trial_result(step, trials, a, result(step))
        sink.on_step_end(step, trials)
    for step in range(3):
        sink.on_trial_result(step, trials, b, result(step, final=step == 2))
        sink.on_step_end(step, trials)
    sink.on_trial_complete(3, trials, b)  # a trial may end during the outage: its rows stay held
    assert window.injected >= 5
    assert file_bytes(root, "a") == before and file_bytes(root, "b") is None  # nothing written is touched
    if "://" not in root:
        assert not list(Path(staging_dir(root)).glob("*.tmp"))  # partial temp files removed

    window.close()  # the storage is back
    sink.on_step_end(4, trials)
    assert table_keys(root) == expected_keys({"a": 4, "b": 3})
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("[results]")]
    assert len(lines) == 2, lines
    assert "cannot write the results table" in lines[0] and "the sweep goes on" in lines[0]
    assert "writable again" in lines[1]


def test_disk_full_during_a_table_write_holds_the_rows_until_it_clears(tmp_path, monkeypatch, capsys):
    outage_then_recovery(str(tmp_path / "parquet"), disk_full, monkeypatch, capsys)


@pytest.mark.parametrize("error", [lambda: s3_error(503), lambda: s3_error(500), connection_dropped],
                         ids=["503-throttled", "500", "connection-dropped"])
def test_s3_errors_during_a_flush_hold_the_rows_until_they_clear(s3_server, monkeypatch, capsys, error):
    s3_server.use(monkeypatch)
    outage_then_recovery(f"s3://{s3_server.make_bucket('faults')}/store/parquet", error, monkeypatch, capsys)


def test_a_fault_outlasting_the_experiment_is_one_line_and_loses_nothing_written(tmp_path, monkeypatch):
    root = str(tmp_path / "parquet")
    window = FaultWindow(disk_full)
    monkeypatch.setattr(sweeps.results.pq, "write_table", window.wrap(pq.write_table))
    sink = ParquetSink(root, SWEEP, verbose=False, flush_every_s=0.0, retry_every_s=0.01, outage_wait_s=0.05,
                       coalesce_rows=1)
    a = trial("a")
    sink.on_trial_result(0, [a], a, result(0))
    before = file_bytes(root, "a")
    window.open()
    sink.on_trial_result(1, [a], a, result(1, final=True))
    with pytest.raises(ResultsNotWritten) as err:
        sink.on_experiment_end([a])
    message = str(err.value)
    assert "\n" not in message and "No space left on device" in message and "trial(s) a" in message
    assert file_bytes(root, "a") == before


def test_a_sweep_script_ends_on_results_not_written_with_one_line_and_exit_1(capsys):
    """What the sink raises when the storage outlasts the experiment reaches the user as one line, no traceback."""
    import argparse

    from sweeps import cli

    def run(cmd):
        raise ResultsNotWritten("the results table /x could not be written for 600 s (disk full): 3 row(s) of "
                                "trial(s) t1 exist only in this driver's memory; the table holds every row written before")

    assert cli.main(run, argparse.ArgumentParser(), []) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: the results table /x could not be written"), err


# ----- S3 errors while a resumed sweep reads its stored state ---------------------------------------------------------
def reads(method: str, path: str) -> bool:
    return method in ("GET", "HEAD")


@pytest.fixture
def failing_reads(s3_server, monkeypatch):
    """Factory: an S3 proxy in front of the test server whose reads fail with `fault` while it is open; this
    process's S3 clients go through it."""
    proxies = []

    def start(fault: str) -> S3FaultProxy:
        proxies.append(S3FaultProxy(s3_server.endpoint, fault, match=reads).__enter__())
        s3_server.use(monkeypatch)
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxies[-1].endpoint)
        return proxies[-1]

    yield start
    for proxy in proxies:
        proxy.__exit__(None, None, None)


def test_s3_errors_while_a_resumed_sweep_reads_its_table_hold_the_rows_until_they_clear(s3_server, failing_reads,
                                                                                        capsys):
    """After --resume the sink first reads the table: to set aside the file of a trial created after the last
    snapshot (z), and to keep a continuing trial's stored rows (a). S3 answering 503 to those reads holds the new
    rows; nothing stored is touched; once S3 answers, z is set aside and a has its old and new rows, once each."""
    proxy = failing_reads("503")
    root = f"s3://{s3_server.make_bucket('resume')}/store/parquet"
    a, z, b = trial("a"), trial("z"), trial("b")
    first = ParquetSink(root, SWEEP, flush_every_s=0.0, coalesce_rows=1)  # the session before the crash
    for step in range(2):
        first.on_trial_result(step, [a, z], a, result(step))
    first.on_trial_result(1, [a, z], z, result(0))
    before = file_bytes(root, "a")

    sink = ParquetSink(root, SWEEP, flush_every_s=0.0, retry_every_s=3600.0, coalesce_rows=1)  # after --resume
    proxy.open()
    sink.on_step_begin(0, [a, b])  # Tune restored a; z's point re-runs as b
    for step in (2, 3):
        sink.on_trial_result(step, [a, b], a, result(step))  # a continues from its checkpoint
        sink.on_step_end(step, [a, b])
    assert proxy.injected > 0
    proxy.close()
    assert file_bytes(root, "a") == before and file_bytes(root, "z") is not None  # nothing stored was touched

    sink.retry_every_s = 0.0  # the next retry is due
    sink.on_step_begin(4, [a, b])
    sink.on_trial_result(4, [a, b], b, result(0, final=True))
    sink.on_step_end(4, [a, b])
    assert table_keys(root) == expected_keys({"a": 4, "b": 1})  # z set aside, a's old rows kept, all once
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("[results]")]
    assert "cannot write the results table" in lines[0] and "HTTP status 503" in lines[0], lines
    assert "re-queued" in lines[1] and "writable again" in lines[-1], lines


def test_s3_errors_while_resume_reads_the_sweep_state_are_one_line_and_change_nothing(s3_server, failing_reads,
                                                                                      tmp_path, capsys):
    """--resume reads the sweep's saved options and Tune's state before anything starts: a dropped connection
    there is one line that says the same command finishes it, the bucket is unchanged, and it does."""
    from sweeps import resume, rho_sweep
    from sweeps.cli import CommandLine
    from sweeps.storage import sweep_paths, write_json

    proxy = failing_reads("drop")
    proxy.match = lambda method, path: reads(method, path) and "write-check" not in path  # the stored state's reads
    bucket = s3_server.make_bucket("state")
    storage = f"s3://{bucket}/store"
    paths = sweep_paths(storage, "saved")
    started = CommandLine.parse(rho_sweep.build_parser(), ["--storage", storage, "--n-seeds", "2"])
    resume.save_spec(paths, rho_sweep.SCRIPT, started.args)
    write_json(f"{paths.experiment}/tuner.pkl", {})  # what Tune's can_restore looks for
    stored = sorted(o.path for o in resolve(storage)[0].get_file_info(
        pafs.FileSelector(resolve(storage)[1], recursive=True)))

    proxy.open()
    code = rho_sweep.main(["--resume", "--storage", storage])
    proxy.close()
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert "could not read the sweep's saved state" in err[0] and "NETWORK_CONNECTION" in err[0], err
    assert "run the same --resume command again" in err[0]
    assert sorted(o.path for o in resolve(storage)[0].get_file_info(
        pafs.FileSelector(resolve(storage)[1], recursive=True))) == stored

    cmd = CommandLine.parse(rho_sweep.build_parser(), ["--resume", "--storage", storage])
    args, name, _ = resume.open_sweep(cmd, rho_sweep.SCRIPT, "critical-rho")
    assert name == "saved" and args.n_seeds == 2


def test_a_storage_that_does_not_answer_is_not_reported_as_a_wrong_url_or_credentials(monkeypatch):
    from sweeps.storage import check_storage

    def storage_failing_with(error: OSError) -> None:
        def check_writable(uri: str) -> None:
            raise error
        monkeypatch.setattr("sweeps.storage.check_writable", check_writable)

    for error in (s3_error(503), s3_error(500), connection_dropped()):
        storage_failing_with(error)
        with pytest.raises(SweepError) as err:
            check_storage("s3://bucket/prefix")
        assert "did not answer" in str(err.value) and "run the same command again" in str(err.value)
        assert "credentials" not in str(err.value)
    storage_failing_with(OSError("When creating key 'x': AWS Error NO_SUCH_BUCKET during PutObject operation"))
    with pytest.raises(SweepError, match="does not exist; create it"):
        check_storage("s3://bucket/prefix")

"""Storage faults during a table write (docs/operations.md, "Guarantees"): the disk fills, S3 answers 503 or drops
the connection, the storage is gone for a while. The real sink (sweeps.results.ParquetSink) is driven as Tune
drives it; the fault is a window the test opens and closes (sweeps/testing/faults.py), so "a minute" is the steps
the test takes, with no sleeps. Each ends with the sweep going on and the held rows written once the fault
clears -- every evaluation in the table exactly once, nothing written before the fault changed -- or, when the
fault outlasts the experiment, with one line.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

import sweeps.results
from sweeps.errors import ResultsNotWritten
from sweeps.results import ParquetSink, staging_dir
from sweeps.storage import resolve
from sweeps.testing.faults import FaultWindow, connection_dropped, disk_full, s3_error

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

"""A table read while it is written: every read is a consistent snapshot (docs/operations.md, "Reading a table
while it is written").

The real sink (sweeps.results.ParquetSink) upserts and coalesces rows of three population trials in a tight loop,
on a local folder and on S3 (the loopback moto server of tests/conftest.py), while the analysis's reader
(analysis.io.load_results, what every analysis entry point calls) reads the table 200 times. Every row carries the
writer's version (``wall_time_s``), and the test records the exact rows of every file version the sink wrote.
A read is *torn* when one file's rows are a set no single written version had (half old, half new; or a footer of
one version paired with another's pages, which fails the read). The tests ask for 0 failures and 0 torn reads, and
check the writer really wrote during the reads.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from types import SimpleNamespace
from typing import Any

import pytest

import sweeps.results
from analysis.io import FILE_COL, load_results
from analysis.testing.synthetic import make_synthetic_results
from sweeps.results import ParquetSink

SWEEP = "live"
TRIALS = ("trial_a", "trial_b", "trial_c")
MEMBERS = 3
STEPS = 12  # steps cycle 0..STEPS-1: every version upserts rows that are already there
READS = 200
TIME_LIMIT_S = 120.0  # a bound, not a sync: the reads normally take a few seconds


def member_row(member: int, step: int, version: int) -> dict[str, Any]:
    return {"member": member, "dataset": "digits", "latent_dims": "3-3", "n_layers": 2, "rho": 0.8 + 0.1 * member,
            "seed": member, "step": step, "is_final": False, "top_kl": 0.5, "top_active_units": 2,
            "wall_time_s": float(version)}


class RecordingWriter:
    """Drives the real sink in a thread; records the (run, step, version) set of every file version it writes,
    before the write, so a reader can never see a version the record lacks."""

    def __init__(self, root: str, monkeypatch: pytest.MonkeyPatch):
        self.sink = ParquetSink(root, SWEEP, verbose=False, flush_every_s=0.003, coalesce_rows=2 * MEMBERS)
        self.written: dict[str, set[frozenset]] = defaultdict(set)
        self.version = 0
        self.errors: list[BaseException] = []
        self.stop = threading.Event()
        real_write = sweeps.results.write_trial_file

        def recording_write(root, sweep_id, trial_id, rows):
            rows = list(rows)
            self.written[trial_id].add(frozenset((r["run_id"], r["step"], r["wall_time_s"]) for r in rows))
            return real_write(root, sweep_id, trial_id, rows)

        monkeypatch.setattr(sweeps.results, "write_trial_file", recording_write)
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        trials = [SimpleNamespace(trial_id=t, config={}) for t in TRIALS]
        try:
            while not self.stop.is_set():
                self.version += 1
                v = self.version
                for trial in trials:
                    for step in (v % STEPS, (v - 1) % STEPS):  # a new evaluation, and a re-sent one
                        result = {"members": [member_row(m, step, v) for m in range(MEMBERS)], "step": step}
                        self.sink.on_trial_result(v, trials, trial, result)
                self.sink.on_step_end(v, trials)
        except BaseException as exc:  # surfaced by the test
            self.errors.append(exc)

    def __enter__(self) -> "RecordingWriter":
        # The table exists before the reader starts: one whole version of each file.
        trials = [SimpleNamespace(trial_id=t, config={}) for t in TRIALS]
        for trial in trials:
            self.sink.add_result(trial.trial_id, {"members": [member_row(m, 0, 0) for m in range(MEMBERS)],
                                                  "step": 0})
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=60)


def read_repeatedly(target: str, writer: RecordingWriter) -> tuple[int, list[str], set[float]]:
    """READS reads of the table; returns (failures, torn descriptions, writer versions seen)."""
    failures, torn, seen = 0, [], set()
    deadline = time.monotonic() + TIME_LIMIT_S
    for i in range(READS):
        assert time.monotonic() < deadline, f"only {i} reads within {TIME_LIMIT_S} s"
        try:
            df = load_results(target).lf.select(FILE_COL, "run_id", "step", "wall_time_s").collect()
        except Exception as exc:  # noqa: BLE001 -- counted and shown
            failures += 1
            torn.append(f"read {i} failed: {exc}")
            continue
        for (path,), rows in df.group_by(FILE_COL):
            trial = path.rsplit("/", 1)[-1].removesuffix(".parquet")
            got = frozenset(rows.select("run_id", "step", "wall_time_s").iter_rows())
            if got not in writer.written[trial]:
                torn.append(f"read {i}: {trial} holds {len(got)} rows no written version had")
            seen.update(rows["wall_time_s"].to_list())
    return failures, torn, seen


def check_snapshots(target: str, writer: RecordingWriter) -> None:
    with writer:
        failures, torn, seen = read_repeatedly(target, writer)
    assert not writer.errors, writer.errors
    assert failures == 0 and not torn, "\n".join(torn[:10])
    # The writer wrote while the reader read: many versions were seen, not one table read 200 times.
    assert len(seen) >= 20, f"the reader saw only writer versions {sorted(seen)}"
    assert writer.version >= 20


def test_local_table_read_while_written_is_always_a_consistent_snapshot(tmp_path, monkeypatch):
    root = str(tmp_path / "parquet")
    check_snapshots(root, RecordingWriter(root, monkeypatch))


def test_s3_table_read_while_written_is_always_a_consistent_snapshot(s3_server, monkeypatch):
    s3_server.use(monkeypatch)
    bucket = s3_server.make_bucket("live")
    root = f"s3://{bucket}/store/parquet"
    check_snapshots(root, RecordingWriter(root, monkeypatch))



# ----- --watch ----------------------------------------------------------------------------------------------------
def test_watch_analyses_again_when_rows_arrive_and_rewrites_the_report(tmp_path, capsys, monkeypatch):
    """``python -m analysis --watch``: one analysis of the table as it is, and another once a new file arrives
    (written by a thread, as the sweep's driver would); the report then counts the new rows."""
    import shutil

    from analysis.__main__ import main
    from ouvae.atomic import write_atomically
    truth = make_synthetic_results(tmp_path / "full", latent_sizes=(10,), n_seeds=3, n_evals=2)
    files = sorted((tmp_path / "full" / "sweep_id=synthetic").glob("*.parquet"))
    live = tmp_path / "live" / "sweep_id=synthetic"
    live.mkdir(parents=True)
    for f in files[:-1]:
        shutil.copy(f, live / f.name)
    out = tmp_path / "report"
    first_report = out / "report.html"
    added, stop = threading.Event(), threading.Event()

    def sweep_writes_one_more_file() -> None:
        deadline = time.monotonic() + TIME_LIMIT_S
        while not first_report.exists() and time.monotonic() < deadline and not stop.is_set():
            stop.wait(0.05)  # polls the watcher's first report; the bound only ends a broken run
        write_atomically(live / files[-1].name, lambda tmp: shutil.copy(files[-1], tmp))
        added.set()

    real_sleep, deadline = time.sleep, time.monotonic() + 2 * TIME_LIMIT_S

    def sleep_or_give_up(seconds: float) -> None:  # a broken watcher ends the test as Ctrl-C would, never hangs it
        if time.monotonic() > deadline:
            raise KeyboardInterrupt
        real_sleep(seconds)

    monkeypatch.setattr(time, "sleep", sleep_or_give_up)
    writer = threading.Thread(target=sweep_writes_one_more_file, daemon=True)
    writer.start()
    try:
        rc = main([str(tmp_path / "live"), "--watch", "--watch-interval", "0.05", "--watch-refreshes", "2",
                   "--no-plots", "--n-boot", "50", "--compare-boot", "0", "--out", str(out)])
    finally:
        stop.set()
        writer.join(timeout=30)
    printed = capsys.readouterr().out
    assert rc == 0 and added.is_set()
    rows_in_last = truth.n_rows
    rows_in_first = rows_in_last - len(pq_rows(files[-1]))
    assert printed.count("report: ") == 2, printed
    assert printed.index(f"{rows_in_first:,} rows") < printed.index(f"{rows_in_last:,} rows"), printed
    assert f"{rows_in_last:,} rows" in first_report.read_text(encoding="utf-8")  # rewritten by the second analysis


def pq_rows(path) -> list:
    import pyarrow.parquet as pq

    return pq.read_table(path, columns=["step"]).to_pylist()


def test_watch_ends_on_ctrl_c_with_one_line_and_exit_0(tmp_path):
    from analysis.storage import locate
    from analysis.watch import watch
    make_synthetic_results(tmp_path, latent_sizes=(10,), n_seeds=2, n_evals=1)
    said: list[str] = []

    def analyse():
        return SimpleNamespace(path=tmp_path / "r" / "report.html", text=lambda: "rho_c table")

    def ctrl_c(seconds: float) -> None:
        raise KeyboardInterrupt

    assert watch(locate(tmp_path), None, analyse, interval_s=1.0, say=said.append, sleep=ctrl_c) == 0
    assert len(said) == 2 and said[-1] == f"stopped watching; last report: {tmp_path / 'r' / 'report.html'}"


def test_watch_waits_through_a_table_not_yet_analysable(tmp_path):
    """A sweep that has written no file yet: one line saying so, then it goes on watching (Ctrl-C here)."""
    from analysis.storage import locate
    from analysis.watch import watch

    (tmp_path / "sweep_id=s").mkdir()
    said: list[str] = []
    sleeps: list[float] = []

    def analyse():
        from analysis.report import analyze

        return analyze(tmp_path, tmp_path / "out", plots_on=False)

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        if len(sleeps) == 3:
            raise KeyboardInterrupt

    assert watch(locate(tmp_path), None, analyse, interval_s=0.5, say=said.append, sleep=sleep) == 0
    assert len(said) == 2 and "not analysed yet: no result files" in said[0] and said[1] == "stopped watching"
    assert sleeps == [0.5, 0.5, 0.5]


# ----- the snapshot read itself -------------------------------------------------------------------------------
def test_a_file_replaced_during_its_read_is_read_again(tmp_path):
    """On S3 the size comes from one request and the bytes from another: an object replaced in between comes back
    as the start of the newer, larger version (no footer at its end). read_snapshot reads such a buffer again."""
    import dataclasses

    import pyarrow as pa

    from analysis.io import read_snapshot, result_files
    from analysis.storage import locate
    make_synthetic_results(tmp_path, latent_sizes=(10,), n_seeds=1, n_evals=1, rhos=(0.9,))
    loc = locate(tmp_path)
    files = result_files(loc, loc.find_sweeps())
    whole = (tmp_path / files[0].split(str(tmp_path) + "/", 1)[1]).read_bytes()
    opened: list[str] = []

    class ReplacedOnceFS:
        def open_input_file(self, path: str):
            opened.append(path)
            if len(opened) == 1:  # the first read meets a replacement: the newer version's first bytes only
                return pa.BufferReader(whole + b"more rows of the next version")
            return loc.filesystem.open_input_file(path)

    snapshot = read_snapshot(dataclasses.replace(loc, filesystem=ReplacedOnceFS()), files)
    assert [f.data for f in snapshot] == [whole] and len(opened) == 2

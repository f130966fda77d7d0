"""The results table: its files (one per Tune trial, upserted by step) and the driver-side sink that writes them.

The files, their rows and run ids (``member_run_id``) are the contract of analysis/schema.py
(docs/results-schema.md); what the user is promised, exactly-once rows, is docs/operations.md's. The functions
need no Ray: the sink and the resume checks use them.

Why a file per Tune trial, rewritten whole: the file *is* the trial's (run, step) -> row map, so

* a result for a (run, step) that already has a row **replaces** that row (upsert). A trial
  retried from its last checkpoint, or restored by ``--resume`` from an older experiment snapshot, re-reports
  the steps after that checkpoint; the trainer is deterministic from a checkpoint, so the new row is the same
  measurement and there is still exactly one row per (trial, step);
* each rewrite is atomic (written to a staging file outside the table, then ``os.replace``; on object stores one
  upload, and an object appears only once its upload is complete), so a reader or a crash never sees half a file;
* a file can be moved aside whole (``supersede``) when its trial is re-created under a new id after a crash.

The Parquet sink, a driver-side Tune callback, keeps that table current.

Why on the driver and not in the trainable: the driver sees every result exactly once per report, from every
node, and is the only writer of each file, so there are no concurrent writers and the workers need no access to
the results location. Each result upserts its trial's file by step (above: why that makes a
retried or resumed trial's rows exactly-once).

After a driver crash, Tune restores the trials recorded in its last experiment snapshot. A trial created after
that snapshot is created again under a new id, so its old file would double-count that (rho, seed) point: on the
first loop step after a restore the sink moves files whose trial id Tune does not know to ``<root>.superseded/``
(kept, never deleted) before any new row is written.

A ladder (sweeps/ladder.py) runs one Tune experiment per rung into the same table: a trial that continues a run
writes into that run's file (``results_file_id``), and the files of earlier rungs (``earlier``) are never unknown.

Why large files' writes are coalesced (``flush_every_s``, ``coalesce_rows``): a trial's file is rewritten whole, so
writing it on every report costs O(evaluations^2 x members) per trial -- a population of 64 evaluated hundreds of
times on a GPU would rewrite tens of thousands of rows per report. Once a trial has ``coalesce_rows`` rows, its
reports within ``flush_every_s`` of its last write wait in the sink's cache (smaller files are written at every
report, so a table watched live stays current); a trial's final result, its end (complete or error) and the end
of the experiment always flush. Rows cached when the driver dies are not lost:
a trial that runs again re-sends its history from its checkpoint and recomputes the evaluations after it
(sweeps/trainable.py), and the sink upserts them.

Why a failed write holds the rows and the sweep goes on (``flush``): a full disk, an S3 error the client's own
retries did not get past, or storage that is gone for a while must not end a sweep whose workers are training
fine. A trial's rows stay in the sink's cache, one line says the table cannot be written and that the rows are
held, each step retries the held files at the flush cadence, and the first write that succeeds again writes every
held row (one more line). Nothing already in the table is touched by a failed write (the new version is staged
and renamed, or uploaded as one object). Rows still held when the experiment ends are retried for
``outage_wait_s``; then one line says which trials' rows could not be written (``ResultsNotWritten``). A failed
*read* is held the same way: after a restore the sink reads the table before it writes (the listing to set files
aside, a continuing trial's stored rows, merged under its new ones at its first write), and writes nothing until
those reads succeed, so a storage that does not answer then can neither drop a stored row nor leave an unknown
trial's file beside its re-run.

The callback's ``get_state`` / ``set_state`` carry the sweep id and the results root through Tune's snapshot, so a
resumed sweep refuses to write into a different table.
"""

from __future__ import annotations

import math
import os
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from ray.tune import Callback

from analysis.schema import SCHEMA, SCHEMA_VERSION, conform
from ouvae.atomic import write_atomically
from sweeps.protocol import not_retried_reason, results_file_id
from sweeps.errors import ResultsNotWritten
from sweeps.storage import absolute, is_remote, join, resolve


SCHEMA_NAMES = frozenset(SCHEMA.names)
RECONCILE = ""  # the key of the sink's one table operation that is not a trial's file (``reconcile``)


def partition_dir(root: str, sweep_id: str) -> str:
    return join(root, f"sweep_id={sweep_id}")


def trial_file(root: str, sweep_id: str, trial_id: str) -> str:
    return join(partition_dir(root, sweep_id), f"{trial_id}.parquet")


def superseded_dir(root: str, sweep_id: str) -> str:
    """Files of trials re-created after a crash: beside the table, kept, never read as part of it."""
    return join(absolute(root) + ".superseded", f"sweep_id={sweep_id}")


def staging_dir(root: str) -> str:
    """Temp files live beside the table, not in it: Polars reads every file under a scanned folder."""
    p = Path(absolute(root))
    return str(p.parent / f".{p.name}.staging")


def member_run_id(trial_id: str, member: int) -> str:
    """The run id of member `member` of the population trained by Tune trial `trial_id`."""
    return f"{trial_id}-m{int(member):03d}"


def rows_from_result(result: Mapping[str, Any], *, sweep_id: str, trial_id: str) -> list[dict[str, Any]]:
    """The schema rows of one reported result: one for a run alone, one per member for a population trial (whose
    result holds them under ``members``). Tune's own keys (training_iteration, time_this_iter_s ...) are
    dropped; identity columns come from the sink, not from what the worker sent."""
    members = result.get("members")
    if members is None:
        return [_row(result, sweep_id, trial_id, None)]
    return [_row(m, sweep_id, member_run_id(trial_id, m["member"]), trial_id) for m in members]


def _row(result: Mapping[str, Any], sweep_id: str, run_id: str, population_id: str | None) -> dict[str, Any]:
    row = {k: result[k] for k in SCHEMA_NAMES if k in result}
    if row.get("step") is None:
        raise ValueError(f"result of trial {run_id} has no 'step': it was not reported by sweeps.trainable")
    row.update(sweep_id=sweep_id, run_id=run_id, population_id=population_id, schema_version=SCHEMA_VERSION)
    for key in ("layer_kl", "layer_active_units"):
        if row.get(key) is not None:
            row[key] = list(row[key])
    return row


def rows_to_table(rows: Iterable[Mapping[str, Any]]) -> pa.Table:
    rows = sorted(rows, key=lambda r: (str(r["run_id"]), int(r["step"])))
    cols = {name: [r.get(name) for r in rows] for name in SCHEMA.names}
    return conform(pa.table({k: pa.array(v, type=SCHEMA.field(k).type) for k, v in cols.items()}))


def write_trial_file(root: str, sweep_id: str, trial_id: str, rows: Iterable[Mapping[str, Any]]) -> str:
    """Atomically (re)write one trial's file with `rows`; returns its path."""
    table = rows_to_table(rows)
    target = trial_file(root, sweep_id, trial_id)
    fs, path = resolve(target)
    if isinstance(fs, pafs.LocalFileSystem):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        stage = Path(staging_dir(root))
        stage.mkdir(parents=True, exist_ok=True)
        tmp = stage / f"{sweep_id}.{trial_id}.{uuid.uuid4().hex[:8]}.tmp"
        try:
            pq.write_table(table, tmp)
            try:
                os.replace(tmp, path)
            except OSError:  # staging on another filesystem (EXDEV): fall back to a temp file in place
                write_atomically(path, lambda local_tmp: pq.write_table(table, local_tmp))
        finally:
            tmp.unlink(missing_ok=True)
    else:
        # The file is made in memory first and then uploaded as one object (an object appears once its upload is
        # complete: never half). Not written straight into the stream: a write that fails part-way would still
        # close the stream on the way out, which completes the upload and replaces the file with a partial one.
        buffer = pa.BufferOutputStream()
        pq.write_table(table, buffer)
        fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        with fs.open_output_stream(path) as out:
            out.write(buffer.getvalue())
    return target


def read_trial_rows(root: str, sweep_id: str, trial_id: str) -> list[dict[str, Any]]:
    fs, path = resolve(trial_file(root, sweep_id, trial_id))
    if fs.get_file_info(path).type != pafs.FileType.File:
        return []
    with fs.open_input_file(path) as f:
        return pq.read_table(f).to_pylist()


def list_trial_files(root: str, sweep_id: str) -> dict[str, str]:
    """trial_id -> path for every file in the sweep's partition."""
    fs, path = resolve(partition_dir(root, sweep_id))
    info = fs.get_file_info(path)
    if info.type != pafs.FileType.Directory:
        return {}
    out = {}
    for f in fs.get_file_info(pafs.FileSelector(path)):
        name = f.base_name
        if f.type == pafs.FileType.File and name.endswith(".parquet"):
            out[name[: -len(".parquet")]] = f.path
    return out


def supersede(root: str, sweep_id: str, trial_id: str) -> str:
    """Move a trial's file out of the table (kept under <root>.superseded/)."""
    fs, src = resolve(trial_file(root, sweep_id, trial_id))
    _, dst_dir = resolve(superseded_dir(root, sweep_id))
    fs.create_dir(dst_dir, recursive=True)
    dst = f"{dst_dir}/{trial_id}.parquet"
    fs.move(src, dst)
    return dst


def sweep_exists(root: str, sweep_id: str) -> bool:
    return bool(list_trial_files(root, sweep_id))


# ----- the Tune callback ----------------------------------------------------------------------------------------
class ParquetSink(Callback):
    """Writes every reported evaluation of every trial into the results table (see the module docstring)."""

    STATE_VERSION = 1

    def __init__(self, root: str, sweep_id: str, *, verbose: bool = True, keep_finished_unknown: bool = False,
                 flush_every_s: float = 30.0, coalesce_rows: int = 2000, earlier: frozenset[str] = frozenset(),
                 retry_every_s: float = 5.0, outage_wait_s: float = 600.0):
        if not sweep_id or "/" in sweep_id or "=" in sweep_id:
            raise ValueError(f"sweep id {sweep_id!r} must be a non-empty name without '/' or '='")
        self.root = absolute(root)
        self.sweep_id = sweep_id
        self.verbose = verbose
        # True for searches in which every trial is its own sample (Optuna): a trial that finished after the last
        # snapshot is then a valid result that Tune will not re-run (it samples a new trial instead), so its file
        # stays. False for grids and the adaptive searcher: Tune re-runs that point under a new id.
        self.keep_finished_unknown = keep_finished_unknown
        # Files written by earlier Tune experiments of the same sweep (a ladder's earlier rungs): never unknown.
        self.earlier = frozenset(earlier)
        self._rows: dict[str, dict[tuple[str, int], dict[str, Any]]] = {}  # results file -> (run, step) -> row
        self.flush_every_s, self.coalesce_rows = flush_every_s, coalesce_rows
        self._written: dict[str, float] = {}  # results file -> when this sink last wrote it (monotonic clock)
        self._dirty: set[str] = set()  # results files with cached rows not yet written
        # While the table cannot be written: held files are retried every retry_every_s (not flush_every_s: the
        # outage may be short), and for outage_wait_s at the end of the experiment.
        self.retry_every_s, self.outage_wait_s = retry_every_s, outage_wait_s
        self._failing: dict[str, str] = {}  # results file (or RECONCILE) -> why its last attempt failed
        self._loaded: set[str] = set()  # results files whose rows on storage are merged into the cache
        self._known: set[str] | None = None  # the trial files Tune knows (set at each loop step)
        self._reconciled = False
        self.superseded: list[str] = []

    # Tune pickles the callback into tuner.pkl; the row cache is rebuilt from the files, never pickled.
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_rows"], state["_written"], state["_dirty"], state["_failing"] = {}, {}, set(), {}
        state["_loaded"], state["_known"], state["_reconciled"] = set(), None, False
        return state

    # ----- Tune hooks ----------------------------------------------------------------------------------------
    def setup(self, stop=None, num_samples=None, total_num_samples=None, **info) -> None:
        if not is_remote(self.root):
            Path(self.root).mkdir(parents=True, exist_ok=True)
            stage = Path(staging_dir(self.root))
            for stale in stage.glob(f"{self.sweep_id}.*.tmp") if stage.is_dir() else ():
                stale.unlink(missing_ok=True)  # left by a killed driver; never part of the table

    def on_step_begin(self, iteration: int, trials: list, **info) -> None:
        if not self._reconciled:  # (the trial list is read only until then: a loop step is frequent)
            self._known = {_file_id(t) for t in trials} | self.earlier
            if self._due(RECONCILE):
                self._attempt(RECONCILE, lambda: None)

    def on_trial_result(self, iteration: int, trials: list, trial, result: dict, **info) -> None:
        if not_retried_reason(result) is not None:  # a failing trial's last word is not an evaluation
            return
        tid = _file_id(trial)
        since_write = time.monotonic() - self._written.get(tid, -math.inf)
        if self._failing:  # the table cannot be written: try again only at the retry cadence, not per report
            write_now = since_write >= self.retry_every_s
        else:
            write_now = result.get("is_final") or len(self._rows.get(tid) or ()) < self.coalesce_rows or \
                since_write >= self.flush_every_s
        if write_now:
            self.add_result(tid, result)
        else:
            self._stage(tid, result)
            self._dirty.add(tid)

    def on_step_end(self, iteration: int, trials: list, **info) -> None:
        now = time.monotonic()
        for tid in [t for t in self._dirty if now - self._written.get(t, -math.inf) >=
                    (self.retry_every_s if t in self._failing else self.flush_every_s)]:
            self.flush(tid)

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        self._finish(_file_id(trial))

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        self._finish(_file_id(trial))

    def on_experiment_end(self, trials: list, **info) -> None:
        if not self._reconciled:
            self._known = {_file_id(t) for t in trials} | self.earlier
        self.flush_all()

    def flush_all(self, sleep=time.sleep) -> None:
        """Write every held file; while the table cannot be written, retry for ``outage_wait_s``, then raise
        ResultsNotWritten."""
        deadline = time.monotonic() + self.outage_wait_s
        self._flush_held()
        while (self._dirty or self._unreconciled()) and time.monotonic() < deadline:
            sleep(min(self.retry_every_s, max(0.0, deadline - time.monotonic())))
            self._flush_held()
        if self._unreconciled():
            raise ResultsNotWritten(
                f"the results table {self.root} could not be read for {self.outage_wait_s:.0f} s "
                f"({self._failing[RECONCILE]}) to set aside the files of trials re-run since the last snapshot; "
                f"every row written before is kept")
        if self._dirty:
            held = sorted(self._dirty)
            n_rows = sum(len(self._rows.get(t) or ()) for t in held)
            why = self._failing.get(held[0]) or next(iter(self._failing.values()), "unknown")
            raise ResultsNotWritten(
                f"the results table {self.root} could not be written for {self.outage_wait_s:.0f} s ({why}): "
                f"{n_rows} row(s) of trial(s) {', '.join(held)} exist only in this driver's memory; the table holds "
                f"every row written before")

    def _flush_held(self) -> None:
        if self._unreconciled():
            self._attempt(RECONCILE, lambda: None)
        for tid in list(self._dirty):
            self.flush(tid)

    def _unreconciled(self) -> bool:
        return not self._reconciled and self._known is not None

    def _finish(self, trial_id: str) -> None:
        if trial_id in self._dirty:
            self.flush(trial_id)
        if trial_id in self._dirty:  # not written (storage failing): keep the rows, retried at the next steps
            return
        self._rows.pop(trial_id, None)  # ended: free the cache (the file stays the truth)
        self._written.pop(trial_id, None)
        self._loaded.discard(trial_id)

    def get_state(self) -> dict[str, Any]:
        return {"version": self.STATE_VERSION, "root": self.root, "sweep_id": self.sweep_id,
                "superseded": list(self.superseded)}

    def set_state(self, state: dict[str, Any]) -> None:
        if state.get("sweep_id") != self.sweep_id or state.get("root") != self.root:
            raise RuntimeError(f"the restored sweep wrote to {state.get('root')} (sweep {state.get('sweep_id')}) "
                               f"but this sink writes to {self.root} (sweep {self.sweep_id}); resume with the "
                               f"same --storage/--results-dir and --name")
        self.superseded = list(state.get("superseded", []))

    # ----- the table logic (callable without Tune) -------------------------------------------------
    def reconcile(self, known_trial_ids: set[str]) -> list[str]:
        """Move files of trials Tune does not know (created after the last snapshot) out of the table (finished
        ones stay with ``keep_finished_unknown``)."""
        moved = []
        for tid in sorted(set(list_trial_files(self.root, self.sweep_id)) - known_trial_ids):
            if self.keep_finished_unknown and any(r.get("is_final") for r in
                                                  read_trial_rows(self.root, self.sweep_id, tid)):
                continue
            moved.append(supersede(self.root, self.sweep_id, tid))
            self.superseded.append(tid)
        if moved and self.verbose:
            print(f"[results] {len(moved)} trial file(s) from after the last experiment snapshot were re-queued "
                  f"under new ids; moved the old files to {superseded_dir(self.root, self.sweep_id)}", flush=True)
        return moved

    def add_result(self, trial_id: str, result: Mapping[str, Any]) -> str:
        """Upsert the rows of one result (one run, or every member of a population) into the trial's file."""
        self._stage(trial_id, result)
        return self.flush(trial_id)

    def flush(self, trial_id: str) -> str | None:
        """Write the trial's file with every row cached for it (None if it has none, or if the write failed: the
        rows are then held and retried, see the module docstring)."""
        self._dirty.discard(trial_id)
        if not self._rows.get(trial_id):
            return None

        def write() -> str:
            rows = self._rows[trial_id]
            if trial_id not in self._loaded:  # first write in this driver session: keep the rows already stored
                stored = {_key(r): r for r in read_trial_rows(self.root, self.sweep_id, trial_id)}
                rows = self._rows[trial_id] = {**stored, **rows}
                self._loaded.add(trial_id)
            return write_trial_file(self.root, self.sweep_id, trial_id, rows.values())

        path = self._attempt(trial_id, write)
        if path is None:
            self._dirty.add(trial_id)
        return path

    def _due(self, key: str) -> bool:
        """Whether to try `key` now: at once, or at the retry cadence while it is failing."""
        return key not in self._failing or time.monotonic() - self._written.get(key, -math.inf) >= self.retry_every_s

    def _attempt(self, key: str, action: Callable[[], str | None]) -> str | None:
        """Run one table operation (`key`: a trial's file, or RECONCILE) after the files of trials re-run since
        the last snapshot are set aside; an OSError -- the storage failing -- is held, said once, and retried."""
        if key != RECONCILE and self._unreconciled() and not self._due(RECONCILE):
            return None  # the table could not be read a moment ago: hold, and try again at the retry cadence
        self._written[key] = time.monotonic()
        if self._unreconciled():  # this attempt tries the reconcile first: its retry cadence counts from now
            self._written[RECONCILE] = self._written[key]
        was_failing = bool(self._failing)
        try:
            if self._unreconciled():
                self.reconcile(self._known)
                self._reconciled = True
                self._failing.pop(RECONCILE, None)
            result = action()
        except OSError as exc:
            if not self._failing:
                print(f"[results] cannot write the results table {self.root} ({_reason(exc)}); holding the rows in "
                      f"memory and retrying every {self.retry_every_s:g} s, the sweep goes on", flush=True)
            self._failing[RECONCILE if self._unreconciled() else key] = _reason(exc)
            return None
        self._failing.pop(key, None)
        if was_failing and not self._failing:
            print(f"[results] the results table {self.root} is writable again; the held rows are written",
                  flush=True)
        return result

    def _stage(self, trial_id: str, result: Mapping[str, Any]) -> None:
        rows = self._rows.setdefault(trial_id, {})  # merged with the stored rows at the first write (flush)
        for row in rows_from_result(result, sweep_id=self.sweep_id, trial_id=trial_id):
            rows[_key(row)] = row


def _reason(exc: OSError) -> str:
    """One line for a failed write: the OS error's text (ENOSPC: 'No space left on device') or the S3 error's."""
    text = (exc.strerror if exc.strerror else str(exc)).strip()
    return text.splitlines()[0] if text else exc.__class__.__name__


def _file_id(trial: Any) -> str:
    return results_file_id(trial.trial_id, trial.config or {})


def _key(row: Mapping[str, Any]) -> tuple[str, int]:
    return str(row["run_id"]), int(row["step"])

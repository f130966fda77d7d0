"""The Parquet sink: a driver-side Tune callback that keeps ``<root>/sweep_id=<id>/<trial_id>.parquet`` current.

Why on the driver and not in the trainable: the driver sees every result exactly once per report, from every
node, and is the only writer of each file, so there are no concurrent writers and the workers need no access to
the results location. Why a file per trial, rewritten whole: the file *is* the trial's step -> row map, so

* a result for a step that already has a row **replaces** that row (upsert keyed by ``step``). A trial
  retried from its last checkpoint, or restored by ``--resume`` from an older experiment snapshot, re-reports
  the steps after that checkpoint; the trainer is deterministic from a checkpoint, so the new row is the same
  measurement and there is still exactly one row per (trial, step);
* each rewrite is atomic (written to a staging file outside the table, then ``os.replace``; on object stores a
  single PUT, which is atomic), so a reader or a crash never sees half a file;
* after a driver crash, Tune restores the trials recorded in its last experiment snapshot. A trial created
  after that snapshot is created again under a new id, so its old file would double-count that
  (rho, seed) point: on the first loop step after a restore the sink moves files whose trial id Tune does not
  know to ``<root>.superseded/`` (kept, never deleted) before any new row is written.

The callback's ``get_state`` / ``set_state`` carry the sweep id, the results root and the per-trial failure
reasons through Tune's snapshot, so a resumed sweep refuses to write into a different table and still reports
failures from before the crash.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import uuid
from pathlib import Path
from typing import Any, Iterable, Mapping

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from ray.tune import Callback

from analysis.schema import SCHEMA, SCHEMA_VERSION, conform

logger = logging.getLogger(__name__)

SCHEMA_NAMES = frozenset(SCHEMA.names)


# ----- locations ----------------------------------------------------------------------------------------------
def is_remote(uri: str) -> bool:
    return "://" in uri and not uri.startswith("file://")


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path) for a local path, file://, s3://, gs:// ... (pyarrow's own resolution)."""
    if not is_remote(uri):
        path = uri[len("file://"):] if uri.startswith("file://") else uri
        return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(path))
    return pafs.FileSystem.from_uri(uri)


def join(uri: str, *parts: str) -> str:
    return "/".join([uri.rstrip("/"), *parts]) if is_remote(uri) else str(Path(uri, *parts))


def partition_dir(root: str, sweep_id: str) -> str:
    return join(root, f"sweep_id={sweep_id}")


def trial_file(root: str, sweep_id: str, trial_id: str) -> str:
    return join(partition_dir(root, sweep_id), f"{trial_id}.parquet")


def superseded_dir(root: str, sweep_id: str) -> str:
    base = root.rstrip("/") + ".superseded" if is_remote(root) else str(Path(root).resolve()) + ".superseded"
    return join(base, f"sweep_id={sweep_id}")


def staging_dir(root: str) -> str:
    """Temp files live beside the table, not in it: Polars reads every file under a scanned folder."""
    p = Path(root).resolve()
    return str(p.parent / f".{p.name}.staging")


# ----- rows and files (no Ray needed) ----------------------------------------------------------------------------
def row_from_result(result: Mapping[str, Any], *, sweep_id: str, trial_id: str) -> dict[str, Any]:
    """The schema columns of one reported result. Tune's own keys (training_iteration, time_this_iter_s ...)
    are dropped; identity columns come from the sink, not from what the worker sent."""
    row = {k: result[k] for k in SCHEMA_NAMES if k in result}
    if row.get("step") is None:
        raise ValueError(f"result of trial {trial_id} has no 'step': it was not reported by sweeps.trainable")
    row.update(sweep_id=sweep_id, trial_id=trial_id, schema_version=SCHEMA_VERSION)
    for key in ("layer_kl", "layer_active_units"):
        if row.get(key) is not None:
            row[key] = list(row[key])
    return row


def rows_to_table(rows: Iterable[Mapping[str, Any]]) -> pa.Table:
    rows = sorted(rows, key=lambda r: int(r["step"]))
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
                local_tmp = Path(path).with_name(f".{trial_id}.{uuid.uuid4().hex[:8]}.tmp")
                pq.write_table(table, local_tmp)
                os.replace(local_tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    else:
        fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        with fs.open_output_stream(path) as out:  # one PUT on object stores: readers see old or new, never half
            pq.write_table(table, out)
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

    def __init__(self, root: str, sweep_id: str, *, verbose: bool = True, keep_finished_unknown: bool = False):
        if not sweep_id or "/" in sweep_id or "=" in sweep_id:
            raise ValueError(f"sweep id {sweep_id!r} must be a non-empty name without '/' or '='")
        self.root = root if is_remote(root) else str(Path(root).expanduser().resolve())
        self.sweep_id = sweep_id
        self.verbose = verbose
        # True for searches in which every trial is its own sample (Optuna): a trial that finished after the last
        # snapshot is then a valid result that Tune will not re-run (it samples a new trial instead), so its file
        # stays. False for grids and the adaptive searcher: Tune re-runs that point under a new id.
        self.keep_finished_unknown = keep_finished_unknown
        self.failures: dict[str, str] = {}  # trial_id -> one-line reason (final failures only)
        self.retries: dict[str, int] = {}  # trial_id -> retries seen in this driver session
        self._rows: dict[str, dict[int, dict[str, Any]]] = {}
        self._reconciled = False
        self.superseded: list[str] = []

    # Tune pickles the callback into tuner.pkl; the row cache is rebuilt from the files, never pickled.
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_rows"] = {}
        state["_reconciled"] = False
        return state

    # ----- Tune hooks ----------------------------------------------------------------------------------------
    def setup(self, stop=None, num_samples=None, total_num_samples=None, **info) -> None:
        if not is_remote(self.root):
            Path(self.root).mkdir(parents=True, exist_ok=True)
            stage = Path(staging_dir(self.root))
            for stale in stage.glob(f"{self.sweep_id}.*.tmp") if stage.is_dir() else ():
                stale.unlink(missing_ok=True)  # left by a killed driver; never part of the table

    def on_step_begin(self, iteration: int, trials: list, **info) -> None:
        if not self._reconciled:
            self.reconcile({t.trial_id for t in trials})
            self._reconciled = True

    def on_trial_result(self, iteration: int, trials: list, trial, result: dict, **info) -> None:
        self.add_result(trial.trial_id, result)

    def on_trial_recover(self, iteration: int, trials: list, trial, **info) -> None:
        self.retries[trial.trial_id] = self.retries.get(trial.trial_id, 0) + 1

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        self.failures[trial.trial_id] = failure_reason(trial)

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        self.failures.pop(trial.trial_id, None)  # e.g. an errored trial that --resume --retry-failed finished
        self._rows.pop(trial.trial_id, None)  # finished: free the cache (the file stays the truth)

    def get_state(self) -> dict[str, Any]:
        return {"version": self.STATE_VERSION, "root": self.root, "sweep_id": self.sweep_id,
                "failures": dict(self.failures), "superseded": list(self.superseded)}

    def set_state(self, state: dict[str, Any]) -> None:
        if state.get("sweep_id") != self.sweep_id or state.get("root") != self.root:
            raise RuntimeError(f"the restored sweep wrote to {state.get('root')} (sweep {state.get('sweep_id')}) "
                               f"but this sink writes to {self.root} (sweep {self.sweep_id}); resume with the "
                               f"same --storage/--results-dir and --name")
        self.failures = dict(state.get("failures", {}))
        self.superseded = list(state.get("superseded", []))

    # ----- the table logic (callable without Tune, for tests) -------------------------------------------------
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
        row = row_from_result(result, sweep_id=self.sweep_id, trial_id=trial_id)
        rows = self._rows.get(trial_id)
        if rows is None:  # first result of this trial in this driver session: start from what is on disk
            rows = {int(r["step"]): r for r in read_trial_rows(self.root, self.sweep_id, trial_id)}
            self._rows[trial_id] = rows
        rows[int(row["step"])] = row
        return write_trial_file(self.root, self.sweep_id, trial_id, rows.values())


def failure_reason(trial: Any) -> str:
    """One line for a failed trial: the exception type and the first line of its message (the full trace
    stays in the trial's error.txt in Ray's experiment folder)."""
    # Tune writes the error to the trial's *local* staging folder first (pickled_error_file / error_file) and syncs
    # it to storage later, so when the callbacks run only the local copies are sure to exist.
    readers = (lambda: _load_pickle(trial.pickled_error_file), lambda: _read_text(trial.error_file),
               trial.get_pickled_error, trial.get_error)
    for read in readers:
        try:
            err = read()
        except Exception:  # noqa: BLE001 - an unreadable error file must not break the sweep
            err = None
        if err:
            return failure_text(err)
    return "unknown error"


def _load_pickle(path: str | None) -> Any:
    if not path or not os.path.isfile(path):
        return None
    import ray.cloudpickle as cloudpickle

    with open(path, "rb") as f:
        return cloudpickle.load(f)


def _read_text(path: str | None) -> str | None:
    if not path or not os.path.isfile(path):
        return None
    return Path(path).read_text(errors="replace")


def failure_text(err: Any) -> str:
    """Exception (Ray wraps the trial's own in RayTaskError; `.cause` is the original) or error text -> one line."""
    if err is None:
        return "unknown error"
    if isinstance(err, BaseException):
        cause = getattr(err, "cause", None) or err
        first = next((ln.strip() for ln in str(cause).splitlines() if ln.strip()), "")
        name = type(cause).__name__
        if name in ("RayTaskError", "TuneError") or name.startswith("RayTaskError("):
            return _last_exception_line(str(cause))
        return f"{name}: {first}"[:300]
    return _last_exception_line(str(err))


def _last_exception_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for ln in reversed(lines):  # tracebacks end with "ExcType: message"
        head = ln.split(":", 1)[0]
        if head and " " not in head and (head.endswith(("Error", "Exception", "Stalled", "Failure"))
                                         or "." in head):
            return ln[:300]
    return (lines[-1] if lines else "unknown error")[:300]


def write_json(uri: str, data: Any) -> None:
    """Small JSON file (sweep spec) on a local path or object store, written atomically where possible."""
    fs, path = resolve(uri)
    text = json.dumps(data, indent=2, sort_keys=True).encode()
    if isinstance(fs, pafs.LocalFileSystem):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=Path(path).parent, prefix=".tmp-")
        with os.fdopen(fd, "wb") as f:
            f.write(text)
        os.replace(tmp, path)
    else:
        fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        with fs.open_output_stream(path) as f:
            f.write(text)


def read_json(uri: str) -> Any | None:
    fs, path = resolve(uri)
    if fs.get_file_info(path).type != pafs.FileType.File:
        return None
    with fs.open_input_stream(path) as f:
        return json.loads(f.readall().decode())

"""The results table's files: ``<root>/sweep_id=<id>/<trial_id>.parquet``, one per Tune trial, in the schema of
analysis/schema.py (no Ray needed: the sink and the resume checks use these functions). The contract:
docs/architecture.md, section 3 ("Driver -> table").

A Tune trial trains one run, or a population of runs (ouvae/population.py) that report together: its file holds
the rows of all its runs. A member's run id is ``<tune trial id>-m<member>`` (``member_run_id``), stable across
retries and ``--resume`` because Tune keeps its trial ids; ``population_id`` names the Tune trial.

Why a file per Tune trial, rewritten whole: the file *is* the trial's (run, step) -> row map, so

* a result for a (run, step) that already has a row **replaces** that row (upsert). A trial
  retried from its last checkpoint, or restored by ``--resume`` from an older experiment snapshot, re-reports
  the steps after that checkpoint; the trainer is deterministic from a checkpoint, so the new row is the same
  measurement and there is still exactly one row per (trial, step);
* each rewrite is atomic (written to a staging file outside the table, then ``os.replace``; on object stores one
  upload, and an object appears only once its upload is complete), so a reader or a crash never sees half a file;
* a file can be moved aside whole (``supersede``) when its trial is re-created under a new id after a crash.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any, Iterable, Mapping

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from analysis.schema import SCHEMA, SCHEMA_VERSION, conform
from ouvae.atomic import write_atomically
from sweeps.storage import absolute, join, resolve

SCHEMA_NAMES = frozenset(SCHEMA.names)


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
        fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        with fs.open_output_stream(path) as out:  # an object appears once its upload is complete: never half
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

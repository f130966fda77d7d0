"""Lazy loading and validation of the results table, local or on S3.

Why a separate module: every later step (fits, tables, plots) trusts what it gets from here, so all checks of
the input live in one place and fail early with one clear message (`AnalysisError`) that names the problem and
the fix, before anything is written. Where the files are is ``analysis/storage.py``'s business; this module
lists them there, reads them and scans them lazily (``pl.scan_parquet``) so queries decode only the columns
they touch.

Why every file is read whole, in one read, before anything parses it (``read_snapshot``): a sweep that is still
running replaces its files while the analysis reads them (atomically: a rename locally, one PUT on S3). A reader
that opens a file twice -- once for the footer, once for the pages, as a lazy scan does -- can pair one version's
footer with the next version's pages and fail on a healthy table. Bytes read in one go are one version of the file
(an open local file keeps its inode through a rename; one S3 GET returns one object version), so every file parses
from a buffer that is whole, and a run's rows, which all live in one file, are never half old, half new. A buffer
that is not a whole Parquet file (an S3 object replaced between the size lookup and the GET) is read again. The
guarantees and their tests: docs/operations.md, "Reading a table while it is written".
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from analysis.errors import AnalysisError
from analysis.schema import COLUMNS, READABLE_VERSIONS, RENAMED, REQUIRED_FOR_ANALYSIS, SCHEMA, SCHEMA_VERSION
from analysis.storage import SWEEP_PREFIX, ResultsLocation, locate

__all__ = ["AnalysisError", "FILE_COL", "NUMERIC_METRICS", "ResultFile", "Results", "collect", "load_results",
           "read_snapshot", "result_files", "scan_results"]

FILE_COL = "__file"  # path of the Parquet file each row came from, for messages that name the bad file
# Reads of one file before a buffer that is no whole Parquet file counts as a broken file, not as a file replaced
# while it was read (a replacement is over in one upload; the next read sees a whole version).
READS_PER_FILE = 4
PARQUET_MAGIC = b"PAR1"
# Final-row metrics that must be real numbers for the tables and fits to mean anything.
NUMERIC_METRICS = ("top_kl", "elbo", "iw_bound", "kl_total", "recon")


def _polars_schema() -> pl.Schema:
    """Today's columns, plus the old names of renamed ones (RENAMED), which upgrade_rows folds in and drops."""
    schema = pl.Schema(pl.from_arrow(SCHEMA.empty_table()).schema)
    return pl.Schema({**schema, **{old: schema[new] for old, new in RENAMED.items()}})


def _examples(loc: ResultsLocation, paths: list[str]) -> str:
    shown = ", ".join(loc.short(p) for p in paths[:3])
    return f"{shown} and {len(paths) - 3} more" if len(paths) > 3 else shown


def _chosen_sweeps(loc: ResultsLocation, sweeps: list[str] | tuple[str, ...] | None) -> list[str]:
    """The sweeps to analyse: ``sweeps`` (checked against the location) or every sweep present."""
    present = loc.find_sweeps()
    if not sweeps:
        return present
    unknown = [s for s in sweeps if s not in present]
    if unknown:
        have = ", ".join(present) if present else "none"
        where = f"the sweep folder {loc.given}" if loc.sweep is not None else loc.given
        raise AnalysisError(f"sweep id(s) {', '.join(unknown)} not found in {where} (sweeps present: {have}): "
                            f"check --sweep")
    return list(dict.fromkeys(sweeps))


def result_files(loc: ResultsLocation, sweeps: list[str]) -> list[str]:
    """The result files of ``sweeps`` as Polars reads them, after checking that there are some and none is empty.

    Raises AnalysisError for a location with no result files or with 0-byte files.
    """
    infos = [i for s in sweeps for i in loc.list_files(s)]
    empty = [i.path for i in infos if i.size == 0]
    if empty:
        raise AnalysisError(f"{len(empty)} result file(s) are empty (0 bytes, e.g. {_examples(loc, empty)}): a writer "
                            f"crashed before its first write; delete them and re-run those trials")
    if not infos:
        where = f"sweep(s) {', '.join(sweeps)} in {loc.given}" if sweeps else loc.given
        raise AnalysisError(f"no result files in {where}: expected {loc.kind.value} holding sweep_id=<id>/<trial>."
                            f"parquet; point the command at the folder the sweep wrote, or wait until a trial has "
                            f"reported")
    return [loc.uri(i.path) for i in infos]


@dataclass(frozen=True)
class ResultFile:
    """One result file as this analysis read it: its path (as ``result_files`` gives it), its sweep, and its bytes --
    one whole version of the file."""

    path: str
    sweep: str
    data: bytes


def read_snapshot(loc: ResultsLocation, files: list[str]) -> list[ResultFile]:
    """Every file of ``files`` read whole, each in one read (the module docstring says why), in the same order.

    A file that disappeared since the listing was moved out of the table (``supersede``, after a crash) and is left
    out, as it would be from a listing taken a moment later. Raises AnalysisError when none is left.
    """
    snapshot = []
    for uri in files:
        data = _read_whole(loc, uri)
        if data is not None:
            snapshot.append(ResultFile(path=uri, sweep=_sweep_of(uri), data=data))
    if files and not snapshot:
        raise AnalysisError(f"every result file in {loc.given} was moved away while it was read (a sweep resumed "
                            f"after a crash supersedes files): run the analysis again")
    return snapshot


def _read_whole(loc: ResultsLocation, uri: str) -> bytes | None:
    """The file's bytes from one read; None if it no longer exists. Read again while the buffer is not a whole
    Parquet file (replaced during the read); after READS_PER_FILE reads the file is broken and its bytes go to the
    scan, whose error names it."""
    data = b""
    for _ in range(READS_PER_FILE):
        try:
            with loc.filesystem.open_input_file(uri.removeprefix("s3://")) as f:
                data = f.read()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise AnalysisError(f"cannot read {loc.short(uri)} in {loc.given} ({_first_line(exc)}): check the "
                                f"storage is reachable and run the analysis again") from None
        if _is_whole_parquet(data):
            return data
    return data


def _is_whole_parquet(data: bytes) -> bool:
    """The buffer starts and ends with Parquet's magic and its footer parses: one whole version of a file."""
    if len(data) < 12 or data[:4] != PARQUET_MAGIC or data[-4:] != PARQUET_MAGIC:
        return False
    try:
        pq.read_metadata(pa.BufferReader(data))
    except (pa.ArrowException, OSError):
        return False
    return True


def _sweep_of(uri: str) -> str:
    """The sweep of a result file, from its partition folder (``.../sweep_id=<id>/<trial>.parquet``)."""
    folder = uri.rsplit("/", 2)[-2]
    return folder[len(SWEEP_PREFIX):] if folder.startswith(SWEEP_PREFIX) else ""


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else exc.__class__.__name__


def scan_results(snapshot: list[ResultFile]) -> pl.LazyFrame:
    """A lazy frame over every result row of ``snapshot``, with the full current schema and a ``__file`` column.

    Columns absent from a file come back as nulls (validation then names them); narrower integer/float types are
    upcast; ``sweep_id`` is the file's partition folder (as a hive-partitioned scan reads it). Nothing is decoded
    until a query is collected.
    """
    schema = _polars_schema()
    frames = [pl.scan_parquet(
        f.data,
        schema=schema,
        missing_columns="insert",
        extra_columns="ignore",
        cast_options=pl.ScanCastOptions(integer_cast="upcast", float_cast="upcast"),
    ).with_columns(pl.lit(f.sweep).alias("sweep_id"), pl.lit(f.path).alias(FILE_COL)) for f in snapshot]
    return upgrade_rows(pl.concat(frames, how="vertical"))


def upgrade_rows(lf: pl.LazyFrame) -> pl.LazyFrame:
    """Rows of older schema versions in today's meaning (analysis.schema, READABLE_VERSIONS).

    Before v3 there was one reading (posterior) and elbo/iw_bound/recon/kl_total were measured with the generative
    maps smoothed as in training: wherever that smoothing was on (rho_eval < 1, decoder maps smoothed, K > 1) they
    are the smoothed objective, no bound on log p(x), so they move to smoothed_elbo/smoothed_kl_total and the bound
    columns become null (no bound was measured). Elsewhere they were the plain HVAE's bounds all along. A column
    renamed since (analysis.schema.RENAMED: v1/v2's trial_id) is read under today's name. Before v4 every run
    trained at a constant lr: lr_decay_steps 0; before v5 every decay was 1/k: lr_decay_power 1.
    """
    old = pl.col("schema_version") < 3
    leaky = (old & (pl.col("rho_eval") < 1) & pl.col("smooth").is_in(["both", "decoder"])
             & (pl.col("smooth_samples") > 1)).fill_null(False)
    keep_unless_leaky = lambda c: pl.when(leaky).then(None).otherwise(pl.col(c)).alias(c)  # noqa: E731
    lf = lf.with_columns(pl.coalesce(now, was).alias(now) for was, now in RENAMED.items()).drop(*RENAMED)
    return lf.with_columns(
        pl.when(old).then(pl.lit("posterior")).otherwise(pl.col("smooth_space")).alias("smooth_space"),
        pl.when(leaky).then(None).when(old).then(pl.lit("hvae")).otherwise(pl.col("bound_model")).alias("bound_model"),
        pl.when(old).then(pl.col("elbo")).otherwise(pl.col("smoothed_elbo")).alias("smoothed_elbo"),
        pl.when(old).then(pl.col("kl_total")).otherwise(pl.col("smoothed_kl_total")).alias("smoothed_kl_total"),
        *[keep_unless_leaky(c) for c in ("elbo", "iw_bound", "recon", "kl_total")],
        pl.col("lr_decay_steps").fill_null(0),
        pl.col("lr_decay_power").fill_null(1.0),
    )


@dataclass
class Results:
    """A validated results table: where it is, the lazy scan, and what validation learnt on the way."""

    location: ResultsLocation
    sweeps: list[str]
    snapshot: list[ResultFile]  # every file's bytes, as read once for this analysis
    lf: pl.LazyFrame
    n_rows: int
    n_files: int

    @property
    def files(self) -> list[str]:
        return [f.path for f in self.snapshot]


def _type_mismatch_files(loc: ResultsLocation, snapshot: list[ResultFile]) -> str:
    """Slow path after a read error: read file footers to name the files that are unreadable or whose column types
    differ from the schema, with the fix for that case."""
    expected = {name: typ for name, typ, _ in COLUMNS}
    bad: list[str] = []
    detail = ""
    for file in snapshot:
        f = file.path
        try:
            schema = pq.read_schema(pa.BufferReader(file.data))
        except Exception as exc:  # unreadable footer: corrupt or not Parquet
            bad.append(f)
            detail = detail or f"cannot be read as Parquet ({exc.__class__.__name__})"
            continue
        for fld in schema:
            want = expected.get(fld.name)
            if want is not None and not fld.type.equals(want) and not (
                    str(want).startswith(("int", "double")) and str(fld.type).startswith(("int", "float", "double"))):
                bad.append(f)
                detail = detail or f"has column {fld.name!r} of type {fld.type} where schema v{SCHEMA_VERSION} has {want}"
                break
    if not bad:
        return ""
    fix = ("delete or replace them (a partial copy? copy them again from the cluster)" if "cannot be read" in detail
           else "rewrite them with analysis.schema.conform or move them out of the folder")
    return f"{len(bad)} file(s) {detail} (e.g. {_examples(loc, bad)}); {fix}"


def load_results(target: str | os.PathLike[str] | ResultsLocation,
                 sweeps: list[str] | tuple[str, ...] | None = None) -> Results:
    """Locate, scan and validate a results table; raise AnalysisError naming the first problem found.

    ``target``: a local folder or ``s3://`` URL of any of the three kinds ``analysis.storage.locate`` accepts.
    Checks (one pass over a few small columns): there are rows; every file carries a readable schema version;
    every column the analysis needs is present and non-null; column types match the schema.
    """
    loc = target if isinstance(target, ResultsLocation) else locate(target)
    chosen = _chosen_sweeps(loc, sweeps)
    snapshot = read_snapshot(loc, result_files(loc, chosen))
    lf = scan_results(snapshot)
    version_bad = pl.col("schema_version").is_null() | ~pl.col("schema_version").is_in(READABLE_VERSIONS)
    try:
        summary = lf.select(
            pl.len().alias("n_rows"),
            pl.col(FILE_COL).n_unique().alias("n_files"),
            version_bad.sum().alias("version_bad"),
            *[pl.col(c).null_count().alias(f"null:{c}") for c in REQUIRED_FOR_ANALYSIS],
        ).collect()
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise AnalysisError(_read_error(loc, snapshot, exc)) from None
    row = summary.row(0, named=True)
    if row["n_rows"] == 0:
        raise AnalysisError(f"the result files in {loc.given} hold no rows: wait until a trial has reported an "
                            f"evaluation, or remove the empty files")
    if row["version_bad"]:
        bad = lf.filter(version_bad).group_by(FILE_COL).agg(pl.col("schema_version").first()).sort(FILE_COL).collect()
        versions = sorted({"missing" if v is None else f"v{v}" for v in bad["schema_version"].to_list()})
        newer = any(v is not None and v > SCHEMA_VERSION for v in bad["schema_version"].to_list())
        fix = ("upgrade ouvae to read them" if newer else
               "re-export them with analysis.schema.conform (current schema) or move them out of the folder")
        raise AnalysisError(f"{bad.height} result file(s) use results schema {'/'.join(versions)}, this analysis reads "
                            f"{'/'.join(f'v{v}' for v in READABLE_VERSIONS)} (e.g. "
                            f"{_examples(loc, bad[FILE_COL].to_list())}): {fix}")
    missing = [c for c in REQUIRED_FOR_ANALYSIS if row[f"null:{c}"]]
    if missing:
        col = missing[0]
        bad = lf.filter(pl.col(col).is_null()).select(FILE_COL).unique().sort(FILE_COL).collect()[FILE_COL].to_list()
        also = f" (also missing: {', '.join(missing[1:])})" if len(missing) > 1 else ""
        raise AnalysisError(f"column {col!r} is missing or empty in {len(bad)} result file(s) "
                            f"(e.g. {_examples(loc, bad)}){also}: the analysis needs it; these files come "
                            f"from an older or different writer, re-run those trials or move the files out of the folder")
    return Results(location=loc, sweeps=chosen, snapshot=snapshot, lf=lf, n_rows=int(row["n_rows"]),
                   n_files=int(row["n_files"]))


def collect(results: Results, *queries: pl.LazyFrame) -> list[pl.DataFrame]:
    """Collect lazy queries over ``results`` together (one pass where Polars can share the scan).

    A type clash in a column the validation pass did not touch surfaces here; it becomes the same one-line
    AnalysisError naming the file, not a Polars traceback.
    """
    try:
        return pl.collect_all(list(queries))
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise AnalysisError(_read_error(results.location, results.snapshot, exc)) from None


def _read_error(loc: ResultsLocation, snapshot: list[ResultFile], exc: Exception) -> str:
    named = _type_mismatch_files(loc, snapshot)
    if named:
        return f"results in {loc.given} do not match results schema v{SCHEMA_VERSION}: {named}"
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return (f"results in {loc.given} could not be read ({exc.__class__.__name__}: {first}); check that every "
            f"sweep_id=*/*.parquet file is a complete results file of schema v{SCHEMA_VERSION}")

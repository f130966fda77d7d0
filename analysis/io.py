"""Lazy loading and validation of a results folder.

Why a separate module: every later step (fits, tables, plots) trusts what it gets from here, so all checks of
the input live in one place and fail early with one clear message (`AnalysisError`) that names the problem and
the fix, before anything is written. Reading stays lazy (``pl.scan_parquet`` over the hive layout) so a million
rows cost only the columns each query touches.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq

from analysis.schema import COLUMNS, READABLE_VERSIONS, REQUIRED_FOR_ANALYSIS, SCHEMA, SCHEMA_VERSION

FILE_COL = "__file"  # path of the Parquet file each row came from, for messages that name the bad file
# Final-row metrics that must be real numbers for the tables and fits to mean anything.
NUMERIC_METRICS = ("top_kl", "elbo", "iw_bound", "kl_total", "recon")


class AnalysisError(Exception):
    """Input the user can fix. The message is one line: what is wrong, and what to do about it."""


def _polars_schema() -> pl.Schema:
    return pl.Schema(pl.from_arrow(SCHEMA.empty_table()).schema)


def _short(path: str, root: Path) -> str:
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return str(path)


def _examples(paths: list[str], root: Path, total: int) -> str:
    shown = ", ".join(_short(p, root) for p in paths[:3])
    more = f" and {total - 3} more" if total > 3 else ""
    return f"{shown}{more}"


def find_sweeps(root: str | os.PathLike[str]) -> list[str]:
    """Sweep ids present under ``root`` (folders named ``sweep_id=<id>``), sorted."""
    base = Path(root)
    if not base.is_dir():
        return []
    return sorted(p.name.split("=", 1)[1] for p in base.iterdir() if p.is_dir() and p.name.startswith("sweep_id="))


def result_globs(root: str | os.PathLike[str], sweeps: list[str] | tuple[str, ...] | None = None) -> list[str]:
    """The glob pattern(s) to scan, after checking that the folder and the requested sweeps exist.

    Raises AnalysisError for a missing folder, a folder with no result files, or an unknown sweep id.
    """
    base = Path(root)
    if not base.exists():
        raise AnalysisError(f"results folder {base} does not exist: pass the folder the sweep wrote "
                            f"(it holds sweep_id=<id>/<trial>.parquet)")
    if not base.is_dir():
        raise AnalysisError(f"{base} is a file, not a results folder: pass the folder that holds sweep_id=<id>/ "
                            f"subfolders")
    present = find_sweeps(base)
    if sweeps:
        unknown = [s for s in sweeps if s not in present]
        if unknown:
            have = ", ".join(present) if present else "none"
            raise AnalysisError(f"sweep id(s) {', '.join(unknown)} not found in {base} (sweeps present: {have}): "
                                f"check --sweep")
        chosen = list(dict.fromkeys(sweeps))
    else:
        chosen = present
    patterns = [str(base / f"sweep_id={s}" / "*.parquet") for s in chosen]
    files = [f for p in patterns for f in glob.glob(p)]
    empty = sorted(f for f in files if os.path.getsize(f) == 0)
    if empty:
        raise AnalysisError(f"{len(empty)} result file(s) are empty (0 bytes, e.g. {_examples(empty, base, len(empty))}):"
                            f" a writer crashed before its first write; delete them and re-run those trials")
    if not files:
        where = f"sweep(s) {', '.join(chosen)} in {base}" if chosen else str(base)
        raise AnalysisError(f"no result files in {where}: expected {base}/sweep_id=<id>/<trial>.parquet; point the "
                            f"command at the folder the sweep wrote, or wait until a trial has reported")
    return [p for p in patterns if glob.glob(p)]


def scan_results(root: str | os.PathLike[str], sweeps: list[str] | tuple[str, ...] | None = None, *,
                 globs: list[str] | None = None) -> pl.LazyFrame:
    """A lazy frame over every result row, with the full current schema and a ``__file`` column.

    Columns absent from a file come back as nulls (validation then names them); narrower integer/float types are
    upcast. Nothing is read until a query is collected.
    """
    return pl.scan_parquet(
        globs if globs is not None else result_globs(root, sweeps),
        hive_partitioning=True,
        hidden_file_prefix=(".", "_"),  # temp files of atomic writes and _SUCCESS-style markers are not results
        schema=_polars_schema(),
        missing_columns="insert",
        extra_columns="ignore",
        cast_options=pl.ScanCastOptions(integer_cast="upcast", float_cast="upcast"),
        include_file_paths=FILE_COL,
    )


@dataclass
class Results:
    """A validated results folder: the lazy scan plus what validation learnt on the way."""

    root: Path
    sweeps: list[str]
    lf: pl.LazyFrame
    n_rows: int
    n_files: int


def _type_mismatch_files(root: Path, lf_globs: list[str]) -> str:
    """Slow path after a read error: read file footers to name the files that are unreadable or whose column types
    differ from the schema, with the fix for that case."""
    expected = {name: typ for name, typ, _ in COLUMNS}
    bad: list[str] = []
    detail = ""
    files = sorted(f for g in lf_globs for f in glob.glob(g))
    for f in files:
        try:
            schema = pq.read_schema(f)
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
    return f"{len(bad)} file(s) {detail} (e.g. {_examples(bad, root, len(bad))}); {fix}"


def load_results(root: str | os.PathLike[str], sweeps: list[str] | tuple[str, ...] | None = None) -> Results:
    """Scan and validate a results folder; raise AnalysisError naming the first problem found.

    Checks (one pass over a few small columns): there are rows; every file carries the current schema version;
    every column the analysis needs is present and non-null; column types match the schema.
    """
    base = Path(root)
    globs = result_globs(base, sweeps)
    lf = scan_results(base, sweeps, globs=globs)
    chosen = list(dict.fromkeys(sweeps)) if sweeps else find_sweeps(base)
    version_bad = pl.col("schema_version").is_null() | ~pl.col("schema_version").is_in(READABLE_VERSIONS)
    try:
        summary = lf.select(
            pl.len().alias("n_rows"),
            pl.col(FILE_COL).n_unique().alias("n_files"),
            version_bad.sum().alias("version_bad"),
            *[pl.col(c).null_count().alias(f"null:{c}") for c in REQUIRED_FOR_ANALYSIS],
        ).collect()
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise AnalysisError(_read_error(base, globs, exc)) from None
    row = summary.row(0, named=True)
    if row["n_rows"] == 0:
        raise AnalysisError(f"the result files in {base} hold no rows: wait until a trial has reported an evaluation, "
                            f"or remove the empty files")
    if row["version_bad"]:
        bad = lf.filter(version_bad).group_by(FILE_COL).agg(pl.col("schema_version").first()).sort(FILE_COL).collect()
        versions = sorted({"missing" if v is None else f"v{v}" for v in bad["schema_version"].to_list()})
        newer = any(v is not None and v > SCHEMA_VERSION for v in bad["schema_version"].to_list())
        fix = ("upgrade ouvae to read them" if newer else
               "re-export them with analysis.schema.conform (current schema) or move them out of the folder")
        raise AnalysisError(f"{bad.height} result file(s) use results schema {'/'.join(versions)}, this analysis reads "
                            f"{'/'.join(f'v{v}' for v in READABLE_VERSIONS)} (e.g. {_examples(bad[FILE_COL].to_list(), base, bad.height)}): {fix}")
    missing = [c for c in REQUIRED_FOR_ANALYSIS if row[f"null:{c}"]]
    if missing:
        col = missing[0]
        bad = lf.filter(pl.col(col).is_null()).select(FILE_COL).unique().sort(FILE_COL).collect()[FILE_COL].to_list()
        also = f" (also missing: {', '.join(missing[1:])})" if len(missing) > 1 else ""
        raise AnalysisError(f"column {col!r} is missing or empty in {len(bad)} result file(s) "
                            f"(e.g. {_examples(bad, base, len(bad))}){also}: the analysis needs it; these files come "
                            f"from an older or different writer, re-run those trials or move the files out of the folder")
    return Results(root=base, sweeps=chosen, lf=lf, n_rows=int(row["n_rows"]), n_files=int(row["n_files"]))


def collect(results: Results, *queries: pl.LazyFrame) -> list[pl.DataFrame]:
    """Collect lazy queries over ``results`` together (one pass where Polars can share the scan).

    A type clash in a column the validation pass did not touch surfaces here; it becomes the same one-line
    AnalysisError naming the file, not a Polars traceback.
    """
    try:
        return pl.collect_all(list(queries))
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise AnalysisError(_read_error(results.root, result_globs(results.root, results.sweeps), exc)) from None


def _read_error(root: Path, globs: list[str], exc: Exception) -> str:
    named = _type_mismatch_files(root, globs)
    if named:
        return f"results in {root} do not match results schema v{SCHEMA_VERSION}: {named}"
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return (f"results in {root} could not be read ({exc.__class__.__name__}: {first}); check that every "
            f"sweep_id=*/*.parquet file is a complete results file of schema v{SCHEMA_VERSION}")

"""Where the results are: a local folder or an S3 URL, and which of the three folders of a sweep it is.

Why a module of its own: users point the analysis at whatever folder they have -- the ``--storage`` folder a sweep
wrote (``results/``, holding ``parquet/``, ``ray/``, ``reports/``), the Parquet root inside it
(``results/parquet``, holding ``sweep_id=*/``), or one sweep's folder (``results/parquet/sweep_id=NAME``) --
locally or on S3 (``s3://bucket/prefix/...``). All of that is resolved here, once, with PyArrow's filesystems
(one code path for local and S3 listing), into a ``ResultsLocation`` that the reader (``analysis/io.py``) scans
with Polars. Every folder that is none of the three gets a one-line error naming what it is and what to pass.

S3: the bucket and credentials come from the standard AWS variables (``AWS_ACCESS_KEY_ID``, ``AWS_PROFILE``, ...);
``AWS_ENDPOINT_URL`` points both PyArrow and Polars at a non-AWS server (MinIO, moto), with ``AWS_REGION`` /
``AWS_DEFAULT_REGION`` and plain HTTP allowed when the endpoint is ``http://``.
"""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass
from pathlib import Path

import pyarrow.fs as pafs

from analysis.errors import AnalysisError

SWEEP_PREFIX = "sweep_id="
PARQUET_DIR = "parquet"  # <storage>/parquet, as the sweep writes it
REPORTS_DIR = "reports"  # <storage>/reports/<name>, as the sweep writes it
SUPERSEDED_SUFFIX = ".superseded"  # <storage>/parquet.superseded/: files of re-created trials, never analysed
# Files of Ray Tune's experiment folder (<storage>/ray/<name>/) and of the sweep's options.
RAY_MARKERS = ("ouvae_sweep.json", "tuner.pkl", "trainable.pkl")


class FolderKind(enum.Enum):
    """The three folders the analysis accepts."""

    STORAGE_ROOT = "storage folder"  # <storage>: holds parquet/ (and ray/, reports/)
    PARQUET_ROOT = "Parquet root"  # <storage>/parquet: holds sweep_id=<id>/
    SWEEP_FOLDER = "sweep folder"  # <storage>/parquet/sweep_id=<id>


@dataclass(frozen=True)
class ResultsLocation:
    """A resolved results location: the filesystem, the Parquet root in it, and how Polars reaches it."""

    given: str  # what the user passed, for messages
    kind: FolderKind
    filesystem: pafs.FileSystem
    folder: str  # the folder given, as a path of ``filesystem``
    parquet_root: str  # the folder holding sweep_id=<id>/, as a path of ``filesystem``
    sweep: str | None  # the sweep of a sweep folder
    remote: bool
    storage_options: dict[str, str] | None  # Polars' object-store options (remote only)

    def uri(self, path: str) -> str:
        """A path of ``filesystem`` as Polars reads it (``s3://...`` for S3)."""
        return f"s3://{path}" if self.remote else path

    def sweep_dir(self, sweep: str) -> str:
        return f"{self.parquet_root}/{SWEEP_PREFIX}{sweep}"

    def short(self, path: str) -> str:
        """``path`` relative to the folder given (for messages naming files)."""
        path = path.removeprefix("s3://")
        return path[len(self.folder) + 1:] if path.startswith(self.folder + "/") else path

    def default_report_dir(self, sweeps: list[str]) -> Path:
        """Where the report goes without --out.

        A storage folder: ``<storage>/reports/<sweep>`` (where the sweep script writes it; ``all`` for several
        sweeps). A Parquet root or sweep folder: ``<Parquet root>/report``. Remote input: ``./reports/<sweep>``
        in the working directory (the report is always written locally).
        """
        name = sweeps[0] if len(sweeps) == 1 else "all"
        if self.remote:
            return Path(REPORTS_DIR) / name
        if self.kind is FolderKind.STORAGE_ROOT:
            return Path(self.folder) / REPORTS_DIR / name
        return Path(self.parquet_root) / "report"

    def find_sweeps(self) -> list[str]:
        """Sweep ids present (folders named ``sweep_id=<id>``), sorted; only its own for a sweep folder."""
        if self.sweep is not None:
            return [self.sweep]
        infos = _list(self.filesystem, self.parquet_root, self.given, self.remote)
        return sorted(i.base_name[len(SWEEP_PREFIX):] for i in infos
                      if i.type == pafs.FileType.Directory and i.base_name.startswith(SWEEP_PREFIX))

    def list_files(self, sweep: str) -> list[pafs.FileInfo]:
        """The result files of one sweep (temp files of atomic writes and ``_``-markers are not results)."""
        return sorted((i for i in _list(self.filesystem, self.sweep_dir(sweep), self.given, self.remote,
                                        missing_ok=True)
                       if i.type == pafs.FileType.File and i.base_name.endswith(".parquet")
                       and not i.base_name.startswith((".", "_"))), key=lambda i: i.path)


def is_remote(target: str) -> bool:
    return "://" in target and not target.startswith("file://")


def s3_storage_options() -> dict[str, str] | None:
    """Polars' object-store options from the standard AWS variables (None: Polars' own defaults)."""
    opts: dict[str, str] = {}
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if endpoint:
        opts["aws_endpoint_url"] = endpoint
        if endpoint.startswith("http://"):
            opts["aws_allow_http"] = "true"
    if region:
        opts["aws_region"] = region
    return opts or None


def locate(target: str | os.PathLike[str]) -> ResultsLocation:
    """Resolve a local folder or ``s3://`` URL to a ResultsLocation; AnalysisError for anything else."""
    given = str(target)
    if is_remote(given):
        fs, folder = _s3(given)
        remote, options = True, s3_storage_options()
    else:
        local = given[len("file://"):] if given.startswith("file://") else given
        fs, folder = pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(local))
        remote, options = False, None
    folder = folder.rstrip("/")
    info = _info(fs, folder, given, remote)
    if info.type == pafs.FileType.NotFound:
        raise AnalysisError(_not_found(fs, folder, given, remote))
    if info.type != pafs.FileType.Directory:
        raise AnalysisError(f"{given} is a file, not a results folder: pass the folder that holds sweep_id=<id>/ "
                            f"subfolders (or the sweep's storage folder)")
    name = folder.rsplit("/", 1)[-1]
    loc = dict(given=given, filesystem=fs, folder=folder, remote=remote, storage_options=options)
    if name.startswith(SWEEP_PREFIX):
        parent = folder.rsplit("/", 1)[0]
        if parent.endswith(SUPERSEDED_SUFFIX):
            raise AnalysisError(_wrong_folder(given, parent.rsplit("/", 1)[-1], []))
        return ResultsLocation(kind=FolderKind.SWEEP_FOLDER, parquet_root=parent, sweep=name[len(SWEEP_PREFIX):],
                               **loc)
    children = _list(fs, folder, given, remote)
    dirs = {i.base_name for i in children if i.type == pafs.FileType.Directory}
    if any(d.startswith(SWEEP_PREFIX) for d in dirs):
        return ResultsLocation(kind=FolderKind.PARQUET_ROOT, parquet_root=folder, sweep=None, **loc)
    if PARQUET_DIR in dirs:
        return ResultsLocation(kind=FolderKind.STORAGE_ROOT, parquet_root=f"{folder}/{PARQUET_DIR}", sweep=None, **loc)
    raise AnalysisError(_wrong_folder(given, name, children))


def _wrong_folder(given: str, name: str, children: list[pafs.FileInfo]) -> str:
    """The message for a folder that is none of the three kinds: say what it is and what to pass instead."""
    files = {i.base_name for i in children if i.type == pafs.FileType.File}
    pass_instead = "pass the sweep's storage folder (holding parquet/), its parquet/ folder, or parquet/sweep_id=<id>"
    if files & set(RAY_MARKERS) or name == "ray":
        return f"{given} is Ray Tune's experiment folder, not the results table: {pass_instead}"
    if "report.html" in files or name in (REPORTS_DIR, "report"):
        return f"{given} is a report folder, not the results table: {pass_instead}"
    if name.endswith(SUPERSEDED_SUFFIX):
        return (f"{given} holds superseded result files (trials re-created after a crash), which are not analysed: "
                f"{pass_instead}")
    if any(f.endswith(".parquet") for f in files):
        return (f"{given} holds .parquet files but no sweep_id=<id>/ folders: the analysis reads "
                f"<root>/sweep_id=<id>/<trial>.parquet; move the files into a folder named sweep_id=<name>/ and pass "
                f"its parent")
    return f"no result files in {given}: expected parquet/ or sweep_id=<id>/ inside; {pass_instead}"


# ------------------------------------------------------------------------------------------------- S3
def _s3(given: str) -> tuple[pafs.FileSystem, str]:
    if not given.startswith("s3://"):
        scheme = given.split("://", 1)[0]
        raise AnalysisError(f"{given}: {scheme}:// is not supported; give a local folder or an s3://bucket/prefix URL "
                            f"(copy other stores locally first)")
    bucket = given[len("s3://"):].split("/", 1)[0]
    if not bucket:
        raise AnalysisError(f"{given} names no bucket: write s3://<bucket>/<prefix>")
    try:
        return pafs.FileSystem.from_uri(given)
    except (OSError, ValueError) as exc:
        raise AnalysisError(_s3_error(given, bucket, exc)) from None


def _s3_error(given: str, bucket: str, exc: Exception) -> str:
    """One line for an S3 failure, from the AWS error PyArrow reports (it raises OSError with the AWS code)."""
    text = str(exc)
    upper = text.upper()
    if "NO_SUCH_BUCKET" in upper or "NOSUCHBUCKET" in upper:
        return f"S3 bucket {bucket!r} does not exist ({given}): check the bucket name in the URL"
    if any(code in upper for code in ("ACCESS_DENIED", "ACCESSDENIED", "INVALID_ACCESS_KEY", "INVALIDACCESSKEY",
                                      "SIGNATURE_DOES_NOT_MATCH", "SIGNATUREDOESNOTMATCH", "403", "FORBIDDEN")):
        return (f"access to S3 bucket {bucket!r} denied ({given}): check the credentials (AWS_ACCESS_KEY_ID / "
                f"AWS_SECRET_ACCESS_KEY or AWS_PROFILE) and that they may list and read the bucket")
    if "NETWORK_CONNECTION" in upper or "COULD NOT RESOLVE" in upper or "CONNECT" in upper:
        endpoint = os.environ.get("AWS_ENDPOINT_URL", "AWS")
        return (f"cannot reach S3 ({endpoint}) for {given}: check the network, or set AWS_ENDPOINT_URL to your S3 "
                f"server's address")
    first = text.strip().splitlines()[0] if text.strip() else exc.__class__.__name__
    return f"cannot read {given} ({first}): check the URL, the credentials and AWS_ENDPOINT_URL"


def _info(fs: pafs.FileSystem, path: str, given: str, remote: bool) -> pafs.FileInfo:
    try:
        return fs.get_file_info(path)
    except OSError as exc:
        if not remote:
            raise AnalysisError(f"cannot read {given} ({exc.strerror or exc}): check the path and its "
                                f"permissions") from None
        raise AnalysisError(_s3_error(given, path.split("/", 1)[0], exc)) from None


def _list(fs: pafs.FileSystem, path: str, given: str, remote: bool, *, missing_ok: bool = False
          ) -> list[pafs.FileInfo]:
    try:
        return fs.get_file_info(pafs.FileSelector(path, allow_not_found=missing_ok))
    except OSError as exc:
        if not remote:
            raise AnalysisError(f"cannot list {path} ({getattr(exc, 'strerror', None) or exc}): check its "
                                f"permissions") from None
        raise AnalysisError(_s3_error(given, path.split("/", 1)[0], exc)) from None


def _not_found(fs: pafs.FileSystem, folder: str, given: str, remote: bool) -> str:
    if not remote:
        return (f"results folder {given} does not exist: pass the folder the sweep wrote (its storage folder, "
                f"holding parquet/, or the parquet/ folder itself)")
    bucket = folder.split("/", 1)[0]
    if "/" in folder:
        try:  # listing the bucket tells a missing bucket (or no access) from an empty prefix
            fs.get_file_info(pafs.FileSelector(bucket))
        except FileNotFoundError:
            return f"S3 bucket {bucket!r} does not exist ({given}): check the bucket name in the URL"
        except OSError as exc:
            return _s3_error(given, bucket, exc)
        return (f"nothing under {given}: the prefix holds no objects; check the prefix (the sweep's --storage URL, "
                f"its parquet/ folder, or parquet/sweep_id=<name>)")
    return f"S3 bucket {bucket!r} does not exist or holds nothing ({given}): check the bucket name in the URL"

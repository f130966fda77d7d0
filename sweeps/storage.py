"""A sweep's files: the storage they live on, where each goes, and the small files written there.

Storage is a local path, an NFS mount, or an object store URL (``s3://bucket/prefix``). The driver, the Parquet
sink and the resume logic all turn ``--storage`` into files, and must agree on what is remote, how paths join and
how a small file is written without ever leaving half of it. PyArrow's filesystems do the I/O (S3 through the
standard AWS variables: credentials, AWS_REGION, AWS_ENDPOINT_URL for S3-compatible servers such as MinIO), so the
same code serves every kind of storage. Where each file goes (``SweepPaths``): docs/operations.md, "Storage
layout", the one description of it.

A sweep's identity across invocations (new or ``--resume``, using these paths) is sweeps/resume.py.
"""

from __future__ import annotations

import json
import re
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pyarrow.fs as pafs

from ouvae.atomic import write_atomically
from sweeps.errors import SweepError


# ----- local, NFS and S3 locations ----------------------------------------------------------------------------------
def is_remote(uri: str) -> bool:
    return "://" in uri and not uri.startswith("file://")


def absolute(uri: str) -> str:
    """A remote URL as given; a local path (or file:// URL) made absolute, so every process means one place."""
    if is_remote(uri):
        return uri.rstrip("/")
    path = uri[len("file://"):] if uri.startswith("file://") else uri
    return str(Path(path).expanduser().resolve())


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path) for a local path, file://, s3://, gs:// ... (pyarrow's own resolution)."""
    if not is_remote(uri):
        return pafs.LocalFileSystem(), absolute(uri)
    return pafs.FileSystem.from_uri(uri)


def join(uri: str, *parts: str) -> str:
    return "/".join([uri.rstrip("/"), *parts]) if is_remote(uri) else str(Path(uri, *parts))


def write_json(uri: str, data: Any) -> None:
    """A small JSON file, replaced whole: a local temp file renamed into place, or one object-store upload
    (an object appears only once its upload is complete)."""
    fs, path = resolve(uri)
    text = json.dumps(data, indent=2, sort_keys=True).encode()
    if isinstance(fs, pafs.LocalFileSystem):
        write_atomically(path, lambda tmp: tmp.write_bytes(text))
    else:
        fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        with fs.open_output_stream(path) as f:
            f.write(text)


def read_json(uri: str) -> Any | None:
    """The JSON file's content, or None if there is no such file."""
    fs, path = resolve(uri)
    if fs.get_file_info(path).type != pafs.FileType.File:
        return None
    with fs.open_input_stream(path) as f:
        return json.loads(f.readall().decode())


def check_writable(uri: str) -> None:
    """Raise OSError (with the filesystem's own reason) unless a file can be created and deleted under `uri`.

    Why write: on an object store, listing may be allowed where writing is not, and a missing bucket shows only
    when something is written. One tiny object, deleted at once."""
    fs, path = resolve(uri)
    if isinstance(fs, pafs.LocalFileSystem):
        Path(path).mkdir(parents=True, exist_ok=True)
    probe = f"{path.rstrip('/')}/.ouvae-write-check-{uuid.uuid4().hex[:12]}"
    with fs.open_output_stream(probe) as f:
        f.write(b"ok")
    fs.delete_file(probe)


# ----- where a sweep's files go -------------------------------------------------------------------------------------
SPEC_FILE = "ouvae_sweep.json"
LADDER_FILE = "ouvae_ladder.json"


@dataclass(frozen=True)
class SweepPaths:
    storage: str
    ray_storage: str  # Tune's storage_path
    experiment: str  # Tune's experiment folder
    results_root: str  # the Parquet table root
    report_dir: str | None  # None on remote storage (the analysis writes local files)

    @property
    def spec_file(self) -> str:
        return join(self.experiment, SPEC_FILE)

    @property
    def ladder_file(self) -> str:
        return join(self.experiment, LADDER_FILE)


def check_storage(uri: str, option: str = "--storage") -> None:
    """The sweep can write under `uri` (for s3://: the bucket exists and the credentials may write to it)."""
    try:
        check_writable(uri)
    except OSError as e:
        raise SweepError(f"{option} {uri}: cannot write there: {_storage_reason(uri, e)}") from None


# What an object store's client says when the store did not answer (throttling, a server error, a dropped or
# refused connection), after the client's own retries: an outage to wait out, not a wrong URL or credentials.
_TRANSIENT = re.compile(r"SLOW_DOWN|INTERNAL_FAILURE|SERVICE_UNAVAILABLE|THROTTL|NETWORK_CONNECTION|REQUEST_TIMEOUT|"
                        r"curlCode|HTTP status 5\d\d")


def is_transient(error: OSError) -> bool:
    """True when `error` is the storage not answering for now (S3 500/503, throttling, a dropped connection)."""
    return bool(_TRANSIENT.search(str(error)))


def _error_text(error: OSError) -> str:
    """The storage's error without its request id."""
    return re.sub(r"\s*\(Request ID: [^)]*\)", "", str(error)).strip()


def _storage_reason(uri: str, error: OSError) -> str:
    text = _error_text(error)
    if not is_remote(uri):
        return f"{error.strerror or text}; pick a folder you can write to"
    if is_transient(error):
        return (f"the storage did not answer ({text[:200]}); this is an outage or throttling, not a wrong URL: run "
                f"the same command again once it answers")
    bucket = uri.split("://", 1)[1].split("/", 1)[0]
    if "NO_SUCH_BUCKET" in text:
        return f"the bucket {bucket!r} does not exist; create it (aws s3 mb s3://{bucket}) or fix the name"
    if "ACCESS_DENIED" in text or "INVALID_ACCESS_KEY" in text or "SIGNATURE" in text:
        return (f"access to the bucket {bucket!r} is denied with the credentials this machine has; check "
                f"AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE, and the bucket policy ({text[:160]})")
    return f"{text[:240]}; check the URL, the credentials and, for an S3-compatible server, AWS_ENDPOINT_URL"


@contextmanager
def reading_saved_state(where: str) -> Iterator[None]:
    """A resume's reads of a sweep's saved state (its options, the list of sweeps, Tune's experiment): an OSError
    becomes one line -- for a storage not answering (S3 500/503, a dropped connection), that running the same
    ``--resume`` again finishes the sweep. Nothing is written before these reads succeed, so nothing was changed."""
    try:
        yield
    except OSError as e:
        text = (_error_text(e).splitlines() or [type(e).__name__])[0][:240]
        then = ("run the same --resume command again once the storage answers" if is_transient(e) else
                "check the storage's URL and the credentials, then run the same --resume command again")
        raise SweepError(f"--resume: could not read the sweep's saved state in {where} ({text}); nothing was "
                         f"changed: {then}") from None


def sweep_paths(storage: str, name: str, results_dir: str | None = None) -> SweepPaths:
    storage = absolute(storage)
    ray_storage = join(storage, "ray")
    results_root = absolute(results_dir) if results_dir else join(storage, "parquet")
    report = None if is_remote(storage) else join(storage, "reports", name)
    return SweepPaths(storage, ray_storage, join(ray_storage, name), results_root, report)

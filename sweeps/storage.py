"""Locations on the sweep's storage: a local path, an NFS mount, or an object store URL (``s3://bucket/prefix``).

Why one module: the driver, the Parquet sink and the resume logic all turn ``--storage`` into files, and must agree
on what is remote, how paths join and how a small file is written without ever leaving half of it. PyArrow's
filesystems do the I/O (S3 through the standard AWS variables: credentials, AWS_REGION, AWS_ENDPOINT_URL for
S3-compatible servers such as MinIO), so the same code serves every kind of storage.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

from ouvae.atomic import write_atomically


class StorageUnreachable(RuntimeError):
    """A node of the cluster does not see the sweep's storage (a local path on a multi-node cluster): every trial
    on that node would fail alike, so it is not retried (sweeps/failures.py)."""


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

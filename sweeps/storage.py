"""A sweep's files: the storage they live on, where each goes, and the sweep's identity across ``--resume``.

Storage is a local path, an NFS mount, or an object store URL (``s3://bucket/prefix``). The driver, the Parquet
sink and the resume logic all turn ``--storage`` into files, and must agree on what is remote, how paths join and
how a small file is written without ever leaving half of it. PyArrow's filesystems do the I/O (S3 through the
standard AWS variables: credentials, AWS_REGION, AWS_ENDPOINT_URL for S3-compatible servers such as MinIO), so the
same code serves every kind of storage. Where each file goes (``SweepPaths``): docs/operations.md, "Storage
layout", the one description of it.

A sweep's identity across invocations: a new sweep starts under a free name and saves its options (every option
but those of ``RUNTIME_OPTIONS``) in ``ouvae_sweep.json``; ``--resume`` reads them back, so the resumed sweep is the
same sweep: an option named again on the command line must have the value the sweep was started with, else the
resume is refused (with the options that differ). Only the per-invocation options (cluster address, local Ray
size, output, ``--retry-failed``) may change.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

from ouvae.atomic import write_atomically
from sweeps.cli import RUNTIME_OPTIONS, CommandLine, SweepError


# ----- local, NFS and S3 locations ----------------------------------------------------------------------------------
class StorageUnreachable(RuntimeError):
    """A node of the cluster does not see the sweep's storage (a local path on a multi-node cluster): every trial
    on that node would fail alike, so it is not retried (sweeps/trainable.py: NOT_RETRIED)."""


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
_BAD_NAME_CHARACTERS = set("/\\= \t\n:*?\"'<>|")


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


def _storage_reason(uri: str, error: OSError) -> str:
    text = re.sub(r"\s*\(Request ID: [^)]*\)", "", str(error)).strip()
    if not is_remote(uri):
        return f"{error.strerror or text}; pick a folder you can write to"
    bucket = uri.split("://", 1)[1].split("/", 1)[0]
    if "NO_SUCH_BUCKET" in text:
        return f"the bucket {bucket!r} does not exist; create it (aws s3 mb s3://{bucket}) or fix the name"
    if "ACCESS_DENIED" in text or "INVALID_ACCESS_KEY" in text or "SIGNATURE" in text:
        return (f"access to the bucket {bucket!r} is denied with the credentials this machine has; check "
                f"AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE, and the bucket policy ({text[:160]})")
    return f"{text[:240]}; check the URL, the credentials and, for an S3-compatible server, AWS_ENDPOINT_URL"


def sweep_paths(storage: str, name: str, results_dir: str | None = None) -> SweepPaths:
    storage = absolute(storage)
    ray_storage = join(storage, "ray")
    results_root = absolute(results_dir) if results_dir else join(storage, "parquet")
    report = None if is_remote(storage) else join(storage, "reports", name)
    return SweepPaths(storage, ray_storage, join(ray_storage, name), results_root, report)


def default_name(prefix: str) -> str:
    return f"{prefix}-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"


def check_name(name: str) -> str:
    """A sweep name is a folder name, a Parquet partition value and part of object keys: plain characters only."""
    bad = "".join(sorted(set(name) & _BAD_NAME_CHARACTERS))
    if not name or bad or name.startswith("."):
        problem = f"{bad!r} cannot be part of it" if bad else "it cannot be empty or start with '.'"
        raise SweepError(f"--name {name!r}: {problem}; use letters, digits, '-', '_' and '.' (not first)")
    return name


# ----- a sweep across invocations: new or --resume ------------------------------------------------------------------
def open_sweep(cmd: CommandLine, script: str, prefix: str) -> tuple[argparse.Namespace, str, SweepPaths]:
    """(args, name, paths) of the sweep to run: a new one named --name (or a dated default), or with --resume
    the named (default: newest) sweep of `script` in --storage, with the options it was started with."""
    args = cmd.args
    if not args.resume:
        name = check_name(args.name or default_name(prefix))
        return args, name, sweep_paths(args.storage, name, args.results_dir)
    check_storage(args.storage)  # a resume reads there first
    name = args.name or newest_sweep(args.storage, script)
    if name is None:
        raise SweepError(f"--resume: no {script} sweep found in {join(absolute(args.storage), 'ray')}; give "
                         f"--name (and --storage if it is elsewhere)")
    paths = sweep_paths(args.storage, check_name(name), args.results_dir)
    args = load_spec(paths, script, cmd, name)
    return args, name, sweep_paths(args.storage, name, args.results_dir)


def newest_sweep(storage: str, script: str) -> str | None:
    """Name of the newest sweep in <storage>/ray made by `script` (for --resume without --name)."""
    fs, base = resolve(join(absolute(storage), "ray"))
    found = []
    for folder in fs.get_file_info(pafs.FileSelector(base, allow_not_found=True)):
        if folder.type != pafs.FileType.Directory:
            continue
        spec = fs.get_file_info(f"{folder.path}/{SPEC_FILE}")
        if spec.type != pafs.FileType.File:
            continue
        try:
            with fs.open_input_stream(spec.path) as f:
                data = json.loads(f.readall().decode())
        except (OSError, ValueError):
            continue
        if data.get("script") == script:
            found.append((spec.mtime_ns or 0, folder.base_name))
    return max(found)[1] if found else None


def prepare_new(paths: SweepPaths, name: str) -> None:
    """Refuse to start a fresh sweep over an existing one (its rows would be mixed or superseded)."""
    from ray.tune import Tuner

    from sweeps.results import sweep_exists  # the table's module imports this one

    if read_json(paths.spec_file) is not None or Tuner.can_restore(paths.experiment):
        raise SweepError(f"a sweep named {name!r} already exists in {paths.ray_storage}: continue it with "
                         f"--resume --name {name}, or pick another --name")
    if sweep_exists(paths.results_root, name):
        raise SweepError(f"the results table {paths.results_root} already has rows for sweep_id={name}: pick another "
                         f"--name (or --resume --name {name} if it is the same sweep)")


def save_spec(paths: SweepPaths, script: str, args: argparse.Namespace) -> None:
    spec = {k: v for k, v in vars(args).items() if k not in RUNTIME_OPTIONS}
    spec["results_dir"] = paths.results_root  # absolute: a resume from another folder finds the same table
    write_json(paths.spec_file, {"script": script, "args": spec, "created": _dt.datetime.now().isoformat()})


def load_spec(paths: SweepPaths, script: str, cmd: CommandLine, name: str) -> argparse.Namespace:
    """The saved sweep options with this invocation's runtime options on top; refuses sweep options named on the
    command line with another value than the sweep's."""
    from ray.tune import Tuner

    data = read_json(paths.spec_file)
    started = Tuner.can_restore(paths.experiment) or read_json(paths.ladder_file) is not None  # a ladder: its rungs
    if data is None or not started:
        raise SweepError(f"--resume: no resumable sweep at {paths.experiment} (it needs {SPEC_FILE} and Ray's "
                         f"experiment state; a sweep killed before its first snapshot cannot be resumed -- start "
                         f"it again under a new --name)")
    if data.get("script") != script:
        raise SweepError(f"--resume: {paths.experiment} was made by {data.get('script')}, not {script}")
    saved, args = data["args"], cmd.args
    given = {k: getattr(args, k) for k in cmd.given if k not in RUNTIME_OPTIONS}
    if "results_dir" in given:
        given["results_dir"] = absolute(given["results_dir"])
    clash = {k: (v, saved.get(k)) for k, v in given.items() if saved.get(k, cmd.defaults.get(k)) != v}
    if clash:
        detail = ", ".join(f"{k} {new!r} (the sweep has {old!r})" for k, (new, old) in sorted(clash.items()))
        raise SweepError(f"--resume cannot change the sweep's options: {detail}; drop them or start a new --name")
    runtime = {k: getattr(args, k) for k in RUNTIME_OPTIONS}
    return argparse.Namespace(**{**cmd.defaults, **saved, **runtime, "name": name})


def resume_command(script: str, name: str, storage: str, *, retry_failed: bool = False) -> str:
    """The command that continues this sweep."""
    parts = [f"python sweeps/{script}.py --resume", "--retry-failed" if retry_failed else "", f"--name {name}",
             f"--storage {storage}" if storage != "results" else ""]
    return " ".join(p for p in parts if p)

"""A sweep across invocations: a new sweep's name and saved options, and ``--resume`` of the sweep they describe.

A sweep's identity across invocations: a new sweep starts under a free name and saves its options (every option
but those of ``RUNTIME_OPTIONS``) in ``ouvae_sweep.json``; ``--resume`` reads them back, so the resumed sweep is the
same sweep: an option named again on the command line must have the value the sweep was started with, else the
resume is refused (with the options that differ). Only the per-invocation options (cluster address, local Ray
size, output, ``--retry-failed``) may change.

Why a module of its own, above the results table (sweeps/results.py): refusing to start a new sweep over an
existing one reads that table, and reading a sweep back reads the storage's small files (sweeps/storage.py), so
this sits above both and neither needs to import it.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json

import pyarrow.fs as pafs

from sweeps.cli import RUNTIME_OPTIONS, CommandLine
from sweeps.errors import SweepError
from sweeps.results import sweep_exists
from sweeps.storage import (SPEC_FILE, SweepPaths, absolute, check_storage, join, read_json, reading_saved_state,
                            resolve, sweep_paths, write_json)


_BAD_NAME_CHARACTERS = set("/\\= \t\n:*?\"'<>|")


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
    with reading_saved_state(absolute(args.storage)):  # the storage not answering: one line, nothing changed
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
        # Not readable now (OSError) is raised, not skipped: skipping would resume an older sweep than the newest.
        with fs.open_input_stream(spec.path) as f:
            text = f.readall().decode()
        try:
            data = json.loads(text)
        except ValueError:  # not a spec this version wrote
            continue
        if data.get("script") == script:
            found.append((spec.mtime_ns or 0, folder.base_name))
    return max(found)[1] if found else None


def prepare_new(paths: SweepPaths, name: str) -> None:
    """Refuse to start a fresh sweep over an existing one (its rows would be mixed or superseded)."""
    from ray.tune import Tuner

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

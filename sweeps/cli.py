"""Command-line plumbing shared by the sweep scripts: options, validation, Ray connection, storage layout.

Why shared: `critical_rho.py` and `anneal_search.py` must accept the same trainer overrides, resources, storage
and resume options, and must refuse the same bad input the same way -- with a one-line message and exit code 2
*before* Ray starts or any trial runs.

Storage layout (``--storage``, a local path, an NFS mount or ``s3://bucket/prefix``)::

    <storage>/ray/<name>/                Ray Tune's experiment folder (trial checkpoints, experiment state)
    <storage>/ray/<name>/ouvae_sweep.json the sweep's own arguments, so ``--resume`` rebuilds the same sweep
    <storage>/parquet/sweep_id=<name>/   the results table (one <trial_id>.parquet per trial)
    <storage>/reports/<name>/            the analysis report (local storage only)
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from ouvae.config import ConfigError, PRESETS, parse_assignment
from sweeps.results import is_remote, join, read_json, sweep_exists, write_json
from sweeps.space import SpaceError

SPEC_FILE = "ouvae_sweep.json"
EXIT_BAD_INPUT = 2


class SweepError(RuntimeError):
    """The sweep cannot start (bad option, unreachable cluster, name clash ...). The message says the fix."""


# ----- options ------------------------------------------------------------------------------------------------
def add_trainer_arguments(p: argparse.ArgumentParser, *, default_preset: str = "demo") -> None:
    g = p.add_argument_group("trainer")
    g.add_argument("--preset", default=default_preset,
                   help=f"named trainer preset, one of {sorted(PRESETS)} (default: {default_preset})")
    g.add_argument("--dataset", help="dataset name (default: the preset's), e.g. digits, mnist, fashion_mnist")
    g.add_argument("--epochs", type=int, help="training budget in epochs (default: the preset's; critical_rho.py uses 30 for the demo preset)")
    g.add_argument("--steps", type=int, help="training budget in optimizer steps (overrides --epochs)")
    g.add_argument("--n-train", type=int, help="cap on training images (default: the whole training split)")
    g.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="any trainer Config field, repeatable: --set eval_iw_k=100 --set smooth=encoder "
                        "--set hidden_units=100 (see ouvae/config.py for every field)")


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("cluster and resources")
    g.add_argument("--address", default=os.environ.get("RAY_ADDRESS"),
                   help="Ray cluster to join: host:port of the head node, 'auto', or ray://host:10001 "
                        "(default: $RAY_ADDRESS, else start a local Ray in this process)")
    g.add_argument("--num-cpus", type=int, help="CPUs for the local Ray (default: all cores); ignored with --address")
    g.add_argument("--num-gpus", type=int, help="GPUs for the local Ray (default: detected); ignored with --address")
    g.add_argument("--cpus-per-trial", type=float, default=1.0, help="CPUs per trial (default 1)")
    g.add_argument("--gpus-per-trial", type=float, default=0.0,
                   help="GPUs per trial, fractional to pack trials on a GPU: 0.25 runs four per GPU (default 0)")
    g.add_argument("--max-concurrent", type=int, default=None,
                   help="at most this many trials at once (default: as many as resources allow)")
    g.add_argument("--max-failures", type=int, default=2,
                   help="retries of a failed trial from its last checkpoint before it is reported failed (default 2)")
    g.add_argument("--no-reuse-actors", dest="reuse_actors", action="store_false",
                   help="start a fresh worker process per trial (default: reuse workers, much less overhead)")
    s = p.add_argument_group("storage and resume")
    s.add_argument("--storage", default="results",
                   help="where everything goes: local path, NFS mount or s3://bucket/prefix (default: ./results). "
                        "Multi-node clusters need a location every node can reach (NFS or S3)")
    s.add_argument("--results-dir", default=None,
                   help="Parquet table root (default: <storage>/parquet); sweeps share it, one sweep_id=<name> each")
    s.add_argument("--name", default=None, help="sweep name = results sweep_id (default: <script>-<time>)")
    s.add_argument("--resume", action="store_true",
                   help="continue the sweep --name (default: the newest one in --storage) after a crash or Ctrl-C; "
                        "the sweep's own options are read back from its folder")
    s.add_argument("--retry-failed", action="store_true",
                   help="with --resume: also re-run trials that had failed, from their last checkpoint")
    o = p.add_argument_group("output")
    o.add_argument("--no-report", action="store_true", help="skip the analysis report at the end")
    o.add_argument("--quiet", action="store_true", help="no per-trial progress lines")


# Options that belong to *this invocation*, not to the sweep: they may differ on --resume.
# --results-dir is *not* one of them: the restored sink keeps writing where the sweep started.
RUNTIME_OPTIONS = ("address", "num_cpus", "num_gpus", "resume", "retry_failed", "no_report", "quiet", "storage",
                   "name")


def fixed_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Trainer overrides common to every trial: the shorthands plus every --set KEY=VALUE, typed by the
    Config field (a typo in a key fails here with a suggestion)."""
    out: dict[str, Any] = {}
    for text in args.overrides or ():
        try:
            key, value = parse_assignment(text)
        except ConfigError as e:
            raise SweepError(f"--set {e}") from None
        out[key] = value
    for key in ("dataset", "epochs", "steps", "n_train"):
        value = getattr(args, key, None)
        if value is not None:
            out[key] = value
    return out


def check_dataset(name: str) -> None:
    """Unknown dataset names fail now; whether the files are present is checked by the trial itself."""
    try:
        from ouvae.data import DATASETS
    except ImportError:  # pragma: no cover - data module missing: the trainer reports it per trial
        return
    if name not in DATASETS:
        raise SweepError(f"unknown dataset {name!r}: choose one of {sorted(DATASETS)}")


def check_resources_args(args: argparse.Namespace) -> None:
    if not args.cpus_per_trial > 0:
        raise SweepError(f"--cpus-per-trial {args.cpus_per_trial} must be > 0 (fractions such as 0.5 are allowed)")
    if args.gpus_per_trial < 0:
        raise SweepError(f"--gpus-per-trial {args.gpus_per_trial} must be >= 0")
    if args.gpus_per_trial > 1 and args.gpus_per_trial != int(args.gpus_per_trial):
        raise SweepError(f"--gpus-per-trial {args.gpus_per_trial}: above 1 GPU use a whole number")
    if args.max_failures < 0:
        raise SweepError(f"--max-failures {args.max_failures} must be >= 0")
    if args.max_concurrent is not None and args.max_concurrent < 1:
        raise SweepError(f"--max-concurrent {args.max_concurrent} must be >= 1")


def threads_per_trial(args: argparse.Namespace, fixed: Mapping[str, Any]) -> int | None:
    """torch threads = the CPUs a trial holds (at least 1), unless --set num_threads=... says otherwise."""
    if "num_threads" in fixed:
        return fixed["num_threads"]
    return max(1, int(args.cpus_per_trial))


# ----- storage ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SweepPaths:
    storage: str
    ray_storage: str  # Tune's storage_path
    experiment: str  # Tune's experiment folder
    results_root: str  # the Parquet table root
    report_dir: str | None  # None on remote storage (analysis reads local files)

    @property
    def spec_file(self) -> str:
        return join(self.experiment, SPEC_FILE)


def absolute_storage(storage: str) -> str:
    return storage if is_remote(storage) else str(Path(storage).expanduser().resolve())


def sweep_paths(storage: str, name: str, results_dir: str | None = None) -> SweepPaths:
    storage = absolute_storage(storage)
    ray_storage = join(storage, "ray")
    results_root = absolute_storage(results_dir) if results_dir else join(storage, "parquet")
    report = None if is_remote(storage) else join(storage, "reports", name)
    return SweepPaths(storage, ray_storage, join(ray_storage, name), results_root, report)


def default_name(prefix: str) -> str:
    return f"{prefix}-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"


def check_name(name: str) -> str:
    bad = set(name) & set("/\\= \t\n:*?\"'<>|")
    if not name or bad or name.startswith("."):
        raise SweepError(f"--name {name!r}: use letters, digits, '-', '_' and '.' (no {''.join(sorted(bad))!r})")
    return name


def newest_sweep(storage: str, script: str) -> str | None:
    """Name of the newest sweep folder in <storage>/ray made by `script` (for --resume without --name)."""
    if is_remote(storage):
        return None
    base = Path(absolute_storage(storage), "ray")
    if not base.is_dir():
        return None
    found = []
    for d in base.iterdir():
        spec = d / SPEC_FILE
        if spec.is_file():
            try:
                data = json.loads(spec.read_text())
            except (OSError, ValueError):
                continue
            if data.get("script") == script:
                found.append((spec.stat().st_mtime, d.name))
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


def load_spec(paths: SweepPaths, script: str, args: argparse.Namespace, parser: argparse.ArgumentParser
              ) -> argparse.Namespace:
    """The saved sweep options with this invocation's runtime options on top. Sweep options given again on
    the command line must match the saved ones (a resumed sweep cannot change what it sweeps)."""
    from ray.tune import Tuner

    data = read_json(paths.spec_file)
    if data is None or not Tuner.can_restore(paths.experiment):
        raise SweepError(f"--resume: no resumable sweep at {paths.experiment} (it needs {SPEC_FILE} and Ray's "
                         f"experiment state; a sweep killed before its first snapshot cannot be resumed -- start "
                         f"it again under a new --name)")
    if data.get("script") != script:
        raise SweepError(f"--resume: {paths.experiment} was made by {data.get('script')}, not {script}")
    saved = data["args"]
    if args.results_dir:
        args.results_dir = absolute_storage(args.results_dir)
    defaults = vars(parser.parse_args([]))
    given = {k: v for k, v in vars(args).items() if k not in RUNTIME_OPTIONS and v != defaults.get(k)}
    clash = {k: (v, saved.get(k)) for k, v in given.items() if k in saved and saved[k] != v}
    if clash:
        detail = ", ".join(f"--{k.replace('_', '-')} {new!r} (sweep has {old!r})" for k, (new, old) in clash.items())
        raise SweepError(f"--resume cannot change the sweep's options: {detail}; drop them or start a new --name")
    merged = {**defaults, **saved, **{k: getattr(args, k) for k in RUNTIME_OPTIONS}}
    return argparse.Namespace(**merged)


# ----- Ray --------------------------------------------------------------------------------------------------------
def open_sweep(args: argparse.Namespace, parser: argparse.ArgumentParser, script: str, prefix: str
               ) -> tuple[argparse.Namespace, str, SweepPaths]:
    """(args, name, paths) of the sweep to run: a new one named --name (or a dated default), or with --resume
    the named (default: newest) sweep of `script` in --storage, with the options it was started with."""
    if not args.resume:
        name = check_name(args.name or default_name(prefix))
        return args, name, sweep_paths(args.storage, name, args.results_dir)
    name = args.name or newest_sweep(args.storage, script)
    if name is None:
        raise SweepError(f"--resume: no {script} sweep found in {absolute_storage(args.storage)}/ray; "
                         f"give --name (and --storage if it is elsewhere)")
    paths = sweep_paths(args.storage, check_name(name), args.results_dir)
    args = load_spec(paths, script, argparse.Namespace(**{**vars(args), "name": name}), parser)
    return args, name, sweep_paths(args.storage, name, args.results_dir)


def connect_and_announce(args: argparse.Namespace, script: str, name: str, paths: SweepPaths, t_start: float,
                         *, extra_pythonpath: str | None = None) -> None:
    """Join or start Ray, check the per-trial request fits, and print where results go and how to resume."""
    import time

    how = connect(args, extra_pythonpath=extra_pythonpath)
    res = check_cluster_fits(args)
    print(f"  Ray: {how} ({res['CPU']:g} CPUs, {res['GPU']:g} GPUs), {time.monotonic() - t_start:.1f} s")
    print(f"  results table: {paths.results_root}/sweep_id={name}/")
    print(f"  resume after a crash or Ctrl-C: python sweeps/{script}.py --resume --name {name}"
          + (f" --storage {args.storage}" if args.storage != "results" else ""), flush=True)


def quiet_tune_output() -> None:
    """Our ProgressLine replaces Tune's tables. Ray 2.60's default output engine prints them whatever
    `verbose` says; the legacy engine (RAY_AIR_NEW_OUTPUT=0) honours verbose=0. Called by the scripts' main(),
    not on import, so importing sweeps changes nothing."""
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")


def check_address(address: str, timeout_s: float = 5.0) -> None:
    """Fail fast on an unreachable --address (ray.init would otherwise retry for minutes)."""
    if address in ("auto", "local"):
        return
    target = address.split("://", 1)[1] if "://" in address else address
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit():
        raise SweepError(f"--address {address!r}: expected host:port (e.g. 10.0.0.5:6379), ray://host:10001 or auto")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            pass
    except OSError as e:
        raise SweepError(f"--address {address}: cannot reach a Ray head at {host}:{port} ({e.strerror or e}); start "
                         f"one with `ray start --head` or check the address/firewall") from None


def connect(args: argparse.Namespace, *, extra_pythonpath: str | None = None) -> str:
    """Start or join Ray; returns a short description."""
    import logging

    import ray

    if args.address:
        check_address(args.address)
    if ray.is_initialized():  # e.g. a notebook or a test session that already holds Ray
        return "existing Ray session"
    runtime_env = None
    if extra_pythonpath:  # the package is not installed: let workers import it from the checkout
        path = os.pathsep.join(p for p in (extra_pythonpath, os.environ.get("PYTHONPATH")) if p)
        runtime_env = {"env_vars": {"PYTHONPATH": path}}
    if args.address:
        try:
            ray.init(address=args.address, logging_level=logging.WARNING, runtime_env=runtime_env,
                     logging_config=ray.LoggingConfig(log_level="WARNING"))
        except Exception as e:  # noqa: BLE001 - any connection failure becomes one clear message
            raise SweepError(f"--address {args.address}: could not join the Ray cluster: {e}") from None
        return f"joined Ray cluster at {args.address}"
    ray.init(num_cpus=args.num_cpus, num_gpus=args.num_gpus, include_dashboard=False,
             logging_level=logging.WARNING, runtime_env=runtime_env,
             logging_config=ray.LoggingConfig(log_level="WARNING"))  # workers: no per-checkpoint INFO lines
    return "started a local Ray"


def check_cluster_fits(args: argparse.Namespace) -> dict[str, float]:
    """A trial asking for more than the cluster has would wait forever: refuse (local) or warn (cluster,
    which may autoscale)."""
    import ray

    res = ray.cluster_resources()
    cpus, gpus = res.get("CPU", 0.0), res.get("GPU", 0.0)
    problems = []
    if args.cpus_per_trial > cpus:
        problems.append(f"--cpus-per-trial {args.cpus_per_trial} but the cluster has {cpus:g} CPUs")
    if args.gpus_per_trial > gpus:
        problems.append(f"--gpus-per-trial {args.gpus_per_trial} but the cluster has {gpus:g} GPUs")
    if problems:
        msg = "; ".join(problems)
        if not args.address:
            raise SweepError(f"{msg}: no trial could ever start; lower the per-trial request")
        print(f"warning: {msg}; trials will wait until the cluster (autoscaler) provides them", file=sys.stderr)
    return {"CPU": cpus, "GPU": gpus}


def trainable(args: argparse.Namespace):
    from ray import tune

    from sweeps.trainable import train_ouvae

    resources = {"cpu": args.cpus_per_trial, "gpu": args.gpus_per_trial}
    return tune.with_resources(train_ouvae, resources)


def error_exit(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return EXIT_BAD_INPUT


BAD_INPUT = (SweepError, SpaceError, ConfigError)


def main(run: Callable[[argparse.Namespace, argparse.ArgumentParser], int], parser: argparse.ArgumentParser,
         argv: list[str] | None, *, extra_errors: tuple[type[Exception], ...] = ()) -> int:
    """A sweep script's main(): parse, run; bad input becomes one line on stderr and exit code 2 (nothing has
    started yet), Ctrl-C exit code 130 with how to resume."""
    args = parser.parse_args(argv)
    quiet_tune_output()
    try:
        return run(args, parser)
    except (*BAD_INPUT, *extra_errors) as e:
        return error_exit(str(e))
    except KeyboardInterrupt:
        print("\ninterrupted: resume with --resume --name <name> (printed above)", file=sys.stderr)
        return 130


def format_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in header]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)

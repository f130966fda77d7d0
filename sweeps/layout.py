"""Where a sweep's files go on its storage (``--storage``: a local path, an NFS mount or ``s3://bucket/prefix``)::

    <storage>/ray/<name>/                 Ray Tune's experiment folder (trial folders with their checkpoints, state)
    <storage>/ray/<name>/ouvae_sweep.json  the sweep's own options, so ``--resume`` rebuilds the same sweep
    <storage>/ray/<name>/rung-<k>/        --until-converged: the Tune experiment of each rung (sweeps/ladder.py)
    <storage>/ray/<name>/ouvae_ladder.json  --until-converged: the ladder's own state
    <storage>/parquet/sweep_id=<name>/    the results table (one <trial_id>.parquet per trial, sweeps/table.py)
    <storage>/reports/<name>/             the analysis report (local storage only)
    <storage>/optuna/<name>.log           anneal_search: the Optuna study (local storage only)
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass

from sweeps.cli import SweepError
from sweeps.storage import absolute, is_remote, join

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

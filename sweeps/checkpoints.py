"""Per-trial checkpoints kept by the trainable itself, in the trial's folder on the sweep's storage.

Why not Tune's checkpoints (``tune.report(..., checkpoint=...)`` with ``CheckpointConfig(num_to_keep)``): Tune
deletes a trial's oldest checkpoint the moment a newer one registers, but records the newer one only in its *next*
experiment snapshot. A driver killed in between (found with a loopback multi-node cluster) leaves a snapshot that names a
deleted checkpoint, and ``--resume`` then fails the trial with "Could not recover from checkpoint as it does not
exist on storage anymore" (ray-project/ray#27790). Without ``num_to_keep`` a fine grid keeps every checkpoint of
every trial (10,000 trials x evaluations x model size).

Re-checked in Ray 2.60.0 (the installed version's source, 2026-11-30): ``_CheckpointManager.register_checkpoint``
(ray/train/_internal/checkpoint_manager.py) still deletes the checkpoints beyond ``num_to_keep`` synchronously,
as each new one is registered; the experiment snapshot (ray/tune/execution/experiment_state.py) is still
throttled to every ``max(10 s, 19 x the time a snapshot takes)``; and a restored trial whose recorded checkpoint is
gone still fails (ray/tune/trainable/trainable.py, "does not exist on storage anymore"). With evaluations every
few seconds, two registrations between snapshots are the norm, so the bug still applies.

Here the trial does not need Tune to remember anything: at start it lists its own folder and continues from the
newest complete checkpoint, whichever snapshot Tune restored and whether Tune restarted it after a failure
(``FailureConfig``) or after ``--resume``. A checkpoint is written next to its final name and then moved there
(a rename on local disks and NFS, a server-side copy on object stores), so a listed ``step_*.pt`` is
always complete; the newest ``keep`` are kept while the trial runs, only the final one once it is done (the
final checkpoint still matters: a trial the driver never recorded as done re-sends its rows from it).

Failures: an I/O error (listing or reading the folder) propagates as OSError -- transient, Tune retries the
trial; a checkpoint that was read but cannot be loaded is damaged and the one before is tried; when none can be
loaded, CheckpointError (deterministic: a retry would read the same files; sweeps/failures.py does not retry it).

Layout: ``<trial folder>/ouvae_checkpoints/step_<step, 12 digits>.pt`` (``Population.save_checkpoint``'s file: a
trial trains a run alone, which is a population of one, or a population of runs).
Any pyarrow filesystem works: Tune's own storage filesystem is used, so S3/GCS/NFS need no extra set-up.
"""

from __future__ import annotations

import logging
import re
import tempfile
import uuid
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

from ouvae.checkpoint import CHECKPOINT_FILE, CheckpointFormatError
from ouvae.config import ConfigError
from ouvae.population import Population

logger = logging.getLogger(__name__)

FOLDER = "ouvae_checkpoints"
KEEP = 2  # the newest checkpoint plus one spare, in case the newest cannot be read
_NAME = re.compile(r"^step_(\d+)\.pt$")


class CheckpointError(RuntimeError):
    """No checkpoint of a trial can be read, although some exist."""


class TrialCheckpoints:
    """The checkpoints of one trial in `folder` on filesystem `fs` (see the module docstring)."""

    def __init__(self, fs: pafs.FileSystem, folder: str, keep: int = KEEP):
        if keep < 1:
            raise ValueError(f"keep={keep}: keep at least one checkpoint")
        self.fs, self.folder, self.keep = fs, folder.rstrip("/"), keep

    @classmethod
    def of_current_trial(cls) -> "TrialCheckpoints":
        """The running Tune trial's store, on Tune's storage filesystem (local, NFS, s3:// ...)."""
        from sweeps.compat import trial_storage

        fs, trial_folder = trial_storage()
        return cls(fs, f"{trial_folder}/{FOLDER}")

    def path(self, step: int) -> str:
        return f"{self.folder}/step_{step:012d}.pt"

    def steps(self) -> list[int]:
        """Steps with a complete checkpoint, oldest first (OSError if the folder cannot be listed)."""
        infos = self.fs.get_file_info(pafs.FileSelector(self.folder, allow_not_found=True))
        found = (_NAME.match(i.base_name) for i in infos if i.type == pafs.FileType.File)
        return sorted(int(m.group(1)) for m in found if m)

    def save(self, population: Population) -> str:
        """Write the population's state as the checkpoint of its current step, then drop all but the newest
        `keep` (all but this one once every member is done: final, or failed)."""
        final = self.path(population.step)
        staging = f"{self.folder}/.staging-{uuid.uuid4().hex}.pt"
        self.fs.create_dir(self.folder, recursive=True)
        with tempfile.TemporaryDirectory(prefix="ouvae-ckpt-") as d:
            local = population.save_checkpoint(d)
            with self.fs.open_output_stream(staging) as out:
                out.write(local.read_bytes())
        self.fs.move(staging, final)
        done = population.done
        for step in self.steps()[:-(1 if done else self.keep)]:
            self.fs.delete_file(self.path(step))
        return final

    def load_newest(self, **kwargs: Any) -> Population | None:
        """The population restored from the newest readable checkpoint (older ones are tried if it cannot be
        read; `kwargs` go to Population.from_checkpoint); None if the trial has none. Leftover staging files of a
        run that died mid-save are removed."""
        self._remove_staging()
        steps = self.steps()
        errors = []
        for step in reversed(steps):
            with tempfile.TemporaryDirectory(prefix="ouvae-ckpt-") as d:
                with self.fs.open_input_file(self.path(step)) as f:  # an I/O error propagates: transient
                    Path(d, CHECKPOINT_FILE).write_bytes(f.read())
                try:
                    return Population.from_checkpoint(d, **kwargs)
                except (CheckpointFormatError, ConfigError) as e:  # a damaged or foreign file: try the one before
                    logger.warning("checkpoint %s cannot be read (%s); trying an older one", self.path(step), e)
                    errors.append(f"step {step}: {type(e).__name__}: {e}")
        if errors:
            raise CheckpointError(f"none of the trial's checkpoints in {self.folder} can be read ({'; '.join(errors)})"
                                  f"; delete that folder to restart the trial from scratch")
        return None

    def _remove_staging(self) -> None:
        try:
            infos = self.fs.get_file_info(pafs.FileSelector(self.folder, allow_not_found=True))
        except OSError:
            return
        for info in infos:
            if info.base_name.startswith(".staging-"):
                self.fs.delete_file(info.path)

"""The worker side of a sweep: the function trainable and its own checkpoints.

The Ray Tune function trainable: one trial trains one run, or a population of runs as one batched model.

The contract with the driver is docs/architecture.md, section 3 ("Trainable -> driver"); what the driver reads of
it (the trial config's keys, the runs of a trial, a failure's last result) is sweeps/protocol.py, which imports no
torch: the driver's callbacks read a trial without loading the worker.

Why it lives in the package: Ray workers import the trainable by module path, so it must be importable on
every node (a function defined in a script is not).

Contract with the rest of `sweeps`:

* the trial config is a flat dict of ``ouvae.config.Config`` fields plus ``preset`` (the preset the fields
  override); unknown keys fail the trial with ConfigError before any training. A population trial also has
  ``population``: the overrides its members share (e.g. ``latent_dims``) and ``members``, one dict of overrides
  per member (``rho``, ``seed``, ...); ouvae/population.py trains them as one model;
* the trial checkpoints at the config's cadence (``checkpoint_every_steps`` / ``_minutes``; by default with every
  evaluation on a CPU, every 10 minutes on a GPU) and always with its final evaluation, before reporting it
  (see below: the population's checkpoint -- configs, parameters, optimizer, step, RNG state,
  every member's history -- in the trial's folder on the sweep's storage). Every evaluation is reported with
  ``ray.tune.report``: for a run alone one results-table row minus the identity columns
  that the driver-side ``ParquetSink`` adds; for a population ``{"members": [row, ...]}`` with one row per member
  still training (and, once, the last row of a member that failed, with its ``failure``). Both carry two
  Tune-only fields, ``evaluation`` (1, 2, ... : ASHA's clock) and ``restored_from_step`` (0 for a run from scratch);
* a run of the trial -- the first, a retry after a failure (``FailureConfig``) or a restart by ``--resume`` --
  continues from the trial's newest checkpoint, so it takes exactly the steps it would have taken, and first
  re-reports every evaluation up to that checkpoint (the members' histories; the driver may have died before
  recording some; the sink upserts the same rows). Evaluations reported after that checkpoint are computed and
  reported again, with the same values (training is deterministic), and upserted alike. The checkpoints are the
  trainable's, not Tune's: see below for why;
* a ladder trial (sweeps/ladder.py: ``population.ladder``) without a checkpoint of its own continues from the
  checkpoints of the run's previous trial (``continue_from``) with its larger budget, which ouvae/population.py
  makes the run trained to that budget in one go; its rows go to the run's results file (``results_file_id``).

The trainable owns its worker process while it runs: it sets torch's thread count and starts the run's memory
peak (ouvae/memory.py), which the trainer itself never does. A configuration or data error, a population whose
every member diverged, or unreadable checkpoints are not retried: the trial reports the reason and re-raises
(``NOT_RETRIED`` below; the result: sweeps/protocol.py, ``failure_result``; the driver's FailurePolicy,
sweeps/progress.py, then turns its retries off). With ``reuse_actors=True`` (the sweeps' default) one worker
process runs many trials in turn; the dataset cache below then saves reloading the data for every trial.

Per-trial checkpoints kept by the trainable itself, in the trial's folder on the sweep's storage.

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
loaded, CheckpointError (deterministic: a retry would read the same files; it is one of ``NOT_RETRIED``).

Layout: ``<trial folder>/ouvae_checkpoints/step_<step, 12 digits>.pt`` (``Population.save_checkpoint``'s file: a
trial trains a run alone, which is a population of one, or a population of runs).
Any pyarrow filesystem works: Tune's own storage filesystem is used, so S3/GCS/NFS need no extra set-up.
"""

from __future__ import annotations

import logging
import math
import re
import tempfile
import uuid
from collections import OrderedDict
from pathlib import Path
from typing import Any, Mapping

import pyarrow.fs as pafs
import torch
from ray import tune

from ouvae.checkpoint import CHECKPOINT_FILE, CheckpointFormatError
from ouvae.config import Config, ConfigError
from ouvae.data import DataError, DatasetSplits, load_config_dataset
from ouvae.memory import reset_peak_memory
from ouvae.population import Population, pick_device
from ouvae.records import results_row
from ouvae.trainer import TrainingStalled
from sweeps.compat import quiet_exit_in_finalizers, trial_storage
from sweeps.errors import StorageUnreachable
from sweeps.protocol import CHECKPOINT_FOLDER, POPULATION_KEY, failure_result, ladder_spec, run_specs


_DATA_CACHE: "OrderedDict[tuple, DatasetSplits]" = OrderedDict()
_DATA_CACHE_SIZE = 2


# ----- the trial's configuration -------------------------------------------------------------------------------
def configs_from_trial(config: Mapping[str, Any]) -> list[Config]:
    """The trainer configs of one trial -- one, or one per member of a population trial -- each the preset plus
    the trial's overrides (unknown keys raise ConfigError)."""
    configs = []
    for spec in run_specs(config):
        preset = spec.pop("preset", "base")
        configs.append(Config.from_preset(preset, **spec))
    return configs


def _dataset(cfg: Config) -> DatasetSplits:
    # the data seed is fixed: every trial is scored on the same images
    key = (cfg.dataset, cfg.data_dir, cfg.validation_size, cfg.binarization)
    if key in _DATA_CACHE:
        _DATA_CACHE.move_to_end(key)
        return _DATA_CACHE[key]
    data = load_config_dataset(cfg)
    _DATA_CACHE[key] = data
    while len(_DATA_CACHE) > _DATA_CACHE_SIZE:
        _DATA_CACHE.popitem(last=False)
    return data


def member_row(population: Population, metrics: Mapping[str, Any]) -> dict[str, Any]:
    """One results row minus sweep_id/run_id/population_id/schema_version (the driver's sink adds those)."""
    cfg = population.members[metrics["member"]].cfg
    return results_row(cfg, population.data, metrics)


def report(population: Population, rows: list[dict[str, Any]], *, as_population: bool, restored_from: int) -> None:
    """Send one evaluation (the rows of one step) to Tune: a row alone, or the rows of a population's members."""
    clock = {"evaluation": max(1, math.ceil(rows[0]["epoch"] / population.cfg.eval_every)),
             "restored_from_step": restored_from}
    if not as_population:
        tune.report({**member_row(population, rows[0]), **clock})
        return
    failed = [[i, m.failure] for i, m in enumerate(population.members) if m.failure]
    tune.report({"members": [member_row(population, r) for r in rows], **clock, "step": rows[0]["step"],
                 "epoch": rows[0]["epoch"], "is_final": all(r["is_final"] or r["failure"] for r in rows),
                 "failed_members": failed})


def train_ouvae(config: dict[str, Any]) -> None:
    """Tune function trainable: train one configuration to its budget, continuing from its newest checkpoint.
    An error that a retry would meet again is reported (``failure_result``) before it is raised."""
    quiet_exit_in_finalizers()  # Ray stopping this worker prints no "Exception ignored ... SystemExit"
    try:
        _train(config)
    except NOT_RETRIED as e:
        # returns once the driver has seen it: before Tune handles the failure
        tune.report(failure_result(e, setup=isinstance(e, SETUP_ERRORS)))
        raise


def _train(config: dict[str, Any]) -> None:
    configs = configs_from_trial(config)
    as_population = POPULATION_KEY in config
    cfg = configs[0]
    data = _dataset(cfg)
    if cfg.num_threads is not None:
        torch.set_num_threads(cfg.num_threads)
    reset_peak_memory(pick_device(cfg.device))
    store = TrialCheckpoints.of_current_trial()
    restored_from = 0

    def send(population: Population, rows: list[dict[str, Any]]) -> None:
        report(population, rows, as_population=as_population, restored_from=restored_from)

    # Runtime-only fields and the budget follow the current trial config (e.g. restarted on a node with a GPU; a
    # ladder's rung continuing a run to a larger budget: ouvae/population.py makes that the run trained in one go).
    restore = dict(callback=send, on_checkpoint=store.save, data=data, device=cfg.device,
                   num_threads=cfg.num_threads, data_dir=cfg.data_dir, epochs=cfg.epochs, steps=cfg.steps)
    population = store.load_newest(**restore)
    continue_from = ladder_spec(config).get("continue_from")
    if population is None and continue_from:
        population = TrialCheckpoints(store.fs, continue_from).load_newest(**restore)
        if population is None:
            raise CheckpointError(f"the ladder continues this run from {continue_from}, which holds no checkpoint")
    if population is None:
        population = Population(configs, callback=send, data=data, on_checkpoint=store.save)
    elif population.step:
        restored_from = population.step
        # Re-send every evaluation so far: after a driver crash (or a worker outliving it) some reports may never
        # have been recorded. The sink upserts identical rows; the Optuna searcher skips steps it already has.
        by_step: dict[int, list[dict[str, Any]]] = {}
        for member in population.members:
            for row in member.history:
                by_step.setdefault(row["step"], []).append(row)
        for step in sorted(by_step):
            report(population, by_step[step], as_population=as_population, restored_from=restored_from)
        if population.done:
            return
    population.fit()


logger = logging.getLogger(__name__)

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
        fs, trial_folder = trial_storage()
        return cls(fs, f"{trial_folder}/{CHECKPOINT_FOLDER}")

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


# ----- failures a retry would meet again (the driver's FailurePolicy: sweeps/progress.py) ------------------------
# Errors that a retry would meet again (the trainer is deterministic from its checkpoint).
NOT_RETRIED: tuple[type[BaseException], ...] = (ConfigError, DataError, StorageUnreachable, TrainingStalled,
                                                CheckpointError)
# Of those, the ones about what every trial shares (configuration, data, storage), not about the trial's own values.
SETUP_ERRORS: tuple[type[BaseException], ...] = (ConfigError, DataError, StorageUnreachable)

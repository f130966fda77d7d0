"""The Ray Tune function trainable: one ouvae training run per trial, reporting at every evaluation.

Why it lives in the package: Ray workers import the trainable by module path, so it must be importable on
every node (a function defined in a script or a test module is not).

Contract with the rest of `sweeps`:

* the trial config is a flat dict of ``ouvae.config.Config`` fields plus ``preset`` (the preset the fields
  override); unknown keys fail the trial with ConfigError before any training;
* every evaluation is reported with ``ray.tune.report(metrics, checkpoint=...)``: the metrics are the trainer's
  metrics dict plus ``cfg.result_fields(binarization)`` plus ``ouvae_version``/``schema_version`` -- i.e. one
  results-table row minus the identity columns that the driver-side ``ParquetSink`` adds;
* the checkpoint is ``Trainer.save_checkpoint`` (config, model, optimizer, step, every RNG state), so a retried
  or resumed trial continues with exactly the step it would have taken (``tune.get_checkpoint()`` +
  ``Trainer.from_checkpoint``), and re-reports identical rows for any step it repeats.

With ``reuse_actors=True`` (the sweeps' default) one worker process runs many trials in turn; the dataset
cache below then saves reloading the data for every trial.
"""

from __future__ import annotations

import os
import tempfile
from collections import OrderedDict
from typing import Any, Mapping

from ray import tune

from analysis.schema import SCHEMA_VERSION
from ouvae import __version__
from ouvae.config import Config
from ouvae.trainer import Trainer

# Test-only hook (never set by the sweep scripts): a folder; the first time a trial id reaches its first
# checkpointed report, a marker file is created there and the trial raises, so tests can check retries.
TEST_FAIL_ONCE_KEY = "_test_fail_once_dir"
# Keys of the trial config that are not Config fields.
NON_CONFIG_KEYS = (TEST_FAIL_ONCE_KEY,)

_DATA_CACHE: "OrderedDict[tuple, Any]" = OrderedDict()
_DATA_CACHE_SIZE = 2


class InjectedTestFailure(RuntimeError):
    """Raised only when a test set TEST_FAIL_ONCE_KEY in the trial config."""


def config_from_trial(config: Mapping[str, Any]) -> Config:
    """The trainer config of one trial: preset + the other keys as overrides (unknown keys raise)."""
    spec = {k: v for k, v in config.items() if k not in NON_CONFIG_KEYS}
    preset = spec.pop("preset", "base")
    if "latent_dims" in spec:
        spec["latent_dims"] = tuple(spec["latent_dims"])
    return Config.from_preset(preset, **spec)


def _dataset(cfg: Config):
    from ouvae.data import load_dataset  # imported lazily: the driver never needs it

    key = (cfg.dataset, cfg.data_dir)  # the data seed is fixed: every trial is scored on the same images
    if key in _DATA_CACHE:
        _DATA_CACHE.move_to_end(key)
        return _DATA_CACHE[key]
    data = load_dataset(cfg.dataset, cfg.data_dir)
    _DATA_CACHE[key] = data
    while len(_DATA_CACHE) > _DATA_CACHE_SIZE:
        _DATA_CACHE.popitem(last=False)
    return data


def report_payload(trainer: Trainer, metrics: Mapping[str, Any]) -> dict[str, Any]:
    """One results row minus sweep_id/trial_id (the driver knows those)."""
    return {**metrics, **trainer.cfg.result_fields(trainer.data.binarization),
            "ouvae_version": __version__, "schema_version": SCHEMA_VERSION}


def train_ouvae(config: dict[str, Any]) -> None:
    """Tune function trainable: train (or resume) one configuration to its budget."""
    cfg = config_from_trial(config)
    fail_dir = config.get(TEST_FAIL_ONCE_KEY)
    data = _dataset(cfg)

    def report(trainer: Trainer, metrics: dict[str, Any]) -> None:
        with tempfile.TemporaryDirectory(prefix="ouvae-ckpt-") as d:
            trainer.save_checkpoint(d)
            # report() copies the folder into the trial's storage before returning, so the temp dir may go.
            tune.report(report_payload(trainer, metrics), checkpoint=tune.Checkpoint.from_directory(d))
        if fail_dir:
            _maybe_fail_once(fail_dir)

    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            # Runtime-only fields follow the current trial config (e.g. resumed on a node with a GPU).
            trainer = Trainer.from_checkpoint(d, callback=report, data=data, device=cfg.device,
                                              num_threads=cfg.num_threads, data_dir=cfg.data_dir)
        if trainer.last_metrics is not None and trainer.last_metrics.get("is_final"):
            # Restored from the final checkpoint (e.g. the driver died before recording the trial as done):
            # re-send the final result so Tune and the searcher see it; the sink upserts the same row.
            report(trainer, trainer.last_metrics)
            return
    else:
        trainer = Trainer(cfg, callback=report, data=data)
    trainer.fit()


def _maybe_fail_once(folder: str) -> None:
    trial_id = tune.get_context().get_trial_id()
    os.makedirs(folder, exist_ok=True)
    try:
        fd = os.open(os.path.join(folder, f"{trial_id}.failed"), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return
    os.close(fd)
    raise InjectedTestFailure(f"test hook: trial {trial_id} fails once after its first checkpoint")

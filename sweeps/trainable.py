"""The Ray Tune function trainable: one ouvae training run per trial, reporting at every evaluation.

Why it lives in the package: Ray workers import the trainable by module path, so it must be importable on
every node (a function defined in a script or a test module is not).

Contract with the rest of `sweeps`:

* the trial config is a flat dict of ``ouvae.config.Config`` fields plus ``preset`` (the preset the fields
  override); unknown keys fail the trial with ConfigError before any training;
* every evaluation is checkpointed (``sweeps/checkpoints.py``: ``Trainer.save_checkpoint`` -- config, model,
  optimizer, step, every RNG state -- in the trial's folder on the sweep's storage) and then reported with
  ``ray.tune.report(metrics)``: the trainer's metrics plus ``cfg.result_fields(binarization)`` plus
  ``ouvae_version``/``schema_version`` -- one results-table row minus the identity columns that the
  driver-side ``ParquetSink`` adds -- plus two Tune-only fields, ``evaluation`` (1, 2, ... : ASHA's clock) and
  ``restored_from_step`` (0 for a run from scratch);
* a run of the trial -- the first, a retry after a failure (``FailureConfig``) or a restart by ``--resume`` --
  continues from the trial's newest checkpoint, so it takes exactly the steps it would have taken, and first
  re-reports every evaluation up to that checkpoint (``Trainer.history``; the driver may have died before
  recording some; the sink upserts the same rows). The checkpoints are the trainable's, not Tune's: see
  sweeps/checkpoints.py for why.

A configuration or data error, a diverged run or unreadable checkpoints are not retried: the trial reports the
reason and re-raises (sweeps/failures.py). With ``reuse_actors=True`` (the sweeps' default) one worker process runs
many trials in turn; the dataset cache below then saves reloading the data for every trial.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any, Mapping

from ray import tune

from analysis.schema import SCHEMA_VERSION
from ouvae.records import run_columns
from ouvae.config import Config
from ouvae.data import load_dataset
from ouvae.trainer import Trainer
from sweeps.checkpoints import TrialCheckpoints
from sweeps.failures import failure_result

_DATA_CACHE: "OrderedDict[tuple, Any]" = OrderedDict()
_DATA_CACHE_SIZE = 2


def config_from_trial(config: Mapping[str, Any]) -> Config:
    """The trainer config of one trial: preset + the other keys as overrides (unknown keys raise)."""
    spec = dict(config)
    preset = spec.pop("preset", "base")
    if "latent_dims" in spec:
        spec["latent_dims"] = tuple(spec["latent_dims"])
    return Config.from_preset(preset, **spec)


def _dataset(cfg: Config):
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
    return {**metrics, **run_columns(trainer.cfg, trainer.data), "schema_version": SCHEMA_VERSION}


def evaluation_index(trainer: Trainer, metrics: Mapping[str, Any]) -> int:
    """1 for the first evaluation, 2 for the second ...: a clock that survives restarts (Tune's
    training_iteration starts again at 1 in every run of the trainable)."""
    return max(1, math.ceil(metrics["epoch"] / trainer.cfg.eval_every))


def train_ouvae(config: dict[str, Any]) -> None:
    """Tune function trainable: train one configuration to its budget, continuing from its newest checkpoint.
    An error that a retry would meet again is reported (sweeps/failures.py) before it is raised."""
    try:
        _train(config)
    except Exception as e:
        last_word = failure_result(e)
        if last_word is not None:
            tune.report(last_word)  # returns once the driver has seen it: before Tune handles the failure
        raise


def _train(config: dict[str, Any]) -> None:
    cfg = config_from_trial(config)
    data = _dataset(cfg)
    store = TrialCheckpoints.of_current_trial()
    restored_from = 0

    def send(trainer: Trainer, metrics: Mapping[str, Any]) -> None:
        tune.report({**report_payload(trainer, metrics), "evaluation": evaluation_index(trainer, metrics),
                     "restored_from_step": restored_from})

    def checkpoint_and_report(trainer: Trainer, metrics: dict[str, Any]) -> None:
        store.save(trainer)  # before the report: a reported step always has its checkpoint
        send(trainer, metrics)

    # Runtime-only fields follow the current trial config (e.g. restarted on a node with a GPU).
    trainer = store.load_newest(callback=checkpoint_and_report, data=data, device=cfg.device,
                                num_threads=cfg.num_threads, data_dir=cfg.data_dir)
    if trainer is None:
        trainer = Trainer(cfg, callback=checkpoint_and_report, data=data)
    elif trainer.history:
        restored_from = trainer.step
        # Re-send every evaluation so far: after a driver crash (or a worker outliving it) some reports may never
        # have been recorded. The sink upserts identical rows; the Optuna searcher skips steps it already has.
        for metrics in trainer.history:
            send(trainer, metrics)
        if trainer.history[-1].get("is_final"):
            return
    trainer.fit()

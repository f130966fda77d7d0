"""The columns that describe a run in the results table and in ``metrics.json``: configuration and data.

Why here and not in config.py: the configuration describes a run; which of its values the results table
records, and under which names (analysis/schema.py), is a separate contract with the analysis, shared by the
command line and the sweep trainable.
"""

from __future__ import annotations

import json
from typing import Any, Mapping

from . import __version__
from .config import Config, format_latent_dims, own_name_columns, short_hash
from .data import DatasetSplits
from .smoothing import is_identity


BOUND_MODEL_NAMES = {"hvae": "the plain hierarchical VAE with these weights (generative maps unsmoothed)",
                     "smoothed-prior": "the smoothed generative model (prior reading)"}


def bound_model(cfg: Config) -> str:
    """The model whose log p(x) the reported elbo / iw_bound bound (metrics.py): the smoothed generative model in
    the prior reading when its generative maps are smoothed at evaluation, else the plain hierarchical VAE."""
    smoothed = (cfg.bound_smooths_generative and cfg.smooth in ("both", "decoder")
                and not is_identity(cfg.effective_rho_eval, cfg.smooth_samples))
    return "smoothed-prior" if smoothed else "hvae"


def results_row(cfg: Config, data: DatasetSplits, metrics: Mapping[str, Any]) -> dict[str, Any]:
    """One run's row at one evaluation: its metrics and the columns that describe it -- the one builder of a row,
    for the results table (sweeps/trainable.py; the sweep's driver adds sweep_id, run_id, population_id and
    schema_version, sweeps/results.py) and for ``metrics.json`` (ouvae/train.py)."""
    return {**metrics, **run_columns(cfg, data)}


def run_columns(cfg: Config, data: DatasetSplits) -> dict[str, Any]:
    """The identity, data and hyperparameter columns of one run's rows.

    `dataset` is the loaded data's own name, so two user data sets (e.g. ``idx:kmnist`` and ``idx:emnist``, both
    loaded with dataset="idx") are told apart, and so is their ``config_hash``.
    """
    config_hash = cfg.config_hash()
    if data.name != cfg.dataset:
        config_hash = short_hash(f"{config_hash}:{data.name}")
    verbatim = {name: getattr(cfg, name) for name in own_name_columns()}  # which fields: their metadata
    return {
        **verbatim,
        "ouvae_version": __version__,
        # the loaded data's own description, not the config's request (e.g. dataset "idx:kmnist", not "idx")
        "dataset": data.name,
        "binarization": data.binarization,
        "likelihood": data.likelihood,
        "n_layers": cfg.n_layers,
        "latent_dims": format_latent_dims(cfg.latent_dims),
        "rho_eval": cfg.effective_rho_eval,
        "bound_model": bound_model(cfg),
        "beta_params": json.dumps(cfg.beta_params, sort_keys=True),
        "config_hash": config_hash,
    }

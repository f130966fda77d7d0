"""Synthetic critical-rho runs with a known truth: the one noisy-logistic generator of the project.

Why: the analysis must be checked against a truth we control (does the fitted rho_c land where we put it? does
"lower rho_c for wider latents" come out when it is true? is a drifting rho_c called "still moving"?) and
benchmarked at sizes no laptop could train; the adaptive searcher must be shown to find rho_c through real Ray
Tune machinery in seconds. Real sweeps give neither. Everything that needs synthetic runs draws them here:
``noisy_active_units`` (one run), ``noisy_runs`` (a grid of runs, for checking the fit), ``make_synthetic_results``
(a whole results folder) and ``sweeps/testing/synthetic_trainable.py``'s Ray trainable.

The model ("noisy logistic across seeds"): seed s has its own critical point ``rho_c + delta_s`` with
``delta_s ~ N(0, seed_sd)`` (``seed_offset``: fixed per seed and shared across rho, so seeds differ
systematically, which is why the bootstrap resamples whole seeds); each of the ``top_dim`` top units is active with
probability ``1 / (1 + exp((rho - rho_c - delta_s) / width))``; the count is binomial. Draws are a deterministic
function of (rho, seed, salt, key): rerunning a point gives the same count, like a deterministic trainer would.

``make_synthetic_results`` writes what the sweep writer writes: one Parquet file per trial at
``<root>/sweep_id=<id>/<trial_id>.parquet``, every schema column present (``conform``), one row per evaluation,
``is_final`` on the last, written atomically (temp file + rename). Lower layers collapse later (at higher rho), as
in the paper's tables where bottom layers keep more active units; KL grows with active units; every evaluation
draws its own counts around rho_c at that point of training (``rho_c_drift`` makes it move with the budget).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from analysis.schema import SCHEMA_VERSION, conform
from ouvae.atomic import write_atomically
from ouvae.config import short_hash

DEFAULT_RHOS: tuple[float, ...] = tuple(float(r) for r in np.round(np.linspace(0.80, 1.00, 11), 4))
# Wider latents collapse at lower rho (the paper's Figure 5): the default truth has that ordering.
DEFAULT_RHO_C: dict[int, float] = {10: 0.95, 20: 0.92, 40: 0.89}

RhoCSpec = float | Mapping[int, float] | Callable[[int], float]


# ------------------------------------------------------------------------------------------- one run
def seed_offset(seed: int, seed_sd: float, salt: int = 0, key: Sequence[int] = ()) -> float:
    """delta_s: the seed's own shift of the critical point (the same at every rho)."""
    if seed_sd <= 0:
        return 0.0
    return float(np.random.default_rng([int(salt), 7919, int(seed), *map(int, key)]).normal(0.0, seed_sd))


def active_probability(rho: float | np.ndarray, rho_c: float, width: float) -> float | np.ndarray:
    """The logistic of the model: probability that a top unit is active at ``rho``."""
    z = np.clip((np.asarray(rho, dtype=np.float64) - rho_c) / width, -500.0, 500.0)
    return 1.0 / (1.0 + np.exp(z))


def noisy_active_units(rho: float, seed: int, top_dim: int, *, rho_c: float | np.ndarray = 0.93,
                       width: float = 0.01, seed_sd: float = 0.004, salt: int = 0, key: Sequence[int] = ()
                       ) -> int | np.ndarray:
    """Active top-layer units of one synthetic run at (rho, seed).

    ``salt`` selects an independent data set (seed offsets included); ``key`` gives further independent draws at
    the same point with the same seed offsets. ``rho_c`` may be an array (e.g. evaluations x layers of one trial):
    then one count per entry, drawn together.
    """
    p = active_probability(rho, np.asarray(rho_c) + seed_offset(seed, seed_sd, salt), width)
    rng = np.random.default_rng([int(salt), int(seed), int(round(float(rho) * 1_000_000)), *map(int, key)])
    k = rng.binomial(int(top_dim), p)
    return int(k) if np.ndim(k) == 0 else k.astype(np.int64)


def noisy_runs(rhos: Sequence[float], n_seeds: int, top_dim: int = 10, **model: Any
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rho, seed, active units) of every (rho, seed) run on a grid, seeds 0..n_seeds-1; ``model``: the keywords
    of ``noisy_active_units``."""
    pairs = [(float(r), s) for s in range(n_seeds) for r in rhos]
    k = [noisy_active_units(r, s, top_dim, **model) for r, s in pairs]
    return np.array([r for r, _ in pairs]), np.array([s for _, s in pairs]), np.array(k, dtype=np.int64)


# ------------------------------------------------------------------------------------ a results folder
@dataclass(frozen=True)
class SyntheticTruth:
    """What was written and the truth behind it, to compare estimates with."""

    root: Path
    sweep_id: str
    rho_c: dict[tuple[str, str], float]  # (dataset, latent_dims "10-10-10-10") -> true rho_c at the end of training
    steps: tuple[int, ...]  # the evaluation steps of every trial
    n_rows: int
    n_files: int


def _per_size(spec: RhoCSpec, size: int, name: str) -> float:
    if callable(spec):
        return float(spec(size))
    if isinstance(spec, Mapping):
        if size not in spec:
            raise ValueError(f"{name} has no entry for latent size {size}; give one per latent size")
        return float(spec[size])
    return float(spec)


def _write_atomic(table: pa.Table, path: Path) -> None:
    write_atomically(path, lambda tmp: pq.write_table(table, tmp))


def _file_name(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in text)


def make_synthetic_results(
    root: str | os.PathLike[str],
    *,
    sweep_id: str = "synthetic",
    latent_sizes: Sequence[int] = (10, 20, 40),
    n_layers: int = 4,
    rhos: Sequence[float] = DEFAULT_RHOS,
    n_seeds: int = 4,
    rho_c: RhoCSpec = DEFAULT_RHO_C,
    width: RhoCSpec = 0.01,
    seed_sd: float = 0.004,
    layer_offset: float = 0.03,
    n_evals: int = 5,
    steps_per_eval: int = 1000,
    datasets: Sequence[str] | Mapping[str, float] = ("digits",),
    rho_c_drift: float = 0.0,
    overrides: Mapping[str, Any] | None = None,
    salt: int = 0,
) -> SyntheticTruth:
    """Write one synthetic sweep (datasets x latent sizes x rhos x seeds trials) under ``root``; return its truth.

    ``rho_c`` and ``width`` are each one value, a mapping latent size -> value, or a function of the latent size;
    a rho_c outside the swept rhos gives a sweep with no transition. ``datasets``: dataset names (the ``dataset``
    column, e.g. ``"idx:kmnist"``), or a mapping name -> shift added to that dataset's rho_c. ``rho_c_drift``: at
    fraction f of training the truth is rho_c + rho_c_drift * (1 - f), so a non-zero drift is still moving at the
    end of training (positive: rho_c falls as training goes on). ``overrides`` sets other schema columns on every
    row (e.g. ``{"objective": "iwae", "iw_samples": 5}``). ``salt`` selects an independent draw of everything.
    Rows per trial = ``n_evals``.
    """
    if n_evals < 1 or n_seeds < 1 or n_layers < 1:
        raise ValueError("n_evals, n_seeds and n_layers must be >= 1")
    shifts = dict(datasets) if isinstance(datasets, Mapping) else {str(d): 0.0 for d in datasets}
    folder = Path(root) / f"sweep_id={sweep_id}"
    folder.mkdir(parents=True, exist_ok=True)
    rhos = tuple(float(r) for r in rhos)
    frac = np.arange(1, n_evals + 1) / n_evals  # fraction of training done at each evaluation
    steps = tuple(int(s) for s in np.arange(1, n_evals + 1) * steps_per_eval)
    truth: dict[tuple[str, str], float] = {}
    n_rows = n_files = 0
    for ds_index, (dataset, shift) in enumerate(shifts.items()):
        ds_salt = salt + 100_003 * ds_index  # each dataset has its own seed offsets and draws
        for d in latent_sizes:
            dims = "-".join([str(int(d))] * n_layers)
            rc = _per_size(rho_c, int(d), "rho_c") + float(shift)
            w = _per_size(width, int(d), "width")
            truth[(dataset, dims)] = rc
            base = _base_columns(sweep_id, dataset, n_layers, dims, overrides)
            for rho in rhos:
                cfg_hash = short_hash({**base, "rho": rho})
                for s in range(n_seeds):
                    # rho_c per evaluation (drift) and layer (lower layers collapse later), bottom to top
                    truth_now = (rc + rho_c_drift * (1.0 - frac)[:, None]
                                 + (n_layers - 1 - np.arange(n_layers))[None, :] * layer_offset)
                    active = noisy_active_units(rho, s, int(d), rho_c=truth_now, width=w, seed_sd=seed_sd,
                                                salt=ds_salt)
                    trial_id = f"{sweep_id}-{_file_name(dataset)}-{dims}-r{rho:.4f}-s{s}"
                    rng = np.random.default_rng([ds_salt, int(d), int(round(rho * 1e6)), s])
                    cols = {k: [v] * n_evals for k, v in base.items()}
                    cols.update(_run_columns(rng, active, int(d), rho, frac, steps_per_eval))
                    cols.update({"run_id": [trial_id] * n_evals, "config_hash": [cfg_hash] * n_evals,
                                 "rho": [rho] * n_evals, "rho_eval": [rho] * n_evals, "seed": [s] * n_evals})
                    table = conform(pa.table({k: (v if isinstance(v, pa.Array) else pa.array(v))
                                              for k, v in cols.items()}))
                    _write_atomic(table, folder / f"{trial_id}.parquet")
                    n_rows += n_evals
                    n_files += 1
    return SyntheticTruth(root=Path(root), sweep_id=sweep_id, rho_c=truth, steps=steps, n_rows=n_rows, n_files=n_files)


def _base_columns(sweep_id: str, dataset: str, n_layers: int, dims: str, overrides: Mapping[str, Any] | None
                  ) -> dict[str, Any]:
    """The columns that are the same on every row of one configuration."""
    base = {
        "schema_version": SCHEMA_VERSION, "ouvae_version": "synthetic", "sweep_id": sweep_id, "preset": "synthetic",
        "dataset": dataset, "split": "validation", "binarization": "dynamic", "likelihood": "bernoulli",
        "architecture": "mlp", "n_layers": n_layers, "latent_dims": dims, "hidden_units": 200, "hidden_layers": 2,
        "activation": "tanh", "smooth_samples": 5, "smooth": "both", "objective": "elbo", "iw_samples": 1,
        "beta_schedule": "constant", "beta_params": "{}", "free_bits": 0.0, "lr": 1e-3, "lr_decay_steps": 0,
        "lr_decay_power": 1.0,
        "batch_size": 100, "iw_k": 100, "member": 0, "population_size": 1,
    }
    base.update(overrides or {})
    return base


def _run_columns(rng: np.random.Generator, active: np.ndarray, size: int, rho: float, frac: np.ndarray,
                 steps_per_eval: int) -> dict[str, Any]:
    """Progress and metric columns of one trial from its active units (evaluations x layers, bottom to top).

    KL grows with the active units and is larger early in training; the bound approaches its final value.
    """
    n_evals, n_layers = active.shape
    kl_per_unit = rng.uniform(0.4, 1.2, size=n_layers)
    early = (1.0 - frac)[:, None] ** 2
    layer_kl = (active * kl_per_unit + (size - active) * 0.002 + rng.uniform(0, 0.01, n_layers)) * (1.0 + 1.5 * early)
    kl_total = layer_kl.sum(axis=1)
    elbo = -85.0 - 150.0 / size - 4.0 * (1.0 - rho) + rng.normal(0, 0.3) - 40.0 * (np.exp(-3.0 * frac) - np.exp(-3.0))
    steps = (np.arange(1, n_evals + 1) * steps_per_eval).astype(np.int64)
    return {
        "epoch": np.arange(1, n_evals + 1), "step": steps, "is_final": frac >= 1.0, "wall_time_s": steps * 0.01,
        "time_per_epoch_s": np.full(n_evals, 1.0 + 0.1 * (rho < 1)),
        "peak_memory_bytes": np.full(n_evals, 200_000_000, dtype=np.int64),
        "skipped_steps": np.zeros(n_evals, np.int64), "elbo": elbo,
        "iw_bound": elbo + 1.5 + rng.normal(0, 0.05, n_evals),
        "recon": -elbo - kl_total, "kl_total": kl_total, "top_kl": layer_kl[:, -1], "top_active_units": active[:, -1],
        "layer_kl": pa.array(layer_kl.tolist(), pa.list_(pa.float64())),
        "layer_active_units": pa.array(active.tolist(), pa.list_(pa.int64())),
    }

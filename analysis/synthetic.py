"""Synthetic sweep results with a known critical rho, in the exact on-disk layout of real sweeps.

Why: the analysis must be checked against a truth we control (does the fitted rho_c land where we put it? does
"lower rho_c for wider latents" come out when it is true?) and benchmarked at sizes no laptop could train.
Real sweeps give neither. The generator writes what the sweep writer writes: one Parquet file per trial at
``<root>/sweep_id=<id>/<trial_id>.parquet``, every schema column present (``conform``), one row per evaluation,
``is_final`` on the last, written atomically (temp file + rename).

The model of the data ("noisy logistic across seeds"): each seed s has its own critical point
``rho_c + delta_s`` with ``delta_s ~ N(0, seed_sd)`` (shared across rho, so seeds differ systematically, which is
why the bootstrap resamples whole seeds); each of the ``top_dim`` top units is active with probability
``1 / (1 + exp((rho - rho_c - delta_s) / width))``; the count is binomial. Lower layers collapse later (at
higher rho), as in the paper's tables where bottom layers keep more active units. KL grows with active units.
Training curves approach the final values over ``n_evals`` evaluations.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from analysis.schema import SCHEMA_VERSION, conform

DEFAULT_RHOS: tuple[float, ...] = tuple(float(r) for r in np.round(np.linspace(0.80, 1.00, 11), 4))
# Wider latents collapse at lower rho (the paper's Figure 5): the default truth has that ordering.
DEFAULT_RHO_C: dict[int, float] = {10: 0.95, 20: 0.92, 40: 0.89}

RhoCSpec = float | Mapping[int, float] | Callable[[int], float]


@dataclass(frozen=True)
class SyntheticTruth:
    """What was written and the truth behind it, so tests can compare estimates with it."""

    root: Path
    sweep_id: str
    rho_c: dict[str, float]  # latent_dims string ("10-10-10-10") -> true rho_c of the top layer
    width: dict[str, float]  # latent_dims string -> true logistic width w
    rhos: tuple[float, ...]
    seeds: tuple[int, ...]
    n_rows: int
    n_files: int
    config: dict[str, Any] = field(default_factory=dict)


def _per_size(spec: RhoCSpec, size: int, name: str) -> float:
    if callable(spec):
        return float(spec(size))
    if isinstance(spec, Mapping):
        if size not in spec:
            raise ValueError(f"{name} has no entry for latent size {size}; give one per latent size")
        return float(spec[size])
    return float(spec)


def _logistic(rho: float, rho_c: float, width: float) -> float:
    z = np.clip((rho - rho_c) / width, -500.0, 500.0)
    return float(1.0 / (1.0 + np.exp(z)))


def _write_atomic(table: pa.Table, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


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
    dataset: str = "digits",
    overrides: Mapping[str, Any] | None = None,
    rng: int | np.random.Generator = 0,
) -> SyntheticTruth:
    """Write one synthetic sweep (latent sizes x rhos x seeds trials) under ``root`` and return its truth.

    ``rho_c`` and ``width`` are each one value, a mapping latent size -> value, or a function of the latent size;
    a rho_c outside the swept rhos gives a sweep with no transition. ``overrides`` sets other schema columns on every row
    (e.g. ``{"objective": "iwae", "iw_samples": 5}``) to make further configurations. Rows per trial =
    ``n_evals``, so total rows = len(latent_sizes) * len(rhos) * n_seeds * n_evals.
    """
    if n_evals < 1 or n_seeds < 1 or n_layers < 1:
        raise ValueError("n_evals, n_seeds and n_layers must be >= 1")
    gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    folder = Path(root) / f"sweep_id={sweep_id}"
    folder.mkdir(parents=True, exist_ok=True)
    overrides = dict(overrides or {})
    seeds = tuple(range(n_seeds))
    rhos = tuple(float(r) for r in rhos)
    seed_shift = gen.normal(0.0, seed_sd, size=n_seeds) if seed_sd > 0 else np.zeros(n_seeds)
    truth: dict[str, float] = {}
    widths: dict[str, float] = {}
    n_rows = n_files = 0
    frac = np.arange(1, n_evals + 1) / n_evals  # fraction of training done at each evaluation
    for d in latent_sizes:
        dims = "-".join([str(int(d))] * n_layers)
        rc = _per_size(rho_c, int(d), "rho_c")
        w = _per_size(width, int(d), "width")
        truth[dims], widths[dims] = rc, w
        base = {
            "schema_version": SCHEMA_VERSION, "ouvae_version": "synthetic", "sweep_id": sweep_id, "preset": "synthetic",
            "dataset": dataset, "split": "validation", "binarization": "dynamic", "architecture": "mlp",
            "n_layers": n_layers, "latent_dims": dims, "hidden_units": 200, "hidden_layers": 2,
            "activation": "tanh", "smooth_samples": 5, "smooth": "both", "objective": "elbo", "iw_samples": 1,
            "beta_schedule": "constant", "beta_params": "{}", "free_bits": 0.0, "lr": 1e-3, "batch_size": 100,
            "iw_k": 100,
        }
        base.update(overrides)
        for rho in rhos:
            cfg_hash = hashlib.sha1(json.dumps({**base, "rho": rho}, sort_keys=True, default=str).encode()).hexdigest()[:12]
            for s in seeds:
                # Per-layer probability of an active unit, bottom (index 0) to top; lower layers collapse later.
                p = [_logistic(rho, rc + seed_shift[s] + (n_layers - 1 - layer) * layer_offset, w)
                     for layer in range(n_layers)]
                active_final = gen.binomial(int(d), p)
                kl_per_unit = gen.uniform(0.4, 1.2, size=n_layers)
                kl_final = active_final * kl_per_unit + (int(d) - active_final) * 0.002 + gen.uniform(0, 0.01, n_layers)
                # Curves: early in training more units are active and KLs are larger; both settle to the final.
                early = (1.0 - frac)[:, None] ** 2
                active = np.rint(active_final[None, :] + (int(d) - active_final[None, :]) * early * 0.5).astype(np.int64)
                layer_kl = kl_final[None, :] * (1.0 + 1.5 * early)
                kl_total = layer_kl.sum(axis=1)
                elbo_final = -85.0 - 150.0 / d - 4.0 * (1.0 - rho) + gen.normal(0, 0.3)
                elbo = elbo_final - 40.0 * (np.exp(-3.0 * frac) - np.exp(-3.0))
                iw_bound = elbo + 1.5 + gen.normal(0, 0.05, n_evals)
                steps = (np.arange(1, n_evals + 1) * steps_per_eval).astype(np.int64)
                trial_id = f"{sweep_id}-{dims}-r{rho:.4f}-s{s}"
                n = n_evals
                cols: dict[str, Any] = {k: [v] * n for k, v in base.items()}
                cols.update({
                    "trial_id": [trial_id] * n, "config_hash": [cfg_hash] * n, "rho": [rho] * n, "rho_eval": [rho] * n,
                    "seed": [s] * n, "epoch": np.arange(1, n + 1), "step": steps, "is_final": frac >= 1.0,
                    "wall_time_s": steps * 0.01, "time_per_epoch_s": np.full(n, 1.0 + 0.1 * (rho < 1)),
                    "peak_memory_bytes": np.full(n, 200_000_000, dtype=np.int64), "skipped_steps": np.zeros(n, np.int64),
                    "elbo": elbo, "iw_bound": iw_bound, "recon": -elbo - kl_total, "kl_total": kl_total,
                    "top_kl": layer_kl[:, -1], "top_active_units": active[:, -1],
                    "layer_kl": pa.array(layer_kl.tolist(), pa.list_(pa.float64())),
                    "layer_active_units": pa.array(active.tolist(), pa.list_(pa.int64())),
                })
                table = conform(pa.table({k: (v if isinstance(v, pa.Array) else pa.array(v)) for k, v in cols.items()}))
                _write_atomic(table, folder / f"{trial_id}.parquet")
                n_rows += n
                n_files += 1
    return SyntheticTruth(root=Path(root), sweep_id=sweep_id, rho_c=truth, width=widths, rhos=rhos, seeds=seeds,
                          n_rows=n_rows, n_files=n_files, config={**overrides, "n_layers": n_layers, "dataset": dataset})

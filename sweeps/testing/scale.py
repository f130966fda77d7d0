"""A synthetic sweep trainable for driver benchmarks (benchmarks/sweep_scale.py): no torch work at all.

Each trial reports what a real population trial reports (sweeps/trainable.py) -- one row per member per evaluation,
with the identity and metric columns the results table keeps -- at evaluations 1 ... ``steps`` of its config, so
what is measured is the driver's cost per report: Tune's bookkeeping, the Parquet sink and the progress line.
"""

from __future__ import annotations

from typing import Any

from analysis.schema import SCHEMA_VERSION
from ouvae.config import format_latent_dims, parse_latent_dims
from sweeps.protocol import POPULATION_KEY, run_specs


def member_row(spec: dict[str, Any], member: int, step: int, final: bool) -> dict[str, Any]:
    dims = parse_latent_dims(spec.get("latent_dims", "4x10"))
    top = dims[-1] if float(spec["rho"]) < 0.9 else 0  # a plausible collapse above rho = 0.9
    return {"member": member, "step": step, "epoch": step, "is_final": final, "failure": None, "skipped_steps": 0,
            "rho": float(spec["rho"]), "rho_eval": float(spec["rho"]), "seed": int(spec["seed"]),
            "latent_dims": format_latent_dims(dims), "n_layers": len(dims), "dataset": "synthetic",
            "architecture": "mlp", "config_hash": "synthetic", "preset": spec.get("preset", "demo"),
            "top_active_units": top, "top_kl": 0.1 * top, "iw_bound": -90.0 - step, "iw_k": 100, "elbo": -95.0,
            "layer_kl": [1.0] * len(dims), "layer_active_units": [top] * len(dims), "population_size": 64,
            "schema_version": SCHEMA_VERSION, "wall_time_s": float(step), "time_per_epoch_s": 1.0}


def scale_trainable(config: dict[str, Any]) -> None:
    """Ray Tune function trainable: `steps` evaluations of every run of the trial, reported at once as a
    population trial does (a trial of one run reports its row alone)."""
    from ray import tune

    specs = run_specs(config)
    evaluations = int(config.get("steps") or 1)
    for step in range(1, evaluations + 1):
        final = step == evaluations
        rows = [member_row(spec, m, step, final) for m, spec in enumerate(specs)]
        clock = {"evaluation": step, "restored_from_step": 0}
        if POPULATION_KEY not in config:
            tune.report({**rows[0], **clock})
        else:
            tune.report({"members": rows, **clock, "step": step, "epoch": step, "is_final": final,
                         "failed_members": []})

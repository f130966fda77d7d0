"""A synthetic critical-rho "training run" for Ray Tune: the order parameter drawn from a known noisy transition.

Why: the adaptive searcher must be shown to find rho_c where we put it, through real Ray Tune machinery, in
seconds. Real training takes 3-9 s per run on digits; this takes microseconds and has a truth. The draws come from
the project's one noisy-logistic generator, ``analysis.testing.synthetic.noisy_active_units`` (its docstring has
the model): a deterministic function of (rho, seed, salt), so rerunning a point gives the same count, like a
deterministic trainer would.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ray import tune

from analysis.testing.synthetic import noisy_active_units
from sweeps.protocol import POPULATION_KEY, run_specs
from sweeps.refine import top_dim_of

DEFAULTS: dict[str, Any] = {"true_rho_c": 0.93, "true_width": 0.01, "seed_sd": 0.004, "salt": 0}


def top_dim_from(config: Mapping[str, Any]) -> int:
    """Top-layer size of a trial config (10 when it names no latent_dims)."""
    return top_dim_of(config) or 10


def synthetic_run(config: Mapping[str, Any]) -> int:
    """Top-layer active units of one synthetic run (its config flat: rho, seed, latent_dims, the truth's keys)."""
    if config.get("fail_seed") is not None and int(config["seed"]) == int(config["fail_seed"]):
        raise RuntimeError(f"synthetic failure for seed {config['seed']} (fail_seed)")
    for rho, seed in config.get("fail_points") or ():
        if abs(float(config["rho"]) - float(rho)) < 1e-9 and int(config["seed"]) == int(seed):
            raise RuntimeError(f"synthetic failure at rho={rho}, seed={seed} (fail_points)")
    top = top_dim_from(config)
    rho_c = float(config.get("true_rho_c", DEFAULTS["true_rho_c"]))
    by_top = config.get("true_rho_c_by_top")
    if by_top:
        rho_c = float({int(k): v for k, v in dict(by_top).items()}[top])
    return noisy_active_units(config["rho"], config["seed"], top, rho_c=rho_c,
                              width=float(config.get("true_width", DEFAULTS["true_width"])),
                              seed_sd=float(config.get("seed_sd", DEFAULTS["seed_sd"])),
                              salt=int(config.get("salt", DEFAULTS["salt"])))


def noisy_transition_trainable(config: dict[str, Any]) -> None:
    """Ray Tune function trainable: reports one final evaluation with ``top_active_units`` from the model.

    Config: ``rho``, ``seed``, ``latent_dims`` (top size = last entry), and optionally ``true_rho_c``,
    ``true_width``, ``seed_sd``, ``salt`` (see DEFAULTS). ``fail_seed`` (runs of that seed raise) and
    ``fail_points`` (a list of [rho, seed] pairs that raise) exercise error handling. ``true_rho_c_by_top``
    ({top size: rho_c}) gives each latent configuration its own truth. A population trial (sweeps/trainable.py's
    ``population`` entry) reports every member at once, as the real trainable does; a member whose point is set
    to fail is reported as failed while the others finish.
    """
    if POPULATION_KEY not in config:
        top = top_dim_from(config)
        tune.report({"top_active_units": synthetic_run(config), "top_dim": top, "is_final": True})
        return
    rows, failed = [], []
    for member, spec in enumerate(run_specs(config)):
        try:
            rows.append({"member": member, "top_active_units": synthetic_run(spec), "is_final": True,
                         "failure": None})
        except RuntimeError as e:
            failed.append([member, str(e)])
    tune.report({"members": rows, "failed_members": failed, "is_final": True})

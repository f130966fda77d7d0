"""A synthetic trainable whose rho_c drifts with the training budget, for the ladder (``--until-converged``).

Why: the ladder must be shown to stop at the right rung, continue the right runs and say the right verdict, through
real Ray Tune machinery, in seconds -- with a truth to compare against. Each run is a noisy logistic
(``analysis.testing.synthetic.noisy_active_units``) around rho_c(B), the truth at budget B (epochs; one step per
epoch):

* top layer of 10 units (e.g. ``--latent-dims 10``): rho_c(B) = 0.93 - 0.096 (10 / B)^2 -- 0.834, 0.906, 0.924,
  0.9285, ... at 10, 20, 40, 80 epochs: it moves by 0.018 from 20 to 40 and by 0.0045 from 40 to 80, so the
  analysis's rule (a move within 0.01, overlapping intervals) calls it converged at the rung of 80 epochs;
* top layer of 20 units: rho_c(B) = 0.80 + 0.02 log2(B / 10): rising by 0.02 per doubling, it never converges.

A trial behaves like the real trainable where the ladder relies on it: it evaluates every ``eval_every`` epochs and
at its budget's end, checkpoints its step in its own folder (``ouvae_checkpoints/state.json``), continues from its
own checkpoint after a retry or ``--resume``, and a ladder trial with ``continue_from`` starts at the step of that
checkpoint (it raises if there is none: a continued run is never retrained) and first re-sends the rows so far,
the old budget's end no longer final unless the cadence evaluates it. Counts are deterministic in (rho, seed,
epoch), so the rows of a continued run are those of a run trained to the larger budget in one go.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping
from typing import Any

from analysis.testing.synthetic import noisy_active_units
from sweeps.protocol import ladder_spec, run_specs

WIDTH, SEED_SD = 0.005, 0.002
STATE = "ouvae_checkpoints/state.json"


def true_rho_c(top_dim: int, budget: float) -> float:
    """The truth at `budget` epochs (see the module docstring)."""
    if top_dim == 10:
        return 0.93 - 0.096 * (10.0 / budget) ** 2
    return 0.80 + 0.02 * math.log2(budget / 10.0)


def converged_rung(budgets: list[int], tolerance: float) -> int | None:
    """The first rung whose true rho_c moved by at most `tolerance` since the rung before (top layer of 10)."""
    for k in range(1, len(budgets)):
        if abs(true_rho_c(10, budgets[k]) - true_rho_c(10, budgets[k - 1])) <= tolerance:
            return k
    return None


def member_row(spec: Mapping[str, Any], member: int, epoch: int, final: bool) -> dict[str, Any]:
    dims = [int(d) for d in spec["latent_dims"]]
    top = dims[-1]
    rho, seed = float(spec["rho"]), int(spec["seed"])
    active = noisy_active_units(rho, seed, top, rho_c=true_rho_c(top, epoch), width=WIDTH, seed_sd=SEED_SD,
                                key=(epoch,))
    return {"member": member, "step": epoch, "epoch": epoch, "is_final": final, "rho": rho, "rho_eval": rho,
            "seed": seed, "latent_dims": "-".join(map(str, dims)), "n_layers": len(dims), "dataset": "synthetic",
            "split": "validation", "smooth_space": spec.get("smooth_space"), "architecture": "mlp",
            "hidden_units": 1, "smooth": "both", "smooth_samples": 1,
            "objective": "elbo", "beta_schedule": "constant", "free_bits": 0.0, "preset": "synthetic",
            "top_active_units": int(active), "top_kl": 0.05 + 0.8 * int(active), "failure": None,
            "population_size": len(spec.get("members", [])) or 1}


def drifting_trainable(config: dict[str, Any]) -> None:
    """Ray Tune function trainable of a ladder trial (a population entry; budget ``epochs``; ``eval_every``)."""
    from ray import tune

    specs = run_specs(config)
    budget, every = int(config["epochs"]), int(config.get("eval_every") or 10)
    storage = tune.get_context().get_storage()
    own = os.path.join(storage.trial_fs_path, STATE)
    start = _step_in(own)
    if start is None:
        origin = ladder_spec(config).get("continue_from")
        start = 0
        if origin:
            start = _step_in(os.path.join(os.path.dirname(origin), STATE))
            if start is None:
                raise RuntimeError(f"the ladder continues this run from {origin}, which holds no checkpoint")
    due = [e for e in range(every, budget + 1, every)] + ([budget] if budget % every else [])
    for epoch in due:
        rows = [member_row(s, i, epoch, epoch == budget) for i, s in enumerate(specs)]
        if epoch > start:
            time.sleep(float(config.get("seconds_per_eval") or 0.0))
            _save_step(own, epoch)
        tune.report({"members": rows, "step": epoch, "epoch": epoch, "is_final": epoch == budget,
                     "failed_members": []})


def _step_in(path: str) -> int | None:
    try:
        with open(path) as f:
            return int(json.load(f)["step"])
    except FileNotFoundError:
        return None


def _save_step(path: str, step: int) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump({"step": step}, f)
    os.replace(tmp, path)

"""Calibration of the rho_c locator against the linear-Gaussian model whose rho_c is known exactly.

    .venv/bin/python benchmarks/calibration.py --out calibration.json [--seeds 4] [--steps 3000] [--only prior]

For each configuration -- posterior reading: K in {3, 5, 9} x r = lambda / (beta sigma^2) in {0.5, 0.7, 0.9};
prior reading: K = 5, r in {1.1, 1.5, 3.0} -- it trains the whole rho grid x seeds as ONE population through the
real trainer (ouvae.population.Population: one stochastic layer, hidden_layers = 0, dataset "gaussian" isotropic
in the latent directions, Gaussian likelihood of variance 1, beta = 1), writes every evaluation as rows of a
real results table (sweeps/results.py, the sweep's own writer), and reads them back with the analysis
(analysis.report.analyze): the active-unit fit and the KL onset with their 95% intervals, at every evaluation
step (the budget ladder). It prints and writes, per configuration and estimator: the closed form
(analysis/closed_form.py), the fitted rho_c, its interval, the error, whether the closed form is inside, and the
budget. The table in BENCHMARKS.md comes from this script.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from analysis.closed_form import critical_rho, optimum
from analysis.critical import check_runs, configurations, final_runs_query, kl_midpoint, run_direction
from analysis.io import collect, load_results
from analysis.onset import fit_kl_onset
from analysis.schema import SCHEMA_VERSION
from analysis.transition import ACTIVE_ABOVE, fit_transition
from ouvae.config import Config
from ouvae.population import Population
from ouvae.records import run_columns
from sweeps.results import rows_from_result, write_trial_file

POSTERIOR = [(k, r) for k in (3, 5, 9) for r in (0.5, 0.7, 0.9)]
PRIOR = [(5, r) for r in (1.1, 1.5, 3.0)]
LATENT = 2  # latent units = data dimension: the data are isotropic in the latent directions


def base_config(args: argparse.Namespace) -> Config:
    return Config(dataset="gaussian", latent_dims=(LATENT,), hidden_layers=0, gaussian_dim=LATENT,
                  gaussian_samples=args.samples, batch_size=args.batch, steps=args.steps, epochs=1,
                  eval_every=max(1, args.steps // args.budgets // max(1, args.samples // args.batch)), eval_iw_k=1,
                  lr=args.lr, lr_decay_steps=args.lr_decay_steps, num_threads=1, preset="calibration")


def rho_grid(rc: float, args: argparse.Namespace) -> list[float]:
    """The multiples of --spacing within --span of rho_c, in (0, 1]: a range that holds the transition, as a sweep
    that has found it would sample (the grid is a fixed lattice, not centred on the answer)."""
    grid = np.round(np.arange(0.0, 1.0 + 1e-9, args.spacing), 6)
    return [float(r) for r in grid if 0 < r <= 1 and abs(r - rc) <= args.span + 1e-9]


def train(reading: str, k: int, r: float, args: argparse.Namespace, root: str, sweep: str) -> float:
    """Train one configuration's grid x seeds as one population; write its rows as `sweep`; return the seconds."""
    base = base_config(args).replace(smooth_samples=k, gaussian_eigenvalue=r, smooth_space=reading)
    rc = float(critical_rho(r, k, reading))
    configs = [base.replace(rho=x, seed=s) for x in rho_grid(rc, args) for s in range(args.seeds)]
    rows: list[dict[str, Any]] = []

    def keep(population: Population, metrics: list[dict[str, Any]]) -> None:
        for m in metrics:
            cfg = population.members[m["member"]].cfg
            rows.append({**m, **run_columns(cfg, population.data), "schema_version": SCHEMA_VERSION})

    t0 = time.perf_counter()
    Population(configs, callback=keep, chunk=None).fit()
    seconds = time.perf_counter() - t0
    # one file per population trial, as the sweep writes it (its members' rows, every evaluation)
    write_trial_file(root, sweep, "population", rows_from_result({"members": rows}, sweep_id=sweep,
                                                                  trial_id="population"))
    return seconds


def fits_at_each_step(root: str, sweep: str, direction: str, n_boot: int) -> list[dict[str, Any]]:
    """Both estimators at every evaluation step, from the results table, with the analysis's own code."""
    data = load_results(root, [sweep])
    evals = collect(data, data.lf.select("rho", "seed", "step", "top_kl", "top_active_units", "latent_dims"))[0]
    out = []
    for step in sorted(evals["step"].unique().to_list()):
        at = evals.filter(pl.col("step") == step).sort("rho", "seed")
        rho, seed = at["rho"].to_numpy(), at["seed"].to_numpy()
        units = fit_transition(rho, seed, at["top_active_units"].to_numpy(), LATENT, n_boot=n_boot, rng=0,
                               direction=direction)
        onset = fit_kl_onset(rho, seed, at["top_kl"].to_numpy(), direction=direction, n_boot=n_boot, rng=0)
        out.append({"step": int(step), "active_units": [units.rho_c, units.ci_low, units.ci_high],
                    "kl_onset": [onset.rho_c, onset.ci_low, onset.ci_high]})
    return out


def final_table_check(root: str, sweep: str) -> dict[str, Any]:
    """The analysis's end-of-training pipeline on the table: the runs, configuration and inferred direction."""
    data = load_results(root, [sweep])
    runs, = collect(data, final_runs_query(data))
    runs = check_runs(runs, unfinished=0, include_unfinished=False, drop_nan=False, notes=[])
    return {"configurations": configurations(runs).height, "runs": runs.height,
            "inferred_direction": run_direction(runs)}


def noise_free(reading: str, k: int, r: float, args: argparse.Namespace) -> dict[str, float | None]:
    """Every estimator the analysis offers on the exact optimum sampled on the benchmark's grid (3 identical seeds):
    the bias each has by construction, with no training noise and no finite budget."""
    rc = float(critical_rho(r, k, reading))
    rho = np.repeat(rho_grid(rc, args), 3)
    seed = np.tile(np.arange(3), rho.size // 3)
    exact = optimum(r, k, rho, reading)
    direction = "active below" if reading == "posterior" else ACTIVE_ABOVE
    units = fit_transition(rho, seed, LATENT * (exact.mean_variance > 0.01), LATENT, n_boot=0, direction=direction)
    onset = fit_kl_onset(rho, seed, LATENT * exact.kl, direction=direction, n_boot=0)
    return {"active_units": units.rho_c, "changepoint": units.changepoint, "kl_midpoint":
            kl_midpoint(rho, LATENT * exact.kl, direction), "kl_onset": onset.rho_c}


def entry(rc: float, est: list[float | None]) -> dict[str, Any]:
    value, lo, hi = est
    return {"fitted": value, "ci_low": lo, "ci_high": hi,
            "error": None if value is None else value - rc,
            "inside": None if lo is None else bool(lo <= rc <= hi)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="JSON file for the results")
    p.add_argument("--seeds", type=int, default=4)
    p.add_argument("--steps", type=int, default=3000, help="optimizer steps per run (the budget)")
    p.add_argument("--budgets", type=int, default=3, help="evaluations per run (the budget ladder)")
    p.add_argument("--spacing", type=float, default=0.025, help="rho grid spacing")
    p.add_argument("--span", type=float, default=0.15, help="the grid reaches this far either side of rho_c")
    p.add_argument("--samples", type=int, default=1000, help="vectors per split of the gaussian data set")
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--lr", type=float, default=5e-3)
    p.add_argument("--lr-decay-steps", type=int, default=2000, help="the k-th update uses lr / (1 + k/d); 0: a "
                   "constant lr, whose stationary noise leaves collapsed units a KL floor that blurs rho_c")
    p.add_argument("--n-boot", type=int, default=500)
    p.add_argument("--results", default=None, help="results-table folder to write (default: a temporary one); a "
                                                   "configuration already there is analysed again, not retrained")
    p.add_argument("--only", default=None, help="configurations whose name starts with this, e.g. prior or "
                                                "posterior-K5")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    todo = [("posterior", k, r) for k, r in POSTERIOR] + [("prior", k, r) for k, r in PRIOR]
    if args.only:
        todo = [t for t in todo if f"{t[0]}-K{t[1]}-r{t[2]:g}".startswith(args.only)]
    results, notes = [], []
    root = args.results or tempfile.mkdtemp(prefix="calibration-")
    t_all = time.perf_counter()
    for reading, k, r in todo:
        rc = float(critical_rho(r, k, reading))
        sweep = f"{reading}-K{k}-r{r:g}"
        seconds = None
        if not (Path(root) / f"sweep_id={sweep}").is_dir():
            seconds = train(reading, k, r, args, root, sweep)
        direction = "active below" if reading == "posterior" else ACTIVE_ABOVE
        ladder = fits_at_each_step(root, sweep, direction, args.n_boot)
        check = final_table_check(root, sweep)
        last = ladder[-1]
        res = {"reading": reading, "K": k, "r": r, "closed_form": rc, "train_seconds": seconds,
               "direction": direction, "inferred_direction": check["inferred_direction"],
               "runs": check["runs"], "rho_values": len(rho_grid(rc, args)), "seeds": args.seeds,
               "steps": args.steps, "active_units": entry(rc, last["active_units"]),
               "kl_onset": entry(rc, last["kl_onset"]), "ladder": ladder,
               "noise_free": noise_free(reading, k, r, args)}
        results.append(res)
        ko, au = res["kl_onset"], res["active_units"]
        print(f"{reading:9s} K={k} r={r:<4g} closed {rc:.4f} | KL onset {_f(ko['fitted'])} "
              f"[{_f(ko['ci_low'])}, {_f(ko['ci_high'])}] err {_f(ko['error'], '+.4f')} in={ko['inside']} | "
              f"active units {_f(au['fitted'])} [{_f(au['ci_low'])}, {_f(au['ci_high'])}] "
              f"err {_f(au['error'], '+.4f')} in={au['inside']} | {_f(seconds, '.0f')} s", flush=True)
    total = time.perf_counter() - t_all
    for name in ("kl_onset", "active_units"):
        fits = [res[name] for res in results if res[name]["fitted"] is not None]
        print(f"{name}: within 0.01 of the closed form in {sum(abs(f['error']) <= 0.01 for f in fits)} of "
              f"{len(results)}, inside its interval in {sum(bool(f['inside']) for f in fits)} of {len(results)}")
    for n in notes:
        print(n)
    meta = {"command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
            "settings": vars(args), "total_seconds": total, "machine": platform.platform(),
            "cpus": os.cpu_count(), "torch": torch.__version__, "notes": notes,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    Path(args.out).write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    print(f"total {total:.0f} s; written {args.out}")
    return 0


def _f(v: float | None, spec: str = ".4f") -> str:
    return "–" if v is None else format(v, spec)


if __name__ == "__main__":
    sys.exit(main())

"""Calibration of the budget verdict (analysis/budget.py, budget_verdict) on models whose rho_c is known exactly.

    .venv/bin/python benchmarks/verdict_calibration.py --out verdict.json [--config posterior:9:0.7 ...] \
        [--replicates 10] [--seeds 4] [--steps 64000] [--rungs 5] [--lr-decay-steps 2000] [--lr-decay-power 1]

What it counts (issue 24): how often the verdict says CONVERGED while the estimate it calls converged -- the last
rung's rho_c -- lies farther than the tolerance (0.01) from the closed form (analysis/closed_form.py). Every other
verdict is counted too, with the last rung's and the extrapolation's errors.

How: per configuration (``family:K:r`` as in benchmarks/calibration.py; without --config its 12 built-in one-layer
configurations), --replicates independent replicate sweeps, each a lattice of --points rho values over --rho-range
(nothing placed around the answer) x its own --seeds held-out seeds, all trained as ONE population through the real
trainer to --steps, evaluated at every rung: --steps / 2^(rungs-1), ..., --steps / 2, --steps (a ladder whose
runs all continue: each rung is the run trained to that budget in one go). The rows go through the sweep's table
writer and are read back with the analysis's reader; at every rung the active-unit transition is fitted
(analysis/transition.py, seed bootstrap), and after each rung from the second on the verdict is taken on the
rungs so far, exactly as the ladder takes it (fits, analysis.budget.extrapolate, budget_verdict).

A run at --steps 64000 --rungs 5 (rungs 4k-64k) x 12 configurations x 10 replicates x 4 seeds x 10 rho values is
hours on two busy cores; a tiny check that it works: --config posterior:5:0.7 --replicates 1 --seeds 2 --points 4
--steps 400 --rungs 3.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from analysis.budget import TOLERANCE_OF_MARGIN, BudgetSeries, BudgetVerdict, budget_verdict, extrapolate
from analysis.compare import DEFAULT_MARGIN
from analysis.io import collect, load_results
from analysis.schema import SCHEMA_VERSION
from analysis.transition import fit_transition
from calibration import BUILT_IN, HELD_OUT_FROM, LATENT, Case, base_config, parse_case  # the script's folder
from ouvae.population import Population
from ouvae.records import run_columns
from sweeps.results import rows_from_result, write_trial_file

TOLERANCE = TOLERANCE_OF_MARGIN * DEFAULT_MARGIN


def rung_steps(args: argparse.Namespace) -> list[int]:
    return [args.steps // 2 ** j for j in reversed(range(args.rungs))]


def seeds_of(rep: int, args: argparse.Namespace) -> list[int]:
    return [args.first_seed + rep * args.seeds + s for s in range(args.seeds)]


def train(case: Case, args: argparse.Namespace, root: str) -> float:
    """Every replicate's lattice as one population, evaluated at every rung; rows into the table as sweep
    `case.name`. Returns the training seconds."""
    torch.set_num_threads(1)
    ns = argparse.Namespace(**{**vars(args), "budgets": 2 ** (args.rungs - 1)})
    base = base_config(case, ns).replace(lr_decay_power=args.lr_decay_power)
    rhos = np.linspace(*args.rho_range, args.points)
    configs = [base.replace(rho=round(float(r), 6), seed=s) for rep in range(args.replicates)
               for r in rhos for s in seeds_of(rep, args)]
    rows: list[dict[str, Any]] = []

    def keep(population: Population, metrics: list[dict[str, Any]]) -> None:
        for m in metrics:
            rows.append({**m, **run_columns(population.members[m["member"]].cfg, population.data),
                         "schema_version": SCHEMA_VERSION})

    t0 = time.perf_counter()
    Population(configs, callback=keep, chunk=len(configs)).fit()
    write_trial_file(root, case.name, "all", rows_from_result({"members": rows}, sweep_id=case.name, trial_id="all"))
    return time.perf_counter() - t0


def verdicts(case: Case, args: argparse.Namespace, root: str) -> list[dict[str, Any]]:
    """Per replicate and rung (from the second): the verdict on the rungs so far and its errors."""
    rc = case.closed_form
    data = load_results(root, [case.name])
    evals = collect(data, data.lf.select("rho", "seed", "step", "top_active_units"))[0]
    steps = [s for s in rung_steps(args) if s in set(evals["step"].to_list())]
    out = []
    for rep in range(args.replicates):
        mine = evals.filter(pl.col("seed").is_in(seeds_of(rep, args)))
        fits = []
        for j, step in enumerate(steps):
            at = mine.filter(pl.col("step") == step).sort("rho", "seed")
            fits.append(fit_transition(at["rho"].to_numpy(), at["seed"].to_numpy(), at["top_active_units"].to_numpy(),
                                       LATENT, n_boot=args.n_boot, rng=np.random.default_rng([rep, j]),
                                       direction=case.direction))
            if j == 0:
                continue
            series = BudgetSeries(case.name, steps[:j + 1], fits[:j + 1], BudgetVerdict.NOT_DECIDED, None, TOLERANCE,
                                  lr_decay_steps=args.lr_decay_steps, lr_decay_power=args.lr_decay_power)
            model = extrapolate(series)
            verdict, _ = budget_verdict(fits[:j + 1], model, TOLERANCE)
            last = fits[j].rho_c
            error = None if last is None else last - rc
            out.append({"replicate": rep, "rungs": j + 1, "step": step, "verdict": verdict.value, "rho_c": last,
                        "error": error, "rho_inf": model.rho_inf if model else None,
                        "rho_inf_error": model.rho_inf - rc if model else None,
                        "false_converged": verdict is BudgetVerdict.CONVERGED and (error is None
                                                                                  or abs(error) > TOLERANCE)})
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="JSON file for the results")
    p.add_argument("--config", dest="configs", type=parse_case, action="append",
                   help="family:K:r, repeatable (default: benchmarks/calibration.py's built-in configurations)")
    p.add_argument("--replicates", type=int, default=10)
    p.add_argument("--first-seed", type=int, default=HELD_OUT_FROM)
    p.add_argument("--seeds", type=int, default=4, help="seeds per replicate")
    p.add_argument("--points", type=int, default=10, help="rho values of each replicate's lattice")
    p.add_argument("--rho-range", type=float, nargs=2, default=(0.1, 1.0), metavar=("LOW", "HIGH"))
    p.add_argument("--steps", type=int, default=64000, help="the largest rung, optimizer steps")
    p.add_argument("--rungs", type=int, default=5, help="rungs, each twice the one before (at least 3)")
    p.add_argument("--samples", type=int, default=1000, help="vectors per split of the gaussian data set")
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--lr", type=float, default=5e-3)
    p.add_argument("--lr-decay-steps", type=int, default=2000, help="d of lr / (1 + k/d)^a (0: constant lr)")
    p.add_argument("--lr-decay-power", type=float, default=1.0, help="a of lr / (1 + k/d)^a")
    p.add_argument("--n-boot", type=int, default=300)
    p.add_argument("--results", default=None, help="results-table folder (default: a temporary one)")
    args = p.parse_args(argv)
    if args.rungs < 3:
        p.error("--rungs: give at least 3 (a converged verdict needs three)")
    cases = args.configs or [parse_case(c) for c in BUILT_IN]
    root = args.results or tempfile.mkdtemp(prefix="verdict-calibration-")
    results, total = [], {"converged": 0, "false_converged": 0, "verdicts": 0}
    for case in cases:
        seconds = train(case, args, root)
        rows = verdicts(case, args, root)
        conv = [r for r in rows if r["verdict"] == BudgetVerdict.CONVERGED.value]
        false = [r for r in conv if r["false_converged"]]
        total["converged"] += len(conv)
        total["false_converged"] += len(false)
        total["verdicts"] += len(rows)
        counts = {v.value: sum(r["verdict"] == v.value for r in rows) for v in BudgetVerdict}
        print(f"{case.name:28s} closed {case.closed_form:.4f} | converged {len(conv)}/{len(rows)} verdicts, "
              f"false converged {len(false)} | {counts} | {seconds:.0f} s", flush=True)
        results.append({"config": f"{case.family}:{case.k}:{case.r:g}", "closed_form": case.closed_form,
                        "train_seconds": seconds, "counts": counts, "verdicts": rows})
    print(f"all: {total['false_converged']} false 'converged' of {total['converged']} converged verdicts "
          f"({total['verdicts']} verdicts); tolerance {TOLERANCE:g}")
    Path(args.out).write_text(json.dumps({"args": {k: v for k, v in vars(args).items() if k != "configs"},
                                          "rungs": rung_steps(args), "tolerance": TOLERANCE, "total": total,
                                          "configs": results}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())

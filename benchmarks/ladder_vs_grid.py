#!/usr/bin/env python
"""The ladder (``critical_rho.py --until-converged``) against a grid trained to the budget where rho_c converges.

The claim under test (issue: converged rho_c): on a model whose rho_c drifts with the budget, the ladder finds the
converged rho_c for at most half the member-steps (runs x optimizer steps) of training every grid point to the
budget at which rho_c has converged -- a budget the grid would have had to guess, and which is handed to it here --
with its rho_c inside the grid's interval.

The model: sweeps/testing/ladder_synthetic.py, top layer of 10 units, rho_c(B) = 0.93 - 0.096 (10 / B)^2 (epochs; one
step per epoch). The ladder runs through real Ray Tune (a local Ray of --num-cpus); the grid side needs no
training: its runs' counts at a budget are the synthetic model's (deterministic per rho, seed and budget), fitted
with the analysis's own fit (analysis.critical.fit_run_table).

    PYTHONPATH=. python benchmarks/ladder_vs_grid.py               # ~3-6 min on a loaded 2-core machine
    PYTHONPATH=. python benchmarks/ladder_vs_grid.py --rho-step 0.02 --seeds 5

Prints the ladder's rungs, the member-steps of both sides and their ratio, and whether the ladder's rho_c lies in
the grid's interval. Figures: BENCHMARKS.md, "Converged rho_c: the ladder".
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

from analysis.critical import fit_run_table
from sweeps import rho_sweep
from sweeps.storage import LADDER_FILE
from sweeps.testing.ladder_synthetic import drifting_trainable, member_row


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rho-min", type=float, default=0.70)
    p.add_argument("--rho-max", type=float, default=1.00)
    p.add_argument("--rho-step", type=float, default=0.01)
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--first", type=int, default=10, help="first rung (epochs)")
    p.add_argument("--max", type=int, default=320, help="largest budget (epochs)")
    p.add_argument("--num-cpus", type=int, default=2)
    args = p.parse_args()

    rhos = [round(float(r), 4) for r in np.arange(args.rho_min, args.rho_max + 1e-9, args.rho_step)]
    with tempfile.TemporaryDirectory(prefix="ladder-bench-") as storage:
        argv = ["--until-converged", "--grid", "--latent-dims", "10", "--rhos", *map(str, rhos), "--n-seeds",
                str(args.seeds), "--population", str(args.seeds), "--epochs", str(args.first), "--max-epochs",
                str(args.max), "--set", "eval_every=10", "--storage", storage, "--name", "bench", "--quiet",
                "--no-report", "--num-cpus", str(args.num_cpus)]
        t0 = time.monotonic()
        code = rho_sweep.main(argv, trainable=drifting_trainable)
        wall = time.monotonic() - t0
        if code:
            return code
        state = json.loads(Path(storage, "ray", "bench", LADDER_FILE).read_text())
    entry = state["configs"]["10"]
    last = entry["rungs"][-1]
    budget = state["budgets"][last["rung"]]
    ladder_steps = sum(r["member_steps"] for r in entry["rungs"])

    runs = [member_row({"latent_dims": [10], "rho": r, "seed": s}, 0, budget, True)
            for r in rhos for s in range(args.seeds)]
    table = pl.DataFrame(runs).with_columns(pl.lit(10).alias("top_dim"))
    grid = fit_run_table(table.sort("rho", "seed"), level=0.95, n_boot=500, rng=np.random.default_rng(0),
                         what="grid")
    grid_steps = len(runs) * budget
    inside = grid.ci_low is not None and grid.ci_low <= last["rho_c"] <= grid.ci_high

    print(f"\ngrid: {len(rhos)} rho values {rhos[0]:g}..{rhos[-1]:g} x {args.seeds} seeds = {len(runs)} runs")
    print(f"ladder: {entry['done']}; rungs {state['budgets'][:last['rung'] + 1]} epochs; {wall:.0f} s wall")
    for r in entry["rungs"]:
        print(f"  rung {r['rung']} ({state['budgets'][r['rung']]} epochs): rho_c {r['rho_c']:.4f} "
              f"[{r['ci_low']:.4f}, {r['ci_high']:.4f}] {r['verdict']}, {r['runs_trained']} runs trained, "
              f"{r['member_steps']} member-steps")
    print(f"grid trained to {budget} epochs: rho_c {grid.rho_c:.4f} [{grid.ci_low:.4f}, {grid.ci_high:.4f}], "
          f"{grid_steps} member-steps")
    print(f"member-steps ladder / grid: {ladder_steps} / {grid_steps} = {ladder_steps / grid_steps:.2f} "
          f"(target <= 0.5); ladder rho_c inside the grid's interval: {inside}")
    return 0 if inside and ladder_steps <= 0.5 * grid_steps else 1


if __name__ == "__main__":
    sys.exit(main())

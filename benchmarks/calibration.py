"""Calibration of the rho_c locator on models whose rho_c is known exactly: coverage on held-out replicates.

    .venv/bin/python benchmarks/calibration.py --out calibration.json [--config posterior:9:0.7 ...] \
        [--replicates 20] [--first-seed 4000] [--seeds 4] [--steps 8000] [--jobs 2]

A configuration is `family:K:r`: `posterior` and `prior` are the one-layer linear-Gaussian VAE read either way
(analysis/closed_form.py), `two-layer` the two-layer hierarchy (prior reading) and `two-layer-posterior` its other
reading; K the smoothing copies, r = lambda / (beta sigma^2). Without --config the 12 built-in one-layer
configurations run (posterior K in {3, 5, 9} x r in {0.5, 0.7, 0.9}; prior K = 5, r in {1.1, 1.5, 3.0}).

Why replicates: an interval is a claim about how often it covers, which one sweep cannot show. Each configuration
is swept --replicates times, each replicate a sweep as a user would run it -- a lattice over the whole range
(--rho-range, --coarse-points) refined by the project's own adaptive search (sweeps/refine.py RefinePolicy, the
policy behind `critical_rho.py --adaptive`), every rho with the replicate's own --seeds seeds -- and nothing is
placed around the known answer. The replicates' runs of one round train as ONE population through the real
trainer, are written with the sweep's own table writer and fitted from that table with the analysis's code: the
KL onset and the active-unit fit, with their 95% seed-bootstrap intervals, at every evaluation step.

Why held-out seeds: the onset's settings (analysis/onset.py FROZEN) were designed while looking at runs with seeds
below HELD_OUT_FROM; coverage counted on those runs says little. The default --first-seed is HELD_OUT_FROM and
replicate i takes seeds first_seed + i * seeds ... + seeds - 1, so no two replicates share a seed. The ablation
refits the same held-out runs with each of the onset's settings turned off.

Per configuration and estimator the JSON gives coverage (with its Wilson 95% interval), bias (mean error), RMSE
and the mean interval width, at every budget; per replicate the fitted rho_c, its interval, `error` and `inside`.
docs/calibration.md shows the table and the command that made it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
from scipy.stats import binomtest

from analysis.closed_form import DIRECTION_OF_READING, critical_rho, optimum
from analysis.io import collect, load_results
from analysis.onset import FROZEN, OnsetSettings, fit_kl_onset
from analysis.schema import SCHEMA_VERSION
from analysis.transition import ACTIVE_ABOVE, fit_transition
from ouvae.config import Config
from ouvae.population import Population
from ouvae.records import run_columns
from sweeps.refine import RefinePolicy
from sweeps.results import rows_from_result, write_trial_file

LATENT = 2  # latent units per layer = data dimension: the data are isotropic in the latent directions
# Seeds below this were used while the estimators were developed; coverage uses seeds from here. Spent (development
# seeds since the estimator changed after them): 0-999, 1000-1079 (the first held-out table), 2000-2159 and
# 3000-3159 (docs/calibration.md, "Coverage on held-out replicates"). 4000-4239 measured the estimator of 77233c4;
# once it changes, they are spent too and a measurement starts at 4240.
HELD_OUT_FROM = 4000
# family -> (smooth_space, stochastic layers); every map smoothed (Config.smooth "both", the default)
FAMILIES = {"posterior": ("posterior", 1), "prior": ("prior", 1), "two-layer": ("prior", 2),
            "two-layer-posterior": ("posterior", 2)}
BUILT_IN = ([f"posterior:{k}:{r}" for k in (3, 5, 9) for r in (0.5, 0.7, 0.9)]
            + [f"prior:5:{r}" for r in (1.1, 1.5, 3.0)])
# Each of the onset's settings turned off, refitted on the same held-out runs (the last budget).
ABLATIONS = {"no curvature term": replace(FROZEN, curvature=False),
             "sharp corner (no noise rounding)": replace(FROZEN, widths=(0.0,)),
             "no shape floor": replace(FROZEN, shape_floor=0.0),
             "no few-seed widening": replace(FROZEN, widen_few_seeds=False),
             "window without a second collapsed rho": replace(FROZEN, collapsed_levels=0)}
DONE_FILE = "calibration-done.json"  # written when a configuration's every round is in the table


@dataclass(frozen=True)
class Case:
    """One configuration of a model whose rho_c is known in closed form."""

    family: str
    k: int
    r: float

    @property
    def reading(self) -> str:
        return FAMILIES[self.family][0]

    @property
    def layers(self) -> int:
        return FAMILIES[self.family][1]

    @property
    def name(self) -> str:
        return f"{self.family}-K{self.k}-r{self.r:g}"

    @property
    def direction(self) -> str:
        """The two-layer top is active above rho_c in either reading (docs/calibration.md, "A two-layer hierarchy")."""
        return DIRECTION_OF_READING[self.reading] if self.layers == 1 else ACTIVE_ABOVE

    @property
    def closed_form(self) -> float:
        return float(critical_rho(self.r, self.k, self.reading, layers=self.layers))

    def exact_top_kl(self, rho: np.ndarray) -> np.ndarray:
        """The exact optimum's top-layer KL (summed over its units) at each rho (the trainer's default smooth)."""
        return LATENT * np.asarray(optimum(self.r, self.k, rho, self.reading, layers=self.layers).kl)


def parse_case(text: str) -> Case:
    """`family:K:r`, e.g. posterior:9:0.7; a bad one is a one-line argparse error."""
    parts = text.split(":")
    if len(parts) != 3 or parts[0] not in FAMILIES:
        raise argparse.ArgumentTypeError(f"--config {text!r}: write family:K:r with family one of "
                                         f"{', '.join(FAMILIES)}, e.g. posterior:9:0.7")
    try:
        case = Case(parts[0], int(parts[1]), float(parts[2]))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--config {text!r}: K must be an integer >= 2 and r a number, "
                                         f"e.g. posterior:9:0.7") from None
    try:
        rc = case.closed_form
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"--config {text!r}: {e}") from None
    if not (case.k >= 2 and math.isfinite(rc) and 0 < rc < 1):
        raise argparse.ArgumentTypeError(f"--config {text!r} has no transition inside (0, 1) (closed-form rho_c "
                                         f"{rc:g}): pick r with a threshold, see docs/calibration.md")
    return case


def base_config(case: Case, args: argparse.Namespace) -> Config:
    per_eval = max(1, args.steps // args.budgets)
    return Config(dataset="gaussian", latent_dims=(LATENT,) * case.layers, hidden_layers=0, gaussian_dim=LATENT,
                  gaussian_samples=args.samples, batch_size=args.batch, steps=args.steps, epochs=1,
                  eval_every=max(1, per_eval // max(1, args.samples // args.batch)), eval_iw_k=2, lr=args.lr,
                  lr_decay_steps=args.lr_decay_steps, num_threads=1, preset="calibration", smooth_samples=case.k,
                  gaussian_eigenvalue=case.r, smooth_space=case.reading)


def replicate_seeds(rep: int, args: argparse.Namespace) -> list[int]:
    return [args.first_seed + rep * args.seeds + s for s in range(args.seeds)]


def replicate_of(seed: int, args: argparse.Namespace) -> int:
    return (seed - args.first_seed) // args.seeds


def policies(case: Case, args: argparse.Namespace) -> list[RefinePolicy]:
    """One adaptive search per replicate, with the settings `critical_rho.py --adaptive` takes from the command
    line (its defaults but for the range, which spans the whole of (0, 1] here)."""
    return [RefinePolicy([{"latent_dims": (LATENT,) * case.layers}], top_dims=[LATENT],
                         rho_range=tuple(args.rho_range), seeds=replicate_seeds(rep, args),
                         coarse_points=args.coarse_points, min_spacing=args.rho_spacing,
                         target_width=args.target_width, rho_per_round=args.rho_per_round,
                         max_trials_per_group=args.budget, random_state=rep)
            for rep in range(args.replicates)]


def train_case(case: Case, args: argparse.Namespace, root: str) -> dict[str, Any]:
    """Every replicate's sweep of `case`, round by round (each round one population over all replicates), written
    to the table as sweep `case.name`; returns what was trained. A configuration already complete in `root` is not
    retrained; one left half-written by an interrupted run is trained again from the start."""
    folder = Path(root) / f"sweep_id={case.name}"
    if (folder / DONE_FILE).is_file():
        return json.loads((folder / DONE_FILE).read_text())
    shutil.rmtree(folder, ignore_errors=True)
    torch.set_num_threads(1)
    base = base_config(case, args)
    searches = policies(case, args)
    t0, rounds, members = time.perf_counter(), 0, 0
    while True:
        todo = [(rep, p) for rep, search in enumerate(searches) for p in search.next_proposals(10**6)]
        if not todo:
            break
        configs = [base.replace(rho=p.rho, seed=p.seed) for _, p in todo]
        rows: list[dict[str, Any]] = []
        final: dict[int, dict[str, Any]] = {}

        def keep(population: Population, metrics: list[dict[str, Any]]) -> None:
            for m in metrics:
                cfg = population.members[m["member"]].cfg
                rows.append({**m, **run_columns(cfg, population.data), "schema_version": SCHEMA_VERSION})
                final[m["member"]] = m

        Population(configs, callback=keep, chunk=len(configs)).fit()  # a tiny model: one pass is fastest
        trial = f"round-{rounds}"
        write_trial_file(root, case.name, trial, rows_from_result({"members": rows}, sweep_id=case.name,
                                                                  trial_id=trial))
        for i, (rep, p) in enumerate(todo):
            searches[rep].record(0, p.rho, p.seed, final[i].get("top_active_units"))
        rounds, members = rounds + 1, members + len(todo)
    done = {"train_seconds": time.perf_counter() - t0, "rounds": rounds, "runs": members,
            "stopped": [s.summary()[0]["reason"] for s in searches]}
    (folder / DONE_FILE).write_text(json.dumps(done))
    return done


def entry(rc: float, fit: Any) -> dict[str, Any]:
    value, lo, hi = fit.rho_c, fit.ci_low, fit.ci_high
    return {"fitted": value, "ci_low": lo, "ci_high": hi, "error": None if value is None else value - rc,
            "inside": bool(lo is not None and lo <= rc <= hi), "width": None if lo is None else hi - lo}


def summarise(entries: list[dict[str, Any]], level: float = 0.95) -> dict[str, Any]:
    """Coverage with its Wilson interval over every replicate (a replicate with no interval counts as a miss),
    bias, RMSE and mean width over the replicates with an estimate."""
    n = len(entries)
    covered = sum(e["inside"] for e in entries)
    errors = np.array([e["error"] for e in entries if e["error"] is not None], dtype=float)
    widths = np.array([e["width"] for e in entries if e["width"] is not None], dtype=float)
    ci = binomtest(covered, n).proportion_ci(confidence_level=level, method="wilson") if n else None
    return {"n": n, "covered": covered, "coverage": covered / n if n else None,
            "coverage_low": None if ci is None else ci.low, "coverage_high": None if ci is None else ci.high,
            "no_estimate": n - errors.size, "bias": float(errors.mean()) if errors.size else None,
            "rmse": float(np.sqrt((errors**2).mean())) if errors.size else None,
            "width": float(widths.mean()) if widths.size else None}


def fit_case(case: Case, args: argparse.Namespace, root: str) -> dict[str, Any]:
    """Both estimators on every replicate at every budget, and the onset's ablation at the last budget, from the
    results table with the analysis's own code; coverage per estimator."""
    rc = case.closed_form
    data = load_results(root, [case.name])
    evals = collect(data, data.lf.select("rho", "seed", "step", "top_kl", "top_active_units"))[0]
    evals = evals.with_columns(((pl.col("seed") - args.first_seed) // args.seeds).alias("replicate"))
    steps = sorted(evals["step"].unique().to_list())
    replicates, per_step = [], {s: {"kl_onset": [], "active_units": []} for s in steps}
    ablation: dict[str, list[dict[str, Any]]] = {name: [] for name in ABLATIONS}
    for rep in sorted(evals["replicate"].unique().to_list()):
        mine = evals.filter(pl.col("replicate") == rep)
        ladder = []
        for step in steps:
            at = mine.filter(pl.col("step") == step).sort("rho", "seed")
            rho, seed = at["rho"].to_numpy(), at["seed"].to_numpy()
            rng = np.random.default_rng([rep, step])
            onset = entry(rc, fit_kl_onset(rho, seed, at["top_kl"].to_numpy(), direction=case.direction,
                                           n_boot=args.n_boot, rng=rng))
            units = entry(rc, fit_transition(rho, seed, at["top_active_units"].to_numpy(), LATENT,
                                             n_boot=args.n_boot, rng=rng, direction=case.direction))
            per_step[step]["kl_onset"].append(onset)
            per_step[step]["active_units"].append(units)
            ladder.append({"step": int(step), "kl_onset": onset, "active_units": units})
        for name, settings in ABLATIONS.items():
            ablation[name].append(entry(rc, fit_kl_onset(rho, seed, at["top_kl"].to_numpy(), direction=case.direction,
                                                         n_boot=args.n_boot, rng=np.random.default_rng([rep, 0]),
                                                         settings=settings)))
        replicates.append({"replicate": int(rep), "seeds": sorted(set(seed.tolist())), "runs": int(rho.size),
                           "rho_values": int(np.unique(rho).size), "kl_onset": ladder[-1]["kl_onset"],
                           "active_units": ladder[-1]["active_units"], "ladder": ladder,
                           "noise_free_kl_onset": fit_kl_onset(rho, seed, case.exact_top_kl(rho),
                                                               direction=case.direction, n_boot=0).rho_c})
    last = steps[-1]
    return {"config": f"{case.family}:{case.k}:{case.r:g}", "family": case.family, "reading": case.reading,
            "layers": case.layers, "K": case.k, "r": case.r, "closed_form": rc, "direction": case.direction,
            "steps": int(last), "replicates": replicates,
            "kl_onset": summarise(per_step[last]["kl_onset"]),
            "active_units": summarise(per_step[last]["active_units"]),
            "budgets": [{"step": int(s), "kl_onset": summarise(per_step[s]["kl_onset"]),
                         "active_units": summarise(per_step[s]["active_units"])} for s in steps],
            "ablation": {name: summarise(entries) for name, entries in ablation.items()},
            "ablation_replicates": ablation}


def run_case(case: Case, args: argparse.Namespace, root: str) -> dict[str, Any]:
    trained = train_case(case, args, root)
    result = {**fit_case(case, args, root), **trained}
    ko, au = result["kl_onset"], result["active_units"]
    print(f"{case.name:28s} closed {result['closed_form']:.4f} | KL onset covers {ko['covered']}/{ko['n']} bias "
          f"{_f(ko['bias'], '+.4f')} width {_f(ko['width'])} | active units covers {au['covered']}/{au['n']} bias "
          f"{_f(au['bias'], '+.4f')} | {result['runs']} runs, {result['train_seconds']:.0f} s", flush=True)
    return result


def overall(results: list[dict[str, Any]], estimator: str) -> dict[str, Any]:
    pooled = summarise([r[estimator] for res in results for r in res["replicates"]])
    lowest = min(res[estimator]["coverage"] for res in results)
    worst_bias = max(abs(res[estimator]["bias"] or 0.0) for res in results)
    met = (pooled["coverage"] is not None and 0.90 <= pooled["coverage"] <= 0.99 and lowest >= 0.80
           and worst_bias <= 0.005)
    return {**pooled, "lowest_configuration": lowest, "largest_abs_bias": worst_bias, "target_met": met}


def markdown(results: list[dict[str, Any]], summary: dict[str, dict[str, Any]]) -> str:
    """The coverage table as docs/calibration.md and BENCHMARKS.md show it."""
    def cov(s: dict[str, Any]) -> str:
        return f"{s['covered']}/{s['n']} = {s['coverage']:.2f} [{s['coverage_low']:.2f}, {s['coverage_high']:.2f}]"

    def est(s: dict[str, Any]) -> str:
        return f"{cov(s)} | {_f(s['bias'], '+.4f')} | {_f(s['rmse'])} | {_f(s['width'])}"

    lines = ["| configuration | closed form | KL onset: covers [Wilson 95%] | bias | RMSE | width | active units: "
             "covers [Wilson 95%] | bias | RMSE | width |", "|---|---|---|---|---|---|---|---|---|---|"]
    for res in results:
        lines.append(f"| {res['config']} | {res['closed_form']:.4f} | {est(res['kl_onset'])} | "
                     f"{est(res['active_units'])} |")
    lines.append(f"| **all** | | {est(summary['kl_onset'])} | {est(summary['active_units'])} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="JSON file for the results")
    p.add_argument("--config", dest="configs", type=parse_case, action="append",
                   help="family:K:r (repeatable); default: the 12 built-in one-layer configurations")
    p.add_argument("--replicates", type=int, default=20, help="independent replicate sweeps per configuration")
    p.add_argument("--first-seed", type=int, default=HELD_OUT_FROM,
                   help=f"the first replicate's first seed (default {HELD_OUT_FROM}: held out; seeds below it were "
                        f"used while the estimators were developed)")
    p.add_argument("--seeds", type=int, default=4, help="seeds per replicate sweep")
    p.add_argument("--steps", type=int, default=8000, help="optimizer steps per run (the budget)")
    p.add_argument("--budgets", type=int, default=2, help="evaluations per run (the budget ladder)")
    p.add_argument("--rho-range", type=float, nargs=2, default=(0.1, 1.0), metavar=("LOW", "HIGH"),
                   help="the adaptive search's coarse range")
    p.add_argument("--coarse-points", type=int, default=10, help="rho values of the coarse lattice")
    p.add_argument("--rho-spacing", type=float, default=0.005, help="the finest rho spacing of the refinement")
    p.add_argument("--target-width", type=float, default=0.02, help="the adaptive search's stopping width")
    p.add_argument("--rho-per-round", type=int, default=2, help="rho values per refinement round")
    p.add_argument("--budget", type=int, default=64, help="runs per replicate sweep, coarse lattice included")
    p.add_argument("--samples", type=int, default=1000, help="vectors per split of the gaussian data set")
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--lr", type=float, default=5e-3)
    p.add_argument("--lr-decay-steps", type=int, default=2000, help="the k-th update uses lr / (1 + k/d)")
    p.add_argument("--n-boot", type=int, default=500)
    p.add_argument("--jobs", type=int, default=1, help="configurations trained at once (one core each)")
    p.add_argument("--results", default=None, help="results-table folder (default: a temporary one); a "
                                                   "configuration already complete there is analysed, not retrained")
    p.add_argument("--combine", nargs="+", metavar="JSON", help="no training: join these earlier outputs (e.g. "
                                                                "configurations run as separate processes) into --out")
    args = p.parse_args(argv)
    if args.combine:
        return combine(args.combine, args.out)
    cases = args.configs or [parse_case(c) for c in BUILT_IN]
    if args.first_seed < HELD_OUT_FROM:
        print(f"note: seeds from {args.first_seed} include development seeds (< {HELD_OUT_FROM}): this is not a "
              f"held-out measurement", flush=True)
    root = args.results or tempfile.mkdtemp(prefix="calibration-")
    t_all = time.perf_counter()
    if args.jobs > 1:
        with ProcessPoolExecutor(max_workers=args.jobs) as pool:
            results = list(pool.map(run_case, cases, [args] * len(cases), [root] * len(cases)))
    else:
        results = [run_case(case, args, root) for case in cases]
    total = time.perf_counter() - t_all
    meta = {"command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
            "settings": {k: v for k, v in vars(args).items() if k != "configs"}, "onset_settings": vars(FROZEN),
            "held_out_from": HELD_OUT_FROM, "total_seconds": total, "machine": platform.platform(),
            "cpus": os.cpu_count(), "torch": torch.__version__,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    report(results, meta, args.out)
    print(f"total {total:.0f} s")
    return 0


def combine(paths: list[str], out: str) -> int:
    """Join earlier outputs into one (their configurations, each run's meta kept)."""
    parts = [json.loads(Path(p).read_text()) for p in paths]
    report([r for part in parts for r in part["results"]], {"combined": [part["meta"] for part in parts]}, out)
    return 0


def report(results: list[dict[str, Any]], meta: dict[str, Any], out: str) -> None:
    """Print the pooled coverage, the ablation and the table; write the JSON."""
    summary = {name: overall(results, name) for name in ("kl_onset", "active_units")}
    for name, s in summary.items():
        print(f"{name}: covers {s['covered']}/{s['n']} = {s['coverage']:.3f} [Wilson 95%: {s['coverage_low']:.3f}, "
              f"{s['coverage_high']:.3f}]; lowest configuration {s['lowest_configuration']:.2f}; largest |bias| "
              f"{s['largest_abs_bias']:.4f}; target (overall in [0.90, 0.99], none below 0.80, |bias| <= 0.005) "
              f"{'met' if s['target_met'] else 'NOT met'}")
    for name in ABLATIONS:
        s = summarise([e for res in results for e in res["ablation_replicates"][name]])
        print(f"KL onset, {name}: covers {s['covered']}/{s['n']} = {s['coverage']:.3f} [{s['coverage_low']:.3f}, "
              f"{s['coverage_high']:.3f}], bias {_f(s['bias'], '+.4f')}, mean width {_f(s['width'])}")
    print(markdown(results, summary))
    Path(out).write_text(json.dumps({"meta": meta, "summary": summary, "results": results}, indent=1, default=list))
    print(f"written {out}")


def _f(v: float | None, spec: str = ".4f") -> str:
    return "–" if v is None else format(v, spec)


if __name__ == "__main__":
    sys.exit(main())

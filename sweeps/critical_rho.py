#!/usr/bin/env python
"""Locate the critical smoothing rho of OU-smoothed hierarchical VAEs: sweep rho x latent size x seed with Ray Tune.

    python sweeps/critical_rho.py                       # demo: digits, local Ray, a few minutes on 2 cores
    python sweeps/critical_rho.py --preset paper-mlp-4x40 --dataset mnist --latent-sizes 5 10 20 40 \\
        --rho-min 0.80 --rho-max 1.0 --rho-step 0.005 --n-seeds 5 --gpus-per-trial 0.25 \\
        --address auto --storage s3://bucket/ouvae --name mnist-4layer
    python sweeps/critical_rho.py --resume              # continue the newest sweep after a crash / Ctrl-C

Every evaluation of every trial becomes a row of the Parquet table <storage>/parquet/sweep_id=<name>/; at the
end the analysis fits rho_c per latent configuration (with a seed-bootstrap interval) and writes a report.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

# Runnable as `python sweeps/critical_rho.py` from any folder, installed or not.
_ROOT = str(Path(__file__).resolve().parents[1])
try:
    import sweeps.cli  # noqa: F401
    _ADDED_PATH = None
except ImportError:  # pragma: no cover - exercised only without the editable install
    sys.path.insert(0, _ROOT)
    _ADDED_PATH = _ROOT

from ouvae.config import format_latent_dims  # noqa: E402
from sweeps import cli  # noqa: E402
from sweeps.refine import RefineError  # noqa: E402
from sweeps.space import CriticalGrid, SpaceError, base_config, latent_configs, parse_rho_list, rho_grid, rho_range, \
    seed_list  # noqa: E402

SCRIPT = "critical_rho"
# The no-argument demo (digits, 2 cores, ~5 minutes including Ray start-up): README.md ("Sweeps") has timings.
DEMO_LATENT_SIZES = [5, 10, 20]
DEMO_RHO = (0.76, 1.0, 0.04)
ADAPTIVE_MIN_SPACING = 0.005  # adaptive mode's default finest rho spacing (--rho-step)
DEMO_SEEDS = 2
# Trainer budget of the demo preset in this script (unless --epochs/--steps/--n-train/--set say otherwise):
# DESIGN.md section 6's 797 training images, 30 epochs, L_25 at epochs 15 and 30 (an L_50 evaluation of the
# smoothed model costs as much as ~5 training epochs; measured: 7.8 s instead of 13.6 s per run at rho = 0.9).
DEMO_TRAINER = {"epochs": 30, "n_train": 797, "eval_every": 15, "eval_iw_k": 25}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python sweeps/critical_rho.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    m = p.add_mutually_exclusive_group()
    m.add_argument("--adaptive", dest="mode", action="store_const", const="adaptive",
                   help="place rho values where the transition is (sweeps/adaptive.py searcher)")
    m.add_argument("--grid", dest="mode", action="store_const", const="grid",
                   help="plain grid: every rho of --rho-min..--rho-max by --rho-step (or --rhos)")
    p.set_defaults(mode=None)
    g = p.add_argument_group("what to sweep")
    g.add_argument("--rho-min", type=float, default=DEMO_RHO[0], help=f"lowest rho (default {DEMO_RHO[0]})")
    g.add_argument("--rho-max", type=float, default=DEMO_RHO[1], help=f"highest rho (default {DEMO_RHO[1]})")
    g.add_argument("--rho-step", type=float, default=None,
                   help=f"grid step, e.g. 0.005 for a fine grid (default {DEMO_RHO[2]}); in adaptive mode the "
                        f"finest spacing the searcher may use (default {ADAPTIVE_MIN_SPACING})")
    g.add_argument("--rhos", type=float, nargs="+", help="explicit rho values instead of a range (grid mode)")
    g.add_argument("--latent-sizes", type=int, nargs="+",
                   help=f"units per stochastic layer, one configuration each (default {DEMO_LATENT_SIZES} "
                        f"unless --latent-dims is given)")
    g.add_argument("--layers", type=int, nargs="+",
                   help="numbers of stochastic layers, combined with every --latent-sizes value (default 4)")
    g.add_argument("--latent-dims", nargs="+", metavar="DIMS",
                   help="explicit latent configurations bottom to top, e.g. 40-20-10 2x64")
    g.add_argument("--seeds", type=int, nargs="+", help="explicit seeds (default 0..n-seeds-1)")
    g.add_argument("--n-seeds", type=int, default=DEMO_SEEDS, help=f"number of seeds (default {DEMO_SEEDS})")
    a = p.add_argument_group("adaptive mode")
    a.add_argument("--target-width", type=float, default=0.02,
                   help="stop refining a configuration once its rho_c interval is this narrow (default 0.02)")
    a.add_argument("--budget", type=int, default=None,
                   help="most trials in all, split evenly between latent configurations (default: the size of "
                        "the equivalent --rho-min/--rho-max grid at the grid step)")
    a.add_argument("--coarse-points", type=int, default=5,
                   help="rho values of the first, coarse pass per latent configuration (default 5)")
    cli.add_trainer_arguments(p, default_preset="demo")
    cli.add_run_arguments(p)
    return p


# ----- planning (pure; fails before Ray starts) -------------------------------------------------------------------
def make_grid(args: argparse.Namespace, fixed: dict) -> CriticalGrid:
    sizes = args.latent_sizes
    if sizes is None and not args.latent_dims:
        sizes = DEMO_LATENT_SIZES
    latents = latent_configs(sizes, args.layers, args.latent_dims)
    step = args.rho_step if args.rho_step is not None and args.mode != "adaptive" else DEMO_RHO[2]
    if args.mode == "adaptive":  # the grid only sizes the default budget here: any range must give one
        span = args.rho_max - args.rho_min
        step = min(step, span) if span > 0 else step
    if args.mode == "adaptive" and args.rhos:
        raise SpaceError("--rhos lists grid points; adaptive mode chooses rho itself: use --grid, or give "
                         "--rho-min/--rho-max")
    rhos = parse_rho_list(args.rhos) if args.rhos else rho_grid(args.rho_min, args.rho_max, step)
    seeds = seed_list(args.n_seeds, args.seeds)
    grid = CriticalGrid(preset=args.preset, fixed=fixed, latents=latents, rhos=rhos, seeds=seeds)
    grid.validate()
    return grid


def build_param_space(args: argparse.Namespace, grid: CriticalGrid, mode: str) -> tuple[dict, object | None]:
    """(param_space, search_alg). Grid mode: tune.grid_search over latent dims x rho x seed. Adaptive mode: the
    constants only; the searcher proposes latent_dims/rho/seed."""
    from ray import tune

    constants = {**grid.trial_space(), "num_threads": cli.threads_per_trial(args, grid.fixed)}
    if mode == "grid":
        space = {**constants,
                 "latent_dims": tune.grid_search([list(d) for d in grid.latents]),
                 "rho": tune.grid_search(grid.rhos),
                 "seed": tune.grid_search(grid.seeds)}
        return space, None
    from sweeps.adaptive import make_critical_searcher  # imports Ray: only once the plan is valid

    lo, hi = rho_range(args.rho_min, args.rho_max)
    spacing = args.rho_step if args.rho_step is not None else ADAPTIVE_MIN_SPACING
    searcher = make_critical_searcher(
        groups=[{"latent_dims": list(d)} for d in grid.latents], rho_range=(lo, hi), rho_step=spacing,
        seeds=grid.seeds, target_width=args.target_width, budget=args.budget or grid.n_trials,
        max_concurrent=args.max_concurrent, coarse_points=args.coarse_points)
    return constants, searcher


# ----- running ------------------------------------------------------------------------------------------------------
def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    t_start = time.monotonic()
    cli.check_resources_args(args)
    args, name, paths = cli.open_sweep(args, parser, SCRIPT, "critical-rho")
    mode = args.mode = args.mode or "adaptive"
    if args.budget is not None and args.budget < 1:
        raise cli.SweepError(f"--budget {args.budget} must be >= 1 trial")
    fixed = cli.fixed_overrides(args)
    if args.preset == "demo" and "steps" not in fixed:
        fixed = {**{k: v for k, v in DEMO_TRAINER.items() if k not in fixed}, **fixed}
    grid = make_grid(args, fixed)
    base = base_config(args.preset, fixed)
    cli.check_dataset(base.dataset)
    # The searcher validates its own settings: build it (no Ray needed) before anything starts.
    param_space, searcher = build_param_space(args, grid, mode)
    if not args.resume:
        cli.prepare_new(paths, name)

    budget = f"{base.steps} steps" if base.steps else f"{base.epochs} epochs"
    what = grid.describe() if mode == "grid" else describe_adaptive(args, grid)
    print(f"critical-rho sweep {name!r} ({mode}{', resumed' if args.resume else ''}): {what}")
    print(f"  trainer: preset {args.preset} on {base.dataset}, {budget}, K={base.smooth_samples}, "
          f"eval L_{base.eval_iw_k} every {base.eval_every} epochs; {args.cpus_per_trial:g} CPU / "
          f"{args.gpus_per_trial:g} GPU per trial")

    from ray import tune

    cli.connect_and_announce(args, SCRIPT, name, paths, t_start, extra_pythonpath=_ADDED_PATH)

    from sweeps.progress import ProgressLine
    from sweeps.results import ParquetSink

    trainable = cli.trainable(args)
    if args.resume:
        tuner = tune.Tuner.restore(paths.experiment, trainable=trainable, resume_errored=args.retry_failed,
                                   param_space=param_space)
    else:
        cli.save_spec(paths, SCRIPT, args)
        callbacks = [ParquetSink(paths.results_root, name)]
        if not args.quiet:
            callbacks.append(ProgressLine(show=("latent_dims", "rho", "seed"),
                                          total=grid.n_trials if mode == "grid" else (args.budget or grid.n_trials)))
        tuner = tune.Tuner(
            trainable,
            param_space=param_space,
            # Adaptive: the searcher ends the sweep itself (num_samples=-1) and enforces --max-concurrent.
            tune_config=tune.TuneConfig(search_alg=searcher, reuse_actors=args.reuse_actors,
                                        num_samples=1 if mode == "grid" else -1,
                                        max_concurrent_trials=args.max_concurrent if mode == "grid" else None),
            run_config=tune.RunConfig(
                name=name, storage_path=paths.ray_storage, callbacks=callbacks, verbose=0,
                # Retries continue from the trial's own checkpoints (sweeps/checkpoints.py), not Tune's.
                failure_config=tune.FailureConfig(max_failures=args.max_failures)),
        )
    results = tuner.fit()
    return summarize(results, paths, name, args, t_start)


def describe_adaptive(args: argparse.Namespace, grid: CriticalGrid) -> str:
    lat = ", ".join(format_latent_dims(d) for d in grid.latents)
    spacing = args.rho_step if args.rho_step is not None else ADAPTIVE_MIN_SPACING
    return (f"{len(grid.latents)} latent configs ({lat}), rho in [{args.rho_min:g}, {args.rho_max:g}]: "
            f"{args.coarse_points} coarse values x {len(grid.seeds)} seeds each, then rho values inside the rho_c "
            f"interval (spacing >= {spacing:g}) until it is narrower than {args.target_width:g}; at most "
            f"{args.budget or grid.n_trials} trials")


def summarize(results, paths: cli.SweepPaths, name: str, args: argparse.Namespace, t_start: float) -> int:
    from sweeps.results import failure_text

    failed = [r for r in results if r.error is not None]
    # A trial without error and without its final evaluation was cut short (Ctrl-C stops Tune gracefully).
    unfinished = [r for r in results if r.error is None and not (r.metrics or {}).get("is_final")]
    ok = [r for r in results if r.error is None and (r.metrics or {}).get("is_final")]
    print(f"\n{len(ok)} trials finished, {len(failed)} failed, in {time.monotonic() - t_start:.0f} s "
          f"(including Ray start-up)")
    if unfinished:
        print(f"{len(unfinished)} trials did not finish (interrupted): continue with "
              f"python sweeps/critical_rho.py --resume --name {name}"
              + (f" --storage {args.storage}" if args.storage != "results" else ""))
    for r in failed:
        c = r.config or {}
        dims = format_latent_dims(c.get("latent_dims", []))
        print(f"  FAILED latent_dims={dims} rho={c.get('rho')} seed={c.get('seed')}: {failure_text(r.error)}")
    print(f"results table: {paths.results_root}/sweep_id={name}/  (Ray's own files: {paths.experiment})")
    if args.no_report:
        return 0 if ok or not failed else 1
    if paths.report_dir is None:
        print("report: skipped for remote storage; copy the table locally and run "
              f"python -m analysis <folder> --sweep {name}")
        return 0 if ok else 1
    try:
        from analysis.io import AnalysisError
        from analysis.report import analyze
    except ImportError as e:
        print(f"report: the analysis package is not available ({e}); run python -m analysis "
              f"{paths.results_root} --sweep {name} once it is")
        return 0 if ok else 1
    try:
        rep = analyze(paths.results_root, paths.report_dir, sweeps=[name], drop_nan=True)
    except AnalysisError as e:
        print(f"report: not written: {e}")
        return 0 if ok else 1
    print()
    print(rep.text())
    print(f"\nreport: {rep.path}")
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    return cli.main(run, build_parser(), argv, extra_errors=(RefineError,))


if __name__ == "__main__":
    sys.exit(main())

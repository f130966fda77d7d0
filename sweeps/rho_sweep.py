"""The critical-rho sweep (sweeps/critical_rho.py): its options, its plan (a grid of rho x latent sizes x seeds
grouped into populations, or the adaptive search), the run (one Tune experiment, or a ladder of rungs with
``--until-converged``), the summary and the report.

Every evaluation of every trial becomes a row of the Parquet table <storage>/parquet/sweep_id=<name>/; at the
end the analysis fits rho_c per latent configuration (with a seed-bootstrap interval) and writes a report.
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass
from typing import Any, Callable

from analysis.errors import AnalysisError
from ouvae.config import Config, SMOOTH_SPACES, format_latent_dims
from sweeps import cli, experiment
from sweeps.adaptive import make_critical_searcher
from sweeps.cli import CommandLine
from sweeps.errors import SpaceError, SweepError
from sweeps.ladder import POLICIES, Ladder, LadderState, cadence_of, rung_budgets, summary_lines
from sweeps.plan import (CriticalGrid, check_start, group_into_populations, latent_configs, parse_rho_list, rho_grid,
                         rho_range, seed_list)
from sweeps.progress import ProgressLine
from sweeps.refine import INFER, RefineError
from sweeps.protocol import POPULATION_KEY, run_specs
from sweeps.results import ParquetSink
from sweeps.resume import open_sweep, prepare_new, resume_command, save_spec
from sweeps.storage import SweepPaths
from sweeps.trainable import train_ouvae


SCRIPT = "critical_rho"
DESCRIPTION = ("Locate the critical smoothing rho of OU-smoothed hierarchical VAEs: sweep rho x latent size x seed "
               "with Ray Tune.\nOptions, grids and the adaptive search: docs/sweeps.md.")


@dataclass(frozen=True)
class SweepDefaults:
    """What ``python sweeps/critical_rho.py`` sweeps when an option is not given: every default of the script."""

    trainer_preset: str
    latent_sizes: tuple[int, ...]  # units per stochastic layer, one latent configuration each
    layers: int  # stochastic layers of each configuration
    rho_min: float
    rho_max: float
    rho_step: float  # grid mode's step
    budget_step: float  # adaptive mode's default budget: the runs of a grid at this step over the range
    rho_spacing: float  # adaptive mode's finest spacing between rho values
    n_seeds: int
    mode: str  # "adaptive" or "grid"
    target_width: float  # adaptive: stop refining a configuration once its rho_c interval is this narrow
    coarse_points: int  # adaptive: rho values of the first pass per configuration
    direction: str  # adaptive: which side of rho_c the top units are active on ("infer": from each one's runs)
    population_cpu: int  # runs per trial, trained as one batched model, when trials run on CPUs
    population_gpu: int  # ... and when they hold a GPU (--gpus-per-trial > 0)


# The no-argument demo (docs/sweeps.md): 6.5-7.5 min on an idle 2-core machine, it must show the phenomenon, not
# noise. Chosen from measured digits runs (BENCHMARKS.md, "The demo"; 4 seeds did not): a grid of 7 rho values
# over the three transitions (4x5 near 0.91, 4x10 near 0.83, 4x20 near 0.69 at this budget, active units counted
# without Monte Carlo noise; the earlier 0.76-1.0 grid missed the 4x20 one once they were) with 5 seeds, so
# every 95% interval on rho_c is narrower than 0.06 (two seeds widen an interval x9, five x1.6), trained as
# populations of 4 runs (the fastest size per run on a CPU, ~1.2x a run alone); the trainer budget is the
# sweep-demo preset's.
DEFAULTS = SweepDefaults(trainer_preset="sweep-demo", latent_sizes=(5, 10, 20), layers=4, rho_min=0.64, rho_max=1.0,
                         rho_step=0.06, budget_step=0.04, rho_spacing=0.005, n_seeds=5, mode="grid", target_width=0.02,
                         coarse_points=5, direction="infer", population_cpu=4, population_gpu=64)


def build_parser() -> argparse.ArgumentParser:
    d = DEFAULTS
    p = argparse.ArgumentParser(prog="python sweeps/critical_rho.py", description=DESCRIPTION,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    m = p.add_mutually_exclusive_group()
    m.add_argument("--adaptive", dest="mode", action="store_const", const="adaptive",
                   help="place rho values where the transition is (sweeps/adaptive.py searcher)"
                        + (" (default)" if d.mode == "adaptive" else ""))
    m.add_argument("--grid", dest="mode", action="store_const", const="grid",
                   help="plain grid: every rho of --rho-min..--rho-max by --rho-step (or --rhos)"
                        + (" (default)" if d.mode == "grid" else ""))
    p.set_defaults(mode=d.mode)
    g = p.add_argument_group("what to sweep")
    g.add_argument("--rho-min", type=float, default=d.rho_min, help=f"lowest rho (default {d.rho_min})")
    g.add_argument("--rho-max", type=float, default=d.rho_max, help=f"highest rho (default {d.rho_max})")
    g.add_argument("--rho-step", type=float, default=None,
                   help=f"grid mode: the step between rho values, e.g. 0.005 for a fine grid (default {d.rho_step})")
    g.add_argument("--rhos", type=float, nargs="+", help="grid mode: explicit rho values instead of a range")
    g.add_argument("--latent-sizes", type=int, nargs="+",
                   help=f"units per stochastic layer, one configuration each (default {list(d.latent_sizes)} "
                        f"unless --latent-dims is given)")
    g.add_argument("--layers", type=int, nargs="+",
                   help=f"numbers of stochastic layers, combined with every --latent-sizes value (default {d.layers})")
    g.add_argument("--latent-dims", nargs="+", metavar="DIMS",
                   help="explicit latent configurations bottom to top, e.g. 40-20-10 2x64")
    g.add_argument("--smooth-spaces", nargs="+", choices=SMOOTH_SPACES, metavar="SPACE",
                   help="readings of T_rho on the generative maps, one configuration each: posterior (the preset's "
                        "default) and/or prior (docs/readings.md); --set smooth_space=X sweeps one")
    g.add_argument("--seeds", type=int, nargs="+", help="explicit seeds (default 0..n-seeds-1)")
    g.add_argument("--n-seeds", type=int, default=d.n_seeds, help=f"number of seeds (default {d.n_seeds})")
    a = p.add_argument_group("adaptive mode")
    a.add_argument("--rho-spacing", type=float, default=None,
                   help=f"the finest spacing between rho values the searcher may use (default {d.rho_spacing})")
    a.add_argument("--target-width", type=float, default=d.target_width,
                   help=f"stop refining a configuration once its rho_c interval is this narrow "
                        f"(default {d.target_width})")
    a.add_argument("--budget", type=int, default=None,
                   help=f"most runs in all, split evenly between latent configurations (default: the runs of "
                        f"the --rho-min..--rho-max grid at step {d.budget_step})")
    a.add_argument("--coarse-points", type=int, default=d.coarse_points,
                   help=f"rho values of the first, coarse pass per latent configuration (default {d.coarse_points})")
    a.add_argument("--direction", choices=(INFER, "below", "above"), default=d.direction,
                   help=f"which side of rho_c the top units are active on, for the searcher's fits and which way "
                        f"it widens the range: below (the usual), above (e.g. smooth_space=prior: "
                        f"docs/calibration.md), or infer it from each configuration's runs as the analysis does, "
                        f"taking runs all active or all collapsed as below (default {d.direction})")
    r = p.add_argument_group("populations")
    r.add_argument("--population", type=int, default=None, metavar="N",
                   help=f"train up to N runs of one latent configuration in one trial, as one batched model "
                        f"(ouvae/population.py): grid points are grouped, and each adaptive round is one population "
                        f"(default {d.population_cpu} on CPUs, {d.population_gpu} with --gpus-per-trial; 1 = one run "
                        f"per trial)")
    u = p.add_argument_group("until converged (sweeps/ladder.py)")
    u.add_argument("--until-converged", action="store_true",
                   help="train in rungs of growing budget (the first from --epochs/--steps), continuing runs from "
                        "their checkpoints, until every configuration's rho_c has converged or the maximum is reached")
    u.add_argument("--max-epochs", type=int, help="the ladder's largest budget in epochs")
    u.add_argument("--max-steps", type=int, help="the ladder's largest budget in optimizer steps (with --steps)")
    u.add_argument("--rung-factor", type=float, default=2.0, help="budget factor from one rung to the next (default 2)")
    u.add_argument("--continue", dest="continue_policy", choices=POLICIES, default="near",
                   help="which runs continue to the next rung: those whose rho can still matter (default), or all")
    cli.add_trainer_arguments(p, default_preset=d.trainer_preset)
    cli.add_run_arguments(p)
    return p


# ----- planning (no Ray runtime; every check happens here) --------------------------------------------------------
@dataclass(frozen=True)
class Plan:
    grid: CriticalGrid  # grid mode: the trials; adaptive mode: the configurations and seeds, and the budget's size
    base: Config  # the preset with the fixed overrides
    param_space: dict[str, Any]
    searcher: Any  # adaptive mode's AdaptiveRhoSearcher; None in grid mode
    n_runs: int  # the grid's runs, or adaptive mode's budget of runs
    population: int  # most runs per trial

    @property
    def n_trials(self) -> int:
        """Tune trials: the runs, grouped into populations of at most `population`."""
        if self.searcher is None and self.population > 1:
            return len(self.param_space[POPULATION_KEY]["grid_search"])
        return math.ceil(self.n_runs / self.population)


def plan_sweep(args: argparse.Namespace) -> Plan:
    """Everything the sweep will run, validated: a bad value fails here, before Ray starts."""
    adaptive = args.mode == "adaptive"
    if adaptive and args.rhos:
        raise SpaceError("--rhos lists grid points; adaptive mode chooses rho itself: use --grid, or give "
                         "--rho-min/--rho-max")
    if adaptive and args.rho_step is not None:
        raise SpaceError("--rho-step is grid mode's step; in adaptive mode the finest spacing the searcher may use "
                         "is --rho-spacing")
    if not adaptive and args.rho_spacing is not None:
        raise SpaceError("--rho-spacing belongs to adaptive mode; in grid mode the step between rho values is "
                         "--rho-step")
    if args.budget is not None and args.budget < 1:
        raise SweepError(f"--budget {args.budget} must be >= 1 trial")
    fixed = cli.fixed_overrides(args)
    grid = make_grid(args, fixed)
    size = population_size(args)
    param_space = {**grid.trial_space(), "num_threads": cli.threads_per_trial(args, grid.fixed)}
    searcher = make_searcher(args, grid, size) if adaptive else None
    if searcher is None:
        from ray import tune

        if size == 1:
            param_space.update(latent_dims=tune.grid_search([list(dims) for dims in grid.latents]),
                               smooth_space=tune.grid_search(list(grid.spaces)),
                               rho=tune.grid_search(grid.rhos), seed=tune.grid_search(grid.seeds))
        else:
            param_space[POPULATION_KEY] = tune.grid_search(grid_populations(grid, size))
    n_runs = (args.budget or grid.n_runs) if adaptive else grid.n_runs
    return Plan(grid, Config.from_preset(args.preset, **fixed), param_space, searcher, n_runs, size)


def population_size(args: argparse.Namespace) -> int:
    """Runs per trial: --population, else the default for the device the trials run on."""
    if args.population is not None:
        if args.population < 1:
            raise SweepError(f"--population {args.population} must be >= 1 (1 trains one run per trial)")
        return args.population
    return DEFAULTS.population_gpu if args.gpus_per_trial > 0 else DEFAULTS.population_cpu


def grid_populations(grid: CriticalGrid, size: int) -> list[dict[str, Any]]:
    """The grid's runs as population trials: runs that share a configuration (latent sizes and reading, and whether
    they are smoothed at all), in balanced groups of at most `size` (sweeps/plan.py: group_into_populations)."""
    groups = group_into_populations(list(grid.configs()), size)
    return [{"latent_dims": list(g[0].latent_dims), "smooth_space": g[0].smooth_space,
             "members": [{"rho": c.rho, "seed": c.seed} for c in g]} for g in groups]


def make_grid(args: argparse.Namespace, fixed: dict[str, Any]) -> CriticalGrid:
    sizes = args.latent_sizes if args.latent_sizes or args.latent_dims else DEFAULTS.latent_sizes
    latents = latent_configs(sizes, args.layers, args.latent_dims, default_layers=DEFAULTS.layers)
    if args.rhos:
        rhos = parse_rho_list(args.rhos)
    else:
        step = args.rho_step if args.rho_step is not None else (
            DEFAULTS.budget_step if args.mode == "adaptive" else DEFAULTS.rho_step)
        span = args.rho_max - args.rho_min
        if args.mode == "adaptive" and 0 < span < step:  # the grid only sizes the budget: any range gives one
            step = span
        rhos = rho_grid(args.rho_min, args.rho_max, step)
    spaces = tuple(args.smooth_spaces or [fixed.pop("smooth_space", Config.from_preset(args.preset).smooth_space)])
    grid = CriticalGrid(preset=args.preset, fixed=fixed, latents=latents, rhos=rhos,
                        seeds=seed_list(args.n_seeds, args.seeds), spaces=spaces)
    grid.validate()
    return grid


def make_searcher(args: argparse.Namespace, grid: CriticalGrid, population: int):
    """The adaptive searcher; it validates its own settings (RefineError) and needs no Ray runtime."""
    return make_critical_searcher(
        groups=grid.groups, rho_range=rho_range(args.rho_min, args.rho_max),
        rho_step=args.rho_spacing if args.rho_spacing is not None else DEFAULTS.rho_spacing, seeds=grid.seeds,
        target_width=args.target_width, budget=args.budget or grid.n_runs, max_concurrent=args.max_concurrent,
        coarse_points=args.coarse_points, direction=args.direction, population=population)


def idle_options(args: argparse.Namespace) -> dict[str, str]:
    """The options that do nothing in the mode `args` chose, each with its one-line refusal
    (cli.refuse_idle_options). Refused by the planning itself: --rhos and --rho-step in adaptive mode,
    --rho-spacing in grid mode (plan_sweep), --max-epochs and --max-steps without --until-converged (plan_ladder)."""
    idle: dict[str, str] = {}
    if not args.until_converged:
        for dest, flag in (("rung_factor", "--rung-factor"), ("continue_policy", "--continue")):
            idle[dest] = cli.idle_option(flag, "sets the rungs of --until-converged and does nothing without it",
                                         "add --until-converged (and --max-epochs)")
    searcher = (("target_width", "--target-width"), ("budget", "--budget"), ("coarse_points", "--coarse-points"),
                ("direction", "--direction"))
    for dest, flag in searcher:
        if args.mode != "adaptive":
            idle[dest] = cli.idle_option(flag, "steers adaptive mode's searcher and does nothing in grid mode",
                                         "add --adaptive")
        elif args.until_converged:
            idle[dest] = cli.idle_option(flag, "steers adaptive mode's searcher, which --until-converged does not "
                                               "use (its rungs add rho values at --rho-spacing)",
                                         "leave out --until-converged")
    return idle


# ----- running ------------------------------------------------------------------------------------------------------
def plan_ladder(args: argparse.Namespace, plan: Plan) -> tuple[str, list[int]]:
    """(budget unit, rung budgets) of --until-converged, validated (SweepError) before Ray starts."""
    given = [o for o in ("max_epochs", "max_steps") if getattr(args, o) is not None]
    if not args.until_converged:
        if given:
            raise SweepError(f"--{given[0].replace('_', '-')} is the ladder's largest budget: add --until-converged")
        return "", []
    if len(given) != 1:
        raise SweepError("--until-converged needs the largest budget: --max-epochs N (or --max-steps N with --steps)")
    unit = "steps" if given[0] == "max_steps" else "epochs"
    first = plan.base.steps if unit == "steps" else plan.base.epochs
    if unit == "epochs" and plan.base.steps is not None:
        raise SweepError("--max-epochs with a budget in steps: give --max-steps, or the first rung as --epochs")
    if unit == "steps" and plan.base.steps is None:
        raise SweepError("--max-steps needs the first rung in steps: add --steps N")
    return unit, rung_budgets(first, getattr(args, given[0]), args.rung_factor, cadence_of(plan.base, unit), unit)


def ladder_spacing(args: argparse.Namespace) -> float | None:
    """--until-converged --adaptive: the finest spacing of rho values the ladder adds (sweeps/ladder.py)."""
    if args.mode != "adaptive":
        return None
    return args.rho_spacing if args.rho_spacing is not None else DEFAULTS.rho_spacing


def run(cmd: CommandLine, trainable: Callable[[dict[str, Any]], None] = train_ouvae) -> int:
    t_start = time.monotonic()
    cli.check_resource_options(cmd.args)
    args, name, paths = open_sweep(cmd, SCRIPT, "critical-rho")
    cli.refuse_idle_options(cmd.given, idle_options(args))
    plan = plan_sweep(args)
    unit, budgets = plan_ladder(args, plan)
    check_start(args, paths, plan.base)
    if not args.resume:
        prepare_new(paths, name)
    print(describe_plan(args, name, plan))
    if budgets:
        added = (f"; rho values added where rho_c moves (spacing >= {ladder_spacing(args):g})"
                 if ladder_spacing(args) else "")
        print(f"  until converged: rungs of {', '.join(map(str, budgets))} {unit} on a grid of "
              f"{len(plan.grid.rhos)} rho values; runs continue: {args.continue_policy}{added}")

    resources = experiment.start(args, SCRIPT, name, paths, t_start)

    if budgets:
        if not args.resume:
            save_spec(paths, SCRIPT, args)

        def rung_callbacks(runs: int, earlier: frozenset[str]) -> list[Any]:
            show = [ProgressLine(show=("latent_dims", "rho", "seed"), total=runs)] if not args.quiet else []
            return [ParquetSink(paths.results_root, name, earlier=earlier), *show]

        constants = {**plan.grid.trial_space(), "num_threads": plan.param_space["num_threads"]}
        ladder = Ladder(args, name, paths, plan.grid, constants,
                        unit, budgets, args.continue_policy, plan.population, ladder_spacing(args), trainable,
                        trial_label, rung_callbacks, lambda n: experiment.concurrent_trials(args, resources, n))
        return summarize_ladder(ladder.run(), ladder, t_start)

    callbacks: list[Any] = [ParquetSink(paths.results_root, name)]
    if not args.quiet:
        callbacks.append(ProgressLine(show=("latent_dims", "rho", "seed"), total=plan.n_runs))
    if not args.resume:
        save_spec(paths, SCRIPT, args)
    results = experiment.fit(trainable, args, name, paths, plan.param_space, callbacks=callbacks,
                             tune_config=tune_config(args, plan),
                             first_round=experiment.concurrent_trials(args, resources, plan.n_trials))
    return summarize(experiment.Outcome.of(results), paths, name, args, t_start)


def tune_config(args: argparse.Namespace, plan: Plan):
    from ray import tune

    if plan.searcher is None:
        return tune.TuneConfig(reuse_actors=args.reuse_actors, max_concurrent_trials=args.max_concurrent)
    # The adaptive searcher ends the sweep itself (num_samples=-1) and enforces --max-concurrent.
    return tune.TuneConfig(search_alg=plan.searcher, reuse_actors=args.reuse_actors, num_samples=-1)


# ----- wording ----------------------------------------------------------------------------------------------------
def describe_plan(args: argparse.Namespace, name: str, plan: Plan) -> str:
    base, grid = plan.base, plan.grid
    if plan.searcher is None or args.until_converged:  # a ladder trains a grid (and may add rho values to it)
        what = grid.describe()
    else:
        latents = ", ".join(f"{format_latent_dims(g['latent_dims'])} {g['smooth_space']}" for g in grid.groups)
        spacing = args.rho_spacing if args.rho_spacing is not None else DEFAULTS.rho_spacing
        what = (f"{len(grid.groups)} configurations ({latents}), rho in [{args.rho_min:g}, {args.rho_max:g}]: "
                f"{args.coarse_points} coarse values x {len(grid.seeds)} seeds each, then rho values inside the "
                f"rho_c interval (spacing >= {spacing:g}) until it is narrower than {args.target_width:g}; at most "
                f"{plan.n_runs} runs" + ("" if args.direction == INFER else f", units active {args.direction} rho_c"))
    budget = f"{base.steps} steps" if base.steps else f"{base.epochs} epochs"
    per_trial = (f"populations of up to {plan.population} runs per trial ({plan.n_trials} trials)"
                 if plan.population > 1 else "one run per trial")
    return (f"critical-rho sweep {name!r} ({args.mode}{', resumed' if args.resume else ''}): {what}; {per_trial}\n"
            f"  trainer: preset {args.preset} on {base.dataset}, {budget}, K={base.smooth_samples}, eval "
            f"L_{base.eval_iw_k} every {base.eval_every} epochs; {args.cpus_per_trial:g} CPU / "
            f"{args.gpus_per_trial:g} GPU per trial")


def trial_label(config: dict[str, Any]) -> str:
    runs = run_specs(config)
    dims = format_latent_dims(runs[0].get("latent_dims", []))
    if len(runs) == 1:
        return f"latent_dims={dims} rho={runs[0].get('rho')} seed={runs[0].get('seed')}"
    rhos = sorted({r.get("rho") for r in runs})
    return (f"population of {len(runs)} (latent_dims={dims} rho={', '.join(f'{v:g}' for v in rhos)} "
            f"seeds {', '.join(str(r.get('seed')) for r in runs)})")


def summarize(outcome: experiment.Outcome, paths: SweepPaths, name: str, args: argparse.Namespace,
              t_start: float) -> int:
    done, failed = outcome.run_counts()
    print(f"\n{done} runs finished, {failed} failed, in {time.monotonic() - t_start:.0f} s (including Ray start-up)")
    for line in outcome.failure_lines(trial_label):
        print(line)
    setup = outcome.shared_setup_failure()
    if setup:
        print(f"every failed trial failed with {setup}; the other trials would too. Fix the cause, then continue: "
              f"{resume_command(SCRIPT, name, args.storage, retry_failed=True)}")
    elif outcome.cut_short:
        print(f"{len(outcome.cut_short)} trials did not finish (interrupted): continue with "
              f"{resume_command(SCRIPT, name, args.storage)}")
    print(f"results table: {paths.results_root}/sweep_id={name}/  (Ray's own files: {paths.experiment})")
    code = 0 if outcome.complete or not (outcome.failed or outcome.cut_short) else 1
    if args.no_report or not outcome.complete or outcome.cut_short:  # interrupted: the report waits for --resume
        return code
    return report(paths, name, code)


def summarize_ladder(state: LadderState, ladder: Ladder, t_start: float) -> int:
    args, paths, name = ladder.args, ladder.paths, ladder.name
    if not state.finished:
        print(f"\nthe ladder stopped inside rung {state.rung} (interrupted): continue with "
              f"{resume_command(SCRIPT, name, args.storage)}")
        return 1
    for line in summary_lines(state, ladder.grid, ladder.unit, time.monotonic() - t_start):
        print(line)
    print(f"results table: {paths.results_root}/sweep_id={name}/  (Ray's own files: {paths.experiment}); the "
          f"analysis of the rungs: python -m analysis {paths.results_root} --sweep {name} --budget-steps "
          f"{' '.join(map(str, state.rung_steps))}")
    return 0 if args.no_report else report(paths, name, 0, budget_steps=state.rung_steps)


def report(paths: SweepPaths, name: str, code: int, **analysis: Any) -> int:
    """Write the analysis report of the sweep (local storage) and print its text; `code` is returned as is."""
    if paths.report_dir is None:
        print(f"report: not written on remote storage; read the table with python -m analysis "
              f"{paths.results_root} --sweep {name}")
        return code
    from analysis.report import analyze  # deferred: it loads matplotlib, for a report the sweep may not write

    try:
        rep = analyze(paths.results_root, paths.report_dir, sweeps=[name], drop_nan=True, **analysis)
    except AnalysisError as e:
        print(f"report: not written: {e}")
        return code
    print()
    print(rep.text())
    print(f"\nreport: {rep.path}")
    return code


def main(argv: list[str] | None = None, *, trainable: Callable[[dict[str, Any]], None] = train_ouvae) -> int:
    """The script. `trainable` is the Tune trainable each trial runs (e.g. one that wraps it)."""
    return cli.main(lambda cmd: run(cmd, trainable), build_parser(), argv, extra_errors=(RefineError,))

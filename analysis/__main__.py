"""Command line: ``python -m analysis <results> [--out DIR] [--sweep ID] ...`` (also ``ouvae-analyze``).

Prints the rho_c table (with whether it has converged with the training budget), the across-latent-size and
across-dataset verdicts, writes the report folder. Bad input ends with one line ``error: ...`` on stderr and exit
code 2, never a traceback, and no report is left behind. ``--watch`` analyses again whenever the table changes
(analysis/watch.py), for a sweep that is still running.
"""

from __future__ import annotations

import argparse
import sys

from analysis.errors import AnalysisError  # a leaf: no Polars, so --help stays instant

EPILOG = """\
results (local folder or s3://bucket/prefix/...; S3 credentials and AWS_ENDPOINT_URL from the environment):
  <storage>                        the folder the sweep wrote (--storage), holding parquet/, ray/, reports/
  <storage>/parquet                the Parquet root, holding sweep_id=<id>/
  <storage>/parquet/sweep_id=<id>  one sweep

output (--out; default: <storage>/reports/<sweep or "all"> for a storage folder, <Parquet root>/report for the
other two, ./reports/<sweep or "all"> for S3 -- the report is always written locally):
  report.html   self-contained report (figures embedded): open in a browser, share as one file
  figures/      the same figures as PNG: transition_*.png (top-layer KL and active fraction vs rho with the fitted
                rho_c and interval, per latent size), datasets_*.png (the same, one curve per dataset),
                budget_*.png (rho_c against the training step), layers_*.png (active units and KL of every layer vs
                rho), curves_*.png (training curves over steps)
  tables/       CSV: rho_c, latent_size_comparison, dataset_comparison, rho_c_by_budget, order_parameters (every
                run), table6, table8 (and table9/table10 with a benchmark file)

exit codes: 0 ok, 2 bad input (the message says what to fix)."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ouvae-analyze" if sys.argv and sys.argv[0].endswith("ouvae-analyze") else "python -m analysis",
        description="Critical rho, paper-style tables, plots and a report from ouvae sweep results (Parquet).",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", help="the sweep's storage folder, its parquet/ folder, or parquet/sweep_id=<id>; local "
                                   "or s3://bucket/prefix/...")
    p.add_argument("--out", metavar="DIR", help="local report folder (default: see below)")
    p.add_argument("--sweep", metavar="ID", action="append",
                   help="analyse only this sweep id (repeat for several; default: every sweep in the folder)")
    p.add_argument("--benchmark", metavar="PATH",
                   help="trainer benchmark JSON for Tables 9-10 (default: <results>/benchmark.json if present locally)")
    p.add_argument("--level", type=float, default=0.95, help="interval level (default 0.95)")
    p.add_argument("--n-boot", type=int, default=500, help="bootstrap resamples of seeds for rho_c (default 500)")
    p.add_argument("--compare-boot", type=int, default=200,
                   help="seed resamples for the across-latent-size width ratios (default 200; 0 = off)")
    p.add_argument("--delta", type=float, default=0.02,
                   help="margin on rho_c: two rho_c are 'similar' when the whole interval of their difference lies "
                        "within +-delta; rho_c has converged with the budget when its last move is within +-delta/2 "
                        "(default 0.02)")
    p.add_argument("--budget-steps", type=int, nargs="+", default=None, metavar="STEP",
                   help="a ladder's rung steps (critical_rho.py --until-converged prints them): rho_c against the "
                        "budget at these steps, each run with its latest evaluation")
    p.add_argument("--max-budgets", type=int, default=8,
                   help="most training budgets (evaluation steps) rho_c is fitted at per configuration (default 8)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the bootstraps (default 0)")
    p.add_argument("--no-plots", action="store_true", help="skip the figures (faster)")
    p.add_argument("--include-unfinished", action="store_true",
                   help="use the latest evaluation of trials that have not finished (default: finished trials only)")
    p.add_argument("--drop-nan", action="store_true",
                   help="leave out trials whose final metrics are NaN/inf (default: stop with an error)")
    p.add_argument("--watch", action="store_true",
                   help="keep watching a running sweep: analyse again and rewrite the report whenever result files "
                        "change, until Ctrl-C (the table does not say when a sweep has ended); only reads the table")
    p.add_argument("--watch-interval", type=float, default=5.0, metavar="S",
                   help="with --watch: seconds between looks at the table (default 5)")
    p.add_argument("--watch-refreshes", type=int, default=None, metavar="N",
                   help="with --watch: stop after N analyses (default: until Ctrl-C)")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if (args.watch_refreshes is not None or args.watch_interval != 5.0) and not args.watch:
        parser.error("--watch-interval and --watch-refreshes need --watch")
    if args.watch_interval <= 0 or (args.watch_refreshes is not None and args.watch_refreshes < 1):
        parser.error("--watch-interval must be > 0 seconds and --watch-refreshes at least 1")
    # deferred: Polars and matplotlib load only once the arguments parse (``--help`` and bad options stay instant)
    from analysis.report import analyze, check_options
    from analysis.storage import locate
    from analysis.watch import watch

    def analyse():
        return analyze(args.results, args.out, sweeps=args.sweep, level=args.level, n_boot=args.n_boot,
                       compare_boot=args.compare_boot, seed=args.seed, benchmark=args.benchmark,
                       plots_on=not args.no_plots, include_unfinished=args.include_unfinished,
                       drop_nan=args.drop_nan, delta=args.delta, max_budgets=args.max_budgets,
                       budget_steps=args.budget_steps)

    try:
        loc = locate(args.results)
        if args.watch:  # bad options fail now, not as a "not analysed yet" line repeated while watching
            check_options(args.level, args.n_boot, args.compare_boot, args.delta, args.max_budgets)
            return watch(loc, args.sweep, analyse, interval_s=args.watch_interval, refreshes=args.watch_refreshes,
                         say=lambda line: print(line, flush=True))
        rep = analyse()
    except AnalysisError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted; no report was written", file=sys.stderr)
        return 130
    print(rep.text())
    print(f"\nreport: {rep.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark of the analysis on a large synthetic results folder: prints rows per second.

Usage, from the repository root:
``PYTHONPATH=. .venv/bin/python benchmarks/analysis_bench.py [--rows 1000000] [--dir PATH] [--threads 2]``

Why synthetic: a million result rows is far more than this machine can train; the generator writes the exact
on-disk layout of a real sweep (one Parquet file per trial, hive-partitioned by sweep) with a known rho_c, so the
benchmark also checks the answer. The folder is generated once and reused (generation is not timed).

What is timed: each stage of ``analysis.analyze`` (scan + validation, the lazy queries, the fits, the comparisons
across latent sizes, the fits at each training budget, the tables), then the whole of ``analyze`` end to end, once
without and once with figures and the report written.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import tempfile
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=1_000_000, help="approximate number of result rows (default 1e6)")
    p.add_argument("--dir", help="results folder to create/reuse (default: a folder in the temp dir)")
    p.add_argument("--threads", type=int, default=2, help="Polars threads (default 2, the target machine)")
    p.add_argument("--repeat", type=int, default=2, help="timed repetitions; the best is reported (default 2)")
    p.add_argument("--keep-report", action="store_true", help="keep the report written by the last timing")
    args = p.parse_args(argv)
    os.environ["POLARS_MAX_THREADS"] = str(args.threads)  # must be set before polars is imported

    import polars as pl

    from analysis.budget import evaluations_query, fit_budgets
    from analysis.compare import compare_latent_sizes
    from analysis.critical import check_runs, configurations, final_runs_query, fit_configurations, trial_counts_query
    from analysis.io import collect, load_results
    from analysis.report import analyze, curves_query
    from analysis.testing.synthetic import make_synthetic_results
    from analysis.tables import summarize_runs, table6, table8

    sizes, rhos, seeds = (10, 20, 40), [round(0.80 + 0.01 * i, 4) for i in range(21)], 8
    trials = len(sizes) * len(rhos) * seeds
    n_evals = max(1, math.ceil(args.rows / trials))
    root = Path(args.dir) if args.dir else Path(tempfile.gettempdir()) / f"ouvae_analysis_bench_{trials}x{n_evals}"
    marker = root / "bench.json"
    if not marker.exists():
        print(f"generating {trials} trials x {n_evals} evaluations into {root} ...", flush=True)
        t = time.perf_counter()
        truth = make_synthetic_results(root, sweep_id="bench", latent_sizes=sizes, rhos=rhos, n_seeds=seeds,
                                       n_evals=n_evals, salt=1)
        rho_c = {dims: v for (_, dims), v in truth.rho_c.items()}
        marker.write_text(json.dumps({"rho_c": rho_c, "rows": truth.n_rows}))
        print(f"  generated {truth.n_rows:,} rows in {time.perf_counter() - t:.1f} s")
    meta = json.loads(marker.read_text())
    n_rows = int(meta["rows"])
    print(f"results: {root} ({n_rows:,} rows, {trials} files); polars threads: {pl.thread_pool_size()}; "
          f"cpu count: {os.cpu_count()}")

    def best(fn, label: str) -> float:
        times = []
        for _ in range(args.repeat):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        b = min(times)
        print(f"  {label:<46s} {b:7.3f} s   {n_rows / b:14,.0f} rows/s")
        return b

    state: dict = {}

    def load() -> None:
        state["res"] = load_results(root)

    def queries() -> None:
        res = state["res"]
        state["frames"] = collect(res, final_runs_query(res), trial_counts_query(res), evaluations_query(res),
                                  curves_query(res))

    def fits() -> None:
        runs, counts = state["frames"][0], state["frames"][1].row(0, named=True)
        runs = check_runs(runs, unfinished=counts["unfinished"], include_unfinished=False, drop_nan=False, notes=[])
        cfg = configurations(runs)
        state["crit"] = fit_configurations(runs, cfg)
        state["cfg"] = cfg

    def comparisons() -> None:
        compare_latent_sizes(state["crit"], n_resamples=200)

    def budgets() -> None:
        fit_budgets(state["crit"], state["frames"][2], n_boot=500)

    def tables() -> None:
        crit, cfg = state["crit"], state["cfg"]
        s = summarize_runs(crit.runs.join(cfg.select("config_id", "total_latent", "label", "family_label"),
                                          on="config_id", how="left"))
        table6(s), table8(s)

    print("stages:")
    t_load = best(load, "scan + validation (lazy, one pass)")
    t_q = best(queries, "final rows, counts, evaluations, curves (collect_all)")
    best(fits, "fits (3 configs, n_boot=500)")
    best(comparisons, "latent-size comparisons (w-boot=200)")
    best(budgets, "fits at up to 8 budgets (n_boot=500)")
    t_tab = best(tables, "tables 6 and 8")
    print(f"  {'sum of the row-dependent stages (no fits)':<46s} {t_load + t_q + t_tab:7.3f} s   "
          f"{n_rows / (t_load + t_q + t_tab):14,.0f} rows/s")
    print("end to end (analysis.analyze):")
    out = Path(tempfile.mkdtemp(prefix="ouvae_bench_report_"))
    best(lambda: analyze(root, out, plots_on=False, write=False), "no figures, nothing written")
    best(lambda: analyze(root, out), "figures + report written")
    table = state["crit"].table
    print("rho_c found vs truth:")
    for r in table.iter_rows(named=True):
        print(f"  {r['latent_dims']}: {r['rho_c']:.4f} [{r['ci_low']:.4f}, {r['ci_high']:.4f}]  truth "
              f"{meta['rho_c'][r['latent_dims']]:.4f}")
    if args.keep_report:
        print(f"report: {out / 'report.html'}")
    else:
        shutil.rmtree(out, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

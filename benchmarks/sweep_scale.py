"""How the sweep driver scales with the number of runs: the real Tune driver, Parquet sink and progress line, with a
synthetic trainable that does no torch work (sweeps/testing/scale.py), so that only the driver's own cost is measured.

    PYTHONPATH=. .venv/bin/python benchmarks/sweep_scale.py --out scale.json [--runs 100 1000 10000]
        [--population 64] [--evaluations 5] [--cpus 2] [--cpus-per-trial 0.25]

Each size is one sweep through ``sweeps/rho_sweep.py``'s ``main`` (a grid of one latent size, 5 seeds and
runs / 5 rho values, in populations of ``--population`` runs, each trial reporting ``--evaluations`` times), in a
fresh process so that the sizes do not share a driver. Per size it writes a row ``{runs, trials, concurrent,
reports, reports_per_s, driver_cpu_s_per_report, driver_rss_mb, table_write_s}``: reports are Tune results (one per
trial and evaluation, each with a row per member), reports_per_s counts them between the sink's first and last
file write (Ray's start-up excluded), the driver's CPU time and peak RSS are its process's own (Ray's
other processes excluded), and table_write_s is the time the sink spent writing trial files. Recorded in
BENCHMARKS.md ("Sweep driver at scale").
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock


def one_size(runs: int, population: int, evaluations: int, cpus: int, cpus_per_trial: float) -> dict:
    """One sweep of `runs` synthetic runs in this process; its driver's figures."""
    import sweeps.results
    from sweeps import rho_sweep
    from sweeps.testing.scale import scale_trainable

    seeds = 5
    rhos = [f"{0.5 + 0.5 * i / (runs // seeds):.6f}" for i in range(1, runs // seeds + 1)]
    writes: dict = {"n": 0, "s": 0.0, "trials": set(), "first": None, "last": None}
    real_write = sweeps.results.write_trial_file

    def timed_write(root: str, sweep_id: str, trial_id: str, rows):  # noqa: ANN001 - the sink's one write per report
        t0 = time.perf_counter()
        try:
            return real_write(root, sweep_id, trial_id, rows)
        finally:
            writes["n"] += 1
            writes["s"] += time.perf_counter() - t0
            writes["trials"].add(trial_id)
            writes["first"] = writes["first"] or t0
            writes["last"] = time.perf_counter()

    reports = {"n": 0}
    real_result = sweeps.results.ParquetSink.on_trial_result

    def counted_result(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003 - every result the driver handles
        reports["n"] += 1
        return real_result(self, *args, **kwargs)

    with tempfile.TemporaryDirectory(prefix="ouvae-scale-") as storage:
        argv = ["--grid", "--rhos", *rhos, "--n-seeds", str(seeds), "--latent-sizes", "10", "--population",
                str(population), "--steps", str(evaluations), "--num-cpus", str(cpus), "--cpus-per-trial",
                str(cpus_per_trial), "--storage", storage, "--name", f"scale-{runs}", "--no-report",
                "--max-concurrent", str(int(cpus / cpus_per_trial))]
        out = io.StringIO()
        cpu0, t0 = time.process_time(), time.perf_counter()
        with mock.patch.object(sweeps.results, "write_trial_file", timed_write), \
                mock.patch.object(sweeps.results.ParquetSink, "on_trial_result", counted_result), \
                contextlib.redirect_stdout(out):
            code = rho_sweep.main(argv, trainable=scale_trainable)
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        if code != 0:
            raise SystemExit(f"the sweep of {runs} runs failed (exit {code}):\n{out.getvalue()[-3000:]}")
    trials = len(writes["trials"])
    window = writes["last"] - writes["first"]  # first to last report: Ray's start-up and shutdown left out
    return {"runs": runs, "trials": trials, "concurrent": min(trials, int(cpus / cpus_per_trial)),
            "reports": reports["n"], "table_writes": writes["n"], "wall_s": wall, "reports_window_s": window,
            "reports_per_s": reports["n"] / window if window > 0 else None,
            "driver_cpu_s_per_report": cpu / max(reports["n"], 1),
            "driver_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "table_write_s": writes["s"], "progress_lines": out.getvalue().count("\n")}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="JSON file for the rows")
    ap.add_argument("--runs", nargs="+", type=int, default=[100, 1000, 10000])
    ap.add_argument("--population", type=int, default=64)
    ap.add_argument("--evaluations", type=int, default=5, help="reports per trial (default 5)")
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--cpus-per-trial", type=float, default=0.25)
    ap.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)  # internal: one size, JSON on stdout
    args = ap.parse_args(argv)
    if args.one is not None:
        from sweeps.compat import DRIVER_ENV

        for key, value in DRIVER_ENV.items():
            os.environ.setdefault(key, value)
        row = one_size(args.one, args.population, args.evaluations, args.cpus, args.cpus_per_trial)
        print("ROW " + json.dumps(row))
        return 0
    rows = []
    for runs in args.runs:
        cmd = [sys.executable, __file__, "--out", args.out, "--one", str(runs), "--population", str(args.population),
               "--evaluations", str(args.evaluations), "--cpus", str(args.cpus), "--cpus-per-trial",
               str(args.cpus_per_trial)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        found = [line for line in done.stdout.splitlines() if line.startswith("ROW ")]
        if done.returncode != 0 or not found:
            print(done.stdout[-3000:], done.stderr[-3000:], file=sys.stderr)
            raise SystemExit(f"the size {runs} failed")
        rows.append(json.loads(found[-1][4:]))
        r = rows[-1]
        print(f"{r['runs']:>6} runs, {r['trials']:>4} trials ({r['concurrent']} at once, {r['wall_s']:.0f} s with "
              f"Ray's start-up): {r['reports']} reports in {r['reports_window_s']:.0f} s = {r['reports_per_s']:.2f}/s; "
              f"driver {r['driver_cpu_s_per_report'] * 1e3:.0f} ms CPU per report, {r['driver_rss_mb']:.0f} MB RSS; "
              f"{r['table_writes']} table writes {r['table_write_s']:.1f} s", flush=True)
        Path(args.out).write_text(json.dumps({"rows": rows}, indent=2))
    if len(rows) > 1:
        print(f"reports/s at {rows[-1]['runs']} runs vs {rows[0]['runs']}: "
              f"{rows[-1]['reports_per_s'] / rows[0]['reports_per_s']:.2f}x (target >= 0.5)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

#!/usr/bin/env python
"""Per-trial overhead of the Tune layer: the same N near-empty trials with and without actor reuse.

    .venv/bin/python benchmarks/sweep_overhead.py [--trials 16] [--cpus 2]

Why: a critical-rho sweep is thousands of short trials, so what Ray costs per trial (worker start-up, importing
torch, placement groups, the checkpoint copy and the driver-side Parquet write) decides how small a trial can be
before the cluster spends its time on bookkeeping. Each trial here trains one optimizer step on 100 digits and
evaluates L_1 on 10 images, so almost all of its wall time is overhead. Prints seconds per trial for
reuse_actors on/off and their ratio. A shared 2-core machine is noisy: compare ratios from one run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path


def run_once(n_trials: int, reuse: bool, storage: str) -> float:
    from ray import tune

    from sweeps.results import ParquetSink
    from sweeps.trainable import train_ouvae

    space = {"preset": "demo", "latent_dims": [3, 3], "hidden_units": 16, "smooth_samples": 1, "steps": 1,
             "n_train": 100, "eval_iw_k": 2, "eval_max_examples": 10, "num_threads": 1,
             "seed": tune.grid_search(list(range(n_trials)))}
    name = f"overhead-{'reuse' if reuse else 'fresh'}"
    tuner = tune.Tuner(tune.with_resources(train_ouvae, {"cpu": 1}), param_space=space,
                       tune_config=tune.TuneConfig(reuse_actors=reuse),
                       run_config=tune.RunConfig(name=name, storage_path=f"{storage}/ray", verbose=0,
                                                 callbacks=[ParquetSink(f"{storage}/parquet", name, verbose=False)]))
    t0 = time.perf_counter()
    grid = tuner.fit()
    elapsed = time.perf_counter() - t0
    if grid.errors:
        raise SystemExit(f"benchmark trials failed: {grid.errors[0]}")
    return elapsed


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=16)
    p.add_argument("--cpus", type=int, default=2)
    p.add_argument("--out", help="also write the numbers as JSON here")
    args = p.parse_args(argv)
    from sweeps.compat import DRIVER_ENV

    for key, value in DRIVER_ENV.items():
        os.environ.setdefault(key, value)
    import ray

    t0 = time.perf_counter()
    ray.init(num_cpus=args.cpus, include_dashboard=False, logging_config=ray.LoggingConfig(log_level="WARNING"))
    startup = time.perf_counter() - t0
    out = {"trials": args.trials, "cpus": args.cpus, "ray_init_s": round(startup, 2)}
    with tempfile.TemporaryDirectory() as storage:
        for reuse in (True, False):
            s = run_once(args.trials, reuse, storage)
            out["reuse" if reuse else "fresh"] = {"total_s": round(s, 2), "per_trial_s": round(s / args.trials, 3)}
    ray.shutdown()
    ratio = out["fresh"]["total_s"] / out["reuse"]["total_s"]
    out["fresh_over_reuse"] = round(ratio, 2)
    print(f"ray.init: {startup:.1f} s; {args.trials} near-empty trials on {args.cpus} CPUs")
    print(f"  reuse_actors=True : {out['reuse']['total_s']:6.1f} s  ({out['reuse']['per_trial_s']:.2f} s per trial)")
    print(f"  reuse_actors=False: {out['fresh']['total_s']:6.1f} s  ({out['fresh']['per_trial_s']:.2f} s per trial)")
    print(f"  fresh / reuse = {ratio:.1f}x")
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

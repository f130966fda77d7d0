#!/usr/bin/env python
"""Locate the critical smoothing rho of OU-smoothed hierarchical VAEs: sweep rho x latent size x seed with Ray Tune.

    python sweeps/critical_rho.py                       # demo: digits, local Ray, a few minutes on 2 cores
    python sweeps/critical_rho.py --preset paper-mlp-4x40 --dataset mnist --latent-sizes 5 10 20 40 \\
        --grid --rho-min 0.80 --rho-max 1.0 --rho-step 0.005 --n-seeds 5 --gpus-per-trial 0.25 \\
        --address auto --storage s3://bucket/ouvae --name mnist-4layer
    python sweeps/critical_rho.py --resume              # continue the newest sweep after a crash / Ctrl-C
    python sweeps/critical_rho.py --until-converged --epochs 30 --max-epochs 240   # train until rho_c stops moving

Every evaluation of every trial becomes a row of the Parquet table <storage>/parquet/sweep_id=<name>/; at the
end the analysis fits rho_c per latent configuration (with a seed-bootstrap interval) and writes a report.

The sweep itself (options, plan, run, summary): sweeps/rho_sweep.py. Options: ``--help`` and docs/sweeps.md.
"""

import sys

from sweeps.rho_sweep import main

if __name__ == "__main__":
    sys.exit(main())

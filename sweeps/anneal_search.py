#!/usr/bin/env python
"""Search KL-annealing schedules with Optuna (TPE) through Ray Tune, pruning poor runs early with ASHA.

    python sweeps/anneal_search.py                                   # demo: digits, 20 trials
    python sweeps/anneal_search.py --preset paper-mlp-4x40 --dataset mnist --n-trials 200 \\
        --schedules linear cosine cyclical --free-bits 0 1 --rho-range 0.9 1.0 --multi-objective \\
        --gpus-per-trial 0.25 --address auto --storage /nfs/ouvae --name anneal-mnist
    optuna-dashboard results/optuna/<name>.log                       # watch / inspect the study

What is searched, the objective, how ASHA-stopped trials reach Optuna and where the study lives: sweeps/anneal.py.
Options: ``--help``; the options shared with critical_rho.py: docs/sweeps.md.
"""

import sys

from sweeps.anneal import main

if __name__ == "__main__":
    sys.exit(main())

"""Helpers for the sweeps' tests and benchmarks: synthetic Ray trainables (a known rho_c, a rho_c drifting with the
budget, a scale test's reports), fault injection around the real trainable, the adaptive policy driven without Ray,
and a loopback multi-node Ray cluster.

Why installed, inside the package it serves (as ``optuna.testing`` is): Ray workers import a trainable by its
module name, so these must be importable wherever a worker starts, like the rest of ``sweeps``. The product never
imports them (tests/test_structure.py checks it).
"""

# How long a test waits for a sweep or a Ray node it started to reach a state (rows written, trials running, a `ray
# start` done) before calling it hung. A hang guard, not a speed check, so it is generous: CI runs on loaded machines,
# and a clean-clone run at load 15 on 2 cores took over 150 s to write a sweep's first six rows and over 90 s for one
# `ray start` (2026-12-08).
HANG_GUARD_S = 600

"""Helpers for the sweeps' tests and benchmarks: synthetic Ray trainables (a known rho_c, a rho_c drifting with the
budget, a scale test's reports), fault injection around the real trainable, the adaptive policy driven without Ray,
and a loopback multi-node Ray cluster.

Why installed, inside the package it serves (as ``optuna.testing`` is): Ray workers import a trainable by its
module name, so these must be importable wherever a worker starts, like the rest of ``sweeps``. The product never
imports them (tests/test_structure.py checks it).
"""

"""Helpers that only the tests and the benchmarks use: synthetic runs with a known truth, Ray trainables drawing
from them (with fault injection, a drifting rho_c for the ladder, a scale test's reports), and a driver of the
adaptive policy without Ray.

Not part of the installed packages (pyproject's package list names ouvae, sweeps and analysis only): pytest finds
this folder through ``pythonpath = ["."]``, the benchmarks through ``PYTHONPATH=.`` from the repository root.
"""

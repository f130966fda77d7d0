"""Helpers for the analysis's tests and benchmarks: synthetic runs and whole results folders with a known rho_c.

Why installed, inside the package it serves (as ``polars.testing`` is): every process that needs them -- pytest, a
benchmark, a subprocess started from any folder -- imports them by name like the rest of ``analysis``. The
product never imports them (tests/test_structure.py checks it). Like ``analysis`` itself: no Ray, no torch.
"""

"""Fault injection for the sweeps' tests (sweeps/testing/faults.py); no product module imports it."""

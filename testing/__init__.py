"""Test and benchmark helpers that are not part of the product (not installed with the wheel; Ray workers import
them by module name, so they cannot live under tests/): run the tests and benchmarks from the repository root
(pytest's ``pythonpath = ["."]``; ``PYTHONPATH=.`` for the benchmarks)."""

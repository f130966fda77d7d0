"""Test and benchmark helpers that Ray workers must import by module name (so not under tests/): never part of
the installed package (pyproject.toml installs ouvae, sweeps and analysis only)."""

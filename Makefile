# Two commands do all the set-up on a fresh machine: `make sweep` and `make test`.
# Both create .venv and install the project into it once (the stamp file remembers).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# An exact torch version: on a CPU-only Linux box with a local wheel this picks the small CPU build; on a GPU
# machine PyPI's wheel of the same version is the CUDA build. Override: make TORCH_VERSION=2.5.1 ...
TORCH_VERSION ?= 2.13.0
STAMP := $(VENV)/.installed

.PHONY: sweep demo test test-fast docs bench venv clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "torch==$(TORCH_VERSION)"
	$(BIN)/pip install -q -e ".[dev]"
	touch $(STAMP)

venv: $(STAMP)

# The main job on the embedded default: local Ray, digits, three latent sizes, 7 rho values, 5 seeds (~7 minutes, 2 cores).
sweep: $(STAMP)
	$(BIN)/python sweeps/critical_rho.py $(ARGS)

# One training run of the trainer alone (digits, rho = 0.8, ~1 minute).
demo: $(STAMP)
	$(BIN)/python -m ouvae.train --preset demo --out runs/demo $(ARGS)

# The whole suite (CI: .ci/run), in two pytest-xdist worker processes: a native crash (a segfault in a C extension)
# kills only its worker, xdist reports the test that was running as failed and starts a fresh worker for the rest.
# Two workers: 11 min 46 s against 16 min 48 s for one on the idle 2-core VM (2026-12-07). Two Rays starting at once
# on a loaded machine can miss Ray's fixed 30 s start-up wait; a local Ray start that timed out is started once more
# (sweeps/compat.py: start_local_ray; BENCHMARKS.md, "The test suite").
# --dist load: with xdist 3.8's loadscope/loadfile/loadgroup a crashed worker's test is sent again and the
# session hangs (checked).
test: $(STAMP)
	$(BIN)/python -m pytest -q --durations=15 -n 2 --dist load

# The edit-test loop: no Ray, no multi-node cluster, nothing marked slow.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow and not ray and not multinode and not cuda"

# docs/results-schema.md is generated from analysis/schema.py, docs/options.md from the commands' parsers and the
# Config fields (tests/test_docs.py fails when either is out of date).
docs: $(STAMP)
	$(BIN)/python -m analysis.schema > docs/results-schema.md
	$(BIN)/python -m sweeps.options_doc > docs/options.md

bench: $(STAMP)
	PYTHONPATH=. $(BIN)/python benchmarks/trainer_bench.py

clean:
	rm -rf $(VENV) runs .pytest_cache

"""benchmarks/gpu_check.py end to end on a CPU (--device cpu --quick), with Ray, Optuna, Polars, pooch and
scikit-learn made unimportable: the GPU machine has torch and numpy only, and this keeps the script runnable there."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ABSENT = ("ray", "optuna", "polars", "pooch", "sklearn")


@pytest.mark.slow  # three subprocess stages: ~20 s on a loaded 2-core machine
def test_gpu_check_runs_every_stage_and_writes_the_summary_without_the_sweep_libraries(tmp_path):
    blocked = tmp_path / "blocked"
    for name in ABSENT:
        (blocked / name).mkdir(parents=True)
        (blocked / name / "__init__.py").write_text(f"raise ImportError('{name} is absent on the GPU machine')\n")
    out = tmp_path / "check"
    env = {**os.environ, "PYTHONPATH": str(blocked)}
    done = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--out", str(out), "--device", "cpu", "--quick"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    logs = {p.name: p.read_text()[-2000:] for p in out.glob("*.txt")}
    assert done.returncode == 0, (done.stdout, done.stderr, logs)
    stages = json.loads((out / "stages.json").read_text())
    assert [s["stage"] for s in stages] == ["cuda tests", "population", "trainer"]
    assert "skipped" in logs["cuda_tests.txt"] and "failed" not in logs["cuda_tests.txt"]  # no CUDA here
    population = json.loads((out / "population.json").read_text())
    assert [(r["members"], r["variant"]) for r in population["rows"]] == [(1, "batched"), (4, "batched")]
    assert all(r["member_steps_per_s"] > 0 for r in population["rows"]) and population["packed"]["mlp-4x40"]["2"] > 0
    trainer = json.loads((out / "trainer.json").read_text())
    assert [r["method"] for r in trainer] == ["VAE", "IWAE(5)", "OU-VAE(K=5)", "OU-VAE(K=5, recompute)"]
    summary = (out / "summary.md").read_text()
    assert "| mlp-4x40 | 4 | batched |" in summary and "| mlp-4x40 (MNIST) | OU-VAE(K=5) |" in summary

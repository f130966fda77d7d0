"""The one prepared check for a machine with a GPU: CUDA tests, population and trainer benchmarks, a summary.

    PYTHONPATH=. python3 benchmarks/gpu_check.py --out DIR [--device cuda|cpu] [--quick]

Needs torch and numpy only (pytest for the tests: without it they are reported as not run), no Ray, Optuna,
Polars or pooch, and fits in 8 minutes on one GPU. In order, each in its own process with a time limit, so that one
stage that fails or overruns leaves the others' results:

1. the CUDA tests of the suite (``pytest -m cuda``: a population step on CUDA equals the CPU step, the graphed
   step equals the eager step, a NaN member is isolated) -> DIR/cuda_tests.txt;
2. benchmarks/population_bench.py on the 4x40 MLP: populations of 1 ... 1024 members, eager and graphed
   (compile_step), against one run and against 4 and 8 packed single-run processes -> DIR/population.json;
3. benchmarks/trainer_bench.py (time and memory of VAE, IWAE, OU-VAE) -> DIR/trainer.json;

then DIR/summary.md: every figure and the issue's GPU targets (a population of 64 at >= 10x the member-steps/s of
the best packing; the graphed step >= 2x the eager one at M <= 64), met or not. ``--device cpu --quick`` runs the
same stages in about a minute on a CPU (tests/test_gpu_check.py does, so the script cannot rot unseen).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent


def run_stage(name: str, argv: list[str], timeout: float, log: Path) -> dict:
    """Run one stage as a child process (repo root on its path), its output to `log`; never raises."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    t0 = time.perf_counter()
    try:
        done = subprocess.run([sys.executable, *argv], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=timeout)
        rc, out = done.returncode, done.stdout + done.stderr
    except subprocess.TimeoutExpired as e:
        rc = None
        out = f"{e.stdout or ''}{e.stderr or ''}\n[stopped after its limit of {timeout:.0f} s]"
        out = out if isinstance(out, str) else out.decode(errors="replace")
    log.write_text(out)
    seconds = time.perf_counter() - t0
    print(f"{name}: {'timed out' if rc is None else f'exit {rc}'} after {seconds:.0f} s (log: {log})", flush=True)
    return {"stage": name, "returncode": rc, "seconds": seconds, "log": log.name}


def plan(device: str, quick: bool, out: Path) -> list[tuple[str, list[str], float, str]]:
    """(stage, argv, time limit in s, log file) of each stage."""
    tests = ["-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "cuda", "tests/test_step.py"]
    pop = [str(HERE / "population_bench.py"), "--device", device, "--models", "mlp-4x40", "--variants",
           "--out", str(out / "population.json")]
    trainer = [str(HERE / "trainer_bench.py"), "--device", device, "--out", str(out / "trainer.json")]
    if quick:  # the same stages, small: members 1 and 4, 2 packed processes, no compilation, the MLP model only
        pop += ["--members", "1", "4", "--packed", "2", "--seconds", "0.3", "--threads", "1"]
        trainer += ["--models", "mlp-4x40 (MNIST)", "--seconds", "0.3", "--threads", "1"]
        return [("cuda tests", tests, 120, "cuda_tests.txt"), ("population", pop, 120, "population.txt"),
                ("trainer", trainer, 120, "trainer.txt")]
    pop += ["--members", "1", "4", "16", "64", "256", "1024", "--packed", "4", "8", "--seconds", "2", "--graphed"]
    trainer += ["--seconds", "2"]
    return [("cuda tests", tests, 150, "cuda_tests.txt"), ("population", pop, 260, "population.txt"),
            ("trainer", trainer, 60, "trainer.txt")]


def read_json(path: Path) -> dict | list | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def targets(population: dict) -> list[str]:
    """The issue's GPU targets from the population rows (only what was measured)."""
    rows = population.get("rows", [])
    rate = {(r["members"], r["variant"]): r for r in rows}
    lines = []
    if (64, "batched") in rate:
        r = rate[(64, "batched")]
        lines.append(f"- population of 64 vs best packing: {r['speedup_vs_packed']:.1f}x (target >= 10x: "
                     f"{'met' if r['speedup_vs_packed'] >= 10 else 'not met'})")
    for m in (1, 4, 16, 64):
        if (m, "batched") in rate and (m, "graphed") in rate:
            ratio = rate[(m, "graphed")]["member_steps_per_s"] / rate[(m, "batched")]["member_steps_per_s"]
            lines.append(f"- graphed vs eager at M = {m}: {ratio:.2f}x (target >= 2x: "
                         f"{'met' if ratio >= 2 else 'not met'})")
    return lines


def summary(stages: list[dict], out: Path, device: str, quick: bool) -> str:
    lines = [f"# GPU check ({'quick, ' if quick else ''}device {device})", "",
             f"Command: `PYTHONPATH=. python3 benchmarks/gpu_check.py --out {out} --device {device}"
             f"{' --quick' if quick else ''}`", "", "| stage | result | seconds |", "|---|---|---|"]
    for s in stages:
        result = "timed out" if s["returncode"] is None else ("ok" if s["returncode"] == 0 else
                                                              f"failed (exit {s['returncode']})")
        lines.append(f"| {s['stage']} | {result} | {s['seconds']:.0f} |")
    tests_log = (out / "cuda_tests.txt").read_text().strip().splitlines() if (out / "cuda_tests.txt").exists() else []
    lines += ["", f"CUDA tests: {tests_log[-1] if tests_log else 'no output'}"]
    population = read_json(out / "population.json")
    if isinstance(population, dict):
        lines += ["", f"## Populations ({population.get('device_name')}, torch {population.get('torch')}, "
                      f"large-GEMM rate {population.get('gemm_gflops', 0):.0f} GFLOP/s)", "",
                  f"Packed single runs (member-steps/s): {json.dumps(population.get('packed'))}", "",
                  "| model | members | variant | member-steps/s | vs single | vs best packing | of GEMM |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {r['model']} | {r['members']} | {r['variant']} | {r['member_steps_per_s']:.1f} | "
                  f"{r['speedup_vs_single']:.2f} | {r['speedup_vs_packed']:.2f} | {r['gemm_fraction']:.3f} |"
                  for r in population.get("rows", [])]
        lines += ["", *targets(population)]
    trainer = read_json(out / "trainer.json")
    if isinstance(trainer, list):
        lines += ["", "## Trainer (time and memory per method)", "",
                  "| model | method | s/epoch | time ratio | peak memory MB | memory ratio |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {r['model']} | {r['method']} | {r['time_per_epoch_s']:.1f} | {r['time_ratio']:.2f} | "
                  f"{r['peak_memory_bytes'] / 2**20:.0f} | {r['memory_ratio']:.2f} |" for r in trainer]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="folder for the JSON files, the logs and summary.md")
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--quick", action="store_true", help="small sizes: a minute on a CPU (checks the script)")
    args = ap.parse_args(argv)
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            print("gpu_check: torch sees no CUDA GPU here; run it on the GPU machine, or pass --device cpu",
                  file=sys.stderr)
            return 2
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    stages = [run_stage(name, argv_, limit, out / log) for name, argv_, limit, log in plan(args.device, args.quick,
                                                                                          out)]
    (out / "summary.md").write_text(summary(stages, out, args.device, args.quick))
    (out / "stages.json").write_text(json.dumps(stages, indent=2))
    print(f"wrote {out / 'summary.md'}")
    # pytest exits 5 when every test was deselected or skipped (no CUDA tests apply on a CPU): not a failure here
    failed = [s for s in stages if s["returncode"] not in (0, 5 if s["stage"] == "cuda tests" else 0)]
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())

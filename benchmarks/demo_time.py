"""Time the default sweep (`make sweep`) at the working tree and at a reference commit, back to back on this machine,
and say where the time goes.

    python benchmarks/demo_time.py                                  # reference: the last release tag
    python benchmarks/demo_time.py --ref a7e625e                    # ... or any commit
    python benchmarks/demo_time.py --ref-before 2026-12-01          # ... or the last commit before a date
    python benchmarks/demo_time.py --ref a7e625e -- --latent-sizes 5 --n-seeds 1 --epochs 2   # a smaller sweep

Why: a sweep that got slower (the README's "~4 min on 2 cores" measured 505 s) is found by timing two commits on the
same machine in the same minutes -- a figure from another day or machine says nothing -- and bisecting with
--ref. The reference is checked out with ``git worktree add`` into a temporary folder (removed at the end) and run
with this interpreter and its packages, its own code first on PYTHONPATH; so the two runs differ only in the
project's code. Each sweep writes into a temporary storage folder.

Printed, for each tree and their ratio (reference / working tree: above 1 = the working tree is faster):
* wall time, split into start-up and planning (process start to the sweep's plan), Ray start-up (as the sweep
  prints it), the trials (Tune's loop), analysis and report, and shut-down;
* per trial (mean over the Tune trials): training, evaluation (both measured by the trainer, results table
  columns ``time_per_epoch_s`` x ``epoch`` and ``wall_time_s``), and the rest of the trial's time on its worker
  (``time_total_s`` of Tune's result.json minus those: data and model set-up, checkpoints, reports);
* driver-side overhead: the trials' phase minus the trials' own time spread over the concurrent slots (trial
  start-up, scheduling, results-table writes).
Timings on a machine other work shares are noise: the script prints the load average before each run.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SWEEP_NAME = "demo-time"
RAY_LINE = re.compile(r"^\s*Ray: .*, ([0-9.]+) s$")
SUMMARY_LINE = re.compile(r"^(\d+) runs finished, (\d+) failed, in (\d+) s")


@dataclass
class Timing:
    """One sweep's clock: when each of its output lines came (seconds since the process started)."""

    label: str
    wall: float = 0.0
    lines: list[tuple[float, str]] = field(default_factory=list)
    exit_code: int = 0
    trials: list[dict[str, float]] = field(default_factory=list)  # per Tune trial: train, eval, total on worker
    slots: int = 1

    def first(self, pattern: re.Pattern | str) -> tuple[float, str] | None:
        for t, line in self.lines:
            if (pattern.search(line) if isinstance(pattern, re.Pattern) else line.startswith(pattern)):
                return t, line
        return None

    def phases(self) -> dict[str, float | None]:
        """Seconds of each phase of the wall time (None where the output does not show it)."""
        plan = self.first(re.compile(r"^critical-rho sweep "))
        ray = self.first(RAY_LINE)
        resume = self.first("  resume after a crash")
        summary = self.first(SUMMARY_LINE)
        report = self.first("report: ")
        last = self.lines[-1][0] if self.lines else self.wall
        ray_s = float(RAY_LINE.search(ray[1]).group(1)) if ray else None
        trials = summary[0] - resume[0] if summary and resume else None
        driver = (max(0.0, trials - sum(t["total"] for t in self.trials) / self.slots)
                  if trials is not None and self.trials else None)
        return {"start-up and planning": plan[0] if plan else None, "Ray start-up": ray_s,
                "trials (Tune's loop)": trials, "  of it: driver side": driver,
                "analysis and report": report[0] - summary[0] if report and summary else None,
                "shut-down": self.wall - last}

    def per_trial(self) -> dict[str, float | None]:
        if not self.trials:
            return {"training": None, "evaluation": None, "set-up, checkpoints, reports": None}
        n = len(self.trials)
        train = sum(t["train"] for t in self.trials) / n
        evaluation = sum(t["eval"] for t in self.trials) / n
        total = sum(t["total"] for t in self.trials) / n
        return {"training": train, "evaluation": evaluation, "set-up, checkpoints, reports": total - train - evaluation}


def load_average() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "unknown"


def run_sweep(label: str, tree: Path, workdir: Path, sweep_args: list[str]) -> Timing:
    """Run the default sweep of `tree` (its code first on PYTHONPATH) with `sweep_args`; time every output line."""
    storage = workdir / label / "store"
    argv = [sys.executable, str(tree / "sweeps" / "critical_rho.py"), *sweep_args, "--storage", str(storage),
            "--name", SWEEP_NAME]
    env = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, "PYTHONPATH": str(tree),
           "PYTHONUNBUFFERED": "1"}
    print(f"\n[{label}] load average {load_average()}; {' '.join(argv[1:])}", flush=True)
    timing = Timing(label)
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            cwd=workdir / label)
    for line in proc.stdout:
        timing.lines.append((time.monotonic() - t0, line.rstrip("\n")))
        print(f"  {line}", end="", flush=True)
    timing.exit_code = proc.wait()
    timing.wall = time.monotonic() - t0
    timing.trials = trial_times(storage)
    running = [int(m.group(1)) for _, line in timing.lines for m in [re.search(r"(\d+) trials running", line)] if m]
    timing.slots = max(running, default=1) or 1
    return timing


def trial_times(storage: Path) -> list[dict[str, float]]:
    """Per Tune trial: training and evaluation seconds (the trainer's, from the results table) and the trial's
    whole time on its worker (Tune's result.json, time_total_s of its last result)."""
    import polars as pl

    part = storage / "parquet" / f"sweep_id={SWEEP_NAME}"
    if not part.is_dir():
        return []
    rows = pl.read_parquet(part / "*.parquet").filter(pl.col("is_final"))
    if rows.is_empty() or not {"population_id", "wall_time_s", "time_per_epoch_s", "epoch"} <= set(rows.columns):
        return []
    per = rows.group_by("population_id").agg(pl.col("wall_time_s").max().alias("wall"),
                                             (pl.col("time_per_epoch_s") * pl.col("epoch")).max().alias("train"))
    totals = {}
    for result in (storage / "ray" / SWEEP_NAME).glob("*/result.json"):
        last = result.read_text().strip().splitlines()[-1:]
        if last:
            data = json.loads(last[0])
            totals[data.get("trial_id")] = float(data.get("time_total_s", 0.0))
    out = []
    for row in per.iter_rows(named=True):
        trial = str(row["population_id"])
        total = totals.get(trial, row["wall"])
        out.append({"train": row["train"], "eval": row["wall"] - row["train"], "total": max(total, row["wall"])})
    return out


class BadInput(Exception):
    """A reference that names no commit: one line, exit code 2."""


def resolve_ref(args: argparse.Namespace) -> str:
    """The reference commit: --ref, the last commit before --ref-before, or the last release tag."""
    def git(*cmd: str) -> str:
        return subprocess.run(["git", "-C", str(ROOT), *cmd], capture_output=True, text=True).stdout.strip()

    if args.ref_before:
        commit = git("rev-list", "-1", f"--before={args.ref_before}", "HEAD")
        if not commit:
            raise BadInput(f"--ref-before {args.ref_before}: no commit before that date on this branch")
        return commit
    ref = args.ref or git("describe", "--tags", "--abbrev=0")
    if not ref:
        raise BadInput("this repository has no release tag: name the reference with --ref COMMIT or --ref-before DATE")
    commit = git("rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}")
    if not commit:
        raise BadInput(f"--ref {ref}: not a commit of this repository (git rev-parse found nothing)")
    return commit


def ratio(ref: float | None, work: float | None) -> str:
    return f"{ref / work:6.2f}" if ref is not None and work else "     -"


def seconds(v: float | None) -> str:
    return f"{v:9.1f} s" if v is not None else "        - "


def report(work: Timing, ref: Timing) -> None:
    print(f"\n{'':36}{'working tree':>12}{'reference':>13}{'ref/work':>9}")
    print(f"{'wall':36}{seconds(work.wall)}{seconds(ref.wall)}   {ratio(ref.wall, work.wall)}")
    wp, rp = work.phases(), ref.phases()
    for key in wp:
        print(f"  {key:34}{seconds(wp[key])}{seconds(rp.get(key))}   {ratio(rp.get(key), wp[key])}")
    wt, rt = work.per_trial(), ref.per_trial()
    print(f"per trial (mean of {len(work.trials)} / {len(ref.trials)} trials)")
    for key in wt:
        print(f"  {key:34}{seconds(wt[key])}{seconds(rt[key])}   {ratio(rt[key], wt[key])}")
    for t in (work, ref):
        if t.exit_code != 0:
            print(f"warning: the {t.label} sweep exited with code {t.exit_code}; its figures are incomplete")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    which = ap.add_mutually_exclusive_group()
    which.add_argument("--ref", help="reference commit, tag or branch (default: the last release tag)")
    which.add_argument("--ref-before", metavar="DATE", help="reference: the last commit before DATE (git's --before)")
    ap.add_argument("--reference-first", action="store_true",
                    help="run the reference first (default: the working tree first); swap to see order effects")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder (outputs and results)")
    ap.add_argument("sweep_args", nargs="*", help="after --: options of sweeps/critical_rho.py (default: none, the "
                                                  "default sweep)")
    args = ap.parse_args(argv)
    try:
        commit = resolve_ref(args)
    except BadInput as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain"], capture_output=True,
                           text=True).stdout.strip()
    workdir = Path(tempfile.mkdtemp(prefix="ouvae-demo-time-"))
    ref_tree = workdir / "reference-tree"
    print(f"working tree {ROOT} (HEAD {head}{', with uncommitted changes' if dirty else ''}) against {commit[:10]}; "
          f"{os.cpu_count()} CPUs; temporary folder {workdir}")
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "--quiet", str(ref_tree), commit],
                   check=True)
    try:
        for label in ("work", "reference"):
            (workdir / label).mkdir()
        order = [("reference", ref_tree), ("work", ROOT)]
        if not args.reference_first:
            order.reverse()
        timings = {label: run_sweep(label, tree, workdir, list(args.sweep_args)) for label, tree in order}
        report(timings["work"], timings["reference"])
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(ref_tree)], check=False)
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

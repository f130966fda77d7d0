"""What a user sees from `make sweep`'s code path: a tiny real sweep as a subprocess that starts its own local Ray,
run to its end, stopped by Ctrl-C, and stopped by SIGTERM (what `timeout`, schedulers and Kubernetes send).

None of them may print anything a user takes for a crash: a Python traceback, "Exception ignored ...", a native
stack dump (abseil's "*** SIGTERM received ...", frames "@ 0x..."), or Ray's notices that the sweep's own lines
replace. A stopped sweep ends with what finished, what did not, and the --resume command, and exits with 128 + the
signal's number; the printed command continues it to the end.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import polars as pl
import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "sweeps" / "critical_rho.py"
# 8 runs at 4 rho values x 2 seeds as four populations of 2, two at a time (one per CPU): when the first run has
# finished, at least two trials have not started, so a signal sent then always finds a sweep to stop.
TINY = ["--grid", "--latent-sizes", "3", "--layers", "2", "--rhos", "0.6", "0.7", "0.8", "1.0", "--n-seeds", "2",
        "--population", "2", "--epochs", "20", "--n-train", "200", "--set", "eval_every=1", "--set", "eval_iw_k=5",
        "--set", "eval_max_examples=100", "--set", "hidden_units=32", "--set", "smooth_samples=2", "--num-cpus", "2",
        "--no-report"]
# Text a user takes for a crash, and Ray's notices the sweep's own lines replace.
CRASH_LIKE = ("Traceback (most recent call last)", "Exception ignored", "Fatal Python error", "*** SIG",
              "Failed to fetch metrics", "Token authentication is enabled", "Stop signal received", "Tuner.restore(")
NATIVE_FRAME = re.compile(r"^\s*@\s+0x[0-9a-f]+", re.MULTILINE)  # a frame of abseil's stack dump
FIRST_RESULT = re.compile(r"^\[\d\d:\d\d\] done ", re.MULTILINE)
TIMEOUT_S = 300


def assert_nothing_crash_like(output: str) -> None:
    found = [text for text in CRASH_LIKE if text in output]
    frame = NATIVE_FRAME.search(output)
    assert not found and frame is None, f"{found or frame.group(0)!r} in the output:\n{output}"


def environment() -> dict[str, str]:
    """This process's environment without an inherited RAY_ADDRESS: the script starts its own local Ray."""
    return {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}


def run_sweep(argv: list[str], cwd: Path, stop_with: signal.Signals | None = None) -> tuple[int, str]:
    """(exit code, stdout + stderr) of the sweep script; with `stop_with`, that signal is sent once the first run
    has finished. SIGINT goes to the script's process group, as a terminal's Ctrl-C does (Ray's processes see it
    too); SIGTERM to the script alone, as `timeout` and Kubernetes send it."""
    proc = subprocess.Popen([sys.executable, str(SCRIPT), *argv], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, cwd=cwd, env=environment(), start_new_session=True)
    lines: queue.Queue[str | None] = queue.Queue()

    def read() -> None:
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=read, daemon=True).start()
    output, sent, deadline = [], False, time.monotonic() + TIMEOUT_S
    try:
        while True:
            line = lines.get(timeout=max(1.0, deadline - time.monotonic()))
            if line is None:
                break
            output.append(line)
            if stop_with is not None and not sent and FIRST_RESULT.match(line):
                if stop_with == signal.SIGINT:
                    os.killpg(proc.pid, stop_with)
                else:
                    proc.send_signal(stop_with)
                sent = True
        code = proc.wait(timeout=60)
    except (queue.Empty, subprocess.TimeoutExpired):
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail(f"the sweep did not end within {TIMEOUT_S} s:\n{''.join(output)}")
    text = "".join(output)
    assert stop_with is None or sent, f"no run finished, no signal sent:\n{text}"
    return code, text


def final_runs(storage: Path, name: str) -> int:
    table = pl.read_parquet(storage / "parquet" / f"sweep_id={name}" / "*.parquet")
    return table.filter(pl.col("is_final")).select("rho", "seed").unique().height


@pytest.mark.ray
@pytest.mark.slow
def test_a_sweep_that_runs_to_its_end_prints_nothing_crash_like(tmp_path):
    code, out = run_sweep([*TINY, "--storage", str(tmp_path / "store"), "--name", "whole"], tmp_path)
    assert code == 0, out
    assert_nothing_crash_like(out)
    assert "8 runs finished, 0 failed" in out and "Ray: started a local Ray" in out
    assert final_runs(tmp_path / "store", "whole") == 8


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.parametrize("stop_with", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_a_stopped_sweep_says_what_finished_and_how_to_continue_then_continues(tmp_path, stop_with):
    storage = tmp_path / "store"
    argv = [*TINY, "--storage", str(storage), "--name", "stopped"]
    code, out = run_sweep(argv, tmp_path, stop_with=stop_with)
    assert code == 128 + stop_with, out
    assert_nothing_crash_like(out)
    resume = f"python sweeps/critical_rho.py --resume --name stopped --storage {storage}"
    tail = out[out.index("stopping: "):]  # what comes after the signal: a few clear lines
    finished = re.search(r"^(\d+) runs finished, 0 failed", tail, re.MULTILINE)
    assert finished and 2 <= int(finished.group(1)) < 8, tail
    assert re.search(rf"^\d+ trials did not finish \(interrupted\): continue with {re.escape(resume)}$", tail,
                     re.MULTILINE), tail
    # It ends with the summary: what finished, what did not and how to continue, where the results are.
    last = [line for line in tail.splitlines() if line.strip()][-3:]
    assert [line.split(" ", 2)[1:2] for line in last] == [["runs"], ["trials"], ["table:"]], tail

    code, out = run_sweep(["--resume", "--name", "stopped", "--storage", str(storage), "--no-report"], tmp_path)
    assert code == 0, out
    assert_nothing_crash_like(out)
    assert final_runs(storage, "stopped") == 8

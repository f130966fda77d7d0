"""A compact live progress line for sweeps (a Tune callback; replaces Tune's wide status tables).

Why not CLIReporter: Ray 2.60's default output engine ignores a passed reporter unless RAY_AIR_NEW_OUTPUT=0,
and either engine prints a table per update that scrolls a laptop terminal away. Researchers want one line per
finished run (what it was, whether the top layer collapsed) and a heartbeat while runs are long.
"""

from __future__ import annotations

import sys
import time
from typing import Any, Sequence

from ray.tune import Callback

from ouvae.config import format_latent_dims
from sweeps.failures import failure_reason, not_retried_reason


def _fmt_value(key: str, value: Any) -> str:
    if key == "latent_dims" and isinstance(value, (list, tuple)):
        return format_latent_dims(value)
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


class ProgressLine(Callback):
    """One line per finished / failed / retried trial, and a heartbeat every `heartbeat_s` seconds."""

    def __init__(self, show: Sequence[str], total: int | None = None, heartbeat_s: float = 30.0,
                 stream: Any = None):
        self.show, self.total, self.heartbeat_s = tuple(show), total, heartbeat_s
        self._stream = stream
        self._t0: float | None = None
        self._last_print = 0.0
        self.done = self.failed = 0
        self._seeded = False

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_stream"] = None  # streams do not pickle; Tune pickles callbacks into tuner.pkl
        state["_seeded"], state["_t0"] = False, None
        return state

    def _out(self, text: str) -> None:
        stream = self._stream or sys.stdout
        elapsed = time.monotonic() - (self._t0 or time.monotonic())
        print(f"[{int(elapsed // 60):02d}:{int(elapsed % 60):02d}] {text}", file=stream, flush=True)
        self._last_print = time.monotonic()

    def _label(self, trial) -> str:
        cfg = trial.config
        return " ".join(f"{k}={_fmt_value(k, cfg.get(k))}" for k in self.show if k in cfg)

    def _count(self, trials, finished=None) -> str:
        total = self.total or len(trials)
        running = sum(1 for t in trials if t.status == "RUNNING" and t is not finished)
        return f"{self.done + self.failed}/{total} done, {running} running, {self.failed} failed"

    def setup(self, stop=None, num_samples=None, total_num_samples=None, **info) -> None:
        self._t0 = time.monotonic()
        self._last_print = self._t0

    def on_step_begin(self, iteration: int, trials: list, **info) -> None:
        if not self._seeded:  # a resumed sweep starts with trials that finished before the crash
            self._seeded = True
            self.done = sum(1 for t in trials if t.status == "TERMINATED")
            self.failed = sum(1 for t in trials if t.status == "ERROR")
            if self.done or self.failed:
                self._out(f"resumed: {self._count(trials)}")

    def on_step_end(self, iteration: int, trials: list, **info) -> None:
        if self._t0 is None:
            self._t0 = time.monotonic()
        if time.monotonic() - self._last_print >= self.heartbeat_s:
            self._out(self._count(trials))

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        self.done += 1
        r = trial.last_result or {}
        top = r.get("latent_dims", "").split("-")[-1] if r.get("latent_dims") else "?"
        metrics = ""
        if "top_active_units" in r:
            metrics = (f"top AU {r['top_active_units']}/{top}  top KL {r.get('top_kl', float('nan')):.3f}  "
                       f"L_{r.get('iw_k', '?')} {r.get('iw_bound', float('nan')):.2f}")
            if not r.get("is_final", True):
                metrics += f"  (stopped early at epoch {r.get('epoch')})"
        self._out(f"done   {self._label(trial)}: {metrics}   [{self._count(trials, trial)}]")

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        self.failed += 1
        final = " (not retried: a retry would fail alike)" if not_retried_reason(trial.last_result) else ""
        self._out(f"FAILED {self._label(trial)}: {failure_reason(trial)}{final}   [{self._count(trials, trial)}]")

    def on_trial_recover(self, iteration: int, trials: list, trial, **info) -> None:
        self._out(f"retry  {self._label(trial)} from its last checkpoint "
                  f"(failure {trial.num_failures}): {failure_reason(trial)}")

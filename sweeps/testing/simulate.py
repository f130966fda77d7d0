"""Driving the adaptive rho_c policy without Ray, as the Tune searcher drives it: for its tests and benchmarks."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from sweeps.refine import Proposal, RefinePolicy


def simulate(policy: RefinePolicy, outcome: Callable[[Proposal], int | None], *, workers: int = 4,
             rng: np.random.Generator | None = None, max_trials: int = 100_000) -> RefinePolicy:
    """Drive `policy` as the Ray Tune searcher does, without Ray: up to `workers` trials in flight, finishing in
    random order, each recorded with ``outcome(proposal)`` (top-layer active units, or None for a failed trial).
    Raises RuntimeError if the policy neither proposes nor finishes (a deadlock)."""
    rng = rng if rng is not None else np.random.default_rng(0)
    running: list[Proposal] = []
    for _ in range(max_trials):
        while len(running) < workers:
            p = policy.next_proposal()
            if p is None:
                break
            running.append(p)
        if not running:
            if not policy.is_finished():
                raise RuntimeError("the policy neither proposes nor finishes with nothing running (a deadlock)")
            return policy
        p = running.pop(int(rng.integers(len(running))))
        policy.record(p.group, p.rho, p.seed, outcome(p))
    raise RuntimeError(f"the policy did not finish within {max_trials} trials")

"""Where to train next to pin down rho_c: the adaptive proposal policy, pure Python (no Ray).

Why this exists: a uniform rho grid spends most of its runs far from the transition, where every run says
"active" or "collapsed" and adds almost nothing to the estimate. This policy starts from a coarse grid with
every seed, fits the transition (``analysis.transition.fit_transition``) on the runs finished so far, and
proposes new rho values inside the current interval of rho_c, several at a time so workers stay busy, until the
interval is narrower than a target or the trial budget is spent. It is kept free of Ray so every decision can be
unit-tested in milliseconds; ``sweeps/adaptive.py`` wraps it in a Ray Tune ``Searcher``.

Rules (per group = one latent configuration, each with its own state):

1. Coarse: ``coarse_points`` rho values evenly over ``rho_range`` x every seed, all proposed at once.
2. Refine in rounds: a round is one new rho value run with every seed. A round is planned from the fit on the
   runs finished so far whenever fewer than ``min_pending`` of the group's trials are pending (so the next round
   is queued while the last one runs and workers stay busy):
   * fit ok, interval narrower than ``target_width``, and two sampled rho values on each side of rho_c within
     ``max(target_width, 2 min_spacing)`` -> stop proposing (the group finishes when nothing is pending and
     this still holds); the second condition keeps a narrow interval interpolated between coarse points from
     ending the search (see ``_resolved``);
   * fit ok with an interval -> the free rho (on the ``min_spacing`` lattice) nearest the centre of
     [ci_low, ci_high], clipped to ``rho_limits``; an interval reaching beyond the sampled range moves the centre
     there, which widens the sweep;
   * no transition in the sampled range -> widen by one range-width towards the side the data point to, up to
     ``rho_limits``; at the limit the group stops and says so. Units active below rho_c (the usual direction):
     still mostly active at the top -> higher rho, mostly collapsed at the bottom -> lower rho. Units active
     above rho_c: the mirror image (still mostly collapsed at the top -> higher, mostly active at the bottom ->
     lower);
   * otherwise (no usable fit yet, e.g. errored coarse runs, or a fit whose interval is not determined, e.g.
     fewer than 3 seeds) -> bisect the sampled gap where the mean order parameter crosses 1/2 (falling through
     1/2 from active to collapsed, upwards in rho for units active below, downwards for units active above).
     Such a group cannot converge; it ends when its budget is spent or the lattice around the transition is used
     up.
   Direction (``direction``): which side of rho_c the units are active on decides the fit
   (``fit_transition(direction=...)``) and the widening and bisection above. "infer" (the default) decides it
   before every fit from the group's finished runs with the analysis's own rule
   (``analysis.transition.infer_direction``, what ``python -m analysis`` uses), so each group of a sweep gets its
   own; runs that are all active or all collapsed show no direction and are taken as "active below", like the
   analysis does: give ACTIVE_ABOVE ("above") explicitly when the coarse range may miss such a transition
   (e.g. ``smooth_space=prior``, docs/calibration.md).
   Every seed at the same rho keeps the design balanced, like a grid's, which the pooled fit and the seed
   bootstrap need (see ``_round``). No (rho, seed) pair is ever proposed twice (errored pairs included: Tune's
   own retries handle transient failures); when the lattice around the centre is used up, the nearest free
   pairs are taken, and a group with nothing left to try stops.
3. Budget: every proposal counts, errored ones included, so a group whose trials keep failing still ends. A
   round that no longer fits in the budget is not started (it would unbalance the seeds).
   Errored runs never enter the fit. A group with nothing pending always either proposes or finishes, so the
   policy cannot wait forever.

The whole state is JSON (``state_dict`` / ``load_state_dict``) so a crashed sweep resumes with the same decisions.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from ouvae.config import digest_seed, parse_latent_dims
from sweeps.errors import SpaceError
from sweeps.plan import check_seeds, rho_grid
from analysis.transition import (ACTIVE_ABOVE, ACTIVE_BELOW, DIRECTIONS, STATUS_NO_TRANSITION, STATUS_OK,
                                 TransitionFit, fit_transition, infer_direction)

PENDING, DONE, ERROR = "pending", "done", "error"
# The form of state_dict(); a state of another version is refused (load_state_dict).
STATE_VERSION = 2
# RefineSettings.direction: decide each group's direction from its finished runs (else ACTIVE_BELOW / ACTIVE_ABOVE).
INFER = "infer"
DIRECTION_CHOICES = (INFER, *DIRECTIONS)
DIRECTION_ALIASES = {"below": ACTIVE_BELOW, "above": ACTIVE_ABOVE}  # the CLI's spelling (--direction above)


class RefineError(ValueError):
    """Bad settings for the adaptive policy (the message names the setting and the fix)."""


def group_key(overrides: Mapping[str, Any]) -> str:
    """A stable name of a group's fixed overrides (JSON, sorted keys, tuples as lists) for state matching."""
    return json.dumps(jsonable(dict(overrides)), sort_keys=True)


def jsonable(v: Any) -> Any:
    """Tuples as lists, numpy scalars as Python numbers: the form configs take in JSON and in Tune results."""
    if isinstance(v, Mapping):
        return {str(k): jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [jsonable(x) for x in v]
    if isinstance(v, np.generic):
        return v.item()
    return v


def top_dim_of(overrides: Mapping[str, Any]) -> int | None:
    """The top layer's size from a group's ``latent_dims`` (a sequence bottom -> top, or "10-10-10" text)."""
    dims = overrides.get("latent_dims")
    return None if dims is None else parse_latent_dims(dims)[-1]


@dataclass(frozen=True)
class Proposal:
    """One trial to run: group index, rho, seed."""

    group: int
    rho: float
    seed: int


class _Group:
    """One latent configuration: its points (rho index, seed) -> state, and why it stopped (if it did)."""

    def __init__(self, overrides: Mapping[str, Any], top_dim: int) -> None:
        self.overrides = dict(overrides)
        self.key = group_key(overrides)
        self.top_dim = int(top_dim)
        self.points: dict[tuple[int, int], dict[str, Any]] = {}
        self.done_reason: str | None = None
        self.queue: list[tuple[int, int]] = []  # planned, not yet proposed (a round of the refinement)
        self.version = 0  # bumps on every recorded result; keys the fit cache
        self._fit: tuple[int, TransitionFit] | None = None

    def count(self, state: str | None = None) -> int:
        if state is None:
            return len(self.points)
        return sum(1 for p in self.points.values() if p["state"] == state)


@dataclass(frozen=True)
class RefineSettings:
    """The adaptive policy's settings, validated and with their defaults resolved on construction; a saved state
    loads only into a policy with equal settings (``state``).

    rho_range: (low, high) of the coarse grid and of the first fits.
    seeds: the seeds every rho may be run with (all of them on the coarse grid).
    coarse_points: rho values of the coarse grid (>= 3: a fit needs three).
    target_width: stop refining a group once ci_high - ci_low <= this.
    max_trials_per_group: budget per group, errored trials included (default: twice the coarse grid).
    max_trials: budget over all groups (default: no limit beyond the per-group budgets).
    min_spacing: proposed rho values are multiples of this (the finest useful resolution).
    min_pending: a new refinement round is planned when fewer than this many of the group's trials are pending
        (default: max(2, a round's trials), i.e. the next round is queued while the current one runs).
    rho_per_round: rho values per refinement round, each with every seed (default 1). More fill a population:
        with populations of 64 runs and 5 seeds, 12 rho values spread over the current interval train as one
        trial on one GPU, where one rho would leave 59 of its 64 slots empty.
    rho_limits: the sweep may widen up to these (rho must stay in (0, 1]).
    level, n_boot: interval level and seed-bootstrap size of the fits that drive the proposals.
    random_state: seeds the bootstrap, so proposals are reproducible.
    direction: which side of rho_c the top units are active on: "infer" (default: decided before each fit from the
        group's finished runs, ``analysis.transition.infer_direction``), ACTIVE_BELOW or ACTIVE_ABOVE (also spelt
        "below" / "above"); it sets the fit's direction and which way the search widens and bisects.
    """

    rho_range: tuple[float, float] = (0.8, 1.0)
    seeds: tuple[int, ...] = (0, 1, 2, 3)
    coarse_points: int = 4
    target_width: float = 0.01
    max_trials_per_group: int | None = None
    max_trials: int | None = None
    min_spacing: float = 0.001
    min_pending: int | None = None
    rho_limits: tuple[float, float] = (0.0, 1.0)
    level: float = 0.95
    n_boot: int = 200
    random_state: int = 0
    rho_per_round: int = 1
    direction: str = INFER

    def __post_init__(self) -> None:
        def resolve(name: str, value: Any) -> None:  # a frozen dataclass sets its own fields this way
            object.__setattr__(self, name, value)

        try:
            resolve("seeds", tuple(check_seeds(self.seeds)))
        except SpaceError as e:  # the sweeps' one seed rule
            raise RefineError(str(e)) from None
        min_spacing = self.min_spacing
        if not (isinstance(min_spacing, (int, float)) and math.isfinite(min_spacing) and min_spacing > 0):
            raise RefineError(f"min_spacing must be a positive number such as 0.001; got {min_spacing}")
        lim_lo, lim_hi = (float(v) for v in self.rho_limits)
        if not (0.0 <= lim_lo < lim_hi <= 1.0):
            raise RefineError(f"rho_limits {self.rho_limits} must satisfy 0 <= low < high <= 1")
        lo, hi = (float(v) for v in self.rho_range)
        if not (lim_lo <= lo < hi <= lim_hi) or lo <= 0:
            raise RefineError(f"rho_range {self.rho_range} must satisfy 0 < low < high and lie inside rho_limits "
                              f"{self.rho_limits}")
        if self.coarse_points < 3:
            raise RefineError(f"coarse_points={self.coarse_points}: a transition fit needs at least 3 rho values")
        if (hi - lo) / min_spacing < self.coarse_points - 1 - 1e-9:
            raise RefineError(f"min_spacing {min_spacing} is too coarse for {self.coarse_points} points in "
                              f"[{lo}, {hi}]: lower coarse_points or min_spacing")
        if not (isinstance(self.target_width, (int, float)) and self.target_width > 0):
            raise RefineError(f"target_width must be a positive number such as 0.01; got {self.target_width}")
        resolve("min_spacing", float(min_spacing))
        resolve("rho_limits", (lim_lo, lim_hi))
        resolve("rho_range", (lo, hi))
        resolve("coarse_points", int(self.coarse_points))
        resolve("target_width", float(self.target_width))
        given = self.max_trials_per_group
        resolve("max_trials_per_group", int(given) if given else 2 * self.coarse_points * len(self.seeds))
        if self.max_trials_per_group < 1:
            raise RefineError(f"max_trials_per_group must be >= 1; got {given}")
        coarse = self.coarse_points * len(self.seeds)
        if self.max_trials_per_group < coarse:  # a cut coarse grid leaves rho values without every seed: no fit
            raise RefineError(f"a budget of {self.max_trials_per_group} trials per group is smaller than the coarse "
                              f"grid ({self.coarse_points} rho values x {len(self.seeds)} seeds = {coarse}): raise "
                              f"the budget or lower the coarse points or the seeds")
        resolve("max_trials", int(self.max_trials) if self.max_trials else None)
        if int(self.rho_per_round) < 1:
            raise RefineError(f"rho_per_round must be >= 1; got {self.rho_per_round}")
        resolve("rho_per_round", int(self.rho_per_round))
        resolve("min_pending",
                int(self.min_pending) if self.min_pending else max(2, self.rho_per_round * len(self.seeds)))
        resolve("level", float(self.level))
        resolve("n_boot", int(self.n_boot))
        resolve("random_state", int(self.random_state))
        direction = DIRECTION_ALIASES.get(self.direction, self.direction) if isinstance(self.direction, str) else None
        if direction not in DIRECTION_CHOICES:
            raise RefineError(f"direction must be {INFER!r} (decided from the runs), {ACTIVE_BELOW!r} or "
                              f"{ACTIVE_ABOVE!r} (or 'below' / 'above'); got {self.direction!r}")
        resolve("direction", direction)

    def state(self, groups: Sequence[_Group]) -> dict[str, Any]:
        """These settings as JSON, with the groups they drive: what a saved state must match to load."""
        out: dict[str, Any] = {"groups": [g.key for g in groups], "top_dims": [g.top_dim for g in groups]}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        if self.rho_per_round == 1:  # written only when set: states saved before it existed still load
            del out["rho_per_round"]
        if self.direction == INFER:  # the same: states saved before the setting existed were all "infer"'s
            del out["direction"]
        return out


class RefinePolicy:
    """Adaptive rho proposals for one or more groups (latent configurations); see the module docstring.

    groups: one mapping of fixed config overrides per latent configuration, e.g. ``{"latent_dims": (10,) * 4}``.
    top_dims: the top layer size per group; default: the last entry of each group's ``latent_dims``.
    settings: RefineSettings' fields (rho_range=..., seeds=..., target_width=..., ...).
    """

    def __init__(self, groups: Sequence[Mapping[str, Any]], *, top_dims: Sequence[int] | None = None,
                 **settings: Any) -> None:
        groups = list(groups)
        if not groups:
            raise RefineError("groups is empty: give at least one group of overrides, e.g. [{}] for one config")
        self.settings = RefineSettings(**settings)
        if top_dims is None:
            top_dims = [top_dim_of(g) for g in groups]
        top_dims = list(top_dims)
        if len(top_dims) != len(groups):
            raise RefineError(f"top_dims has {len(top_dims)} entries for {len(groups)} groups: give one per group")
        for i, d in enumerate(top_dims):
            if d is None or int(d) < 1:
                raise RefineError(f"group {i} ({group_key(groups[i])}) has no top layer size: put latent_dims in the "
                                  f"group or pass top_dim / top_dims")
        keys = [group_key(g) for g in groups]
        if len(set(keys)) != len(keys):
            raise RefineError("two groups have the same overrides: give each latent configuration once")
        self.groups = [_Group(g, d) for g, d in zip(groups, top_dims)]
        self._rr = 0  # round-robin start over groups

    # ----------------------------------------------------------------------------------------- rho lattice
    def lattice_index(self, rho: float) -> int:
        """The rho value as a whole number of min_spacing steps (how points are keyed: no float equality)."""
        return int(round(rho / self.settings.min_spacing))

    def _rho(self, i: int) -> float:
        return round(i * self.settings.min_spacing, 12)

    def _clamp_idx(self, i: int) -> int:
        i_lo = max(int(math.ceil(self.settings.rho_limits[0] / self.settings.min_spacing - 1e-9)), 1)  # rho > 0
        i_hi = int(math.floor(self.settings.rho_limits[1] / self.settings.min_spacing + 1e-9))
        return min(max(i, i_lo), i_hi)

    def coarse_grid(self) -> list[float]:
        """The coarse rho values: `coarse_points` evenly spread over the lattice's points inside rho_range (the
        one grid builder, sweeps/plan.py: rho_grid, between the range's ends snapped inward to the lattice)."""
        lo, hi = self.settings.rho_range
        i_lo = int(math.ceil(lo / self.settings.min_spacing - 1e-9))
        i_hi = int(math.floor(hi / self.settings.min_spacing + 1e-9))
        lattice = rho_grid(self._rho(i_lo), self._rho(i_hi), self.settings.min_spacing)  # lattice[k] = rho of i_lo + k
        picks = sorted({int(round(v)) for v in np.linspace(i_lo, i_hi, self.settings.coarse_points)})
        return [lattice[i - i_lo] for i in picks]

    # ----------------------------------------------------------------------------------------------- results
    def record(self, group: int, rho: float, seed: int, active_units: int | None) -> None:
        """A proposed trial ended: ``active_units`` = its final top-layer active units, or None if it errored.

        Unknown (rho, seed) pairs are accepted too (e.g. a Tune trial restarted under a new id), so a result is
        never lost. A second result for a pair that already has one is ignored, except that a success replaces
        an error (a retried trial that worked)."""
        g = self.groups[group]
        key = (self.lattice_index(rho), int(seed))
        p = g.points.get(key)
        if p is not None and (p["state"] == DONE or (p["state"] == ERROR and active_units is None)):
            return
        if active_units is None:
            g.points[key] = {"state": ERROR, "active": None}
        else:
            a = int(active_units)
            if not 0 <= a <= g.top_dim:
                raise RefineError(f"active_units {a} outside [0, {g.top_dim}] for group {group}: the result does not "
                                  f"belong to this group's latent configuration")
            g.points[key] = {"state": DONE, "active": a}
        g.version += 1

    def fit(self, group: int) -> TransitionFit:
        """The transition fit on the group's finished runs (cached until the next result)."""
        g = self.groups[group]
        if g._fit is not None and g._fit[0] == g.version:
            return g._fit[1]
        done = [(i, s, p["active"]) for (i, s), p in g.points.items() if p["state"] == DONE]
        rho = [self._rho(i) for i, _, _ in done]
        seed = [s for _, s, _ in done]
        act = [a for _, _, a in done]
        direction = self.settings.direction
        if direction == INFER:  # the analysis's rule, on the runs the fit sees
            direction = infer_direction(rho, np.asarray(act, dtype=np.float64) / g.top_dim)
        rng = np.random.default_rng(digest_seed(f"{self.settings.random_state}|{g.key}|{g.version}"))
        f = fit_transition(rho, seed, act, g.top_dim, level=self.settings.level, n_boot=self.settings.n_boot, rng=rng,
                           direction=direction)
        g._fit = (g.version, f)
        return f

    # --------------------------------------------------------------------------------------------- proposals
    def total_trials(self) -> int:
        return sum(g.count() for g in self.groups)

    def pending(self, group: int | None = None) -> int:
        gs = self.groups if group is None else [self.groups[group]]
        return sum(g.count(PENDING) for g in gs)

    def is_finished(self, group: int | None = None) -> bool:
        """True when the group (or every group) has stopped and has nothing pending.

        A question, not a step: the policy changes no state here. Whether a group is done is decided by its
        planning (``_plan``), which ``next_proposal`` runs for every group before it answers None; a group with
        nothing pending is then either given a proposal or marked done. So ask for a proposal first, as the Tune
        searcher and ``testing/simulate.py`` do: is_finished() after an empty ``next_proposal(s)`` is the verdict.
        """
        if group is None:
            return all(self.is_finished(i) for i in range(len(self.groups)))
        g = self.groups[group]
        return g.done_reason is not None and not g.count(PENDING)

    def next_proposal(self) -> Proposal | None:
        """The next trial to run, registered as pending; None when every group is waiting or finished."""
        n = len(self.groups)
        order = sorted(range(n), key=lambda i: (self.groups[i].count(PENDING), (i - self._rr) % n))
        for gi in order:
            plan = self._plan(gi)
            if plan:
                self._rr = (gi + 1) % n
                return self._take(gi, plan[0])
        return None

    def next_proposals(self, limit: int) -> list[Proposal]:
        """Up to `limit` trials of ONE group (one latent configuration), registered as pending: what a population
        trial trains together -- e.g. a refinement round, one rho with every seed. Empty when every group is
        waiting or finished."""
        first = self.next_proposal()
        if first is None:
            return []
        out = [first]
        while len(out) < limit and (plan := self._plan(first.group)):
            out.append(self._take(first.group, plan[0]))
        return out

    def _take(self, gi: int, point: tuple[int, int]) -> Proposal:
        i, s = point
        self.groups[gi].points[(i, s)] = {"state": PENDING, "active": None}
        return Proposal(gi, self._rho(i), s)

    def _plan(self, gi: int) -> list[tuple[int, int]]:
        """Candidate (rho index, seed) pairs for group ``gi``, best first; empty means wait (or done)."""
        g = self.groups[gi]
        if g.done_reason is not None:
            return []
        pending = g.count(PENDING)
        if g.count() >= self.settings.max_trials_per_group:
            if not pending:
                g.done_reason = f"budget of {self.settings.max_trials_per_group} trials spent"
            return []
        if self.settings.max_trials is not None and self.total_trials() >= self.settings.max_trials:
            if not pending:
                g.done_reason = f"total budget of {self.settings.max_trials} trials (all groups) spent"
            return []
        # 1. the coarse grid, all seeds
        coarse = [(self.lattice_index(r), s) for s in self.settings.seeds for r in self.coarse_grid()]
        todo = [c for c in coarse if c not in g.points]
        if todo:
            return todo
        g.queue = [q for q in g.queue if q not in g.points]
        if g.queue:
            return list(g.queue)
        if pending >= self.settings.min_pending:
            return []
        # 2. refine from the fit on finished runs
        fit = self.fit(gi)
        window, why_stop = self._window(g, fit)
        if window is None:
            if why_stop is not None and not pending:
                g.done_reason = why_stop
            return []
        picks = self._round(g, window)
        if not picks:
            lo_i, hi_i = window
            wider = (self._clamp_idx(lo_i - (hi_i - lo_i) - 1), self._clamp_idx(hi_i + (hi_i - lo_i) + 1))
            picks = self._round(g, wider)
        if not picks:
            if not pending:
                g.done_reason = (f"every (rho, seed) pair at spacing {self.settings.min_spacing:g} around the "
                                 f"transition has been run; the interval cannot narrow further at this resolution")
            return []
        left = self.settings.max_trials_per_group - g.count()
        if self.settings.max_trials is not None:
            left = min(left, self.settings.max_trials - self.total_trials())
        if len(picks) > left and len(picks) > len(self.settings.seeds) and left >= len(self.settings.seeds):
            picks = picks[: left - left % len(self.settings.seeds)]  # fewer rho values, each still with every seed
        if len(picks) > left:
            # a partial round would leave the design unbalanced across seeds for little gain: stop here
            if not pending:
                g.done_reason = (f"budget: {left} trial(s) left, fewer than a round of {len(picks)} "
                                 f"(budget {self.settings.max_trials_per_group} per group)")
            return []
        g.queue = picks
        return list(g.queue)

    def _window(self, g: _Group, fit: TransitionFit) -> tuple[tuple[int, int] | None, str | None]:
        """(rho-index window to place new runs in, None) or (None, reason the group is finished or None=wait)."""
        done = [(self._rho(i), p["active"] / g.top_dim) for (i, _), p in g.points.items() if p["state"] == DONE]
        if fit.status == STATUS_OK and fit.ci_low is not None and fit.ci_high is not None \
                and math.isfinite(fit.ci_low) and math.isfinite(fit.ci_high):
            if fit.ci_high - fit.ci_low <= self.settings.target_width and self._resolved(done, fit.rho_c):
                return None, (f"converged: rho_c {fit.rho_c:.4f}, interval [{fit.ci_low:.4f}, {fit.ci_high:.4f}] "
                              f"(width {fit.ci_high - fit.ci_low:.4f} <= target {self.settings.target_width:g})")
            lo_i = self._clamp_idx(int(math.floor(fit.ci_low / self.settings.min_spacing)))
            hi_i = self._clamp_idx(int(math.ceil(fit.ci_high / self.settings.min_spacing)))
            span_i = self.lattice_index(self.settings.rho_range[1] - self.settings.rho_range[0])
            if hi_i - lo_i <= 2 * span_i:  # an interval wider than twice the range says little: bisect instead
                return (lo_i, hi_i), None
        levels = sorted({r for r, _ in done})
        if not levels:  # every finished run errored: try the whole range again (at new lattice points)
            lo, hi = self.settings.rho_range
            return (self.lattice_index(lo), self.lattice_index(hi)), None
        # mostly active (mean order parameter >= 1/2) at each sampled rho; the rules below are those for units
        # active below rho_c, mirrored (rho -> -rho) for units active above: the same decisions on the same data
        # reflected, so the two directions are searched alike
        on = {r: float(np.mean([m for rr, m in done if rr == r])) >= 0.5 for r in levels}
        above = fit.direction == ACTIVE_ABOVE
        top, bottom = levels[-1], levels[0]
        # the transition lies beyond the sampled range: higher when the top is still on its low-rho side (active
        # below: still active; active above: still collapsed), lower when the bottom is on its high-rho side
        higher = on[top] != above
        lower = on[bottom] == above
        if fit.status == STATUS_NO_TRANSITION or higher or lower:
            span = self.lattice_index(self.settings.rho_range[1] - self.settings.rho_range[0])
            for side in (("lower", "higher") if above else ("higher", "lower")):
                if side == "higher" and higher:
                    hi_lim, top_i = self._clamp_idx(10**9), self.lattice_index(top)
                    if top_i >= hi_lim:
                        state = "collapsed (units active above rho_c)" if above else "active"
                        return None, (f"no transition: the top layer is still mostly {state} at rho = {top:.4f}, "
                                      f"the upper limit of the sweep")
                    return (top_i + 1, min(top_i + span, hi_lim)), None
                if side == "lower" and lower:
                    lo_lim, bottom_i = self._clamp_idx(-(10**9)), self.lattice_index(bottom)
                    if bottom_i <= lo_lim:
                        state = "still mostly active (units active above rho_c)" if above else \
                            "mostly collapsed already"
                        return None, (f"no transition: the top layer is {state} at rho = {bottom:.4f}, the lower "
                                      f"limit of the sweep")
                    return (max(bottom_i - span, lo_lim), bottom_i - 1), None
        # bisection: the sampled gap where the mean order parameter falls through 1/2 from the active side (from
        # below for units active below rho_c, from above for units active above)
        gaps = list(zip(levels, levels[1:]))
        for a, b in (reversed(gaps) if above else gaps):
            active_end, collapsed_end = (b, a) if above else (a, b)
            if on[active_end] and not on[collapsed_end]:
                return (self.lattice_index(a), self.lattice_index(b)), None
        return (self.lattice_index(bottom), self.lattice_index(top)), None

    def _resolved(self, done: list[tuple[float, float]], rho_c: float) -> bool:
        """At least two sampled rho values on each side of rho_c within max(target_width, 2 min_spacing).

        Why: the seed bootstrap measures seed noise, not how well a logistic interpolates between sparse
        points. On real digits (4x10, 4 seeds) the coarse pass plus one round gave rho_c 0.904 [0.901, 0.906],
        narrower than the target, while a 0.005 grid put it at 0.908 [0.898, 0.914]; the order parameter is
        smooth but not logistic there. Requiring local support made the search end at 0.906-0.909 with
        intervals that contain the grid's estimate, at 0.20-0.22 of the grid's trials."""
        reach = max(self.settings.target_width, 2 * self.settings.min_spacing) + 1e-9
        levels = {r for r, _ in done if abs(r - rho_c) <= reach}
        return sum(r <= rho_c for r in levels) >= 2 and sum(r >= rho_c for r in levels) >= 2

    def _round(self, g: _Group, window: tuple[int, int]) -> list[tuple[int, int]]:
        """One round of refinement: the free lattice rho nearest the window's centre, with every seed (with
        ``rho_per_round`` = k > 1: the free lattice rho nearest each of k points spread evenly inside the window).

        Why every seed at one rho: the seed bootstrap and the pooled fit both behave best on a balanced design
        (each seed sampled at the same rho values, as on a grid). Spreading seeds over different rho values made
        the pooled estimate lean towards the seeds that happened to be sampled near the current estimate, which
        in benchmarks cost accuracy and interval coverage. If no lattice point has every seed free (the window
        is exhausted at this spacing), the nearest point with some free seeds gives a partial round.
        """
        lo_i, hi_i = window
        if hi_i < lo_i:
            return []
        k = self.settings.rho_per_round
        full: list[tuple[int, int]] = []
        partial: list[tuple[int, int]] = []
        for j in range(k):
            target = int(round(lo_i + (hi_i - lo_i) * (j + 1) / (k + 1)))  # k = 1: the centre
            for off in _offsets(hi_i - lo_i + 1):
                i = self._clamp_idx(target + off)
                if not lo_i <= i <= hi_i or any(i == f for f, _ in full):
                    continue
                free = [(i, s) for s in self.settings.seeds if (i, s) not in g.points]
                if len(free) == len(self.settings.seeds):
                    full += free
                    break
                if free and not partial:
                    partial = free
        return full or partial

    # ----------------------------------------------------------------------------------------------- reports
    def summary(self) -> list[dict[str, Any]]:
        """One dict per group: overrides, trial counts, why it stopped, and its current fit."""
        out = []
        for gi, g in enumerate(self.groups):
            f = self.fit(gi)
            out.append({"group": gi, "overrides": jsonable(g.overrides), "top_dim": g.top_dim,
                        "trials": g.count(), "done": g.count(DONE), "errored": g.count(ERROR),
                        "pending": g.count(PENDING), "finished": self.is_finished(gi),
                        "reason": g.done_reason, "status": f.status, "direction": f.direction, "rho_c": f.rho_c,
                        "ci_low": f.ci_low, "ci_high": f.ci_high, "message": f.message})
        return out

    # ----------------------------------------------------------------------------------------- save / restore
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue: settings (to check the restored policy matches) and each group's points."""
        return {
            "state_version": STATE_VERSION,
            "settings": self.settings.state(self.groups),
            "rr": self._rr,
            "groups": [{"key": g.key, "top_dim": g.top_dim, "done_reason": g.done_reason, "version": g.version,
                        "points": [[self._rho(i), s, p["state"], p["active"]] for (i, s), p in g.points.items()],
                        "queue": [[self._rho(i), s] for i, s in g.queue]}
                       for g in self.groups],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore ``state_dict()`` output; refuses a state made for other groups or settings."""
        if state.get("state_version") != STATE_VERSION:
            raise RefineError(f"adaptive-search state version {state.get('state_version')} is not "
                              f"{STATE_VERSION}: it was written by another version of sweeps/refine.py")
        mine = self.settings.state(self.groups)
        theirs = state.get("settings", {})
        diff = sorted(k for k in set(mine) | set(theirs) if jsonable(mine.get(k)) != jsonable(theirs.get(k)))
        if diff:
            raise RefineError(f"the saved adaptive-search state was made with other settings ({', '.join(diff)}); "
                              f"resume with the same groups, seeds, range, spacing and budgets")
        self._rr = int(state.get("rr", 0))
        for g, sg in zip(self.groups, state["groups"]):
            g.points = {(self.lattice_index(r), int(s)): {"state": st, "active": a} for r, s, st, a in sg["points"]}
            g.queue = [(self.lattice_index(r), int(s)) for r, s in sg.get("queue", [])]
            g.done_reason = sg["done_reason"]
            g.version = int(sg["version"])
            g._fit = None


def _offsets(limit: int):
    """0, +1, -1, +2, -2, ... up to +-limit: nearest free lattice point first."""
    yield 0
    for d in range(1, limit + 1):
        yield d
        yield -d


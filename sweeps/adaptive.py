"""A Ray Tune searcher that locates the critical rho instead of covering a grid (``critical_rho.py --adaptive``).

Why: nothing in Ray Tune, Optuna, W&B or Hydra searches for a threshold; they optimise a metric. This searcher
wraps the pure proposal policy of ``sweeps/refine.py``: a coarse rho grid with every seed per latent
configuration, then rho values inside the current interval of rho_c, several at a time, until the interval is
narrower than ``target_width`` or the budget is spent. It speaks Ray 2.60's ``Searcher`` protocol (checked in
``ray/tune/search/searcher.py`` and ``search_generator.py``):

* ``suggest(trial_id)`` returns a config dict (the group's overrides + ``rho`` + ``seed``; Tune merges it over the
  ``param_space`` constants), ``None`` to wait for running trials, or ``Searcher.FINISHED``;
* ``on_trial_complete(trial_id, result, error)`` gets the trial's *flattened* last result (``config/rho`` ...);
  errored trials (``error=True``), trials stopped before reporting (``result=None``) and results that are not
  the final evaluation (``is_final`` false) count toward the budget but never enter the fit;
* ``save`` / ``restore`` (JSON) are called by Tune's experiment checkpointing, so ``Tuner.restore`` resumes the
  search where it stopped; a restored trial that comes back under a new id is matched by its config, and a
  restarted errored trial that now succeeds replaces the error. Restore with Tune's default of resuming
  unfinished trials: the searcher waits for the trials it had in flight, and a restore that drops them
  (``resume_unfinished=False``) would leave it waiting for results that never come.

Use it with ``num_samples=-1`` (Tune otherwise stops asking after ``num_samples`` trials, default 1; the searcher
says so when Tune tells it the number)::

    searcher = AdaptiveRhoSearcher([{"latent_dims": [10] * 4}, {"latent_dims": [20] * 4}],
                                   rho_range=(0.8, 1.0), seeds=[0, 1, 2, 3], target_width=0.01)
    tune.Tuner(trainable, param_space=constants,
               tune_config=tune.TuneConfig(search_alg=searcher, num_samples=-1)).fit()
    searcher.summary()   # rho_c, interval and stop reason per latent configuration
"""

from __future__ import annotations

import copy
import json
import logging
import math
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from ray.tune.search import Searcher

from ouvae.atomic import write_atomically

from sweeps.protocol import POPULATION_KEY, run_specs
from sweeps.refine import RefineError, RefinePolicy, RefineSettings, group_key, jsonable, top_dim_of

logger = logging.getLogger(__name__)

_FORMAT = "ouvae-adaptive-rho"


class AdaptiveRhoSearcher(Searcher):
    """Adaptive critical-rho search over one or more latent configurations ("groups").

    ``groups``: one dict of fixed config overrides per latent configuration (default one group, ``[{}]``).
    ``active_key``: the result key holding the top layer's active units. ``top_dim``: the top layer size for
    groups without ``latent_dims`` (else its last entry). ``max_concurrent``: most trials this searcher keeps
    running at once (``None``: as many as Tune will start; ``TuneConfig(max_concurrent_trials=...)`` sets it too).
    ``population``: most runs per trial. Above 1, a trial trains up to that many proposals of one latent
    configuration as one population (sweeps/trainable.py) -- the coarse pass in chunks, each refinement round at
    once, a round filling the population: population // len(seeds) rho values, each with every seed (one rho when
    the population holds no more than the seeds); at 1 every trial is one run.
    The remaining keywords are ``RefineSettings``' fields (sweeps/refine.py: rho_range, seeds, coarse_points,
    target_width, direction, ...) but rho_per_round, which follows from ``population``.
    """

    def __init__(self, groups: Sequence[Mapping[str, Any]] | None = None, *, max_concurrent: int | None = None,
                 active_key: str = "top_active_units", top_dim: int | None = None, population: int = 1,
                 **settings: Any) -> None:
        super().__init__(metric=None, mode=None)
        groups = [dict(g) for g in (groups if groups is not None else [{}])]
        for g in groups:
            clash = {"rho", "seed"} & set(g)
            if clash:
                raise RefineError(f"group {g} sets {sorted(clash)}: the searcher chooses rho and seed; leave them out "
                                  f"of the groups")
        top_dims = None
        if top_dim is not None:
            top_dims = [top_dim_of(g) or int(top_dim) for g in groups]
        if int(population) < 1:
            raise RefineError(f"population must be >= 1 run per trial; got {population}")
        seeds = list(settings.pop("seeds", RefineSettings.seeds))
        self.policy = RefinePolicy(groups, top_dims=top_dims, seeds=seeds,
                                   rho_per_round=max(1, int(population) // max(1, len(seeds))), **settings)
        if max_concurrent is not None and int(max_concurrent) < 1:
            raise RefineError(f"max_concurrent must be >= 1 (or None for no limit); got {max_concurrent}")
        self.max_concurrent = int(max_concurrent) if max_concurrent is not None else None
        self.population = int(population)
        self.active_key = active_key
        self._live: dict[str, list[tuple[int, float, int]]] = {}  # trial id -> its (group, rho, seed) points

    # --------------------------------------------------------------------------------------- Tune protocol
    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec: Any) -> bool:
        """Accept the param_space constants; refuse search domains and a num_samples too small to search."""
        from ray.tune.search.variant_generator import parse_spec_vars

        _, domain_vars, grid_vars = parse_spec_vars(config or {})
        if domain_vars or grid_vars:
            names = sorted("/".join(map(str, path)) for path, _ in list(domain_vars) + list(grid_vars))
            raise ValueError(f"AdaptiveRhoSearcher chooses rho, seed and the group overrides itself; the param_space "
                             f"must hold constants only, but {names} are search spaces: make them constants or groups")
        n = spec.get("num_samples")
        if n is not None and n != -1 and n < sys.maxsize:  # Tune turns num_samples=-1 into sys.maxsize
            coarse = len(self.policy.coarse_grid()) * len(self.policy.settings.seeds) * len(self.policy.groups)
            if n < coarse:
                raise ValueError(f"num_samples={n} stops Tune before the coarse grid ({coarse} trials) is done: pass "
                                 f"TuneConfig(num_samples=-1); the searcher ends the sweep itself")
            logger.warning("num_samples=%s caps the adaptive search; num_samples=-1 lets it run to its own budget", n)
        return True

    def set_max_concurrency(self, max_concurrent: int) -> bool:
        """Called by a ConcurrencyLimiter (TuneConfig(max_concurrent_trials=...)): handle the limit here."""
        self.max_concurrent = int(max_concurrent)
        return True

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        if self.max_concurrent is not None and len(self._live) >= self.max_concurrent:
            return None
        props = self.policy.next_proposals(self.population)
        if not props:
            if not self._live and self.policy.is_finished():
                return Searcher.FINISHED
            return None
        self._live[trial_id] = [(p.group, p.rho, p.seed) for p in props]
        overrides = copy.deepcopy(self.policy.groups[props[0].group].overrides)
        if self.population == 1:
            return {**overrides, "rho": props[0].rho, "seed": props[0].seed}
        return {POPULATION_KEY: {**overrides, "members": [{"rho": p.rho, "seed": p.seed} for p in props]}}

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        points = self._live.pop(trial_id, None)
        if points is None:
            points = self._match(result)
            if not points:
                logger.warning("adaptive search: result of unknown trial %s ignored (no matching rho/seed/group)",
                               trial_id)
                return
            # the same points under an old id (a trial Tune restarted with a new id) are no longer awaited
            keys = {self._key(p) for p in points}
            for t, pts in list(self._live.items()):
                if {self._key(p) for p in pts} & keys:
                    del self._live[t]
        values = [None] * len(points) if error else self._active_units(trial_id, result, len(points))
        for (gi, rho, seed), value in zip(points, values):
            try:
                self.policy.record(gi, rho, seed, value)
            except RefineError as e:  # e.g. more active units than the group's top layer has: never crash the sweep
                logger.error("adaptive search: trial %s: %s; counted as failed", trial_id, e)
                self.policy.record(gi, rho, seed, None)

    def on_trial_result(self, trial_id: str, result: dict) -> None:  # intermediate results are not used
        return None

    # ------------------------------------------------------------------------------------------ helpers
    def _key(self, point: tuple[int, float, int]) -> tuple[int, int, int]:
        return point[0], self.policy.lattice_index(point[1]), point[2]

    def _active_units(self, trial_id: str, result: Mapping[str, Any] | None, n: int) -> list[int | None]:
        """The final active-unit count of each of the trial's `n` runs (None, with a log line, where a run is not
        usable: no result, stopped early, failed, or no count reported)."""
        if not result:
            logger.warning("adaptive search: trial %s ended without a result; counted, not used", trial_id)
            return [None] * n
        rows = {int(r["member"]): r for r in result["members"]} if "members" in result else {0: result}
        return [self._final_count(trial_id, rows.get(i)) for i in range(n)]

    def _final_count(self, trial_id: str, row: Mapping[str, Any] | None) -> int | None:
        if row is None or row.get("failure"):
            logger.warning("adaptive search: a run of trial %s failed; counted, not used", trial_id)
            return None
        if row.get("is_final") is False:
            logger.warning("adaptive search: trial %s stopped before its final evaluation; counted, not used",
                           trial_id)
            return None
        v = row.get(self.active_key)
        if v is None or (isinstance(v, float) and not math.isfinite(v)):
            logger.warning("adaptive search: trial %s reported no %r; counted, not used", trial_id, self.active_key)
            return None
        return int(v)

    def _match(self, result: Mapping[str, Any] | None) -> list[tuple[int, float, int]]:
        """The (group, rho, seed) points of a result's trial, from its config (flattened ``config/...`` keys or a
        nested ``config``)."""
        if not result:
            return []
        cfg = result.get("config")
        if not isinstance(cfg, Mapping):
            cfg = {}
            for key, value in result.items():
                if key.startswith("config/"):  # Tune flattens nested dicts: config/population/members ...
                    *path, leaf = key[len("config/"):].split("/")
                    node = cfg
                    for part in path:
                        node = node.setdefault(part, {})
                    node[leaf] = value
        runs = run_specs(cfg)
        if any("rho" not in r or "seed" not in r for r in runs):
            return []
        for gi, g in enumerate(self.policy.groups):
            if all(jsonable(runs[0].get(k)) == jsonable(v) for k, v in g.overrides.items()):
                return [(gi, float(r["rho"]), int(r["seed"])) for r in runs]
        return []

    def summary(self) -> list[dict[str, Any]]:
        """Per latent configuration: trials, stop reason, rho_c and its interval (see RefinePolicy.summary)."""
        return self.policy.summary()

    # ------------------------------------------------------------------------------------ save / restore
    def get_state(self) -> dict[str, Any]:
        return {"format": _FORMAT, "policy": self.policy.state_dict(),
                "live": {t: [list(p) for p in pts] for t, pts in self._live.items()},
                "max_concurrent": self.max_concurrent, "active_key": self.active_key, "population": self.population}

    def set_state(self, state: Mapping[str, Any]) -> None:
        if state.get("format") != _FORMAT:
            raise RefineError("not an adaptive-rho searcher state (wrong or missing 'format' field)")
        self.policy.load_state_dict(state["policy"])
        self._live = {t: [(int(g), float(r), int(s)) for g, r, s in pts] for t, pts in state.get("live", {}).items()}

    def save(self, checkpoint_path: str) -> None:
        """JSON state, written atomically so a crash never leaves half a file."""
        text = json.dumps(self.get_state())
        write_atomically(checkpoint_path, lambda tmp: tmp.write_text(text))

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path) as f:
            self.set_state(json.load(f))


def make_critical_searcher(groups: Sequence[Mapping[str, Any]], *, rho_range: tuple[float, float],
                           rho_step: float, seeds: Sequence[int], target_width: float, budget: int | None = None,
                           max_concurrent: int | None = None, **kwargs: Any) -> AdaptiveRhoSearcher:
    """The searcher as ``sweeps/critical_rho.py --adaptive`` builds it.

    ``rho_step`` is the finest rho spacing the searcher may use; ``budget`` the most trials over all groups
    (split evenly between groups as each group's budget, unless ``max_trials_per_group`` is given).
    """
    groups = list(groups)
    if budget is not None and "max_trials_per_group" not in kwargs:
        kwargs["max_trials_per_group"] = max(1, math.ceil(int(budget) / max(1, len(groups))))
    return AdaptiveRhoSearcher(groups, rho_range=rho_range, min_spacing=rho_step, seeds=seeds,
                               target_width=target_width, max_trials=budget, max_concurrent=max_concurrent, **kwargs)


__all__ = ["AdaptiveRhoSearcher", "make_critical_searcher", "group_key"]

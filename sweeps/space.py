"""Search-space construction and validation for the sweeps (no Ray import here).

Why a module of its own: every way a sweep can be asked for something impossible (rho outside (0, 1], an empty
grid, a step larger than the range, duplicate grid points, a config value the trainer rejects) must fail with a
plain message *before* Ray starts and before any trial runs. Keeping these pure functions free of Ray also lets
them be tested in milliseconds. The Optuna define-by-run space for the annealing search lives here too, so the
whole "what is searched" question has one home.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from ouvae.config import BETA_SCHEDULES, Config, format_latent_dims, parse_latent_dims

RHO_DECIMALS = 10  # grid values are rounded so 0.8 + 7 * 0.02 prints (and hashes) as 0.94, not 0.9400000000000001


class SpaceError(ValueError):
    """A sweep specification that cannot run. The message names the option and how to fix it."""


# ----- rho grids ----------------------------------------------------------------------------------------------
def check_rho(value: float, what: str = "rho") -> float:
    if not math.isfinite(value) or not 0.0 < value <= 1.0:
        raise SpaceError(f"{what} = {value} is outside (0, 1]: rho is the OU correlation (1 = no smoothing, "
                         f"values near 0 = heavy smoothing); give a value such as 0.9")
    return float(value)


def rho_range(rho_min: float, rho_max: float) -> tuple[float, float]:
    """A validated (low, high) range inside (0, 1]."""
    lo, hi = check_rho(rho_min, "--rho-min"), check_rho(rho_max, "--rho-max")
    if lo > hi:
        raise SpaceError(f"--rho-min {lo} is larger than --rho-max {hi}: swap them")
    return lo, hi


def rho_grid(rho_min: float, rho_max: float, step: float) -> list[float]:
    """Inclusive grid rho_min, rho_min + step, ... <= rho_max (rounded; the end point is kept when it lies on
    the grid). A single point is allowed when rho_min == rho_max."""
    lo, hi = rho_range(rho_min, rho_max)
    if not math.isfinite(step) or step <= 0:
        raise SpaceError(f"--rho-step {step} must be a positive number, e.g. 0.02 (or 0.005 for a fine grid)")
    span = hi - lo
    if span == 0:
        return [lo]
    if step > span + 1e-12:
        raise SpaceError(f"--rho-step {step} is larger than the range [{lo}, {hi}] (width {span:g}): the grid would "
                         f"hold only one point; use a step <= {span:g} or widen the range")
    n = int(math.floor(span / step + 1e-9)) + 1
    values = [round(lo + i * step, RHO_DECIMALS) for i in range(n)]
    if n > 100_000:
        raise SpaceError(f"--rho-step {step} over [{lo}, {hi}] gives {n} grid points; that is surely a typo")
    return sorted(set(min(v, hi) for v in values))


def parse_rho_list(values: Iterable[float | str]) -> list[float]:
    """Explicit rho values (e.g. --rhos 0.9 0.95 1): validated, de-duplicated, sorted."""
    out = sorted({round(check_rho(float(v), "--rhos value"), RHO_DECIMALS) for v in values})
    if not out:
        raise SpaceError("--rhos is empty: give at least one value in (0, 1]")
    return out


# ----- latent configurations and seeds ------------------------------------------------------------------------
def latent_configs(sizes: Sequence[int] | None, layers: Sequence[int] | None, explicit: Sequence[str] | None, *,
                   default_layers: int) -> list[tuple[int, ...]]:
    """Latent configurations to sweep: every (layers x size) combination (`default_layers` when no layers are
    given) plus explicit dims (ouvae.config.parse_latent_dims), no duplicates, in the order given."""
    out: list[tuple[int, ...]] = []
    for s in sizes or ():
        if s < 1:
            raise SpaceError(f"--latent-sizes value {s} must be >= 1 unit per layer")
    for n in layers or ():
        if n < 1:
            raise SpaceError(f"--layers value {n} must be >= 1 stochastic layer")
    if sizes:
        for n in layers or (default_layers,):
            for s in sizes:
                out.append((int(s),) * int(n))
    elif layers:
        raise SpaceError("--layers needs --latent-sizes (units per layer), e.g. --latent-sizes 10 20 --layers 4")
    for text in explicit or ():
        out.append(parse_latent_dims(text))
    unique = list(dict.fromkeys(out))
    return unique


def check_seeds(seeds: Sequence[int]) -> list[int]:
    """The one seed rule of the sweeps (grid and adaptive): at least one, none negative, each once -- a seed given
    twice would train the same run twice and count it as two replicates."""
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise SpaceError("--seeds is empty: give at least one seed (two or more for an interval on rho_c)")
    if any(s < 0 for s in seeds):
        raise SpaceError(f"--seeds must be >= 0, got {seeds}")
    if len(set(seeds)) != len(seeds):
        raise SpaceError(f"--seeds {seeds} contain duplicates: give each seed once")
    return seeds


def seed_list(n_seeds: int | None, seeds: Sequence[int] | None) -> list[int]:
    if seeds:
        return check_seeds(seeds)
    if n_seeds is None or n_seeds < 1:
        raise SpaceError(f"--n-seeds {n_seeds} must be >= 1")
    return list(range(n_seeds))


# ----- the critical-rho grid ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CriticalGrid:
    """rho x latent configuration x reading of T_rho x seed on one base configuration. `fixed` holds trainer
    overrides common to every trial (from --set / --epochs / ...); each trial's config is fixed + latent_dims +
    smooth_space + rho + seed. A configuration (one rho_c) is a latent configuration in one reading."""

    preset: str
    fixed: dict[str, Any]
    latents: list[tuple[int, ...]]
    rhos: list[float]
    seeds: list[int]
    spaces: tuple[str, ...] = ("posterior",)  # smooth_space values (ouvae.config.SMOOTH_SPACES)

    def __post_init__(self) -> None:
        if not self.latents:
            raise SpaceError("no latent configuration to sweep: give --latent-sizes (with --layers) or --latent-dims")
        if not self.rhos:
            raise SpaceError("the rho grid is empty: check --rho-min/--rho-max/--rho-step or --rhos")
        if not self.seeds:
            raise SpaceError("no seeds: give --seeds or --n-seeds")
        if not self.spaces or len(set(self.spaces)) != len(self.spaces):
            raise SpaceError(f"--smooth-spaces {' '.join(self.spaces)}: give each reading once (posterior, prior)")
        clash = sorted({"rho", "seed", "latent_dims", "preset", "smooth_space"} & set(self.fixed))
        if clash:
            raise SpaceError(f"{clash} are swept by this script; set them with --rho-*/--rhos, --seeds, "
                             f"--latent-sizes/--latent-dims, --smooth-spaces and --preset, not as fixed overrides")

    @property
    def n_runs(self) -> int:
        return len(self.latents) * len(self.spaces) * len(self.rhos) * len(self.seeds)

    @property
    def groups(self) -> list[dict[str, Any]]:
        """One dict of overrides per configuration: its latent sizes and its reading of T_rho."""
        return [{"latent_dims": list(dims), "smooth_space": space} for dims in self.latents for space in self.spaces]

    def configs(self) -> Iterable[Config]:
        for group in self.groups:
            for rho in self.rhos:
                for seed in self.seeds:
                    yield self.config_for(group, rho, seed)

    def config_for(self, group: dict[str, Any], rho: float, seed: int) -> Config:
        """The trainer config of one trial (ConfigError names a value the trainer rejects)."""
        return Config.from_preset(self.preset, **self.fixed, **group, rho=rho, seed=seed)

    def validate(self) -> None:
        """Build every corner of the grid once, so an invalid combination fails now, not in trial 500."""
        for group in self.groups:
            for rho in (self.rhos[0], self.rhos[-1]):
                self.config_for(group, rho, self.seeds[0])

    def trial_space(self) -> dict[str, Any]:
        """The trainable's config as plain data; the caller wraps the swept keys in tune.grid_search."""
        return {"preset": self.preset, **self.fixed}

    def describe(self) -> str:
        rhos = self.rhos
        grid = (f"{len(rhos)} rho values {rhos[0]:g}..{rhos[-1]:g}" if len(rhos) > 4
                else "rho " + ", ".join(f"{r:g}" for r in rhos))
        lat = ", ".join(format_latent_dims(d) for d in self.latents)
        readings = f" x {len(self.spaces)} readings ({', '.join(self.spaces)})" if len(self.spaces) > 1 else ""
        return (f"{self.n_runs} runs = {len(self.latents)} latent configs ({lat}){readings} x {grid} x "
                f"{len(self.seeds)} seeds ({', '.join(map(str, self.seeds))})")


# ----- the KL-annealing search space (Optuna define-by-run) ----------------------------------------------------
@dataclass(frozen=True)
class AnnealSpace:
    """Which schedule parameters the Optuna search may vary, and over what ranges.

    Conditional by construction: a trial first picks the schedule, then only the parameters that schedule
    reads (constant reads beta_max; linear/cosine add beta_min and anneal_epochs; sigmoid adds the steepness;
    cyclical adds n_cycles and cycle_ratio). Parameters a schedule does not read are not sampled, so Optuna's
    TPE does not learn from irrelevant dimensions.
    """

    schedules: tuple[str, ...] = BETA_SCHEDULES
    beta_max: tuple[float, float] = (0.5, 1.0)
    beta_min: tuple[float, float] = (0.0, 0.5)
    anneal_epochs: tuple[float, float] | None = None  # None = (1, the training budget in epochs)
    n_cycles: tuple[int, int] = (1, 8)
    cycle_ratio: tuple[float, float] = (0.2, 1.0)
    sigmoid_steepness: tuple[float, float] = (2.0, 20.0)
    free_bits: tuple[float, float] | None = (0.0, 0.5)  # None = do not search free bits
    rho: tuple[float, float] | None = None  # None = keep the config's rho fixed

    def __post_init__(self) -> None:
        if not self.schedules:
            raise SpaceError("--schedules is empty: pick one or more of " + ", ".join(BETA_SCHEDULES))
        unknown = [s for s in self.schedules if s not in BETA_SCHEDULES]
        if unknown:
            raise SpaceError(f"unknown schedule(s) {unknown}: choose from {list(BETA_SCHEDULES)}")
        for name in ("beta_max", "beta_min", "anneal_epochs", "n_cycles", "cycle_ratio", "sigmoid_steepness",
                     "free_bits", "rho"):
            rng = getattr(self, name)
            if rng is None:
                continue
            lo, hi = rng
            if not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi:
                raise SpaceError(f"--{name.replace('_', '-')} range {lo}..{hi} is empty or reversed: give LOW HIGH "
                                 f"with LOW <= HIGH")
        if self.beta_min[0] < 0 or self.beta_max[0] < 0:
            raise SpaceError("beta ranges must be >= 0")
        if self.beta_min[1] > self.beta_max[0] + 1e-12 and any(s != "constant" for s in self.schedules):
            # Keep beta_min <= beta_max for every sample (Config requires it) without rejection sampling.
            raise SpaceError(f"--beta-min range {self.beta_min} overlaps --beta-max range {self.beta_max}: need the "
                             f"upper end of beta_min <= the lower end of beta_max")
        if self.cycle_ratio[0] <= 0 or self.cycle_ratio[1] > 1:
            raise SpaceError(f"--cycle-ratio range {self.cycle_ratio} must lie inside (0, 1]")
        if self.n_cycles[0] < 1:
            raise SpaceError(f"--n-cycles range {self.n_cycles} must start at >= 1")
        if self.sigmoid_steepness[0] <= 0:
            raise SpaceError(f"--sigmoid-steepness range {self.sigmoid_steepness} must be > 0")
        if self.anneal_epochs is not None and self.anneal_epochs[0] <= 0:
            raise SpaceError(f"--anneal-epochs range {self.anneal_epochs} must be > 0")
        if self.free_bits is not None and self.free_bits[0] < 0:
            raise SpaceError(f"--free-bits range {self.free_bits} must be >= 0 nats")
        if self.rho is not None:
            check_rho(self.rho[0], "--rho-range low")
            check_rho(self.rho[1], "--rho-range high")

    def with_budget(self, epochs: float) -> "AnnealSpace":
        """Fill the default warm-up range from the training budget (1 .. the whole run)."""
        if self.anneal_epochs is not None:
            return self
        import dataclasses

        return dataclasses.replace(self, anneal_epochs=(min(1.0, float(epochs)), max(1.0, float(epochs))))


def suggest_schedule(trial: Any, space: AnnealSpace) -> dict[str, Any]:
    """Define-by-run body: sample one schedule and only its parameters; returns the Config overrides.

    `trial` is an optuna.Trial (or Ray's suggest-captor around one). Kept free of optuna imports so the space
    can be unit-tested with any object that has suggest_* methods.
    """
    out: dict[str, Any] = {}
    schedule = trial.suggest_categorical("beta_schedule", list(space.schedules))
    out["beta_schedule"] = schedule
    out["beta_max"] = _suggest_float(trial, "beta_max", space.beta_max)
    if schedule != "constant":
        out["beta_min"] = _suggest_float(trial, "beta_min", space.beta_min)
        assert space.anneal_epochs is not None, "call AnnealSpace.with_budget(epochs) first"
        out["anneal_epochs"] = _suggest_float(trial, "anneal_epochs", space.anneal_epochs)
    if schedule == "sigmoid":
        out["sigmoid_steepness"] = _suggest_float(trial, "sigmoid_steepness", space.sigmoid_steepness, log=True)
    if schedule == "cyclical":
        lo, hi = space.n_cycles
        out["n_cycles"] = trial.suggest_int("n_cycles", lo, hi) if lo < hi else lo
        out["cycle_ratio"] = _suggest_float(trial, "cycle_ratio", space.cycle_ratio)
    if space.free_bits is not None:
        out["free_bits"] = _suggest_float(trial, "free_bits", space.free_bits)
    if space.rho is not None:
        out["rho"] = _suggest_float(trial, "rho", space.rho)
    return out


def _suggest_float(trial: Any, name: str, rng: tuple[float, float], log: bool = False) -> float:
    lo, hi = float(rng[0]), float(rng[1])
    if lo == hi:
        return lo  # a fixed value: nothing to search
    return trial.suggest_float(name, lo, hi, log=log and lo > 0)


class DefineByRun:
    """Picklable define-by-run callable for OptunaSearch (Ray pickles the searcher into its experiment state,
    so a closure would break --resume). Returns only the sampled overrides: Tune merges them into the
    constant part of the param space."""

    def __init__(self, space: AnnealSpace):
        self.space = space

    def __call__(self, trial: Any) -> dict[str, Any]:
        return suggest_schedule(trial, self.space)

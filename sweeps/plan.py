"""Everything a sweep decides before Ray starts: the rho grid, latent sizes and seeds, how runs group into populations, and the checks that must pass first.

Search-space construction and validation for the sweeps (no Ray import here).

Why a module of its own: every way a sweep can be asked for something impossible (rho outside (0, 1], an empty
grid, a step larger than the range, duplicate grid points, a config value the trainer rejects) must fail with a
plain message *before* Ray starts and before any trial runs. Keeping these pure functions free of Ray also lets
them be tested in milliseconds. The Optuna define-by-run space for the annealing search lives here too, so the
whole "what is searched" question has one home.

What a sweep checks before Ray starts, so that a mistake costs seconds and one line, not a cluster's time.

Measured before these checks: ``critical_rho.py --dataset mnist`` on a machine without the MNIST files and without
internet started Ray and all 42 trials, each of which tried to download, failed and was retried; after 6.5
minutes there were 98 tracebacks and no result. Now the driver resolves the data itself
(``ouvae.data.load_config_dataset`` locates the files, downloads them once into the cache and verifies them, with
the sweep's validation size and binarization), writes a probe file where the sweep
will write, and connects to the cluster address with a short timeout; each failure is a SweepError naming the
problem and the fix (sweeps/cli.py prints it and exits with code 2), and nothing has been written.

On a multi-node cluster the workers still load the data themselves (into each node's cache): the driver's check
proves the files exist and are intact, which is what a typo or an offline machine gets wrong.
"""

from __future__ import annotations

import argparse
import math
import socket
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from ouvae.config import Config, ConfigError, format_latent_dims, parse_latent_dims
from ouvae.data import DataError, load_config_dataset
from ouvae.population import population_key
from ouvae.smoothing import is_identity
from sweeps.errors import SpaceError, SweepError
from sweeps.storage import SweepPaths, check_storage, is_remote


RHO_DECIMALS = 10  # grid values are rounded so 0.8 + 7 * 0.02 prints (and hashes) as 0.94, not 0.9400000000000001


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


# ----- populations ------------------------------------------------------------------------------------------
def group_into_populations(configs: Sequence[Config], size: int) -> list[list[Config]]:
    """Split runs into populations of at most `size` that can train together: equal population_key, and
    smoothed runs apart from unsmoothed ones. Groups keep the order of first appearance; each group is cut into
    nearly equal chunks (e.g. 10 runs with size 8 -> 5 + 5, not 8 + 2), so population trials take similar time."""
    if size < 1:
        raise ConfigError(f"population size must be >= 1, got {size}")
    groups: dict[tuple[str, bool], list[Config]] = {}
    for cfg in configs:
        # runs that do not smooth take the plain VAE's path (about a third of a smoothed step): group them apart
        groups.setdefault((population_key(cfg), is_identity(cfg.rho, cfg.smooth_samples)), []).append(cfg)
    out: list[list[Config]] = []
    for runs in groups.values():
        n_chunks = math.ceil(len(runs) / size)
        bounds = [round(i * len(runs) / n_chunks) for i in range(n_chunks + 1)]
        out += [runs[a:b] for a, b in zip(bounds, bounds[1:])]
    return out


# ----- checks before Ray starts -------------------------------------------------------------------------------------
ADDRESS_TIMEOUT_S = 5.0


def is_ray_client(address: str | None) -> bool:
    """A ray:// address: Ray Client, which runs the sweep's driver on the head node."""
    return bool(address) and address.startswith("ray://")


def check_start(args: argparse.Namespace, paths: SweepPaths, cfg: Config) -> None:
    """Every check a sweep passes before Ray starts, cheapest mistakes first: the data, the storage (a resumed
    sweep's was checked when it was opened), a separate --results-dir, the cluster address.

    Through Ray Client (``ray://``) this machine is not part of the cluster: the sweep's driver runs on the head and
    writes the table and Tune's state from there, so the storage must be an object store every machine reaches
    alike, and the data are the cluster's business (the first round of trials checks them; sweeps/progress.py)."""
    if is_ray_client(args.address):
        for option, uri in (("--storage", paths.storage), ("--results-dir", paths.results_root)):
            if not is_remote(uri):
                raise SweepError(f"--address {args.address}: Ray Client runs the sweep's driver on the head node, "
                                 f"which would write to its own {uri}; give {option} an object store "
                                 f"(s3://bucket/prefix), or run this script on a node of the cluster with "
                                 f"--address host:6379")
    else:
        check_data(cfg)
    if not args.resume:
        check_storage(paths.storage)
    if args.results_dir:
        check_storage(paths.results_root, "--results-dir")
    if args.address:
        check_address(args.address)


def check_data(cfg: Config) -> None:
    """The dataset every trial of `cfg`'s sweep loads is present and intact (downloaded once if missing), with the
    sweep's validation size and binarization."""
    try:
        load_config_dataset(cfg)
    except DataError as e:
        raise SweepError(f"dataset {cfg.dataset}: {e}") from None


def check_address(address: str, timeout_s: float = ADDRESS_TIMEOUT_S) -> None:
    """Fail fast on an unreachable --address (ray.init would otherwise retry for minutes)."""
    if address in ("auto", "local"):
        return
    target = address.split("://", 1)[1] if "://" in address else address
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise SweepError(f"--address {address!r}: expected host:port (e.g. 10.0.0.5:6379), ray://host:10001 or auto")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            pass
    except OSError as e:
        raise SweepError(f"--address {address}: cannot reach a Ray head at {host}:{port} ({e.strerror or e}); start "
                         f"one with `ray start --head` or check the address/firewall") from None

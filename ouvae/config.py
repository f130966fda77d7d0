"""Validated experiment configuration with named presets built from each other.

Why a frozen dataclass: a sweep trial, a checkpoint and a results row must all describe the same run, so the
config is one immutable value that validates itself on construction, serialises to JSON, hashes stably and
refuses unknown keys (a typo in a sweep must fail before any trial starts, not train the default silently).
Presets follow openai/vdvae's `hps.py`: each preset is a parent plus overrides.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import typing
from dataclasses import dataclass, fields
from typing import Any, Iterable, Mapping, Sequence

# The one table of which Config fields each beta schedule reads (ouvae/objectives.py computes beta from them): the
# parameters recorded on every row (Config.beta_params) and the ones the annealing search samples per schedule
# (sweeps/anneal.py), in the order it samples them.
SCHEDULE_PARAMETERS: dict[str, tuple[str, ...]] = {
    "constant": ("beta_max",),
    "linear": ("beta_max", "beta_min", "anneal_epochs"),
    "cosine": ("beta_max", "beta_min", "anneal_epochs"),
    "sigmoid": ("beta_max", "beta_min", "anneal_epochs", "sigmoid_steepness"),
    "cyclical": ("beta_max", "beta_min", "anneal_epochs", "n_cycles", "cycle_ratio"),
}
BETA_SCHEDULES = tuple(SCHEDULE_PARAMETERS)
OBJECTIVES = ("elbo", "iwae")
SMOOTH_CHOICES = ("both", "encoder", "decoder")
# The Gaussian whose coordinates the generative maps' copies are read in (docs/readings.md).
SMOOTH_SPACES = ("posterior", "prior")
ARCHITECTURES = ("mlp", "conv")
ACTIVATIONS = ("tanh", "relu", "elu", "gelu", "softplus")
DEVICES = ("auto", "cpu", "cuda")
BINARIZATIONS = ("dynamic", "static", "none")


# The generator settings of dataset="gaussian" (the fields that data set reads) and the Gaussian likelihood's variance.
GAUSSIAN_DATA_FIELDS = ("gaussian_dim", "gaussian_eigenvalue", "gaussian_ratio", "gaussian_samples", "gaussian_seed")


# ----- stable digests: the one way the project names a value by a hash (config_hash, population keys, seeds) -----
def stable_digest(value: Any, algorithm: str = "sha1") -> bytes:
    """The digest of `value`, equal on every machine, process and Python version (unlike hash()).

    Text is hashed as its UTF-8 bytes; anything else as its JSON with sorted keys (values JSON cannot write as
    their str()). Why the algorithm is a parameter: the hashes already stored in results tables and Parquet
    files (config_hash, population keys) are SHA-1 and the random streams already drawn (member seeds,
    the adaptive search's bootstrap) come from SHA-256; changing either would change recorded results.
    """
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return hashlib.new(algorithm, text.encode()).digest()


def short_hash(value: Any, length: int = 12) -> str:
    """The first `length` hex digits of stable_digest(value) (SHA-1): config_hash, population_key."""
    return stable_digest(value).hex()[:length]


def digest_seed(value: Any) -> int:
    """A 64-bit unsigned integer from stable_digest(value, "sha256") (its first 8 bytes, little-endian): a seed
    for a random stream that must be the same wherever and whenever it is drawn."""
    return int.from_bytes(stable_digest(value, "sha256")[:8], "little")


class ConfigError(ValueError):
    """A configuration value or key is invalid; the message names the field and the allowed values."""


# ----- what each setting is: declared once, on the field (its metadata); everything else derives from it -----
# SHARED: one value for a whole population (what changes tensor shapes, the data, the budget, the optimiser);
#         part of the configuration (config_hash).
# MEMBER: may differ between the members of one population (rho, the beta schedule, free bits); part of the
#         configuration.
# IDENTITY: names a run within its configuration (seed, preset): may differ per member, not in config_hash.
# RUNTIME: how and where a run is computed, not what (device, threads, compilation, recomputation, the data
#          folder): shared by a population, not in config_hash, not recorded.
# Each field also names the results column that records it (analysis/schema.py): its own name by default, None
# when the table does not record it, or the derived column(s) it feeds (latent_dims -> latent_dims and n_layers).
SHARED, MEMBER, IDENTITY, RUNTIME = "shared", "member", "identity", "runtime"
_OWN_NAME = "<own name>"


def _setting(role: str, default: Any, help: str, column: str | tuple[str, ...] | None,
             choices: Sequence[str] | None) -> Any:
    return dataclasses.field(default=default, metadata={"role": role, "column": column, "help": help,
                                                        "choices": tuple(choices) if choices else None})


def _shared(default: Any, help: str, column: str | tuple[str, ...] | None = _OWN_NAME,
            choices: Sequence[str] | None = None) -> Any:
    return _setting(SHARED, default, help, column, choices)


def _member(default: Any, help: str, column: str | tuple[str, ...] | None = _OWN_NAME,
            choices: Sequence[str] | None = None) -> Any:
    return _setting(MEMBER, default, help, column, choices)


def _identity(default: Any, help: str) -> Any:
    return _setting(IDENTITY, default, help, _OWN_NAME, None)


def _runtime(default: Any, help: str, choices: Sequence[str] | None = None) -> Any:
    return _setting(RUNTIME, default, help, None, choices)


@dataclass(frozen=True)
class Config:
    """Everything that defines one training run. Latent sizes are listed bottom (next to x) to top.

    Each field's metadata holds its role, its results column, its `help` (what it means, in which units; shown
    by `--help`, FIELD_HELP) and, for a field with a fixed set of text values, its `choices`."""

    preset: str = _identity("base", "the preset this configuration was built from (a name of PRESETS)")
    # data
    dataset: str = _shared("digits", "the data set: a registered one (digits, mnist, fashion_mnist, static_mnist, "
                                      "omniglot, cifar10, gaussian) or idx / npy for your own files "
                                      "(docs/datasets.md)")
    data_dir: str | None = _runtime(None, "the folder data sets are found in or downloaded to (None = the default "
                                          "cache, docs/datasets.md)")
    n_train: int | None = _shared(None, "cap on training images (None = the whole training split)", column=None)
    # Your own data (dataset idx or npy; registered sets keep the paper's split and binarization):
    validation_size: float | None = _shared(
        None, "your own data: held out of the end of the training images as validation, a fraction < 1 or a count "
              "(None = 1/6)", column=None)
    binarization: str = _shared("auto", "how pixels become binary: dynamic (resampled every epoch), static (once), "
                                        "none (real values); auto = idx: dynamic, npy: inferred from the arrays",
                                choices=("auto", *BINARIZATIONS))
    # The generated Gaussian data set (dataset="gaussian"): gaussian_samples vectors per split from N(0, Sigma) in
    # gaussian_dim dimensions, Sigma's eigenvalues gaussian_eigenvalue * gaussian_ratio^i (ratio 1: isotropic).
    gaussian_dim: int = _shared(4, "dataset gaussian: dimension of the data vectors")
    gaussian_eigenvalue: float = _shared(1.0, "dataset gaussian: the largest eigenvalue of the data covariance")
    gaussian_ratio: float = _shared(1.0, "dataset gaussian: ratio of successive covariance eigenvalues, in (0, 1] "
                                         "(1 = isotropic)")
    gaussian_samples: int = _shared(1000, "dataset gaussian: vectors per split")
    gaussian_seed: int = _shared(0, "dataset gaussian: seed of the generated vectors")
    # model
    architecture: str = _shared("mlp", "the maps' network type", choices=ARCHITECTURES)
    latent_dims: tuple[int, ...] = _shared((40, 40, 40, 40), "latent units per stochastic layer, bottom (next to x) "
                                                             "to top: 10-10-10-10 or 4x10",
                                           column=("latent_dims", "n_layers"))
    hidden_units: int = _shared(200, "width of each deterministic layer (channels for conv)")
    hidden_layers: int = _shared(2, "deterministic layers per map (0 = linear maps)")
    activation: str = _shared("tanh", "nonlinearity of the deterministic layers", choices=ACTIVATIONS)
    likelihood_variance: float = _shared(1.0, "fixed variance sigma^2 of the Gaussian likelihood (real-valued data)")
    # OU smoothing
    rho: float = _member(1.0, "the OU smoothing parameter of training, in (0, 1] (1 = no smoothing)")
    smooth_samples: int = _shared(5, "K: correlated copies per smoothed map")
    smooth: str = _shared("both", "which maps are smoothed", choices=SMOOTH_CHOICES)
    # posterior: the smoothed objective is no bound, so reported bounds are of the plain HVAE with these weights;
    # prior: the bounds of the smoothed model itself are reported
    smooth_space: str = _shared("posterior", "the coordinates the generative maps' copies are drawn in "
                                             "(docs/readings.md): posterior (the appendix's transition; its "
                                             "objective is no bound) or prior (a valid latent-variable model)",
                                choices=SMOOTH_SPACES)
    rho_eval: float | None = _member(None, "rho at evaluation, in (0, 1] (None = the training rho)")
    smooth_recompute: bool = _runtime(False, "recompute smoothed maps in the backward pass: less memory, about one "
                                             "extra forward pass")
    # objective
    objective: str = _shared("elbo", "the training objective", choices=OBJECTIVES)
    iw_samples: int = _shared(1, "k of the IWAE objective (objective iwae)")
    beta_schedule: str = _member("constant", "the KL weight's schedule (the fields each reads: "
                                             "SCHEDULE_PARAMETERS, docs/method.md)", choices=BETA_SCHEDULES)
    beta_min: float = _member(0.0, "beta at the start of a warm-up (or of each cycle)", column="beta_params")
    beta_max: float = _member(1.0, "beta after the warm-up; the constant schedule's beta", column="beta_params")
    anneal_epochs: float = _member(10.0, "warm-up length in epochs (cycle length for cyclical)",
                                   column="beta_params")
    n_cycles: int = _member(4, "cyclical: cycles before beta stays at beta_max", column="beta_params")
    cycle_ratio: float = _member(0.5, "cyclical: fraction of each cycle spent increasing beta, in (0, 1]",
                                 column="beta_params")
    sigmoid_steepness: float = _member(10.0, "sigmoid: slope of the logistic warm-up", column="beta_params")
    free_bits: float = _member(0.0, "nats per layer below which a layer's KL is not penalised (0 = off)")
    # optimisation
    lr: float = _shared(1e-3, "Adam's learning rate")
    # 0: a constant lr. d > 0: a member's k-th update uses lr / (1 + k/d) (Robbins-Monro). It depends on the member's
    # own step count only, so a run continued from its checkpoint takes exactly the steps of a run trained in one go
    # (the ladder needs that), and the stationary SGD noise around the optimum dies out, which a constant lr never
    # lets happen: a collapsed unit then keeps a KL floor that blurs rho_c (docs/calibration.md, "The learning rate").
    lr_decay_steps: int = _shared(0, "d: the k-th update uses lr / (1 + k/d)^a, steps (0 = a constant lr; "
                                     "docs/calibration.md)")
    # a: the decay's power, in (0, 1] (Robbins-Monro: the steps' sum diverges, so the optimum stays reachable; for
    # a > 1/2 the sum of their squares converges, so the noise dies out). 1 is the schedule before this field
    # existed and stays the default until a measurement says otherwise (issue 24). Hashed only when set
    # (HASHED_WHEN_SET): configurations at the default keep the hashes they were recorded with.
    lr_decay_power: float = _shared(1.0, "a: the power of the lr decay, the k-th update uses lr / (1 + k/d)^a, in "
                                         "(0, 1] (1 = 1/k; needs lr_decay_steps > 0)")
    batch_size: int = _shared(100, "training images per step")
    epochs: int = _shared(30, "the training budget in epochs", column=None)
    steps: int | None = _shared(None, "the training budget in optimizer steps instead of epochs (None = epochs)",
                                column=None)
    grad_clip: float | None = _shared(None, "clip each run's gradient to this norm (None = no clipping)", column=None)
    # evaluation
    eval_every: int = _shared(1, "epochs between evaluations", column=None)
    eval_iw_k: int = _shared(100, "k of the importance-weighted bound L_k at evaluation", column=None)
    eval_split: str = _shared("validation", "the split evaluations use", column="split",
                              choices=("validation", "test"))
    eval_max_examples: int | None = _shared(None, "cap on evaluation images (None = the whole split)", column=None)
    grad_var_draws: int = _shared(0, "noise draws for the first encoder layer's gradient variance (0 = off)",
                                  column=None)
    # checkpoints (written by whoever runs the trainer, e.g. the sweep trainable): after this many steps or minutes
    # of training, whichever comes first, and with the final evaluation; both None = with every evaluation on a
    # CPU, every 10 minutes on a GPU (where a population's checkpoint can be gigabytes)
    checkpoint_every_steps: int | None = _runtime(None, "checkpoint after this many training steps (None: with "
                                                        "every evaluation on a CPU, every 10 minutes on a GPU)")
    checkpoint_every_minutes: float | None = _runtime(None, "checkpoint after this many minutes of training, or "
                                                            "the steps, whichever comes first")
    # runtime
    seed: int = _identity(0, "the run's seed (initialisation, data order, noise)")
    device: str = _runtime("auto", "where to train (auto = CUDA when torch sees a GPU)", choices=DEVICES)
    num_threads: int | None = _runtime(None, "torch intra-op threads of the process that trains (None = torch's)")
    compile_step: bool = _runtime(False, "torch.compile the whole training step (CUDA: with CUDA graphs)")
    # CUDA: TF32 matrix products change the numbers, so it is part of the configuration and recorded on every row
    tf32: bool = _shared(False, "CUDA: TF32 matrix products (faster on Ampere+, about 1e-3 relative error)")
    failure_check_steps: int = _runtime(100, "steps between reads of the members' skip counters (each read waits "
                                             "for the device)")
    max_skipped_steps: int = _member(50, "consecutive non-finite steps before a run fails as stalled", column=None)

    def __post_init__(self) -> None:
        # Accept lists (JSON) and text ("4x10") for the tuple field, then validate everything.
        dims = self.latent_dims
        object.__setattr__(self, "latent_dims",
                           parse_latent_dims(dims) if isinstance(dims, str) else tuple(int(d) for d in dims))
        _validate(self)

    # ----- construction -------------------------------------------------------------------------
    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> "Config":
        """The named preset with `overrides` applied; unknown presets and keys raise ConfigError."""
        if name not in PRESETS:
            raise ConfigError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
        return PRESETS[name].replace(**overrides)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Config":
        check_keys(data)
        return cls(**dict(data))

    def replace(self, **overrides: Any) -> "Config":
        check_keys(overrides)
        return dataclasses.replace(self, **overrides)

    # ----- views --------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["latent_dims"] = list(self.latent_dims)
        return d

    def config_hash(self) -> str:
        """Stable hash of the configuration (the SHARED and MEMBER settings): equal hash = replicates of one
        configuration, runs that differ only in their seed (and preset name, device, threads ...). Fields of
        HASHED_WHEN_SET are left out at their default."""
        return short_hash(hashed({k: v for k, v in self.to_dict().items() if ROLES[k] in (SHARED, MEMBER)}))

    @property
    def n_layers(self) -> int:
        return len(self.latent_dims)

    @property
    def top_dim(self) -> int:
        return self.latent_dims[-1]

    @property
    def effective_rho_eval(self) -> float:
        return self.rho if self.rho_eval is None else self.rho_eval

    @property
    def bound_smooths_generative(self) -> bool:
        """Whether the model that reported bounds are of has smoothed generative maps: only in the prior reading.
        In the posterior reading the smoothed objective bounds no model, so bounds are taken with the generative
        maps unsmoothed: the plain hierarchical VAE with the trained weights (the smoothed encoder, which may
        depend on x, stays the proposal). ouvae/metrics.py evaluates by this; ouvae/records.py names the model."""
        return self.smooth_space == "prior"

    @property
    def beta_params(self) -> dict[str, float]:
        """The parameters the chosen schedule actually reads (SCHEDULE_PARAMETERS; recorded on every result row)."""
        return {k: getattr(self, k) for k in SCHEDULE_PARAMETERS[self.beta_schedule]}


FIELDS: dict[str, dataclasses.Field] = {f.name: f for f in fields(Config)}
# Fields added after hashes of configurations were recorded (results tables, population keys): a field here is left
# out of config_hash and population_key while it holds its default, so a configuration that does not use it keeps
# the hash it had before the field existed (tests/test_config.py pins those hashes).
HASHED_WHEN_SET: tuple[str, ...] = ("lr_decay_power",)


def hashed(settings: Mapping[str, Any]) -> dict[str, Any]:
    """``settings`` (field -> value) as they are hashed: HASHED_WHEN_SET fields at their default left out."""
    return {k: v for k, v in settings.items() if not (k in HASHED_WHEN_SET and v == FIELDS[k].default)}
ROLES: dict[str, str] = {name: f.metadata["role"] for name, f in FIELDS.items()}


def settings_with(*roles: str) -> tuple[str, ...]:
    """The Config fields of these roles, in declaration order."""
    return tuple(name for name, role in ROLES.items() if role in roles)


def recorded_columns(*roles: str) -> tuple[str, ...]:
    """The results columns that record the Config fields of these roles (analysis/schema.py), in field order."""
    out: dict[str, None] = {}
    for f in fields(Config):
        column = f.metadata["column"]
        if f.metadata["role"] in roles and column is not None:
            out.update(dict.fromkeys((f.name,) if column == _OWN_NAME else (column,) if isinstance(column, str)
                                     else column))
    return tuple(out)


def own_name_columns() -> tuple[str, ...]:
    """The fields the results table records verbatim, under their own name."""
    return tuple(f.name for f in fields(Config) if f.metadata["column"] == _OWN_NAME)


def check_keys(keys: Iterable[str]) -> None:
    """Refuse names that are not Config fields, suggesting the closest field for each."""
    known = {f.name for f in fields(Config)}
    unknown = sorted(set(keys) - known)
    if unknown:
        hints = [f"did you mean {near!r} for {k!r}?" for k in unknown if (near := closest(k, known))]
        raise ConfigError(f"unknown config key(s) {unknown}. {'; '.join(hints)}".strip())


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _validate(c: Config) -> None:
    _check(len(c.latent_dims) >= 1, "latent_dims is empty: give at least one stochastic layer, e.g. (40, 40, 40, 40)")
    _check(all(d >= 1 for d in c.latent_dims), f"latent_dims must be positive integers, got {c.latent_dims}")
    _check(0.0 < c.rho <= 1.0, f"rho must lie in (0, 1] (1 = no smoothing), got {c.rho}")
    _check(c.rho_eval is None or 0.0 < c.rho_eval <= 1.0, f"rho_eval must lie in (0, 1] or be None, got {c.rho_eval}")
    _check(c.smooth_samples >= 1, f"smooth_samples (K) must be >= 1, got {c.smooth_samples}")
    _check(c.smooth in SMOOTH_CHOICES, f"smooth must be one of {SMOOTH_CHOICES}, got {c.smooth!r}")
    _check(c.smooth_space in SMOOTH_SPACES, f"smooth_space must be one of {SMOOTH_SPACES}, got {c.smooth_space!r}")
    _check(c.architecture in ARCHITECTURES, f"architecture must be one of {ARCHITECTURES}, got {c.architecture!r}")
    _check(c.activation in ACTIVATIONS, f"activation must be one of {ACTIVATIONS}, got {c.activation!r}")
    _check(c.hidden_units >= 1, f"hidden_units must be >= 1, got {c.hidden_units}")
    _check(c.hidden_layers >= 0, f"hidden_layers must be >= 0 (0 = linear maps), got {c.hidden_layers}")
    _check(c.likelihood_variance > 0 and math.isfinite(c.likelihood_variance),
           f"likelihood_variance (sigma^2 of the Gaussian likelihood) must be a finite number > 0, got "
           f"{c.likelihood_variance}")
    _check(c.dataset != "gaussian" or c.architecture == "mlp",
           f"dataset 'gaussian' holds vectors, not images: use architecture='mlp', not {c.architecture!r}")
    _check(c.gaussian_dim >= 1, f"gaussian_dim (dimension of the Gaussian data) must be >= 1, got {c.gaussian_dim}")
    _check(c.gaussian_eigenvalue > 0 and math.isfinite(c.gaussian_eigenvalue),
           f"gaussian_eigenvalue (largest data variance) must be a finite number > 0, got {c.gaussian_eigenvalue}")
    _check(0 < c.gaussian_ratio <= 1, f"gaussian_ratio (ratio of successive eigenvalues) must lie in (0, 1], got "
                                      f"{c.gaussian_ratio}")
    _check(c.gaussian_samples > c.gaussian_dim,
           f"gaussian_samples must exceed gaussian_dim ({c.gaussian_dim}) so every split has a full-rank covariance, "
           f"got {c.gaussian_samples}")
    _check(c.gaussian_seed >= 0, f"gaussian_seed must be >= 0, got {c.gaussian_seed}")
    _check(c.objective in OBJECTIVES, f"objective must be one of {OBJECTIVES}, got {c.objective!r}")
    _check(c.iw_samples >= 1, f"iw_samples must be >= 1, got {c.iw_samples}")
    _check(c.objective == "iwae" or c.iw_samples == 1,
           f"iw_samples={c.iw_samples} needs objective='iwae' (the ELBO uses one sample)")
    _check(c.beta_schedule in BETA_SCHEDULES, f"beta_schedule must be one of {BETA_SCHEDULES}, got {c.beta_schedule!r}")
    _check(0.0 <= c.beta_min <= c.beta_max, f"need 0 <= beta_min <= beta_max, got {c.beta_min}, {c.beta_max}")
    _check(c.anneal_epochs > 0, f"anneal_epochs must be > 0, got {c.anneal_epochs}")
    _check(c.n_cycles >= 1, f"n_cycles must be >= 1, got {c.n_cycles}")
    _check(0.0 < c.cycle_ratio <= 1.0, f"cycle_ratio must lie in (0, 1], got {c.cycle_ratio}")
    _check(c.sigmoid_steepness > 0, f"sigmoid_steepness must be > 0, got {c.sigmoid_steepness}")
    _check(c.free_bits >= 0.0, f"free_bits must be >= 0 nats, got {c.free_bits}")
    _check(c.lr > 0, f"lr must be > 0, got {c.lr}")
    _check(c.lr_decay_steps >= 0, f"lr_decay_steps must be >= 0 (0 = a constant lr), got {c.lr_decay_steps}")
    _check(0.0 < c.lr_decay_power <= 1.0, f"lr_decay_power (a of lr / (1 + k/d)^a) must lie in (0, 1], got "
                                          f"{c.lr_decay_power}")
    _check(c.lr_decay_power == 1.0 or c.lr_decay_steps > 0,
           f"lr_decay_power={c.lr_decay_power} needs lr_decay_steps > 0 (at 0 the lr is constant)")
    _check(c.batch_size >= 1, f"batch_size must be >= 1, got {c.batch_size}")
    _check(c.epochs >= 1 or c.steps is not None, f"epochs must be >= 1, got {c.epochs}")
    _check(c.steps is None or c.steps >= 1, f"steps must be >= 1 or None, got {c.steps}")
    _check(c.grad_clip is None or c.grad_clip > 0, f"grad_clip must be > 0 or None, got {c.grad_clip}")
    _check(c.eval_every >= 1, f"eval_every must be >= 1 epoch, got {c.eval_every}")
    _check(c.eval_iw_k >= 2, f"eval_iw_k must be >= 2 (active units above the first layer need two posterior "
           f"samples per example to tell their spread from Monte Carlo noise), got {c.eval_iw_k}")
    _check(c.eval_split in ("validation", "test"), f"eval_split must be 'validation' or 'test', got {c.eval_split!r}")
    _check(c.eval_max_examples is None or c.eval_max_examples >= 2,
           f"eval_max_examples must be >= 2 or None, got {c.eval_max_examples}")
    _check(c.n_train is None or c.n_train >= 1, f"n_train must be >= 1 or None, got {c.n_train}")
    _check(c.validation_size is None or 0 < c.validation_size < 1
           or (c.validation_size >= 1 and float(c.validation_size).is_integer()),
           f"validation_size must be a fraction in (0, 1) or a whole count >= 1 of training images, got "
           f"{c.validation_size}")
    _check(c.binarization in ("auto", *BINARIZATIONS),
           f"binarization must be one of {('auto', *BINARIZATIONS)}, got {c.binarization!r}")
    _check(c.grad_var_draws >= 0, f"grad_var_draws must be >= 0, got {c.grad_var_draws}")
    _check(c.device in DEVICES, f"device must be one of {DEVICES}, got {c.device!r}")
    _check(c.num_threads is None or c.num_threads >= 1, f"num_threads must be >= 1 or None, got {c.num_threads}")
    _check(c.checkpoint_every_steps is None or c.checkpoint_every_steps >= 1,
           f"checkpoint_every_steps must be >= 1 or None, got {c.checkpoint_every_steps}")
    _check(c.checkpoint_every_minutes is None or c.checkpoint_every_minutes > 0,
           f"checkpoint_every_minutes must be > 0 or None, got {c.checkpoint_every_minutes}")
    _check(c.failure_check_steps >= 1, f"failure_check_steps must be >= 1, got {c.failure_check_steps}")
    _check(c.max_skipped_steps >= 1, f"max_skipped_steps must be >= 1, got {c.max_skipped_steps}")


def _derive(parent: Config, name: str, **overrides: Any) -> Config:
    return parent.replace(preset=name, **overrides)


_BASE = Config()
PRESETS: dict[str, Config] = {}
# The paper presets evaluate L_100 every 5 epochs on the first 2,000 validation images: on the whole split every
# epoch, evaluation took ~75% of a trial's time (benchmarks/eval_cost.py, BENCHMARKS.md "Evaluation cost"); for
# the full split pass --set eval_max_examples=none.
_PAPER_EVAL = dict(eval_every=5, eval_max_examples=2000)
# Appendix Tables 6 and 8: 4 stochastic layers of 40 units, each map two deterministic layers of 200 units.
PRESETS["paper-mlp-4x40"] = _derive(_BASE, "paper-mlp-4x40", dataset="mnist", latent_dims=(40, 40, 40, 40),
                                    **_PAPER_EVAL)
# Appendix Table 7: one stochastic layer of 64 units.
PRESETS["paper-mlp-1x64"] = _derive(PRESETS["paper-mlp-4x40"], "paper-mlp-1x64", latent_dims=(64,))
# Appendix Table 5: convolutional L=2 model on static MNIST (L=4: override latent_dims).
PRESETS["paper-conv"] = _derive(_BASE, "paper-conv", dataset="static_mnist", architecture="conv",
                                latent_dims=(32, 32), hidden_units=64, activation="elu", **_PAPER_EVAL)
# Appendix Table 10: 4-layer conv model on CIFAR-10, batch 64 for memory.
PRESETS["paper-conv-cifar"] = _derive(PRESETS["paper-conv"], "paper-conv-cifar", dataset="cifar10",
                                      latent_dims=(64, 64, 64, 64), batch_size=64)
# Fast offline demo on scikit-learn's digits: 4 x 10 latents, 60 epochs, smoothed at 0.8
# (where the top layer stays active; rho = 1 collapses it).
PRESETS["demo"] = _derive(_BASE, "demo", dataset="digits", latent_dims=(10, 10, 10, 10), epochs=60, rho=0.8,
                          eval_every=10, eval_iw_k=50, num_threads=1)
# The trainer budget of the no-argument critical-rho sweep (sweeps/critical_rho.py, ~7 min on 2 cores): the demo
# model on 797 training images for 30 epochs (~4.5 s per run at rho < 1 in a population), L_25 at epochs 15 and 30
# (two budgets for the analysis's convergence check; an L_50 evaluation would cost as much as ~5 training epochs).
PRESETS["sweep-demo"] = _derive(PRESETS["demo"], "sweep-demo", n_train=797, epochs=30, eval_every=15, eval_iw_k=25)


# ----- parsing: the one place that turns text into config values ------------------------------------
def closest(word: str, choices: Iterable[str]) -> str | None:
    """The choice closest to a misspelt `word` (difflib), or None: the one suggestion helper of the project."""
    import difflib

    match = difflib.get_close_matches(str(word), sorted(choices), n=1)
    return match[0] if match else None


def format_latent_dims(dims: Sequence[int]) -> str:
    """(10, 10, 20) -> "10-10-20": the text form used in the results table and on the command line."""
    return "-".join(str(int(d)) for d in dims)


def parse_latent_dims(text: str | Sequence[int]) -> tuple[int, ...]:
    """Latent sizes bottom to top from "10-10-10-10", "10,10,10,10", "4x10", or a sequence of ints."""
    if not isinstance(text, str):
        dims = tuple(int(d) for d in text)
    else:
        raw = text.strip().lower()
        try:
            if "x" in raw:
                count, width = raw.split("x", 1)
                dims = (int(width),) * int(count)
            else:
                dims = tuple(int(p) for p in raw.replace(",", "-").split("-") if p.strip())
        except ValueError:
            raise ConfigError(f"cannot read latent dims {text!r}: write them bottom to top as 10-10-10-10 or as "
                              f"4x10") from None
    if not dims or any(d < 1 for d in dims):
        raise ConfigError(f"latent dims {text!r} must be one or more positive integers, e.g. 4x10")
    return dims


_FIELD_TYPES: dict[str, Any] = typing.get_type_hints(Config)
_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


def _value_type(name: str) -> tuple[type, bool]:
    """(base type, whether None is allowed) of a Config field, from its real type hint."""
    hint = _FIELD_TYPES[name]
    args = typing.get_args(hint)
    if type(None) in args:
        return next(a for a in args if a is not type(None)), True
    return hint, False


def parse_field(name: str, raw: str) -> Any:
    """The typed value of Config field `name` written as text (command line, --set, environment)."""
    check_keys([name])
    kind, optional = _value_type(name)
    text = raw.strip()
    if optional and text.lower() in ("none", "null"):
        return None
    if (typing.get_origin(kind) or kind) is tuple:
        return parse_latent_dims(text)
    try:
        if kind is bool:
            if text.lower() not in _TRUE + _FALSE:
                raise ValueError
            return text.lower() in _TRUE
        if kind in (int, float):
            return kind(text)
    except ValueError:
        label = getattr(kind, "__name__", str(kind)) + (" or none" if optional else "")
        raise ConfigError(f"{name}: cannot read {raw!r} as {label}") from None
    return text


def parse_assignment(text: str) -> tuple[str, Any]:
    """("key", typed value) from "key=value" (dashes in the key allowed), e.g. for `--set eval_iw_k=100`."""
    if "=" not in text:
        raise ConfigError(f"{text!r}: write KEY=VALUE, e.g. eval_iw_k=100")
    key, raw = (part.strip() for part in text.split("=", 1))
    key = key.replace("-", "_")
    return key, parse_field(key, raw)


# ----- command line -------------------------------------------------------------------------------
def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """Expose every Config field as `--field-name VALUE` (underscores or dashes) with no default, so only the
    fields a user names override the preset."""
    group = parser.add_argument_group("config overrides (any Config field)")
    group.add_argument("--set", dest="cfg__set", action="append", default=[], metavar="KEY=VALUE",
                       help="any Config field as KEY=VALUE, repeatable (as in the sweeps): --set smooth_space=prior")
    for f in fields(Config):
        if f.name == "preset":
            continue
        flags = [f"--{f.name.replace('_', '-')}"]
        if "_" in f.name:
            flags.append(f"--{f.name}")
        group.add_argument(*flags, dest=f"cfg_{f.name}", default=None, metavar=f.name.upper(),
                           help=field_help(f.name))


def field_values(name: str) -> str:
    """The values Config field `name` takes, in words: its type or its choices, and whether none is allowed."""
    choices = FIELDS[name].metadata["choices"]
    kind, optional = _value_type(name)
    label = (f"one of {', '.join(choices)}" if choices else "dims" if typing.get_origin(kind) is tuple
             else kind.__name__)
    return label + (" or none" if optional else "")


def field_help(name: str) -> str:
    """What Config field `name` means and the values it takes: the help of its command-line option."""
    return f"{FIELDS[name].metadata['help']} ({field_values(name)}; default from the preset)"


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """Parse the string overrides collected by add_config_arguments into typed values (--set first, so that a
    field's own option wins where both name it)."""
    out = dict(parse_assignment(text) for text in getattr(args, "cfg__set", []) or [])
    out.update({f.name: parse_field(f.name, raw) for f in fields(Config)
                if (raw := getattr(args, f"cfg_{f.name}", None)) is not None})
    return out

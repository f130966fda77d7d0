"""The results table: one tidy Parquet schema shared by the sweep writer and the analysis reader.

Why it lives here: `analysis` is the consumer that must keep working on a laptop without Ray or torch, so the
contract sits in a module that imports only pyarrow and ``ouvae.config`` (no torch), where each setting's role and
column are declared. `sweeps` imports it to write; nothing here imports Ray.
docs/results-schema.md is generated from this module (`python -m analysis.schema > docs/results-schema.md`, or
`make docs`); a test fails when it is out of date.

One row per run per evaluation, the same columns whatever the search space (absent values are null). Layout on
disk (hive-partitioned): ``<root>/sweep_id=<id>/<tune trial id>.parquet``; each file holds every evaluation row of
one Tune trial (a run alone, or a population of runs) and is rewritten atomically at each evaluation, so a row
exists exactly once per (run_id, step) whatever crashes or resumes happen (docs/operations.md).

Per-layer values are list columns ordered **bottom to top** (index 0 is z_1, the layer next to x; the last
element is the top layer, the one whose collapse defines rho_c). The top layer is also given as scalar
columns (``top_kl``, ``top_active_units``) because almost every query wants exactly that.

A run's final evaluation has ``is_final = true``; a run that never has one was stopped early (ASHA),
interrupted, or failed -- a member of a population that diverged has a last row whose ``failure`` says why. A
member of a population trial has the run id ``<Tune trial id>-m<member>`` (stable across retries and
``--resume``) and ``population_id`` = the Tune trial; ``time_per_epoch_s`` and ``wall_time_s`` are then the
population's (its members trained together); a run alone has ``population_id`` null and ``member`` 0.

Read it with Polars, no Ray or torch needed::

    import polars as pl
    df = pl.scan_parquet("results/parquet/**/*.parquet", hive_partitioning=True).collect()
    final = df.filter(pl.col("is_final"))          # one row per finished run
"""

from __future__ import annotations

import textwrap

import pyarrow as pa

from ouvae.config import MEMBER, SHARED, recorded_columns

SCHEMA_VERSION = 6
# Versions this code reads, and what each changed. A file of an older version has the newer columns null.
READABLE_VERSIONS = (1, 2, 3, 4, 5, 6)
VERSION_HISTORY = {
    1: "the first table",
    2: "added population_id, member, population_size, likelihood and failure",
    3: "every likelihood a valid bound of a named model (smooth_space, bound_model, smoothed_elbo, "
       "smoothed_kl_total): v1/v2 rows are read as the posterior reading, and where their elbo/iw_bound came from "
       "smoothed generative maps (not a bound) those values are moved to smoothed_elbo/smoothed_kl_total "
       "(analysis.io.upgrade_rows); trial_id renamed run_id (it names a run; population_id names the Tune trial)",
    4: "added lr_decay_steps (older rows: 0, they were trained at a constant lr)",
    5: "added lr_decay_power (older rows: 1, the only decay there was)",
    6: "active units without Monte Carlo noise (ouvae.metrics.active_units): older rows counted the noise of the "
       "sampled posterior means as spread, so their active units above the first layer are too many, the more so "
       "the smaller eval_iw_k (a trained 4x20 digits model's top layer: 20 of 20 at k = 5, 12-16 at k = 25, "
       "5-11 at any k now)",
}
# The first version whose active units leave out Monte Carlo noise (history above): older multi-layer rows are flagged.
NOISE_FREE_ACTIVE_UNITS = 6
# Columns renamed since an older version: old name -> today's. Older files are read with the old column under the new
# name (analysis.io), so a v1/v2 table's trial_id is its run_id.
RENAMED = {"trial_id": "run_id"}

# (name, type, meaning). Order here is the column order on disk.
COLUMNS: list[tuple[str, pa.DataType, str]] = [
    # identity
    ("schema_version", pa.int32(), "version of this schema"),
    ("ouvae_version", pa.string(), "package version that produced the row"),
    ("sweep_id", pa.string(), "sweep name (also the hive partition)"),
    ("run_id", pa.string(), "one training run: the Ray Tune trial id, '<trial id>-m<member>' for a member of a "
                              "population trial, or the run name outside Tune"),
    ("population_id", pa.string(), "the Tune trial that trained this run inside a population (null: a run alone)"),
    ("member", pa.int64(), "index of the run inside its population (0 for a run alone)"),
    ("population_size", pa.int64(), "members trained together in one batched model (1 for a run alone)"),
    ("config_hash", pa.string(), "hash of the full trainer config minus the seed: equal hash = same configuration"),
    ("preset", pa.string(), "named config preset the trial started from"),
    # data
    ("dataset", pa.string(), "dataset registry name, e.g. digits, mnist, static_mnist"),
    ("split", pa.string(), "which split the metrics are computed on: validation or test"),
    ("binarization", pa.string(), "dynamic, static or none"),
    ("likelihood", pa.string(), "observation model: bernoulli, discretized_logistic or gaussian"),
    ("likelihood_variance", pa.float64(), "fixed variance sigma^2 of the gaussian likelihood (read by that likelihood only)"),
    ("gaussian_dim", pa.int64(), "generated gaussian data set: dimension (read by dataset gaussian only)"),
    ("gaussian_eigenvalue", pa.float64(), "generated gaussian data set: largest covariance eigenvalue"),
    ("gaussian_ratio", pa.float64(), "generated gaussian data set: ratio of successive eigenvalues (1 = isotropic)"),
    ("gaussian_samples", pa.int64(), "generated gaussian data set: vectors per split"),
    ("gaussian_seed", pa.int64(), "generated gaussian data set: generator seed"),
    # model / method hyperparameters
    ("architecture", pa.string(), "mlp or conv"),
    ("n_layers", pa.int64(), "number of stochastic layers L"),
    ("latent_dims", pa.string(), "latent sizes bottom to top joined by '-', e.g. 40-40-40-40"),
    ("hidden_units", pa.int64(), "width of each deterministic layer (channels for conv)"),
    ("hidden_layers", pa.int64(), "deterministic layers per map"),
    ("activation", pa.string(), "activation of the deterministic layers"),
    ("rho", pa.float64(), "OU smoothing parameter used in training (1 = plain VAE)"),
    ("rho_eval", pa.float64(), "rho used at evaluation"),
    ("smooth_samples", pa.int64(), "K, the number of correlated copies per smoothed map"),
    ("smooth", pa.string(), "which maps are smoothed: both, encoder, decoder"),
    ("smooth_space", pa.string(), "coordinates of the generative maps' copies: posterior (the decoder sees mu_q and "
                                  "sigma_q: the smoothed objective is no bound) or prior (a valid latent-variable model)"),
    ("objective", pa.string(), "elbo or iwae"),
    ("iw_samples", pa.int64(), "k of the IWAE training objective (1 for elbo)"),
    ("beta_schedule", pa.string(), "KL-annealing schedule: constant, linear, cosine, sigmoid, cyclical"),
    ("beta_params", pa.string(), "JSON of the schedule's parameters"),
    ("free_bits", pa.float64(), "free-bits floor in nats per layer (0 = off)"),
    ("lr", pa.float64(), "learning rate"),
    ("lr_decay_steps", pa.int64(), "0: constant lr; d > 0: the k-th update used lr / (1 + k/d)^a"),
    ("lr_decay_power", pa.float64(), "a of the lr decay lr / (1 + k/d)^a (1 = 1/k; read only where lr_decay_steps > 0)"),
    ("batch_size", pa.int64(), "training batch size"),
    ("seed", pa.int64(), "random seed"),
    ("tf32", pa.bool_(), "TF32 matrix products asked for (they apply on CUDA only; they change the numbers)"),
    # progress
    ("epoch", pa.int64(), "epochs completed at this evaluation"),
    ("step", pa.int64(), "optimizer steps completed at this evaluation"),
    ("is_final", pa.bool_(), "true on the trial's last evaluation (end of its budget)"),
    ("wall_time_s", pa.float64(), "seconds of training wall time so far"),
    ("time_per_epoch_s", pa.float64(), "mean seconds per training epoch so far"),
    ("peak_memory_bytes", pa.int64(), "peak memory: CUDA max allocated, or process max RSS on CPU"),
    ("skipped_steps", pa.int64(), "optimizer steps skipped by the NaN/inf guard so far"),
    ("failure", pa.string(), "why the run stopped training (e.g. diverged), on its last row; null for a healthy run"),
    ("hostname", pa.string(), "machine that computed this evaluation (e.g. to trace a faulty node on a cluster)"),
    # metrics (on `split`, at `rho_eval`)
    ("bound_model", pa.string(), "the model elbo, iw_bound, recon and the KLs are of: hvae (the plain hierarchical "
                                 "VAE with the trained weights, generative maps unsmoothed, the trained encoder as "
                                 "proposal) or smoothed-prior (the prior-reading smoothed generative model)"),
    ("elbo", pa.float64(), "ELBO in nats per example (beta = 1, no free bits): a bound on log p(x) of bound_model"),
    ("iw_bound", pa.float64(), "importance-weighted bound L_k on log p(x) of bound_model, nats per example"),
    ("iw_k", pa.int64(), "k of iw_bound (100 for validation, 5000 for test in the paper)"),
    ("recon", pa.float64(), "expected negative log-likelihood E_q[-log p(x|z_1)]"),
    ("kl_total", pa.float64(), "sum of the per-layer KLs under bound_model"),
    ("top_kl", pa.float64(), "KL of the top layer's q against N(0, I) (nats per example; depends on q alone)"),
    ("top_active_units", pa.int64(), "active units of the top layer (Burda et al. 2016, threshold 0.01; q alone)"),
    ("layer_kl", pa.list_(pa.float64()), "per-layer KL under bound_model, bottom to top (the top one: q alone)"),
    ("layer_active_units", pa.list_(pa.int64()), "per-layer active units, bottom to top (q alone)"),
    ("smoothed_elbo", pa.float64(), "the training objective at rho_eval (beta = 1, no free bits, maps smoothed as in "
                                    "training): NOT a likelihood in the posterior reading; equals elbo where it is"),
    ("smoothed_kl_total", pa.float64(), "total KL inside smoothed_elbo; negative = information leaks past the "
                                        "latents (the smoothed objective is then no bound)"),
    ("grad_var", pa.float64(), "gradient variance of the first encoder layer (null when not measured)"),
]

SCHEMA: pa.Schema = pa.schema([pa.field(name, typ) for name, typ, _ in COLUMNS])
# Columns that must be present for the critical-rho analysis to mean anything.
REQUIRED_FOR_ANALYSIS = ("sweep_id", "run_id", "dataset", "latent_dims", "n_layers", "rho", "seed", "step",
                         "is_final", "top_kl", "top_active_units")
# Columns that together name one "configuration": the recorded settings of the roles config_hash hashes
# (ouvae/config.py), but rho, which is swept; the evaluation rho is a key of its own and the split too (critical.py).
CONFIG_KEYS = tuple(c for c in recorded_columns(SHARED, MEMBER) if c not in ("rho", "rho_eval", "split"))


def conform(table: pa.Table) -> pa.Table:
    """Return `table` with exactly SCHEMA's columns, in order, missing ones as nulls.

    Why: conditional search spaces give trials different keys; every file must still share one schema so a
    scan over the folder never fails on a schema mismatch.
    """
    unknown = set(table.column_names) - set(SCHEMA.names)
    if unknown:
        raise ValueError(f"columns not in the results schema v{SCHEMA_VERSION}: {sorted(unknown)}")
    arrays = []
    for field in SCHEMA:
        if field.name in table.column_names:
            arrays.append(table.column(field.name).cast(field.type))
        else:
            arrays.append(pa.nulls(table.num_rows, type=field.type))
    return pa.Table.from_arrays(arrays, schema=SCHEMA)


def markdown() -> str:
    """docs/results-schema.md: this module's docstring and every column, so the document cannot drift."""
    lines = ["# The results table (generated from `analysis/schema.py`: do not edit)", "",
             f"Schema version {SCHEMA_VERSION}; the analysis reads versions {', '.join(map(str, READABLE_VERSIONS))}.",
             ""]
    for paragraph in (__doc__ or "").strip().split("\n\n")[1:]:
        if paragraph.startswith("    "):  # an indented code block
            lines += ["```python", textwrap.dedent(paragraph), "```", ""]
        else:
            lines += [paragraph.replace("``", "`").removesuffix(":"), ""]
    lines += ["| column | type | meaning |", "|---|---|---|"]
    lines += [f"| `{name}` | {typ} | {meaning} |" for name, typ, meaning in COLUMNS]
    lines += ["", "| version | change |", "|---|---|"]
    lines += [f"| {v} | {change} |" for v, change in VERSION_HISTORY.items()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(markdown(), end="")

"""Critical rho per configuration: which runs, what a configuration and a family is, one fit per configuration.

Why here and not in transition.py: transition.py is the statistics of one configuration (pure numpy: fit,
interval, bracket, change point). This module is the bookkeeping around it: which rows are the end of training,
what a "configuration" is (analysis.schema.CONFIG_KEYS plus the split and the evaluation rho), which
configurations form a family (differing only in the latent sizes, or only in the dataset), and one fit per
configuration. Comparisons between configurations are ``analysis/compare.py``; rho_c against the training budget
is ``analysis/budget.py``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import polars as pl
from threadpoolctl import threadpool_limits

from analysis.io import FILE_COL, NUMERIC_METRICS, AnalysisError, Results
from analysis.schema import CONFIG_KEYS, NOISE_FREE_ACTIVE_UNITS
from analysis.onset import OnsetFit, fit_kl_onset
from analysis.transition import ACTIVE_ABOVE, ACTIVE_BELOW, TransitionFit, fit_transition, infer_direction
from ouvae.config import IDENTITY, recorded_columns

# A configuration = CONFIG_KEYS + the split the metrics come from + the rho used at evaluation as a label ("train"
# when it equals the training rho), so a diagnostic rho_eval = 1 run is never pooled with ordinary ones.
RHO_EVAL_LABEL = "rho_eval_label"
GROUP_KEYS: tuple[str, ...] = (*CONFIG_KEYS, "split", RHO_EVAL_LABEL)
# A family = configurations that differ only in their latent sizes: the unit of the across-width comparison.
FAMILY_KEYS: tuple[str, ...] = tuple(k for k in GROUP_KEYS if k != "latent_dims")
# Keys compared across (analysis/compare.py, compare_across): a "<key> family" = configurations that differ only in
# that key -- the datasets, and the two readings of T_rho (smooth_space). Columns <key>_family_id / _label.
ACROSS_TITLES: dict[str, str] = {"dataset": "datasets", "smooth_space": "readings of T_ρ (smooth_space)"}
ACROSS_KEYS: tuple[str, ...] = tuple(ACROSS_TITLES)
# Recorded settings outside CONFIG_KEYS other than the seed (the IDENTITY role, ouvae/config.py): they should not
# vary inside one configuration; if they do, the report says so.
OTHER_SETTINGS = tuple(c for c in recorded_columns(IDENTITY) if c != "seed")
RUN_COLUMNS = ("schema_version", "sweep_id", "run_id", "config_hash", "rho", "rho_eval", "seed", "step", "epoch",
               "is_final", "top_active_units", "layer_kl", "layer_active_units", "iw_k", "failure", "bound_model",
               "smoothed_elbo", "smoothed_kl_total", *NUMERIC_METRICS, FILE_COL)
FIT_FIELDS = ("rho_c", "ci_low", "ci_high", "width", "bracket_low", "bracket_high", "changepoint", "n_runs",
              "n_rho", "n_seeds", "message", "beyond", "rho_min", "rho_max")


def top_dim_column() -> pl.Expr:
    """The top layer's size: the last entry of latent_dims."""
    return pl.col("latent_dims").str.split("-").list.last().cast(pl.Int64, strict=False).alias("top_dim")


def rho_eval_label_column() -> pl.Expr:
    """The evaluation rho as a configuration key: "train" when it equals the training rho, else its value."""
    return (pl.when(pl.col("rho_eval").is_null() | ((pl.col("rho_eval") - pl.col("rho")).abs() < 1e-9))
            .then(pl.lit("train")).otherwise(pl.col("rho_eval").round(6).cast(pl.String)).alias(RHO_EVAL_LABEL))


def final_runs_query(results: Results, *, include_unfinished: bool = False) -> pl.LazyFrame:
    """Lazy query: one row per trial, its final evaluation (is_final; the latest step if there are several).

    With ``include_unfinished`` a trial without a final row contributes its latest evaluation instead, so a
    running sweep can be looked at; the report says how many runs that concerns. A run that failed (a population
    member that diverged: its last row names the ``failure``) is never used.
    """
    wanted = list(dict.fromkeys([*CONFIG_KEYS, "split", *OTHER_SETTINGS, *RUN_COLUMNS]))
    trial = ["sweep_id", "run_id"]
    if include_unfinished:
        # The latest evaluation of every trial: the final one where it exists (is_final is the last evaluation).
        lf = results.lf.select(wanted)
    else:
        # Filter first: the window below then runs over the final rows only, not over every evaluation.
        lf = results.lf.filter(pl.col("is_final")).select(wanted)
    lf = lf.filter(pl.col("step") == pl.col("step").max().over(trial)).unique(subset=trial, keep="last")
    lf = lf.filter(pl.col("failure").is_null())
    return lf.with_columns(top_dim_column(), rho_eval_label_column()).with_columns(
        (pl.col("top_active_units") / pl.col("top_dim")).alias("active_fraction"))


def trial_counts_query(results: Results) -> pl.LazyFrame:
    """Lazy query: number of runs (trial ids), of runs without a final evaluation that did not fail, and of runs
    that failed (diverged members of a population), with one failure reason."""
    per_trial = results.lf.group_by("sweep_id", "run_id").agg(pl.col("is_final").any(),
                                                                pl.col("failure").drop_nulls().first())
    failed = pl.col("failure").is_not_null()
    return per_trial.select(pl.len().alias("trials"), (~pl.col("is_final") & ~failed).sum().alias("unfinished"),
                            failed.sum().alias("failed"), pl.col("failure").drop_nulls().first().alias("reason"))


def leak_note(runs: pl.DataFrame) -> str | None:
    """Say so when a run's smoothed training objective cannot be a likelihood: it lies above the valid bound L_k
    of the same weights, or its total KL is negative (information reaching the decoder past the latents, as the
    posterior reading's copies allow). None when no run shows either sign."""
    leaky = runs.filter((pl.col("smoothed_elbo") > pl.col("iw_bound")) | (pl.col("smoothed_kl_total") < 0))
    if leaky.height == 0:
        return None
    r = leaky.sort("smoothed_kl_total").row(0, named=True)
    return (f"{leaky.height} run(s) have a smoothed training objective above their valid bound L_k or a negative "
            f"smoothed KL (e.g. run {r['run_id']}, rho {r['rho']:g}, smooth_space {r['smooth_space']}: objective "
            f"{r['smoothed_elbo']:.2f} vs L_{r['iw_k']} {r['iw_bound']:.2f}, KL {r['smoothed_kl_total']:.2f}): "
            f"information leaks past the latents, so that objective is no likelihood. Every likelihood reported here "
            f"is the valid bound (bound_model).")


def noisy_units_note(runs: pl.DataFrame) -> str | None:
    """Say so when runs were written before results schema v6, whose active units above the first layer counted the
    Monte Carlo noise of the sampled posterior means as spread across x (ouvae.metrics.active_units): too many
    units, the more so the smaller iw_k, so the active-unit fit's rho_c is too high there (units active below rho_c).
    The KL-based estimators are unaffected. None when every multi-layer run is newer."""
    old = runs.filter((pl.col("schema_version") < NOISE_FREE_ACTIVE_UNITS) & (pl.col("n_layers") > 1))
    if old.height == 0:
        return None
    return (f"{old.height} run(s) were written before results schema v6: their active units above the first layer "
            f"count Monte Carlo noise as activity (too many, more so at small iw_k), so the active-unit rho_c is too "
            f"high where units are active below it; the KL midpoint and KL onset are unaffected. Re-run for counts "
            f"without the noise.")


def check_runs(runs: pl.DataFrame, *, unfinished: int, include_unfinished: bool, drop_nan: bool,
               notes: list[str], failed: int = 0, reason: str | None = None) -> pl.DataFrame:
    """Refuse runs the analysis cannot use, with a message that says what to do; return the usable runs."""
    if (leak := leak_note(runs)) is not None:
        notes.append(leak)
    if (noisy := noisy_units_note(runs)) is not None:
        notes.append(noisy)
    if failed:
        notes.append(f"{failed} run(s) failed during training and are left out (e.g. {reason}).")
    if runs.height == 0:
        raise AnalysisError(f"no trial has finished ({unfinished} trial(s) have no row with is_final = true): wait for "
                            f"the sweep to finish, or pass --include-unfinished to use each trial's latest evaluation")
    if unfinished and not include_unfinished:
        notes.append(f"{unfinished} trial(s) have not finished and are left out (use --include-unfinished to use "
                     f"their latest evaluation).")
    elif unfinished:
        notes.append(f"{unfinished} unfinished trial(s) contribute their latest evaluation, not a final one.")
    bad_rho = runs.filter(~pl.col("rho").is_finite() | (pl.col("rho") <= 0) | (pl.col("rho") > 1))
    if bad_rho.height:
        r = bad_rho.row(0, named=True)
        raise AnalysisError(f"{bad_rho.height} trial(s) have rho outside (0, 1], e.g. rho = {r['rho']} in run "
                            f"{r['run_id']} ({r[FILE_COL]}): rho must be in (0, 1]; fix the writer or remove the file")
    bad_dims = runs.filter(pl.col("top_dim").is_null() | (pl.col("top_dim") <= 0))
    if bad_dims.height:
        raise AnalysisError(f"latent_dims {bad_dims['latent_dims'][0]!r} (run {bad_dims['run_id'][0]}) is not "
                            f"latent sizes joined by '-', e.g. 40-40-40-40: fix the writer or remove the trial")
    over = runs.filter((pl.col("top_active_units") < 0) | (pl.col("top_active_units") > pl.col("top_dim")))
    if over.height:
        r = over.row(0, named=True)
        raise AnalysisError(f"run {r['run_id']} reports {r['top_active_units']} active top units but its top "
                            f"layer has {r['top_dim']} ({r['latent_dims']}): the results are inconsistent; re-run it "
                            f"or remove {r[FILE_COL]}")
    not_finite = [(pl.col(c).is_nan() | pl.col(c).is_infinite()).fill_null(False) for c in NUMERIC_METRICS]
    not_finite.append(pl.col("layer_kl").list.eval(pl.element().is_nan() | pl.element().is_infinite())
                      .list.any().fill_null(False))
    names = [*NUMERIC_METRICS, "layer_kl"]
    flags = runs.select([e.alias(n) for e, n in zip(not_finite, names)])
    bad_mask = flags.select(pl.any_horizontal(pl.all())).to_series()
    if bad_mask.any():
        bad = runs.filter(bad_mask)
        cols = [n for n in names if flags.filter(bad_mask)[n].any()]
        r = bad.row(0, named=True)
        example = f"run {r['run_id']} (rho {r['rho']:g}, seed {r['seed']})"
        if not drop_nan:
            raise AnalysisError(f"{bad.height} finished trial(s) have NaN or infinite {', '.join(cols)}, e.g. "
                                f"{example}: training diverged there; re-run those trials, or pass --drop-nan to "
                                f"leave them out")
        notes.append(f"{bad.height} trial(s) with NaN/infinite {', '.join(cols)} left out (--drop-nan), e.g. {example}.")
        runs = runs.filter(~bad_mask)
        if runs.height == 0:
            raise AnalysisError("every finished trial has NaN or infinite metrics: nothing is left to analyse; check "
                                "the training (learning rate, --max-skipped-steps) and re-run")
    rhos = runs["rho"].unique().sort().to_list()
    if len(rhos) < 2:
        raise AnalysisError(f"the results hold one rho value only ({rhos[0]:g}): a critical rho needs runs at several "
                            f"rho values; run the sweep over a rho grid (e.g. 0.80 to 1.00) and analyse again")
    return runs


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def configurations(runs: pl.DataFrame) -> pl.DataFrame:
    """One row per configuration: ids (c01, ...), readable labels, top_dim, total latent units, and the ids and
    labels of its families (``family_*``: same but for the latent sizes; ``<key>_family_*`` for every key of
    ACROSS_KEYS: same but for that key).

    Labels show the dataset, depth and latent sizes, plus any other key that varies in these results.
    """
    cfg = runs.select(*GROUP_KEYS, "top_dim").unique()
    cfg = cfg.with_columns(pl.col("latent_dims").str.split("-").list.eval(pl.element().cast(pl.Int64, strict=False))
                           .list.sum().alias("total_latent"))
    cfg = cfg.sort([*FAMILY_KEYS, "top_dim", "total_latent", "latent_dims"], nulls_last=True)
    varying = [k for k in GROUP_KEYS if cfg[k].n_unique() > 1 and k not in ("dataset", "n_layers", "latent_dims")]

    def label(r: dict, without: str | None = None) -> str:
        parts = [("dataset", r["dataset"]), ("n_layers", f"L={r['n_layers']}"), ("latent_dims", r["latent_dims"]),
                 *((k, f"{k}={_fmt(r[k])}") for k in varying)]
        return " ".join(text for key, text in parts if key != without).strip()

    rows = list(cfg.iter_rows(named=True))
    cfg = cfg.with_columns(pl.Series("config_id", [f"c{i + 1:02d}" for i in range(cfg.height)]),
                           pl.Series("label", [label(r) for r in rows]),
                           pl.Series("family_label", [label(r, "latent_dims") for r in rows]),
                           *(pl.Series(f"{key}_family_label", [label(r, key) for r in rows]) for key in ACROSS_KEYS))
    cfg = _with_ids(cfg, FAMILY_KEYS, "family_id", "f")
    for i, key in enumerate(ACROSS_KEYS):
        cfg = _with_ids(cfg, tuple(k for k in GROUP_KEYS if k != key), f"{key}_family_id", "defghij"[i])
    return cfg


def _with_ids(cfg: pl.DataFrame, keys: tuple[str, ...], id_col: str, prefix: str) -> pl.DataFrame:
    """Number the distinct combinations of ``keys`` in order of appearance: <prefix>01, <prefix>02, ..."""
    ids = cfg.select(keys).unique(maintain_order=True).with_row_index("i").with_columns(
        pl.format(f"{prefix}{{}}", (pl.col("i") + 1).cast(pl.String).str.zfill(2)).alias(id_col)).drop("i")
    return cfg.join(ids, on=list(keys), how="left", maintain_order="left", nulls_equal=True)


def mixing_notes(runs: pl.DataFrame, configs: pl.DataFrame) -> list[str]:
    """Warn when settings outside CONFIG_KEYS vary inside one configuration (then the runs are not replicates)."""
    joined = runs.join(configs.select(*GROUP_KEYS, "config_id"), on=list(GROUP_KEYS), how="left", nulls_equal=True)
    agg = joined.group_by("config_id").agg([pl.col(c).drop_nulls().unique().alias(c) for c in OTHER_SETTINGS])
    notes = []
    for r in agg.sort("config_id").iter_rows(named=True):
        mixed = [f"{c} = {', '.join(_fmt(v) for v in sorted(r[c]))}" for c in OTHER_SETTINGS if len(r[c]) > 1]
        if mixed:
            notes.append(f"configuration {r['config_id']} pools runs with different {'; '.join(mixed)}: these are not "
                         f"replicates; analyse the sweeps separately (--sweep).")
    return notes


def kl_midpoint(rho: np.ndarray, top_kl: np.ndarray, direction: str = ACTIVE_BELOW) -> float | None:
    """Model-free cross-check on the top-layer KL: the rho where the median log KL crosses halfway down (towards
    the collapsed side: up in rho for units active below rho_c, down for units active above).

    Returns None when the median KL falls by less than a factor of 5 over the swept range (no visible drop).
    """
    if direction == ACTIVE_ABOVE:
        mirrored = kl_midpoint(-np.asarray(rho), top_kl)
        return None if mirrored is None else -mirrored
    levels = np.unique(rho)
    med = np.array([np.median(np.log(np.maximum(top_kl[rho == r], 1e-12))) for r in levels])
    if len(levels) < 2 or med.max() - med.min() < math.log(5.0):
        return None
    half = 0.5 * (med.max() + med.min())
    start = int(np.argmax(med))
    for i in range(start, len(levels) - 1):
        if med[i] >= half > med[i + 1]:
            t = (med[i] - half) / (med[i] - med[i + 1])
            return float(levels[i] + t * (levels[i + 1] - levels[i]))
    return None


@dataclass
class CriticalResult:
    """The runs, the configurations and one transition fit per configuration."""

    runs: pl.DataFrame  # one row per finished trial (+ config_id, family_id, <key>_family_id)
    configs: pl.DataFrame  # one row per configuration (see ``configurations``)
    fits: dict[str, TransitionFit]  # config_id -> fit
    table: pl.DataFrame  # the rho_c table: config rows + fit fields + kl_midpoint + the KL onset
    level: float
    notes: list[str] = field(default_factory=list)
    onsets: dict[str, OnsetFit] = field(default_factory=dict)  # config_id -> KL onset (analysis/onset.py)

    def config_runs(self, config_id: str) -> pl.DataFrame:
        return self.runs.filter(pl.col("config_id") == config_id).sort("rho", "seed")


FIT_SCHEMA = {
    "config_id": pl.String, "status": pl.String, "rho_c": pl.Float64, "ci_low": pl.Float64, "ci_high": pl.Float64,
    "width": pl.Float64, "bracket_low": pl.Float64, "bracket_high": pl.Float64, "changepoint": pl.Float64,
    "n_runs": pl.Int64, "n_rho": pl.Int64, "n_seeds": pl.Int64, "message": pl.String, "beyond": pl.String,
    "rho_min": pl.Float64, "rho_max": pl.Float64, "interval_undetermined": pl.String, "kl_midpoint": pl.Float64,
    "direction": pl.String, "kl_onset": pl.Float64, "kl_onset_low": pl.Float64, "kl_onset_high": pl.Float64,
}


@contextmanager
def one_blas_thread() -> Iterator[None]:
    """One BLAS thread for many tiny fits: a multi-threaded OpenBLAS makes each of them up to ~70x slower on a busy
    2-core machine (measured: 5 ms vs 380 ms per fit)."""
    with threadpool_limits(limits=1, user_api="blas"):
        yield


def run_direction(runs: pl.DataFrame) -> str:
    """Which side of rho_c one configuration's units are active on, from its runs (``infer_direction``)."""
    return infer_direction(runs["rho"].to_numpy(), (runs["top_active_units"] / runs["top_dim"]).to_numpy())


def fit_run_table(runs: pl.DataFrame, *, level: float, n_boot: int, rng: np.random.Generator,
                  what: str, direction: str | None = None) -> TransitionFit:
    """fit_transition on one configuration's runs (rows with rho, seed, top_active_units, top_dim), in
    ``direction`` (default: inferred from the runs, ``run_direction``).

    ``what`` names the configuration in the error if the fit refuses its input.
    """
    try:
        return fit_transition(runs["rho"].to_numpy(), runs["seed"].to_numpy(), runs["top_active_units"].to_numpy(),
                              runs["top_dim"].to_numpy(), level=level, n_boot=n_boot, rng=rng,
                              direction=direction or run_direction(runs))
    except ValueError as exc:  # the fit's own input check: name the configuration it concerns
        raise AnalysisError(f"{what}: {exc}") from None


def fit_configurations(runs: pl.DataFrame, configs: pl.DataFrame, *, level: float = 0.95, n_boot: int = 500,
                       seed: int = 0) -> CriticalResult:
    """Fit the transition of every configuration (``n_boot``: fit_transition's seed bootstrap)."""
    ids = ["config_id", "family_id", *(f"{key}_family_id" for key in ACROSS_KEYS)]
    runs = runs.join(configs.select(*GROUP_KEYS, *ids), on=list(GROUP_KEYS), how="left", nulls_equal=True)
    fits: dict[str, TransitionFit] = {}
    onsets: dict[str, OnsetFit] = {}
    rows = []
    with one_blas_thread():
        for i, cfg in enumerate(configs.iter_rows(named=True)):
            sub = runs.filter(pl.col("config_id") == cfg["config_id"]).sort("rho", "seed")
            fit = fit_run_table(sub, level=level, n_boot=n_boot, rng=np.random.default_rng([seed, i]),
                                what=f"configuration {cfg['config_id']} ({cfg['label']})")
            onset = fit_kl_onset(sub["rho"].to_numpy(), sub["seed"].to_numpy(), sub["top_kl"].to_numpy(),
                                 direction=fit.direction, level=level, n_boot=n_boot,
                                 rng=np.random.default_rng([seed, i, 1]))
            fits[cfg["config_id"]], onsets[cfg["config_id"]] = fit, onset
            rows.append({"config_id": cfg["config_id"], "status": fit.status.value,
                         **{f: getattr(fit, f) for f in FIT_FIELDS},
                         "interval_undetermined": None if fit.interval_undetermined is None
                         else fit.interval_undetermined.value,
                         "kl_midpoint": kl_midpoint(sub["rho"].to_numpy(), sub["top_kl"].to_numpy(), fit.direction),
                         "direction": fit.direction, "kl_onset": onset.rho_c, "kl_onset_low": onset.ci_low,
                         "kl_onset_high": onset.ci_high})
    table = configs.join(pl.DataFrame(rows, schema=FIT_SCHEMA), on="config_id", how="left", maintain_order="left")
    return CriticalResult(runs=runs, configs=configs, fits=fits, table=table, level=level, onsets=onsets)

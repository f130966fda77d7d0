"""Critical rho per configuration, and how it moves with the latent size.

Why here and not in transition.py: transition.py is the statistics of one configuration (pure numpy: fit,
interval, bracket, change point). This module is the bookkeeping around it: which rows are the end of training,
what a "configuration" is (analysis.schema.CONFIG_KEYS plus the split and the evaluation rho), one fit per
configuration, and the across-latent-size comparison the paper makes (rho_c lower for wider latents, the
transition sharper or not) with bootstrap intervals on the differences so a reader can judge them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import polars as pl
from threadpoolctl import threadpool_limits

from analysis.io import FILE_COL, NUMERIC_METRICS, AnalysisError, Results
from analysis.schema import CONFIG_KEYS
from analysis.transition import W_MIN_FRACTION_OF_GAP, TransitionFit, _small_sample_factor, fit_transition

# A configuration = CONFIG_KEYS + the split the metrics come from + the rho used at evaluation ("train" when it
# equals the training rho), so a diagnostic rho_eval = 1 run is never pooled with ordinary ones.
GROUP_KEYS: tuple[str, ...] = (*CONFIG_KEYS, "split", "eval_rho")
# A family = configurations that differ only in their latent sizes: the unit of the across-width comparison.
FAMILY_KEYS: tuple[str, ...] = tuple(k for k in GROUP_KEYS if k != "latent_dims")
# Settings outside CONFIG_KEYS that should not vary inside one configuration; if they do, the report says so.
OTHER_SETTINGS = ("preset", "binarization", "hidden_layers", "activation", "iw_samples", "beta_params", "lr",
                  "batch_size")
RUN_COLUMNS = ("sweep_id", "trial_id", "config_hash", "rho", "rho_eval", "seed", "step", "epoch", "is_final",
               "top_active_units", "layer_kl", "layer_active_units", "iw_k", *NUMERIC_METRICS, FILE_COL)
FIT_FIELDS = ("status", "rho_c", "ci_low", "ci_high", "width", "bracket_low", "bracket_high", "changepoint",
              "n_runs", "n_rho", "n_seeds", "message")


def derived_columns() -> list[pl.Expr]:
    """[top_dim (last entry of latent_dims), eval_rho ("train" or the fixed evaluation rho)], in that order."""
    return [
        pl.col("latent_dims").str.split("-").list.last().cast(pl.Int64, strict=False).alias("top_dim"),
        pl.when(pl.col("rho_eval").is_null() | ((pl.col("rho_eval") - pl.col("rho")).abs() < 1e-9))
        .then(pl.lit("train")).otherwise(pl.col("rho_eval").round(6).cast(pl.String)).alias("eval_rho"),
    ]


def final_runs_query(results: Results, *, include_unfinished: bool = False) -> pl.LazyFrame:
    """Lazy query: one row per trial, its final evaluation (is_final; the latest step if there are several).

    With ``include_unfinished`` a trial without a final row contributes its latest evaluation instead, so a
    running sweep can be looked at; the report says how many runs that concerns.
    """
    wanted = list(dict.fromkeys([*CONFIG_KEYS, "split", *OTHER_SETTINGS, *RUN_COLUMNS]))
    trial = ["sweep_id", "trial_id"]
    if include_unfinished:
        # The latest evaluation of every trial: the final one where it exists (is_final is the last evaluation).
        lf = results.lf.select(wanted)
    else:
        # Filter first: the window below then runs over the final rows only, not over every evaluation.
        lf = results.lf.filter(pl.col("is_final")).select(wanted)
    lf = lf.filter(pl.col("step") == pl.col("step").max().over(trial)).unique(subset=trial, keep="last")
    return lf.with_columns(derived_columns()).with_columns(
        (pl.col("top_active_units") / pl.col("top_dim")).alias("active_fraction"))


def trial_counts_query(results: Results) -> pl.LazyFrame:
    """Lazy query: number of trials and of trials without a final evaluation."""
    per_trial = results.lf.group_by("sweep_id", "trial_id").agg(pl.col("is_final").any())
    return per_trial.select(pl.len().alias("trials"), (~pl.col("is_final")).sum().alias("unfinished"))


def check_runs(runs: pl.DataFrame, *, unfinished: int, include_unfinished: bool, drop_nan: bool,
               notes: list[str]) -> pl.DataFrame:
    """Refuse runs the analysis cannot use, with a message that says what to do; return the usable runs."""
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
        raise AnalysisError(f"{bad_rho.height} trial(s) have rho outside (0, 1], e.g. rho = {r['rho']} in trial "
                            f"{r['trial_id']} ({r[FILE_COL]}): rho must be in (0, 1]; fix the writer or remove the file")
    bad_dims = runs.filter(pl.col("top_dim").is_null() | (pl.col("top_dim") <= 0))
    if bad_dims.height:
        raise AnalysisError(f"latent_dims {bad_dims['latent_dims'][0]!r} (trial {bad_dims['trial_id'][0]}) is not "
                            f"latent sizes joined by '-', e.g. 40-40-40-40: fix the writer or remove the trial")
    over = runs.filter((pl.col("top_active_units") < 0) | (pl.col("top_active_units") > pl.col("top_dim")))
    if over.height:
        r = over.row(0, named=True)
        raise AnalysisError(f"trial {r['trial_id']} reports {r['top_active_units']} active top units but its top "
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
        example = f"trial {r['trial_id']} (rho {r['rho']:g}, seed {r['seed']})"
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
    """One row per configuration: ids (c01, ...), readable labels, family id/label, top_dim, total latent units.

    Labels show the dataset, depth and latent sizes, plus any other key that varies in these results.
    """
    cfg = runs.select(*GROUP_KEYS, "top_dim").unique()
    cfg = cfg.with_columns(pl.col("latent_dims").str.split("-").list.eval(pl.element().cast(pl.Int64, strict=False))
                           .list.sum().alias("total_latent"))
    cfg = cfg.sort([*FAMILY_KEYS, "top_dim", "total_latent", "latent_dims"], nulls_last=True)
    varying = [k for k in GROUP_KEYS if cfg[k].n_unique() > 1 and k not in ("dataset", "n_layers", "latent_dims")]
    labels, fam_labels = [], []
    for r in cfg.iter_rows(named=True):
        extra = " ".join(f"{k}={_fmt(r[k])}" for k in varying)
        head = f"{r['dataset']} L={r['n_layers']}"
        fam_labels.append(f"{head} {extra}".strip())
        labels.append(f"{head} {r['latent_dims']} {extra}".strip())
    cfg = cfg.with_columns(
        pl.Series("config_id", [f"c{i + 1:02d}" for i in range(cfg.height)]),
        pl.Series("label", labels),
        pl.Series("family_label", fam_labels),
    )
    fam = cfg.select("family_label").unique(maintain_order=True).with_row_index("f")
    fam = fam.with_columns(pl.format("f{}", (pl.col("f") + 1).cast(pl.String).str.zfill(2)).alias("family_id")).drop("f")
    return cfg.join(fam, on="family_label", how="left", maintain_order="left")


def mixing_notes(runs: pl.DataFrame, configs: pl.DataFrame) -> list[str]:
    """Warn when settings outside CONFIG_KEYS vary inside one configuration (then the runs are not replicates)."""
    joined = runs.join(configs.select(*GROUP_KEYS, "config_id"), on=list(GROUP_KEYS), how="left", nulls_equal=True)
    agg = joined.group_by("config_id").agg([pl.col(c).drop_nulls().unique().alias(c) for c in OTHER_SETTINGS])
    notes = []
    for r in agg.sort("config_id").iter_rows(named=True):
        mixed = [f"{c} = {', '.join(_fmt(v) for v in sorted(r[c]))}" for c in OTHER_SETTINGS if len(r[c]) > 1]
        if mixed:
            notes.append(f"configuration {r['config_id']} pools runs with different {'; '.join(mixed)}: these are not "
                         f"replicates; analyse the sweeps separately (--sweep) or add the setting to CONFIG_KEYS.")
    return notes


def kl_midpoint(rho: np.ndarray, top_kl: np.ndarray) -> float | None:
    """Model-free cross-check on the top-layer KL: the rho where the median log KL crosses halfway down.

    Returns None when the median KL falls by less than a factor of 5 over the swept range (no visible drop).
    """
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


def _width_bootstrap(rho: np.ndarray, seed: np.ndarray, active: np.ndarray, top_dim: np.ndarray, n_boot: int,
                     rng: np.random.Generator) -> np.ndarray:
    """The logistic width w refitted (fit_transition, no inner interval) on ``n_boot`` resamples of whole seeds.

    Why: fit_transition gives an interval for rho_c but not for w, and "does the transition sharpen with width"
    needs one. NaN where a resample has no transition in the range.
    """
    seeds = np.unique(seed)
    index = {s: np.flatnonzero(seed == s) for s in seeds}
    out = np.full(n_boot, np.nan)
    for b in range(n_boot):
        draw = rng.choice(seeds, size=len(seeds), replace=True)
        idx = np.concatenate([index[s] for s in draw])
        labels = np.concatenate([np.full(len(index[s]), i) for i, s in enumerate(draw)])
        fit = fit_transition(rho[idx], labels, active[idx], top_dim[idx], n_boot=0)
        if fit.status == "ok" and fit.width is not None:
            out[b] = fit.width
    return out


def _w_at_floor(width: float, rho: np.ndarray) -> bool:
    """True when the fitted w sits at fit_transition's lower bound: a step sharper than the rho spacing, w unknown."""
    levels = np.unique(rho)
    if levels.size < 2:
        return False
    return width <= W_MIN_FRACTION_OF_GAP * float(np.diff(levels).min()) * (1.0 + 1e-3)


@dataclass
class CriticalResult:
    """Everything the tables, plots and report need about rho_c."""

    runs: pl.DataFrame  # one row per finished trial (+ config_id, family_id)
    configs: pl.DataFrame  # one row per configuration
    fits: dict[str, TransitionFit]  # config_id -> fit
    table: pl.DataFrame  # the rho_c table (config rows + fit fields + kl_midpoint + w_floor)
    comparisons: pl.DataFrame  # across latent sizes, consecutive widths within a family
    trends: dict[str, str]  # family_id -> one-sentence verdict
    level: float
    notes: list[str] = field(default_factory=list)


FIT_SCHEMA = {
    "config_id": pl.String, "status": pl.String, "rho_c": pl.Float64, "ci_low": pl.Float64, "ci_high": pl.Float64,
    "width": pl.Float64, "bracket_low": pl.Float64, "bracket_high": pl.Float64, "changepoint": pl.Float64,
    "n_runs": pl.Int64, "n_rho": pl.Int64, "n_seeds": pl.Int64, "message": pl.String, "kl_midpoint": pl.Float64,
    "w_floor": pl.Boolean, "beyond": pl.String, "rho_min": pl.Float64, "rho_max": pl.Float64,
}


def fit_configurations(runs: pl.DataFrame, configs: pl.DataFrame, *, level: float = 0.95, n_boot: int = 500,
                       compare_boot: int = 200, seed: int = 0) -> CriticalResult:
    """Fit the transition of every configuration and compare latent sizes within each family.

    ``n_boot``: fit_transition's seed bootstrap for the rho_c interval. ``compare_boot``: seed resamples used only
    for the interval on the ratio of widths w between latent sizes (0 turns that interval off).
    """
    runs = runs.join(configs.select(*GROUP_KEYS, "config_id", "family_id"), on=list(GROUP_KEYS), how="left",
                     nulls_equal=True)
    fits: dict[str, TransitionFit] = {}
    boots: dict[str, np.ndarray] = {}
    rows = []
    families = configs.group_by("family_id").agg(pl.col("latent_dims").n_unique().alias("n"))
    multi = set(families.filter(pl.col("n") > 1)["family_id"].to_list())
    # One BLAS thread: the fits are many tiny optimisations, and a multi-threaded OpenBLAS makes each of them
    # up to ~70x slower on a busy 2-core machine (measured: 5 ms vs 380 ms per fit).
    with threadpool_limits(limits=1, user_api="blas"):
        for i, cfg in enumerate(configs.iter_rows(named=True)):
            rows.append(_fit_one(runs, cfg, i, multi, fits, boots, level=level, n_boot=n_boot,
                                 compare_boot=compare_boot, seed=seed))
    fit_df = pl.DataFrame(rows, schema=FIT_SCHEMA)
    table = configs.join(fit_df, on="config_id", how="left", maintain_order="left")
    comparisons, trends = compare_latent_sizes(table, boots, level=level)
    return CriticalResult(runs=runs, configs=configs, fits=fits, table=table, comparisons=comparisons, trends=trends,
                          level=level)


def _fit_one(runs: pl.DataFrame, cfg: dict, i: int, multi: set[str], fits: dict[str, TransitionFit],
             boots: dict[str, np.ndarray], *, level: float, n_boot: int, compare_boot: int, seed: int) -> dict:
    """Fit one configuration (and, in a multi-size family, bootstrap its w); return its row of the rho_c table."""
    sub = runs.filter(pl.col("config_id") == cfg["config_id"]).sort("rho", "seed")
    rho = sub["rho"].to_numpy()
    sd = sub["seed"].to_numpy()
    act = sub["top_active_units"].to_numpy()
    dim = sub["top_dim"].to_numpy()
    rng = np.random.default_rng([seed, i])
    try:
        fit = fit_transition(rho, sd, act, dim, level=level, n_boot=n_boot, rng=rng)
    except ValueError as exc:  # the fit's own input check: name the configuration it concerns
        raise AnalysisError(f"configuration {cfg['config_id']} ({cfg['label']}): {exc}") from None
    fits[cfg["config_id"]] = fit
    floor = fit.status == "ok" and fit.width is not None and _w_at_floor(fit.width, rho)
    if fit.status == "ok" and not floor and cfg["family_id"] in multi and compare_boot > 0 and fit.n_seeds >= 2:
        boots[cfg["config_id"]] = _width_bootstrap(rho, sd, act, dim, compare_boot, rng)
    return {"config_id": cfg["config_id"], **{f: getattr(fit, f) for f in FIT_FIELDS},
            "kl_midpoint": kl_midpoint(rho, sub["top_kl"].to_numpy()), "w_floor": floor,
            "beyond": _beyond(fit, rho, sub["active_fraction"].to_numpy()),
            "rho_min": float(rho.min()), "rho_max": float(rho.max())}


def _beyond(fit: TransitionFit, rho: np.ndarray, m: np.ndarray) -> str | None:
    """For "no transition in the range": does rho_c lie above the swept range (still mostly active at its top)
    or below it (mostly collapsed at its bottom)? None otherwise or when the data do not say."""
    if fit.status != "no_transition" or fit.n_rho < 2:
        return None
    top, bottom = float(m[rho == rho.max()].mean()), float(m[rho == rho.min()].mean())
    if top >= 0.5 and bottom >= 0.5:
        return "above"
    if top < 0.5 and bottom < 0.5:
        return "below"
    return None


def difference_interval(a: float, a_lo: float, a_hi: float, b: float, b_lo: float, b_hi: float
                        ) -> tuple[float, float]:
    """Interval for b - a from two independent (possibly asymmetric) intervals: the MOVER method.

    Why: the rho_c intervals from fit_transition already carry its seed bootstrap, small-sample widening and
    grid-resolution floor; MOVER (Zou & Donner 2008) combines them into an interval for the difference without
    refitting: L = d - sqrt((b - b_lo)^2 + (a_hi - a)^2), U = d + sqrt((b_hi - b)^2 + (a - a_lo)^2).
    """
    d = b - a
    return (d - math.sqrt((b - b_lo) ** 2 + (a_hi - a) ** 2), d + math.sqrt((b_hi - b) ** 2 + (a - a_lo) ** 2))


def ratio_interval(wa: float, wb: float, boot_a: np.ndarray, boot_b: np.ndarray, n_seeds: int, level: float
                   ) -> tuple[float | None, float | None]:
    """Interval for w_b / w_a from independent seed resamples of each, on the log scale.

    Percentile interval of log(w_b*) - log(w_a*), widened about the estimate by the same small-sample factor
    fit_transition applies to its rho_c interval (few seeds make a seed bootstrap too narrow). None when fewer
    than 20 resamples of either side gave a fit.
    """
    a_ok, b_ok = boot_a[np.isfinite(boot_a)], boot_b[np.isfinite(boot_b)]
    m = min(a_ok.size, b_ok.size)
    if m < 20:
        return None, None
    diff = np.log(b_ok[:m]) - np.log(a_ok[:m])
    alpha = 1.0 - level
    q_lo, q_hi = np.quantile(diff, [alpha / 2.0, 1.0 - alpha / 2.0])
    est = math.log(wb / wa)
    f = _small_sample_factor(n_seeds, level)
    lo = est - f * (est - q_lo) if q_lo <= est else q_lo
    hi = est + f * (q_hi - est) if q_hi >= est else q_hi
    return float(math.exp(lo)), float(math.exp(hi))


COMPARISON_SCHEMA = {
    "family_id": pl.String, "family_label": pl.String, "narrow": pl.String, "wide": pl.String,
    "delta_rho_c": pl.Float64, "delta_ci_low": pl.Float64, "delta_ci_high": pl.Float64, "rho_c_verdict": pl.String,
    "width_ratio": pl.Float64, "ratio_ci_low": pl.Float64, "ratio_ci_high": pl.Float64, "sharpness_verdict": pl.String,
}


def _finite(*vals: float | None) -> bool:
    return all(v is not None and math.isfinite(v) for v in vals)


def _bounds(r: dict) -> tuple[float, float] | None:
    """Where rho_c can lie for one configuration: its interval if fitted, else the side of the swept range."""
    if r["status"] == "ok" and _finite(r["ci_low"], r["ci_high"]):
        return r["ci_low"], r["ci_high"]
    if r["status"] == "no_transition" and r["beyond"] == "above":
        return r["rho_max"], math.inf
    if r["status"] == "no_transition" and r["beyond"] == "below":
        return -math.inf, r["rho_min"]
    return None


def _rho_c_text(r: dict) -> str:
    if r["status"] == "ok":
        return f"{r['rho_c']:.3f}"
    if r["beyond"] == "above":
        return f"> {r['rho_max']:g}"
    if r["beyond"] == "below":
        return f"< {r['rho_min']:g}"
    return r["status"].replace("_", " ")


def _rho_c_pair(a: dict, b: dict) -> tuple[float | None, float | None, float | None, str]:
    """(delta, interval low, interval high, verdict) for rho_c(b) - rho_c(a), b the wider configuration."""
    if a["status"] == "ok" and b["status"] == "ok":
        d = b["rho_c"] - a["rho_c"]
        if not _finite(a["ci_low"], a["ci_high"], b["ci_low"], b["ci_high"]):
            return d, None, None, "no verdict (an interval is missing or unbounded)"
        lo, hi = difference_interval(a["rho_c"], a["ci_low"], a["ci_high"], b["rho_c"], b["ci_low"], b["ci_high"])
        if hi < 0:
            return d, lo, hi, "lower for the wider latent"
        if lo > 0:
            return d, lo, hi, "higher for the wider latent"
        return d, lo, hi, "no clear difference"
    # At least one side has no transition in its swept range: compare where each rho_c can lie.
    ba, bb = _bounds(a), _bounds(b)
    if ba is None or bb is None:
        return None, None, None, "no verdict (no transition located)"
    where = "; ".join(f"{r['latent_dims']} {_rho_c_text(r)}" for r in (a, b))
    if bb[1] < ba[0]:
        return None, None, None, f"lower for the wider latent ({where})"
    if bb[0] > ba[1]:
        return None, None, None, f"higher for the wider latent ({where})"
    return None, None, None, f"no verdict ({where})"


def compare_latent_sizes(table: pl.DataFrame, boots: dict[str, np.ndarray], *, level: float = 0.95
                         ) -> tuple[pl.DataFrame, dict[str, str]]:
    """Within each family, compare consecutive latent sizes (narrow -> wide).

    For each pair: delta rho_c = rho_c(wide) - rho_c(narrow) with a MOVER interval from the two rho_c intervals,
    and the width ratio w(wide)/w(narrow) with a seed-bootstrap interval. A verdict says "lower"/"higher" (or
    "sharper"/"broader") only when its interval excludes 0 (or 1); otherwise "no clear difference". A size with
    no transition in its swept range still bounds its rho_c (above or below the range), which can decide the
    rho_c comparison on its own. One sentence per family summarises the pairs.
    """
    rows = []
    trends: dict[str, str] = {}
    pct = f"{level:.0%}"
    for fam_id in table["family_id"].unique(maintain_order=True).to_list():
        fam = table.filter(pl.col("family_id") == fam_id).sort("top_dim", "total_latent")
        if fam["latent_dims"].n_unique() < 2:
            continue
        usable = fam.filter((pl.col("status") == "ok") | pl.col("beyond").is_not_null())
        skipped = [f"{r['latent_dims']} ({r['status'].replace('_', ' ')})"
                   for r in fam.filter((pl.col("status") != "ok") & pl.col("beyond").is_null()).iter_rows(named=True)]
        label = fam["family_label"][0]
        tail = f" (left out: {', '.join(skipped)})" if skipped else ""
        if usable.height < 2 or usable.filter(pl.col("status") == "ok").height == 0:
            trends[fam_id] = f"{label}: cannot compare latent sizes, too few have a located transition{tail}."
            continue
        recs = list(usable.iter_rows(named=True))
        lower = higher = sharper = broader = 0
        for a, b in zip(recs, recs[1:]):
            d, dlo, dhi, rv = _rho_c_pair(a, b)
            lower += rv.startswith("lower")
            higher += rv.startswith("higher")
            ratio = rlo = rhi = None
            if a["status"] != "ok" or b["status"] != "ok":
                sv = "no verdict (no fitted transition on one side)"
            elif a["w_floor"] or b["w_floor"]:
                ratio = b["width"] / a["width"]
                sv = "not resolved (a step sharper than the rho spacing: w unknown; sample rho more finely)"
            else:
                ratio = b["width"] / a["width"]
                if a["config_id"] in boots and b["config_id"] in boots:
                    rlo, rhi = ratio_interval(a["width"], b["width"], boots[a["config_id"]], boots[b["config_id"]],
                                              min(a["n_seeds"], b["n_seeds"]), level)
                if rlo is None:
                    sv = "no verdict (too few seeds or bootstrap fits)"
                elif rhi < 1:
                    sv, sharper = "sharper for the wider latent", sharper + 1
                elif rlo > 1:
                    sv, broader = "broader for the wider latent", broader + 1
                else:
                    sv = "no clear difference"
            rows.append({"family_id": fam_id, "family_label": label, "narrow": a["latent_dims"], "wide": b["latent_dims"],
                         "delta_rho_c": d, "delta_ci_low": dlo, "delta_ci_high": dhi, "rho_c_verdict": rv,
                         "width_ratio": ratio, "ratio_ci_low": rlo, "ratio_ci_high": rhi, "sharpness_verdict": sv})
        n = len(recs) - 1
        values = ", ".join(f"{r['latent_dims']}: {_rho_c_text(r)}" for r in recs)
        if lower == n:
            rc = f"rho_c is lower for wider latents at every step ({values}; each step clear at {pct}), as the paper reports"
        elif higher == n:
            rc = f"rho_c is higher for wider latents at every step ({values}), unlike the paper"
        elif lower or higher:
            rc = f"rho_c changes with width in {lower + higher} of {n} steps ({lower} lower, {higher} higher; {values})"
        elif all(r["rho_c_verdict"].startswith("no verdict") for r in rows[-n:]):
            rc = f"rho_c cannot be compared across widths ({values}); add seeds or widen the range"
        else:
            rc = f"no clear change of rho_c with width at {pct} ({values})"
        unresolved = sum(1 for r in rows[-n:] if not r["sharpness_verdict"].startswith(("sharper", "broader", "no clear")))
        if sharper == n:
            sh = "the transition sharpens (smaller w) with width"
        elif broader == n:
            sh = "the transition broadens (larger w) with width"
        elif unresolved == n:
            sh = ("the sharpness w cannot be compared (no fit on one side, a step sharper than the rho spacing, or "
                  "too few seeds for an interval)")
        elif sharper or broader:
            sh = f"w changes in {sharper + broader} of {n} steps ({sharper} sharper, {broader} broader)"
        else:
            sh = "no clear change of the sharpness w"
        if unresolved and unresolved < n:
            sh += f" ({unresolved} of {n} steps could not be compared)"
        trends[fam_id] = f"{label}: {rc}; {sh}{tail}."
    return pl.DataFrame(rows, schema=COMPARISON_SCHEMA), trends

"""Tables in the form of the paper's appendix (Tables 6, 8, 9, 10), from the final runs and the benchmark file.

Why this form: researchers compare their numbers with the paper's side by side, so the columns, units and the
top-to-bottom order of active units follow the appendix. Each table keeps a numeric frame (written as CSV for
further work) and a formatted one (what the report and the terminal show). Seeds are averaged; the number of
seeds and the spread are shown so a reader knows what a mean rests on.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from analysis.io import AnalysisError

BENCHMARK_FIELDS = ("model", "method", "time_per_epoch_s", "peak_memory_bytes", "device", "batch_size")


@dataclass
class Table:
    """A formatted table plus its numbers."""

    key: str  # short name used for file names: table6, table8, ...
    title: str
    caption: str
    columns: list[str]
    rows: list[list[str]]
    data: pl.DataFrame  # numeric values, one row per table row

    def to_text(self) -> str:
        widths = [max(len(c), *(len(r[i]) for r in self.rows)) if self.rows else len(c)
                  for i, c in enumerate(self.columns)]
        line = "  ".join(c.ljust(w) for c, w in zip(self.columns, widths))
        body = ["  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in self.rows]
        return "\n".join([line, "  ".join("-" * w for w in widths), *body])


def _num(v: float | None, digits: int = 2) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    return f"{v:.{digits}f}"


def _units(values: list[float | None] | None) -> str:
    if not values or any(v is None for v in values):
        return "–"
    out = []
    for v in values:
        r = round(float(v), 1)
        out.append(str(int(r)) if r == int(r) else f"{r:.1f}")
    return ",".join(out)


def method_name(objective: str | None, iw_samples: int | None, rho: float, beta_schedule: str | None,
                free_bits: float | None) -> str:
    """The appendix's row names: VAE, IWAE (k samples), OU-VAE (rho = x), '+KL' for annealing, '+Freebits'."""
    iwae = objective == "iwae"
    if rho >= 1.0 - 1e-12:
        name = f"IWAE ({iw_samples} samples)" if iwae else "VAE"
        suffix = ""
    else:
        name = "OU-IWAE" if iwae else "OU-VAE"
        suffix = f" (ρ = {rho:g}" + (f", {iw_samples} samples)" if iwae else ")")
    if beta_schedule not in (None, "constant"):
        name += "+KL"
    if free_bits:
        name += "+Freebits"
    return name + suffix


def summarize_runs(runs: pl.DataFrame) -> pl.DataFrame:
    """Seed-averaged end-of-training numbers per (configuration, rho).

    ``runs`` is one row per finished trial with config_id (see critical.final_runs_query). Per-layer active units
    and KLs are averaged layer by layer and returned top to bottom, as the appendix lists them.
    """
    keyed = runs.with_row_index("_run")
    layers = (keyed.select("_run", "config_id", "rho", "layer_active_units", "layer_kl")
              .with_columns(pl.int_ranges(pl.col("layer_active_units").list.len()).alias("_layer"))
              .explode("layer_active_units", "layer_kl", "_layer")
              .group_by("config_id", "rho", "_layer")
              .agg(pl.col("layer_active_units").mean().alias("au"), pl.col("layer_kl").mean().alias("kl"))
              .sort("config_id", "rho", pl.col("_layer"), descending=[False, False, True])
              .group_by("config_id", "rho", maintain_order=True)
              .agg(pl.col("au").alias("active_units_top_down"), pl.col("kl").alias("layer_kl_top_down")))
    first = ["dataset", "n_layers", "latent_dims", "top_dim", "total_latent", "objective", "iw_samples", "beta_schedule",
             "free_bits", "smooth_space", "bound_model", "label", "family_id", "family_label"]
    present = [c for c in first if c in runs.columns]
    agg = (runs.group_by("config_id", "rho")
           .agg(*[pl.col(c).first() for c in present],
                pl.col("seed").n_unique().alias("n_seeds"), pl.len().alias("n_runs"),
                pl.col("iw_k").drop_nulls().unique().sort().alias("iw_k"),
                pl.col("iw_bound").mean().alias("iw_bound"), pl.col("iw_bound").std().alias("iw_bound_sd"),
                pl.col("elbo").mean().alias("elbo"), pl.col("kl_total").mean().alias("kl_total"),
                pl.col("top_kl").mean().alias("top_kl"), pl.col("top_kl").std().alias("top_kl_sd"),
                pl.col("top_active_units").mean().alias("top_active_units")))
    return agg.join(layers, on=["config_id", "rho"], how="left").sort("config_id", "rho")


def _bound_header(iw_ks: list[list[int]]) -> str:
    ks = sorted({k for ks in iw_ks for k in (ks or [])})
    return f"V. ELBO (L_{ks[0]})" if len(ks) == 1 else "V. ELBO (L_k)"


def table6(summary: pl.DataFrame) -> Table:
    """Table 6 form: per method and rho, L_k bound, top-layer KL and active units per layer, top to bottom."""
    several = summary["config_id"].n_unique() > 1
    cols = (["Config"] if several else []) + ["Model", "Seeds", _bound_header(summary["iw_k"].to_list()), "Bound of",
                                              "Top KLD", "Active units (top→bottom)"]
    rows = []
    names = []
    for r in summary.iter_rows(named=True):
        name = method_name(r.get("objective"), r.get("iw_samples"), r["rho"], r.get("beta_schedule"), r.get("free_bits"))
        names.append(name)
        bound = _num(r["iw_bound"]) + (f" ± {_num(r['iw_bound_sd'])}" if r["iw_bound_sd"] is not None and
                                        r["n_seeds"] > 1 and math.isfinite(r["iw_bound_sd"]) else "")
        rows.append(([r["label"]] if several else []) +
                    [name, str(r["n_seeds"]), bound, r.get("bound_model") or "–", _num(r["top_kl"], 3),
                     _units(r["active_units_top_down"])])
    data = summary.with_columns(pl.Series("model", names)).select(
        "config_id", "label", "model", "rho", "n_seeds", "iw_bound", "iw_bound_sd", "bound_model", "top_kl", "top_kl_sd",
        pl.col("active_units_top_down").list.eval(pl.element().round(3).cast(pl.String)).list.join(","))
    return Table("table6", "Table 6 — posterior collapse at the end of training",
                 "Mean over seeds of the final evaluation (± standard deviation across seeds). The bound is on log p(x) "
                 "of the model in 'Bound of': hvae = the plain hierarchical VAE with the trained weights (the "
                 "posterior reading's smoothed objective bounds no model), smoothed-prior = the prior reading's "
                 "smoothed model; – = no valid bound recorded (results older than schema v3). Active units per "
                 "stochastic layer from top to bottom (Burda et al. threshold 0.01), as in the paper's Table 6.",
                 cols, rows, data)


def table8(summary: pl.DataFrame) -> Table | None:
    """Table 8 form: varying latent sizes of one model (rows widest first), per rho. None if no family varies."""
    fam = summary.group_by("family_id").agg(pl.col("latent_dims").n_unique().alias("n"))
    keep = fam.filter(pl.col("n") > 1)["family_id"].to_list()
    sub = summary.filter(pl.col("family_id").is_in(keep))
    if sub.height == 0:
        return None
    sub = sub.sort(["family_id", "rho", "top_dim", "total_latent"], descending=[False, False, True, True])
    several = len(keep) > 1
    cols = (["Family"] if several else []) + ["ρ", "Model", "Seeds", _bound_header(sub["iw_k"].to_list()), "KLD",
                                              "Top KLD", "Active units (top→bottom)"]
    rows = []
    for r in sub.iter_rows(named=True):
        rows.append(([r["family_label"]] if several else []) +
                    [f"{r['rho']:g}", r["latent_dims"], str(r["n_seeds"]), _num(r["iw_bound"]), _num(r["kl_total"]),
                     _num(r["top_kl"], 3), _units(r["active_units_top_down"])])
    data = sub.select("family_id", "family_label", "rho", "latent_dims", "n_seeds", "iw_bound", "kl_total", "top_kl",
                      pl.col("active_units_top_down").list.eval(pl.element().round(3).cast(pl.String)).list.join(","))
    return Table("table8", "Table 8 — varying latent sizes",
                 "Same model with different latent sizes (widest first), per rho; KLD is the total KL over layers. "
                 "Mean over seeds of the final evaluation; bound and KLD under the model named in Table 6's 'Bound "
                 "of'.", cols, rows, data)


def read_benchmark(path: str | os.PathLike[str]) -> pl.DataFrame:
    """Read the trainer benchmark's JSON (a list of records); AnalysisError naming the defect otherwise."""
    p = Path(path)
    fix = "re-run benchmarks/trainer_bench.py or fix the file"
    if not p.is_file():
        raise AnalysisError(f"benchmark file {p} does not exist: check --benchmark")
    try:
        records = json.loads(p.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AnalysisError(f"benchmark file {p} is not valid JSON ({exc}): {fix}") from None
    if isinstance(records, dict) and isinstance(records.get("records"), list):
        records = records["records"]
    if not isinstance(records, list) or not records:
        raise AnalysisError(f"benchmark file {p} should hold a non-empty JSON list of records "
                            f"{{{', '.join(BENCHMARK_FIELDS)}}}: {fix}")
    clean = []
    for i, rec in enumerate(records):
        if not isinstance(rec, dict):
            raise AnalysisError(f"benchmark file {p}: record {i} is not an object: {fix}")
        missing = [k for k in BENCHMARK_FIELDS if k not in rec]
        if missing:
            raise AnalysisError(f"benchmark file {p}: record {i} lacks {', '.join(missing)}: {fix}")
        t, m = rec["time_per_epoch_s"], rec["peak_memory_bytes"]
        for name, v in (("time_per_epoch_s", t), ("peak_memory_bytes", m)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)
                                  or v < 0):
                raise AnalysisError(f"benchmark file {p}: record {i} has {name} = {v!r}, expected a number >= 0 or "
                                    f"null: {fix}")
        clean.append({"model": str(rec["model"]), "method": str(rec["method"]),
                      "time_per_epoch_s": None if t is None else float(t),
                      "peak_memory_bytes": None if m is None else int(m),
                      "device": None if rec["device"] is None else str(rec["device"]),
                      "batch_size": None if rec["batch_size"] is None else int(rec["batch_size"])})
    return pl.DataFrame(clean, schema={"model": pl.String, "method": pl.String, "time_per_epoch_s": pl.Float64,
                                       "peak_memory_bytes": pl.Int64, "device": pl.String, "batch_size": pl.Int64})


def _with_ratio(df: pl.DataFrame, value: str) -> pl.DataFrame:
    group = ["model", "device", "batch_size"]
    base = (df.filter(pl.col("method").str.to_lowercase() == "vae").group_by(group)
            .agg(pl.col(value).first().alias("_base")))
    out = df.join(base, on=group, how="left", nulls_equal=True, maintain_order="left")
    return out.with_columns((pl.col(value) / pl.col("_base")).alias("ratio_to_vae")).drop("_base")


def _bench_rows(df: pl.DataFrame, value: str, fmt) -> list[list[str]]:
    return [[r["model"], r["method"], r["device"] or "–", "–" if r["batch_size"] is None else str(r["batch_size"]),
             fmt(r[value]), "–" if r["ratio_to_vae"] is None else f"{r['ratio_to_vae']:.2f}×"]
            for r in df.iter_rows(named=True)]


def _bench_table(bench: pl.DataFrame, column: str, reduce: pl.Expr, key: str, title: str, caption: str,
                 header: str, fmt) -> Table | None:
    """One benchmark column per model, method, device and batch size (records reduced by `reduce`), with the ratio
    to the VAE of the same model."""
    g = (bench.filter(pl.col(column).is_not_null())
         .group_by("model", "method", "device", "batch_size", maintain_order=True)
         .agg(reduce, pl.len().alias("n_records")))
    if g.height == 0:
        return None
    g = _with_ratio(g, column)
    return Table(key, title, caption, ["Model", "Method", "Device", "Batch", header, "vs VAE"],
                 _bench_rows(g, column, fmt), g)


def table9(bench: pl.DataFrame) -> Table | None:
    """Table 9 form: mean time per epoch per model and method (records averaged), with the ratio to VAE."""
    return _bench_table(bench, "time_per_epoch_s", pl.col("time_per_epoch_s").mean(), "table9",
                        "Table 9 — average time per epoch",
                        "From the trainer benchmark (benchmark.json); records of the same model, method, device and "
                        "batch size are averaged. Paper (MNIST MLP, GPU): VAE 4.2 s, IWAE 4.4 s, OU-VAE 4.6 s.",
                        "Time/epoch (s)", lambda v: f"{v:.3g}")


def table10(bench: pl.DataFrame) -> Table | None:
    """Table 10 form: maximum memory per model and method (largest of the records), with the ratio to VAE."""
    return _bench_table(bench, "peak_memory_bytes", pl.col("peak_memory_bytes").max(), "table10",
                        "Table 10 — maximum memory",
                        "Peak memory from the trainer benchmark (CUDA max allocated on a GPU; on a CPU parameters, "
                        "gradients, Adam moments and the activations kept for backward); the largest of repeated "
                        "records. Paper (4-layer CIFAR-10, batch 64): VAE 2.12G, IWAE 8.59G, OU-VAE 3.74G.",
                        "Peak memory (GiB)", lambda v: f"{v / 2**30:.3g}")

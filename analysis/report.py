"""``analyze()``: results in, report out -- the one entry point the CLI and the sweep script call.

Report format (chosen to be opened and shared): one self-contained HTML file, ``report.html``, with every
figure embedded, so it can be mailed or attached as is; beside it ``figures/*.png`` (the same figures, for
papers and slides) and ``tables/*.csv`` (the numbers behind every table, for further work). The report is always
written to a local folder, also when the results are read from S3.

Nothing half-done is ever left looking complete: all inputs are validated and every number is computed before
anything is written; files are then written into a hidden staging folder next to the output and moved into
place at the end, ``report.html`` last. A failure removes the staging folder and leaves an earlier report as
it was.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import polars as pl

from analysis import plots
from analysis.budget import DEFAULT_MAX_BUDGETS, evaluations_query, fit_budgets
from analysis.compare import DEFAULT_MARGIN, compare_across, compare_latent_sizes
from analysis.critical import (ACROSS_KEYS, ACROSS_TITLES, GROUP_KEYS, RHO_EVAL_LABEL, CriticalResult, check_runs,
                               configurations, final_runs_query, fit_configurations, mixing_notes,
                               rho_eval_label_column, trial_counts_query)
from analysis.io import AnalysisError, Results, collect, load_results
from analysis.render import Report, render_html, report_tables
from analysis.storage import locate
from analysis.tables import read_benchmark, summarize_runs, table6, table8, table9, table10
from ouvae.atomic import write_atomically

REPORT_NAME = "report.html"
BENCHMARK_NAME = "benchmark.json"


def curves_query(results: Results) -> pl.LazyFrame:
    """Seed-averaged training curves per (configuration, rho, step), from every evaluation row (NaN ignored)."""
    metrics = ("iw_bound", "elbo", "top_kl", "top_active_units")
    keys = [*GROUP_KEYS, "rho", "step"]
    lf = results.lf.select(*[k for k in GROUP_KEYS if k != RHO_EVAL_LABEL], "rho", "rho_eval", "step", *metrics)
    lf = lf.with_columns(rho_eval_label_column()).with_columns(
        [pl.col(c).cast(pl.Float64).fill_nan(None) for c in metrics])
    return lf.group_by(keys).agg(*[pl.col(c).mean() for c in metrics], pl.len().alias("n"))


def order_parameters(critical: CriticalResult) -> pl.DataFrame:
    """Every run's end-of-training order parameters (all seeds kept), per-layer lists bottom to top as strings."""
    runs = critical.runs.join(critical.configs.select("config_id", "label"), on="config_id", how="left")
    return runs.select(
        "config_id", "label", "sweep_id", "run_id", "rho", "seed", "step", "is_final", "top_dim", "top_active_units",
        "active_fraction", "top_kl", "kl_total", "elbo", "iw_bound",
        pl.col("layer_active_units").list.eval(pl.element().cast(pl.String)).list.join(",")
        .alias("layer_active_units_bottom_up"),
        pl.col("layer_kl").list.eval(pl.element().round(6).cast(pl.String)).list.join(",").alias("layer_kl_bottom_up"),
    ).sort("config_id", "rho", "seed")


def _publish(stage: Path, out_dir: Path) -> None:
    """Move the staged figures/, tables/ and report.html into ``out_dir``, report last.

    Only our own names inside ``out_dir`` are replaced, so pointing --out at a folder with other files is safe.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    for sub in ("figures", "tables"):
        new, cur = stage / sub, out_dir / sub
        old = None
        if cur.exists():
            old = out_dir / f".{sub}.old-{os.getpid()}"
            os.replace(cur, old)
        os.replace(new, cur)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    os.replace(stage / REPORT_NAME, out_dir / REPORT_NAME)


def check_options(level: float, n_boot: int, compare_boot: int, margin: float, max_budgets: int) -> None:
    """The analysis options, checked before anything is read (and before --watch starts waiting)."""
    if not 0.5 <= level < 1.0:
        raise AnalysisError(f"--level {level} is not a confidence level: give a value in [0.5, 1), e.g. 0.95")
    if n_boot < 50:
        raise AnalysisError(f"--n-boot {n_boot} is too few bootstrap resamples for an interval: use at least 50 "
                            f"(500 is the default)")
    if compare_boot < 0:
        raise AnalysisError(f"--compare-boot {compare_boot} is negative: give 0 (off) or a number of resamples")
    if not 0.0 < margin < 1.0:
        raise AnalysisError(f"--delta {margin} is not a margin on rho: give a positive value below 1, e.g. 0.02")
    if max_budgets < 2:
        raise AnalysisError(f"--max-budgets {max_budgets}: give at least 2 (the verdict compares the last two; "
                            f"'converged' needs three)")


def analyze(results: str | os.PathLike[str], out_dir: str | os.PathLike[str] | None = None, *,
            sweeps: list[str] | tuple[str, ...] | None = None, level: float = 0.95, n_boot: int = 500,
            compare_boot: int = 200, seed: int = 0, benchmark: str | os.PathLike[str] | None = None,
            plots_on: bool = True, write: bool = True, include_unfinished: bool = False, drop_nan: bool = False,
            delta: float = DEFAULT_MARGIN, max_budgets: int = DEFAULT_MAX_BUDGETS,
            budget_steps: list[int] | None = None) -> Report:
    """Analyse a results table and write the report; raise AnalysisError (nothing written) on bad input.

    ``results``: a local folder or ``s3://`` URL -- the sweep's storage folder, its Parquet root, or one sweep's
    folder (``analysis.storage``). ``out_dir``: see ``ResultsLocation.default_report_dir``. ``benchmark``: the
    trainer benchmark's JSON; by default ``<results>/benchmark.json`` is used when the results are local and it
    exists. ``delta``: the margin within which two rho_c are called similar (and twice the budget tolerance).
    ``write=False`` computes everything and writes nothing (for notebooks and benchmarks). ``budget_steps``: the
    rung steps of a ladder (``sweeps/ladder.py``), the budgets at which configurations whose runs ended at
    different steps are fitted (analysis/budget.py).
    """
    check_options(level, n_boot, compare_boot, delta, max_budgets)
    loc = locate(results)
    out_given = out_dir
    if write and out_given is not None and Path(out_given).exists() and not Path(out_given).is_dir():
        raise AnalysisError(f"--out {out_given} is a file: give a folder for the report")
    data = load_results(loc, sweeps)
    out = Path(out_given) if out_given is not None else loc.default_report_dir(data.sweeps)
    bench_path = Path(benchmark) if benchmark is not None else Path(loc.folder) / BENCHMARK_NAME
    bench = read_benchmark(bench_path) if (benchmark is not None or (not loc.remote and bench_path.is_file())) \
        else None

    queries = [final_runs_query(data, include_unfinished=include_unfinished), trial_counts_query(data),
               evaluations_query(data)]
    if plots_on:
        queries.append(curves_query(data))
    frames = collect(data, *queries)
    runs, counts = frames[0], frames[1].row(0, named=True)
    notes: list[str] = []
    runs = check_runs(runs, unfinished=int(counts["unfinished"]), include_unfinished=include_unfinished,
                      drop_nan=drop_nan, notes=notes, failed=int(counts["failed"]), reason=counts["reason"])
    configs = configurations(runs)
    notes += mixing_notes(runs, configs)
    critical = fit_configurations(runs, configs, level=level, n_boot=n_boot, seed=seed)
    report = Report(location=loc, out_dir=None, path=None, critical=critical,
                    latent=compare_latent_sizes(critical, margin=delta, n_resamples=compare_boot, seed=seed),
                    across={key: compare_across(critical, key, margin=delta) for key in ACROSS_KEYS},
                    budgets=fit_budgets(critical, frames[2], n_boot=n_boot, seed=seed, margin=delta,
                                        max_budgets=max_budgets, budget_steps=budget_steps),
                    max_budgets=max_budgets, tables=[], figures=[], n_rows=data.n_rows, n_files=data.n_files,
                    n_trials=int(counts["trials"]), sweeps=data.sweeps, notes=notes)
    report.extrapolations = {cid: series.extrapolation for cid, series in report.budgets.items()
                             if series.extrapolation is not None}
    summary = summarize_runs(critical.runs.join(configs.select("config_id", "top_dim", "total_latent", "label",
                                                               "family_label"),
                                                on="config_id", how="left", suffix="_cfg"))
    report.tables = [*report_tables(report), *(t for t in (table6(summary), table8(summary)) if t)]
    if bench is not None:
        report.tables += [t for t in (table9(bench), table10(bench)) if t]
        notes.append(f"Tables 9–10 from {bench_path}.")
    if not write:
        return report
    try:
        _write(report, frames[3] if plots_on else None, out)
    except OSError as exc:  # unwritable or full disk: say where and why, nothing half-written stays behind
        raise AnalysisError(f"cannot write the report to {out} ({exc.strerror or exc}): choose another --out "
                            f"or free some space") from None
    report.out_dir = out
    report.path = out / REPORT_NAME
    return report


def _write(report: Report, curves: pl.DataFrame | None, out: Path) -> None:
    """Stage figures, tables and report.html in a hidden folder beside ``out``; publish them only when complete."""
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.staging-", dir=out.parent))
    try:
        (stage / "figures").mkdir()
        (stage / "tables").mkdir()
        figures: dict[str, dict[str, list[tuple[Path, str]]]] = {}
        if curves is not None:
            figures = _make_figures(report, curves, stage / "figures")
        for t in report.tables:
            t.data.write_csv(stage / "tables" / f"{t.key}.csv")
        order_parameters(report.critical).write_csv(stage / "tables" / "order_parameters.csv")
        report.figures = [out / "figures" / p.name for sec in figures.values() for figs in sec.values()
                          for p, _ in figs]
        html = render_html(report, figures, report.tables)
        write_atomically(stage / REPORT_NAME, lambda tmp: tmp.write_text(html, encoding="utf-8"))
        _publish(stage, out)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _make_figures(report: Report, curves: pl.DataFrame, folder: Path) -> dict[str, dict[str, list[tuple[Path, str]]]]:
    """Every figure, saved in ``folder``: section -> heading -> [(path, caption)] (see render_html)."""
    crit = report.critical
    cfg = crit.configs
    curves = curves.join(cfg.select(*GROUP_KEYS, "config_id"), on=list(GROUP_KEYS), how="inner", nulls_equal=True)
    out: dict[str, dict[str, list[tuple[Path, str]]]] = {"latent": {}, "budget": {}, **{k: {} for k in ACROSS_KEYS}}

    def save(fig, name: str, caption: str) -> tuple[Path, str]:
        return plots.save(fig, folder / f"{plots.safe_name(name)}.png"), caption

    for fam_id in cfg["family_id"].unique(maintain_order=True).to_list():
        fam = cfg.filter(pl.col("family_id") == fam_id).sort("top_dim", "total_latent")
        label = fam["family_label"][0]
        runs = crit.runs.filter(pl.col("family_id") == fam_id)
        figs = [save(plots.transition_figure(runs, fam, crit.fits, curve="latent_dims", title=label, level=crit.level),
                     f"transition_{fam_id}", f"{label}: top-layer KL and active fraction vs ρ, fitted ρc, interval"),
                save(plots.layers_figure(runs, fam, title=label), f"layers_{fam_id}",
                     f"{label}: active units and KL of every layer vs ρ")]
        for c in fam.iter_rows(named=True):
            cur = curves.filter(pl.col("config_id") == c["config_id"])
            if cur.height:
                caption = f"{c['config_id']} {c['label']}: training curves"
                figs.append(save(plots.curves_figure(cur, title=caption), f"curves_{c['config_id']}", caption))
        budget = [(c["latent_dims"], report.budgets[c["config_id"]]) for c in fam.iter_rows(named=True)
                  if c["config_id"] in report.budgets]
        if budget:
            models = {c["latent_dims"]: report.extrapolations[c["config_id"]] for c in fam.iter_rows(named=True)
                      if c["config_id"] in report.extrapolations}
            out["budget"][label] = [save(plots.budget_figure(budget, title=label, level=crit.level, models=models),
                                         f"budget_{fam_id}", f"{label}: ρc against the training step")]
        out["latent"][label] = figs
    for key in ACROSS_KEYS:
        col, what = f"{key}_family_id", ACROSS_TITLES[key]
        for fam_id in cfg[col].unique(maintain_order=True).to_list():
            fam = cfg.filter(pl.col(col) == fam_id).sort(key)
            if fam.height < 2:
                continue
            label = fam[f"{key}_family_label"][0]
            runs = crit.runs.filter(pl.col(col) == fam_id)
            out[key][label] = [save(
                plots.transition_figure(runs, fam, crit.fits, curve=key, title=f"{label} across {what}",
                                        level=crit.level),
                f"{key}_{fam_id}", f"{label}: top-layer KL and active fraction vs ρ per {key}, fitted ρc")]
    return out

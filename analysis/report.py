"""``analyze()``: results folder in, report out — the one entry point the CLI and the sweep script call.

Report format (chosen to be opened and shared): one self-contained HTML file, ``report.html``, with every
figure embedded, so it can be mailed or attached as is; beside it ``figures/*.png`` (the same figures, for
papers and slides) and ``tables/*.csv`` (the numbers behind every table, for further work).

Nothing half-done is ever left looking complete: all inputs are validated and every number is computed before
anything is written; files are then written into a hidden staging folder next to the output and moved into
place at the end, ``report.html`` last. A failure removes the staging folder and leaves an earlier report as
it was.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from analysis import plots
from analysis.critical import GROUP_KEYS, CriticalResult, check_runs, configurations, final_runs_query, \
    fit_configurations, mixing_notes, trial_counts_query, derived_columns
from analysis.io import AnalysisError, Results, collect, load_results
from analysis.schema import SCHEMA_VERSION
from analysis.tables import Table, read_benchmark, summarize_runs, table6, table8, table9, table10

REPORT_NAME = "report.html"
BENCHMARK_NAME = "benchmark.json"


@dataclass
class Report:
    """What ``analyze`` produced. ``path`` is the HTML report; ``text()`` is what the CLI prints."""

    results_dir: Path
    out_dir: Path | None
    path: Path | None
    critical: CriticalResult
    tables: list[Table]
    figures: list[Path]
    n_rows: int
    n_files: int
    n_trials: int
    sweeps: list[str]
    notes: list[str] = field(default_factory=list)

    @property
    def rho_c(self) -> pl.DataFrame:
        """The rho_c table: one row per configuration."""
        return self.critical.table

    def text(self) -> str:
        return render_text(self)


def curves_query(results: Results) -> pl.LazyFrame:
    """Seed-averaged training curves per (configuration, rho, step), from every evaluation row (NaN ignored)."""
    metrics = ("iw_bound", "elbo", "top_kl", "top_active_units")
    keys = [*GROUP_KEYS, "rho", "step"]
    lf = results.lf.select(*[k for k in GROUP_KEYS if k != "eval_rho"], "rho", "rho_eval", "step", *metrics)
    lf = lf.with_columns(derived_columns()[1]).with_columns(
        [pl.col(c).cast(pl.Float64).fill_nan(None) for c in metrics])
    return lf.group_by(keys).agg(*[pl.col(c).mean() for c in metrics], pl.len().alias("n"))


def order_parameters(critical: CriticalResult) -> pl.DataFrame:
    """Every run's end-of-training order parameters (all seeds kept), per-layer lists bottom to top as strings."""
    runs = critical.runs.join(critical.configs.select("config_id", "label"), on="config_id", how="left")
    return runs.select(
        "config_id", "label", "sweep_id", "trial_id", "rho", "seed", "step", "is_final", "top_dim", "top_active_units",
        "active_fraction", "top_kl", "kl_total", "elbo", "iw_bound",
        pl.col("layer_active_units").list.eval(pl.element().cast(pl.String)).list.join(",")
        .alias("layer_active_units_bottom_up"),
        pl.col("layer_kl").list.eval(pl.element().round(6).cast(pl.String)).list.join(",").alias("layer_kl_bottom_up"),
    ).sort("config_id", "rho", "seed")


def _fmt(v: float | None, digits: int = 3) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def rho_c_table(critical: CriticalResult) -> Table:
    """The rho_c table as a Table (terminal, HTML and CSV share it)."""
    pct = f"{critical.level:.0%}"
    cols = ["Config", "Configuration", "Runs", "ρ values", "Seeds", "Status", "ρc", f"{pct} interval", "w",
            "Bracket (all active, all collapsed)", "Change point", "KL midpoint"]
    rows = []
    for r in critical.table.iter_rows(named=True):
        ci = "–" if r["ci_low"] is None else f"[{r['ci_low']:.3f}, {r['ci_high']:.3f}]"
        br = f"({_fmt(r['bracket_low'])}, {_fmt(r['bracket_high'])})"
        rows.append([r["config_id"], r["label"], str(r["n_runs"]), str(r["n_rho"]), str(r["n_seeds"]),
                     r["status"].replace("_", " "), _fmt(r["rho_c"]), ci, _fmt(r["width"], 4), br,
                     _fmt(r["changepoint"]), _fmt(r["kl_midpoint"])])
    data = critical.table.select("config_id", "label", "family_id", *GROUP_KEYS, "top_dim", "status", "rho_c", "ci_low",
                                 "ci_high", "width", "bracket_low", "bracket_high", "changepoint", "kl_midpoint",
                                 "n_runs", "n_rho", "n_seeds", "message")
    return Table("rho_c", "Critical ρ per configuration",
                 f"ρc: where half the top-layer units are active (binomial logistic fit on active/top_dim, all seeds); "
                 f"{pct} interval: bootstrap resampling whole seeds; bracket: last ρ where every seed is active, first "
                 f"ρ where every seed is collapsed; change point: model-free cross-check; KL midpoint: ρ where the "
                 f"median log top-layer KL is halfway down (a second cross-check, on the KL).", cols, rows, data)


def comparison_table(critical: CriticalResult) -> Table | None:
    c = critical.comparisons
    if c.height == 0:
        return None
    pct = f"{critical.level:.0%}"

    def iv(lo: float | None, hi: float | None, d: int) -> str:
        return "–" if lo is None else f"[{lo:.{d}f}, {hi:.{d}f}]"

    rows = [[r["family_label"], f"{r['narrow']} → {r['wide']}", "–" if r["delta_rho_c"] is None else f"{r['delta_rho_c']:+.3f}",
             iv(r["delta_ci_low"], r["delta_ci_high"], 3), r["rho_c_verdict"],
             _fmt(r["width_ratio"], 2), iv(r["ratio_ci_low"], r["ratio_ci_high"], 2), r["sharpness_verdict"]]
            for r in c.iter_rows(named=True)]
    return Table("latent_size_comparison", "ρc across latent sizes",
                 f"Consecutive latent sizes within one model (narrow → wide). Δρc = ρc(wide) − ρc(narrow), {pct} "
                 f"interval combined from the two ρc intervals (MOVER, Zou & Donner 2008); w ratio = w(wide)/w(narrow), "
                 f"{pct} interval from independent seed resamples of each (refitted), widened for few seeds like the ρc "
                 f"interval. A verdict other than 'no clear difference' needs the interval to exclude 0 (or 1).",
                 ["Model", "Latent sizes", "Δρc", f"{pct} interval", "ρc verdict", "w ratio", f"{pct} interval",
                  "Sharpness verdict"], rows, c)


def render_text(rep: Report) -> str:
    crit = rep.critical
    lines = [f"{rep.n_rows:,} rows, {rep.n_trials:,} trials, {rep.n_files:,} files, sweep(s) {', '.join(rep.sweeps)}",
             "", rho_c_table(crit).to_text()]
    problems = [r for r in crit.table.iter_rows(named=True) if r["status"] != "ok"]
    if problems:
        lines += ["", *(f"{r['config_id']} {r['label']}: {r['message']}" for r in problems)]
    if crit.trends:
        lines += ["", "Across latent sizes:", *(f"  {t}" for t in crit.trends.values())]
    cmp = comparison_table(crit)
    if cmp is not None:
        lines += ["", cmp.to_text()]
    if rep.notes:
        lines += ["", "Notes:", *(f"  - {n}" for n in rep.notes)]
    return "\n".join(lines)


def _html_table(t: Table) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in t.columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(v)}</td>" for v in row) + "</tr>" for row in t.rows)
    return (f"<h3>{html.escape(t.title)}</h3><p class='cap'>{html.escape(t.caption)}</p>"
            f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f"<figure><img alt='{html.escape(alt)}' src='data:image/png;base64,{data}'><figcaption>" \
           f"{html.escape(alt)} (figures/{html.escape(path.name)})</figcaption></figure>"


CSS = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em;font-size:13px}th,td{border:1px solid #ccc;padding:3px 7px;
text-align:left}th{background:#f2f2f2}img{max-width:100%}.cap{color:#555;font-size:13px;max-width:60em}
.note{background:#fff8e1;padding:.4em .8em;border-left:4px solid #f0b400;margin:.3em 0}
.bad{color:#a00}figure{margin:1em 0}figcaption{font-size:12px;color:#666}code{background:#f4f4f4;padding:0 3px}"""


def render_html(rep: Report, figures: dict[str, list[tuple[Path, str]]], tables: list[Table]) -> str:
    crit = rep.critical
    when = _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>ouvae analysis — "
             f"{html.escape(', '.join(rep.sweeps))}</title><style>{CSS}</style></head><body>",
             "<h1>Critical ρ analysis</h1>",
             f"<p>Results <code>{html.escape(str(rep.results_dir))}</code>, sweep(s) "
             f"<b>{html.escape(', '.join(rep.sweeps))}</b>: {rep.n_rows:,} rows from {rep.n_trials:,} trials "
             f"({rep.n_files:,} files, results schema v{SCHEMA_VERSION}). Generated {html.escape(when)}.</p>",
             "<p class='cap'>Order parameter per run: top-layer active units / top-layer size at the end of training "
             "(is_final). Every seed is kept; a configuration is every setting in CONFIG_KEYS plus the split and "
             "the evaluation ρ.</p>"]
    for n in rep.notes:
        parts.append(f"<div class='note'>{html.escape(n)}</div>")
    parts.append("<h2>Critical ρ</h2>")
    parts.append(_html_table(rho_c_table(crit)))
    for r in crit.table.iter_rows(named=True):
        cls = "" if r["status"] == "ok" else " class='bad'"
        parts.append(f"<p{cls}><b>{html.escape(r['config_id'])}</b> {html.escape(r['label'])}: "
                     f"{html.escape(r['message'] or '')}</p>")
    if crit.trends:
        parts.append("<h2>Across latent sizes</h2><ul>")
        parts += [f"<li>{html.escape(t)}</li>" for t in crit.trends.values()]
        parts.append("</ul>")
        cmp = comparison_table(crit)
        if cmp is not None:
            parts.append(_html_table(cmp))
    if figures:
        parts.append("<h2>Figures</h2>")
        for fam_label, figs in figures.items():
            parts.append(f"<h3>{html.escape(fam_label)}</h3>")
            main = [f for f in figs if not f[0].name.startswith("curves_")]
            curves = [f for f in figs if f[0].name.startswith("curves_")]
            parts += [_img(p, alt) for p, alt in main]
            if curves:
                parts.append("<details><summary>Training curves</summary>")
                parts += [_img(p, alt) for p, alt in curves]
                parts.append("</details>")
    parts.append("<h2>Tables</h2>")
    parts += [_html_table(t) for t in tables]
    parts.append("<p class='cap'>The numbers behind every table are in <code>tables/*.csv</code> next to this "
                 "file.</p></body></html>")
    return "\n".join(parts)


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


def analyze(results_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str] | None = None, *,
            sweeps: list[str] | tuple[str, ...] | None = None, level: float = 0.95, n_boot: int = 500,
            compare_boot: int = 200, seed: int = 0, benchmark: str | os.PathLike[str] | None = None,
            plots_on: bool = True, write: bool = True, include_unfinished: bool = False,
            drop_nan: bool = False) -> Report:
    """Analyse a results folder and write the report; raise AnalysisError (nothing written) on bad input.

    ``out_dir`` defaults to ``<results_dir>/report``. ``benchmark``: the trainer benchmark's JSON; by default
    ``<results_dir>/benchmark.json`` is used when it exists. ``write=False`` computes everything and writes
    nothing (for notebooks and benchmarks).
    """
    if not 0.5 <= level < 1.0:
        raise AnalysisError(f"--level {level} is not a confidence level: give a value in [0.5, 1), e.g. 0.95")
    if n_boot < 50:
        raise AnalysisError(f"--n-boot {n_boot} is too few bootstrap resamples for an interval: use at least 50 "
                            f"(500 is the default)")
    if compare_boot < 0:
        raise AnalysisError(f"--compare-boot {compare_boot} is negative: give 0 (off) or a number of resamples")
    root = Path(results_dir)
    out = Path(out_dir) if out_dir is not None else root / "report"
    if write and out.exists() and not out.is_dir():
        raise AnalysisError(f"--out {out} is a file: give a folder for the report")
    results = load_results(root, sweeps)
    bench_path = Path(benchmark) if benchmark is not None else root / BENCHMARK_NAME
    bench = read_benchmark(bench_path) if (benchmark is not None or bench_path.is_file()) else None

    queries = [final_runs_query(results, include_unfinished=include_unfinished), trial_counts_query(results)]
    if plots_on:
        queries.append(curves_query(results))
    frames = collect(results, *queries)
    runs, counts = frames[0], frames[1].row(0, named=True)
    notes: list[str] = []
    runs = check_runs(runs, unfinished=int(counts["unfinished"]), include_unfinished=include_unfinished,
                      drop_nan=drop_nan, notes=notes)
    configs = configurations(runs)
    notes += mixing_notes(runs, configs)
    critical = fit_configurations(runs, configs, level=level, n_boot=n_boot, compare_boot=compare_boot, seed=seed)
    summary = summarize_runs(critical.runs.join(configs.select("config_id", "top_dim", "total_latent", "label",
                                                               "family_label"),
                                                on="config_id", how="left", suffix="_cfg"))
    tables = [t for t in (rho_c_table(critical), comparison_table(critical), table6(summary), table8(summary)) if t]
    if bench is not None:
        tables += [t for t in (table9(bench), table10(bench)) if t]
        notes.append(f"Tables 9–10 from {bench_path}.")
    report = Report(results_dir=root, out_dir=None, path=None, critical=critical, tables=tables, figures=[],
                    n_rows=results.n_rows, n_files=results.n_files, n_trials=int(counts["trials"]),
                    sweeps=results.sweeps, notes=notes)
    if not write:
        return report

    try:
        _write(report, critical, frames[2] if plots_on else None, tables, out)
    except OSError as exc:  # unwritable or full disk: say where and why, nothing half-written stays behind
        raise AnalysisError(f"cannot write the report to {out} ({exc.strerror or exc}): choose another --out "
                            f"or free some space") from None
    report.out_dir = out
    report.path = out / REPORT_NAME
    return report


def _write(report: Report, critical: CriticalResult, curves: pl.DataFrame | None, tables: list[Table],
           out: Path) -> None:
    """Stage figures, tables and report.html in a hidden folder beside ``out``; publish them only when complete."""
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.staging-", dir=out.parent))
    try:
        (stage / "figures").mkdir()
        (stage / "tables").mkdir()
        figures: dict[str, list[tuple[Path, str]]] = {}
        if curves is not None:
            figures = _make_figures(critical, curves, stage / "figures")
        for t in tables:
            t.data.write_csv(stage / "tables" / f"{t.key}.csv")
        order_parameters(critical).write_csv(stage / "tables" / "order_parameters.csv")
        report.figures = [out / "figures" / p.name for figs in figures.values() for p, _ in figs]
        text = render_html(report, figures, tables)
        tmp = stage / f".{REPORT_NAME}.tmp"
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, stage / REPORT_NAME)
        _publish(stage, out)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _make_figures(critical: CriticalResult, curves: pl.DataFrame, folder: Path) -> dict[str, list[tuple[Path, str]]]:
    cfg = critical.configs
    curves = curves.join(cfg.select(*GROUP_KEYS, "config_id"), on=list(GROUP_KEYS), how="inner", nulls_equal=True)
    out: dict[str, list[tuple[Path, str]]] = {}
    for fam_id in cfg["family_id"].unique(maintain_order=True).to_list():
        fam = cfg.filter(pl.col("family_id") == fam_id)
        label = fam["family_label"][0]
        runs = critical.runs.filter(pl.col("family_id") == fam_id)
        figs = [
            (plots.plot_transition(runs, critical.table.filter(pl.col("family_id") == fam_id), critical.fits, folder / f"transition_{plots.safe_name(fam_id)}.png",
                                   title=label, level=critical.level),
             f"{label}: top-layer KL and active fraction vs ρ, fitted ρc with interval"),
            (plots.plot_layers(runs, fam, folder / f"layers_{plots.safe_name(fam_id)}.png", title=label),
             f"{label}: active units and KL of every layer vs ρ"),
        ]
        for c in fam.iter_rows(named=True):
            cur = curves.filter(pl.col("config_id") == c["config_id"])
            if cur.height:
                p = plots.plot_curves(cur, folder / f"curves_{plots.safe_name(c['config_id'])}.png",
                                      title=f"{c['config_id']} {c['label']}: training curves")
                figs.append((p, f"{c['config_id']} {c['label']}: training curves"))
        out[label] = figs
    return out

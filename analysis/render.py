"""The report's words: the rho_c, comparison and budget tables, the terminal text and the HTML page.

Why apart from ``analysis/report.py``: that module decides what is computed and written where; this one holds
what was computed (``Report``) and only formats it (every verdict arrives as data and is worded by the ``*_text``
functions of ``analysis/compare.py`` and ``analysis/budget.py``), so changing a sentence never touches a number.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from analysis.budget import BudgetSeries, Extrapolation, budget_short_text, budget_text, extrapolation_text
from analysis.compare import (interval_text, latent_family_text, ratio_text, rho_c_verdict_text,
                              sharpness_verdict_text)
from analysis.compare import AcrossPair, LatentFamily, SharpnessVerdict
from analysis.critical import ACROSS_TITLES, GROUP_KEYS, CriticalResult
from analysis.intervals import UNDETERMINED_SHORT, Interval, Undetermined
from analysis.onset import OnsetFit
from analysis.schema import SCHEMA_VERSION
from analysis.storage import ResultsLocation
from analysis.tables import Table
from analysis.transition import TransitionFit


@dataclass
class Report:
    """What ``analyze`` produced. ``path`` is the HTML report; ``text()`` is what the CLI prints."""

    location: ResultsLocation
    out_dir: Path | None
    path: Path | None
    critical: CriticalResult
    latent: list[LatentFamily]  # across latent sizes, per family
    across: dict[str, list[AcrossPair]]  # key of ACROSS_KEYS -> pairs (across datasets, across readings of T_rho)
    budgets: dict[str, BudgetSeries]  # config_id -> rho_c against the training budget
    max_budgets: int
    tables: list[Table]
    figures: list[Path]
    n_rows: int
    n_files: int
    n_trials: int
    sweeps: list[str]
    notes: list[str] = field(default_factory=list)
    # config_id -> the model rho_c(B) = rho_inf + a B^-gamma through 3+ budgets (a model, never a measurement)
    extrapolations: dict[str, Extrapolation] = field(default_factory=dict)

    @property
    def rho_c(self) -> pl.DataFrame:
        """The rho_c table: one row per configuration."""
        return self.critical.table

    def text(self) -> str:
        return render_text(self)


def _fmt(v: float | None, digits: int = 3) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def _width_text(fit: TransitionFit) -> str:
    """w, unless it sits at a bound of the fit (then the data do not determine it)."""
    if fit.w_at_floor or fit.w_at_ceiling:
        return f"not determined ({UNDETERMINED_SHORT[Undetermined.WIDTH_AT_LIMIT]})"
    return _fmt(fit.width, 4)


def onset_text(onset: OnsetFit | None) -> str:
    """The KL onset's interval, or a dash where no onset was located."""
    if onset is None or onset.rho_c is None:
        return "–"
    return interval_text(Interval(onset.ci_low, onset.ci_high, onset.interval_undetermined))


def rho_c_table(rep: Report) -> Table:
    """The rho_c table (terminal, HTML and CSV share it), with the training-budget verdict next to each number."""
    crit = rep.critical
    pct = f"{crit.level:.0%}"
    cols = ["Config", "Configuration", "Runs", "ρ values", "Seeds", "Status", "Units active", "ρc", f"{pct} interval",
            "Budget", "w", "Bracket", "Change point", "KL midpoint", "KL onset", f"{pct} interval"]
    rows = []
    for r in crit.table.iter_rows(named=True):
        fit = crit.fits[r["config_id"]]
        ci = interval_text(Interval(fit.ci_low, fit.ci_high, fit.interval_undetermined)) if fit.rho_c is not None \
            else "–"
        budget = rep.budgets.get(r["config_id"])
        onset = crit.onsets.get(r["config_id"])
        rows.append([r["config_id"], r["label"], str(r["n_runs"]), str(r["n_rho"]), str(r["n_seeds"]),
                     r["status"].replace("_", " "), r["direction"].removeprefix("active ") + " ρc", _fmt(r["rho_c"]),
                     ci, budget_short_text(budget) if budget else "–",
                     _width_text(fit), f"({_fmt(r['bracket_low'])}, {_fmt(r['bracket_high'])})",
                     _fmt(r["changepoint"]), _fmt(r["kl_midpoint"]), _fmt(r["kl_onset"]), onset_text(onset)])
    budget_col = pl.Series("budget", [rep.budgets[c].verdict.value if c in rep.budgets else None
                                      for c in crit.table["config_id"]], dtype=pl.String)
    at_limit = pl.Series("width_undetermined", [
        Undetermined.WIDTH_AT_LIMIT.value if crit.fits[c].w_at_floor or crit.fits[c].w_at_ceiling else None
        for c in crit.table["config_id"]], dtype=pl.String)
    data = crit.table.with_columns(budget_col, at_limit).select(
        "config_id", "label", "family_id", "dataset_family_id", *GROUP_KEYS, "top_dim", "status", "rho_c", "ci_low",
        "ci_high", "interval_undetermined", "budget", "width", "width_undetermined", "bracket_low", "bracket_high",
        "changepoint", "kl_midpoint", "direction", "kl_onset", "kl_onset_low", "kl_onset_high", "n_runs", "n_rho",
        "n_seeds", "message")
    return Table("rho_c", "Critical ρ per configuration",
                 f"ρc: where half the top-layer units are active (binomial logistic fit on active/top_dim, all seeds); "
                 f"{pct} interval: bootstrap resampling whole seeds, widened for few seeds ('not determined' when the "
                 f"data cannot bound it, with the reason); Budget: whether ρc has stopped moving with the training "
                 f"budget (see 'ρc against the training budget'); bracket: last ρ where every seed is active, first ρ "
                 f"where every seed is collapsed (for units active above ρc: all collapsed, all active); change "
                 f"point: model-free cross-check; KL midpoint: ρ where the median log top-layer KL is halfway down (a "
                 f"second cross-check, on the KL); KL onset: where the top-layer KL leaves zero (a hinge fit near ρc, "
                 f"with its seed-bootstrap interval): unbiased for a continuous transition, where the 0.01 active-unit "
                 f"threshold puts ρc on the active side (docs/calibration.md). Units active: the side of ρc "
                 f"on which the top layer is in use.", cols, rows, data)


def latent_table(rep: Report) -> Table | None:
    pairs = [p for fam in rep.latent for p in fam.pairs]
    if not pairs:
        return None
    crit = rep.critical
    pct = f"{crit.level:.0%}"
    cfg = {r["config_id"]: r for r in crit.configs.iter_rows(named=True)}
    rows, data = [], []
    for p in pairs:
        d, w = p.rho_c, p.width
        narrow, wide = cfg[p.narrow], cfg[p.wide]
        rows.append([narrow["family_label"], f"{narrow['latent_dims']} → {wide['latent_dims']}",
                     "–" if d.delta is None else f"{d.delta:+.3f}", interval_text(d.interval) if d.delta is not None
                     else "–", rho_c_verdict_text(d, "the wider latent"), ratio_text(w),
                     "–" if w.verdict is SharpnessVerdict.NO_VERDICT else interval_text(w.interval, 2),
                     sharpness_verdict_text(w)])
        data.append({"family_id": p.family_id, "family_label": narrow["family_label"], "narrow": narrow["latent_dims"],
                     "wide": wide["latent_dims"], "delta_rho_c": d.delta, "delta_ci_low": d.interval.low,
                     "delta_ci_high": d.interval.high, "rho_c_verdict": d.verdict.value, "margin": d.margin,
                     "width_ratio": w.ratio, "ratio_ci_low": w.interval.low, "ratio_ci_high": w.interval.high,
                     "sharpness_verdict": w.verdict.value,
                     "sharpness_undetermined": None if w.interval.determined else w.interval.undetermined.value})
    margin = pairs[0].rho_c.margin
    return Table("latent_size_comparison", "ρc across latent sizes",
                 f"Consecutive latent sizes within one model (narrow → wide). Δρc = ρc(wide) − ρc(narrow), {pct} "
                 f"interval combined from the two ρc intervals (MOVER, Zou & Donner 2008); 'similar' needs the whole "
                 f"interval inside ±{margin:g}, 'higher'/'lower' an interval that excludes 0. w ratio = "
                 f"w(wide)/w(narrow), {pct} interval from independent seed resamples of each (refitted), widened for "
                 f"few seeds like the ρc interval.",
                 ["Model", "Latent sizes", "Δρc", f"{pct} interval", "ρc verdict", "w ratio", f"{pct} interval",
                  "Sharpness verdict"], rows, pl.DataFrame(data, infer_schema_length=None))


def across_table(rep: Report, key: str) -> Table | None:
    """ρc of configurations that differ only in ``key`` (the dataset, or the reading of T_ρ), pair by pair."""
    pairs = rep.across.get(key)
    if not pairs:
        return None
    crit = rep.critical
    pct = f"{crit.level:.0%}"
    cfg = {r["config_id"]: r for r in crit.configs.iter_rows(named=True)}
    name = key.replace("_", " ")
    rows, data = [], []
    for p in pairs:
        a, b, d = cfg[p.a], cfg[p.b], p.rho_c
        rows.append([a[f"{key}_family_label"], a[key], b[key],
                     "–" if d.delta is None else f"{d.delta:+.3f}",
                     interval_text(d.interval) if d.delta is not None else "–",
                     rho_c_verdict_text(d, f"{name} {b[key]}")])
        data.append({f"{key}_family_id": p.family_id, "model": a[f"{key}_family_label"],
                     f"{key}_a": a[key], f"{key}_b": b[key], "config_a": p.a, "config_b": p.b,
                     "rho_c_a": crit.fits[p.a].rho_c, "rho_c_b": crit.fits[p.b].rho_c, "delta_rho_c": d.delta,
                     "delta_ci_low": d.interval.low, "delta_ci_high": d.interval.high, "verdict": d.verdict.value,
                     "undetermined": None if d.interval.determined else d.interval.undetermined.value,
                     "margin": d.margin})
    margin = pairs[0].rho_c.margin
    return Table(f"{key}_comparison", f"ρc across {ACROSS_TITLES[key]}",
                 f"Configurations that differ only in the {name}. Δρc = ρc(B) − ρc(A), {pct} interval combined from "
                 f"the two ρc intervals (MOVER). Verdicts: 'similar within ±{margin:g}' when the WHOLE interval lies "
                 f"inside ±{margin:g} (an equivalence statement, set with --delta); 'higher/lower for {name} B' when "
                 f"it excludes 0; 'not decided' when it contains 0 but reaches beyond ±{margin:g}; 'no verdict' "
                 f"when a ρc or its interval is missing (e.g. no transition in the swept range).",
                 ["Model", f"{name.capitalize()} A", f"{name.capitalize()} B", "Δρc", f"{pct} interval", "Verdict"],
                 rows, pl.DataFrame(data, infer_schema_length=None))


def budget_table(rep: Report) -> Table | None:
    if not rep.budgets:
        return None
    labels = dict(zip(rep.critical.configs["config_id"], rep.critical.configs["label"]))
    rows, data = [], []
    for cid, s in rep.budgets.items():
        points = []
        for step, f in zip(s.steps, s.fits):
            ci = (f"[{f.ci_low:.3f}, {f.ci_high:.3f}]" if f.ci_low is not None else
                  f"(not determined: {UNDETERMINED_SHORT[f.interval_undetermined]})" if f.interval_undetermined
                  else "")
            points.append(f"{step}: {_fmt(f.rho_c)} {ci}".strip() if f.rho_c is not None
                          else f"{step}: {f.status.value.replace('_', ' ')}")
            data.append({"config_id": cid, "label": labels[cid], "step": step, "status": f.status.value,
                         "rho_c": f.rho_c, "ci_low": f.ci_low, "ci_high": f.ci_high,
                         "interval_undetermined": None if f.interval_undetermined is None
                         else f.interval_undetermined.value, "verdict": s.verdict.value})
        model = s.extrapolation
        for row in data[len(data) - len(s.steps):]:
            row.update(rho_inf=model.rho_inf if model else None, rho_inf_low=model.rho_inf_low if model else None,
                       rho_inf_high=model.rho_inf_high if model else None)
        last = s.fits[-1] if s.fits else None
        rows.append([cid, labels[cid], "; ".join(points),
                     (f"{_fmt(last.rho_c)}" if last is not None and last.rho_c is not None else "–"),
                     extrapolated_text(model),
                     budget_text(s) + (f". {extrapolation_text(model)}" if model else "")])
    tol = next(iter(rep.budgets.values())).tolerance
    return Table("rho_c_by_budget", "ρc against the training budget",
                 f"ρc fitted at every evaluation step all runs of a configuration reached (at most {rep.max_budgets}, "
                 f"evenly spaced). Runs that ended at different steps (a ladder) are fitted at its rungs, each run "
                 f"with its latest evaluation. ρ∞: a MODEL, ρc = ρ∞ + a/t fitted through the last three budgets "
                 f"(t: steps, or under a decaying lr the steps at the initial lr; interval from the fit), an "
                 f"extrapolation, not a measurement. Converged: at least three budgets, the intervals at the last two "
                 f"overlap and ρc moved by at most ±{tol:g} (half the similarity margin), and ρ∞ lies within "
                 f"±{tol:g} of the last budget's ρc; otherwise ρc is still rising or falling with training, or not "
                 f"decided (two budgets only, or a fit missing).",
                 ["Config", "Configuration", "ρc at step", "ρc last", "ρ∞ (model)", "Verdict"], rows,
                 pl.DataFrame(data, infer_schema_length=None))


def extrapolated_text(model: Extrapolation | None) -> str:
    """The trend's limit and its interval, for the column next to the last budget's ρc."""
    if model is None:
        return "– (needs three budgets)"
    interval = (f" [{model.rho_inf_low:.3f}, {model.rho_inf_high:.3f}]" if model.rho_inf_low is not None else "")
    return f"{model.rho_inf:.3f}{interval}"


def report_tables(rep: Report) -> list[Table]:
    tables = (rho_c_table(rep), latent_table(rep), *(across_table(rep, k) for k in ACROSS_TITLES), budget_table(rep))
    return [t for t in tables if t]


# ----------------------------------------------------------------------------------------------- terminal
def render_text(rep: Report) -> str:
    crit = rep.critical
    lines = [f"{rep.n_rows:,} rows, {rep.n_trials:,} runs, {rep.n_files:,} files, sweep(s) {', '.join(rep.sweeps)}",
             "", rho_c_table(rep).to_text()]
    problems = [r for r in crit.table.iter_rows(named=True) if r["status"] != "ok" or r["interval_undetermined"] is not None]
    if problems:
        lines += ["", *(f"{r['config_id']} {r['label']}: {r['message']}" for r in problems)]
    moving = [(cid, s) for cid, s in rep.budgets.items() if s.still_moving]
    if moving:
        lines += ["", "ρc still moving with the training budget:",
                  *(f"  {cid}: {budget_text(s)}" for cid, s in moving)]
    if rep.latent:
        lines += ["", "Across latent sizes:", *(f"  {latent_family_text(f, crit)}" for f in rep.latent)]
        t = latent_table(rep)
        if t is not None:
            lines += ["", t.to_text()]
    for key, title in ACROSS_TITLES.items():
        if rep.across.get(key):
            lines += ["", f"Across {title}:", across_table(rep, key).to_text()]
    if rep.notes:
        lines += ["", "Notes:", *(f"  - {n}" for n in rep.notes)]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------- HTML
def _html_table(t: Table) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in t.columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(v)}</td>" for v in row) + "</tr>" for row in t.rows)
    return (f"<h3>{html.escape(t.title)}</h3><p class='cap'>{html.escape(t.caption)}</p>"
            f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f"<figure><img alt='{html.escape(alt)}' src='data:image/png;base64,{data}'><figcaption>" \
           f"{html.escape(alt)} (figures/{html.escape(path.name)})</figcaption></figure>"


def _figures(figs: list[tuple[Path, str]]) -> list[str]:
    main = [f for f in figs if not f[0].name.startswith("curves_")]
    curves = [f for f in figs if f[0].name.startswith("curves_")]
    out = [_img(p, alt) for p, alt in main]
    if curves:
        out += ["<details><summary>Training curves</summary>", *(_img(p, alt) for p, alt in curves), "</details>"]
    return out


CSS = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em;font-size:13px}th,td{border:1px solid #ccc;padding:3px 7px;
text-align:left}th{background:#f2f2f2}img{max-width:100%}.cap{color:#555;font-size:13px;max-width:60em}
.note{background:#fff8e1;padding:.4em .8em;border-left:4px solid #f0b400;margin:.3em 0}
.bad{color:#a00}figure{margin:1em 0}figcaption{font-size:12px;color:#666}code{background:#f4f4f4;padding:0 3px}"""


def render_html(rep: Report, figures: dict[str, dict[str, list[tuple[Path, str]]]], tables: list[Table]) -> str:
    """The self-contained page. ``figures``: section ("latent", a key of ACROSS_TITLES, "budget") -> heading ->
    figures."""
    crit = rep.critical
    when = _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    sweeps = html.escape(", ".join(rep.sweeps))
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>ouvae analysis — {sweeps}</title>"
             f"<style>{CSS}</style></head><body>", "<h1>Critical ρ analysis</h1>",
             f"<p>Results <code>{html.escape(rep.location.given)}</code> ({rep.location.kind.value}), sweep(s) "
             f"<b>{sweeps}</b>: {rep.n_rows:,} rows from {rep.n_trials:,} runs ({rep.n_files:,} files, results "
             f"schema v{SCHEMA_VERSION}). Generated {html.escape(when)}.</p>",
             "<p class='cap'>Order parameter per run: top-layer active units / top-layer size at the end of training "
             "(is_final). Every seed is kept; a configuration is every setting in CONFIG_KEYS plus the split and "
             "the evaluation ρ.</p>"]
    parts += [f"<div class='note'>{html.escape(n)}</div>" for n in rep.notes]
    parts += ["<h2>Critical ρ</h2>", _html_table(rho_c_table(rep))]
    for r in crit.table.iter_rows(named=True):
        cls = "" if r["status"] == "ok" and r["interval_undetermined"] is None else " class='bad'"
        parts.append(f"<p{cls}><b>{html.escape(r['config_id'])}</b> {html.escape(r['label'])}: "
                     f"{html.escape(r['message'] or '')}</p>")
    moving = [(cid, s) for cid, s in rep.budgets.items() if s.still_moving]
    if moving:
        parts.append("<h3>ρc still moving with the training budget</h3><ul>")
        parts += [f"<li class='bad'><b>{html.escape(cid)}</b> {html.escape(budget_text(s))}</li>" for cid, s in moving]
        parts.append("</ul>")
    sections = [("latent", "Across latent sizes", [latent_family_text(f, crit) for f in rep.latent], latent_table),
                *((key, f"Across {title}", [], lambda r, k=key: across_table(r, k))
                  for key, title in ACROSS_TITLES.items()),
                ("budget", "ρc against the training budget", [], budget_table)]
    for key, heading, sentences, table in sections:
        t = table(rep)
        if not sentences and t is None and not figures.get(key):
            continue
        parts.append(f"<h2>{html.escape(heading)}</h2>")
        if sentences:
            parts += ["<ul>", *(f"<li>{html.escape(s)}</li>" for s in sentences), "</ul>"]
        if t is not None:
            parts.append(_html_table(t))
        for sub, figs in figures.get(key, {}).items():
            parts += [f"<h3>{html.escape(sub)}</h3>", *_figures(figs)]
    parts.append("<h2>Tables</h2>")
    shown = ("rho_c", "latent_size_comparison", "rho_c_by_budget", *(f"{k}_comparison" for k in ACROSS_TITLES))
    parts += [_html_table(t) for t in tables if t.key not in shown]
    parts.append("<p class='cap'>The numbers behind every table are in <code>tables/*.csv</code> next to this "
                 "file.</p></body></html>")
    return "\n".join(parts)

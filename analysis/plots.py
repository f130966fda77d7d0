"""Figures: the transition per family (like the appendix's Figures 5-6, one curve per latent size or per
dataset), active units per layer, training curves, and rho_c against the training budget.

Why matplotlib's object API (``Figure`` + Agg canvas) and never pyplot: no display is needed or touched, nothing
global is switched (importing analysis inside a notebook keeps the notebook's backend), and figures are freed
as soon as they are saved. Each ``*_figure`` function returns the Figure (a caller can read the plotted data back
from its axes); ``save`` writes it as PNG.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import polars as pl
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from analysis.budget import BudgetSeries, Extrapolation, budget_short_text
from analysis.closed_form import linear_gaussian_case
from analysis.intervals import UNDETERMINED_SHORT
from analysis.transition import ACTIVE_ABOVE, STATUS_OK, TransitionFit

DPI = 110


def _new(ncols: int, width: float = 5.2, height: float = 4.0) -> tuple[Figure, list]:
    fig = Figure(figsize=(width * ncols, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, list(axes)


def save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, format="png", dpi=DPI)
    return path


def _colors(n: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    return [cmap(x) for x in (np.linspace(0.0, 0.85, n) if n > 1 else [0.3])]


def _jitter(n: int, span: float, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-span, span, size=n)


def verbatim(s: str) -> str:
    """A user's string (a dataset name like ``npy:$HOME/x``) as matplotlib shows it verbatim: ``$`` escaped (no
    mathtext), and no leading underscore (the legend would drop the entry)."""
    s = s.replace("$", r"\$")
    return f" {s}" if s.startswith("_") else s


def fit_label(name: str, fit: TransitionFit | None) -> str:
    """Legend entry of one curve: its name and rho_c with the interval, or why there is none."""
    if fit is None:
        return f"{verbatim(name)}: no fit"
    if fit.status != STATUS_OK:
        where = {"above": f" (ρc > {fit.rho_max:g})", "below": f" (ρc < {fit.rho_min:g})"}.get(fit.beyond or "", "")
        return f"{verbatim(name)}: {fit.status.value.replace('_', ' ')}{where}"
    if fit.ci_low is None:
        why = UNDETERMINED_SHORT[fit.interval_undetermined]
        return f"{verbatim(name)}: ρc = {fit.rho_c:.3f}, interval not determined ({why})"
    return f"{verbatim(name)}: ρc = {fit.rho_c:.3f} [{fit.ci_low:.3f}, {fit.ci_high:.3f}]"


def transition_figure(runs: pl.DataFrame, configs: pl.DataFrame, fits: Mapping[str, TransitionFit], *,
                      curve: str, title: str, level: float = 0.95) -> Figure:
    """Top-layer KL vs rho (left), the fraction of active top units with the fitted logistic (middle), and the
    valid bound L_k on log p(x) vs rho (right; of the model in ``bound_model``), with the smoothed training objective
    dotted where it differs from the bound's ELBO (the posterior reading: no likelihood, shown to make a leak visible).

    ``configs``: the configurations to draw, in legend order; ``curve``: the column naming each curve
    (``latent_dims`` within a latent-size family, ``dataset`` within a dataset family).

    One colour per configuration; dots are single runs (seeds, slightly jittered), the left lines the median KL
    over seeds; on the right the fitted logistic; the vertical line and band are the fitted rho_c and its
    interval (no band when the interval is not determined). A configuration of the linear-Gaussian model
    (``analysis.closed_form.linear_gaussian_case``) also gets its exact answer, in black: the optimum's KL (left),
    the active fraction the 0.01 criterion gives at the optimum (right) and the closed-form rho_c (dotted).
    """
    fig, (ax_kl, ax_m, ax_b) = _new(3)
    rho_all = runs["rho"].unique().sort().to_numpy()
    step = float(np.min(np.diff(rho_all))) if len(rho_all) > 1 else 0.01
    grid = np.linspace(rho_all.min(), rho_all.max(), 400) if len(rho_all) else np.array([])
    for color, cfg in zip(_colors(configs.height), configs.iter_rows(named=True)):
        sub = runs.filter(pl.col("config_id") == cfg["config_id"])
        fit = fits.get(cfg["config_id"])
        name = str(cfg[curve])
        rho = sub["rho"].to_numpy()
        jit = rho + _jitter(len(rho), 0.12 * step, 1)
        med = sub.group_by("rho").agg(pl.col("top_kl").median(), pl.col("active_fraction").mean(),
                                      pl.col("iw_bound").median(), pl.col("smoothed_elbo").median(),
                                      (pl.col("smoothed_elbo") != pl.col("elbo")).any().alias("leaky")).sort("rho")
        ax_b.scatter(jit, sub["iw_bound"].to_numpy(), s=10, color=color, alpha=0.45, linewidths=0)
        ax_b.plot(med["rho"], med["iw_bound"], color=color, lw=1.8, label=verbatim(name))
        if med["leaky"].any():
            ax_b.plot(med["rho"], med["smoothed_elbo"], color=color, lw=1.0, ls=":",
                      label=f"{verbatim(name)}: smoothed objective (not a bound)")
        ax_kl.scatter(jit, sub["top_kl"].to_numpy(), s=10, color=color, alpha=0.45, linewidths=0)
        ax_kl.plot(med["rho"], med["top_kl"], color=color, lw=1.8, label=fit_label(name, fit))
        ax_m.scatter(jit, sub["active_fraction"].to_numpy(), s=10, color=color, alpha=0.45, linewidths=0)
        case = linear_gaussian_case(sub.row(0, named=True)) if sub.height else None
        if case is not None and grid.size:
            exact = np.clip(grid, 1e-6, 1.0)
            ax_kl.plot(exact, case.top_kl(exact), color="black", lw=1.0, ls="-.",
                       label=f"{verbatim(name)}: closed form, ρc = "
                             f"{', '.join(f'{v:.3f}' for v in np.unique(np.round(case.critical_rhos(), 4)))}")
            ax_m.plot(exact, case.active_fraction(exact), color="black", lw=1.0, ls="-.",
                      label=f"{verbatim(name)}: closed form (0.01 criterion)")
            for ax in (ax_kl, ax_m):
                for rc in case.critical_rhos()[np.isfinite(case.critical_rhos())]:
                    ax.axvline(rc, color="black", ls=":", lw=1.0)
        if fit is not None and fit.status == STATUS_OK:
            sign = -1.0 if fit.direction == ACTIVE_ABOVE else 1.0
            z = np.clip(sign * (grid - fit.rho_c) / fit.width, -500, 500)
            ax_m.plot(grid, 1.0 / (1.0 + np.exp(z)), color=color, lw=1.8, label=verbatim(name))
            for ax in (ax_kl, ax_m):
                ax.axvline(fit.rho_c, color=color, ls="--", lw=1.0)
                if fit.ci_low is not None:
                    ax.axvspan(fit.ci_low, fit.ci_high, color=color, alpha=0.15, lw=0)
        else:
            ax_m.plot(med["rho"], med["active_fraction"], color=color, lw=1.0, ls=":",
                      label=f"{verbatim(name)} (no fit)")
    ax_kl.set_xlabel("ρ")
    ax_kl.set_ylabel("top-layer KL (nats)")
    ax_kl.set_title("Top-layer KL at the end of training")
    ax_kl.legend(fontsize=8, title=f"{curve.replace('_', ' ')}, ρc [{level:.0%} interval]", title_fontsize=8)
    ax_m.set_xlabel("ρ")
    ax_m.set_ylabel("fraction of active top-layer units")
    ax_m.set_ylim(-0.05, 1.05)
    ax_m.set_title("Order parameter and logistic fit")
    ax_m.legend(fontsize=8)
    ax_b.set_xlabel("ρ")
    ax_b.set_ylabel("nats per example")
    ax_b.set_title("Valid bound L_k on log p(x) (median over seeds)")
    ax_b.legend(fontsize=7)
    fig.suptitle(verbatim(title), fontsize=11)
    return fig


def layers_figure(runs: pl.DataFrame, configs: pl.DataFrame, *, title: str) -> Figure:
    """Per-layer order parameters vs rho, one column per latent size: active units (top row) and KL (bottom row).

    Lines are means over seeds, bands the range over seeds; z1 is the layer next to x, the last one the top.
    """
    order = configs.sort("top_dim", "total_latent")
    ncols = order.height
    fig = Figure(figsize=(4.2 * ncols, 6.6), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    grid = fig.subplots(2, ncols, squeeze=False)
    for col, cfg in enumerate(order.iter_rows(named=True)):
        sub = runs.filter(pl.col("config_id") == cfg["config_id"])
        per = (sub.select("rho", "layer_active_units", "layer_kl")
               .with_columns(pl.int_ranges(pl.col("layer_active_units").list.len()).alias("layer"))
               .explode("layer_active_units", "layer_kl", "layer")
               .group_by("rho", "layer")
               .agg(*[e for c in ("layer_active_units", "layer_kl") for e in
                      (pl.col(c).mean().alias(f"{c}_mean"), pl.col(c).min().alias(f"{c}_lo"),
                       pl.col(c).max().alias(f"{c}_hi"))])
               .sort("layer", "rho"))
        layers = per["layer"].drop_nulls().unique().sort().to_list()
        for row, (metric, ylabel) in enumerate((("layer_active_units", "active units"), ("layer_kl", "KL (nats)"))):
            ax = grid[row][col]
            for color, layer in zip(_colors(len(layers)), layers):
                d = per.filter(pl.col("layer") == layer)
                name = f"z{layer + 1}" + (" (top)" if layer == layers[-1] else "")
                ax.plot(d["rho"], d[f"{metric}_mean"], color=color, lw=1.6, marker="o", ms=3, label=name)
                ax.fill_between(d["rho"].to_numpy(), d[f"{metric}_lo"].to_numpy(), d[f"{metric}_hi"].to_numpy(),
                                color=color, alpha=0.12, lw=0)
            if metric == "layer_kl":
                vals = per[f"{metric}_lo"].drop_nulls()
                if vals.len() and vals.min() > 0:
                    ax.set_yscale("log")
            ax.set_xlabel("ρ")
            ax.set_ylabel(f"{ylabel} per layer")
            if row == 0:
                ax.set_title(cfg["latent_dims"], fontsize=10)
            ax.legend(fontsize=7)
    fig.suptitle(f"{verbatim(title)}: per-layer active units and KL at the end of training (mean; band = range over "
                 f"seeds)", fontsize=11)
    return fig


def curves_figure(curves: pl.DataFrame, *, title: str) -> Figure:
    """Training curves of one configuration: bound and top-layer KL over optimizer steps, one line per rho.

    ``curves``: rows (rho, step) with seed-averaged iw_bound/elbo and top_kl. Colour encodes rho (colour bar).
    """
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    fig, (ax_b, ax_kl) = _new(2)
    rhos = curves["rho"].unique().sort().to_list()
    norm = Normalize(vmin=min(rhos), vmax=max(rhos) if max(rhos) > min(rhos) else min(rhos) + 1e-6)
    cmap = colormaps["viridis"]
    use_iw = curves["iw_bound"].drop_nulls().len() > 0
    bound = "iw_bound" if use_iw else "elbo"
    for rho in rhos:
        d = curves.filter(pl.col("rho") == rho).sort("step")
        ax_b.plot(d["step"], d[bound], color=cmap(norm(rho)), lw=1.2)
        ax_kl.plot(d["step"], d["top_kl"], color=cmap(norm(rho)), lw=1.2)
    ax_b.set_xlabel("step")
    ax_b.set_ylabel("importance-weighted bound (nats)" if use_iw else "ELBO (nats)")
    ax_b.set_title("Bound on the evaluation split (mean over seeds)")
    ax_kl.set_xlabel("step")
    ax_kl.set_ylabel("top-layer KL (nats)")
    ax_kl.set_title("Top-layer KL (mean over seeds)")
    top = curves["top_kl"].drop_nulls()
    if top.len() and top.min() > 0 and top.max() / top.min() > 100:
        ax_kl.set_yscale("log")
    fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=[ax_b, ax_kl], label="ρ", shrink=0.9)
    fig.suptitle(verbatim(title), fontsize=11)
    return fig


def budget_figure(series: Sequence[tuple[str, BudgetSeries]], *, title: str, level: float = 0.95,
                  models: dict[str, Extrapolation] | None = None) -> Figure:
    """rho_c (with its interval as an error bar) against the training step, one line per configuration.

    ``series``: (name, BudgetSeries) in legend order. A budget without an interval is an open marker without a
    bar; one without a fitted rho_c is left out. The legend says whether rho_c has converged. ``models``: name ->
    the extrapolation rho_c(B) = rho_inf + a B^-gamma, drawn dotted and labelled as a model, with rho_inf's
    interval as a band at the right edge.
    """
    fig, (ax,) = _new(1, width=6.4, height=4.2)
    for color, (name, s) in zip(_colors(len(series)), series):
        ok = [(st, f) for st, f in zip(s.steps, s.fits) if f.status == STATUS_OK]
        steps = np.array([st for st, _ in ok], dtype=np.float64)
        rho_c = np.array([f.rho_c for _, f in ok])
        ax.plot(steps, rho_c, color=color, lw=1.4, label=f"{verbatim(name)}: {budget_short_text(s)}")
        bounded = [(st, f) for st, f in ok if f.ci_low is not None]
        if bounded:
            x = np.array([st for st, _ in bounded], dtype=np.float64)
            y = np.array([f.rho_c for _, f in bounded])
            err = np.array([[f.rho_c - f.ci_low for _, f in bounded], [f.ci_high - f.rho_c for _, f in bounded]])
            ax.errorbar(x, y, yerr=err, fmt="o", color=color, ms=4, capsize=3, lw=1.0)
        unbounded = [(st, f.rho_c) for st, f in ok if f.ci_low is None]
        if unbounded:
            ax.plot(*zip(*unbounded), "o", mfc="none", color=color, ms=5)
        model = (models or {}).get(name)
        if model is not None and len(steps):
            b = np.geomspace(steps.min(), 4 * steps.max(), 60)
            ax.plot(b, model.at(b), ":", color=color, lw=1.2,
                    label=f"model (not measured): ρ∞ = {model.rho_inf:.3f}")
            if model.rho_inf_low is not None:
                ax.axhspan(model.rho_inf_low, model.rho_inf_high, xmin=0.97, xmax=1.0, color=color, alpha=0.3)
    ax.set_xlabel("training step (evaluation every run reached)")
    ax.set_ylabel(f"ρc ({level:.0%} interval)")
    ax.set_title("ρc against the training budget")
    ax.legend(fontsize=8)
    fig.suptitle(verbatim(title), fontsize=11)
    return fig


def safe_name(text: str) -> str:
    """A file-name-safe version of an id or a user's string (e.g. a dataset named ``idx:kmnist``)."""
    out = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in text)
    return out.lstrip(".")[:80] or "figure"

"""Tests of the analysis package on results the tests write: synthetic sweeps with a known critical rho, and a
small hand-written folder whose table values are computed by hand below.

Coverage of the rho_c interval over replicates is tested with analysis/transition.py, not here.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from analysis import plots
from analysis.__main__ import main
from analysis.budget import BudgetVerdict, budget_short_text, budget_text
from analysis.compare import (RhoCVerdict, SharpnessVerdict, interval_text, latent_family_text,
                              sharpness_verdict_text)
from analysis.intervals import Undetermined
from analysis.io import load_results
from analysis.render import render_text
from analysis.report import analyze
from analysis.schema import SCHEMA, SCHEMA_VERSION, conform
from analysis.testing.synthetic import make_synthetic_results

REPO = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
FAST = ["--n-boot", "200", "--compare-boot", "60"]


def run_cli(*args: str) -> tuple[int, str, str]:
    """Run the CLI in-process (an unexpected exception would fail the test, as a traceback would)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main([str(a) for a in args])
    return rc, out.getvalue(), err.getvalue()


def no_report_left(out: Path) -> bool:
    staging = list(out.parent.glob(f".{out.name}.staging-*"))
    return not out.exists() and not staging


def write_trial(root: Path, sweep: str, trial: str, rows: list[dict]) -> Path:
    folder = root / f"sweep_id={sweep}"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{trial}.parquet"
    pq.write_table(conform(pa.Table.from_pylist([{"sweep_id": sweep, "run_id": trial, **r} for r in rows])), path)
    return path


# ------------------------------------------------------------------------------------ known rho_c, CLI + report
@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth") / "results"
    truth = make_synthetic_results(root, n_evals=3, salt=3)  # rho_c 0.95 / 0.92 / 0.89 for 10 / 20 / 40 units
    out = root.parent / "report"
    rc, stdout, stderr = run_cli(root, "--out", out, *FAST)
    return truth, out, rc, stdout, stderr


def test_cli_recovers_known_rho_c_per_latent_size(synth):
    truth, out, rc, stdout, stderr = synth
    assert rc == 0, stderr
    table = pl.read_csv(out / "tables" / "rho_c.csv")
    assert sorted(table["latent_dims"].to_list()) == sorted(dims for _, dims in truth.rho_c)
    for r in table.iter_rows(named=True):
        assert r["status"] == "ok", r["message"]
        assert abs(r["rho_c"] - truth.rho_c[(r["dataset"], r["latent_dims"])]) < 0.015, r
        assert r["ci_low"] <= r["rho_c"] <= r["ci_high"]
        assert r["n_seeds"] == 4 and r["n_rho"] == 11 and r["budget"] == "converged"
        assert f"{r['rho_c']:.3f}" in stdout  # the printed table carries the estimate


def test_wider_latents_have_lower_rho_c_when_true(synth):
    _, out, rc, stdout, _ = synth
    cmp = pl.read_csv(out / "tables" / "latent_size_comparison.csv")
    assert cmp["rho_c_verdict"].to_list() == ["lower"] * 2
    assert (cmp["delta_ci_high"] < 0).all()
    assert "rho_c is lower for wider latents at every step" in stdout and "lower for the wider latent" in stdout


def _analyze(root: Path, **kw):
    return analyze(root, write=False, plots_on=False, n_boot=200, **{"compare_boot": 0, **kw})


def test_report_figures_and_tables_written(synth):
    _, out, rc, _, _ = synth
    assert rc == 0
    pngs = sorted((out / "figures").glob("*.png"))
    kinds = sorted({p.name.rsplit("_", 1)[0] for p in pngs})
    assert kinds == ["budget", "curves", "layers", "transition"]  # one dataset: no datasets_*.png
    assert len([p for p in pngs if p.name.startswith("curves_")]) == 3  # one per configuration
    for p in pngs:
        assert p.read_bytes()[:8] == PNG_MAGIC
        assert p.stat().st_size > 20_000, p
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == len(pngs)  # self-contained: every figure embedded
    for heading in ("Critical ρ per configuration", "Across latent sizes", "ρc against the training budget",
                    "Table 6", "Table 8"):
        assert heading in html
    for name in ("rho_c", "latent_size_comparison", "rho_c_by_budget", "table6", "table8", "order_parameters"):
        assert (out / "tables" / f"{name}.csv").stat().st_size > 0
    assert not (out / "tables" / "dataset_comparison.csv").exists()
    assert not list(out.parent.glob(".report.staging-*"))  # the staging folder is gone after publishing


def test_wider_latents_higher_rho_c_is_reported_as_such(tmp_path):
    make_synthetic_results(tmp_path / "res", rho_c={10: 0.89, 20: 0.92, 40: 0.95}, n_evals=1, salt=5)
    rep = _analyze(tmp_path / "res")
    (family,) = rep.latent
    assert [p.rho_c.verdict for p in family.pairs] == [RhoCVerdict.HIGHER] * 2
    assert "unlike the paper" in latent_family_text(family, rep.critical)
    # compare_boot=0: no interval on the width ratio, and the verdict says so instead of guessing
    assert all(p.width.verdict is SharpnessVerdict.NOT_DETERMINED and
               p.width.interval.undetermined is Undetermined.NOT_COMPUTED for p in family.pairs)


def test_size_without_transition_in_range_still_bounds_the_comparison(tmp_path):
    # the narrow model never collapses in [0.8, 1]: its rho_c lies above the range, so the wider one is lower
    make_synthetic_results(tmp_path / "res", latent_sizes=(10, 40), rho_c={10: 1.5, 40: 0.9}, n_evals=1, salt=6)
    rep = _analyze(tmp_path / "res")
    assert rep.critical.table["status"].to_list() == ["no_transition", "ok"]
    assert rep.critical.table["beyond"].to_list() == ["above", None]
    (pair,) = rep.latent[0].pairs
    assert pair.rho_c.verdict is RhoCVerdict.LOWER and pair.rho_c.from_bounds and pair.rho_c.delta is None
    assert "10-10-10-10: > 1" in latent_family_text(rep.latent[0], rep.critical)


def test_equal_rho_c_across_latent_sizes_is_similar_within_the_margin(tmp_path):
    make_synthetic_results(tmp_path / "res", rho_c=0.92, n_evals=1, salt=2)
    rep = _analyze(tmp_path / "res", compare_boot=60)
    pairs = rep.latent[0].pairs
    assert [p.rho_c.verdict for p in pairs] == [RhoCVerdict.SIMILAR] * 2
    assert all(-0.02 <= p.rho_c.interval.low and p.rho_c.interval.high <= 0.02 for p in pairs)
    assert "rho_c is similar within ±0.02 at every step" in latent_family_text(rep.latent[0], rep.critical)


def test_sharper_transition_for_wider_latent_is_detected(tmp_path):
    rhos = [round(0.80 + 0.01 * i, 3) for i in range(21)]
    make_synthetic_results(tmp_path / "res", latent_sizes=(10, 40), rho_c=0.9, width={10: 0.04, 40: 0.012},
                           rhos=rhos, n_seeds=4, n_evals=1, salt=4)
    rep = _analyze(tmp_path / "res", compare_boot=100)
    (pair,) = rep.latent[0].pairs
    assert pair.width.verdict is SharpnessVerdict.SHARPER, pair
    assert pair.width.interval.high < 1 and abs(pair.width.ratio - 0.3) < 0.15
    assert "the transition sharpens (smaller w) with width" in latent_family_text(rep.latent[0], rep.critical)


def test_width_ratio_the_resamples_cannot_bound_is_not_determined_never_0_or_1e12(tmp_path):
    """The narrow size is a step sharper than the rho spacing for one of three seeds: every resample drawing that
    seed three times (1 in 27, more than the 2.5% tail) has w at the floor of the fit, so the ratio's interval is
    not bounded; the report says "not determined" and why, with no number standing in for 0 or infinity."""
    from analysis.compare import width_ratio
    from analysis.testing.synthetic import noisy_runs
    from analysis.transition import fit_transition

    grid = np.round(np.linspace(0.8, 1.0, 21), 4)
    R, S, K = noisy_runs(grid, 3, rho_c=0.9, width=0.02, seed_sd=0.0, salt=1)
    K = np.where(S == 0, np.where(R <= 0.9, 10, 0), K)  # seed 0: a perfect step
    narrow = fit_transition(R, S, K, 10, rng=0)
    R, S, K = noisy_runs(grid, 3, rho_c=0.9, width=0.02, seed_sd=0.0, salt=2)
    wide = fit_transition(R, S, K, 10, rng=0)
    assert narrow.status == wide.status == "ok" and not narrow.w_at_floor
    w = width_ratio(narrow, wide, n_resamples=200, level=0.95, rng=np.random.default_rng(0))
    assert w.verdict is SharpnessVerdict.NOT_DETERMINED and w.interval.undetermined is Undetermined.WIDTH_AT_LIMIT
    assert w.interval.low is None and w.interval.high is None and 0.1 < w.ratio < 10
    assert sharpness_verdict_text(w) == "not determined (w at its limit)"
    assert interval_text(w.interval, 2) == "not determined (w at its limit)"


def test_step_sharper_than_the_spacing_prints_no_ratio(tmp_path):
    make_synthetic_results(tmp_path / "res", latent_sizes=(10, 40), rho_c=0.9, width={10: 0.0005, 40: 0.02},
                           seed_sd=0.0, n_evals=1, salt=9)
    rc, stdout, _ = run_cli(tmp_path / "res", "--no-plots", *FAST)
    assert rc == 0
    cmp = pl.read_csv(tmp_path / "res" / "report" / "tables" / "latent_size_comparison.csv")
    assert cmp["sharpness_verdict"].to_list() == ["not_determined"]
    assert cmp["width_ratio"].to_list() == [None] and cmp["sharpness_undetermined"].to_list() == ["width_at_limit"]
    assert "not determined (w at its limit)" in stdout
    assert not re.search(r"\[0\.00, |\d{6,}\.\d", stdout)  # no 0.00 ends, no huge numbers


# ------------------------------------------------------------------------------------------- across datasets
@pytest.mark.parametrize("shift, seed_sd, n_seeds, verdict", [
    (0.0, 0.002, 6, RhoCVerdict.SIMILAR),
    (0.05, 0.002, 4, RhoCVerdict.HIGHER),
    (-0.05, 0.002, 4, RhoCVerdict.LOWER),
    (0.0, 0.02, 3, RhoCVerdict.NOT_DECIDED),
], ids=["equal", "higher", "lower", "too-noisy"])
def test_across_datasets_verdict(tmp_path, shift, seed_sd, n_seeds, verdict):
    """Two datasets (one a user's data set named like idx:kmnist) whose rho_c differ by ``shift``."""
    make_synthetic_results(tmp_path / "res", latent_sizes=(10,), datasets={"digits": 0.0, "idx:kmnist": shift},
                           rho_c=0.92, seed_sd=seed_sd, n_seeds=n_seeds, n_evals=1, salt=7)
    rep = _analyze(tmp_path / "res")
    (pair,) = rep.across['dataset']
    d = pair.rho_c
    assert d.verdict is verdict, (d, rep.critical.table.select("dataset", "rho_c", "ci_low", "ci_high"))
    assert d.delta == pytest.approx(rep.critical.fits[pair.b].rho_c - rep.critical.fits[pair.a].rho_c)
    if verdict is RhoCVerdict.SIMILAR:
        assert -0.02 <= d.interval.low and d.interval.high <= 0.02
    elif verdict is RhoCVerdict.NOT_DECIDED:  # contains 0, reaches beyond the margin
        assert d.interval.low < 0 < d.interval.high and (d.interval.low < -0.02 or d.interval.high > 0.02)
    else:
        assert abs(d.delta - shift) < 0.015 and (d.interval.low > 0 if shift > 0 else d.interval.high < 0)
    text = render_text(rep)
    expected = {RhoCVerdict.SIMILAR: "similar within ±0.02", RhoCVerdict.HIGHER: "higher for dataset idx:kmnist",
                RhoCVerdict.LOWER: "lower for dataset idx:kmnist",
                RhoCVerdict.NOT_DECIDED: "not decided (the interval straddles ±0.02)"}[verdict]
    assert "Across datasets:" in text and expected in text and "digits" in text


def test_across_datasets_margin_is_an_option_and_a_missing_fit_gives_no_verdict(tmp_path):
    root = tmp_path / "res"
    make_synthetic_results(root, latent_sizes=(10,), datasets={"digits": 0.0, "npy:mine": 0.012}, rho_c=0.92,
                           seed_sd=0.002, n_seeds=6, n_evals=1, salt=8)
    assert _analyze(root, delta=0.03).across['dataset'][0].rho_c.verdict is RhoCVerdict.SIMILAR
    assert _analyze(root, delta=0.005).across['dataset'][0].rho_c.verdict is not RhoCVerdict.SIMILAR
    # a third dataset swept at two rho values only: no fit, so no verdict for its pairs
    make_synthetic_results(root, sweep_id="thin", latent_sizes=(10,), datasets=["fashion_mnist"], rhos=(0.9, 1.0),
                           n_seeds=6, n_evals=1)
    rep = _analyze(root)
    missing = [p for p in rep.across['dataset'] if "fashion_mnist" in (rep.critical.table.filter(
        pl.col("config_id").is_in([p.a, p.b]))["dataset"].to_list())]
    assert len(rep.across['dataset']) == 3 and len(missing) == 2
    assert all(p.rho_c.verdict is RhoCVerdict.NO_VERDICT and p.rho_c.interval.undetermined is Undetermined.NO_FIT
               for p in missing)
    assert "no verdict (no fit)" in render_text(rep)


# ----------------------------------------------------------------------------------------- training budget
@pytest.mark.parametrize("drift, verdict", [(0.0, BudgetVerdict.CONVERGED), (0.08, BudgetVerdict.FALLING),
                                            (-0.08, BudgetVerdict.RISING)], ids=["stable", "falling", "rising"])
def test_rho_c_against_the_budget(tmp_path, drift, verdict):
    """rho_c at fraction f of training = 0.92 + drift * (1 - f), 4 evaluations: a drift of 0.08 moves it by 0.02
    in the last budget step, twice the tolerance (half the default margin 0.02)."""
    truth = make_synthetic_results(tmp_path / "res", latent_sizes=(10,), rho_c=0.92, rho_c_drift=drift, n_seeds=6,
                                   n_evals=4, steps_per_eval=500, seed_sd=0.002, salt=11)
    rep = _analyze(tmp_path / "res")
    (series,) = rep.budgets.values()
    assert series.steps == list(truth.steps) == [500, 1000, 1500, 2000]
    assert series.verdict is verdict, budget_text(series)
    expected = [0.92 + drift * (1 - f) for f in (0.25, 0.5, 0.75, 1.0)]
    assert [f.rho_c for f in series.fits] == pytest.approx(expected, abs=0.008)
    assert series.fits[-1] is rep.critical.fits[series.config_id]  # the last budget is the main fit itself
    text = render_text(rep)
    row = next(line for line in text.splitlines() if line.startswith("c01 "))
    if verdict is BudgetVerdict.CONVERGED:
        assert "converged" in row and "still moving" not in text
    else:  # said next to the number, and explained below the table
        assert f"still {verdict.value} ({series.shift:+.3f} since step 1500)" in row
        assert "ρc still moving with the training budget:" in text and "train longer" in text


def test_budget_with_unequal_run_lengths_uses_the_steps_every_run_reached(tmp_path):
    root = tmp_path / "res"
    make_synthetic_results(root, latent_sizes=(10,), n_seeds=3, n_evals=3, salt=1)
    cut = sorted(root.glob("sweep_id=*/*.parquet"))[0]  # one run ends after its second evaluation
    _rewrite(cut, lambda t: t.slice(0, 2).set_column(t.schema.get_field_index("is_final"), "is_final",
                                                     pa.array([False, True])))
    rep = _analyze(root, max_budgets=2)
    (series,) = rep.budgets.values()
    assert series.steps == [1000, 2000]


def test_a_ladders_runs_are_fitted_at_its_rungs_each_with_its_latest_evaluation(tmp_path):
    """Runs of unequal length with the ladder's rung steps: at a rung a run that stopped earlier contributes its
    last evaluation, one that went on its evaluation at that step; the last rung is the main fit."""
    root = tmp_path / "res"
    make_synthetic_results(root, latent_sizes=(10,), n_seeds=3, n_evals=3, salt=1)
    files = sorted(root.glob("sweep_id=*/*.parquet"))
    stopped = files[:4]  # these runs end at their first evaluation (a ladder stopped them after rung 0)
    for f in stopped:
        _rewrite(f, lambda t: _set(t.slice(0, 1), "is_final", [True]))
    rep = _analyze(root, budget_steps=[1000, 2000, 3000])
    (series,) = rep.budgets.values()
    assert series.steps == [1000, 2000, 3000]
    assert series.fits[-1] is rep.critical.fits[series.config_id]
    assert [f.n_runs for f in series.fits] == [len(files)] * 3  # every run at every rung, carried forward
    assert _analyze(root).budgets[series.config_id].steps == [1000]  # without rungs: steps every run reached


def _series(steps, rho_c, half=0.01, decay=0, power=1.0):
    """A BudgetSeries of fits at `steps` with intervals rho_c +- half (a number or one per budget), its
    extrapolation and its verdict as fit_budgets makes them."""
    from analysis.budget import BudgetSeries, budget_verdict, extrapolate
    from analysis.transition import STATUS_OK, TransitionFit

    halves = half if isinstance(half, (list, tuple)) else [half] * len(steps)
    fits = [TransitionFit(STATUS_OK, "", r, r - h, r + h, 0.01, None, None, None, 20, 10, 4)
            for r, h in zip(rho_c, halves)]
    schedule = dict(lr_decay_steps=decay, lr_decay_power=power)
    model = extrapolate(BudgetSeries("c01", list(steps), fits, BudgetVerdict.NOT_DECIDED, None, 0.01, **schedule))
    verdict, shift = budget_verdict(fits, model, 0.01)
    return BudgetSeries("c01", list(steps), fits, verdict, shift, 0.01, model, **schedule)


def test_extrapolation_is_a_power_law_with_an_interval_through_the_last_three_budgets():
    from analysis.budget import extrapolation_text

    budgets = [1000, 2000, 4000, 8000]
    truth = [0.93 - 0.05 * (1000 / b) for b in budgets]
    series = _series(budgets, truth, half=0.004)
    model = series.extrapolation
    assert model.rho_inf == pytest.approx(0.93, abs=1e-4) and model.gamma == pytest.approx(1.0, abs=0.01)
    assert model.budgets == (2000, 4000, 8000) and model.rho_inf_low < 0.93 < model.rho_inf_high
    assert model.at(np.array(budgets)) == pytest.approx(truth, abs=1e-4)
    assert extrapolation_text(model).startswith("model, not a measurement: ρc = ρ∞ + a·t^−γ through steps 2000, "
                                                "4000, 8000 (B in steps) gives ρ∞ = 0.930")
    assert _series(budgets[:2], truth[:2]).extrapolation is None  # a trend needs three budgets


def test_under_a_decaying_lr_the_trend_is_fitted_in_the_effective_time():
    """lr / (1 + k/d)^p: the k-th update counts (1 + k/d)^-p steps; a doubling of the steps then adds less and
    less time, so the same shifts in steps extrapolate farther."""
    from analysis.budget import effective_steps

    k = np.arange(1, 4001)
    for d, p in ((240, 1.0), (240, 0.5), (1000, 0.75)):
        exact = np.cumsum((1 + k / d) ** -p)[[999, 1999, 3999]]
        assert effective_steps([1000, 2000, 4000], d, p) == pytest.approx(exact, abs=p / (24 * d) + 1e-9)
    assert list(effective_steps([1000, 2000], 0)) == [1000, 2000]  # a constant lr: the steps themselves
    steps, rho_c = [480, 960, 1920], [0.936, 0.945, 0.950]
    constant, decaying = _series(steps, rho_c), _series(steps, rho_c, decay=240)
    assert decaying.extrapolation.rho_inf > constant.extrapolation.rho_inf + 0.005
    assert constant.verdict is BudgetVerdict.CONVERGED
    assert decaying.verdict is BudgetVerdict.RISING and "trend's limit" in budget_short_text(decaying)


# The digits ladder with a decaying lr (BENCHMARKS.md, "Converged ρ_c: the ladder"; issue 24): 4x10 at 240, 480,
# 960, 1920 steps (lr_decay_steps=240), called converged by the two-rung rule after +0.008 that followed +0.027.
ISSUE_4X10 = ([240, 480, 960, 1920], [0.877, 0.920, 0.947, 0.955], [0.005, 0.015, 0.0215, 0.016])


@pytest.mark.parametrize("decay", [240, 0], ids=["as-trained", "read-as-constant-lr"])
def test_the_issues_series_is_not_converged_although_its_last_two_rungs_agree(decay):
    steps, rho_c, half = ISSUE_4X10
    series = _series(steps, rho_c, half=half, decay=decay)
    assert abs(series.shift) <= 0.01  # the old rule's test passes ...
    assert series.verdict is BudgetVerdict.RISING, budget_text(series)  # ... the trend says it is still rising
    assert series.extrapolation.rho_inf > rho_c[-1] + 0.01
    assert "still rising" in budget_text(series) and "trend's limit" in budget_text(series)
    # its last three rungs alone (+0.027, then +0.008) are not converged either
    assert _series(steps[1:], rho_c[1:], half=half[1:], decay=decay).verdict is BudgetVerdict.RISING


POWER_STEPS = [1000 * 2 ** i for i in range(5)]


@pytest.mark.parametrize("steps, rho_c, verdict", [
    ([1000, 2000, 4000, 8000], [0.930, 0.936, 0.937, 0.937], BudgetVerdict.CONVERGED),  # settled
    ([1000, 2000, 4000], [0.9362, 0.9371, 0.9368], BudgetVerdict.CONVERGED),  # flat within noise
    ([1000, 2000, 4000], [0.950, 0.942, 0.939], BudgetVerdict.CONVERGED),  # settling from above: limit ~0.935
    ([1000, 2000], [0.936, 0.937], BudgetVerdict.NEEDS_BUDGETS),  # two rungs agree: no trend yet
    ([1000, 2000], [0.900, 0.937], BudgetVerdict.RISING),  # two rungs that disagree need no third
    # rho_c = 0.98 -+ 0.08 (1000 / B)^0.5: power laws whose limit lies 0.02 from the last rung, which moved 0.008
    (POWER_STEPS, [0.98 - 0.08 * (1000 / b) ** 0.5 for b in POWER_STEPS], BudgetVerdict.RISING),
    (POWER_STEPS, [0.90 + 0.08 * (1000 / b) ** 0.5 for b in POWER_STEPS], BudgetVerdict.FALLING),
], ids=["settled", "flat", "settling-from-above", "two-rungs", "two-rungs-rising", "power-law-far",
        "power-law-far-falling"])
def test_the_verdict_on_synthetic_series(steps, rho_c, verdict):
    series = _series(steps, rho_c, half=0.004)
    assert series.verdict is verdict, budget_text(series)
    if verdict is BudgetVerdict.NEEDS_BUDGETS:
        assert budget_short_text(series) == "not decided (needs a third budget)"
    if steps is POWER_STEPS:  # the last two rungs agree: the trend decides
        assert abs(series.shift) <= 0.01 and abs(series.extrapolation.rho_inf - rho_c[-1]) > 0.015


# ------------------------------------------------------------------------------------------- what figures show
@pytest.mark.slow
def test_transition_figure_plots_the_runs_and_fits_and_user_dataset_names_verbatim(tmp_path):
    root = tmp_path / "res"
    make_synthetic_results(root, latent_sizes=(10,), datasets={"digits": 0.0, "npy:$HOME/my data": 0.03,
                                                               "_private": 0.0}, n_seeds=3, n_evals=1, salt=2)
    rep = _analyze(root)
    crit = rep.critical
    fam = crit.configs.sort("dataset")
    fig = plots.transition_figure(crit.runs, fam, crit.fits, curve="dataset", title="t")
    ax_kl, ax_m = fig.axes[:2]
    medians = [line for line in ax_kl.get_lines() if line.get_linestyle() == "-"]
    assert len(medians) == 3
    for line, cfg in zip(medians, fam.iter_rows(named=True)):
        runs = crit.runs.filter(pl.col("config_id") == cfg["config_id"])
        expect = runs.group_by("rho").agg(pl.col("top_kl").median()).sort("rho")
        assert list(line.get_xdata()) == expect["rho"].to_list()
        assert list(line.get_ydata()) == pytest.approx(expect["top_kl"].to_list())
    labels = [t.get_text() for t in ax_kl.get_legend().get_texts()]
    assert labels[0].startswith(r" _private: ρc = ") and labels[1].startswith("digits: ρc = ")
    assert labels[2].startswith(r"npy:\$HOME/my data: ρc = ")  # shown verbatim, not as mathtext
    rho_c_lines = sorted(line.get_xdata()[0] for line in ax_m.get_lines() if line.get_linestyle() == "--")
    assert rho_c_lines == pytest.approx(sorted(f.rho_c for f in crit.fits.values()))
    fig.canvas.draw()  # renders (a mathtext error in a label would raise here)
    # the report writes it under an id, never under the user's name
    rc, _, stderr = run_cli(root, "--out", tmp_path / "rep", *FAST)
    assert rc == 0, stderr
    names = sorted(p.name for p in (tmp_path / "rep" / "figures").glob("dataset_*.png"))
    assert names == ["dataset_d01.png"]
    assert plots.safe_name("idx:kmnist") == "idx_kmnist" and plots.safe_name("../x") == "_x"


def test_budget_figure_plots_rho_c_and_interval_per_step(tmp_path):
    make_synthetic_results(tmp_path / "res", latent_sizes=(10,), rho_c=0.9, rho_c_drift=0.08, n_seeds=4, n_evals=3,
                           salt=3)
    rep = _analyze(tmp_path / "res")
    (cid, series), = rep.budgets.items()
    fig = plots.budget_figure([("10-10-10-10", series)], title="t")
    ax = fig.axes[0]
    line = ax.get_lines()[0]
    assert list(line.get_xdata()) == series.steps
    assert list(line.get_ydata()) == pytest.approx([f.rho_c for f in series.fits])
    assert ax.get_legend().get_texts()[0].get_text() == f"10-10-10-10: {budget_short_text(series)}"
    bars = ax.containers[0]  # the error bars: from ci_low to ci_high at each step
    segs = bars.lines[2][0].get_segments()
    ends = [end for seg in segs for end in (seg[0][1], seg[1][1])]
    assert ends == pytest.approx([end for f in series.fits for end in (f.ci_low, f.ci_high)])


def test_no_transition_in_range_is_said_plainly(tmp_path):
    root = tmp_path / "res"
    make_synthetic_results(root, rho_c=1.3, latent_sizes=(10, 20), n_evals=1)  # every run fully active
    rc, stdout, _ = run_cli(root, "--no-plots", *FAST)
    assert rc == 0
    table = pl.read_csv(root / "report" / "tables" / "rho_c.csv")
    assert table["status"].to_list() == ["no_transition"] * 2
    assert "no transition" in stdout and "sweep higher rho" in stdout
    assert "cannot compare latent sizes" in stdout


def test_too_thin_data_is_said_plainly(tmp_path):
    root = tmp_path / "res"
    make_synthetic_results(root, rhos=(0.9, 1.0), latent_sizes=(10,), n_seeds=2, n_evals=1)
    rc, stdout, _ = run_cli(root, "--no-plots", *FAST)
    assert rc == 0
    assert "too few points" in stdout and "sweep more rho" in stdout


def test_a_population_member_that_failed_is_left_out_and_named(tmp_path):
    """A diverged member of a population has no final row; its last row carries the failure. It is not fitted,
    also with --include-unfinished, and the report says how many failed and why."""
    root = tmp_path / "res"
    make_synthetic_results(root, latent_sizes=(10,), n_evals=1)
    folder = next(root.glob("sweep_id=*"))
    ok = pq.read_table(next(folder.glob("*.parquet"))).to_pylist()[0]
    reason = "TrainingStalled: 5 consecutive steps had a non-finite loss or gradient"
    failed = {**ok, "run_id": "pop-m003", "population_id": "pop", "member": 3, "is_final": False, "step": 7,
              "top_active_units": 10, "rho": 0.99, "failure": reason}
    pq.write_table(conform(pa.Table.from_pylist([failed])), folder / "pop.parquet")
    for extra in ((), ("--include-unfinished",)):
        rc, stdout, _ = run_cli(root, "--no-plots", *FAST, *extra)
        assert rc == 0 and f"1 run(s) failed during training and are left out (e.g. {reason})" in stdout
        runs = pl.read_csv(root / "report" / "tables" / "order_parameters.csv")
        assert "pop-m003" not in runs["run_id"].to_list()


@pytest.mark.parametrize("version", [1, 2])
def test_a_table_of_an_older_version_is_read_with_its_trial_id_as_run_id(tmp_path, version):
    """Versions 1 and 2 called the run's id trial_id (renamed run_id in 3, analysis.schema.RENAMED): such files are
    read with that column as run_id, next to files of today's version."""
    from analysis.io import load_results

    root = tmp_path / "res"
    make_synthetic_results(root, latent_sizes=(10,), n_evals=1)
    folder = next(root.glob("sweep_id=*"))
    today = pq.read_table(next(folder.glob("*.parquet"))).to_pylist()[0]
    old_columns = [c for c in today if c not in ("run_id", "smooth_space", "bound_model", "smoothed_elbo",
                                                 "smoothed_kl_total")]
    old = {**{c: today[c] for c in old_columns}, "trial_id": "old-run", "schema_version": version}
    schema = pa.schema([*(SCHEMA.field(c) for c in old_columns), pa.field("trial_id", pa.string())])
    pq.write_table(pa.Table.from_pylist([old], schema=schema), folder / "old-run.parquet")
    df = load_results(root).lf.collect()
    assert "trial_id" not in df.columns and "old-run" in df["run_id"].to_list()
    assert df["run_id"].null_count() == 0


def test_rows_from_before_the_lr_decay_read_as_a_constant_lr(tmp_path):
    """Version 4 added lr_decay_steps; a v3 file has no such column: its runs trained at a constant lr (0), and
    they stay in the configuration of today's constant-lr runs."""
    from analysis.io import load_results

    root = tmp_path / "res"
    make_synthetic_results(root, latent_sizes=(10,), n_evals=1)
    folder = next(root.glob("sweep_id=*"))
    today = pq.read_table(next(folder.glob("*.parquet")))
    v3 = today.drop_columns(["lr_decay_steps", "lr_decay_power"]).to_pylist()
    v3 = [{**row, "run_id": f"v3-{i}", "schema_version": 3} for i, row in enumerate(v3)]
    schema = pa.schema([f for f in SCHEMA if f.name not in ("lr_decay_steps", "lr_decay_power")])
    pq.write_table(pa.Table.from_pylist(v3, schema=schema), folder / "v3.parquet")
    df = load_results(root).lf.collect()
    assert df.filter(pl.col("run_id").str.starts_with("v3-")).height == len(v3)
    assert df["lr_decay_steps"].null_count() == 0 and set(df["lr_decay_steps"]) == {0}
    assert df["lr_decay_power"].null_count() == 0 and set(df["lr_decay_power"]) == {1.0}


# ---------------------------------------------------------------------------------- tables on a hand fixture
def _hand_rows(dims: str, rho: float, seed: int, iw: float, top_kl: float, kl_total: float, au: list[int],
               lkl: list[float]) -> dict:
    return dict(schema_version=SCHEMA_VERSION, dataset="digits", split="validation", architecture="mlp", n_layers=2,
                latent_dims=dims, hidden_units=8, smooth="both", smooth_space="posterior", bound_model="hvae",
                smooth_samples=5, objective="elbo", iw_samples=1,
                beta_schedule="constant", free_bits=0.0, lr=1e-3, batch_size=10, rho=rho, rho_eval=rho, seed=seed,
                epoch=1, step=10, is_final=True, iw_bound=iw, iw_k=100, elbo=iw - 1.0, top_kl=top_kl,
                kl_total=kl_total, top_active_units=au[-1], layer_active_units=au, layer_kl=lkl)


@pytest.fixture(scope="module")
def hand(tmp_path_factory):
    root = tmp_path_factory.mktemp("hand") / "results"
    # (dims, rho, seed, L_100, top KL, total KL, active units bottom->top, layer KL bottom->top)
    data = [("3-3", 0.9, 0, -90.0, 2.0, 5.0, [3, 2], [3.0, 2.0]), ("3-3", 0.9, 1, -92.0, 1.0, 4.0, [3, 1], [3.0, 1.0]),
            ("3-3", 1.0, 0, -95.0, 0.1, 3.1, [2, 0], [3.0, 0.1]), ("3-3", 1.0, 1, -96.0, 0.3, 3.3, [3, 0], [3.0, 0.3]),
            ("2-2", 0.9, 0, -100.0, 1.2, 2.2, [2, 1], [1.0, 1.2]), ("2-2", 0.9, 1, -101.0, 0.8, 1.8, [2, 2], [1.0, 0.8]),
            ("2-2", 1.0, 0, -103.0, 0.05, 1.05, [1, 0], [1.0, 0.05]), ("2-2", 1.0, 1, -104.0, 0.15, 1.15, [2, 0], [1.0, 0.15])]
    for i, d in enumerate(data):
        write_trial(root, "hand", f"t{i}", [_hand_rows(*d)])
    bench = [{"model": "mlp-4x40", "method": "VAE", "time_per_epoch_s": 4.0, "peak_memory_bytes": 2 * 2**30,
              "device": "cpu", "batch_size": 100},
             {"model": "mlp-4x40", "method": "VAE", "time_per_epoch_s": 4.4, "peak_memory_bytes": int(2.12 * 2**30),
              "device": "cpu", "batch_size": 100},
             {"model": "mlp-4x40", "method": "IWAE", "time_per_epoch_s": 4.4, "peak_memory_bytes": int(8.59 * 2**30),
              "device": "cpu", "batch_size": 100},
             {"model": "mlp-4x40", "method": "OU-VAE", "time_per_epoch_s": 4.6, "peak_memory_bytes": int(3.74 * 2**30),
              "device": "cpu", "batch_size": 100}]
    (root / "benchmark.json").write_text(json.dumps(bench))
    return root


def _table(rep, key):
    return next(t for t in rep.tables if t.key == key)


def test_table6_matches_hand_computed_values(hand):
    rep = analyze(hand, write=False, plots_on=False, n_boot=100)
    t6 = _table(rep, "table6")
    assert t6.columns == ["Config", "Model", "Seeds", "V. ELBO (L_100)", "Bound of", "Top KLD",
                          "Active units (top→bottom)"]
    rows = {(r[0], r[1]): r[2:] for r in t6.rows}
    # mean of (-90, -92) = -91, sd = sqrt(2) = 1.41; top KL (2 + 1) / 2; active units top (2+1)/2, bottom 3
    assert rows[("digits L=2 3-3", "OU-VAE (ρ = 0.9)")] == ["2", "-91.00 ± 1.41", "hvae", "1.500", "1.5,3"]
    assert rows[("digits L=2 3-3", "VAE")] == ["2", "-95.50 ± 0.71", "hvae", "0.200", "0,2.5"]
    assert rows[("digits L=2 2-2", "OU-VAE (ρ = 0.9)")] == ["2", "-100.50 ± 0.71", "hvae", "1.000", "1.5,2"]
    assert rows[("digits L=2 2-2", "VAE")] == ["2", "-103.50 ± 0.71", "hvae", "0.100", "0,1.5"]


def test_older_rows_whose_likelihood_was_no_bound_keep_it_only_as_the_smoothed_objective(tmp_path):
    """Schema v2 rows: one reading (posterior), elbo/iw_bound measured with the generative maps smoothed. Where that
    smoothing was on they were no bound, so they move to smoothed_elbo and the bound columns become null."""
    root = tmp_path / "res"
    for i, (rho, smooth) in enumerate([(0.9, "both"), (0.9, "encoder"), (1.0, "both")]):
        row = _hand_rows("3-3", rho, i, -90.0, 2.0, 5.0, [3, 2], [3.0, 2.0])
        row.update(schema_version=2, smooth=smooth)
        del row["smooth_space"], row["bound_model"]
        write_trial(root, "old", f"t{i}", [row])
    got = {r["run_id"]: r for r in load_results(root).lf.collect().iter_rows(named=True)}
    assert got["t0"]["smooth_space"] == "posterior" and got["t0"]["bound_model"] is None
    assert got["t0"]["iw_bound"] is None and got["t0"]["smoothed_elbo"] == -91.0 and got["t0"]["smoothed_kl_total"] == 5.0
    for kept in ("t1", "t2"):  # generative maps unsmoothed: the plain HVAE's bounds all along
        assert got[kept]["bound_model"] == "hvae" and got[kept]["iw_bound"] == -90.0


def test_a_smoothed_objective_above_the_valid_bound_is_flagged_as_a_leak(tmp_path):
    root = tmp_path / "res"
    for i, rho in enumerate((0.5, 0.5, 0.7, 0.7, 1.0, 1.0)):
        row = _hand_rows("3-3", rho, i, -90.0, 2.0 * (rho < 1), 5.0, [3, 3 * (rho < 1)], [3.0, 2.0])
        row.update(smoothed_elbo=-80.0 if rho == 0.5 else -91.0, smoothed_kl_total=-2.0 if rho == 0.5 else 5.0)
        write_trial(root, "leak", f"t{i}", [row])
    rep = analyze(root, write=False, plots_on=False, n_boot=50)
    (note,) = [n for n in rep.notes if "leaks past the latents" in n]
    assert note.startswith("2 run(s)") and "rho 0.5" in note


def test_runs_from_before_schema_v6_are_flagged_for_their_noisy_active_units(tmp_path, hand):
    """Multi-layer runs written before v6 counted Monte Carlo noise as active units (ouvae.metrics.active_units):
    the report says so; runs of today's schema, and one-layer runs (no sampled layer below), get no such note."""
    assert not [n for n in analyze(hand, write=False, plots_on=False, n_boot=50).notes if "schema v6" in n]
    root = tmp_path / "res"
    for i, rho in enumerate((0.5, 0.5, 0.7, 0.7, 1.0, 1.0)):
        row = _hand_rows("3-3", rho, i, -90.0, 2.0 * (rho < 1), 5.0, [3, 3 * (rho < 1)], [3.0, 2.0])
        row.update(schema_version=5, n_layers=1 if i == 0 else 2)
        write_trial(root, "old", f"t{i}", [row])
    (note,) = [n for n in analyze(root, write=False, plots_on=False, n_boot=50).notes if "schema v6" in n]
    assert note.startswith("5 run(s) were written before results schema v6") and "KL onset are unaffected" in note


def test_table8_matches_hand_computed_values(hand):
    rep = analyze(hand, write=False, plots_on=False, n_boot=100)
    t8 = _table(rep, "table8")
    assert t8.columns == ["ρ", "Model", "Seeds", "V. ELBO (L_100)", "KLD", "Top KLD", "Active units (top→bottom)"]
    assert t8.rows == [  # per rho, widest first
        ["0.9", "3-3", "2", "-91.00", "4.50", "1.500", "1.5,3"],
        ["0.9", "2-2", "2", "-100.50", "2.00", "1.000", "1.5,2"],
        ["1", "3-3", "2", "-95.50", "3.20", "0.200", "0,2.5"],
        ["1", "2-2", "2", "-103.50", "1.10", "0.100", "0,1.5"],
    ]


def test_tables_9_10_from_benchmark_json(hand):
    rep = analyze(hand, write=False, plots_on=False, n_boot=100)
    t9, t10 = _table(rep, "table9"), _table(rep, "table10")
    # VAE: mean of 4.0 and 4.4 = 4.2; OU-VAE 4.6 / 4.2 = 1.095
    assert t9.rows == [["mlp-4x40", "VAE", "cpu", "100", "4.2", "1.00×"],
                       ["mlp-4x40", "IWAE", "cpu", "100", "4.4", "1.05×"],
                       ["mlp-4x40", "OU-VAE", "cpu", "100", "4.6", "1.10×"]]
    # memory: the largest VAE record (2.12 GiB); 8.59 / 2.12 = 4.05, 3.74 / 2.12 = 1.76
    assert t10.rows == [["mlp-4x40", "VAE", "cpu", "100", "2.12", "1.00×"],
                        ["mlp-4x40", "IWAE", "cpu", "100", "8.59", "4.05×"],
                        ["mlp-4x40", "OU-VAE", "cpu", "100", "3.74", "1.76×"]]


# ------------------------------------------------------------------------------------------------ bad input
@pytest.fixture
def small(tmp_path):
    root = tmp_path / "res"
    make_synthetic_results(root, latent_sizes=(10,), rhos=(0.9, 0.95, 1.0), n_seeds=2, n_evals=2, salt=1)
    return root


def _first_file(root: Path) -> Path:
    return sorted(root.glob("sweep_id=*/*.parquet"))[0]


def _rewrite(path: Path, fn) -> None:
    table = pq.read_table(path)
    pq.write_table(fn(table), path)


def _set(table: pa.Table, name: str, values) -> pa.Table:
    i = table.schema.get_field_index(name)
    return table.set_column(i, name, pa.array(values, type=table.schema.field(name).type))


def make_missing(root):
    return root / "does-not-exist"


def make_empty(root):
    root.mkdir(parents=True)
    return root


def make_empty_sweep(root):
    (root / "sweep_id=s").mkdir(parents=True)
    return root


def make_old_schema(small):
    _rewrite(_first_file(small), lambda t: _set(t, "schema_version", [0] * t.num_rows))
    return small


def make_missing_column(small):
    _rewrite(_first_file(small), lambda t: t.drop_columns(["top_kl"]))
    return small


def make_wrong_type(small):
    _rewrite(_first_file(small), lambda t: t.drop_columns(["latent_dims"]).append_column(
        "latent_dims", pa.array([[10, 10, 10, 10]] * t.num_rows)))
    return small


def make_one_rho(tmp):
    make_synthetic_results(tmp, latent_sizes=(10,), rhos=(0.9,), n_seeds=3, n_evals=1)
    return tmp


def make_nan(small):
    _rewrite(_first_file(small), lambda t: _set(t, "top_kl", [float("nan")] * t.num_rows))
    return small


def make_unfinished(small):
    for f in small.glob("sweep_id=*/*.parquet"):
        _rewrite(f, lambda t: _set(t, "is_final", [False] * t.num_rows))
    return small


def make_unreadable(small):
    (small / "sweep_id=synthetic" / "garbage.parquet").write_bytes(b"not parquet at all")
    return small


def make_zero_bytes(small):
    (small / "sweep_id=synthetic" / "zero.parquet").write_bytes(b"")
    return small


def make_ray_experiment(small):
    folder = small.parent / "ray" / "synthetic"
    folder.mkdir(parents=True)
    (folder / "ouvae_sweep.json").write_text("{}")
    return folder


def make_report_folder(small):
    run_cli(small, "--no-plots", *FAST)
    return small / "report"


def make_loose_files(small):
    loose = small.parent / "loose"
    loose.mkdir()
    for f in small.glob("sweep_id=*/*.parquet"):
        f.rename(loose / f.name)
    return loose


def make_superseded(small):
    folder = small.parent / "parquet.superseded"
    (small / "sweep_id=synthetic").rename(folder)
    return folder


def make_superseded_sweep(small):
    folder = small.parent / "parquet.superseded"
    folder.mkdir()
    (small / "sweep_id=synthetic").rename(folder / "sweep_id=synthetic")
    return folder / "sweep_id=synthetic"


BAD = {
    "a file, not a folder": (_first_file, [], "is a file, not a results folder"),
    "Ray's experiment folder": (make_ray_experiment, [], "is Ray Tune's experiment folder, not the results table"),
    "the ray/ folder": (lambda small: make_ray_experiment(small).parent, [], "is Ray Tune's experiment folder"),
    "a report folder": (make_report_folder, [], "is a report folder, not the results table"),
    "Parquet files outside sweep_id=": (make_loose_files, [], "holds .parquet files but no sweep_id=<id>/ folders"),
    "superseded files": (make_superseded, [], "holds superseded result files"),
    "a superseded sweep folder": (make_superseded_sweep, [], "holds superseded result files"),
    "sweep folder and another --sweep": (lambda small: small / "sweep_id=synthetic", ["--sweep", "other"],
                                         "not found in the sweep folder"),
    "unreadable file": (make_unreadable, [], "garbage.parquet"),
    "zero-byte file": (make_zero_bytes, [], "zero.parquet"),
    "missing folder": (make_missing, [], "does not exist"),
    "empty folder": (make_empty, [], "no result files in"),
    "sweep folder without files": (make_empty_sweep, [], "no result files"),
    "older schema version": (make_old_schema, [], "schema v0"),
    "column missing": (make_missing_column, [], "column 'top_kl' is missing"),
    "column of the wrong type": (make_wrong_type, [], "latent_dims"),
    "one rho value only": (make_one_rho, [], "one rho value only"),
    "NaN metrics": (make_nan, [], "--drop-nan"),
    "no finished trial": (make_unfinished, [], "--include-unfinished"),
    "unknown sweep": (lambda r: r, ["--sweep", "nope"], "sweep id(s) nope not found"),
    "bad benchmark file": (lambda r: r, ["--benchmark", "BENCH"], "benchmark file"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_exit_2_clear_message_no_report(case, small, tmp_path):
    make, extra, expected = BAD[case]
    if make in (make_missing, make_empty, make_empty_sweep, make_one_rho):
        root = make(tmp_path / "other")
    else:
        root = make(small)
    bench = tmp_path / "bench.json"
    bench.write_text('[{"model": "m", "method": "VAE"}]')  # lacks fields
    extra = [str(bench) if a == "BENCH" else a for a in extra]
    out = tmp_path / "out" / "report"
    rc, stdout, stderr = run_cli(root, "--out", out, *extra, *FAST)
    assert rc == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert expected in lines[0], lines[0]
    assert "Traceback" not in stderr and stdout == ""
    assert no_report_left(out) and not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------- the three folders, local and S3
def storage_folder(root: Path) -> Path:
    """A sweep's --storage folder as critical_rho.py leaves it: parquet/, ray/<name>/, reports/<name>/."""
    make_synthetic_results(root / "parquet", latent_sizes=(10,), rhos=(0.85, 0.9, 0.95, 1.0), n_seeds=3, n_evals=2,
                           salt=1)
    (root / "ray" / "synthetic").mkdir(parents=True)
    (root / "ray" / "synthetic" / "ouvae_sweep.json").write_text("{}")
    (root / "reports" / "synthetic").mkdir(parents=True)
    return root


FOLDER_KINDS = {  # folder given (relative to the storage folder) -> default report folder
    "storage folder": ("", "reports/synthetic"),
    "Parquet root": ("parquet", "parquet/report"),
    "sweep folder": ("parquet/sweep_id=synthetic", "parquet/report"),
}


@pytest.mark.parametrize("kind", list(FOLDER_KINDS))
def test_cli_reads_each_kind_of_results_folder(kind, tmp_path):
    root = storage_folder(tmp_path / "results")
    given, report = FOLDER_KINDS[kind]
    rc, stdout, stderr = run_cli(root / given if given else root, "--no-plots", *FAST)
    assert rc == 0, stderr
    assert stdout.rstrip().endswith(f"report: {root / report / 'report.html'}")
    table = pl.read_csv(root / report / "tables" / "rho_c.csv")
    assert table["n_runs"].to_list() == [12] and table["status"].to_list() == ["ok"]
    reference = analyze(root / "parquet", write=False, plots_on=False, n_boot=200, compare_boot=60)
    assert table["rho_c"].to_list() == pytest.approx(reference.rho_c["rho_c"].to_list())


@pytest.fixture
def s3_results(s3_server, monkeypatch, tmp_path):
    """A storage folder uploaded to a new bucket at <bucket>/store; the working directory is tmp_path."""
    import pyarrow.fs as pafs

    s3_server.use(monkeypatch)
    bucket = s3_server.make_bucket()
    local = storage_folder(tmp_path / "local")
    fs, _ = pafs.FileSystem.from_uri(f"s3://{bucket}")
    pafs.copy_files(str(local), f"{bucket}/store", source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
    monkeypatch.chdir(tmp_path)
    return bucket, local


def test_cli_reads_each_kind_of_folder_from_s3(s3_results, tmp_path):
    bucket, local = s3_results
    reference = analyze(local / "parquet", write=False, plots_on=False, n_boot=200, compare_boot=60)
    for given in ("store", "store/parquet", "store/parquet/sweep_id=synthetic"):
        rc, stdout, stderr = run_cli(f"s3://{bucket}/{given}", "--no-plots", *FAST)
        assert rc == 0, (given, stderr)
        report = tmp_path / "reports" / "synthetic"  # remote input: the report goes to ./reports/<sweep>
        assert stdout.rstrip().endswith(f"report: {Path('reports/synthetic/report.html')}")
        table = pl.read_csv(report / "tables" / "rho_c.csv")
        assert table["rho_c"].to_list() == pytest.approx(reference.rho_c["rho_c"].to_list()), given
        assert f"s3://{bucket}/{given}" in (report / "report.html").read_text()
    rc, _, stderr = run_cli(f"s3://{bucket}/store", "--out", tmp_path / "elsewhere", "--no-plots", *FAST)
    assert rc == 0 and (tmp_path / "elsewhere" / "report.html").is_file()


def test_bad_s3_locations_are_one_line_errors(s3_results, s3_server, monkeypatch, tmp_path):
    import moto.settings

    bucket, _ = s3_results
    cases = [(f"s3://no-such-bucket-{bucket}/store", "S3 bucket 'no-such-bucket-"),
             (f"s3://{bucket}/nothing-here", f"nothing under s3://{bucket}/nothing-here"),
             (f"s3://{bucket}/store/ray/synthetic", "is Ray Tune's experiment folder"),
             ("gs://bucket/store", "gs:// is not supported"),
             ("s3:///store", "names no bucket")]
    for url, expected in cases:
        rc, stdout, stderr = run_cli(url, "--no-plots", *FAST)
        assert rc == 2 and stdout == "" and len(stderr.strip().splitlines()) == 1, (url, stderr)
        assert expected in stderr, (url, stderr)
    assert "does not exist" in run_cli(cases[0][0], *FAST)[2]
    monkeypatch.setattr(moto.settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)  # the server now checks credentials
    rc, _, stderr = run_cli(f"s3://{bucket}/store", "--no-plots", *FAST)
    assert rc == 2 and f"access to S3 bucket {bucket!r} denied" in stderr and "AWS_ACCESS_KEY_ID" in stderr, stderr
    assert not (tmp_path / "reports").exists()


def test_unreachable_s3_endpoint_message_names_the_endpoint(monkeypatch):
    """The AWS SDK retries an unreachable endpoint for ~8 s before PyArrow raises; the wording of its error is
    checked on the error PyArrow raises then."""
    from analysis.storage import _s3_error

    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    exc = OSError("When getting information for key 'store' in bucket 'b': AWS Error NETWORK_CONNECTION during "
                  "HeadObject operation: curlCode: 7, Couldn't connect to server")
    assert _s3_error("s3://b/store", "b", exc) == ("cannot reach S3 (http://127.0.0.1:9) for s3://b/store: check the "
                                                   "network, or set AWS_ENDPOINT_URL to your S3 server's address")


@pytest.mark.parametrize("option, value, expected", [
    ("--level", "95", "--level 95.0 is not a confidence level"),
    ("--n-boot", "10", "--n-boot 10 is too few bootstrap resamples"),
    ("--compare-boot", "-1", "--compare-boot -1 is negative"),
    ("--delta", "2", "--delta 2.0 is not a margin on rho"),
    ("--max-budgets", "1", "--max-budgets 1: give at least 2"),
])
def test_bad_options_are_named(option, value, expected, small, tmp_path):
    rc, stdout, stderr = run_cli(small, option, value, "--out", tmp_path / "r")
    assert rc == 2 and stdout == "" and stderr.startswith(f"error: {expected}") and len(stderr.splitlines()) == 1
    assert not (tmp_path / "r").exists()


def test_unwritable_output_is_a_clear_error(small, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    rc, stdout, stderr = run_cli(small, "--out", blocker / "report", "--no-plots", *FAST)
    assert rc == 2 and stderr.startswith("error: cannot write the report") and len(stderr.strip().splitlines()) == 1
    rc, _, stderr = run_cli(small, "--out", blocker, "--no-plots", *FAST)
    assert rc == 2 and "is a file" in stderr
    assert blocker.read_text() == "not a folder"


def test_bad_file_is_named_in_the_message(small, tmp_path):
    bad = _first_file(small)
    _rewrite(bad, lambda t: _set(t, "schema_version", [0] * t.num_rows))
    rc, _, stderr = run_cli(small, "--out", tmp_path / "r")
    assert rc == 2 and bad.name in stderr and "conform" in stderr


def test_drop_nan_leaves_those_runs_out(small):
    make_nan(small)
    rc, stdout, _ = run_cli(small, "--no-plots", "--drop-nan", *FAST)
    assert rc == 0 and "left out (--drop-nan)" in stdout
    assert pl.read_csv(small / "report" / "tables" / "rho_c.csv")["n_runs"].to_list() == [5]


def test_unfinished_trials_left_out_or_included_on_request(small):
    f = _first_file(small)
    _rewrite(f, lambda t: _set(t, "is_final", [False] * t.num_rows))
    rc, stdout, _ = run_cli(small, "--no-plots", *FAST)
    assert rc == 0 and "1 trial(s) have not finished and are left out" in stdout
    assert pl.read_csv(small / "report" / "tables" / "rho_c.csv")["n_runs"].to_list() == [5]
    rc, stdout, _ = run_cli(small, "--no-plots", "--include-unfinished", *FAST)
    assert rc == 0 and pl.read_csv(small / "report" / "tables" / "rho_c.csv")["n_runs"].to_list() == [6]


def test_failed_run_keeps_the_previous_report_intact(small, tmp_path):
    out = tmp_path / "rep"
    rc, _, _ = run_cli(small, "--out", out, *FAST)
    assert rc == 0
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    make_old_schema(small)
    rc, _, stderr = run_cli(small, "--out", out, *FAST)
    assert rc == 2 and stderr.startswith("error: ")
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before
    assert not list(tmp_path.glob(".rep.staging-*"))


def test_a_different_setting_is_another_configuration_and_a_different_preset_is_flagged(tmp_path):
    """Every recorded setting of the configuration (ouvae/config.py's roles: what config_hash hashes) separates
    configurations; runs that differ only in a name outside it (the preset) are pooled, and the report says so."""
    root = tmp_path / "res"
    kw = dict(latent_sizes=(10,), rhos=(0.9, 0.95, 1.0), n_seeds=2, n_evals=1)
    make_synthetic_results(root, sweep_id="a", **kw)
    make_synthetic_results(root, sweep_id="b", overrides={"lr": 3e-4}, **kw)
    make_synthetic_results(root, sweep_id="c", overrides={"preset": "other"}, **kw)
    rc, stdout, _ = run_cli(root, "--no-plots", *FAST)
    assert rc == 0 and "lr=0.0003" in stdout and "lr=0.001" in stdout  # two configurations
    assert "pools runs with different preset = other, synthetic" in stdout
    rc, stdout, _ = run_cli(root, "--no-plots", "--sweep", "c", *FAST)
    assert rc == 0 and "pools runs" not in stdout and "sweep(s) c" in stdout


# ----------------------------------------------------------------------------------------- packaging / imports
def test_help_works():
    proc = subprocess.run([sys.executable, "-m", "analysis", "--help"], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and "usage:" in proc.stdout and "--out" in proc.stdout and "--sweep" in proc.stdout


BLOCKER = """
import importlib.abc, importlib.machinery, sys
class Absent(importlib.abc.Loader):
    def create_module(self, spec):
        raise ModuleNotFoundError(f"No module named {spec.name!r} (blocked by the test)", name=spec.name)
    def exec_module(self, module):
        pass
class Block(importlib.abc.MetaPathFinder):
    # Any `import ray` / `import torch` (or submodule) fails as if the package were not installed.
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('ray', 'torch'):
            return importlib.machinery.ModuleSpec(name, Absent())
        return None
sys.meta_path.insert(0, Block())
import analysis, analysis.io, analysis.critical, analysis.tables, analysis.plots, analysis.report
import analysis.testing.synthetic, analysis.transition, analysis.__main__, analysis.storage, analysis.intervals
import analysis.compare, analysis.budget, analysis.render, analysis.errors
from analysis.testing.synthetic import make_synthetic_results
make_synthetic_results(sys.argv[1], latent_sizes=(10,), rhos=(0.9, 0.95, 1.0), n_seeds=2, n_evals=2)
rc = analysis.__main__.main([sys.argv[1], '--n-boot', '100'])
assert rc == 0, rc
bad = sorted(m for m in sys.modules if m.split('.')[0] in ('ray', 'torch'))
assert not bad, bad
print('ok')
"""


def test_analysis_runs_without_ray_or_torch(tmp_path):
    proc = subprocess.run([sys.executable, "-c", BLOCKER, str(tmp_path / "res")], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().endswith("ok")
    assert (tmp_path / "res" / "report" / "report.html").exists()


def test_synthetic_layout_matches_the_schema(tmp_path):
    truth = make_synthetic_results(tmp_path / "r", latent_sizes=(5,), rho_c=0.95, rhos=(0.9, 1.0), n_seeds=2,
                                   n_evals=3)
    files = sorted((tmp_path / "r" / "sweep_id=synthetic").glob("*.parquet"))
    assert len(files) == truth.n_files == 4
    t = pq.read_table(files[0])
    from analysis.schema import SCHEMA
    assert t.schema.equals(SCHEMA)
    assert t.column("is_final").to_pylist() == [False, False, True]
    assert not math.isnan(sum(t.column("top_kl").to_pylist()))

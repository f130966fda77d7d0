"""Comparisons between configurations: rho_c across latent sizes, across datasets and across the two readings of
T_rho (smooth_space), sharpness across sizes.

Why these comparisons: the paper reports a transition "lower for wider latents" and "similar across datasets", and
whether the transition belongs to a valid model is the question the two readings answer. All are differences of
rho_c between configurations of one family (configurations that differ only in the latent sizes, or only in one
key of ``analysis.critical.ACROSS_KEYS``; ``analysis/critical.py`` defines the families), judged on an interval for
the difference (MOVER from the two rho_c intervals, ``analysis.intervals.difference_interval``):

* HIGHER / LOWER: the interval excludes 0.
* SIMILAR within +-margin: the WHOLE interval lies inside [-margin, margin]. That is an equivalence statement
  (two one-sided tests at the interval's level), not "no clear difference": an interval that contains 0 but
  reaches beyond the margin does not show similarity, it shows that the data cannot tell (NOT_DECIDED).
* NO_VERDICT: a rho_c (or its interval) is missing; the reason is kept (``Undetermined``).

A configuration whose swept range holds no transition still bounds its rho_c (above or below the range), which
can decide a comparison on its own. Across latent sizes the width w of the transition is compared too: the ratio
w(wide) / w(narrow) with a seed-bootstrap interval (independent resamples of both configurations' seeds, refitted
with the same vectorised solver as the rho_c interval).

Every verdict is an enum on a dataclass; the ``*_text`` functions word them for the report.
"""

from __future__ import annotations

import enum
import math
from collections import Counter
from dataclasses import dataclass, field
from itertools import combinations

import numpy as np
import polars as pl

from analysis.critical import CriticalResult, one_blas_thread
from analysis.intervals import (MIN_SEEDS, UNDETERMINED_SHORT, Interval, Undetermined,
                                difference_interval, percentile_interval, seed_bootstrap, small_sample_factor, widen)
from analysis.transition import STATUS_OK, TransitionFit

DEFAULT_MARGIN = 0.02  # --delta: rho_c values closer than this are "similar"


class RhoCVerdict(enum.Enum):
    """rho_c(b) against rho_c(a)."""

    SIMILAR = "similar"  # the interval of the difference lies inside [-margin, margin]
    HIGHER = "higher"  # the interval lies above 0: rho_c(b) > rho_c(a)
    LOWER = "lower"
    NOT_DECIDED = "not_decided"  # the interval contains 0 and reaches beyond +-margin
    NO_VERDICT = "no_verdict"  # a rho_c or an interval is missing (reason on the difference)


class SharpnessVerdict(enum.Enum):
    """w(b) against w(a)."""

    SHARPER = "sharper"  # w(b) / w(a) < 1 with its interval
    BROADER = "broader"
    NO_CLEAR_DIFFERENCE = "no_clear_difference"  # the interval contains 1
    NOT_DETERMINED = "not_determined"  # the ratio or its interval cannot be bounded (reason on the ratio)
    NO_VERDICT = "no_verdict"  # no fitted transition on one side


@dataclass(frozen=True)
class RhoCDifference:
    """rho_c(b) - rho_c(a) with its interval and verdict."""

    delta: float | None  # None when one side has no located rho_c (only bounds)
    interval: Interval  # of the difference; undetermined when the verdict comes from bounds or is missing
    verdict: RhoCVerdict
    margin: float
    from_bounds: bool = False  # the verdict rests on a rho_c known only to lie above/below its swept range


@dataclass(frozen=True)
class WidthRatio:
    """w(b) / w(a) with its interval and verdict."""

    ratio: float | None  # None when a w is missing or at a limit of the fit (the ratio would be meaningless)
    interval: Interval
    verdict: SharpnessVerdict


# ----------------------------------------------------------------------------------------------- rho_c
def _possible(fit: TransitionFit) -> tuple[float, float] | None:
    """Where rho_c can lie: its interval if fitted, the far side of the swept range if it is beyond it."""
    if fit.status == STATUS_OK and fit.ci_low is not None:
        return fit.ci_low, fit.ci_high
    if fit.beyond == "above":
        return fit.rho_max, math.inf
    if fit.beyond == "below":
        return -math.inf, fit.rho_min
    return None


def _missing_reason(*fits: TransitionFit) -> Undetermined:
    for f in fits:
        if f.status == STATUS_OK and f.interval_undetermined is not None:
            return f.interval_undetermined
    return Undetermined.NO_FIT


def rho_c_difference(a: TransitionFit, b: TransitionFit, margin: float) -> RhoCDifference:
    """Compare rho_c(b) with rho_c(a) (see the module docstring for the verdicts)."""
    if a.status == STATUS_OK and b.status == STATUS_OK and a.ci_low is not None and b.ci_low is not None:
        lo, hi = difference_interval(a.rho_c, a.ci_low, a.ci_high, b.rho_c, b.ci_low, b.ci_high)
        if -margin <= lo and hi <= margin:
            verdict = RhoCVerdict.SIMILAR
        elif lo > 0:
            verdict = RhoCVerdict.HIGHER
        elif hi < 0:
            verdict = RhoCVerdict.LOWER
        else:
            verdict = RhoCVerdict.NOT_DECIDED
        return RhoCDifference(b.rho_c - a.rho_c, Interval(lo, hi), verdict, margin)
    delta = b.rho_c - a.rho_c if a.status == STATUS_OK and b.status == STATUS_OK else None
    pa, pb = _possible(a), _possible(b)
    if pa is not None and pb is not None and (pb[1] < pa[0] or pb[0] > pa[1]):
        verdict = RhoCVerdict.LOWER if pb[1] < pa[0] else RhoCVerdict.HIGHER
        return RhoCDifference(delta, Interval.not_determined(Undetermined.NO_FIT), verdict, margin, from_bounds=True)
    return RhoCDifference(delta, Interval.not_determined(_missing_reason(a, b)), RhoCVerdict.NO_VERDICT, margin)


# ----------------------------------------------------------------------------------------------- width
def width_ratio(a: TransitionFit, b: TransitionFit, *, n_resamples: int, level: float, rng: np.random.Generator
                ) -> WidthRatio:
    """w(b) / w(a) with a seed-bootstrap interval on the log scale, widened for few seeds like rho_c's."""
    if a.status != STATUS_OK or b.status != STATUS_OK:
        return WidthRatio(None, Interval.not_determined(Undetermined.NO_FIT), SharpnessVerdict.NO_VERDICT)
    if a.w_at_floor or a.w_at_ceiling or b.w_at_floor or b.w_at_ceiling:
        return WidthRatio(None, Interval.not_determined(Undetermined.WIDTH_AT_LIMIT), SharpnessVerdict.NOT_DETERMINED)
    ratio = b.width / a.width
    why = (Undetermined.NOT_COMPUTED if n_resamples == 0 else
           Undetermined.TOO_FEW_SEEDS if min(a.n_seeds, b.n_seeds) < MIN_SEEDS else None)
    if why is not None:
        return WidthRatio(ratio, Interval.not_determined(why), SharpnessVerdict.NOT_DETERMINED)

    def log_ratio(mult_a: np.ndarray, mult_b: np.ndarray) -> np.ndarray:
        return b.resampler.refit(mult_b)[1] - a.resampler.refit(mult_a)[1]

    boot = seed_bootstrap(log_ratio, [a.n_seeds, b.n_seeds], n_resamples=n_resamples, rng=rng)
    q_lo, q_hi = percentile_interval(boot, level)
    if not (math.isfinite(q_lo) and math.isfinite(q_hi)):
        why = Undetermined.UNBOUNDED_RESAMPLES if np.isnan(boot).sum() > np.isinf(boot).sum() else \
            Undetermined.WIDTH_AT_LIMIT
        return WidthRatio(ratio, Interval.not_determined(why), SharpnessVerdict.NOT_DETERMINED)
    lo, hi = widen(math.log(ratio), q_lo, q_hi, small_sample_factor(min(a.n_seeds, b.n_seeds), level))
    interval = Interval(math.exp(lo), math.exp(hi))
    verdict = (SharpnessVerdict.SHARPER if interval.high < 1 else SharpnessVerdict.BROADER if interval.low > 1
               else SharpnessVerdict.NO_CLEAR_DIFFERENCE)
    return WidthRatio(ratio, interval, verdict)


# ------------------------------------------------------------------------------------------ latent sizes
@dataclass(frozen=True)
class LatentSizePair:
    """Two consecutive latent sizes of one family (narrow -> wide)."""

    family_id: str
    narrow: str  # config ids
    wide: str
    rho_c: RhoCDifference  # rho_c(wide) - rho_c(narrow)
    width: WidthRatio  # w(wide) / w(narrow)


@dataclass(frozen=True)
class LatentFamily:
    """One family's comparison: its pairs and the configurations that could not take part."""

    family_id: str
    label: str
    compared: list[str]  # config ids in order of width, those with a located or bounded rho_c
    skipped: list[str]  # config ids with neither
    pairs: list[LatentSizePair] = field(default_factory=list)

    def rho_c_counts(self) -> Counter[RhoCVerdict]:
        return Counter(p.rho_c.verdict for p in self.pairs)

    def width_counts(self) -> Counter[SharpnessVerdict]:
        return Counter(p.width.verdict for p in self.pairs)


def compare_latent_sizes(critical: CriticalResult, *, margin: float = DEFAULT_MARGIN, n_resamples: int = 200,
                         seed: int = 0) -> list[LatentFamily]:
    """Within each family of several latent sizes, compare consecutive sizes (narrow -> wide)."""
    out = []
    with one_blas_thread():
        for i, fam_id in enumerate(critical.configs["family_id"].unique(maintain_order=True).to_list()):
            fam = critical.configs.filter(pl.col("family_id") == fam_id).sort("top_dim", "total_latent")
            if fam["latent_dims"].n_unique() < 2:
                continue
            ids = fam["config_id"].to_list()
            usable = [c for c in ids if critical.fits[c].status == STATUS_OK or critical.fits[c].beyond is not None]
            family = LatentFamily(fam_id, fam["family_label"][0], usable, [c for c in ids if c not in usable])
            if len(usable) >= 2 and any(critical.fits[c].status == STATUS_OK for c in usable):
                rng = np.random.default_rng([seed, 1, i])
                for a, b in zip(usable, usable[1:]):
                    fa, fb = critical.fits[a], critical.fits[b]
                    family.pairs.append(LatentSizePair(
                        fam_id, a, b, rho_c_difference(fa, fb, margin),
                        width_ratio(fa, fb, n_resamples=n_resamples, level=critical.level, rng=rng)))
            out.append(family)
    return out


# ------------------------------------------------------------------------------------- datasets, readings
@dataclass(frozen=True)
class AcrossPair:
    """Two configurations of one ``key`` family (they differ only in ``key``: the dataset, or smooth_space)."""

    key: str
    family_id: str
    a: str  # config ids, in the key's value order
    b: str
    rho_c: RhoCDifference  # rho_c(b) - rho_c(a)


def compare_across(critical: CriticalResult, key: str, *, margin: float = DEFAULT_MARGIN) -> list[AcrossPair]:
    """Every pair of configurations within each ``key`` family (values of ``key`` in name order)."""
    out = []
    col = f"{key}_family_id"
    for fam_id in critical.configs[col].unique(maintain_order=True).to_list():
        fam = critical.configs.filter(pl.col(col) == fam_id).sort(key)
        for a, b in combinations(fam["config_id"].to_list(), 2):
            out.append(AcrossPair(key, fam_id, a, b, rho_c_difference(critical.fits[a], critical.fits[b], margin)))
    return out


# --------------------------------------------------------------------------------------------------- wording
def rho_c_text(fit: TransitionFit) -> str:
    """rho_c in a few characters: the estimate, or where it lies when the range holds no transition."""
    if fit.status == STATUS_OK:
        return f"{fit.rho_c:.3f}"
    if fit.beyond == "above":
        return f"> {fit.rho_max:g}"
    if fit.beyond == "below":
        return f"< {fit.rho_min:g}"
    return fit.status.value.replace("_", " ")


def interval_text(iv: Interval, digits: int = 3) -> str:
    if iv.determined:
        return f"[{iv.low:.{digits}f}, {iv.high:.{digits}f}]"
    return f"not determined ({UNDETERMINED_SHORT[iv.undetermined]})"


def rho_c_verdict_text(d: RhoCDifference, subject: str) -> str:
    """The verdict on rho_c(b) - rho_c(a) in words; ``subject`` names b (e.g. "the wider latent")."""
    if d.verdict is RhoCVerdict.SIMILAR:
        return f"similar within ±{d.margin:g}"
    if d.verdict in (RhoCVerdict.HIGHER, RhoCVerdict.LOWER):
        how = " (a rho_c beyond its swept range)" if d.from_bounds else ""
        return f"{d.verdict.value} for {subject}{how}"
    if d.verdict is RhoCVerdict.NOT_DECIDED:
        return f"not decided (the interval straddles ±{d.margin:g})"
    return f"no verdict ({UNDETERMINED_SHORT[d.interval.undetermined]})"


SHARPNESS_TEXT = {
    SharpnessVerdict.SHARPER: "sharper for the wider latent",
    SharpnessVerdict.BROADER: "broader for the wider latent",
    SharpnessVerdict.NO_CLEAR_DIFFERENCE: "no clear difference",
    SharpnessVerdict.NO_VERDICT: "no verdict (no fitted transition on one side)",
}


def sharpness_verdict_text(w: WidthRatio) -> str:
    if w.verdict is SharpnessVerdict.NOT_DETERMINED:
        return f"not determined ({UNDETERMINED_SHORT[w.interval.undetermined]})"
    return SHARPNESS_TEXT[w.verdict]


def ratio_text(w: WidthRatio) -> str:
    """The ratio itself: a number only when neither w sits at a limit of its fit."""
    if w.ratio is not None:
        return f"{w.ratio:.2f}"
    return "–" if w.verdict is SharpnessVerdict.NO_VERDICT else "not determined"


def latent_family_text(family: LatentFamily, critical: CriticalResult) -> str:
    """One sentence per family: how rho_c and the sharpness change with the latent size."""
    labels = dict(zip(critical.configs["config_id"], critical.configs["latent_dims"]))
    skipped = [f"{labels[c]} ({rho_c_text(critical.fits[c])})" for c in family.skipped]
    tail = f" (left out: {', '.join(skipped)})" if skipped else ""
    if not family.pairs:
        return f"{family.label}: cannot compare latent sizes, too few have a located transition{tail}."
    n = len(family.pairs)
    rc, w = family.rho_c_counts(), family.width_counts()
    values = ", ".join(f"{labels[c]}: {rho_c_text(critical.fits[c])}" for c in family.compared)
    margin = family.pairs[0].rho_c.margin
    lower, higher = rc[RhoCVerdict.LOWER], rc[RhoCVerdict.HIGHER]
    if lower == n:
        rho = f"rho_c is lower for wider latents at every step ({values}), as the paper reports"
    elif higher == n:
        rho = f"rho_c is higher for wider latents at every step ({values}), unlike the paper"
    elif rc[RhoCVerdict.SIMILAR] == n:
        rho = f"rho_c is similar within ±{margin:g} at every step ({values})"
    elif lower or higher:
        rho = f"rho_c changes with width in {lower + higher} of {n} steps ({lower} lower, {higher} higher; {values})"
    elif rc[RhoCVerdict.NO_VERDICT] == n:
        rho = f"rho_c cannot be compared across widths ({values}); add seeds or widen the range"
    else:
        rho = f"no clear change of rho_c with width ({values}; not decided at ±{margin:g} in " \
              f"{rc[RhoCVerdict.NOT_DECIDED]} of {n} steps)"
    sharper, broader = w[SharpnessVerdict.SHARPER], w[SharpnessVerdict.BROADER]
    unresolved = w[SharpnessVerdict.NOT_DETERMINED] + w[SharpnessVerdict.NO_VERDICT]
    if sharper == n:
        sh = "the transition sharpens (smaller w) with width"
    elif broader == n:
        sh = "the transition broadens (larger w) with width"
    elif unresolved == n:
        sh = ("the sharpness w cannot be compared (no fit on one side, w at a limit of the fit, or too few seeds "
              "for an interval)")
    elif sharper or broader:
        sh = f"w changes in {sharper + broader} of {n} steps ({sharper} sharper, {broader} broader)"
    else:
        sh = "no clear change of the sharpness w"
    if unresolved and unresolved < n:
        sh += f" ({unresolved} of {n} steps could not be compared)"
    return f"{family.label}: {rho}; {sh}{tail}."

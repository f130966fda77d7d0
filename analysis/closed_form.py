"""The exact answer for the one model whose critical rho is known: a linear-Gaussian VAE (numpy, no torch).

Why: every other check of the rho_c locator is either on synthetic logistic curves or on networks whose true
rho_c nobody knows. For one stochastic layer, linear maps, a Gaussian likelihood of fixed variance sigma^2, KL
weight beta and data variance lambda in a latent direction, the optimum of the smoothed ELBO is known in closed
form, so the whole pipeline (trainer, sweep, active units, fit, interval) can be calibrated against it
(``benchmarks/calibration.py``, docs/calibration.md).

Derivation, per latent direction (the problem separates; r = lambda / (beta sigma^2), v = w^2 / (beta sigma^2)
for the decoder weight w; the encoder mean a x and variance s^2 are optimised out in closed form):

* posterior reading (copies mu + s (rho eps + sqrt(1 - rho^2) eta_k)): the K-average of the decoder inputs is
  mu + s e with E e^2 = c = rho^2 + (1 - rho^2) / K, and the loss per unit of beta is
  r / (1 + v) + log(1 + c v). The direction is active iff r > c, i.e. for rho below
  rho_c = sqrt((K r - 1) / (K - 1)) (1/K < r < 1).
* prior reading (copies rho z + sqrt(1 - rho^2) eta_k in the prior's coordinates): the averaged copies add
  decoder noise of variance w^2 (1 - rho^2) / K; in v = (rho w)^2 / (beta sigma^2) the loss is
  r / (1 + v) + log(1 + v) + e v with e = (1 - rho^2) / (K rho^2). Active iff r > 1 + e, i.e. for rho above
  rho_c = (1 + K (r - 1))^(-1/2) (r > 1; never for r <= 1).

At the optimum the encoder mean is a x with a^2 lambda = r v / (1 + v)^2 (the posterior-mean variance, the
quantity the active-unit criterion thresholds) and the KL to N(0, 1) is (a^2 lambda + s^2 - 1 - log s^2) / 2 with
s^2 = 1 / (1 + c v) (posterior reading) or 1 / (1 + v) (prior reading). Both vanish continuously at rho_c,
linearly in |rho - rho_c| (a second-order transition).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from analysis.transition import ACTIVE_ABOVE, ACTIVE_BELOW

READINGS = ("posterior", "prior")  # smooth_space
DIRECTION_OF_READING = {"posterior": ACTIVE_BELOW, "prior": ACTIVE_ABOVE}


def _check(reading: str, k: int) -> None:
    if reading not in READINGS:
        raise ValueError(f"reading must be one of {READINGS}, got {reading!r}")
    if int(k) != k or k < 2:
        raise ValueError(f"K (smooth_samples) must be a whole number >= 2 for a transition in rho, got {k}")


def critical_rho(ratio: float | np.ndarray, k: int, reading: str = "posterior", layers: int = 1,
                 smooth: str = "both") -> np.ndarray:
    """rho_c of each latent direction with r = lambda / (beta sigma^2) = `ratio`; NaN where no rho in (0, 1)
    changes its state (posterior reading: r <= 1/K, collapsed at every rho, or r >= 1, active at every rho;
    prior reading: r <= 1, collapsed at every rho). layers=2: the top layer's rho_c of the two-layer hierarchy
    (``critical_rho_two_layer``; `smooth` = Config.smooth matters there, not for one layer)."""
    if layers == 2:
        return critical_rho_two_layer(ratio, k, reading, smooth)
    if layers != 1:
        raise ValueError(f"closed forms exist for 1 or 2 stochastic layers, got layers={layers}")
    _check(reading, k)
    r = np.asarray(ratio, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        if reading == "posterior":
            sq = (k * r - 1.0) / (k - 1.0)
            return np.where((r > 1.0 / k) & (r < 1.0), np.sqrt(np.clip(sq, 0.0, None)), np.nan)
        return np.where(r > 1.0, 1.0 / np.sqrt(1.0 + k * (r - 1.0)), np.nan)


def _optimal_v(r: np.ndarray, rho: np.ndarray, k: int, reading: str) -> np.ndarray:
    """The optimal squared decoder weight per unit of beta sigma^2 (0 where the direction is collapsed)."""
    if reading == "posterior":
        c = rho**2 + (1.0 - rho**2) / k
        # stationary point of r / (1 + v) + log(1 + c v): v^2 + (2 - r) v + 1 - r / c = 0
        disc = (r - 2.0) ** 2 - 4.0 * (1.0 - r / c)
        v = 0.5 * ((r - 2.0) + np.sqrt(np.clip(disc, 0.0, None)))
        return np.where(r > c, np.clip(v, 0.0, None), 0.0)
    e = (1.0 - rho**2) / (k * rho**2)
    # stationary point of r / (1 + v) + log(1 + v) + e v: e y^2 + y - r = 0 for y = 1 + v
    with np.errstate(invalid="ignore", divide="ignore"):
        y = np.where(e > 0, (np.sqrt(1.0 + 4.0 * e * r) - 1.0) / (2.0 * np.where(e > 0, e, 1.0)), r)
    return np.where(r > 1.0 + e, np.clip(y - 1.0, 0.0, None), 0.0)


@dataclass(frozen=True)
class Optimum:
    """The exact optimum of one direction at each rho: decoder weight, posterior-mean variance, KL, loss."""

    rho: np.ndarray
    v: np.ndarray  # optimal squared decoder weight / (beta sigma^2)
    mean_variance: np.ndarray  # Var_x E_q[z | x]: what the active-unit criterion thresholds
    kl: np.ndarray  # KL(q(z | x) || N(0, 1)), nats per example
    loss: np.ndarray  # the negative ELBO per unit of beta, up to a constant


def optimum(ratio: float, k: int, rho: float | np.ndarray, reading: str = "posterior", layers: int = 1,
            smooth: str = "both") -> Optimum | TwoLayerOptimum:
    """The exact optimum of one latent direction with r = `ratio` against rho (plots, the calibration benchmark).
    layers=2: the two-layer hierarchy's (``optimum_two_layer``: .kl and .mean_variance are the top layer's)."""
    if layers == 2:
        return optimum_two_layer(ratio, k, rho, reading, smooth)
    if layers != 1:
        raise ValueError(f"closed forms exist for 1 or 2 stochastic layers, got layers={layers}")
    _check(reading, k)
    rho = np.atleast_1d(np.asarray(rho, dtype=np.float64))
    if np.any((rho <= 0) | (rho > 1)):
        raise ValueError("rho must lie in (0, 1]")
    r = float(ratio)
    if r <= 0:
        raise ValueError(f"ratio lambda / (beta sigma^2) must be > 0, got {ratio}")
    v = _optimal_v(np.full_like(rho, r), rho, k, reading)
    return Optimum(rho=rho, v=v, mean_variance=_mean_variance(r, v), kl=kl_at(r, k, rho, v, reading),
                   loss=loss(r, k, rho, v, reading))


def _mean_variance(ratio: float, v: np.ndarray) -> np.ndarray:
    return ratio * v / (1.0 + v) ** 2


def _noise_factor(rho: np.ndarray, k: int, reading: str) -> np.ndarray:
    """c of the posterior reading (the optimal s^2 is 1 / (1 + c v)); 1 in the prior reading."""
    return rho**2 + (1.0 - rho**2) / k if reading == "posterior" else np.ones_like(rho)


def kl_at(ratio: float, k: int, rho: np.ndarray, v: np.ndarray, reading: str = "posterior") -> np.ndarray:
    """The KL of one direction at decoder weight v with the encoder optimised for it (``loss``'s companion: with
    both, a KL can be averaged over decoder weights, e.g. the Gibbs state exp(-loss / T) of noisy training)."""
    rho, v = np.asarray(rho, dtype=np.float64), np.asarray(v, dtype=np.float64)
    s2 = 1.0 / (1.0 + _noise_factor(rho, k, reading) * v)
    return 0.5 * (_mean_variance(ratio, v) + s2 - 1.0 - np.log(s2))


def loss(ratio: float, k: int, rho: np.ndarray, v: np.ndarray, reading: str = "posterior") -> np.ndarray:
    """The negative ELBO per unit of beta (constants dropped) after optimising the encoder, at decoder weight v."""
    rho, v = np.asarray(rho, dtype=np.float64), np.asarray(v, dtype=np.float64)
    if reading == "posterior":
        return ratio / (1.0 + v) + np.log1p(_noise_factor(rho, k, reading) * v)
    return ratio / (1.0 + v) + np.log1p(v) + (1.0 - rho**2) / (k * rho**2) * v


# ----------------------------------------------------------------------------------------- results-table rows
@dataclass(frozen=True)
class LinearGaussianCase:
    """A configuration of the results table that is this model, with what the closed form needs."""

    reading: str  # smooth_space
    k: int  # smooth_samples
    ratios: np.ndarray  # r = lambda_i / (beta sigma^2) of the top_dim latent directions (largest eigenvalues)
    layers: int = 1  # stochastic layers (2: latent_dims (d, d), the top layer's answer)
    smooth: str = "both"  # Config.smooth (matters for two layers only)

    def critical_rhos(self) -> np.ndarray:
        return critical_rho(self.ratios, self.k, self.reading, self.layers, self.smooth)

    def _optima(self, rho: np.ndarray) -> list:
        return [optimum(r, self.k, rho, self.reading, self.layers, self.smooth) for r in self.ratios]

    def top_kl(self, rho: np.ndarray) -> np.ndarray:
        """The exact optimum's top-layer KL (summed over the latent directions) at each rho."""
        return np.sum([o.kl for o in self._optima(rho)], axis=0)

    def active_fraction(self, rho: np.ndarray, threshold: float = 0.01) -> np.ndarray:
        """The fraction of latent directions the active-unit criterion counts at the exact optimum."""
        return np.mean([o.mean_variance > threshold for o in self._optima(rho)], axis=0)


def linear_gaussian_case(row: dict) -> LinearGaussianCase | None:
    """The closed-form case of one configuration (a row with the recorded run columns), or None when the
    configuration is not this model: the gaussian data set and likelihood, one stochastic layer -- or two of
    equal width (the two-layer hierarchy, except the posterior reading with smooth "decoder", which has no
    optimum) --, linear maps (hidden_layers 0), the ELBO without free bits, smoothed generative maps (smooth
    both or decoder), K >= 2. beta is the schedule's final beta_max; the data's eigenvalues are
    gaussian_eigenvalue * gaussian_ratio^i, as ouvae/data/synthetic.py generates them."""
    try:
        dims = [int(d) for d in str(row["latent_dims"]).split("-")]
        layers = int(row["n_layers"])
        two = layers == 2 and len(dims) == 2 and dims[0] == dims[1] and not (
            (row.get("smooth_space") or "posterior") == "posterior" and row["smooth"] == "decoder")
        if not (row["dataset"] == "gaussian" and row.get("likelihood", "gaussian") == "gaussian"
                and (layers == 1 or two)
                and row["hidden_layers"] == 0 and row["objective"] == "elbo" and not row["free_bits"]
                and row["smooth"] in ("both", "decoder") and (row["smooth_samples"] or 0) >= 2
                and row.get("smooth_space", "posterior") in READINGS):
            return None
        beta = float(json.loads(row["beta_params"])["beta_max"])
        top = int(str(row["latent_dims"]).split("-")[-1])
        lam = float(row["gaussian_eigenvalue"]) * float(row["gaussian_ratio"]) ** np.arange(int(row["gaussian_dim"]))
    except (KeyError, TypeError, ValueError):
        return None
    if beta <= 0 or top > lam.size:
        return None
    return LinearGaussianCase(reading=row.get("smooth_space") or "posterior", k=int(row["smooth_samples"]),
                              ratios=lam[:top] / (beta * float(row["likelihood_variance"])), layers=layers,
                              smooth=row["smooth"])


# ------------------------------------------------------------------------------------ two stochastic layers
SMOOTHS = ("both", "decoder")  # Config.smooth values that smooth the generative maps (both: also z1 -> z2)


def _check_two(reading: str, k: int, smooth: str) -> None:
    _check(reading, k)
    if smooth not in SMOOTHS:
        raise ValueError(f"smooth must be one of {SMOOTHS} (the generative maps smoothed), got {smooth!r}")


def top_instability(ratio: float | np.ndarray, k: int, rho: float | np.ndarray, reading: str = "prior",
                    smooth: str = "both") -> np.ndarray:
    """Two stochastic layers: a quantity whose sign is the top layer's state at the optimum, > 0 where z2 is
    active, < 0 where it is collapsed (the discriminant B^2 - 4 A C of the loss's second-order expansion in the
    top layer's weights (m, b) at the collapsed top; derivation in ``critical_rho_two_layer``).

    Each of ratio and rho may be an array (broadcast)."""
    _check_two(reading, k, smooth)
    r, rho = np.broadcast_arrays(np.asarray(ratio, dtype=np.float64), np.asarray(rho, dtype=np.float64))
    v = _optimal_v(r, rho, k, reading)  # the bottom layer's optimum while the top is collapsed (one-layer form)
    c = rho**2 + (1.0 - rho**2) / k
    enc = smooth == "both"  # the inference map z1 -> z2 reads the K-averaged copies of z1 too
    if reading == "posterior":
        # U = E[z1 u] = (c v + rho) / (1 + c v), E u^2 = c (1 + v) / (1 + c v), E z1^2 = tau^2 = 1
        if not enc:
            return 1.0 - c
        return (c * v + rho) ** 2 - c**2 * (1.0 + v) * (1.0 + c * v)
    with np.errstate(divide="ignore", invalid="ignore"):
        e = (1.0 - rho**2) / (k * rho**2)
    u = (v + rho) / (1.0 + v) + e * v if enc else 1.0 + e * v  # E[z1 u]
    vu = (v + c) / (1.0 + v) + e * v if enc else 1.0 + e * v  # E u^2
    p = (1.0 - rho) / (1.0 + v) + e if enc else e  # E[(x - w rho z1) u] / (w rho) in units of beta sigma^2
    b = rho * u + v * (1.0 - rho) * p
    return b**2 - (1.0 + e) * (rho**2 + v * (1.0 - rho) ** 2) * vu


_GRID = np.linspace(1e-3, 1.0 - 1e-4, 4000)


def critical_rho_two_layer(ratio: float | np.ndarray, k: int, reading: str = "prior",
                           smooth: str = "both") -> np.ndarray:
    """rho_c of the TOP layer of a two-layer linear-Gaussian hierarchy (latent_dims (d, d), hidden_layers 0),
    per latent direction with r = lambda / (beta sigma^2) = `ratio`; NaN where no rho in (0, 1) changes its
    state. In every case that has one, the top is active ABOVE rho_c (``top_instability`` > 0 there).

    The model is exactly what ``ouvae.model.HierarchicalVAE`` builds: q(z1 | x) = N(a x, s1^2),
    q(z2 | z1) = N(b u, s2^2) with u = z1 (smooth "decoder") or the K-average of z1's copies in q(z1 | x)'s
    coordinates (smooth "both": the inference map is smoothed as well), p(z2) = N(0, 1),
    p(z1 | z2) = N(m z2', tau^2) with a LEARNED tau^2 (a gauge: rescaling z1 leaves everything unchanged, so
    tau = 1 below), p(x | z1') = N(w z1', sigma^2); z2', z1' are the K-averaged copies; one shared beta on
    KL_1 = E[log q(z1 | x) - log p(z1 | z2)] and KL_2 = KL(q(z2 | z1) || N(0, 1)). (Every map is affine and
    also outputs its log-variance as an affine function of its input; at the optimum those slopes and the biases
    are 0 by symmetry, which the derivation assumes and the trainer's check confirms.)

    Derivation. The sign flip z2 -> -z2 is a symmetry, so the collapsed top (m = b = 0, s2 = 1) is a stationary
    point at which the loss's expansion in (m, b) decouples from the other parameters; these sit at the ONE-layer
    optimum (``optimum``: the top's output then does not depend on z1), with v its squared decoder weight.
    To second order the loss per unit of beta is A m^2 + B m b + C b^2 and the top becomes active where
    B^2 > 4 A C (numerically the transition is continuous, so this instability is the threshold):

    * posterior reading: x's decoder never sees z2, and E z1^2 = tau^2 = 1 at the one-layer optimum.
      A = c / 2, B = -E[z1 u], C = E u^2 / 2 with c = rho^2 + (1 - rho^2) / K. smooth "decoder" (u = z1): B^2 -
      4 A C = 1 - c > 0 for every rho < 1: the top is never collapsed, and the optimum is not even attained (its
      KL grows without bound as s2, tau -> 0: the posterior reading shrinks the noise term of log p(z1 | z2)
      by c, a gain of -log(c) / 2 for a deterministic copy of z1). smooth "both": active iff
      (c v + rho)^2 > c^2 (1 + v)(1 + c v); with the bottom collapsed (v = 0, r <= c) that is rho > c, i.e.
      rho > 1 / (K - 1): the top of the posterior reading activates with the bottom collapsed, since its
      total KL can be negative (the objective bounds no model).
    * prior reading (e = (1 - rho^2) / (K rho^2), c = rho^2 (1 + e)): z1's copies are drawn around the prior mean
      m z2', so the decoder reads rho z1 + (1 - rho) m z2' + noise of variance (1 - rho^2) tau^2 / K: activating
      z2 lowers tau^2 and with it that noise. A = (1 + e)(rho^2 + v (1 - rho)^2) / 2, C = E u^2 / 2,
      B = -(rho E[z1 u] + v (1 - rho) P), with E z1^2 = 1 + e v and
      - smooth "decoder": E[z1 u] = E u^2 = 1 + e v, P = e;
      - smooth "both": E[z1 u] = (v + rho) / (1 + v) + e v, E u^2 = (v + c) / (1 + v) + e v,
        P = (1 - rho) / (1 + v) + e.
      At rho -> 1 (e ~ 2 (1 - rho) / K) the condition becomes v > 1, i.e. r > 2 (decoder), and v^2 > 2,
      r > 1 + sqrt 2 (both); rho = 1 itself is degenerate (with tau^2 learned the top's state does not change
      the objective there).

    rho_c is the crossing of ``top_instability`` (explicit in rho) located on a grid of 4,000 points in (0, 1)
    and refined by bisection to 1e-12."""
    _check_two(reading, k, smooth)
    r = np.atleast_1d(np.asarray(ratio, dtype=np.float64))
    out = np.full(r.shape, np.nan)
    for i, ri in enumerate(r.flat):
        found = top_layer_crossings(ri, k, reading, smooth)
        if found.size == 1:  # several: NaN (the active set is not one interval; top_layer_crossings lists them)
            out.flat[i] = found[0]
    return out.reshape(np.shape(ratio)) if np.ndim(ratio) else out[0]


def top_layer_crossings(ratio: float, k: int, reading: str = "prior", smooth: str = "both") -> np.ndarray:
    """Every rho in (0, 1) at which the two-layer top changes state (``top_instability`` changes sign), rising.
    One crossing in most cases; e.g. prior/both at K = 20, r = 3 has three (active on (0.218, 0.254) and above
    0.884), which the exact optimum confirms (tests/test_calibration.py)."""
    s = np.sign(top_instability(ratio, k, _GRID, reading, smooth))
    out = []
    for j in np.nonzero(s[1:] != s[:-1])[0]:
        lo, hi = _GRID[j], _GRID[j + 1]
        rising = s[j + 1] > 0
        while hi - lo > 1e-12:
            mid = 0.5 * (lo + hi)
            if (top_instability(ratio, k, mid, reading, smooth) > 0) == rising:
                hi = mid
            else:
                lo = mid
        out.append(0.5 * (lo + hi))
    return np.array(out)


@dataclass(frozen=True)
class TwoLayerOptimum:
    """The optimum of one latent direction of the two-layer hierarchy at each rho (numerical, see
    ``optimum_two_layer``): the top layer's KL and posterior-mean variance (what the report and the active-unit
    criterion read), the bottom layer's, the loss, and the parameters (a, log s1^2, b, log s2^2, m, w)."""

    rho: np.ndarray
    kl: np.ndarray  # top layer: E KL(q(z2 | z1) || N(0, 1)), nats per example
    mean_variance: np.ndarray  # top layer: Var_x E_q[z2 | x] = b^2 a^2 lambda
    bottom_kl: np.ndarray  # E[log q(z1 | x) - log p(z1 | z2)]
    bottom_mean_variance: np.ndarray  # Var_x E_q[z1 | x] = a^2 lambda
    loss: np.ndarray  # the negative smoothed ELBO per unit of beta, up to a constant
    params: np.ndarray  # (len(rho), 6), in units where beta sigma^2 = 1 and tau = 1


def two_layer_loss(theta: np.ndarray, ratio: float, k: int, rho: float, reading: str, smooth: str
                   ) -> tuple[float, float, float]:
    """(loss, KL_1, KL_2) per unit of beta of one direction at theta = (a, log s1^2, b, log s2^2, m, w), in units
    beta sigma^2 = 1 (so lambda = r) and tau = 1 (the gauge), from the second moments of the Gaussian
    variables (x, z1, u, z2', z1'): the expected smoothed ELBO exactly, no sampling."""
    a, ls1, b, ls2, m, w = theta
    s1, s2, r = np.exp(ls1), np.exp(ls2), ratio  # s1, s2: variances
    d, c = 1.0 - rho**2, rho**2 + (1.0 - rho**2) / k
    enc = smooth == "both"
    vz = a * a * r + s1  # E z1^2
    uu = a * a * r + s1 * (c if enc else 1.0)  # E u^2
    uz = a * a * r + s1 * (rho if enc else 1.0)  # E u z1
    ux = a * r  # E u x
    if reading == "posterior":  # z2' = b u + s2^(1/2) (K-averaged copies' noise, E = c); z1' likewise
        recon = r * (1 - w * a) ** 2 + w * w * s1 * c
        res = vz - 2 * m * b * uz + m * m * (b * b * uu + s2 * c)  # E (z1 - m z2')^2
    else:  # z2' = rho z2 + sqrt(1 - rho^2) eta; z1' = rho z1 + (1 - rho) m z2' + sqrt(1 - rho^2) tau eta'
        zz = rho**2 * (b * b * uu + s2) + d / k  # E z2'^2
        res = vz - 2 * m * rho * b * uz + m * m * zz
        al, ga = w * rho, w * (1 - rho) * m
        recon = (r - 2 * al * a * r - 2 * ga * rho * b * ux + al * al * vz + 2 * al * ga * rho * b * uz
                 + ga * ga * zz + w * w * d / k)
    kl1 = 0.5 * (res - ls1 - 1.0)
    kl2 = 0.5 * (b * b * uu + s2 - 1.0 - ls2)
    return 0.5 * recon + kl1 + kl2, kl1, kl2


def optimum_two_layer(ratio: float, k: int, rho: float | np.ndarray, reading: str = "prior",
                      smooth: str = "both") -> TwoLayerOptimum:
    """The optimum of one direction of the two-layer hierarchy against rho. No closed form is derived for the
    active side (the top's threshold is closed-form: ``critical_rho_two_layer``), so this minimises the exact
    expected objective (``two_layer_loss``: second moments, no sampling) with BFGS from several starts -- the
    one-layer optimum with the top slightly switched on, a generic point, and the previous rho's optimum -- and
    keeps the best. Exact to the optimiser's tolerance (~1e-6 in the KL away from rho_c; slower convergence
    within ~0.01 of it, where the loss is flat along the top's weights)."""
    from scipy import optimize  # noqa: PLC0415 - only the two-layer case needs it

    _check_two(reading, k, smooth)
    if reading == "posterior" and smooth == "decoder":
        raise ValueError("posterior reading with smooth='decoder': the two-layer objective has no optimum (the "
                         "top layer's KL grows without bound; see critical_rho_two_layer)")
    rho = np.atleast_1d(np.asarray(rho, dtype=np.float64))
    if np.any((rho <= 0) | (rho > 1)):
        raise ValueError("rho must lie in (0, 1]")
    r = float(ratio)
    rows, prev = [], None
    for rh in rho:
        v = float(_optimal_v(np.array(r), np.array(rh), k, reading))
        if reading == "posterior":  # the one-layer optimum in these units: w^2 = v, a = w / (1 + v)
            w1, a1, s1 = np.sqrt(v), np.sqrt(v) / (1 + v), 1.0 / (1.0 + (rh**2 + (1 - rh**2) / k) * v)
        else:  # (rho w)^2 = v, a = w rho / (1 + v), s1^2 = 1 / (1 + v)
            w1 = np.sqrt(v) / rh
            a1, s1 = w1 * rh / (1 + v), 1.0 / (1.0 + v)
        starts = [np.array([a1, np.log(s1), 0.3, -0.1, 0.3, w1]), np.array([0.5, -0.5, 0.5, -0.5, 0.8, 1.0])]
        if prev is not None:
            starts.append(prev)
        fits = [optimize.minimize(lambda t: two_layer_loss(t, r, k, rh, reading, smooth)[0], s0, method="BFGS",
                                  options={"gtol": 1e-11, "maxiter": 20000}) for s0 in starts]
        best = min(fits, key=lambda f: f.fun)
        prev = best.x
        loss_, kl1, kl2 = two_layer_loss(best.x, r, k, rh, reading, smooth)
        a, _, b = best.x[:3]
        rows.append((kl2, b * b * a * a * r, kl1, a * a * r, loss_, *best.x))
    t = np.array(rows)
    return TwoLayerOptimum(rho=rho, kl=t[:, 0], mean_variance=t[:, 1], bottom_kl=t[:, 2],
                           bottom_mean_variance=t[:, 3], loss=t[:, 4], params=t[:, 5:])

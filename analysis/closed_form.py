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


def critical_rho(ratio: float | np.ndarray, k: int, reading: str = "posterior") -> np.ndarray:
    """rho_c of each latent direction with r = lambda / (beta sigma^2) = `ratio`; NaN where no rho in (0, 1)
    changes its state (posterior reading: r <= 1/K, collapsed at every rho, or r >= 1, active at every rho;
    prior reading: r <= 1, collapsed at every rho)."""
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


def optimum(ratio: float, k: int, rho: float | np.ndarray, reading: str = "posterior") -> Optimum:
    """The exact optimum of one latent direction with r = `ratio` against rho (plots, the calibration benchmark)."""
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

    def critical_rhos(self) -> np.ndarray:
        return critical_rho(self.ratios, self.k, self.reading)

    def top_kl(self, rho: np.ndarray) -> np.ndarray:
        """The exact optimum's top-layer KL (summed over the latent directions) at each rho."""
        return np.sum([optimum(r, self.k, rho, self.reading).kl for r in self.ratios], axis=0)

    def active_fraction(self, rho: np.ndarray, threshold: float = 0.01) -> np.ndarray:
        """The fraction of latent directions the active-unit criterion counts at the exact optimum."""
        return np.mean([optimum(r, self.k, rho, self.reading).mean_variance > threshold for r in self.ratios],
                       axis=0)


def linear_gaussian_case(row: dict) -> LinearGaussianCase | None:
    """The closed-form case of one configuration (a row with the recorded run columns), or None when the
    configuration is not this model: the gaussian data set and likelihood, one stochastic layer, linear maps
    (hidden_layers 0), the ELBO without free bits, smoothed generative maps (smooth both or decoder), K >= 2.
    beta is the schedule's final beta_max; the data's eigenvalues are gaussian_eigenvalue * gaussian_ratio^i, as
    ouvae/data/synthetic.py generates them."""
    try:
        if not (row["dataset"] == "gaussian" and row.get("likelihood", "gaussian") == "gaussian" and row["n_layers"] == 1
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
                              ratios=lam[:top] / (beta * float(row["likelihood_variance"])))

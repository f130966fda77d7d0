"""The Ornstein-Uhlenbeck operator T_rho, applied to networks whose input is a Gaussian latent.

T_rho f(eps) = E_{eta ~ N(0, I)} f(rho * eps + sqrt(1 - rho^2) * eta). For a latent z = mu + sigma * eps we draw K
correlated copies z'_k = mu + sigma * (rho * eps + sqrt(1 - rho^2) * eta_k) -- each has the same marginal as z,
so no rescaling is needed -- evaluate the network on all K copies in ONE batched pass (the copies are folded
into the batch dimension, so there is no Python loop over K) and average the outputs: a Monte Carlo estimate
of T_rho applied to the network.

rho = 1 or K = 1 return f(z) itself, so both are exactly the plain VAE: with one copy the "average" would be f
at a noisier point, which is a different model, not a smoothed one.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import torch
from torch.utils.checkpoint import checkpoint


class GaussianSample(NamedTuple):
    """A reparameterised sample z = mu + std * eps, kept with its standardized noise coordinates."""

    z: torch.Tensor
    mu: torch.Tensor
    std: torch.Tensor
    eps: torch.Tensor


def sample_gaussian(mu: torch.Tensor, logvar: torch.Tensor) -> GaussianSample:
    std = torch.exp(0.5 * logvar)
    eps = torch.randn_like(mu)
    return GaussianSample(mu + std * eps, mu, std, eps)


def is_identity(rho: float, k: int) -> bool:
    return rho >= 1.0 or k <= 1


def ou_noise(eps: torch.Tensor, rho: float, k: int) -> torch.Tensor:
    """K correlated copies of the standard normal `eps`: shape (K, *eps.shape), each copy again N(0, I)."""
    eta = torch.randn((k, *eps.shape), dtype=eps.dtype, device=eps.device)
    return rho * eps.unsqueeze(0) + math.sqrt(max(0.0, 1.0 - rho * rho)) * eta


def ou_smooth(f: Callable[[torch.Tensor], torch.Tensor], sample: GaussianSample, rho: float, k: int,
              recompute: bool = False) -> torch.Tensor:
    """Monte Carlo T_rho f at the latent `sample`: f on K correlated copies in one batched pass, outputs averaged.

    `recompute` trades time for memory: the K-fold activations inside f are not kept for the backward pass
    but recomputed from the (small) latent copies, so smoothing costs about one extra forward of the smoothed
    maps instead of K times their activation memory.
    """
    if is_identity(rho, k):
        return f(sample.z)
    copies = sample.mu.unsqueeze(0) + sample.std.unsqueeze(0) * ou_noise(sample.eps, rho, k)  # (K, B, ...)

    def averaged(c: torch.Tensor) -> torch.Tensor:
        return f(c.flatten(0, 1)).unflatten(0, (k, c.shape[1])).mean(0)  # one pass over all K*B rows

    if recompute and torch.is_grad_enabled():
        return checkpoint(averaged, copies, use_reentrant=False, preserve_rng_state=False)
    return averaged(copies)


def ou_operator(f: Callable[[torch.Tensor], torch.Tensor], eps: torch.Tensor, rho: float, k: int) -> torch.Tensor:
    """T_rho f(eps) for a function of standard-normal coordinates (mu = 0, std = 1); used by the tests."""
    return ou_smooth(f, GaussianSample(eps, torch.zeros_like(eps), torch.ones_like(eps), eps), rho, k)

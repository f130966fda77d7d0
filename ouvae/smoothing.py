"""The Ornstein-Uhlenbeck operator T_rho, applied to networks whose input is a Gaussian latent.

T_rho f(eps) = E_{eta ~ N(0, I)} f(rho * eps + sqrt(1 - rho^2) * eta). A latent z is read in the standardized
coordinates of a Gaussian N(center, scale^2) -- eps = (z - center) / scale -- and K correlated copies

    z'_k = center + scale * (rho * eps + sqrt(1 - rho^2) * eta_k) = z + (rho - 1)(z - center) + sqrt(1 - rho^2) scale eta_k

are formed (each has the same marginal as z when z ~ N(center, scale^2), so no rescaling is needed). The network is
evaluated on all K copies in ONE batched pass (the copies are folded into the rows, so there is no Python loop over
K) and its outputs are averaged: a Monte Carlo estimate of T_rho applied to the network.

Which Gaussian the copies are read in is the model's choice (``Config.smooth_space``, docs/readings.md): the
posterior q that produced the sample (the inference maps always; the generative maps in the ``posterior``
reading), or the generative conditional p(z | parent) (the generative maps in the ``prior`` reading, a valid
latent-variable model in which eta is more latent noise drawn from its prior).

Tensors carry a leading member dimension M (``ouvae/layers.py``): every member has its own rho, given as an
(M,) tensor, never branched on in Python. A member with rho = 1 takes the output at copy 0, which is exactly
f(z) (z + 0 * (z - center) + 0 * eta = z bit for bit), not an average of K equal values, so rho = 1 members are
exactly the plain VAE. When no member is smoothed (every rho = 1, or K = 1) the copies are not formed at all.

The noise eta is an input (drawn by the caller from the run's own generator), so this module has no random
state of its own: the same inputs give the same outputs, which makes resume exact.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import torch
from torch.utils.checkpoint import checkpoint

Tensor = torch.Tensor


class GaussianSample(NamedTuple):
    """A reparameterised sample z = mu + std * eps, kept with its standardized noise coordinates eps."""

    z: Tensor
    mu: Tensor
    std: Tensor
    eps: Tensor


def sample_gaussian(mu: Tensor, logvar: Tensor, eps: Tensor) -> GaussianSample:
    std = torch.exp(0.5 * logvar)
    return GaussianSample(mu + std * eps, mu, std, eps)


def is_identity(rho: float, k: int) -> bool:
    """True when T_rho with K copies is the identity (no smoothing): rho = 1 or K = 1."""
    return rho >= 1.0 or k <= 1


def ou_smooth(f: Callable[[Tensor], Tensor], z: Tensor, center: Tensor, scale: Tensor, rho: Tensor,
              eta: Tensor | None, identity: Tensor | None = None, recompute: bool = False) -> Tensor:
    """Monte Carlo T_rho f at the latent `z`, read in the coordinates of N(center, scale^2), per member.

    z, center, scale: (M, N, d) (center and scale may broadcast, e.g. 0 and 1 for the N(0, I) top prior);
    rho: (M,); eta: (M, K, N, d) standard normal, or None for no smoothing (then f(z)); identity: (M,) bool, True
    for members whose rho is 1 (they take f at copy 0, i.e. f(z) exactly). f maps (M, rows, d) to (M, rows, ...).
    `recompute` trades time for memory: the K-fold activations inside f are not kept for the backward pass but
    recomputed from the (small) latent copies.
    """
    if eta is None:
        return f(z)
    m, k, n = eta.shape[:3]
    r = rho.view(m, 1, 1, 1).to(z.dtype)
    z1 = z.unsqueeze(1)
    copies = z1 + (r - 1.0) * (z1 - center.unsqueeze(1)) + (1.0 - r * r).clamp_min(0.0).sqrt() * scale.unsqueeze(1) * eta

    def averaged(c: Tensor) -> Tensor:
        out = f(c.reshape(m, k * n, -1))  # one pass over all K*N rows of every member
        out = out.view(m, k, n, *out.shape[2:])
        mean = out.mean(1)
        if identity is None:
            return mean
        keep = identity.view(m, *([1] * (mean.dim() - 1)))
        return torch.where(keep, out[:, 0], mean)

    if recompute and torch.is_grad_enabled():
        return checkpoint(averaged, copies, use_reentrant=False, preserve_rng_state=False)
    return averaged(copies)

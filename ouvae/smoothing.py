"""The Ornstein-Uhlenbeck operator T_rho, applied to networks whose input is a Gaussian latent.

T_rho f(eps) = E_{eta ~ N(0, I)} f(rho * eps + sqrt(1 - rho^2) * eta). For a latent z = mu + sigma * eps we form K
correlated copies z'_k = mu + sigma * (rho * eps + sqrt(1 - rho^2) * eta_k) -- each has the same marginal as z,
so no rescaling is needed -- evaluate the network on all K copies in ONE batched pass (the copies are folded
into the rows, so there is no Python loop over K) and average the outputs: a Monte Carlo estimate of T_rho
applied to the network.

Tensors carry a leading member dimension M (``ouvae/layers.py``): every member has its own rho, given as an
(M,) tensor, never branched on in Python. A member with rho = 1 takes the output at copy 0, which is exactly
f(z) (rho * eps + 0 * eta = eps bit for bit), not an average of K equal values, so rho = 1 members are exactly
the plain VAE. When no member is smoothed (every rho = 1, or K = 1) the copies are not formed at all.

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


def correlated(eps: Tensor, rho: Tensor | float, eta: Tensor) -> Tensor:
    """rho * eps + sqrt(1 - rho^2) * eta: standard-normal coordinates correlated rho with eps.

    `eta` has the copies in a dimension that `eps` lacks (eps is broadcast against it); `rho` broadcasts too.
    """
    rho = torch.as_tensor(rho, dtype=eps.dtype, device=eps.device)
    return rho * eps + (1.0 - rho * rho).clamp_min(0.0).sqrt() * eta


def ou_smooth(f: Callable[[Tensor], Tensor], sample: GaussianSample, rho: Tensor, eta: Tensor | None,
              identity: Tensor | None = None, recompute: bool = False) -> Tensor:
    """Monte Carlo T_rho f at the latent `sample`, per member.

    sample tensors: (M, N, d); rho: (M,); eta: (M, K, N, d) standard normal, or None for no smoothing (then f(z));
    identity: (M,) bool, True for members whose rho is 1 (they take f at copy 0, i.e. f(z) exactly).
    f maps (M, rows, d) to (M, rows, ...). `recompute` trades time for memory: the K-fold activations inside f are
    not kept for the backward pass but recomputed from the (small) latent copies.
    """
    if eta is None:
        return f(sample.z)
    m, k, n = eta.shape[:3]
    r = rho.view(m, 1, 1, 1)
    copies = sample.mu.unsqueeze(1) + sample.std.unsqueeze(1) * correlated(sample.eps.unsqueeze(1), r, eta)

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


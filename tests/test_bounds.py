"""Every reported likelihood is a bound on log p(x) of a model one can name: checked against exact log p(x).

The models here are small enough for an exact likelihood: two stochastic layers of one unit each and three binary
pixels, so log p(x) is an integral over the two latents (and, in the prior reading, over the K = 2 copies' noise of
each smoothed generative map), computed by Gauss-Hermite quadrature in float64 with the model's own networks.
The bound the system reports must never exceed it beyond Monte Carlo error, for both readings, every smoothing
side and rho in {1, 0.9, 0.5, 0.2}; L_k must rise towards it with k. The posterior reading's smoothed objective,
which the system reports apart (smoothed_elbo), exceeds even the best log-likelihood any model can reach on the
data (minus its empirical entropy, Gibbs' inequality): that is why it is never reported as a bound.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from ouvae.config import Config
from ouvae.data import DatasetSplits
from ouvae.metrics import evaluate
from ouvae.population import Population
from ouvae.records import bound_model

PATTERNS = torch.tensor(list(itertools.product((0.0, 1.0), repeat=3)))  # every image of three binary pixels
PROBS = torch.tensor([0.42, 0.02, 0.02, 0.04, 0.04, 0.02, 0.02, 0.42])  # two modes: a latent pays off


def three_pixel_data(n: int = 2000, seed: int = 0) -> DatasetSplits:
    """n images drawn from PROBS over the eight patterns, shape (n, 1, 1, 3), already binary."""
    g = torch.Generator().manual_seed(seed)
    x = PATTERNS[torch.multinomial(PROBS, n, replacement=True, generator=g)].view(n, 1, 1, 3)
    return DatasetSplits("bits3", x, x, x, "static", "bernoulli", "three binary pixels")


def trained(space: str, smooth: str, rho: float, latent_dims=(1, 1), k: int = 2, epochs: int = 8) -> Population:
    cfg = Config(dataset="bits3", latent_dims=latent_dims, hidden_units=8, hidden_layers=1, rho=rho, smooth=smooth,
                 smooth_space=space, smooth_samples=k, epochs=epochs, batch_size=100, eval_every=epochs,
                 eval_iw_k=5, device="cpu", lr=1e-2)
    pop = Population([cfg], data=three_pixel_data())
    pop.fit()
    return pop


def gauss_hermite(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Nodes and log weights for E_{u ~ N(0, 1)}[f(u)] = sum_i w_i f(u_i)."""
    nodes, weights = np.polynomial.hermite_e.hermegauss(n)
    return torch.tensor(nodes), torch.tensor(np.log(weights / math.sqrt(2 * math.pi)))


def product_grid(n_dims: int, nodes: torch.Tensor, log_w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """All node tuples of an n_dims-dimensional product rule: (G, n_dims) points, (G,) log weights."""
    if n_dims == 0:
        return torch.zeros(1, 0, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)
    idx = torch.cartesian_prod(*[torch.arange(len(nodes))] * n_dims).view(-1, n_dims)
    return nodes[idx], log_w[idx].sum(-1)


def exact_log_px(pop: Population, rho: float, n_z: int = 40, n_eta: int = 6) -> torch.Tensor:
    """log p(x) of the model the system says its bounds are of (ouvae.records.bound_model), for every pattern.

    Generation: z2 ~ N(0, 1); (mu1, logvar1) = mean_k dec(copy_k of z2); z1 ~ N(mu1, exp(logvar1)); logits =
    mean_k dec_x(copy_k of z1). In the smoothed prior-reading model the copies are
    c + rho (z - c) + sqrt(1 - rho^2) s eta_k with (c, s) the latent's generative conditional and eta_k ~ N(0, 1),
    integrated out like the latents; in the plain HVAE the maps read z itself.
    """
    model, cfg = pop.model, pop.cfg
    smoothed = bound_model(cfg.replace(rho=rho)) == "smoothed-prior"
    k = cfg.smooth_samples if smoothed else 0
    r = rho if smoothed else 1.0
    noise = math.sqrt(max(0.0, 1.0 - r * r))
    p = model.layout.views(model.flat.detach().double())
    zn, zw = gauss_hermite(n_z if not smoothed else 20)
    en, ew = gauss_hermite(n_eta)
    eta, eta_w = product_grid(k, en, ew)  # (E, k)

    def smooth_map(f, z: torch.Tensor, center: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """mean_k f(copy_k) for every z (..., ) and every eta node: (..., E, out)."""
        if k == 0:
            return f(p, z.reshape(1, -1, 1)).view(*z.shape, 1, -1)
        copies = (z + (r - 1) * (z - center)).unsqueeze(-1).unsqueeze(-1) \
            + noise * scale.unsqueeze(-1).unsqueeze(-1) * eta  # (..., E, k)
        out = f(p, copies.reshape(1, -1, 1))
        return out.view(*copies.shape, -1).mean(-2)

    # top latent z2 and the first map's copy noise: A = n_z * E grid points
    mu_lv = smooth_map(model.decoders[0], zn, torch.zeros_like(zn), torch.ones_like(zn))  # (Z, E, 2)
    mu1, std1 = mu_lv[..., 0].reshape(-1), torch.exp(0.5 * mu_lv[..., 1]).reshape(-1)
    log_w_a = (zw.unsqueeze(1) + eta_w.unsqueeze(0)).reshape(-1)  # (A,)
    # z1 = mu1 + std1 * u, u a standard normal node
    z1 = mu1.unsqueeze(1) + std1.unsqueeze(1) * zn.unsqueeze(0)  # (A, Z)
    logits = smooth_map(model.decode_x, z1, mu1.unsqueeze(1).expand_as(z1), std1.unsqueeze(1).expand_as(z1))
    log_w = log_w_a.view(-1, 1, 1) + zw.view(1, -1, 1) + eta_w.view(1, 1, -1)  # (A, Z, E)
    x = PATTERNS.double()  # (P, 3)
    lik = (x * torch.nn.functional.logsigmoid(logits.unsqueeze(-2))
           + (1 - x) * torch.nn.functional.logsigmoid(-logits.unsqueeze(-2))).sum(-1)  # (A, Z, E, P)
    return torch.logsumexp((log_w.unsqueeze(-1) + lik).flatten(0, 2), 0)  # (P,)


def reported(pop: Population, rho: float, k: int, repeats: int = 400, seed: int = 1):
    """The system's evaluation (metrics.evaluate, as the trainer reports it) on every pattern `repeats` times."""
    x = PATTERNS.repeat(repeats, 1).view(-1, 1, 1, 3)
    gen = torch.Generator().manual_seed(seed)
    return evaluate(pop.model, x, iw_k=k, rho=[rho], generator=gen, batch_size=800)[0]


CASES = [(space, smooth, rho) for space in ("posterior", "prior") for smooth in ("both", "encoder", "decoder")
         for rho in (1.0, 0.9, 0.5, 0.2)]


@pytest.mark.parametrize("space,smooth,rho", CASES)
def test_reported_bound_never_exceeds_the_exact_log_likelihood(space, smooth, rho):
    pop = trained(space, smooth, rho)
    exact = exact_log_px(pop, rho).mean().item()
    ev = reported(pop, rho, k=20)
    # Monte Carlo error of the mean of 3,200 per-example bounds: well under 0.01 nats here
    assert ev.iw_bound <= exact + 0.01, (ev.iw_bound, exact)
    assert ev.elbo <= ev.iw_bound + 0.01
    # a bound that is far below log p(x) would pass trivially: these are tight (trained encoder, k = 20)
    assert ev.iw_bound >= exact - 0.25, (ev.iw_bound, exact)


def test_the_bound_rises_towards_the_exact_log_likelihood_with_k():
    pop = trained("prior", "decoder", 0.9, epochs=20)  # its latents are in use: L_1 is ~0.2 nats below log p(x)
    exact = exact_log_px(pop, 0.9).mean().item()
    l1 = reported(pop, 0.9, k=2, repeats=200).elbo  # L_1: evaluation takes k >= 2 samples, and their mean ELBO
    l5, l50 = (reported(pop, 0.9, k=k, repeats=200).iw_bound for k in (5, 50))
    assert l1 < l5 < l50 <= exact + 0.01
    assert exact - l50 < 0.2 * (exact - l1)


def test_the_quadrature_is_the_plain_hvae_at_rho_one_in_both_readings():
    """The exact likelihoods the other tests trust: at rho = 1 the prior reading's 6-D integral (with no copies)
    and the plain HVAE's agree, and both are log-probabilities of a distribution over the 8 patterns."""
    pop = trained("prior", "both", 0.9)
    plain = exact_log_px(pop, 1.0)
    assert torch.logsumexp(plain, 0).item() == pytest.approx(0.0, abs=1e-6)
    assert torch.logsumexp(exact_log_px(pop, 0.9), 0).item() == pytest.approx(0.0, abs=1e-4)


def test_the_posterior_readings_smoothed_objective_exceeds_every_models_likelihood():
    """Decoder-side smoothing in posterior coordinates hands the decoder mu_q(x) past the latent channel: its
    objective beats minus the data's empirical entropy, which no model's mean log p(x) can (Gibbs' inequality).
    The reported bounds (of the plain HVAE with the trained weights) stay below it."""
    data = three_pixel_data()
    pop = trained("posterior", "decoder", 0.1, latent_dims=(4,), k=9, epochs=15)
    counts = torch.unique(data.validation.view(-1, 3), dim=0, return_counts=True)[1].double()
    freq = counts / counts.sum()
    best = (freq * freq.log()).sum().item()  # max over models of the mean log p(x) on this data
    ev = evaluate(pop.model, data.validation, iw_k=20, rho=[0.1], generator=torch.Generator().manual_seed(0))[0]
    assert ev.smoothed_elbo > best + 0.3  # impossible for a bound on any model's log p(x)
    assert ev.iw_bound <= best + 0.01 and ev.elbo <= best + 0.01
    assert bound_model(pop.cfg) == "hvae"

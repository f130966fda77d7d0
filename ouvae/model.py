"""Hierarchical VAE: bottom-up Markov inference, top-down generation, N(0, I) top prior, OU-smoothed maps.

Inference  q(z_1 | x) q(z_2 | z_1) ... q(z_L | z_{L-1})
Generation p(z_L) = N(0, I), p(z_l | z_{l+1}), p(x | z_1)

Every map whose input is a latent is evaluated through `ou_smooth` (docs/method.md): the inference maps
z_l -> z_{l+1} when smoothing the encoder, the generative maps z_{l+1} -> z_l and z_1 -> x when smoothing the
decoder. The map that reads x is never smoothed. The inference maps' copies live in the coordinates of the
posterior sample that feeds them. The generative maps' copies live, by ``Config.smooth_space``, in the same
posterior coordinates ("posterior": the decoder then sees mu_q(x) and sigma_q(x) past the noisy latent, so the
smoothed objective is not an ELBO of any model) or in the coordinates of the latent's own generative conditional
p(z_l | z_{l+1}), N(0, I) at the top ("prior": a valid latent-variable model whose extra noise eta has q = p).

One code path builds every variant (biva-pytorch style): the architecture string only picks how the maps that
read or write images are built; latent-to-latent maps are MLPs in both. Every tensor has a leading member
dimension M (``ouvae/layers.py``): the model is M networks of one architecture that differ in their parameters
(one row each of ``flat``), their rho and their noise; a single run is M = 1.

Randomness is an input: ``draw_noise`` draws every standard-normal variable one pass needs from a generator the
caller owns, and ``forward`` is a deterministic function of (parameters, x, rho, noise).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from .config import Config
from .layers import ConvDecoder, ConvEncoder, MemberMLP, ParamLayout
from .smoothing import GaussianSample, is_identity, ou_smooth, sample_gaussian

Tensor = torch.Tensor
LOG_2PI = math.log(2 * math.pi)
LIKELIHOODS = ("bernoulli", "discretized_logistic", "gaussian")
# Likelihoods whose decoder outputs one value per channel (logits, or the mean of a Gaussian of fixed variance).
ONE_OUTPUT = ("bernoulli", "gaussian")


@dataclass
class Pass:
    """One posterior sample per example through the model; tensors are (M members, N examples, ...).

    kl[..., l] is the KL term of layer l (bottom to top): analytic for the top layer against N(0, I), the
    single-sample estimate log q(z_l | z_{l-1}) - log p(z_l | z_{l+1}) below it (with bottom-up inference
    z_{l+1} depends on z_l, so no closed form exists there).
    """

    log_px: Tensor  # (M, N) log p(x | z_1)
    log_q: Tensor  # (M, N, L) log q(z_l | .) at the samples
    log_p: Tensor  # (M, N, L) log p(z_l | .) at the samples
    kl: Tensor  # (M, N, L)
    posterior_means: list[Tensor]  # (M, N, d_l): mean of q(z_l | parent sample) per layer, for active units

    @property
    def log_weight(self) -> Tensor:
        """log p(x, z) - log q(z | x): the importance weight of this sample, (M, N)."""
        return self.log_px + self.log_p.sum(-1) - self.log_q.sum(-1)


@dataclass
class Noise:
    """Every standard-normal draw of one pass: eps per latent layer, and the OU copies' eta per smoothed map
    (None where a map is not smoothed). Shapes: eps[l] (M, N, d_l); eta (M, K, N, d of the map's input)."""

    eps: list[Tensor]
    encoders: list[Tensor | None]
    decoders: list[Tensor | None]
    decode_x: Tensor | None


def gaussian_log_density(s: GaussianSample, mu: Tensor, logvar: Tensor) -> Tensor:
    return -0.5 * (LOG_2PI + logvar + (s.z - mu) ** 2 * torch.exp(-logvar)).sum(-1)


def sample_log_density(s: GaussianSample) -> Tensor:
    """log q(z) of a sample under its own Gaussian: depends only on the noise, cheaper and exact."""
    return -0.5 * (LOG_2PI + 2 * torch.log(s.std) + s.eps**2).sum(-1)


def kl_to_standard_normal(mu: Tensor, logvar: Tensor) -> Tensor:
    return 0.5 * (mu**2 + torch.exp(logvar) - 1.0 - logvar).sum(-1)


class HierarchicalVAE(nn.Module):
    """M hierarchical VAEs of the architecture `cfg` describes, member m initialised from seeds[m]."""

    def __init__(self, cfg: Config, image_shape: tuple[int, int, int], likelihood: str, seeds: Sequence[int]):
        super().__init__()
        if likelihood not in LIKELIHOODS:
            raise ValueError(f"unknown likelihood {likelihood!r}; choose one of {LIKELIHOODS}")
        if not seeds:
            raise ValueError("a model needs at least one member (one seed)")
        self.cfg, self.image_shape, self.likelihood = cfg, tuple(image_shape), likelihood
        dims = cfg.latent_dims
        c, h, w = image_shape
        self.out_channels = c * (1 if likelihood in ONE_OUTPUT else 2)
        layout = ParamLayout()
        mlp = dict(hidden_units=cfg.hidden_units, hidden_layers=cfg.hidden_layers, activation=cfg.activation)
        if cfg.architecture == "conv":
            self.encode_x = ConvEncoder(layout, self.image_shape, 2 * dims[0], cfg.hidden_units, cfg.activation)
            self.decode_x = ConvDecoder(layout, dims[0], self.image_shape, self.out_channels, cfg.hidden_units,
                                        cfg.activation)
        else:
            self.encode_x = MemberMLP(layout, "encode_x", c * h * w, 2 * dims[0], **mlp)
            self.decode_x = MemberMLP(layout, "decode_x", dims[0], self.out_channels * h * w, **mlp)
        # encoders[l]: z_{l+1} | z_l ; decoders[l]: z_l | z_{l+1}   (0-based layer indices)
        self.encoders = [MemberMLP(layout, f"encoders.{l}", dims[l], 2 * dims[l + 1], **mlp)
                         for l in range(len(dims) - 1)]
        self.decoders = [MemberMLP(layout, f"decoders.{l}", dims[l + 1], 2 * dims[l], **mlp)
                         for l in range(len(dims) - 1)]
        self.layout = layout
        self.flat = nn.Parameter(torch.stack([layout.init_member(int(s)) for s in seeds]))

    @property
    def members(self) -> int:
        return self.flat.shape[0]

    # ----- noise ------------------------------------------------------------------------------------------------
    def smoothed_maps(self, rho: Sequence[float], generative: bool = True) -> tuple[bool, bool]:
        """(encoder maps smoothed, decoder maps smoothed) for these members' rho: a host-side decision on the
        configuration (no tensor is looked at), so a population with no smoothed member never forms copies.
        generative=False leaves the generative maps unsmoothed whatever the configuration."""
        on = any(not is_identity(r, self.cfg.smooth_samples) for r in rho)
        return (on and self.cfg.smooth in ("both", "encoder"),
                on and generative and self.cfg.smooth in ("both", "decoder"))

    def draw_noise(self, rows: int, rho: Sequence[float], generator: torch.Generator,
                   generative: bool = True) -> Noise:
        """All standard-normal variables of one pass over `rows` examples for each member smoothed at rho[m]
        (all members, or a chunk of them), in ONE draw; generative=False: none for the generative maps, whose
        pass is then the unsmoothed one."""
        m, k, dims = len(rho), self.cfg.smooth_samples, self.cfg.latent_dims
        enc, dec = self.smoothed_maps(rho, generative)
        shapes: list[tuple[int, ...] | None] = [(m, rows, d) for d in dims]
        shapes += [(m, k, rows, dims[l]) if enc else None for l in range(len(dims) - 1)]
        shapes += [(m, k, rows, dims[l + 1]) if dec else None for l in range(len(dims) - 1)]
        shapes.append((m, k, rows, dims[0]) if dec else None)
        sizes = [math.prod(s) if s else 0 for s in shapes]
        flat = torch.randn(sum(sizes), generator=generator, device=self.flat.device)
        parts = [c.view(s) if s else None for c, s in zip(flat.split(sizes), shapes)]
        n = len(dims)
        return Noise(eps=parts[:n], encoders=parts[n:2 * n - 1], decoders=parts[2 * n - 1:3 * n - 2],
                     decode_x=parts[-1])

    # ----- the pass ---------------------------------------------------------------------------------------------
    def forward(self, x: Tensor, rho: Tensor, noise: Noise, params: Tensor | None = None) -> Pass:
        """One sample of every latent per example. x: (M, N, C, H, W); rho: (M,) smoothing per member; `params`:
        the members' parameters (default all of ``flat``; a chunk of its rows runs a chunk of the members)."""
        p = self.layout.views(self.flat if params is None else params)
        m, n = x.shape[:2]
        identity = rho >= 1.0
        recompute = self.cfg.smooth_recompute

        def smooth(f, z: Tensor, center: Tensor, scale: Tensor, eta: Tensor | None) -> Tensor:
            return ou_smooth(lambda c: f(p, c), z, center, scale, rho, eta, identity, recompute)

        q = self.encode_x(p, x.reshape(m, n, -1) if self.cfg.architecture == "mlp" else x)
        samples: list[GaussianSample] = []
        q_params: list[tuple[Tensor, Tensor]] = []
        for l in range(len(self.cfg.latent_dims)):
            if l > 0:
                s = samples[-1]
                q = smooth(self.encoders[l - 1], s.z, s.mu, s.std, noise.encoders[l - 1])
            mu, logvar = q.chunk(2, dim=-1)
            q_params.append((mu, logvar))
            samples.append(sample_gaussian(mu, logvar, noise.eps[l]))

        # generation, top down: each latent is read by the map below it in the coordinates smooth_space names
        top = len(samples) - 1
        prior_space = self.cfg.smooth_space == "prior"
        log_q = torch.stack([sample_log_density(s) for s in samples], -1)
        z_top = samples[top].z
        log_p_layers = [-0.5 * (LOG_2PI + z_top**2).sum(-1)]  # top to bottom while generating
        kl_layers = [kl_to_standard_normal(*q_params[top])]
        center, scale = ((torch.zeros_like(z_top), torch.ones_like(z_top)) if prior_space
                         else (samples[top].mu, samples[top].std))
        for l in range(top - 1, -1, -1):
            mu_p, logvar_p = smooth(self.decoders[l], samples[l + 1].z, center, scale,
                                    noise.decoders[l]).chunk(2, dim=-1)
            log_p_layers.append(gaussian_log_density(samples[l], mu_p, logvar_p))
            kl_layers.append(log_q[..., l] - log_p_layers[-1])
            center, scale = ((mu_p, torch.exp(0.5 * logvar_p)) if prior_space
                             else (samples[l].mu, samples[l].std))
        out = smooth(self.decode_x, samples[0].z, center, scale, noise.decode_x)
        return Pass(log_px=self.log_likelihood(x, out.reshape(m, n, self.out_channels, *self.image_shape[1:])),
                    log_q=log_q, log_p=torch.stack(log_p_layers[::-1], -1), kl=torch.stack(kl_layers[::-1], -1),
                    posterior_means=[mu for mu, _ in q_params])

    def log_likelihood(self, x: Tensor, out: Tensor) -> Tensor:
        """log p(x | z_1) per member and example, (M, N); out holds logits, the Gaussian mean (variance fixed at
        cfg.likelihood_variance) or (mean, log scale) per channel."""
        if self.likelihood == "bernoulli":
            return -F.binary_cross_entropy_with_logits(out, x, reduction="none").flatten(2).sum(-1)
        if self.likelihood == "gaussian":
            var = self.cfg.likelihood_variance
            return -0.5 * (LOG_2PI + math.log(var) + (x - out) ** 2 / var).flatten(2).sum(-1)
        mean, log_scale = out.chunk(2, dim=2)
        return discretized_logistic_log_prob(x, torch.sigmoid(mean), log_scale).flatten(2).sum(-1)

    def first_encoder_weight(self) -> str:
        """Name of the first weight that reads x (gradient-variance diagnostic, Fig. 4 of the appendix)."""
        return self.layout.specs[0].name


def discretized_logistic_log_prob(x: Tensor, mean: Tensor, log_scale: Tensor, bins: int = 256) -> Tensor:
    """log P(x) for 8-bit intensities x in [0, 1] under a logistic discretised into `bins` buckets
    (PixelCNN++ / IAF style, single component), edges at 0 and 1 extended to infinity."""
    log_scale = log_scale.clamp(min=-7.0)
    half = 0.5 / (bins - 1)
    inv_s = torch.exp(-log_scale)
    cdf_plus = torch.sigmoid((x + half - mean) * inv_s)
    cdf_minus = torch.sigmoid((x - half - mean) * inv_s)
    log_cdf_plus = F.logsigmoid((x + half - mean) * inv_s)  # for x == 0
    log_one_minus_cdf_minus = -F.softplus((x - half - mean) * inv_s)  # for x == 1
    mid = torch.log((cdf_plus - cdf_minus).clamp(min=1e-12))
    return torch.where(x < half, log_cdf_plus, torch.where(x > 1 - half, log_one_minus_cdf_minus, mid))

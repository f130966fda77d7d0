"""Hierarchical VAE: bottom-up Markov inference, top-down generation, N(0, I) top prior, OU-smoothed maps.

Inference  q(z_1 | x) q(z_2 | z_1) ... q(z_L | z_{L-1})
Generation p(z_L) = N(0, I), p(z_l | z_{l+1}), p(x | z_1)

Every map whose input is a latent is evaluated through `ou_smooth` (DESIGN.md section 2): the inference maps
z_l -> z_{l+1} when smoothing the encoder, the generative maps z_{l+1} -> z_l and z_1 -> x when smoothing the
decoder. The map that reads x is never smoothed. The copies live in the noise coordinates of the posterior
sample that feeds the map (the only sample the training pass has for that latent).

One code path builds every variant (biva-pytorch style): the architecture string only picks how the maps that
read or write images are built; latent-to-latent maps are MLPs in both.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from .config import Config
from .smoothing import GaussianSample, ou_smooth, sample_gaussian

LOG_2PI = math.log(2 * math.pi)
_ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU, "elu": nn.ELU, "gelu": nn.GELU, "softplus": nn.Softplus}


def mlp(n_in: int, n_out: int, cfg: Config) -> nn.Sequential:
    layers: list[nn.Module] = []
    width = n_in
    for _ in range(cfg.hidden_layers):
        layers += [nn.Linear(width, cfg.hidden_units), _ACTIVATIONS[cfg.activation]()]
        width = cfg.hidden_units
    layers.append(nn.Linear(width, n_out))
    return nn.Sequential(*layers)


def conv_encoder(image_shape: tuple[int, int, int], n_out: int, cfg: Config) -> nn.Sequential:
    """Strided convolutions down to a 4x4-ish map, then a linear head (the map that reads x)."""
    c, h, w = image_shape
    ch, act = cfg.hidden_units, _ACTIVATIONS[cfg.activation]
    layers: list[nn.Module] = [nn.Conv2d(c, ch, 3, padding=1), act()]
    while h > 7:
        layers += [nn.Conv2d(ch, ch, 4, stride=2, padding=1), act()]
        h, w = h // 2, w // 2
    layers += [nn.Flatten(), nn.Linear(ch * h * w, n_out)]
    return nn.Sequential(*layers)


class ConvDecoder(nn.Module):
    """Linear to a small feature map, transposed convolutions up to the image (the map that writes x)."""

    def __init__(self, n_in: int, image_shape: tuple[int, int, int], out_channels: int, cfg: Config):
        super().__init__()
        c, h, w = image_shape
        ups = 0
        while h > 7:
            h, w, ups = h // 2, w // 2, ups + 1
        self.start = (cfg.hidden_units, h, w)
        act = _ACTIVATIONS[cfg.activation]
        layers: list[nn.Module] = [act()]
        for _ in range(ups):
            layers += [nn.ConvTranspose2d(cfg.hidden_units, cfg.hidden_units, 4, stride=2, padding=1), act()]
        layers.append(nn.Conv2d(cfg.hidden_units, out_channels, 3, padding=1))
        self.fc = nn.Linear(n_in, cfg.hidden_units * h * w)
        self.net = nn.Sequential(*layers)
        self.image_hw = image_shape[1:]

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        y = self.net(self.fc(z).view(-1, *self.start))
        if y.shape[-2:] != self.image_hw:  # odd sizes (e.g. 28 -> 7 -> 28 is exact; others are cropped)
            y = y[..., : self.image_hw[0], : self.image_hw[1]]
        return y


@dataclass
class Pass:
    """One posterior sample per example through the model. All tensors have the batch as first dimension.

    kl[:, l] is the KL term of layer l (bottom to top): analytic for the top layer against N(0, I), the
    single-sample estimate log q(z_l | z_{l-1}) - log p(z_l | z_{l+1}) below it (with bottom-up inference
    z_{l+1} depends on z_l, so no closed form exists there).
    """

    log_px: torch.Tensor  # (B,) log p(x | z_1)
    log_q: torch.Tensor  # (B, L) log q(z_l | .) at the samples
    log_p: torch.Tensor  # (B, L) log p(z_l | .) at the samples
    kl: torch.Tensor  # (B, L)
    posterior_means: list[torch.Tensor]  # mean of q(z_l | parent sample) per layer, for active units

    @property
    def log_weight(self) -> torch.Tensor:
        """log p(x, z) - log q(z | x): the importance weight of this sample."""
        return self.log_px + self.log_p.sum(1) - self.log_q.sum(1)


def gaussian_log_density(s: GaussianSample, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    return -0.5 * (LOG_2PI + logvar + (s.z - mu) ** 2 * torch.exp(-logvar)).sum(-1)


def sample_log_density(s: GaussianSample) -> torch.Tensor:
    """log q(z) of a sample under its own Gaussian: depends only on the noise, cheaper and exact."""
    return -0.5 * (LOG_2PI + 2 * torch.log(s.std) + s.eps**2).sum(-1)


def kl_to_standard_normal(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    return 0.5 * (mu**2 + torch.exp(logvar) - 1.0 - logvar).sum(-1)


class HierarchicalVAE(nn.Module):
    def __init__(self, cfg: Config, image_shape: tuple[int, int, int], likelihood: str):
        super().__init__()
        if likelihood not in ("bernoulli", "discretized_logistic"):
            raise ValueError(f"unknown likelihood {likelihood!r}")
        self.cfg, self.image_shape, self.likelihood = cfg, image_shape, likelihood
        dims = cfg.latent_dims
        x_dim = math.prod(image_shape)
        out_channels = image_shape[0] * (1 if likelihood == "bernoulli" else 2)
        if cfg.architecture == "conv":
            self.encode_x: nn.Module = conv_encoder(image_shape, 2 * dims[0], cfg)
            self.decode_x: nn.Module = ConvDecoder(dims[0], image_shape, out_channels, cfg)
        else:
            self.encode_x = nn.Sequential(nn.Flatten(), mlp(x_dim, 2 * dims[0], cfg))
            self.decode_x = nn.Sequential(mlp(dims[0], out_channels * x_dim // image_shape[0], cfg),
                                          nn.Unflatten(1, (out_channels, *image_shape[1:])))
        # encoders[l]: z_{l+1} | z_l ; decoders[l]: z_l | z_{l+1}   (0-based layer indices)
        self.encoders = nn.ModuleList(mlp(dims[l], 2 * dims[l + 1], cfg) for l in range(len(dims) - 1))
        self.decoders = nn.ModuleList(mlp(dims[l + 1], 2 * dims[l], cfg) for l in range(len(dims) - 1))

    def forward(self, x: torch.Tensor, rho: float | None = None, k: int | None = None) -> Pass:
        """One sample of every latent per example, with smoothing at `rho` (default: the config's)."""
        rho = self.cfg.rho if rho is None else rho
        k = self.cfg.smooth_samples if k is None else k
        enc_rho = rho if self.cfg.smooth in ("both", "encoder") else 1.0
        dec_rho = rho if self.cfg.smooth in ("both", "decoder") else 1.0
        recompute = self.cfg.smooth_recompute

        params = self.encode_x(x)
        samples: list[GaussianSample] = []
        q_params: list[tuple[torch.Tensor, torch.Tensor]] = []
        for l in range(len(self.cfg.latent_dims)):
            if l > 0:
                params = ou_smooth(self.encoders[l - 1], samples[-1], enc_rho, k, recompute)
            mu, logvar = params.chunk(2, dim=-1)
            q_params.append((mu, logvar))
            samples.append(sample_gaussian(mu, logvar))

        n_layers = len(samples)
        log_q = torch.stack([sample_log_density(s) for s in samples], 1)
        log_p_layers, kl_layers = [], []
        for l in range(n_layers):
            if l == n_layers - 1:
                z = samples[l].z
                log_p_layers.append(-0.5 * (LOG_2PI + z**2).sum(-1))
                kl_layers.append(kl_to_standard_normal(*q_params[l]))
            else:
                mu_p, logvar_p = ou_smooth(self.decoders[l], samples[l + 1], dec_rho, k, recompute).chunk(2, dim=-1)
                log_p_layers.append(gaussian_log_density(samples[l], mu_p, logvar_p))
                kl_layers.append(log_q[:, l] - log_p_layers[-1])
        out = ou_smooth(self.decode_x, samples[0], dec_rho, k, recompute)
        return Pass(
            log_px=self.log_likelihood(x, out),
            log_q=log_q,
            log_p=torch.stack(log_p_layers, 1),
            kl=torch.stack(kl_layers, 1),
            posterior_means=[mu for mu, _ in q_params],
        )

    def log_likelihood(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        if self.likelihood == "bernoulli":
            return -F.binary_cross_entropy_with_logits(out, x, reduction="none").flatten(1).sum(1)
        mean, log_scale = out.chunk(2, dim=1)
        return discretized_logistic_log_prob(x, torch.sigmoid(mean), log_scale).flatten(1).sum(1)

    def first_encoder_layer(self) -> nn.Module:
        """The first layer that reads x (gradient-variance diagnostic, DESIGN.md section 2)."""
        return next(m for m in self.encode_x.modules() if isinstance(m, (nn.Linear, nn.Conv2d)))


def discretized_logistic_log_prob(x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor,
                                  bins: int = 256) -> torch.Tensor:
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

"""Training objectives: the beta-weighted ELBO with free bits, and the IWAE bound; KL-annealing schedules.

Why schedules are plain functions of (config, epoch progress): a search over schedule families (Optuna) only
has to vary config fields, and a resumed run recomputes the same beta from the step counter alone.
"""

from __future__ import annotations

import math

import torch

from .config import Config
from .model import HierarchicalVAE


def beta_at(cfg: Config, epoch: float) -> float:
    """KL weight after `epoch` (fractional) epochs of training.

    constant: beta_max. linear / cosine / sigmoid: warm-up from beta_min to beta_max over anneal_epochs.
    cyclical (Fu et al. 2019): n_cycles cycles of anneal_epochs each, rising over the first cycle_ratio of a
    cycle and holding beta_max for the rest; after the last cycle beta stays at beta_max.
    """
    lo, hi, span = cfg.beta_min, cfg.beta_max, cfg.anneal_epochs
    if cfg.beta_schedule == "constant":
        return hi
    if cfg.beta_schedule == "cyclical":
        if epoch >= cfg.n_cycles * span:
            return hi
        t = min(1.0, (epoch % span) / (span * cfg.cycle_ratio))
        return lo + (hi - lo) * t
    t = min(1.0, max(0.0, epoch / span))
    if cfg.beta_schedule == "linear":
        ramp = t
    elif cfg.beta_schedule == "cosine":
        ramp = 0.5 * (1.0 - math.cos(math.pi * t))
    else:  # sigmoid, rescaled so that it runs exactly from 0 at t = 0 to 1 at t = 1
        s = cfg.sigmoid_steepness
        a, b = 1 / (1 + math.exp(s / 2)), 1 / (1 + math.exp(-s / 2))
        ramp = (1 / (1 + math.exp(-s * (t - 0.5))) - a) / (b - a)
    return lo + (hi - lo) * ramp


def training_loss(model: HierarchicalVAE, x: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean loss over the batch, and the batch-mean total KL (detached, for logging).

    ELBO: -E[log p(x|z)] + beta * sum_l max(KL_l, free_bits), the floor applied to the batch-mean KL of each
    layer (Kingma et al. 2016). IWAE(k): -log mean_k w_k with k posterior samples per example (beta and free
    bits do not apply to a bound on log p(x)).
    """
    cfg = model.cfg
    if cfg.objective == "iwae":
        k = cfg.iw_samples
        out = model(x.repeat(k, *([1] * (x.dim() - 1))))
        log_w = out.log_weight.view(k, x.shape[0])
        bound = torch.logsumexp(log_w, 0) - math.log(k)
        loss = -bound.mean()
        return loss, out.kl.sum(1).mean().detach()
    out = model(x)
    kl_per_layer = out.kl.mean(0)
    if cfg.free_bits > 0:
        kl_per_layer = torch.clamp(kl_per_layer, min=cfg.free_bits)
    recon = -out.log_px.mean()
    loss = recon + beta * kl_per_layer.sum()
    return loss, out.kl.sum(1).mean().detach()

"""Training objectives: the beta-weighted ELBO with free bits, and the IWAE bound; KL-annealing schedules.

Why schedules are plain functions of (config, epoch progress): a search over schedule families (Optuna) only
has to vary config fields, and a resumed run recomputes the same beta from the step counter alone. In a
population every member has its own schedule and free bits; they enter the loss as (M,) tensors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

from .config import BETA_SCHEDULES, Config
from .model import HierarchicalVAE, Noise

Tensor = torch.Tensor


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


class MemberSchedules:
    """Every member's beta schedule as (M,) float64 tensors on the device, so that a training step computes beta
    from the device's step counter without the host (beta_at's arithmetic, op for op, in float64: the float32
    result equals ``beta_at`` for every schedule, tests/test_step.py)."""

    def __init__(self, configs: Sequence[Config], device: torch.device):
        def column(values) -> torch.Tensor:  # noqa: ANN001
            return torch.tensor(list(values), dtype=torch.float64, device=device)

        self.kind = torch.tensor([BETA_SCHEDULES.index(c.beta_schedule) for c in configs], device=device)
        self.lo, self.hi = column(c.beta_min for c in configs), column(c.beta_max for c in configs)
        self.span = column(c.anneal_epochs for c in configs)
        self.cycles_end = column(c.n_cycles * c.anneal_epochs for c in configs)
        self.rise = column(c.anneal_epochs * c.cycle_ratio for c in configs)
        self.steep = column(c.sigmoid_steepness for c in configs)
        # the sigmoid's end points, from math.exp on the host exactly as beta_at computes them
        ends = [(1 / (1 + math.exp(c.sigmoid_steepness / 2)), 1 / (1 + math.exp(-c.sigmoid_steepness / 2)))
                for c in configs]
        self.sig_a, self.sig_b = column(a for a, _ in ends), column(b for _, b in ends)

    def beta(self, epoch: torch.Tensor) -> torch.Tensor:
        """(M,) float32 beta of every member after `epoch` (a float64 scalar tensor) epochs."""
        lo, hi, code = self.lo, self.hi, {name: i for i, name in enumerate(BETA_SCHEDULES)}
        cyc = torch.clamp(torch.fmod(epoch, self.span) / self.rise, max=1.0)
        cyclical = torch.where(epoch >= self.cycles_end, hi, lo + (hi - lo) * cyc)
        t = torch.clamp(epoch / self.span, 0.0, 1.0)
        cosine = 0.5 * (1.0 - torch.cos(math.pi * t))
        sigmoid = (1 / (1 + torch.exp(-self.steep * (t - 0.5))) - self.sig_a) / (self.sig_b - self.sig_a)
        ramp = torch.where(self.kind == code["cosine"], cosine, torch.where(self.kind == code["sigmoid"], sigmoid, t))
        out = torch.where(self.kind == code["constant"], hi,
                          torch.where(self.kind == code["cyclical"], cyclical, lo + (hi - lo) * ramp))
        return out.to(torch.float32)


@dataclass
class Loss:
    """Per-member training loss (M,) -- sum it for backward, so each member's gradient is its own -- and the
    batch-mean total KL per member (M,), detached, for logging."""

    per_member: Tensor
    kl: Tensor


def rows_for(model: HierarchicalVAE, batch: int) -> int:
    """Examples per member in one training pass: the batch, times k posterior samples for IWAE(k)."""
    cfg = model.cfg
    return batch * (cfg.iw_samples if cfg.objective == "iwae" else 1)


def training_loss(model: HierarchicalVAE, x: Tensor, rho: Tensor, noise: Noise, beta: Tensor,
                  free_bits: Tensor, params: Tensor | None = None) -> Loss:
    """The loss of every member on its batch x (M, B, C, H, W) -- of all members, or of a chunk of them whose
    parameters `params` are (see HierarchicalVAE.forward).

    ELBO: -E[log p(x|z)] + beta * sum_l max(KL_l, free_bits), the floor applied to the batch-mean KL of each
    layer (Kingma et al. 2016) and only where free_bits > 0. IWAE(k): -log mean_k w_k with k posterior samples
    per example (beta and free bits do not apply to a bound on log p(x)). beta, free_bits: (M,).
    """
    cfg = model.cfg
    m, b = x.shape[:2]
    if cfg.objective == "iwae":
        k = cfg.iw_samples
        out = model(x.repeat(1, k, *([1] * (x.dim() - 2))), rho, noise, params)
        log_w = out.log_weight.view(m, k, b)
        bound = torch.logsumexp(log_w, 1) - math.log(k)
        return Loss(-bound.mean(1), out.kl.sum(-1).mean(1).detach())
    out = model(x, rho, noise, params)
    kl_per_layer = out.kl.mean(1)  # (M, L)
    floor = free_bits.view(m, 1)
    kl_per_layer = torch.where(floor > 0, torch.maximum(kl_per_layer, floor), kl_per_layer)
    recon = -out.log_px.mean(1)
    return Loss(recon + beta * kl_per_layer.sum(-1), out.kl.sum(-1).mean(1).detach())

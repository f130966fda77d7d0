"""Evaluation of trained members: ELBO, importance-weighted bound L_k, per-layer KL, active units, grad variance.

Why one sampling pass serves all metrics: L_k needs k posterior samples per example; the same samples give a
k-sample-averaged ELBO and per-layer KL (lower variance than one sample) and the Monte Carlo posterior means
E_q[z_l | x] needed for active units. Samples are drawn in chunks so L_5000 fits in memory, and every member of a
population is evaluated in the same batched passes, on the same images.
Kept apart from the model (biva-pytorch style) so evaluation can change without touching training.

Every likelihood reported is a bound on log p(x) of a model one can name (``bound_model``): in the prior reading
the smoothed generative model itself; in the posterior reading, whose smoothed objective bounds no model, the plain
hierarchical VAE with the trained weights (generative maps unsmoothed, the smoothed encoder as the proposal). The
smoothed training objective is then measured apart (``smoothed_elbo``, one sample per example) and never called a
likelihood. Active units and the top layer's KL depend on q alone, so they mean the same under either model.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence

import torch

from .layers import member_slices
from .model import HierarchicalVAE
from .objectives import rows_for, training_loss

Tensor = torch.Tensor
ACTIVE_UNIT_THRESHOLD = 0.01  # Burda et al. 2016


def active_units(posterior_means: Tensor, threshold: float = ACTIVE_UNIT_THRESHOLD,
                 noise_variance: Tensor | None = None) -> Tensor:
    """Units u with Cov_x(E_q[u | x]) > threshold; `posterior_means` is (..., N examples, units) -> (...) counts.

    Above the first layer E_q[u | x] is a Monte Carlo mean over posterior samples of the layers below, and its
    noise adds to the spread across x: a top layer that carries nothing counts as active at few samples (measured on
    a trained 4x20 digits model: 20 of 20 top units at k = 5, 12-16 at k = 25, 8-10 at k = 100). `noise_variance`
    (..., units), the mean over examples of each mean's Monte Carlo variance, is subtracted: the spread of the
    estimated means minus their noise is an unbiased estimate of Cov_x(E_q[u | x]) whatever the sample count."""
    if posterior_means.shape[-2] < 2:
        raise ValueError("active units need at least two evaluation examples")
    spread = posterior_means.var(-2, unbiased=True)
    if noise_variance is not None:
        spread = spread - noise_variance
    return (spread > threshold).sum(-1)


@dataclass
class Evaluation:
    """The metrics of one member (plain Python numbers: they go into JSON, Parquet and checkpoints)."""

    elbo: float
    iw_bound: float
    iw_k: int
    recon: float
    kl_total: float
    layer_kl: list[float]  # bottom to top
    layer_active_units: list[int]  # bottom to top
    # the training objective (beta = 1, no free bits) with the maps smoothed as in training; equal to elbo and
    # kl_total where that objective is the ELBO of the bound's model, no bound at all otherwise
    smoothed_elbo: float
    smoothed_kl_total: float

    @property
    def top_kl(self) -> float:
        return self.layer_kl[-1]

    @property
    def top_active_units(self) -> int:
        return self.layer_active_units[-1]

    def as_dict(self) -> dict:
        return {**asdict(self), "top_kl": self.top_kl, "top_active_units": self.top_active_units}


def expand_members(x: Tensor, members: int) -> Tensor:
    """The same images for every member: (N, ...) -> (M, N, ...) without a copy."""
    return x.unsqueeze(0).expand(members, *x.shape)


# Rows (members x examples x samples) per evaluation pass. On a CPU small passes stay in cache: measured on the
# digits demo model (1 thread), 2,000 rows evaluate 2-2.5x faster than 20,000. A GPU wants large passes.
EVAL_ROWS = {"cpu": 2_000, "cuda": 50_000}


@torch.no_grad()
def evaluate(model: HierarchicalVAE, data: Tensor, *, iw_k: int, rho: Sequence[float], generator: torch.Generator,
             batch_size: int = 100, max_rows: int | None = None, chunk: int | None = None) -> list[Evaluation]:
    """All metrics of every member on `data` (N, C, H, W; already binarized), with `iw_k` posterior samples per
    example (at least 2: active_units), smoothing member m at rho[m]. Members are evaluated `chunk` at a time
    (default all at once), and `max_rows` bounds members x examples x samples per forward pass (default: EVAL_ROWS
    for the device)."""
    if iw_k < 2:
        raise ValueError(f"evaluation needs iw_k >= 2 posterior samples per example (active units), got {iw_k}")
    rows = max_rows if max_rows is not None else EVAL_ROWS.get(model.flat.device.type, EVAL_ROWS["cuda"])
    out: list[Evaluation] = []
    for part in member_slices(model.members, chunk):
        out += _evaluate(model, model.flat[part], data, iw_k=iw_k, rho=list(rho)[part], generator=generator,
                         batch_size=batch_size, max_rows=rows)
    return out


def _evaluate(model: HierarchicalVAE, params: Tensor, data: Tensor, *, iw_k: int, rho: Sequence[float],
              generator: torch.Generator, batch_size: int, max_rows: int) -> list[Evaluation]:
    """evaluate() for the members whose parameters are the rows `params`."""
    device = params.device
    m, n, n_layers = params.shape[0], data.shape[0], len(model.cfg.latent_dims)
    rho_t = torch.tensor(list(rho), dtype=params.dtype, device=device)
    generative = model.cfg.bound_smooths_generative
    # the smoothed objective differs from the bound's ELBO only when the bound leaves smoothed generative maps out
    separate_objective = model.smoothed_maps(rho)[1] and not generative
    smoothed_log_w = torch.zeros(m, dtype=torch.float64, device=device)
    smoothed_kl = torch.zeros_like(smoothed_log_w)
    log_w_mean = torch.zeros(m, dtype=torch.float64, device=device)
    iw = torch.zeros_like(log_w_mean)
    log_px = torch.zeros_like(log_w_mean)
    kl_sum = torch.zeros(m, n_layers, dtype=torch.float64, device=device)
    means: list[list[Tensor]] = [[] for _ in range(n_layers)]
    mean_noise = [torch.zeros(m, d, dtype=torch.float64, device=device) for d in model.cfg.latent_dims]
    for start in range(0, n, batch_size):
        x = data[start:start + batch_size].to(device)
        b = x.shape[0]
        chunk = max(1, min(iw_k, max_rows // (b * m)))
        log_w_parts = []
        mean_sums = [torch.zeros(m, b, d, dtype=torch.float64, device=device) for d in model.cfg.latent_dims]
        square_sums = [torch.zeros_like(s) for s in mean_sums]
        for s0 in range(0, iw_k, chunk):
            c = min(chunk, iw_k - s0)
            xs = expand_members(x.repeat(c, *([1] * (x.dim() - 1))), m)
            out = model(xs, rho_t, model.draw_noise(c * b, rho, generator, generative), params)
            log_w_parts.append(out.log_weight.view(m, c, b))
            log_px += out.log_px.double().sum(1)
            kl_sum += out.kl.double().sum(1)
            for l, mu in enumerate(out.posterior_means):
                mu = mu.view(m, c, b, -1).double()
                mean_sums[l] += mu.sum(1)
                square_sums[l] += (mu * mu).sum(1)
        if separate_objective:
            out = model(expand_members(x, m), rho_t, model.draw_noise(b, rho, generator), params)
            smoothed_log_w += out.log_weight.double().sum(1)
            smoothed_kl += out.kl.double().sum(-1).sum(1)
        log_w = torch.cat(log_w_parts, 1).double()  # (M, iw_k, b)
        log_w_mean += log_w.mean(1).sum(1)
        iw += (torch.logsumexp(log_w, 1) - math.log(iw_k)).sum(1)
        for l in range(n_layers):
            mean = mean_sums[l] / iw_k
            means[l].append(mean)
            # each example's sample variance of the posterior mean over the k draws, / k: its mean's noise
            within = (square_sums[l] - iw_k * mean * mean).clamp(min=0.0) / (iw_k - 1)
            mean_noise[l] += (within / iw_k).sum(1)
    draws = n * iw_k
    layer_kl = (kl_sum / draws).cpu().tolist()
    units = torch.stack([active_units(torch.cat(parts, 1), noise_variance=mean_noise[l] / n)
                         for l, parts in enumerate(means)], 1).cpu().tolist()
    elbo, bound, recon = (log_w_mean / n).cpu().tolist(), (iw / n).cpu().tolist(), (-log_px / draws).cpu().tolist()
    kl_total = [float(sum(layer_kl[i])) for i in range(m)]
    if separate_objective:
        smoothed_elbo, smoothed_kl_total = (smoothed_log_w / n).cpu().tolist(), (smoothed_kl / n).cpu().tolist()
    else:
        smoothed_elbo, smoothed_kl_total = elbo, kl_total
    return [Evaluation(elbo=elbo[i], iw_bound=bound[i], iw_k=iw_k, recon=recon[i], kl_total=kl_total[i],
                       layer_kl=layer_kl[i], layer_active_units=[int(u) for u in units[i]],
                       smoothed_elbo=smoothed_elbo[i], smoothed_kl_total=smoothed_kl_total[i]) for i in range(m)]


def gradient_variance(model: HierarchicalVAE, x: Tensor, *, rho: Sequence[float], beta: Tensor, free_bits: Tensor,
                      draws: int, generator: torch.Generator, chunk: int | None = None) -> list[float]:
    """Per member: mean over weights of the variance, across `draws` noise draws on a fixed batch x (B, C, H, W),
    of the gradient of the training loss w.r.t. the first encoder layer's weight (Fig. 4 of the appendix).
    Members are taken `chunk` at a time (default all at once)."""
    name = model.first_encoder_weight()
    out: list[float] = []
    for part in member_slices(model.members, chunk):
        params = model.flat[part].detach().requires_grad_()
        m = params.shape[0]
        rho_part = list(rho)[part]
        rho_t = torch.tensor(rho_part, dtype=params.dtype, device=params.device)
        grads = []
        for _ in range(draws):
            noise = model.draw_noise(rows_for(model, x.shape[0]), rho_part, generator)
            loss = training_loss(model, expand_members(x, m), rho_t, noise, beta[part], free_bits[part], params)
            (grad,) = torch.autograd.grad(loss.per_member.sum(), params)
            grads.append(model.layout.views(grad)[name].reshape(m, -1))
        out += torch.stack(grads).var(0, unbiased=True).mean(-1).cpu().tolist()
    return out

"""Evaluation of a trained model: ELBO, importance-weighted bound L_k, per-layer KL, active units, grad variance.

Why one sampling pass serves all metrics: L_k needs k posterior samples per example; the same samples give a
k-sample-averaged ELBO and per-layer KL (lower variance than one sample) and the Monte Carlo posterior means
E_q[z_l | x] needed for active units. Samples are drawn in chunks so L_5000 fits in memory.
Kept apart from the model (biva-pytorch style) so evaluation can change without touching training.
"""

from __future__ import annotations

import math
import resource
import sys
from dataclasses import asdict, dataclass

import torch

from .model import HierarchicalVAE
from .objectives import training_loss

ACTIVE_UNIT_THRESHOLD = 0.01  # Burda et al. 2016


def active_units(posterior_means: torch.Tensor, threshold: float = ACTIVE_UNIT_THRESHOLD) -> int:
    """Number of units u with Cov_x(E_q[u | x]) > threshold; `posterior_means` is (N examples, units)."""
    if posterior_means.shape[0] < 2:
        raise ValueError("active units need at least two evaluation examples")
    return int((posterior_means.var(0, unbiased=True) > threshold).sum().item())


@dataclass
class Evaluation:
    elbo: float
    iw_bound: float
    iw_k: int
    recon: float
    kl_total: float
    layer_kl: list[float]  # bottom to top
    layer_active_units: list[int]  # bottom to top

    @property
    def top_kl(self) -> float:
        return self.layer_kl[-1]

    @property
    def top_active_units(self) -> int:
        return self.layer_active_units[-1]

    def as_dict(self) -> dict:
        return {**asdict(self), "top_kl": self.top_kl, "top_active_units": self.top_active_units}


@torch.no_grad()
def evaluate(model: HierarchicalVAE, data: torch.Tensor, *, iw_k: int, rho: float | None = None,
             batch_size: int = 100, max_rows: int = 20_000) -> Evaluation:
    """All metrics on `data` (already binarized), with `iw_k` posterior samples per example.

    `max_rows` bounds examples x samples per forward pass (memory); smoothing at `rho` (default: the model's).
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    n, n_layers = data.shape[0], len(model.cfg.latent_dims)
    sums = {"log_w_mean": 0.0, "log_px": 0.0, "iw": 0.0}
    kl_sum = torch.zeros(n_layers, dtype=torch.float64)
    means: list[list[torch.Tensor]] = [[] for _ in range(n_layers)]
    for start in range(0, n, batch_size):
        x = data[start:start + batch_size].to(device)
        b = x.shape[0]
        chunk = max(1, min(iw_k, max_rows // b))
        log_w_parts, mean_sums = [], [torch.zeros(b, d, device=device) for d in model.cfg.latent_dims]
        for s0 in range(0, iw_k, chunk):
            c = min(chunk, iw_k - s0)
            out = model(x.repeat(c, *([1] * (x.dim() - 1))), rho=rho)
            log_w_parts.append(out.log_weight.view(c, b))
            sums["log_px"] += out.log_px.double().sum().item()
            kl_sum += out.kl.double().sum(0).cpu()
            for l, mu in enumerate(out.posterior_means):
                mean_sums[l] += mu.view(c, b, -1).sum(0)
        log_w = torch.cat(log_w_parts, 0).double()  # (iw_k, b)
        sums["log_w_mean"] += log_w.mean(0).sum().item()
        sums["iw"] += (torch.logsumexp(log_w, 0) - math.log(iw_k)).sum().item()
        for l in range(n_layers):
            means[l].append((mean_sums[l] / iw_k).cpu())
    model.train(was_training)
    draws = n * iw_k
    layer_kl = (kl_sum / draws).tolist()
    return Evaluation(
        elbo=sums["log_w_mean"] / n,
        iw_bound=sums["iw"] / n,
        iw_k=iw_k,
        recon=-sums["log_px"] / draws,
        kl_total=float(sum(layer_kl)),
        layer_kl=layer_kl,
        layer_active_units=[active_units(torch.cat(m, 0)) for m in means],
    )


def gradient_variance(model: HierarchicalVAE, x: torch.Tensor, beta: float, draws: int) -> float:
    """Mean over weights of the variance, across `draws` noise draws on a fixed batch, of the gradient of the
    training loss w.r.t. the first encoder layer's weight (Fig. 4 of the paper's appendix)."""
    layer = model.first_encoder_layer()
    grads = []
    for _ in range(draws):
        model.zero_grad(set_to_none=True)
        loss, _ = training_loss(model, x, beta)
        (grad,) = torch.autograd.grad(loss, layer.weight)
        grads.append(grad.detach().flatten())
    model.zero_grad(set_to_none=True)
    return torch.stack(grads).var(0, unbiased=True).mean().item()


def peak_memory_bytes(device: torch.device) -> int:
    """CUDA: the allocator's peak since the last reset. CPU: the process's maximum resident set size."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)  # Linux reports KiB, macOS bytes

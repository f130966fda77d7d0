"""The trainer's speed against a fixed reference that shares nothing with it: a plain PyTorch training loop of the
sweep-demo model (one run, nn.Linear layers, torch.optim.Adam fused), and ouvae's populations of the same model.

    PYTHONPATH=. python benchmarks/plain_reference.py [--members 1 4] [--seconds 6] [--rho 0.9] [--out FILE.json]

Why: "a population's per-member speed is at least 0.95x a single run" means little when the single run is our own
code (Trainer is a population of one). The reference here is written from the model's definition
(docs/method.md) with torch.nn only -- no ouvae layer, model, objective, optimizer or population -- so a slowdown
in the shared code shows against it. Only the data are ouvae's (digits as ``load_dataset`` splits them), so both
train on the same images.

The model is the sweep-demo preset's (the default sweep's): digits (8x8, dynamically binarised, Bernoulli
likelihood), 4 stochastic layers of 10 units, every map an MLP of two tanh layers of 200 units, OU smoothing of
every map that reads a latent with K = 5 copies in the posterior's coordinates, ELBO with beta = 1, Adam at 1e-3,
batch 100 of the first 797 training images. One optimizer step = forward, backward and update on one batch.

Printed: steps/s of the plain run; member-steps/s of each population size M (M runs as one batched model, ouvae's
sweep trains M = 4 per CPU trial) and their ratio to the plain run. On a CPU both use one thread, as a sweep trial
does. Timings on a machine shared with other work are noise: run it on an idle one.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

PRESET = "sweep-demo"
LOG_2PI = math.log(2 * math.pi)


# ----- the plain model: torch.nn only -------------------------------------------------------------------------------
def mlp(n_in: int, n_out: int, hidden: int = 200, layers: int = 2) -> nn.Sequential:
    widths = [n_in] + [hidden] * layers
    parts: list[nn.Module] = []
    for a, b in zip(widths, widths[1:]):
        parts += [nn.Linear(a, b), nn.Tanh()]
    return nn.Sequential(*parts, nn.Linear(widths[-1], n_out))


class PlainOUVAE(nn.Module):
    """A hierarchical VAE with bottom-up inference q(z_1|x) q(z_2|z_1) ..., top-down generation p(z_L) = N(0, I),
    p(z_l|z_{l+1}), p(x|z_1); every map that reads a latent is smoothed by T_rho with K copies read in the
    coordinates of the posterior sample that feeds it."""

    def __init__(self, x_dim: int, latent_dims: tuple[int, ...], k: int):
        super().__init__()
        self.k = k
        self.encode_x = mlp(x_dim, 2 * latent_dims[0])
        self.encoders = nn.ModuleList(mlp(latent_dims[l], 2 * latent_dims[l + 1]) for l in range(len(latent_dims) - 1))
        self.decoders = nn.ModuleList(mlp(latent_dims[l + 1], 2 * latent_dims[l]) for l in range(len(latent_dims) - 1))
        self.decode_x = mlp(latent_dims[0], x_dim)

    def smooth(self, net: nn.Module, z: torch.Tensor, mu: torch.Tensor, std: torch.Tensor, rho: float) -> torch.Tensor:
        """Monte Carlo T_rho net at z: the mean of net over K copies mu + std (rho eps + sqrt(1 - rho^2) eta)."""
        if rho >= 1.0:
            return net(z)
        eta = torch.randn(self.k, *z.shape)
        copies = z + (rho - 1.0) * (z - mu) + math.sqrt(1.0 - rho * rho) * std * eta
        return net(copies.reshape(-1, z.shape[-1])).view(self.k, z.shape[0], -1).mean(0)

    def loss(self, x: torch.Tensor, rho: float) -> torch.Tensor:
        """The negative ELBO (beta = 1), averaged over the batch x (N, x_dim) of binary pixels."""
        mu, logvar = self.encode_x(x).chunk(2, -1)
        layers = []  # (z, mu, std, log q(z|.)) bottom to top
        for l in range(len(self.encoders) + 1):
            if l > 0:
                z_below, mu_below, std_below, _ = layers[-1]
                mu, logvar = self.smooth(self.encoders[l - 1], z_below, mu_below, std_below, rho).chunk(2, -1)
            std, eps = torch.exp(0.5 * logvar), torch.randn_like(mu)
            layers.append((mu + std * eps, mu, std, -0.5 * (LOG_2PI + logvar + eps**2).sum(-1)))
        z_top, mu_top, std_top, _ = layers[-1]
        kl = 0.5 * (mu_top**2 + std_top**2 - 1.0 - 2 * torch.log(std_top)).sum(-1)  # top layer against N(0, I)
        for l in range(len(layers) - 2, -1, -1):
            z_above, mu_above, std_above, _ = layers[l + 1]
            mu_p, logvar_p = self.smooth(self.decoders[l], z_above, mu_above, std_above, rho).chunk(2, -1)
            z, _, _, log_q = layers[l]
            log_p = -0.5 * (LOG_2PI + logvar_p + (z - mu_p) ** 2 * torch.exp(-logvar_p)).sum(-1)
            kl = kl + log_q - log_p
        z0, mu0, std0, _ = layers[0]
        logits = self.smooth(self.decode_x, z0, mu0, std0, rho)
        log_px = -F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(-1)
        return (kl - log_px).mean()


def adam(params, lr: float) -> tuple[torch.optim.Optimizer, str]:
    """torch.optim.Adam, fused where this torch supports it on the device, else foreach."""
    try:
        return torch.optim.Adam(params, lr=lr, fused=True), "fused"
    except (RuntimeError, TypeError):
        return torch.optim.Adam(params, lr=lr, foreach=True), "foreach"


def plain_rate(train: torch.Tensor, cfg, rho: float, seconds: float, seed: int = 0) -> tuple[float, str]:
    """Optimizer steps per second of the plain run (after two warm-up steps)."""
    torch.manual_seed(seed)
    model = PlainOUVAE(train[0].numel(), cfg.latent_dims, cfg.smooth_samples)
    opt, kind = adam(model.parameters(), cfg.lr)
    flat = train.reshape(len(train), -1)
    batch, order, position = cfg.batch_size, torch.randperm(len(flat)), 0

    def step() -> None:
        nonlocal order, position
        if position >= len(flat):
            order, position = torch.randperm(len(flat)), 0
        x = torch.bernoulli(flat[order[position:position + batch]])  # dynamic binarization
        position += batch
        loss = model.loss(x, rho)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(2):
        step()
    n, t0 = 0, time.perf_counter()
    while n < 3 or time.perf_counter() - t0 < seconds:
        step()
        n += 1
    return n / (time.perf_counter() - t0), kind


# ----- ouvae's populations of the same model ------------------------------------------------------------------------
def population_rate(members: int, rho: float, seconds: float) -> float:
    """Member-steps per second of `members` runs (seeds 0..M-1) trained as one ouvae population on the CPU."""
    from bench_util import steps_per_second
    from ouvae.config import Config
    from ouvae.population import Population

    cfg = Config.from_preset(PRESET, rho=rho, device="cpu", num_threads=1)
    population = Population([cfg.replace(seed=s) for s in range(members)])
    return members * steps_per_second(population, seconds)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--members", nargs="+", type=int, default=[1, 4],
                    help="population sizes to compare (default 1 4: a run alone, and the sweep's CPU population)")
    ap.add_argument("--rho", type=float, default=0.9, help="smoothing of every run (default 0.9; 1 = no smoothing)")
    ap.add_argument("--seconds", type=float, default=6.0, help="timing window per measurement (default 6)")
    ap.add_argument("--out", default=None, help="also write the figures as JSON")
    args = ap.parse_args(argv)
    from ouvae.config import Config
    from ouvae.data import load_dataset

    torch.set_num_threads(1)
    cfg = Config.from_preset(PRESET, rho=args.rho)
    train = load_dataset(cfg.dataset).train[: cfg.n_train]
    plain, kind = plain_rate(train, cfg, args.rho, args.seconds)
    print(f"{PRESET} model, rho {args.rho:g}, K={cfg.smooth_samples}, batch {cfg.batch_size}; CPU "
          f"({os.cpu_count()} cores), 1 thread, torch {torch.__version__}")
    print(f"plain PyTorch single run (Adam {kind}): {plain:.1f} steps/s")
    print(f"{'members':>7} {'member-steps/s':>14} {'per member vs plain':>19}")
    rows = []
    for m in args.members:
        rate = population_rate(m, args.rho, args.seconds)
        rows.append({"members": m, "member_steps_per_s": rate, "vs_plain": rate / plain})
        print(f"{m:>7} {rate:>14.1f} {rate / plain:>19.2f}", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps({"preset": PRESET, "rho": args.rho, "adam": kind,
                                              "plain_steps_per_s": plain, "torch": torch.__version__,
                                              "rows": rows}, indent=2))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Which way the prior reading's top-layer KL moves as rho falls, across data, depth and network (issue 24, item 5).

    PYTHONPATH=. python benchmarks/reading_direction.py [--seed 0]      # ~5 min on 2 cores

Why: on the linear-Gaussian model the prior reading (copies drawn in the prior's coordinates) keeps the top layer
active *above* rho_c: smoothing collapses it as rho falls. On Fashion-MNIST with the demo's 4-layer model the
top layer instead switches on as rho falls (BENCHMARKS.md, "Two readings of T_rho"). The candidates -- depth,
learnable Gaussian scales of p(z_l | z_{l+1}) escaping the smoothing, the tanh network, the data -- are told apart
by changing one at a time: Fashion-MNIST at 1, 2 and 4 layers (at 1 layer there is no Gaussian decoder scale, the
likelihood is Bernoulli), and the linear model's own Gaussian data with linear maps and with two tanh layers of 200
units. Each case is one population of four runs at rho 0.3, 0.5, 0.7 and 1 (one seed), trained with ouvae's
Population; printed: the top layer's KL and active units (Monte Carlo noise not counted) at each rho.
"""

from __future__ import annotations

import argparse
import time

import torch

from ouvae.config import Config
from ouvae.data import load_dataset
from ouvae.population import Population

RHOS = (0.3, 0.5, 0.7, 1.0)


def fashion(latent_dims: tuple[int, ...], seed: int) -> list[Config]:
    """The demo's trainer budget (sweep-demo: 797 images, 30 epochs, L_25) on Fashion-MNIST, prior reading."""
    return [Config.from_preset("sweep-demo", dataset="fashion_mnist", smooth_space="prior", rho=r, seed=seed,
                               latent_dims=latent_dims, eval_max_examples=250, eval_every=1000) for r in RHOS]


def gaussian(hidden_layers: int, seed: int) -> list[Config]:
    """The linear-Gaussian model's data (a 2-unit latent, Gaussian likelihood of variance 0.5), prior reading, with
    linear maps (hidden_layers 0) or tanh MLPs; 3,000 steps."""
    base = Config.from_preset("demo", dataset="gaussian", latent_dims=(2,), hidden_layers=hidden_layers,
                              smooth_space="prior", seed=seed, eval_every=1000, steps=3000, eval_iw_k=10,
                              likelihood_variance=0.5)
    return [base.replace(rho=r) for r in RHOS]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    data = load_dataset("fashion_mnist")
    cases = [("Fashion-MNIST, 4x10, tanh MLPs", fashion((10, 10, 10, 10), args.seed), data),
             ("Fashion-MNIST, 2x10, tanh MLPs", fashion((10, 10), args.seed), data),
             ("Fashion-MNIST, 1x10, tanh MLPs", fashion((10,), args.seed), data),
             ("Gaussian data, 1x2, linear maps", gaussian(0, args.seed), None),
             ("Gaussian data, 1x2, tanh MLPs", gaussian(2, args.seed), None)]
    print(f"prior reading; top-layer KL (active units) at rho = {', '.join(map(str, RHOS))}; seed {args.seed}")
    for name, configs, split in cases:
        t0 = time.perf_counter()
        rows = Population(configs, data=split).fit()
        cells = [f"{r['top_kl']:.3f} ({r['top_active_units']})" for r in rows]
        print(f"{name:32s} {'  '.join(cells)}   [{time.perf_counter() - t0:.0f} s]", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

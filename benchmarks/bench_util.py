"""What the trainer benchmarks share: data of the right shape, the machine's GEMM rate, a step's FLOPs.

Importable with only torch and numpy (the GPU machine has no Ray, Optuna or Polars): run the benchmarks as
``PYTHONPATH=. python3 benchmarks/<name>.py`` or from the project's venv.
"""

from __future__ import annotations

import time

import torch

from ouvae.data import DatasetSplits
from ouvae.population import Population

SHAPES = {"bernoulli": "binary images (dynamic binarization of uniform grey levels)",
          "discretized_logistic": "8-bit colour images"}


def synthetic_splits(shape: tuple[int, int, int], likelihood: str, n_train: int = 1000, n_eval: int = 100,
                     seed: int = 0) -> DatasetSplits:
    """Random images of `shape`: speed and memory do not depend on the pixel values."""
    g = torch.Generator().manual_seed(seed)
    train = torch.rand(n_train, *shape, generator=g)
    evals = torch.bernoulli(torch.rand(n_eval, *shape, generator=g), generator=g)
    if likelihood != "bernoulli":
        train = (train * 255).round() / 255
        evals = (torch.rand(n_eval, *shape, generator=g) * 255).round() / 255
    binarization = "dynamic" if likelihood == "bernoulli" else "none"
    return DatasetSplits(f"synthetic-{'x'.join(map(str, shape))}", train, evals, evals, binarization, likelihood,
                         "random images for benchmarks")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def gemm_gflops(device: torch.device, n: int = 2048, repeats: int = 5) -> float:
    """fp32 matrix-product rate of a large square GEMM on `device` with the current thread count (GFLOP/s)."""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    for _ in range(2):
        a @ b
    sync(device)
    t0 = time.perf_counter()
    for _ in range(repeats):
        a @ b
    sync(device)
    return 2 * n**3 * repeats / (time.perf_counter() - t0) / 1e9


def step_gflop(population: Population) -> float:
    """FLOPs of one optimizer step of the population (matrix products, forward and backward), in GFLOP."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        population.train_step()
    return counter.get_total_flops() / 1e9


def model_memory_bytes(population: Population) -> int:
    """What training a population holds without an allocator to ask (a CPU): parameters, the gradient and Adam's
    two moments (4 x the (M, P) parameters), plus the tensors autograd keeps for the backward pass of one chunk of
    members (the population trains a chunk at a time). On CUDA use the allocator's peak instead."""
    from ouvae.metrics import expand_members
    from ouvae.objectives import beta_at, rows_for, training_loss

    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        st = t.untyped_storage()
        seen[st.data_ptr()] = st.nbytes()
        return t

    model, cfg = population.model, population.cfg
    part = population._chunks[0]
    params = model.flat[part].detach().requires_grad_()
    m = params.shape[0]
    x = expand_members(population.train_x[: cfg.batch_size], m)
    noise = model.draw_noise(rows_for(model, cfg.batch_size), population.rho[part], population.generator)
    beta = torch.tensor([beta_at(cfg, 0.0)] * m, device=params.device)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = training_loss(model, x, population._rho_t[part], noise, beta, population._free_bits_t[part], params)
    del loss
    return sum(seen.values()) + 4 * model.flat.numel() * model.flat.element_size()


def steps_per_second(population: Population, seconds: float, min_steps: int = 3, warmup: int = 2) -> float:
    """Optimizer steps per second of `population`, timed over at least `seconds` and `min_steps` steps."""
    for _ in range(warmup):
        population.train_step()
    sync(population.device)
    n, t0 = 0, time.perf_counter()
    while n < min_steps or time.perf_counter() - t0 < seconds:
        population.train_step()
        n += 1
    sync(population.device)
    return n / (time.perf_counter() - t0)

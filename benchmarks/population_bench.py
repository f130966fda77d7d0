"""Member-steps per second of populations against single runs and packed single-run processes, in one run.

    python benchmarks/population_bench.py [--members 1 4 16 64 256] [--models mlp-4x40 demo] [--out FILE.json]
    PYTHONPATH=. python3 benchmarks/population_bench.py --device cuda --out population_gpu.json   # on a GPU

A member-step is one optimizer step of one run. For each model (the 4x40 MLP on MNIST-shaped data and the digits
demo model; batch 100, K = 5, rho = 0.9) the script measures, on one device:

* single: one run alone (``Trainer``, a population of one) in this process -- on a CPU with one thread, as a
  sweep runs one trial per core;
* packed: P single-run processes sharing the device at once (P = CPU cores on a CPU, one thread each; 4 and 8 on
  a GPU, as ``--gpus-per-trial 0.25`` / ``0.125`` packing does), their member-steps/s added up;
* population M: M runs (seeds 0..M-1) as one batched model in this process, for each M of ``--members`` (on a
  CPU with one thread, in chunks of ouvae.population.CPU_MEMBER_CHUNK members per pass);
* (``--graphed``) population M with its whole step compiled (Config ``compile_step``: mode "reduce-overhead" =
  CUDA graphs on a GPU, inductor's default on a CPU), after a check that it gives the eager step's losses;
* (``--variants``) the same population through ``torch.func`` (vmap over ``functional_call`` of a one-member
  model), and compiled as above, at M = 4 and 16.

It prints member-steps/s, the speed-ups over single and over packed (on a CPU per core: one core's population
against one core's share of the packed processes; on a GPU the whole device against the whole device), the
memory a population holds (on a GPU the allocator's peak; on a CPU parameters, gradient and Adam moments plus the
activations autograd keeps for one chunk's backward: bench_util.model_memory_bytes), and the arithmetic rate of a step (its matrix-product FLOPs per second) as a fraction
of this device's large-GEMM rate measured in the same run. ``--out`` writes
``{"device": ..., "gemm_gflops": ..., "rows": [{"model", "members", "variant", "member_steps_per_s",
"speedup_vs_single", "speedup_vs_packed", "gflops", "gemm_fraction", "memory_bytes"}, ...]}``.
Figures are recorded in BENCHMARKS.md ("Populations").
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import time
from pathlib import Path

import torch

from bench_util import gemm_gflops, model_memory_bytes, step_gflop, steps_per_second, synthetic_splits, sync
from ouvae.config import Config
from ouvae.memory import peak_memory_bytes, reset_peak_memory
from ouvae.objectives import beta_at, rows_for, training_loss
from ouvae.population import Population, pick_device

MODELS = {
    # name: (preset, overrides, synthetic data shape or None for the real digits)
    "mlp-4x40": ("paper-mlp-4x40", {"rho": 0.9}, (1, 28, 28)),
    "demo": ("demo", {"rho": 0.9, "n_train": 797}, None),
}


def population_for(model: str, members: int, device: str, threads: int, compile_step: bool = False) -> Population:
    preset, overrides, shape = MODELS[model]
    cfg = Config.from_preset(preset, **overrides, device=device, num_threads=threads, eval_iw_k=2,
                             compile_step=compile_step)
    data = synthetic_splits(shape, "bernoulli") if shape else None
    return Population([cfg.replace(seed=s) for s in range(members)], data=data)


# ----- packed single-run processes ------------------------------------------------------------------------------
def _packed_worker(model: str, device: str, threads: int, seconds: float, start, out) -> None:
    torch.set_num_threads(threads)
    pop = population_for(model, 1, device, threads)
    steps_per_second(pop, 0.0, min_steps=2)  # warm up before the common start
    start.wait()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        pop.train_step()
        n += 1
    sync(pop.device)
    out.put(n / (time.perf_counter() - t0))


def packed_rate(model: str, device: str, processes: int, threads: int, seconds: float) -> float:
    """Sum of the member-steps/s of `processes` single runs training at the same time on the device."""
    ctx = mp.get_context("spawn")
    start, out = ctx.Barrier(processes), ctx.Queue()
    procs = [ctx.Process(target=_packed_worker, args=(model, device, threads, seconds, start, out))
             for _ in range(processes)]
    for p in procs:
        p.start()
    rates = [out.get() for _ in procs]
    for p in procs:
        p.join()
    return sum(rates)


# ----- variants ---------------------------------------------------------------------------------------------------
def torch_func_rate(pop: Population, seconds: float) -> float:
    """The same training step written with torch.func: a one-member model vmapped over stacked parameters."""
    from torch.func import vmap

    from ouvae.model import HierarchicalVAE, Noise

    m = pop.size
    one = HierarchicalVAE(pop.cfg, pop.data.image_shape, pop.data.likelihood, [0]).to(pop.device)
    stacked = torch.nn.Parameter(pop.model.flat.detach().clone().unsqueeze(1))  # (M, 1, P)
    opt = torch.optim.Adam([stacked], lr=pop.cfg.lr, fused=pop.device.type in ("cpu", "cuda"))

    def member_loss(flat, x, rho, beta, fb, *noise):
        n_lat = len(pop.cfg.latent_dims)
        nz = Noise(list(noise[:n_lat]), list(noise[n_lat:2 * n_lat - 1]), list(noise[2 * n_lat - 1:3 * n_lat - 2]),
                   noise[-1])
        return training_loss(FunctionalModel(one, flat), x, rho, nz, beta, fb).per_member.sum()

    def step() -> None:
        x = pop.train_x[pop.batch_indices(pop.step)]
        x = torch.bernoulli(x, generator=pop.generator).unsqueeze(1)
        noise = pop.model.draw_noise(rows_for(pop.model, x.shape[2]), pop.rho, pop.generator)
        flat_noise = [None if t is None else t.unsqueeze(1)
                      for t in (*noise.eps, *noise.encoders, *noise.decoders, noise.decode_x)]
        beta = torch.tensor([[beta_at(mm.cfg, pop.epoch)] for mm in pop.members], device=pop.device)
        in_dims = (0, 0, 0, 0, 0, *(None if t is None else 0 for t in flat_noise))
        loss = vmap(member_loss, in_dims=in_dims)(stacked, x, pop._rho_t.unsqueeze(1), beta,
                                                  pop._free_bits_t.unsqueeze(1), *flat_noise).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        pop.step += 1

    for _ in range(2):
        step()
    sync(pop.device)
    n, t0 = 0, time.perf_counter()
    while n < 3 or time.perf_counter() - t0 < seconds:
        step()
        n += 1
    sync(pop.device)
    return m * n / (time.perf_counter() - t0)


class FunctionalModel:
    """A one-member model called with given parameters (functional_call), as training_loss expects a model."""

    def __init__(self, model, flat: torch.Tensor):
        self.model, self.flat, self.cfg = model, flat, model.cfg

    def __call__(self, *args):
        from torch.func import functional_call

        return functional_call(self.model, {"flat": self.flat}, args)


def compiled_rate(pop: Population, seconds: float) -> float:
    """The population's own step compiled whole (ouvae Config compile_step); checks first that compiled and
    eager steps give the same losses (the same computation, fused differently)."""
    eager = Population([m.cfg for m in pop.members], data=pop.data)
    compiled = Population([m.cfg.replace(compile_step=True) for m in pop.members], data=pop.data)
    a, b = compiled.train_step(), eager.train_step()
    if not torch.allclose(a, b, rtol=1e-4, atol=1e-4, equal_nan=True):
        raise AssertionError(f"compiled and eager losses differ: {a.tolist()} vs {b.tolist()}")
    # compilation, and the recompilation for an epoch's shorter last batch, happen before the timing
    steps_per_second(compiled, 0.0, min_steps=compiled.batches_per_epoch + 1)
    return compiled.size * steps_per_second(compiled, seconds)


# ----- main ---------------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--members", nargs="+", type=int, default=[1, 4, 16, 64, 256])
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads of the single run and the populations (default: 1 on a CPU, as sweeps run "
                         "one thread per trial and trials side by side; each packed process uses one)")
    ap.add_argument("--packed", nargs="+", type=int, default=None,
                    help="packed process counts (default: the CPU cores on a CPU, 4 and 8 on a GPU)")
    ap.add_argument("--seconds", type=float, default=6.0, help="timing window per measurement (default 6)")
    ap.add_argument("--variants", nargs="*", default=["torch.func"], choices=["torch.func", "compile"],
                    help="alternative implementations measured at M = 4 and 16 (default: torch.func)")
    ap.add_argument("--graphed", action="store_true", help="also measure every M with its whole step compiled")
    ap.add_argument("--out", default=None, help="write the rows as JSON (rewritten after every row, so a run cut "
                                                "short keeps what it measured)")
    args = ap.parse_args(argv)
    device = pick_device(args.device)
    cores = os.cpu_count() or 1
    cpu = device.type == "cpu"
    threads = args.threads or (1 if cpu else torch.get_num_threads())
    packed = args.packed or ([cores] if cpu else [4, 8])
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({cores} cores)"
    torch.set_num_threads(threads)
    gemm = gemm_gflops(device)
    print(f"device {device}: {name}, torch {torch.__version__}, {threads} thread(s); large-GEMM rate "
          f"{gemm:.0f} GFLOP/s")
    rows, packed_by_model = [], {}

    def save() -> None:
        if args.out:
            result = {"device": str(device), "device_name": name, "threads": threads, "gemm_gflops": gemm,
                      "packed": packed_by_model, "torch": torch.__version__, "rows": rows}
            Path(args.out).write_text(json.dumps(result, indent=2))

    for model in args.models:
        single = population_for(model, 1, device.type, threads)
        gflop = step_gflop(single)  # per member-step
        single_rate = steps_per_second(single, args.seconds)
        del single
        packed_rates = {p: packed_rate(model, device.type, p, threads, args.seconds) for p in packed}
        packed_by_model[model] = {str(p): r for p, r in packed_rates.items()}
        # On a CPU a population holds one core: compare with one core's share of the packed processes.
        best_packed = max(r / (p if cpu else 1) for p, r in packed_rates.items())
        print(f"\n{model}: {gflop:.2f} GFLOP per member-step; single run {single_rate:.1f} member-steps/s "
              f"({single_rate * gflop / gemm:.2f} of the GEMM rate); packed "
              + ", ".join(f"{p} processes {r:.1f}" for p, r in packed_rates.items())
              + (" (all cores)" if cpu else ""))
        print(f"{'members':>7} {'variant':<11} {'member-steps/s':>14} {'vs single':>9} "
              f"{'vs packed' + (' per core' if cpu else ''):>18} {'GFLOP/s':>8} {'of GEMM':>7} {'memory MB':>9}")

        def record(members: int, variant: str, rate: float, memory: int | None) -> None:
            row = {"model": model, "members": members, "variant": variant, "threads": threads,
                   "member_steps_per_s": rate, "speedup_vs_single": rate / single_rate,
                   "speedup_vs_packed": rate / best_packed, "gflops": rate * gflop,
                   "gemm_fraction": rate * gflop / gemm, "memory_bytes": memory}
            rows.append(row)
            mem = "" if memory is None else f"{memory / 2**20:>9.0f}"
            print(f"{members:>7} {variant:<11} {rate:>14.1f} {row['speedup_vs_single']:>9.2f} "
                  f"{row['speedup_vs_packed']:>18.2f} {row['gflops']:>8.1f} {row['gemm_fraction']:>7.2f} {mem}",
                  flush=True)
            save()

        for m in args.members:
            reset_peak_memory(device)
            pop = population_for(model, m, device.type, threads)
            rate = m * steps_per_second(pop, args.seconds)
            record(m, "batched", rate, peak_memory_bytes(device) if not cpu else model_memory_bytes(pop))
            if args.graphed:
                record(m, "graphed" if device.type == "cuda" else "compiled", compiled_rate(pop, args.seconds), None)
            if m in (4, 16):
                if "torch.func" in args.variants:
                    record(m, "torch.func", torch_func_rate(pop, args.seconds), None)
                if "compile" in args.variants and not args.graphed:
                    record(m, "compile", compiled_rate(pop, args.seconds), None)
            del pop
    save()
    if args.out:
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Time per epoch and peak memory of VAE, IWAE(5) and OU-VAE(K=5), as ratios against the VAE, in one run.

    python benchmarks/trainer_bench.py [--seconds 5] [--out benchmark.json] [--device auto]

Models: the 4x40 MLP on MNIST-shaped binary data (batch 100, an epoch = 50,000 images) and the 4-layer conv
model on CIFAR-shaped 8-bit data (batch 64, an epoch = 45,000 images) -- appendix Tables 9 and 10. Data are
random tensors of the right shape: speed and memory do not depend on the pixel values.

Peak memory: on CUDA the allocator's peak per method; on CPU (no allocator statistics) the bytes autograd
keeps for the backward pass plus parameters, gradients and Adam state -- the quantity that the K copies
multiply, measured the same way for every method. The appendix's headline ratios are printed beside ours:
time 4.6 / 4.2 = 1.095 and memory 3.74 / 2.12 = 1.76 (OU-VAE / VAE).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch

from bench_util import model_memory_bytes, steps_per_second, synthetic_splits
from ouvae.config import Config
from ouvae.memory import peak_memory_bytes, reset_peak_memory
from ouvae.population import Population, pick_device

PAPER = {"time": 4.6 / 4.2, "memory": 3.74 / 2.12}
MODELS = {
    # name: (preset, overrides, image shape, likelihood, images per epoch)
    "mlp-4x40 (MNIST)": ("paper-mlp-4x40", {}, (1, 28, 28), "bernoulli", 50_000),
    "conv-4L (CIFAR-10)": ("paper-conv-cifar", {}, (3, 32, 32), "discretized_logistic", 45_000),
}
METHODS = {
    "VAE": dict(rho=1.0),
    "IWAE(5)": dict(rho=1.0, objective="iwae", iw_samples=5),
    "OU-VAE(K=5)": dict(rho=0.9, smooth_samples=5),
    "OU-VAE(K=5, recompute)": dict(rho=0.9, smooth_samples=5, smooth_recompute=True),
}


def measure(cfg: Config, shape, likelihood, device: torch.device, seconds: float) -> dict:
    """Time per step and memory of one run (a population of one) on random data of the model's shape."""
    reset_peak_memory(device)
    run = Population([cfg.replace(device=device.type)], data=synthetic_splits(shape, likelihood, n_train=640))
    step_s = 1.0 / steps_per_second(run, seconds)
    memory = peak_memory_bytes(device) if device.type == "cuda" else model_memory_bytes(run)
    return {"step_s": step_s, "memory": memory}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=5.0, help="timing window per method (after 2 warm-up steps)")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--models", nargs="*", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--out", default=None, help="write the records as JSON (read by `python -m analysis`)")
    args = ap.parse_args(argv)
    device = pick_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}), "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.seconds:g} s per method")
    records = []
    for model_name in args.models:
        preset, overrides, shape, likelihood, epoch_images = MODELS[model_name]
        base = Config.from_preset(preset, **overrides)
        print(f"\n{model_name}: latents {base.latent_dims}, batch {base.batch_size}")
        print(f"{'method':<24} {'s/epoch':>9} {'time ratio':>10} {'memory MB':>10} {'mem ratio':>9}")
        ref = None
        for method, kw in METHODS.items():
            r = measure(base.replace(**kw), shape, likelihood, device, args.seconds)
            epoch_s = r["step_s"] * math.ceil(epoch_images / base.batch_size)
            ref = ref or r
            print(f"{method:<24} {epoch_s:>9.1f} {r['step_s'] / ref['step_s']:>10.2f} {r['memory'] / 2**20:>10.1f} "
                  f"{r['memory'] / ref['memory']:>9.2f}")
            records.append({"model": model_name, "method": method, "time_per_epoch_s": epoch_s,
                            "peak_memory_bytes": int(r["memory"]), "device": str(device),
                            "batch_size": base.batch_size, "time_ratio": r["step_s"] / ref["step_s"],
                            "memory_ratio": r["memory"] / ref["memory"]})
    print(f"\npaper (appendix, GPU): OU-VAE/VAE time ratio {PAPER['time']:.3f}, memory ratio {PAPER['memory']:.2f}")
    print("targets: time ratio <= 1.10 on a GPU, memory ratio <= 1.5")
    if args.out:
        Path(args.out).write_text(json.dumps(records, indent=2))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

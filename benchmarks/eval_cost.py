"""The fraction of a trial's time spent evaluating, at a preset's evaluation settings, for one run or a population.

    PYTHONPATH=. python3 benchmarks/eval_cost.py [--presets paper-mlp-4x40 paper-mlp-1x64] [--members 1]
        [--device auto] [--train-images 50000] [--eval-images 10000]

Measures the seconds of one optimizer step and of evaluating one image (L_k with the preset's eval_iw_k, with the
other metrics of an evaluation) on data of the preset's shape, then computes per epoch of the full data set
(train images / batch size steps): evaluation seconds = (eval_max_examples or the split) x seconds per image /
eval_every, and its fraction of training + evaluation. Timing a full MNIST epoch and a 10,000-image L_100 would
take minutes on a CPU; both scale linearly in steps and images, so short measurements are extrapolated.
Recorded in BENCHMARKS.md ("Evaluation cost").
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from bench_util import steps_per_second, synthetic_splits, sync
from ouvae.config import Config
from ouvae.population import Population, pick_device

SHAPES = {"mnist": ((1, 28, 28), "bernoulli"), "static_mnist": ((1, 28, 28), "bernoulli"),
          "cifar10": ((3, 32, 32), "discretized_logistic")}


def measure(preset: str, members: int, device: torch.device, eval_probe: int, train_images: int,
            eval_images: int, seconds: float) -> dict:
    cfg = Config.from_preset(preset, device=device.type)
    shape, likelihood = SHAPES[cfg.dataset]
    data = synthetic_splits(shape, likelihood, n_train=1000, n_eval=eval_probe)
    pop = Population([cfg.replace(seed=s, eval_max_examples=None) for s in range(members)], data=data)
    step_s = 1.0 / steps_per_second(pop, seconds)
    pop.evaluate()  # warm-up
    sync(device)
    t0 = time.perf_counter()
    pop.evaluate()
    sync(device)
    per_image = (time.perf_counter() - t0) / eval_probe
    steps_per_epoch = math.ceil(train_images / cfg.batch_size)
    evaluated = min(cfg.eval_max_examples or eval_images, eval_images)
    train_epoch = step_s * steps_per_epoch
    eval_per_epoch = per_image * evaluated / cfg.eval_every
    return {"preset": preset, "members": members, "device": str(device), "eval_every": cfg.eval_every,
            "eval_iw_k": cfg.eval_iw_k, "eval_images": evaluated, "step_s": step_s, "eval_s_per_image": per_image,
            "train_s_per_epoch": train_epoch, "eval_s_per_epoch": eval_per_epoch,
            "eval_fraction": eval_per_epoch / (train_epoch + eval_per_epoch),
            "full_split_every_epoch_fraction": per_image * eval_images / (train_epoch + per_image * eval_images)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", nargs="+", default=["paper-mlp-4x40", "paper-mlp-1x64"])
    ap.add_argument("--members", type=int, default=1)
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--train-images", type=int, default=50_000, help="training images per epoch (MNIST: 50,000)")
    ap.add_argument("--eval-images", type=int, default=10_000, help="images of the evaluation split (MNIST: 10,000)")
    ap.add_argument("--probe", type=int, default=100, help="images evaluated for the timing (default 100)")
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    rows = []
    for preset in args.presets:
        r = measure(preset, args.members, device, args.probe, args.train_images, args.eval_images, args.seconds)
        rows.append(r)
        print(f"{preset} (M = {r['members']}, {r['device']}): step {r['step_s'] * 1e3:.1f} ms, L_{r['eval_iw_k']} "
              f"{r['eval_s_per_image'] * 1e3:.1f} ms per image; per epoch train {r['train_s_per_epoch']:.0f} s, "
              f"evaluation {r['eval_s_per_epoch']:.0f} s ({r['eval_images']} images every {r['eval_every']} "
              f"epochs) = {r['eval_fraction']:.1%} of the time (the whole split every epoch: "
              f"{r['full_split_every_epoch_fraction']:.1%})", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

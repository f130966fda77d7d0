"""Joining or starting Ray for a sweep, and checking that a trial's resource request fits the cluster.

The address is checked before (sweeps/preflight.py). Workers import the package from the environment (the
editable install of the README's set-up, or the cluster image): nothing is pushed onto their path.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import time
from typing import Any, Callable

from sweeps.cli import SweepError
from sweeps.storage import SweepPaths
from sweeps.preflight import is_ray_client
from sweeps.compat import DRIVER_ENV, init_client
from sweeps.storage import resume_command


def start(args: argparse.Namespace, script: str, name: str, paths: SweepPaths, t_start: float) -> dict[str, float]:
    """Join or start Ray, check the per-trial request fits, print where results go and how to resume; returns
    the cluster's CPUs and GPUs."""
    how = connect(args)
    res = cluster_resources(args)
    print(f"  Ray: {how} ({res['CPU']:g} CPUs, {res['GPU']:g} GPUs), {time.monotonic() - t_start:.1f} s")
    print(f"  results table: {paths.results_root}/sweep_id={name}/")
    print(f"  resume after a crash or Ctrl-C: {resume_command(script, name, args.storage)}", flush=True)
    return res


def connect(args: argparse.Namespace) -> str:
    """Start or join Ray; returns a short description."""
    import ray

    if ray.is_initialized():  # e.g. a notebook that already holds Ray
        return "existing Ray session"
    quiet = {"logging_level": logging.WARNING, "logging_config": ray.LoggingConfig(log_level="WARNING")}
    if args.address:
        try:
            if is_ray_client(args.address):
                # The sweep's driver (Tune's loop and our callbacks) runs on the head: it needs the driver's Tune
                # settings there too.
                init_client(args.address, runtime_env={"env_vars": dict(DRIVER_ENV)}, **quiet)
            else:
                ray.init(address=args.address, **quiet)
        except Exception as e:  # noqa: BLE001 - any connection failure becomes one clear message
            last = next((line.strip() for line in reversed(str(e).splitlines()) if line.strip()), type(e).__name__)
            raise SweepError(f"--address {args.address}: could not join the Ray cluster: {last[:300]}") from None
        return f"joined Ray cluster at {args.address}"
    ray.init(num_cpus=args.num_cpus, num_gpus=args.num_gpus, include_dashboard=False, **quiet)
    return "started a local Ray"


def cluster_resources(args: argparse.Namespace) -> dict[str, float]:
    """CPUs and GPUs of the cluster. A trial asking for more than that would wait forever: refuse on a local Ray,
    warn on a cluster (its autoscaler may add nodes)."""
    import ray

    res = ray.cluster_resources()
    cpus, gpus = res.get("CPU", 0.0), res.get("GPU", 0.0)
    problems = []
    if args.cpus_per_trial > cpus:
        problems.append(f"--cpus-per-trial {args.cpus_per_trial} but the cluster has {cpus:g} CPUs")
    if args.gpus_per_trial > gpus:
        problems.append(f"--gpus-per-trial {args.gpus_per_trial} but the cluster has {gpus:g} GPUs")
    if problems:
        msg = "; ".join(problems)
        if not args.address:
            raise SweepError(f"{msg}: no trial could ever start; lower the per-trial request")
        print(f"warning: {msg}; trials will wait until the cluster (autoscaler) provides them", file=sys.stderr)
    return {"CPU": cpus, "GPU": gpus}


def concurrent_trials(args: argparse.Namespace, resources: dict[str, float], n_trials: int) -> int:
    """How many of the sweep's `n_trials` trials run at once on these resources (at least 1)."""
    slots = [n_trials, math.floor(resources["CPU"] / args.cpus_per_trial + 1e-9)]
    if args.gpus_per_trial > 0:
        slots.append(math.floor(resources["GPU"] / args.gpus_per_trial + 1e-9))
    if args.max_concurrent is not None:
        slots.append(args.max_concurrent)
    return max(1, min(slots))


def with_resources(trainable: Callable[[dict[str, Any]], None], args: argparse.Namespace):
    """The trainable with the sweep's per-trial CPU/GPU request."""
    from ray import tune

    return tune.with_resources(trainable, {"cpu": args.cpus_per_trial, "gpu": args.gpus_per_trial})

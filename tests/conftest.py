"""Shared pytest fixtures. One local Ray for the whole test session (each ray.init/shutdown costs 3-4 s)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def ray_session():
    """A local Ray with 2 CPUs and 1 *logical* GPU (lets tests check fractional-GPU packing on a CPU machine;
    torch still sees no CUDA, so trainers on device "auto" run on the CPU)."""
    import ray

    ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, object_store_memory=200 * 1024**2,
             ignore_reinit_error=True)
    yield ray
    ray.shutdown()

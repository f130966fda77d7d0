"""Shared pytest fixtures: one local Ray for the whole test session (each ray.init/shutdown costs 3-4 s) and a
real S3 server on loopback; the markers that follow from them.

Markers (pyproject.toml): a test that starts Ray -- through ``ray_session`` or by running sweeps in subprocesses
(``sweeps_run``, tests/test_s3.py) -- is marked ``ray`` here, from the fixtures it uses, so no test can forget it;
``multinode`` tests (a loopback cluster started with ``ray start``) are ``ray`` too. A test not marked ``ray`` that
calls ``ray.init`` fails, naming the marker. ``make test-fast`` leaves out ``ray``, ``multinode`` and ``slow``.

Order: the ``ray`` tests run after all the others (stable within each group). A test process that has started
Ray holds its driver's native threads (core worker, gRPC) for the rest of the session; running the other tests
first means they never share a process with them (issue 25: a segfault in numpy's loadtxt, late in a suite that
had held Ray since its first file; the cause was not found). ``make test`` runs the suite in two xdist workers
(``-n 2``), so a native crash fails the one test it happened in and a fresh worker runs the rest; each worker
starts its own session Ray (``start_local_ray``: a start that timed out while the other worker's Ray started is
tried once more).
"""

from __future__ import annotations

import socket
import uuid
from dataclasses import dataclass

import pytest

RAY_FIXTURES = {"ray_session", "sweeps_run"}


@pytest.hookimpl(wrapper=True)
def pytest_collection_modifyitems(config, items):
    """Marks first (so that ``-m ray`` selects on them), then pytest's own hooks (``-m`` deselection, reordering by
    fixture scope), then Ray's tests moved after all the others (see Order above; the sort is stable)."""
    for item in items:
        if RAY_FIXTURES & set(getattr(item, "fixturenames", ())) or item.get_closest_marker("multinode"):
            item.add_marker(pytest.mark.ray)
    result = yield
    items.sort(key=lambda item: item.get_closest_marker("ray") is not None)
    return result


@pytest.fixture(autouse=True)
def _ray_only_where_marked(request, monkeypatch):
    """Keeps the `ray` marker true: an unmarked test that starts Ray in this process fails and says so."""
    if request.node.get_closest_marker("ray"):
        return
    import ray

    def refuse(*args, **kwargs):
        raise RuntimeError(f"{request.node.nodeid} starts Ray: use the ray_session fixture (it marks the test ray)")

    monkeypatch.setattr(ray, "init", refuse)


@pytest.fixture(scope="session")
def digits():
    """scikit-learn's digits with their fixed splits, loaded once for the session."""
    from ouvae.data import load_dataset

    return load_dataset("digits")


@pytest.fixture(scope="session")
def ray_session():
    """A local Ray with 2 CPUs and 1 *logical* GPU (lets tests check fractional-GPU packing on a CPU machine;
    torch still sees no CUDA, so trainers on device "auto" run on the CPU)."""
    import ray

    from sweeps.compat import start_local_ray

    start_local_ray(num_cpus=2, num_gpus=1, include_dashboard=False, object_store_memory=200 * 1024**2,
                    ignore_reinit_error=True)
    yield ray
    ray.shutdown()


@dataclass
class S3Server:
    """A real S3 endpoint on loopback (moto's server mode) and the environment that points clients at it.

    `env` holds dummy credentials and the endpoint in the standard variables (AWS_ENDPOINT_URL ...) that boto3,
    PyArrow and Ray's storage layer read; pass it to subprocesses, or apply it with `use(monkeypatch)`.
    """

    endpoint: str
    env: dict[str, str]

    def use(self, monkeypatch: pytest.MonkeyPatch) -> None:
        for key, value in self.env.items():
            monkeypatch.setenv(key, value)

    def make_bucket(self, prefix: str = "ouvae") -> str:
        """A new, empty bucket; returns its name."""
        import boto3

        name = f"{prefix}-{uuid.uuid4().hex[:10]}"
        boto3.client("s3", endpoint_url=self.endpoint, region_name=self.env["AWS_DEFAULT_REGION"],
                     aws_access_key_id="testing", aws_secret_access_key="testing").create_bucket(Bucket=name)
        return name

    @property
    def storage_options(self) -> dict[str, str]:
        """Polars' object-store options for this endpoint."""
        return {"aws_endpoint_url": self.endpoint, "aws_region": self.env["AWS_DEFAULT_REGION"],
                "aws_allow_http": "true", "aws_access_key_id": "testing", "aws_secret_access_key": "testing"}


@pytest.fixture(scope="session")
def s3_server():
    """One moto S3 server for the session (a pip package, started and stopped here; dummy credentials)."""
    from moto.server import ThreadedMotoServer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    env = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}
    yield S3Server(endpoint, env)
    server.stop()

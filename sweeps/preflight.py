"""What a sweep checks before Ray starts, so that a mistake costs seconds and one line, not a cluster's time.

Measured before these checks: ``critical_rho.py --dataset mnist`` on a machine without the MNIST files and without
internet started Ray and all 42 trials, each of which tried to download, failed and was retried; after 6.5
minutes there were 98 tracebacks and no result. Now the driver resolves the data itself
(``ouvae.data.load_config_dataset`` locates the files, downloads them once into the cache and verifies them, with
the sweep's validation size and binarization), writes a probe file where the sweep
will write, and connects to the cluster address with a short timeout; each failure is a SweepError naming the
problem and the fix (sweeps/cli.py prints it and exits with code 2), and nothing has been written.

On a multi-node cluster the workers still load the data themselves (into each node's cache): the driver's check
proves the files exist and are intact, which is what a typo or an offline machine gets wrong.
"""

from __future__ import annotations

import argparse
import re
import socket

from ouvae.config import Config
from ouvae.data import DataError, load_config_dataset
from sweeps.cli import SweepError
from sweeps.storage import SweepPaths
from sweeps.storage import check_writable, is_remote

ADDRESS_TIMEOUT_S = 5.0


def is_ray_client(address: str | None) -> bool:
    """A ray:// address: Ray Client, which runs the sweep's driver on the head node."""
    return bool(address) and address.startswith("ray://")


def check_start(args: argparse.Namespace, paths: SweepPaths, cfg: Config) -> None:
    """Every check a sweep passes before Ray starts, cheapest mistakes first: the data, the storage (a resumed
    sweep's was checked when it was opened), a separate --results-dir, the cluster address.

    Through Ray Client (``ray://``) this machine is not part of the cluster: the sweep's driver runs on the head and
    writes the table and Tune's state from there, so the storage must be an object store every machine reaches
    alike, and the data are the cluster's business (the first round of trials checks them; sweeps/progress.py)."""
    if is_ray_client(args.address):
        for option, uri in (("--storage", paths.storage), ("--results-dir", paths.results_root)):
            if not is_remote(uri):
                raise SweepError(f"--address {args.address}: Ray Client runs the sweep's driver on the head node, "
                                 f"which would write to its own {uri}; give {option} an object store "
                                 f"(s3://bucket/prefix), or run this script on a node of the cluster with "
                                 f"--address host:6379")
    else:
        check_data(cfg)
    if not args.resume:
        check_storage(paths.storage)
    if args.results_dir:
        check_storage(paths.results_root, "--results-dir")
    if args.address:
        check_address(args.address)


def check_data(cfg: Config) -> None:
    """The dataset every trial of `cfg`'s sweep loads is present and intact (downloaded once if missing), with the
    sweep's validation size and binarization."""
    try:
        load_config_dataset(cfg)
    except DataError as e:
        raise SweepError(f"dataset {cfg.dataset}: {e}") from None


def check_storage(uri: str, option: str = "--storage") -> None:
    """The sweep can write under `uri` (for s3://: the bucket exists and the credentials may write to it)."""
    try:
        check_writable(uri)
    except OSError as e:
        raise SweepError(f"{option} {uri}: cannot write there: {_storage_reason(uri, e)}") from None


def _storage_reason(uri: str, error: OSError) -> str:
    text = re.sub(r"\s*\(Request ID: [^)]*\)", "", str(error)).strip()
    if not is_remote(uri):
        return f"{error.strerror or text}; pick a folder you can write to"
    bucket = uri.split("://", 1)[1].split("/", 1)[0]
    if "NO_SUCH_BUCKET" in text:
        return f"the bucket {bucket!r} does not exist; create it (aws s3 mb s3://{bucket}) or fix the name"
    if "ACCESS_DENIED" in text or "INVALID_ACCESS_KEY" in text or "SIGNATURE" in text:
        return (f"access to the bucket {bucket!r} is denied with the credentials this machine has; check "
                f"AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE, and the bucket policy ({text[:160]})")
    return f"{text[:240]}; check the URL, the credentials and, for an S3-compatible server, AWS_ENDPOINT_URL"


def check_address(address: str, timeout_s: float = ADDRESS_TIMEOUT_S) -> None:
    """Fail fast on an unreachable --address (ray.init would otherwise retry for minutes)."""
    if address in ("auto", "local"):
        return
    target = address.split("://", 1)[1] if "://" in address else address
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise SweepError(f"--address {address!r}: expected host:port (e.g. 10.0.0.5:6379), ray://host:10001 or auto")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            pass
    except OSError as e:
        raise SweepError(f"--address {address}: cannot reach a Ray head at {host}:{port} ({e.strerror or e}); start "
                         f"one with `ray start --head` or check the address/firewall") from None

"""Data sets: the paper's registered image sets and the user's own files, loaded into float32 tensors with
fixed splits (`load_dataset`).

    load_dataset("mnist")                                   # registered: found, downloaded once, checked
    load_dataset("idx", "~/kmnist")                         # your MNIST-format files of any count and size
    load_dataset("npy", "~/faces.npz", validation_size=500) # your NumPy arrays

Modules: `registry` (DATASETS: the registered sets and the two user routes), `user` (idx and npy), `synthetic`
(the generated Gaussian set of the calibration), `formats`
(parsers of IDX, .amat, .mat and the CIFAR batches), `files` (search order, cache, per-node lock, downloads),
`splits` (DatasetSplits, DataError, the binarization rules).

Libraries and our own code: downloads go through pooch (`pooch.retrieve`: a temporary file moved into the
cache only after its md5 matched, a cached copy with a wrong md5 fetched again) -- one call per mirror, in
order. Our own code does what pooch does not: the search of the user's folders and of Debian's package folder
before the cache, the file lock that makes concurrent trials on one node fetch once (filelock), the structure
checks of files without a published checksum (Larochelle's .amat, Burda's chardata.mat, any user file), and
the one-line `DataError` for every problem a user can cause or fix -- missing, truncated or corrupt files,
wrong checksums, offline, wrong shapes, dtypes or value ranges, empty splits -- naming the file (and the node,
where a cluster user must find the worker) and the fix.

`load_dataset` is also the complete pre-flight check (locate, download once if needed, verify, parse): a sweep
driver calls it before any trial starts.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ..config import BINARIZATIONS, GAUSSIAN_DATA_FIELDS, Config, closest
from .files import RemoteFile, default_cache_dir, find_files
from .registry import DATASETS
from .spec import DatasetSpec, LoadRequest
from .splits import DataError, DatasetSplits
from .user import DEFAULT_VALIDATION_FRACTION

__all__ = ["DataError", "DatasetSplits", "DatasetSpec", "RemoteFile", "DATASETS", "DEFAULT_VALIDATION_FRACTION",
           "load_dataset", "load_config_dataset", "default_cache_dir"]


def _check_user_options(spec: DatasetSpec, validation_size: float | None, binarization: str) -> None:
    """validation_size and binarization are choices for the user's own data; a registered set keeps the
    paper's convention, so another value there is refused rather than silently ignored."""
    if binarization not in ("auto", *BINARIZATIONS):
        raise DataError(f"binarization must be one of {('auto', *BINARIZATIONS)}, got {binarization!r}")
    if spec.user_data:
        return
    if binarization not in ("auto", spec.binarization):
        raise DataError(f"{spec.name} is always binarized {spec.binarization!r} (the paper's convention); "
                        f"binarization={binarization!r} applies to --dataset idx or npy. Fix: unset binarization")
    if validation_size is not None and validation_size != spec.n_validation:
        raise DataError(f"{spec.name}'s validation split is fixed ({spec.n_validation} images, the paper's "
                        f"convention); validation_size applies to --dataset idx or npy. Fix: unset validation_size")


def _missing(path: Path) -> str:
    """How to name a data_dir that is not there: a relative one is resolved against the current folder, which in
    a sweep trial is the trial's own folder, not where the sweep was started."""
    if path.is_absolute():
        return str(path)
    return f"{path} (relative to {Path.cwd()}; a sweep trial runs in its own folder: give an absolute path)"


def load_dataset(name: str, data_dir: str | os.PathLike | None = None, *, download: bool = True, seed: int = 0,
                 validation_size: float | None = None, binarization: str = "auto",
                 params: Mapping[str, Any] | None = None) -> DatasetSplits:
    """Load data set `name` (a key of DATASETS) with its fixed splits.

    data_dir: registered sets: a folder with user-supplied files, searched before the cache (also
    <data_dir>/<name>/). idx: the folder holding the IDX image files. npy: the .npz file, or a folder of
    train.npy / test.npy (/ validation.npy).
    download: fetch missing files of a registered set from its official URLs into default_cache_dir()/<name>/,
    once per node (a file lock).
    seed: seeds the one-time binarization of validation/test for dynamically binarized sets and the digits
    split. It is a *data* seed: pass the same value to every run that must be evaluated on the same images.
    validation_size (idx, npy): training images held out of the end as validation, a fraction in (0, 1) or a
    count >= 1; None = 1/6 (MNIST's 10,000 of 60,000).
    binarization (idx, npy): "dynamic", "static" or "none" (8-bit, discretized logistic); "auto" = idx: dynamic,
    npy: inferred from the arrays (0/1 -> static, one grey channel -> dynamic, three channels -> none).
    params (generated sets, e.g. gaussian): the Config fields the set is made from (its spec's config_fields).
    """
    spec = DATASETS.get(name)
    if spec is None:
        close = closest(name, DATASETS)
        hint = f" Did you mean {close!r}?" if close else ""
        raise DataError(f"Unknown dataset {name!r}; choose one of {sorted(DATASETS)}.{hint}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise DataError(f"seed must be a non-negative integer, got {seed!r}")
    _check_user_options(spec, validation_size, binarization)
    path = None if data_dir is None else Path(data_dir).expanduser()
    if spec.user_data:
        if path is None or not path.exists():
            where = "no data_dir was given" if path is None else f"data_dir {_missing(path)} does not exist"
            raise DataError(f"--dataset {name} reads your own files, but {where}. Fix: --data-dir PATH "
                            f"({spec.description})")
        return spec.reader(spec, LoadRequest({}, path, int(seed), validation_size, binarization))
    if path is not None and spec.files and not path.is_dir():
        raise DataError(f"data_dir {_missing(path)} does not exist or is not a folder; create it and put the "
                        f"{spec.name} files there, or leave data_dir unset to use the cache "
                        f"{default_cache_dir() / spec.name}")
    files = (find_files(spec.name, spec.files, path, download, system_dirs=spec.system_dirs,
                        install_hint=spec.install_hint) if spec.files else {})
    return spec.reader(spec, LoadRequest(files, path, int(seed), validation_size, binarization, dict(params or {})))


def load_config_dataset(cfg: Config, *, download: bool = True) -> DatasetSplits:
    """The data a Config describes (dataset, data_dir, validation_size, binarization, a generated set's fields):
    the one call for the trainer, the sweep trainable and the sweep driver's pre-flight check, so every data
    field reaches all three. A generator field set for a data set that does not read it is refused (it would
    otherwise be ignored silently)."""
    spec = DATASETS.get(cfg.dataset)
    read = spec.config_fields if spec is not None else ()
    defaults = Config()
    stray = [f for f in GAUSSIAN_DATA_FIELDS if f not in read and getattr(cfg, f) != getattr(defaults, f)]
    if stray:
        raise DataError(f"{', '.join(stray)} set for dataset {cfg.dataset!r}, which does not read it: these "
                        f"fields apply to --dataset gaussian only. Fix: unset them")
    return load_dataset(cfg.dataset, cfg.data_dir, download=download, validation_size=cfg.validation_size,
                        binarization=cfg.binarization, params={f: getattr(cfg, f) for f in read})

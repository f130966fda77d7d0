"""Dataset registry: every image set the paper uses, loaded into float32 tensors with fixed splits.

Why one module with a registry rather than torchvision: the paper's conventions (Larochelle's static MNIST,
Burda's OMNIGLOT split, dynamic binarization with a fixed one-time binarization of validation/test) are not
what torchvision gives, torchvision is not a dependency, and a sweep must record exactly which split and
binarization each result row used (`DatasetSplits.split_note`, `.binarization`).

Where files are looked for, in order (the first folder that holds *all* files of a dataset wins, so files
from two folders are never mixed):
  1. ``<data_dir>/<name>/`` then ``<data_dir>/`` (user-supplied files; IDX files may be .gz or uncompressed),
  2. ``default_cache_dir()/<name>/`` ($OUVAE_DATA, else ~/.cache/ouvae),
  3. system folders of a Debian package (Fashion-MNIST: ``/usr/share/datasets/fashion-mnist/``, from
     ``apt-get install dataset-fashion-mnist``),
  4. if ``download=True``: the official URL, into the cache folder, through a temp file that is renamed only
     after its checksum passed (an interrupted download leaves no file behind).
Files in the cache under their official names are md5-checked on every load where a trusted md5 is known
(torchvision's published values). User-supplied and Debian files are checked for structure only: Debian
recompresses the .gz files, so their md5 differs from upstream although the images are the same.

Every problem a user can cause or fix (missing, truncated or corrupt files, wrong checksums, offline) raises
`DataError` whose message names the file, the problem and the fix -- never a numpy error from deep inside.

Split sizes are taken from the files where the convention allows (static MNIST: one file per split); the
canonical sizes that cannot be (validation held out of a training file) live in `DatasetSpec.n_validation`,
and the expected image counts in `DatasetSpec.expected_counts`. Tests scale them down with
``dataclasses.replace(DATASETS[name], ...)``; the public API has no knob for it.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import pickle
import struct
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
import torch

from .config import closest

__all__ = ["DataError", "DatasetSplits", "DatasetSpec", "RemoteFile", "DATASETS", "load_dataset",
           "default_cache_dir"]

BINARIZATIONS = ("dynamic", "static", "none")
LIKELIHOODS = ("bernoulli", "discretized_logistic")


class DataError(Exception):
    """A data problem the user can fix; the message says what is wrong and how to fix it."""


@dataclass(frozen=True)
class DatasetSplits:
    """Train/validation/test images of one dataset, float32 (N, C, H, W) in [0, 1].

    binarization: "dynamic" -- `train` holds grey-level probabilities and the trainer draws fresh Bernoulli
    pixels each batch, while `validation`/`test` were binarized once with a fixed seed (exactly 0/1), so every
    run is evaluated on the same binary images; "static" -- all splits are already 0/1; "none" -- 8-bit
    intensities / 255 (CIFAR-10).
    """

    name: str
    train: torch.Tensor
    validation: torch.Tensor
    test: torch.Tensor
    binarization: str
    likelihood: str
    split_note: str

    def __post_init__(self) -> None:
        if self.binarization not in BINARIZATIONS:
            raise DataError(f"binarization must be one of {BINARIZATIONS}, got {self.binarization!r}")
        if self.likelihood not in LIKELIHOODS:
            raise DataError(f"likelihood must be one of {LIKELIHOODS}, got {self.likelihood!r}")
        shapes = {}
        for split in ("train", "validation", "test"):
            x = getattr(self, split)
            if not isinstance(x, torch.Tensor) or x.dtype != torch.float32 or x.dim() != 4:
                raise DataError(f"{self.name}: {split} must be a float32 tensor of shape (N, C, H, W), got "
                                f"{getattr(x, 'dtype', type(x).__name__)} {tuple(getattr(x, 'shape', ()))}")
            shapes[split] = tuple(x.shape[1:])
        if len(set(shapes.values())) != 1:
            raise DataError(f"{self.name}: the splits disagree on the image shape: {shapes}")

    @property
    def image_shape(self) -> tuple[int, int, int]:
        c, h, w = self.train.shape[1:]
        return int(c), int(h), int(w)


@dataclass(frozen=True)
class RemoteFile:
    """One file of a dataset: its official name, where to download it, and how to check it.

    md5 is None where no trusted checksum is published; the reader then verifies the structure instead.
    `alternatives` are other names accepted for user-supplied copies (uncompressed IDX, an extracted folder).
    """

    name: str
    urls: tuple[str, ...]
    md5: str | None = None
    alternatives: tuple[str, ...] = ()


@dataclass(frozen=True)
class _Located:
    path: Path
    remote: RemoteFile
    from_cache: bool


Reader = Callable[["DatasetSpec", Mapping[str, _Located], int], DatasetSplits]


@dataclass(frozen=True)
class DatasetSpec:
    """How to find, check and split one dataset.

    n_validation: images held out of the training file(s) as validation (the last ones).
    n_test: digits only -- images carved out of the single pool as test.
    expected_counts: image count per source (e.g. {"train": 60000, "test": 10000}) checked after reading;
    None skips the check (tests use small files).
    """

    name: str
    description: str
    files: tuple[RemoteFile, ...]
    reader: Reader
    n_validation: int
    n_test: int = 0
    expected_counts: Mapping[str, int] | None = None
    system_dirs: tuple[str, ...] = ()
    install_hint: str = ""
    image_shape: tuple[int, int, int] = (1, 28, 28)
    binarization: str = "dynamic"
    likelihood: str = "bernoulli"
    homepage: str = ""


def default_cache_dir() -> Path:
    """$OUVAE_DATA if set, else ~/.cache/ouvae. Downloads go to <this>/<dataset name>/."""
    env = os.environ.get("OUVAE_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "ouvae"


# ----- helpers shared by the readers ----------------------------------------------------------------------

def _corrupt(loc: _Located, problem: str) -> DataError:
    """A DataError for a file that exists but cannot be used, with the fix that fits where it came from."""
    url = loc.remote.urls[0] if loc.remote.urls else "its source"
    if loc.from_cache:
        fix = f"Delete {loc.path} and run again: it will be downloaded afresh from {url}."
    else:
        fix = f"Replace it with an intact copy (official source: {url})."
    return DataError(f"{loc.path}: {problem}. {fix}")


def _read_maybe_gzip(loc: _Located) -> bytes:
    """File bytes, gunzipped if the file starts with the gzip magic (whatever its name says)."""
    try:
        raw = loc.path.read_bytes()
    except OSError as e:
        raise _corrupt(loc, f"cannot be read ({e})") from e
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise _corrupt(loc, f"is not a valid gzip file ({e}); it is probably truncated") from e
    return raw


def _md5(path: Path) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _check_count(spec: DatasetSpec, key: str, loc: _Located, got: int) -> None:
    expected = None if spec.expected_counts is None else spec.expected_counts.get(key)
    if expected is not None and got != expected:
        raise _corrupt(loc, f"holds {got} images but {spec.name}'s {key} set has {expected}; the file is "
                            f"incomplete or belongs to another dataset")


def _hold_out(spec: DatasetSpec, n_total: int, loc: _Located) -> int:
    """Number of training images left after holding out the last `n_validation`."""
    n_train = n_total - spec.n_validation
    if n_train < 1:
        raise _corrupt(loc, f"holds only {n_total} training images, too few to hold out the last "
                            f"{spec.n_validation} for validation")
    return n_train


def _to_unit_float(x_uint8: np.ndarray, scale: float) -> torch.Tensor:
    """uint8 array -> float32 tensor / scale, one allocation (only the slice is converted, not the whole file)."""
    return torch.from_numpy(x_uint8.astype(np.float32)).div_(scale)


def _binarize_once(probs: torch.Tensor, seed: int, stream: int) -> torch.Tensor:
    """Bernoulli(probs) drawn once from numpy's PCG64 seeded with (seed, stream): the same 0/1 images on every
    load, machine and torch version, so validation/test numbers are comparable across runs."""
    rng = np.random.default_rng([seed, stream])
    u = rng.random(tuple(probs.shape), dtype=np.float32)
    return torch.from_numpy(u < probs.numpy()).to(torch.float32)


def _dynamic_note(seed: int) -> str:
    return f"validation and test binarized once with seed {seed}; train re-binarized every batch"


# ----- IDX (MNIST, Fashion-MNIST) -------------------------------------------------------------------------

def _read_idx_images(loc: _Located) -> np.ndarray:
    """(N, 28, 28) uint8 from an IDX3 file; header and payload size are checked before anything is shaped."""
    raw = _read_maybe_gzip(loc)
    if len(raw) < 16 or raw[0:2] != b"\x00\x00" or raw[2] != 0x08 or raw[3] != 3:
        magic = raw[:4].hex() if len(raw) >= 4 else f"only {len(raw)} bytes"
        hint = " (this looks like an IDX labels file)" if raw[:4] == b"\x00\x00\x08\x01" else ""
        raise _corrupt(loc, f"is not an IDX image file: magic number {magic}, expected 00000803{hint}")
    n, rows, cols = struct.unpack(">III", raw[4:16])
    if (rows, cols) != (28, 28):
        raise _corrupt(loc, f"holds {rows}x{cols} images, expected 28x28")
    expected = 16 + n * rows * cols
    if len(raw) != expected:
        raise _corrupt(loc, f"has {len(raw)} bytes (uncompressed) but its header promises {n} images = "
                            f"{expected} bytes; the file is truncated or damaged")
    return np.frombuffer(raw, dtype=np.uint8, offset=16).reshape(n, 1, rows, cols)


def _read_mnist_like(spec: DatasetSpec, files: Mapping[str, _Located], seed: int) -> DatasetSplits:
    train_loc, test_loc = (files[f.name] for f in spec.files)
    train_u8, test_u8 = _read_idx_images(train_loc), _read_idx_images(test_loc)
    _check_count(spec, "train", train_loc, len(train_u8))
    _check_count(spec, "test", test_loc, len(test_u8))
    n_train = _hold_out(spec, len(train_u8), train_loc)
    train = _to_unit_float(train_u8[:n_train], 255.0)
    validation = _binarize_once(_to_unit_float(train_u8[n_train:], 255.0), seed, 1)
    test = _binarize_once(_to_unit_float(test_u8, 255.0), seed, 2)
    note = (f"{len(train)}/{len(validation)}/{len(test)} (train/validation = first {len(train)}/last "
            f"{len(validation)} of the {len(train_u8)} training images, test = the {len(test)} test images; "
            f"{_dynamic_note(seed)})")
    return DatasetSplits(spec.name, train, validation, test, spec.binarization, spec.likelihood, note)


# ----- Larochelle's static binarized MNIST (.amat) ---------------------------------------------------------

_AMAT_ALLOWED = np.zeros(256, dtype=bool)
_AMAT_ALLOWED[[ord("0"), ord("1"), ord(" "), ord("\t"), ord("\n"), ord("\r")]] = True


def _read_amat(loc: _Located, width: int = 784) -> np.ndarray:
    """(N, width) uint8 from a text file of 0/1 tokens separated by whitespace, one image per line.

    No published checksum exists for these files, so structure is the check: only single-digit 0/1 tokens,
    exactly `width` per non-empty line. Parsing works on the raw bytes with numpy (a token split in Python
    would take seconds and gigabytes for the 39M values of the training file).
    """
    try:
        b = np.frombuffer(loc.path.read_bytes(), dtype=np.uint8)
    except OSError as e:
        raise _corrupt(loc, f"cannot be read ({e})") from e

    def line_of(pos: int) -> int:
        return int(np.count_nonzero(b[:pos] == ord("\n"))) + 1

    bad = np.flatnonzero(~_AMAT_ALLOWED[b])
    if bad.size:
        ch = chr(int(b[bad[0]]))
        raise _corrupt(loc, f"is not a binarized-MNIST .amat file: unexpected character {ch!r} on line "
                            f"{line_of(int(bad[0]))} (only 0/1 values separated by spaces are allowed)")
    is_digit = (b == ord("0")) | (b == ord("1"))
    joined = np.flatnonzero(is_digit[:-1] & is_digit[1:])
    if joined.size:
        raise _corrupt(loc, f"is malformed: a multi-digit value on line {line_of(int(joined[0]))} "
                            f"(only single 0/1 values are allowed)")
    ends = np.flatnonzero(b == ord("\n"))
    if b.size and b[-1] != ord("\n"):
        ends = np.append(ends, b.size - 1)
    counts = np.diff(np.concatenate([[0], np.cumsum(is_digit)[ends]])) if ends.size else np.zeros(0, int)
    rows = counts[counts > 0]
    wrong = np.flatnonzero((counts > 0) & (counts != width))
    if wrong.size:
        raise _corrupt(loc, f"is malformed: line {int(wrong[0]) + 1} has {int(counts[wrong[0]])} values, "
                            f"expected {width}; the file is truncated or damaged")
    if rows.size == 0:
        raise _corrupt(loc, "holds no images")
    return (b[is_digit] - ord("0")).reshape(rows.size, width)


def _read_static_mnist(spec: DatasetSpec, files: Mapping[str, _Located], seed: int) -> DatasetSplits:
    out = []
    for key, remote in zip(("train", "validation", "test"), spec.files):
        loc = files[remote.name]
        x = _read_amat(loc)
        _check_count(spec, key, loc, len(x))
        out.append(torch.from_numpy(x.reshape(-1, 1, 28, 28)).to(torch.float32))
    train, validation, test = out
    note = (f"{len(train)}/{len(validation)}/{len(test)} (Larochelle's binarized_mnist_{{train,valid,test}}.amat,"
            f" one fixed binarization)")
    return DatasetSplits(spec.name, train, validation, test, spec.binarization, spec.likelihood, note)


# ----- Burda's OMNIGLOT (chardata.mat) ---------------------------------------------------------------------

OMNIGLOT_SHUFFLE_SEED = 123  # Burda's iwae datasets.py: RandomState(123).permutation before holding out


def _omniglot_images(loc: _Located, mat: Mapping[str, object], key: str) -> np.ndarray:
    """(N, 1, 28, 28) float32 from a (784, N) matrix whose columns are column-major (MATLAB) 28x28 images.

    Burda reads `data.T.reshape(-1, 28, 28).reshape(-1, 784, order='F')`, i.e. each 784-vector is the image
    flattened in Fortran order; reshaping it in Fortran order (= C order, then transposing the two pixel
    axes) gives upright characters.
    """
    a = mat.get(key)
    if a is None:
        raise _corrupt(loc, f"has no variable '{key}' (Burda's chardata.mat holds 'data' and 'testdata')")
    if not isinstance(a, np.ndarray) or a.ndim != 2 or a.shape[0] != 784 or a.shape[1] < 1:
        raise _corrupt(loc, f"variable '{key}' has shape {getattr(a, 'shape', None)}, expected (784, N)")
    try:
        a = a.astype(np.float32, copy=False)
    except (TypeError, ValueError) as e:
        raise _corrupt(loc, f"variable '{key}' is not numeric ({e})") from e
    if not np.isfinite(a).all() or a.min() < 0 or a.max() > 1:
        raise _corrupt(loc, f"variable '{key}' has values outside [0, 1] or non-finite values")
    n = a.shape[1]
    return np.ascontiguousarray(a.T.reshape(n, 28, 28).transpose(0, 2, 1)).reshape(n, 1, 28, 28)


def _read_omniglot(spec: DatasetSpec, files: Mapping[str, _Located], seed: int) -> DatasetSplits:
    import scipy.io  # lazy: scipy.io is only needed for this dataset

    loc = files[spec.files[0].name]
    try:
        mat = scipy.io.loadmat(loc.path, variable_names=["data", "testdata"])
    except NotImplementedError as e:  # MATLAB v7.3 (HDF5) files
        raise _corrupt(loc, f"is a MATLAB v7.3 file that scipy cannot read ({e}); Burda's file is v5") from e
    except Exception as e:  # scipy raises ValueError, TypeError, OSError, MatReadError... on damaged files
        raise _corrupt(loc, f"is not a readable .mat file ({type(e).__name__}: {e})") from e
    train_all = _omniglot_images(loc, mat, "data")
    test_np = _omniglot_images(loc, mat, "testdata")
    _check_count(spec, "train", loc, len(train_all))
    _check_count(spec, "test", loc, len(test_np))
    perm = np.random.RandomState(OMNIGLOT_SHUFFLE_SEED).permutation(len(train_all))
    n_train = _hold_out(spec, len(train_all), loc)
    train = torch.from_numpy(train_all[perm[:n_train]])
    validation = _binarize_once(torch.from_numpy(train_all[perm[n_train:]]), seed, 1)
    test = _binarize_once(torch.from_numpy(test_np), seed, 2)
    note = (f"{len(train)}/{len(validation)}/{len(test)} (Burda's chardata.mat: the {len(train_all)} training "
            f"images shuffled with RandomState({OMNIGLOT_SHUFFLE_SEED}) as in the IWAE code, last "
            f"{len(validation)} held out for validation; {len(test)} test images; {_dynamic_note(seed)})")
    return DatasetSplits(spec.name, train, validation, test, spec.binarization, spec.likelihood, note)


# ----- CIFAR-10 (python tarball) ---------------------------------------------------------------------------

_CIFAR_DIR = "cifar-10-batches-py"
_CIFAR_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
_CIFAR_TEST = "test_batch"


class _BatchUnpickler(pickle.Unpickler):
    """Unpickles a CIFAR batch (a dict holding a numpy array) and nothing else: a tampered or foreign pickle
    cannot run code while we load it."""

    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
                ("numpy", "ndarray"), ("numpy", "dtype"),
                ("_codecs", "encode")}  # protocol-2 pickles written by Python 3 store bytes through it

    def find_class(self, module: str, name: str):  # noqa: ANN201 -- pickle's signature
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR batch")


def _parse_cifar_batch(loc: _Located, member: str, payload: bytes) -> np.ndarray:
    import io

    try:
        d = _BatchUnpickler(io.BytesIO(payload), encoding="latin1").load()
    except Exception as e:  # UnpicklingError, EOFError, ValueError... on damaged data
        raise _corrupt(loc, f"member {member} is not a readable CIFAR batch ({type(e).__name__}: {e})") from e
    data = d.get("data", d.get(b"data")) if isinstance(d, dict) else None
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise _corrupt(loc, f"member {member} has no uint8 'data' array of shape (N, 3072)")
    return data


def _read_cifar_members(loc: _Located) -> dict[str, np.ndarray]:
    wanted = {*_CIFAR_TRAIN, _CIFAR_TEST}
    found: dict[str, np.ndarray] = {}
    if loc.path.is_dir():  # an already-extracted cifar-10-batches-py/ folder
        for name in sorted(wanted):
            p = loc.path / name
            try:
                found[name] = _parse_cifar_batch(loc, name, p.read_bytes())
            except OSError as e:
                raise _corrupt(loc, f"has no readable {name} ({e})") from e
        return found
    try:
        with tarfile.open(loc.path, "r:*") as tar:
            for member in tar:  # one forward pass: a .tar.gz cannot seek back cheaply
                base = member.name.rsplit("/", 1)[-1]
                if base in wanted and member.isfile():
                    fobj = tar.extractfile(member)
                    assert fobj is not None
                    found[base] = _parse_cifar_batch(loc, member.name, fobj.read())
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise _corrupt(loc, f"is not a readable tar archive ({type(e).__name__}: {e}); it is probably "
                            f"truncated") from e
    missing = sorted(wanted - found.keys())
    if missing:
        raise _corrupt(loc, f"lacks the batch file(s) {', '.join(missing)} (expected under {_CIFAR_DIR}/)")
    return found


def _read_cifar10(spec: DatasetSpec, files: Mapping[str, _Located], seed: int) -> DatasetSplits:
    loc = files[spec.files[0].name]
    batches = _read_cifar_members(loc)
    train_u8 = np.concatenate([batches[b] for b in _CIFAR_TRAIN]).reshape(-1, 3, 32, 32)
    test_u8 = batches[_CIFAR_TEST].reshape(-1, 3, 32, 32)
    del batches
    _check_count(spec, "train", loc, len(train_u8))
    _check_count(spec, "test", loc, len(test_u8))
    n_train = _hold_out(spec, len(train_u8), loc)
    train = _to_unit_float(train_u8[:n_train], 255.0)
    validation = _to_unit_float(train_u8[n_train:], 255.0)
    test = _to_unit_float(test_u8, 255.0)
    note = (f"{len(train)}/{len(validation)}/{len(test)} (train/validation = first {len(train)}/last "
            f"{len(validation)} of CIFAR-10's {len(train_u8)} training images in batch order 1-5, test = "
            f"test_batch; 8-bit intensities / 255, no binarization)")
    return DatasetSplits(spec.name, train, validation, test, spec.binarization, spec.likelihood, note)


# ----- scikit-learn digits (offline default) ---------------------------------------------------------------

def _read_digits(spec: DatasetSpec, files: Mapping[str, _Located], seed: int) -> DatasetSplits:
    from sklearn.datasets import load_digits  # lazy: sklearn import costs ~0.5 s

    x = load_digits().data.astype(np.float32) / 16.0  # 0..16 grey levels -> probabilities
    n = len(x)
    n_train = n - spec.n_validation - spec.n_test
    if n_train < 1:
        raise DataError(f"digits has {n} images, too few for {spec.n_validation} validation + "
                        f"{spec.n_test} test images")
    x = x[np.random.default_rng(seed).permutation(n)].reshape(n, 1, 8, 8)
    train = torch.from_numpy(np.ascontiguousarray(x[:n_train]))
    validation = _binarize_once(torch.from_numpy(np.ascontiguousarray(x[n_train:n_train + spec.n_validation])),
                                seed, 1)
    test = _binarize_once(torch.from_numpy(np.ascontiguousarray(x[n_train + spec.n_validation:])), seed, 2)
    note = (f"{len(train)}/{len(validation)}/{len(test)} (scikit-learn's {n} 8x8 digits, values/16, permuted "
            f"with numpy default_rng({seed}): first {len(train)} train, next {len(validation)} validation, "
            f"last {len(test)} test; {_dynamic_note(seed)})")
    return DatasetSplits(spec.name, train, validation, test, spec.binarization, spec.likelihood, note)


# ----- the registry ---------------------------------------------------------------------------------------

# md5 values: torchvision/datasets/mnist.py (MNIST, FashionMNIST) and torchvision/datasets/cifar.py
# (CIFAR10.tgz_md5), which match the values the dataset authors publish.
_MNIST_MIRRORS = ("http://yann.lecun.com/exdb/mnist/", "https://ossci-datasets.s3.amazonaws.com/mnist/")
_FASHION_MIRRORS = ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",)


def _idx_files(mirrors: tuple[str, ...], md5_train: str, md5_test: str) -> tuple[RemoteFile, ...]:
    def one(stem: str, md5: str) -> RemoteFile:
        name = f"{stem}-images-idx3-ubyte.gz"
        return RemoteFile(name, tuple(m + name for m in mirrors), md5,
                          alternatives=(f"{stem}-images-idx3-ubyte", f"{stem}-images.idx3-ubyte"))
    return one("train", md5_train), one("t10k", md5_test)


_LAROCHELLE = "https://www.cs.toronto.edu/~larocheh/public/datasets/binarized_mnist/"
_LAROCHELLE_HTTP = _LAROCHELLE.replace("https://", "http://")  # the address most papers cite

DATASETS: dict[str, DatasetSpec] = {
    "digits": DatasetSpec(
        name="digits", description="scikit-learn's bundled 8x8 handwritten digits (1,797 images; offline)",
        files=(), reader=_read_digits, n_validation=250, n_test=250, image_shape=(1, 8, 8),
        homepage="https://scikit-learn.org/stable/modules/generated/sklearn.datasets.load_digits.html"),
    "mnist": DatasetSpec(
        name="mnist", description="MNIST, dynamically binarized (50k/10k/10k)",
        files=_idx_files(_MNIST_MIRRORS, "f68b3c2dcbeaaa9fbdd348bbdeb94873", "9fb629c4189551a2d022fa330f9573f3"),
        reader=_read_mnist_like, n_validation=10_000, expected_counts={"train": 60_000, "test": 10_000},
        homepage="http://yann.lecun.com/exdb/mnist/"),
    "fashion_mnist": DatasetSpec(
        name="fashion_mnist", description="Fashion-MNIST, dynamically binarized (50k/10k/10k)",
        files=_idx_files(_FASHION_MIRRORS, "8d4fb7e6c68d591d4c3dfef9ec88bf0d", "bef4ecab320f06d8554ea6380940ec79"),
        reader=_read_mnist_like, n_validation=10_000, expected_counts={"train": 60_000, "test": 10_000},
        system_dirs=("/usr/share/datasets/fashion-mnist",),
        install_hint="On Debian/Ubuntu, `apt-get install dataset-fashion-mnist` puts the files in "
                     "/usr/share/datasets/fashion-mnist/, where they are found automatically.",
        homepage="https://github.com/zalandoresearch/fashion-mnist"),
    # No checksum is published for the .amat files: _read_amat verifies structure and expected_counts rows.
    "static_mnist": DatasetSpec(
        name="static_mnist", description="Larochelle's statically binarized MNIST (50k/10k/10k)",
        files=tuple(RemoteFile(f"binarized_mnist_{s}.amat", (f"{_LAROCHELLE}binarized_mnist_{s}.amat",
                                                             f"{_LAROCHELLE_HTTP}binarized_mnist_{s}.amat"))
                    for s in ("train", "valid", "test")),
        reader=_read_static_mnist, n_validation=10_000, binarization="static",
        expected_counts={"train": 50_000, "validation": 10_000, "test": 10_000},
        homepage=_LAROCHELLE),
    # No checksum is published for chardata.mat: _read_omniglot verifies variables, shapes, value range, counts.
    "omniglot": DatasetSpec(
        name="omniglot", description="OMNIGLOT 28x28 from Burda et al.'s chardata.mat, dynamically binarized",
        files=(RemoteFile("chardata.mat",
                          ("https://github.com/yburda/iwae/raw/master/datasets/OMNIGLOT/chardata.mat",)),),
        reader=_read_omniglot, n_validation=1_345, expected_counts={"train": 24_345, "test": 8_070},
        homepage="https://github.com/yburda/iwae"),
    "cifar10": DatasetSpec(
        name="cifar10", description="CIFAR-10, 8-bit colour images (45k/5k/10k)",
        files=(RemoteFile("cifar-10-python.tar.gz", ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",),
                          "c58f30108f718f92721af3b95e74349a", alternatives=(_CIFAR_DIR,)),),
        reader=_read_cifar10, n_validation=5_000, expected_counts={"train": 50_000, "test": 10_000},
        image_shape=(3, 32, 32), binarization="none", likelihood="discretized_logistic",
        homepage="https://www.cs.toronto.edu/~kriz/cifar.html"),
}


# ----- finding and downloading files ----------------------------------------------------------------------

def _search_dirs(spec: DatasetSpec, data_dir: Path | None, cache: Path) -> list[tuple[Path, bool]]:
    """(folder, is_cache) in search order."""
    dirs: list[tuple[Path, bool]] = []
    if data_dir is not None:
        dirs += [(data_dir / spec.name, False), (data_dir, False)]
    dirs.append((cache, True))
    dirs += [(Path(d), False) for d in spec.system_dirs]
    return dirs


def _locate_in(folder: Path, remote: RemoteFile, is_cache: bool) -> _Located | None:
    for name in (remote.name, *remote.alternatives):
        p = folder / name
        if p.exists():
            return _Located(p, remote, is_cache)
    return None


def _verify_cached(loc: _Located) -> None:
    """md5 of an official-named file in the cache, where a trusted md5 is known."""
    if loc.from_cache and loc.remote.md5 and loc.path.name == loc.remote.name and loc.path.is_file():
        got = _md5(loc.path)
        if got != loc.remote.md5:
            raise DataError(f"{loc.path}: md5 is {got} but the official file's is {loc.remote.md5}; the download "
                            f"is corrupt or incomplete. Delete {loc.path} and run again to download it afresh "
                            f"from {loc.remote.urls[0]}. (A copy you placed there yourself, e.g. recompressed, belongs in a "
                            f"data_dir folder instead: only the official file passes the cache's checksum.)")


def _download(remote: RemoteFile, folder: Path) -> Path:
    """Fetch `remote` into folder/<name> via a temp file renamed only after the md5 passed."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / remote.name
    errors = []
    for url in remote.urls:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{remote.name}.", suffix=".part")
        try:
            print(f"ouvae.data: downloading {url} -> {target}", file=sys.stderr)
            h = hashlib.md5(usedforsecurity=False)
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as resp:
                while chunk := resp.read(1 << 20):
                    out.write(chunk)
                    h.update(chunk)
            if remote.md5 and h.hexdigest() != remote.md5:
                errors.append(f"{url}: md5 {h.hexdigest()} differs from the official {remote.md5}")
                continue
            os.replace(tmp, target)
            return target
        except (urllib.error.URLError, OSError, TimeoutError, ValueError) as e:
            errors.append(f"{url}: {e}")
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    raise DataError(f"Could not download {remote.name}: " + "; ".join(errors) + f". If this machine is offline, "
                    f"fetch {remote.urls[0]} elsewhere and put it in {folder}/ (or in data_dir).")


def _find_files(spec: DatasetSpec, data_dir: Path | None, download: bool) -> dict[str, _Located]:
    cache = default_cache_dir() / spec.name
    dirs = _search_dirs(spec, data_dir, cache)
    for folder, is_cache in dirs:
        found = [_locate_in(folder, f, is_cache) for f in spec.files]
        if all(found):
            return {f.name: loc for f, loc in zip(spec.files, found) if loc is not None}
    missing = [f for f in spec.files if _locate_in(cache, f, True) is None]
    if download:
        for f in missing:
            _download(f, cache)
        return {f.name: loc for f in spec.files if (loc := _locate_in(cache, f, True)) is not None}
    names = ", ".join(f.name for f in spec.files)
    urls = "; ".join(f.urls[0] for f in spec.files)
    searched = ", ".join(str(d) for d, _ in dirs)
    hint = f" {spec.install_hint}" if spec.install_hint else ""
    raise DataError(f"{spec.name}: the file(s) {names} were not found (no folder holds all of them; searched "
                    f"{searched}) and download=False. Fix: download {urls} and put the file(s) in {cache}/ (or in "
                    f"data_dir), or load with download=True.{hint}")


def load_dataset(name: str, data_dir: str | os.PathLike | None = None, *, download: bool = True,
                 seed: int = 0) -> DatasetSplits:
    """Load dataset `name` (a key of DATASETS) with its fixed splits.

    data_dir: folder with user-supplied files, searched before the cache (also <data_dir>/<name>/).
    download: fetch missing files from the official URL into default_cache_dir()/<name>/.
    seed: seeds the one-time binarization of validation/test for dynamically binarized sets and the digits
    split. It is a *data* seed: pass the same value to every run that must be evaluated on the same images.
    """
    spec = DATASETS.get(name)
    if spec is None:
        close = closest(name, DATASETS)
        hint = f" Did you mean {close!r}?" if close else ""
        raise DataError(f"Unknown dataset {name!r}; choose one of {sorted(DATASETS)}.{hint}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise DataError(f"seed must be a non-negative integer, got {seed!r}")
    folder = None
    if data_dir is not None and spec.files:
        folder = Path(data_dir).expanduser()
        if not folder.is_dir():
            raise DataError(f"data_dir {folder} does not exist or is not a folder; create it and put the "
                            f"{spec.name} files there, or leave data_dir unset to use the cache "
                            f"{default_cache_dir() / spec.name}")
    files = _find_files(spec, folder, download) if spec.files else {}
    for loc in files.values():
        _verify_cached(loc)
    return spec.reader(spec, files, int(seed))

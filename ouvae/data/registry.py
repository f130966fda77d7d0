"""The registry: every image set the paper uses, with its files, checks and fixed split -- plus the two routes
for the user's own files (``idx``, ``npy``, in `user.py`), so that `DATASETS` lists every name ``--dataset``
accepts.

Why a registry rather than torchvision: the paper's conventions (Larochelle's static MNIST, Burda's OMNIGLOT
split, dynamic binarization with a fixed one-time binarization of validation/test) are not what torchvision
gives, torchvision is not a dependency, and a sweep must record exactly which split and binarization each
result row used (`DatasetSplits.split_note`, `.binarization`).

Split sizes are taken from the files where the convention allows (static MNIST: one file per split); the
canonical sizes that cannot be (validation held out of a training file) live in `DatasetSpec.n_validation`,
and the expected image counts in `DatasetSpec.expected_counts` (strict: a registered set with another count is
another data set).
"""

from __future__ import annotations

import numpy as np
import torch

from .files import Located, RemoteFile
from .formats import CIFAR_DIR, CIFAR_TEST, CIFAR_TRAIN, read_amat, read_chardata, read_cifar_batches, read_idx_images
from .spec import DatasetSpec, LoadRequest
from .splits import DataError, DatasetSplits, make_splits, to_unit_float
from .synthetic import read_gaussian
from .user import read_idx_folder, read_numpy
from ..config import GAUSSIAN_DATA_FIELDS


def _check_count(spec: DatasetSpec, key: str, loc: Located, got: int) -> None:
    expected = None if spec.expected_counts is None else spec.expected_counts.get(key)
    if expected is not None and got != expected:
        raise loc.corrupt(f"holds {got} images but {spec.name}'s {key} set has {expected}; the file is "
                          f"incomplete or belongs to another data set")


def _hold_out(spec: DatasetSpec, n_total: int, loc: Located) -> int:
    """Number of training images left after holding out the last `n_validation`."""
    n_train = n_total - spec.n_validation
    if n_train < 1:
        raise loc.corrupt(f"holds only {n_total} training images, too few to hold out the last "
                          f"{spec.n_validation} for validation")
    return n_train


def _eight_bit_splits(spec: DatasetSpec, train_loc: Located, train_u8: np.ndarray, test_loc: Located,
                      test_u8: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(train, validation, test) / 255 after the count checks, the last n_validation training images held out."""
    _check_count(spec, "train", train_loc, len(train_u8))
    _check_count(spec, "test", test_loc, len(test_u8))
    n_train = _hold_out(spec, len(train_u8), train_loc)
    return tuple(to_unit_float(x, 255.0) for x in (train_u8[:n_train], train_u8[n_train:], test_u8))


def _read_mnist_like(spec: DatasetSpec, req: LoadRequest) -> DatasetSplits:
    train_loc, test_loc = (req.files[f.name] for f in spec.files)
    train_u8, test_u8 = read_idx_images(train_loc), read_idx_images(test_loc)
    for loc, x in ((train_loc, train_u8), (test_loc, test_u8)):
        if x.shape[1:] != spec.image_shape:
            raise loc.corrupt(f"holds {x.shape[2]}x{x.shape[3]} images, expected "
                              f"{spec.image_shape[1]}x{spec.image_shape[2]} (files of another size: --dataset idx)")
    train, validation, test = _eight_bit_splits(spec, train_loc, train_u8, test_loc, test_u8)
    source = (f"train/validation = first {len(train)}/last {len(validation)} of the {len(train_u8)} training "
              f"images, test = the {len(test)} test images")
    return make_splits(spec.name, train, validation, test, spec.binarization, req.seed, source)


def _read_static_mnist(spec: DatasetSpec, req: LoadRequest) -> DatasetSplits:
    out = []
    for key, remote in zip(("train", "validation", "test"), spec.files):
        loc = req.files[remote.name]
        x = read_amat(loc)
        _check_count(spec, key, loc, len(x))
        out.append(torch.from_numpy(x.reshape(-1, 1, 28, 28)).to(torch.float32))
    train, validation, test = out
    note = (f"{len(train)}/{len(validation)}/{len(test)} (Larochelle's binarized_mnist_{{train,valid,test}}.amat,"
            f" one fixed binarization)")
    return DatasetSplits(spec.name, train, validation, test, spec.binarization, spec.likelihood, note)


OMNIGLOT_SHUFFLE_SEED = 123  # Burda's iwae datasets.py: RandomState(123).permutation before holding out


def _read_omniglot(spec: DatasetSpec, req: LoadRequest) -> DatasetSplits:
    loc = req.files[spec.files[0].name]
    train_all, test_np = read_chardata(loc)
    _check_count(spec, "train", loc, len(train_all))
    _check_count(spec, "test", loc, len(test_np))
    perm = np.random.RandomState(OMNIGLOT_SHUFFLE_SEED).permutation(len(train_all))
    n_train = _hold_out(spec, len(train_all), loc)
    train, validation = torch.from_numpy(train_all[perm[:n_train]]), torch.from_numpy(train_all[perm[n_train:]])
    source = (f"Burda's chardata.mat: the {len(train_all)} training images shuffled with "
              f"RandomState({OMNIGLOT_SHUFFLE_SEED}) as in the IWAE code, last {len(validation)} held out for "
              f"validation; {len(test_np)} test images")
    return make_splits(spec.name, train, validation, torch.from_numpy(test_np), spec.binarization, req.seed, source)


def _read_cifar10(spec: DatasetSpec, req: LoadRequest) -> DatasetSplits:
    loc = req.files[spec.files[0].name]
    batches = read_cifar_batches(loc)
    train_u8 = np.concatenate([batches[b] for b in CIFAR_TRAIN]).reshape(-1, 3, 32, 32)
    test_u8 = batches[CIFAR_TEST].reshape(-1, 3, 32, 32)
    del batches
    train, validation, test = _eight_bit_splits(spec, loc, train_u8, loc, test_u8)
    source = (f"train/validation = first {len(train)}/last {len(validation)} of CIFAR-10's {len(train_u8)} "
              f"training images in batch order 1-5, test = test_batch")
    return make_splits(spec.name, train, validation, test, spec.binarization, req.seed, source)


def _read_digits(spec: DatasetSpec, req: LoadRequest) -> DatasetSplits:
    from sklearn.datasets import load_digits  # lazy: sklearn import costs ~0.5 s

    x = load_digits().data.astype(np.float32) / 16.0  # 0..16 grey levels -> probabilities
    n = len(x)
    n_train = n - spec.n_validation - spec.n_test
    if n_train < 1:
        raise DataError(f"digits has {n} images, too few for {spec.n_validation} validation + "
                        f"{spec.n_test} test images")
    x = x[np.random.default_rng(req.seed).permutation(n)].reshape(n, 1, 8, 8)
    train, validation, test = (torch.from_numpy(np.ascontiguousarray(part)) for part in
                               (x[:n_train], x[n_train:n_train + spec.n_validation], x[n_train + spec.n_validation:]))
    source = (f"scikit-learn's {n} 8x8 digits, values/16, permuted with numpy default_rng({req.seed}): first "
              f"{len(train)} train, next {len(validation)} validation, last {len(test)} test")
    return make_splits(spec.name, train, validation, test, spec.binarization, req.seed, source)


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
                          "c58f30108f718f92721af3b95e74349a", alternatives=(CIFAR_DIR,)),),
        reader=_read_cifar10, n_validation=5_000, expected_counts={"train": 50_000, "test": 10_000},
        image_shape=(3, 32, 32), binarization="none", likelihood="discretized_logistic",
        homepage="https://www.cs.toronto.edu/~kriz/cifar.html"),
    "gaussian": DatasetSpec(
        name="gaussian", description="generated real-valued vectors from N(0, diag(gaussian_eigenvalue x "
                                     "gaussian_ratio^i)), i < gaussian_dim, gaussian_samples per split (offline)",
        files=(), reader=read_gaussian, image_shape=None, binarization="none", likelihood="gaussian",
        config_fields=GAUSSIAN_DATA_FIELDS),
    "idx": DatasetSpec(
        name="idx", description="your MNIST-format IDX image files of any count and size, in --data-dir",
        files=(), reader=read_idx_folder, user_data=True, image_shape=None),
    "npy": DatasetSpec(
        name="npy", description="your NumPy images: an .npz (train, test[, validation]) or a folder of "
                                "train.npy, test.npy[, validation.npy], as --data-dir",
        files=(), reader=read_numpy, user_data=True, image_shape=None, binarization="auto"),
}

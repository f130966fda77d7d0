"""Tests of the dataset registry on files written here in the real formats (IDX, .amat, Burda's .mat, the
CIFAR-10 python tarball), scikit-learn's digits, and -- where the Debian package is installed -- the real
Fashion-MNIST. Split sizes are scaled down with dataclasses.replace on the registry entry."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch

from ouvae.data import DATASETS, DataError, DatasetSplits, default_cache_dir, load_dataset

torch.set_num_threads(1)

DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    """Every test gets an empty cache, so nothing on this machine leaks in and nothing is written outside."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("OUVAE_DATA", str(cache))
    return cache


def scale(monkeypatch, name, **changes):
    spec = dataclasses.replace(DATASETS[name], **changes)
    monkeypatch.setitem(DATASETS, name, spec)
    return spec


def grey_images(n, seed, shape=(28, 28)):
    """uint8 images holding 0, 255 and grey levels, so binarization has something to do."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)
    x[:, 0, :] = 0
    x[:, -1, :] = 255
    return x


def idx_bytes(images):
    n, r, c = images.shape
    return b"\x00\x00\x08\x03" + struct.pack(">III", n, r, c) + images.tobytes()


def write_idx(folder, stem, images, gz=True):
    folder.mkdir(parents=True, exist_ok=True)
    raw = idx_bytes(images)
    if gz:
        path = folder / f"{stem}-images-idx3-ubyte.gz"
        path.write_bytes(gzip.compress(raw))
    else:
        path = folder / f"{stem}-images-idx3-ubyte"
        path.write_bytes(raw)
    return path


def write_mnist(folder, n_train=100, n_test=30, gz=True):
    train, test = grey_images(n_train, 1), grey_images(n_test, 2)
    write_idx(folder, "train", train, gz)
    write_idx(folder, "t10k", test, gz)
    return train, test


def small_mnist(monkeypatch, name="mnist", n_validation=20):
    return scale(monkeypatch, name, n_validation=n_validation, expected_counts={"train": 100, "test": 30})


def is_binary(x):
    return bool(((x == 0) | (x == 1)).all())


# ----- digits -------------------------------------------------------------------------------------------

def test_digits_documented_split_shapes_and_values():
    d = load_dataset("digits")
    assert isinstance(d, DatasetSplits)
    assert d.train.shape == (1297, 1, 8, 8) and d.validation.shape == (250, 1, 8, 8) and d.test.shape == (250, 1, 8, 8)
    assert d.image_shape == (1, 8, 8)
    assert d.train.dtype == d.validation.dtype == d.test.dtype == torch.float32
    assert (d.binarization, d.likelihood) == ("dynamic", "bernoulli")
    assert d.split_note.startswith("1297/250/250")
    # train holds grey levels k/16 as probabilities, evaluation splits are binarized once
    assert d.train.min() == 0 and d.train.max() == 1
    assert torch.equal(torch.round(d.train * 16), d.train * 16)
    assert ((d.train > 0) & (d.train < 1)).any()
    assert is_binary(d.validation) and is_binary(d.test)


def test_digits_fixed_seed_is_reproducible_and_seed_changes_it():
    a, b, c = load_dataset("digits"), load_dataset("digits", seed=0), load_dataset("digits", seed=1)
    for split in ("train", "validation", "test"):
        assert torch.equal(getattr(a, split), getattr(b, split))
    assert not torch.equal(a.train, c.train)
    # the documented rule: default_rng(seed).permutation, first 1297 train, next 250 validation, last 250 test
    from sklearn.datasets import load_digits

    x = torch.from_numpy(load_digits().data / 16.0).float().reshape(-1, 1, 8, 8)
    perm = torch.from_numpy(np.random.default_rng(1).permutation(len(x)))
    assert torch.equal(c.train, x[perm[:1297]])
    p_val, p_test = x[perm[1297:1547]], x[perm[1547:]]
    assert (c.validation[p_val == 0] == 0).all() and (c.validation[p_val == 1] == 1).all()
    assert (c.test[p_test == 0] == 0).all() and (c.test[p_test == 1] == 1).all()


# ----- MNIST-style IDX ----------------------------------------------------------------------------------

@pytest.mark.parametrize("gz", [True, False], ids=["gz", "raw"])
def test_mnist_idx_from_data_dir_splits_and_binarization(tmp_path, monkeypatch, gz):
    small_mnist(monkeypatch)
    train_u8, test_u8 = write_mnist(tmp_path / "user", gz=gz)
    d = load_dataset("mnist", tmp_path / "user", download=False)
    assert d.train.shape == (80, 1, 28, 28) and d.validation.shape == (20, 1, 28, 28) and d.test.shape == (30, 1, 28, 28)
    assert d.split_note.startswith("80/20/30")
    assert (d.binarization, d.likelihood, d.image_shape) == ("dynamic", "bernoulli", (1, 28, 28))
    # train = first 80 training images as probabilities, validation = the last 20
    assert torch.equal(d.train, torch.from_numpy(train_u8[:80]).float().unsqueeze(1) / 255)
    p_val = torch.from_numpy(train_u8[80:]).float().unsqueeze(1) / 255
    assert is_binary(d.validation) and is_binary(d.test)
    assert (d.validation[p_val == 0] == 0).all() and (d.validation[p_val == 1] == 1).all()
    assert abs(d.validation.mean().item() - p_val.mean().item()) < 0.02
    p_test = torch.from_numpy(test_u8).float().unsqueeze(1) / 255
    assert (d.test[p_test == 0] == 0).all() and (d.test[p_test == 1] == 1).all()


def test_mnist_validation_and_test_identical_across_loads(tmp_path, monkeypatch):
    small_mnist(monkeypatch)
    write_mnist(tmp_path)
    a = load_dataset("mnist", tmp_path, download=False)
    b = load_dataset("mnist", tmp_path, download=False)
    c = load_dataset("mnist", tmp_path, download=False, seed=7)
    assert torch.equal(a.validation, b.validation) and torch.equal(a.test, b.test)
    assert not torch.equal(a.validation, c.validation)
    assert torch.equal(a.train, c.train)  # the seed only touches the one-time binarization


def test_data_dir_subfolder_named_after_dataset_and_cache_are_searched(tmp_path, monkeypatch, isolated_cache):
    small_mnist(monkeypatch)
    small_mnist(monkeypatch, "fashion_mnist")
    write_mnist(tmp_path / "data" / "fashion_mnist")
    assert load_dataset("fashion_mnist", tmp_path / "data", download=False).train.shape[0] == 80
    # an incomplete data_dir is not mixed with other folders: the complete cache copy is used instead
    write_idx(tmp_path / "partial", "train", grey_images(100, 9))
    train_u8, _ = write_mnist(isolated_cache / "mnist", gz=False)  # uncompressed: checked for structure only
    d = load_dataset("mnist", tmp_path / "partial", download=False)
    assert torch.equal(d.train, torch.from_numpy(train_u8[:80]).float().unsqueeze(1) / 255)


def test_fashion_mnist_found_in_system_folder(tmp_path, monkeypatch):
    small_mnist(monkeypatch, "fashion_mnist")
    scale(monkeypatch, "fashion_mnist", system_dirs=(str(tmp_path / "usr-share"),))
    write_mnist(tmp_path / "usr-share")
    d = load_dataset("fashion_mnist", download=False)
    assert d.train.shape == (80, 1, 28, 28)


@pytest.mark.parametrize("damage", ["truncated_raw", "truncated_gzip", "labels_magic", "wrong_count", "trailing"])
def test_corrupt_idx_raises_data_error_naming_file(tmp_path, monkeypatch, damage):
    small_mnist(monkeypatch)
    write_mnist(tmp_path)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    raw = idx_bytes(grey_images(100, 1))
    if damage == "truncated_raw":
        path.unlink()
        path = tmp_path / "train-images-idx3-ubyte"
        path.write_bytes(raw[:-100])
        match = "truncated"
    elif damage == "truncated_gzip":
        path.write_bytes(gzip.compress(raw)[:5000])
        match = "gzip"
    elif damage == "labels_magic":
        path.write_bytes(gzip.compress(b"\x00\x00\x08\x01" + struct.pack(">I", 100) + bytes(100)))
        match = "magic number"
    elif damage == "wrong_count":
        path.write_bytes(gzip.compress(idx_bytes(grey_images(99, 1))))
        match = "holds 99 images"
    else:
        path.write_bytes(gzip.compress(raw + b"\x00"))
        match = "header promises"
    with pytest.raises(DataError, match=match) as err:
        load_dataset("mnist", tmp_path, download=False)
    assert str(path) in str(err.value) and "Replace it" in str(err.value)


def test_too_few_training_images_for_validation(tmp_path, monkeypatch):
    scale(monkeypatch, "mnist", expected_counts=None)  # canonical n_validation = 10000 > 100 images
    write_mnist(tmp_path)
    with pytest.raises(DataError, match="too few to hold out the last 10000"):
        load_dataset("mnist", tmp_path, download=False)


def test_missing_files_offline_names_files_folders_and_fix(tmp_path, isolated_cache):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError) as err:
        load_dataset("mnist", empty, download=False)
    msg = str(err.value)
    for needle in ("train-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte.gz", str(empty),
                   str(isolated_cache / "mnist"), "http", "download=True"):
        assert needle in msg, needle


def test_missing_fashion_mnist_offline_mentions_debian_package(monkeypatch):
    scale(monkeypatch, "fashion_mnist", system_dirs=())
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        load_dataset("fashion_mnist", download=False)


def test_nonexistent_data_dir_and_unknown_name_and_bad_seed(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_dataset("mnist", tmp_path / "typo", download=False)
    with pytest.raises(DataError, match="Did you mean 'fashion_mnist'"):
        load_dataset("fashion-mnist")
    with pytest.raises(DataError, match="non-negative integer"):
        load_dataset("digits", seed=-1)


# ----- downloading (file:// URLs stand in for the official servers) --------------------------------------

def serve_mnist(tmp_path, monkeypatch, md5_override=None):
    """Put gz files in a 'server' folder and point the mnist spec's URLs and md5s at them."""
    server = tmp_path / "server"
    write_mnist(server)
    spec = small_mnist(monkeypatch)
    files = []
    for f in spec.files:
        md5 = md5_override or hashlib.md5((server / f.name).read_bytes()).hexdigest()
        files.append(dataclasses.replace(f, urls=("file:///nonexistent/" + f.name, (server / f.name).as_uri()),
                                         md5=md5))
    scale(monkeypatch, "mnist", files=tuple(files))
    return server


def test_download_into_cache_with_checksum_then_reuse(tmp_path, monkeypatch, isolated_cache, capsys):
    server = serve_mnist(tmp_path, monkeypatch)
    d = load_dataset("mnist", download=True)
    assert d.train.shape == (80, 1, 28, 28)
    cached = sorted(p.name for p in (isolated_cache / "mnist").iterdir())
    assert cached == ["t10k-images-idx3-ubyte.gz", "train-images-idx3-ubyte.gz"]  # no temp files left
    for name in cached:
        (server / name).unlink()
    again = load_dataset("mnist", download=False)  # served from the cache now
    assert torch.equal(again.validation, d.validation)
    assert "downloading" in capsys.readouterr().err


def test_download_with_wrong_checksum_leaves_no_file(tmp_path, monkeypatch, isolated_cache):
    serve_mnist(tmp_path, monkeypatch, md5_override="0" * 32)
    with pytest.raises(DataError, match="md5") as err:
        load_dataset("mnist", download=True)
    assert "Could not download" in str(err.value)
    assert list((isolated_cache / "mnist").iterdir()) == []


def test_corrupted_cached_download_tells_to_delete_it(tmp_path, monkeypatch, isolated_cache):
    serve_mnist(tmp_path, monkeypatch)
    load_dataset("mnist", download=True)
    bad = isolated_cache / "mnist" / "train-images-idx3-ubyte.gz"
    bad.write_bytes(bad.read_bytes()[:-10])
    with pytest.raises(DataError) as err:
        load_dataset("mnist", download=True)
    assert f"Delete {bad}" in str(err.value) and "md5" in str(err.value)


def test_download_unreachable_url_says_what_to_do(tmp_path, monkeypatch, isolated_cache):
    spec = small_mnist(monkeypatch)
    scale(monkeypatch, "mnist", files=tuple(dataclasses.replace(f, urls=("file:///nonexistent/" + f.name,))
                                            for f in spec.files))
    with pytest.raises(DataError, match="offline") as err:
        load_dataset("mnist", download=True)
    assert str(isolated_cache / "mnist") in str(err.value)


# ----- static MNIST (.amat) -----------------------------------------------------------------------------

def write_amat(path, rows):
    path.write_text("".join(" ".join(str(v) for v in row) + "\n" for row in rows))


def write_static(folder, sizes=(40, 10, 12)):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(3)
    arrays = []
    for split, n in zip(("train", "valid", "test"), sizes):
        x = (rng.random((n, 784)) < 0.3).astype(np.uint8)
        write_amat(folder / f"binarized_mnist_{split}.amat", x)
        arrays.append(x)
    return arrays


def test_static_mnist_sizes_come_from_files(tmp_path, monkeypatch):
    scale(monkeypatch, "static_mnist", expected_counts=None)
    train, valid, test = write_static(tmp_path)
    d = load_dataset("static_mnist", tmp_path, download=False)
    assert (d.binarization, d.likelihood) == ("static", "bernoulli")
    assert d.split_note.startswith("40/10/12")
    assert torch.equal(d.train, torch.from_numpy(train).float().reshape(40, 1, 28, 28))
    assert torch.equal(d.validation, torch.from_numpy(valid).float().reshape(10, 1, 28, 28))
    assert torch.equal(d.test, torch.from_numpy(test).float().reshape(12, 1, 28, 28))


@pytest.mark.parametrize("damage,match", [
    ("short_row", "line 3 has 783 values"),
    ("bad_char", "unexpected character '2' on line 2"),
    ("multi_digit", "multi-digit value on line 1"),
    ("row_count", "holds 40 images but static_mnist's train set has 50000"),
    ("empty", "holds no images"),
])
def test_corrupt_amat_raises_data_error(tmp_path, monkeypatch, damage, match):
    if damage != "row_count":
        scale(monkeypatch, "static_mnist", expected_counts=None)
    write_static(tmp_path)
    path = tmp_path / "binarized_mnist_train.amat"
    lines = path.read_text().splitlines(keepends=True)
    if damage == "short_row":
        lines[2] = lines[2][:-3] + "\n"
    elif damage == "bad_char":
        lines[1] = "2" + lines[1][1:]
    elif damage == "multi_digit":
        lines[0] = "10" + lines[0][1:]
    if damage == "empty":
        path.write_text("")
    else:
        path.write_text("".join(lines))
    with pytest.raises(DataError, match=match) as err:
        load_dataset("static_mnist", tmp_path, download=False)
    assert str(path) in str(err.value)


# ----- OMNIGLOT (Burda's chardata.mat) --------------------------------------------------------------------

def write_chardata(path, train, test):
    """Burda's layout: (784, N) matrices whose columns are the images flattened in column-major order."""
    as_columns = lambda x: x.reshape(len(x), 28, 28).transpose(0, 2, 1).reshape(len(x), 784).T  # noqa: E731
    scipy.io.savemat(path, {"data": as_columns(train), "testdata": as_columns(test),
                            "target": np.zeros((50, len(train)))})


def omniglot_images(n, seed):
    rng = np.random.default_rng(seed)
    x = rng.random((n, 28, 28))
    x[:, :5, :] = 0.0  # top rows blank and the left column dark: orientation is visible
    x[:, :, 0] = 1.0
    return x


def test_omniglot_orientation_shuffle_and_split_match_burda(tmp_path, monkeypatch):
    scale(monkeypatch, "omniglot", n_validation=7, expected_counts={"train": 30, "test": 9})
    train, test = omniglot_images(30, 4), omniglot_images(9, 5)
    write_chardata(tmp_path / "chardata.mat", train, test)
    d = load_dataset("omniglot", tmp_path, download=False)
    assert d.train.shape == (23, 1, 28, 28) and d.validation.shape == (7, 1, 28, 28) and d.test.shape == (9, 1, 28, 28)
    assert (d.binarization, d.likelihood) == ("dynamic", "bernoulli")
    # Burda: shuffle with RandomState(123), then the last n_validation are validation
    perm = np.random.RandomState(123).permutation(30)
    assert torch.allclose(d.train[:, 0].double(), torch.from_numpy(train[perm[:23]]))
    # the same 784-vectors as Burda's reshape(-1, 28, 28).reshape(-1, 784, order='F') of data.T
    raw = scipy.io.loadmat(tmp_path / "chardata.mat")["data"].T
    burda = raw.reshape((-1, 28, 28)).reshape((-1, 784), order="F")
    assert np.allclose(d.train.reshape(23, 784).numpy(), burda[perm[:23]], atol=1e-6)
    p_val = torch.from_numpy(train[perm[23:]]).float().unsqueeze(1)
    assert is_binary(d.validation) and is_binary(d.test)
    assert (d.validation[p_val == 0] == 0).all() and (d.validation[p_val == 1] == 1).all()
    assert torch.equal(d.validation, load_dataset("omniglot", tmp_path, download=False).validation)


@pytest.mark.parametrize("damage,match", [
    ("garbage", "not a readable .mat file"),
    ("no_testdata", "no variable 'testdata'"),
    ("wrong_shape", r"shape \(783, 30\)"),
    ("out_of_range", r"outside \[0, 1\]"),
    ("wrong_count", "holds 30 images but omniglot's train set has 24345"),
])
def test_corrupt_chardata_raises_data_error(tmp_path, monkeypatch, damage, match):
    if damage != "wrong_count":
        scale(monkeypatch, "omniglot", n_validation=7, expected_counts=None)
    path = tmp_path / "chardata.mat"
    train, test = omniglot_images(30, 4), omniglot_images(9, 5)
    if damage == "garbage":
        path.write_bytes(b"MATLAB 5.0 MAT-file" + bytes(50))
    elif damage == "no_testdata":
        scipy.io.savemat(path, {"data": train.reshape(30, 784).T})
    elif damage == "wrong_shape":
        scipy.io.savemat(path, {"data": np.zeros((783, 30)), "testdata": np.zeros((784, 9))})
    elif damage == "out_of_range":
        write_chardata(path, train * 255, test)
    else:
        write_chardata(path, train, test)
    with pytest.raises(DataError, match=match) as err:
        load_dataset("omniglot", tmp_path, download=False)
    assert str(path) in str(err.value)


# ----- CIFAR-10 (python tarball) --------------------------------------------------------------------------

def cifar_batches(per_batch=6, n_test=4):
    rng = np.random.default_rng(6)
    batches = {f"data_batch_{i}": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8) for i in range(1, 6)}
    batches["test_batch"] = rng.integers(0, 256, (n_test, 3072), dtype=np.uint8)
    return batches


def pickled_batch(data, protocol=2):
    return pickle.dumps({"batch_label": "x", "labels": [0] * len(data), "data": data,
                         "filenames": ["f"] * len(data)}, protocol=protocol)


def write_cifar_tar(path, batches, payloads=None):
    with tarfile.open(path, "w:gz") as tar:
        for name, data in batches.items():
            payload = (payloads or {}).get(name, pickled_batch(data))
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))


def expected_cifar(batches, n_val=5):
    train = np.concatenate([batches[f"data_batch_{i}"] for i in range(1, 6)]).reshape(-1, 3, 32, 32)
    t = lambda x: torch.from_numpy(x).float() / 255  # noqa: E731
    return t(train[:-n_val]), t(train[-n_val:]), t(batches["test_batch"].reshape(-1, 3, 32, 32))


@pytest.mark.parametrize("layout", ["tarball", "extracted"])
def test_cifar10_tarball_and_extracted_folder(tmp_path, monkeypatch, layout):
    scale(monkeypatch, "cifar10", n_validation=5, expected_counts={"train": 30, "test": 4})
    batches = cifar_batches()
    if layout == "tarball":
        write_cifar_tar(tmp_path / "cifar-10-python.tar.gz", batches)
    else:
        folder = tmp_path / "cifar-10-batches-py"
        folder.mkdir()
        for name, data in batches.items():
            (folder / name).write_bytes(pickled_batch(data, protocol=4))
    d = load_dataset("cifar10", tmp_path, download=False)
    train, val, test = expected_cifar(batches)
    assert torch.equal(d.train, train) and torch.equal(d.validation, val) and torch.equal(d.test, test)
    assert d.image_shape == (3, 32, 32)
    assert (d.binarization, d.likelihood) == ("none", "discretized_logistic")
    assert d.split_note.startswith("25/5/4")


class Boom:
    def __reduce__(self):
        import os

        return (os.system, ("touch PWNED",))


@pytest.mark.parametrize("damage,match", [
    ("truncated", "not a readable tar archive"),
    ("missing_member", "lacks the batch file"),
    ("bad_pickle", "not a readable CIFAR batch"),
    ("code_in_pickle", "refusing to load"),
    ("wrong_columns", r"shape \(N, 3072\)"),
])
def test_corrupt_cifar_raises_data_error(tmp_path, monkeypatch, damage, match):
    scale(monkeypatch, "cifar10", n_validation=5, expected_counts=None)
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "cifar-10-python.tar.gz"
    batches = cifar_batches()
    payloads = {}
    if damage == "missing_member":
        del batches["data_batch_3"]
    elif damage == "bad_pickle":
        payloads["data_batch_2"] = b"\x80\x02}q\x00(X"
    elif damage == "code_in_pickle":
        payloads["data_batch_2"] = pickle.dumps({"data": Boom()}, protocol=2)
    elif damage == "wrong_columns":
        batches["test_batch"] = batches["test_batch"][:, :3000]
    write_cifar_tar(path, batches, payloads)
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DataError, match=match) as err:
        load_dataset("cifar10", tmp_path, download=False)
    assert str(path) in str(err.value)
    assert not (tmp_path / "PWNED").exists()


# ----- registry, cache, container -------------------------------------------------------------------------

def test_registry_holds_the_paper_conventions():
    assert set(DATASETS) == {"digits", "mnist", "fashion_mnist", "static_mnist", "omniglot", "cifar10"}
    assert DATASETS["mnist"].n_validation == 10_000 and DATASETS["mnist"].expected_counts == {"train": 60_000, "test": 10_000}
    assert DATASETS["static_mnist"].expected_counts == {"train": 50_000, "validation": 10_000, "test": 10_000}
    assert DATASETS["omniglot"].n_validation == 1_345
    assert DATASETS["omniglot"].expected_counts == {"train": 24_345, "test": 8_070}
    assert DATASETS["cifar10"].n_validation == 5_000
    assert (DATASETS["cifar10"].binarization, DATASETS["cifar10"].likelihood) == ("none", "discretized_logistic")
    for spec in DATASETS.values():
        for f in spec.files:
            assert f.urls and all(u.startswith(("http://", "https://")) for u in f.urls)
            assert f.md5 is None or (len(f.md5) == 32 and int(f.md5, 16) >= 0)
    # trusted md5s exist exactly where the dataset authors / torchvision publish them
    with_md5 = {name for name, spec in DATASETS.items() if any(f.md5 for f in spec.files)}
    assert with_md5 == {"mnist", "fashion_mnist", "cifar10"}


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("OUVAE_DATA", str(tmp_path / "x"))
    assert default_cache_dir() == tmp_path / "x"
    monkeypatch.delenv("OUVAE_DATA")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "ouvae"


def test_dataset_splits_rejects_inconsistent_contents():
    x = torch.zeros(2, 1, 8, 8)
    with pytest.raises(DataError, match="binarization"):
        DatasetSplits("d", x, x, x, "sometimes", "bernoulli", "")
    with pytest.raises(DataError, match="image shape"):
        DatasetSplits("d", x, torch.zeros(2, 1, 4, 4), x, "static", "bernoulli", "")
    with pytest.raises(DataError, match="float32"):
        DatasetSplits("d", x.double(), x, x, "static", "bernoulli", "")


# ----- the real Fashion-MNIST from Debian's dataset-fashion-mnist package ----------------------------------

@pytest.mark.debian_data
@pytest.mark.skipif(not DEBIAN_FASHION.is_dir(),
                    reason=f"{DEBIAN_FASHION} absent: run `apt-get install dataset-fashion-mnist` to run this test")
def test_real_fashion_mnist_from_debian_package():
    d = load_dataset("fashion_mnist", download=False)  # the cache is empty: the Debian folder is used
    assert d.train.shape == (50_000, 1, 28, 28)
    assert d.validation.shape == (10_000, 1, 28, 28) and d.test.shape == (10_000, 1, 28, 28)
    assert d.train.min() == 0 and d.train.max() == 1 and ((d.train > 0) & (d.train < 1)).any()
    assert is_binary(d.validation) and is_binary(d.test)
    # Fashion-MNIST's mean pixel intensity is about 0.286 (72.9 / 255)
    assert abs(d.train.mean().item() - 0.286) < 0.01
    assert abs(d.test.mean().item() - 0.286) < 0.02

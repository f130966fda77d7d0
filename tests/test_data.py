"""Tests of the dataset registry on files written here in the real formats (IDX, .amat, Burda's .mat, the
CIFAR-10 python tarball), scikit-learn's digits, and -- where the Debian package is installed -- the real
Fashion-MNIST. Split sizes are scaled down with dataclasses.replace on the registry entry."""

from __future__ import annotations

import collections
import dataclasses
import gzip
import hashlib
import http.server
import io
import json
import multiprocessing
import pickle
import shutil
import socket
import struct
import tarfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch

from ouvae.config import Config, ConfigError, parse_field
from ouvae.data import DATASETS, DataError, DatasetSplits, default_cache_dir, load_config_dataset, load_dataset
from ouvae.data.files import LOCK_FILE

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


# ----- downloading (a real HTTP server on loopback stands in for the official servers) ----------------------

class FileServer:
    """Serves the files of `root` over HTTP on 127.0.0.1, counting the GET requests per path; `delay_s` makes
    each response slow, so that concurrent clients really overlap."""

    def __init__(self, root: Path):
        self.root, self.delay_s, self.requests = root, 0.0, collections.Counter()
        outer = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, directory=str(root), **kwargs)

            def do_GET(self):
                outer.requests[self.path] += 1
                time.sleep(outer.delay_s)
                super().do_GET()

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def file_server(tmp_path):
    root = tmp_path / "server"
    root.mkdir()
    server = FileServer(root)
    yield server
    server.close()


def refusing_url():
    """An http URL on loopback where nothing listens: the connection is refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


def serve_mnist(server, monkeypatch, mirrors=None, md5_override=None):
    """Small MNIST files on the server (under good/), the mnist spec pointed at `mirrors` (URL prefixes, default:
    a refusing one, then the server) with the files' real md5s (or `md5_override`)."""
    train, test = write_mnist(server.root / "good")
    spec = small_mnist(monkeypatch)
    mirrors = mirrors or (refusing_url(), server.base + "good/")
    def md5(name):
        return md5_override or hashlib.md5((server.root / "good" / name).read_bytes()).hexdigest()

    files = tuple(dataclasses.replace(f, urls=tuple(m + f.name for m in mirrors), md5=md5(f.name)) for f in spec.files)
    scale(monkeypatch, "mnist", files=files)
    return train, test


def cached_names(folder):
    return sorted(p.name for p in folder.iterdir() if p.name != LOCK_FILE)


def test_download_falls_back_to_the_next_mirror_checks_md5_then_reuses_the_cache(file_server, monkeypatch,
                                                                                  isolated_cache):
    train_u8, _ = serve_mnist(file_server, monkeypatch)  # first mirror refuses the connection
    d = load_dataset("mnist", download=True)
    assert torch.equal(d.train, torch.from_numpy(train_u8[:80]).float().unsqueeze(1) / 255)
    assert cached_names(isolated_cache / "mnist") == ["t10k-images-idx3-ubyte.gz", "train-images-idx3-ubyte.gz"]
    assert file_server.requests == {"/good/train-images-idx3-ubyte.gz": 1, "/good/t10k-images-idx3-ubyte.gz": 1}
    again = load_dataset("mnist", download=True)  # md5 of the cached files matches: no request
    offline = load_dataset("mnist", download=False)
    assert sum(file_server.requests.values()) == 2
    assert torch.equal(again.validation, d.validation) and torch.equal(offline.test, d.test)


def test_md5_mismatch_on_one_mirror_takes_the_next_and_on_all_leaves_no_file(file_server, monkeypatch,
                                                                               isolated_cache):
    write_mnist(file_server.root / "other", n_train=100, n_test=30)  # same names, other bytes
    for name in ("train-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte.gz"):
        path = file_server.root / "other" / name
        path.write_bytes(gzip.compress(gzip.decompress(path.read_bytes())[:-1] + b"\x07"))
    serve_mnist(file_server, monkeypatch, mirrors=(file_server.base + "other/", file_server.base + "good/"))
    d = load_dataset("mnist", download=True)
    assert d.train.shape == (80, 1, 28, 28)
    assert file_server.requests["/other/train-images-idx3-ubyte.gz"] == 1
    assert file_server.requests["/good/train-images-idx3-ubyte.gz"] == 1

    shutil.rmtree(isolated_cache / "mnist")
    serve_mnist(file_server, monkeypatch, mirrors=(file_server.base + "other/",))
    with pytest.raises(DataError) as err:
        load_dataset("mnist", download=True)
    msg = str(err.value)
    assert "MD5 hash of downloaded file" in msg and "could not be downloaded" in msg
    assert f"on node {socket.gethostname()}" in msg and "\n" not in msg
    assert cached_names(isolated_cache / "mnist") == []  # the bad download was never moved into place


def test_corrupted_cached_file_is_named_offline_and_fetched_again_online(file_server, monkeypatch, isolated_cache):
    serve_mnist(file_server, monkeypatch)
    d = load_dataset("mnist", download=True)
    bad = isolated_cache / "mnist" / "train-images-idx3-ubyte.gz"
    bad.write_bytes(bad.read_bytes()[:-10])
    with pytest.raises(DataError) as err:
        load_dataset("mnist", download=False)
    assert f"Delete {bad}" in str(err.value) and "md5" in str(err.value)
    again = load_dataset("mnist", download=True)  # pooch sees the wrong md5 and downloads the file again
    assert torch.equal(again.train, d.train)
    assert file_server.requests["/good/train-images-idx3-ubyte.gz"] == 2


def test_download_offline_is_one_line_naming_node_files_folders_and_source(tmp_path, monkeypatch, isolated_cache):
    spec = small_mnist(monkeypatch)
    urls = {f.name: refusing_url() + f.name for f in spec.files}
    scale(monkeypatch, "mnist", files=tuple(dataclasses.replace(f, urls=(urls[f.name],)) for f in spec.files))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError) as err:
        load_dataset("mnist", empty, download=True)
    msg = str(err.value)
    for needle in (f"on node {socket.gethostname()}", "train-images-idx3-ubyte.gz", str(empty),
                   str(isolated_cache / "mnist"), urls["train-images-idx3-ubyte.gz"], "offline", "refused"):
        assert needle in msg, needle
    assert "\n" not in msg


def test_unwritable_cache_names_the_node_and_the_fix(tmp_path, monkeypatch, file_server):
    serve_mnist(file_server, monkeypatch)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("OUVAE_DATA", str(blocker / "cache"))
    with pytest.raises(DataError, match=f"on node {socket.gethostname()}: cannot create or lock the cache folder "
                                        f".*set OUVAE_DATA to a writable folder"):
        load_dataset("mnist", download=True)


def _load_in_child(barrier, results):
    barrier.wait()  # every process asks at the same moment
    d = load_dataset("mnist", download=True)
    results.put((d.train.shape[0], float(d.validation.sum()), float(d.test.sum())))


def test_concurrent_processes_on_one_node_download_once(file_server, monkeypatch, isolated_cache):
    serve_mnist(file_server, monkeypatch)
    file_server.delay_s = 0.3  # the first download is still running when the others want the files
    ctx = multiprocessing.get_context("fork")  # children inherit the monkeypatched registry and environment
    n = 4
    barrier, results = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=_load_in_child, args=(barrier, results)) for _ in range(n)]
    for p in procs:
        p.start()
    got = [results.get(timeout=60) for _ in range(n)]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert file_server.requests == {"/good/train-images-idx3-ubyte.gz": 1, "/good/t10k-images-idx3-ubyte.gz": 1}
    assert len(set(got)) == 1 and got[0][0] == 80  # every process got the same data
    assert cached_names(isolated_cache / "mnist") == ["t10k-images-idx3-ubyte.gz", "train-images-idx3-ubyte.gz"]


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


# ----- your own data: IDX files of any count and size (--dataset idx) ----------------------------------------

def test_idx_route_reads_any_image_count_and_size(tmp_path):
    folder = tmp_path / "kmnist-like"
    train_u8, test_u8 = grey_images(37, 11, shape=(20, 12)), grey_images(9, 12, shape=(20, 12))
    write_idx(folder, "train", train_u8)
    write_idx(folder, "t10k", test_u8, gz=False)
    d = load_dataset("idx", folder)
    # default validation_size 1/6: round(37 / 6) = 6 held out of the end of train
    assert d.train.shape == (31, 1, 20, 12) and d.validation.shape == (6, 1, 20, 12) and d.test.shape == (9, 1, 20, 12)
    assert (d.name, d.binarization, d.likelihood) == ("idx:kmnist-like", "dynamic", "bernoulli")
    assert torch.equal(d.train, torch.from_numpy(train_u8[:31]).float().unsqueeze(1) / 255)
    p_val = torch.from_numpy(train_u8[31:]).float().unsqueeze(1) / 255
    assert is_binary(d.validation) and is_binary(d.test)
    assert (d.validation[p_val == 0] == 0).all() and (d.validation[p_val == 1] == 1).all()
    assert d.split_note.startswith("31/6/9 (IDX files in") and "validation_size 1/6 (default)" in d.split_note


def test_idx_route_on_mnist_files_gives_the_registered_mnist_split(tmp_path, monkeypatch):
    scale(monkeypatch, "mnist", n_validation=20, expected_counts=None)
    write_mnist(tmp_path, n_train=120, n_test=30)  # 1/6 of 120 = 20, as the registry's 10,000 of 60,000
    own, registered = load_dataset("idx", tmp_path), load_dataset("mnist", tmp_path, download=False)
    for split in ("train", "validation", "test"):
        assert torch.equal(getattr(own, split), getattr(registered, split)), split


@pytest.mark.parametrize("size,n_val", [(0.25, 10), (7, 7), (7.0, 7)])
def test_idx_validation_size_fraction_or_count(tmp_path, size, n_val):
    write_mnist(tmp_path, n_train=40, n_test=5)
    d = load_dataset("idx", tmp_path, validation_size=size)
    assert (len(d.train), len(d.validation)) == (40 - n_val, n_val)
    assert f"validation_size {size:g}" in d.split_note


@pytest.mark.parametrize("binarization,likelihood", [("static", "bernoulli"), ("none", "discretized_logistic")])
def test_idx_stated_binarization_sets_the_likelihood(tmp_path, binarization, likelihood):
    train_u8, _ = write_mnist(tmp_path, n_train=30, n_test=6)
    d = load_dataset("idx", tmp_path, binarization=binarization)
    assert (d.binarization, d.likelihood) == (binarization, likelihood)
    if binarization == "static":
        assert is_binary(d.train) and is_binary(d.validation) and is_binary(d.test)
        assert torch.equal(d.train, load_dataset("idx", tmp_path, binarization="static").train)
    else:
        assert torch.equal(d.train, torch.from_numpy(train_u8[:25]).float().unsqueeze(1) / 255)
    assert "(stated)" in d.split_note


def test_idx_finds_prefixed_and_test_named_files(tmp_path):
    """EMNIST's names: emnist-letters-train-images-idx3-ubyte.gz / emnist-letters-test-images-idx3-ubyte.gz."""
    folder = tmp_path / "emnist-letters"
    folder.mkdir()
    (folder / "emnist-letters-train-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(grey_images(12, 1))))
    (folder / "emnist-letters-test-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(grey_images(4, 2))))
    (folder / "emnist-letters-train-labels-idx1-ubyte.gz").write_bytes(b"labels are ignored")
    d = load_dataset("idx", folder)
    assert (len(d.train), len(d.validation), len(d.test), d.name) == (10, 2, 4, "idx:emnist-letters")


def write_idx_case(folder, damage):
    """A small IDX folder damaged as `damage` says; returns the file or folder the error must name."""
    train, test = write_mnist(folder, n_train=30, n_test=6)
    if damage == "truncated":
        path = folder / "train-images-idx3-ubyte.gz"
        path.write_bytes(gzip.compress(idx_bytes(train)[:-5]))
    elif damage == "empty_test":
        path = folder / "t10k-images-idx3-ubyte.gz"
        path.write_bytes(gzip.compress(idx_bytes(test[:0])))
    elif damage == "sizes_differ":
        path = folder / "t10k-images-idx3-ubyte.gz"
        path.write_bytes(gzip.compress(idx_bytes(grey_images(6, 3, shape=(14, 14)))))
    elif damage == "no_test":
        (folder / "t10k-images-idx3-ubyte.gz").unlink()
        path = folder
    elif damage == "two_sets":
        write_idx(folder, "kmnist-train", train)
        path = folder
    else:  # zero pixels per image
        path = folder / "train-images-idx3-ubyte.gz"
        path.write_bytes(gzip.compress(b"\x00\x00\x08\x03" + struct.pack(">III", 30, 0, 28)))
    return path


@pytest.mark.parametrize("damage,match", [
    ("truncated", "header promises 30 images of 28x28"),
    ("empty_test", "holds no images"),
    ("sizes_differ", "holds 14x14 images but train-images-idx3-ubyte.gz holds 28x28"),
    ("no_test", "no test image file"),
    ("two_sets", "several training image files"),
    ("zero_pixels", "declares 0x28 images"),
])
def test_bad_idx_folder_is_one_line_naming_the_file(tmp_path, damage, match):
    path = write_idx_case(tmp_path / "data", damage)
    with pytest.raises(DataError, match=match) as err:
        load_dataset("idx", tmp_path / "data")
    assert str(err.value).startswith(str(path)) and "\n" not in str(err.value)


def test_idx_validation_size_that_empties_a_split_names_the_file_and_fix(tmp_path):
    write_mnist(tmp_path, n_train=5, n_test=2)
    train_file = tmp_path / "train-images-idx3-ubyte.gz"
    with pytest.raises(DataError, match=r"holds out 0, which leaves the validation split empty.*from 1 to 4") as e:
        load_dataset("idx", tmp_path, validation_size=0.05)
    assert str(e.value).startswith(str(train_file))
    with pytest.raises(DataError, match="holds out 5, which leaves the training split empty"):
        load_dataset("idx", tmp_path, validation_size=5)
    np.savez(tmp_path / "one.npz", train=np.zeros((1, 4, 4)), test=np.zeros((1, 4, 4)))
    with pytest.raises(DataError, match=r"one.npz\['train'\]: holds 1 training image\(s\); at least 2 are needed"):
        load_dataset("npy", tmp_path / "one.npz")


def test_user_routes_need_an_existing_data_dir(tmp_path, monkeypatch):
    with pytest.raises(DataError, match="no data_dir was given. Fix: --data-dir"):
        load_dataset("idx")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match=rf"data_dir kmnist \(relative to {tmp_path}; a sweep trial runs in its own "
                                        rf"folder: give an absolute path\) does not exist"):
        load_dataset("idx", "kmnist")
    with pytest.raises(DataError, match="does not exist"):
        load_dataset("npy", tmp_path / "typo.npz")
    (tmp_path / "x.bin").write_bytes(b"")
    with pytest.raises(DataError, match="is not a folder"):
        load_dataset("idx", tmp_path / "x.bin")


# ----- your own data: NumPy arrays (--dataset npy) -----------------------------------------------------------

def test_npz_of_binary_images_is_static_bernoulli(tmp_path):
    rng = np.random.default_rng(0)
    train, test = rng.random((24, 9, 7)) < 0.4, rng.random((5, 9, 7)) < 0.4
    np.savez(tmp_path / "shapes.npz", train=train, test=test)
    d = load_dataset("npy", tmp_path / "shapes.npz")
    assert (d.name, d.binarization, d.likelihood) == ("npy:shapes", "static", "bernoulli")
    assert d.train.shape == (20, 1, 9, 7) and d.validation.shape == (4, 1, 9, 7)
    assert torch.equal(d.train, torch.from_numpy(train[:20]).float().unsqueeze(1))  # 0/1 images are kept as they are
    assert torch.equal(d.test, torch.from_numpy(test).float().unsqueeze(1))
    assert "every value is 0 or 1" in d.split_note


def test_npy_folder_of_grey_levels_is_dynamic_and_keeps_its_validation_split(tmp_path):
    rng = np.random.default_rng(1)
    sizes = {"train": 12, "validation": 5, "test": 4}
    arrays = {s: rng.random((n, 1, 6, 6)).astype(np.float32) for s, n in sizes.items()}
    for split, a in arrays.items():
        np.save(tmp_path / f"{split}.npy", a)
    d = load_dataset("npy", tmp_path)
    assert (d.name, d.binarization, d.likelihood) == (f"npy:{tmp_path.name}", "dynamic", "bernoulli")
    assert torch.equal(d.train, torch.from_numpy(arrays["train"]))
    assert d.validation.shape == (5, 1, 6, 6) and is_binary(d.validation) and is_binary(d.test)
    assert d.split_note.startswith("12/5/4")


def test_npz_of_8bit_colour_is_discretized_logistic_channels_last_or_first(tmp_path):
    rng = np.random.default_rng(2)
    train = rng.integers(0, 256, (10, 5, 4, 3), dtype=np.uint8)  # (N, H, W, C), as images usually come
    test = rng.integers(0, 256, (3, 5, 4, 3), dtype=np.uint8)
    np.savez(tmp_path / "last.npz", train=train, test=test)
    np.savez(tmp_path / "first.npz", train=train.transpose(0, 3, 1, 2), test=test.transpose(0, 3, 1, 2))
    last, first = load_dataset("npy", tmp_path / "last.npz"), load_dataset("npy", tmp_path / "first.npz")
    assert (last.binarization, last.likelihood, last.image_shape) == ("none", "discretized_logistic", (3, 5, 4))
    expected = torch.from_numpy(train.transpose(0, 3, 1, 2)[:8].astype(np.float32)) / 255
    assert torch.equal(last.train, expected) and torch.equal(first.train, expected)
    assert torch.equal(last.validation, first.validation) and last.validation.shape == (2, 3, 5, 4)


def test_npz_of_8bit_grey_is_dynamic_and_a_stated_binarization_wins(tmp_path):
    train, test = grey_images(18, 4, shape=(8, 8)), grey_images(3, 5, shape=(8, 8))
    np.savez(tmp_path / "grey.npz", train=train, test=test)
    d = load_dataset("npy", tmp_path / "grey.npz")
    assert d.binarization == "dynamic" and torch.equal(d.train, torch.from_numpy(train[:15]).float().unsqueeze(1) / 255)
    stated = load_dataset("npy", tmp_path / "grey.npz", binarization="none", validation_size=2)
    assert (stated.binarization, stated.likelihood, len(stated.validation)) == ("none", "discretized_logistic", 2)
    assert "(stated)" in stated.split_note


def write_npz_case(path, damage):
    rng = np.random.default_rng(3)
    arrays = {"train": rng.random((10, 6, 6)).astype(np.float32), "test": rng.random((3, 6, 6)).astype(np.float32)}
    if damage == "flat":
        arrays["train"] = arrays["train"].reshape(10, 36)
    elif damage == "dtype":
        arrays["train"] = arrays["train"].astype(np.complex64)
    elif damage == "float_range":
        arrays["test"] = arrays["test"] * 255
    elif damage == "int_range":
        arrays["train"] = rng.integers(-1, 300, (10, 6, 6))
    elif damage == "nan":
        arrays["train"][7, 2, 2] = np.nan
    elif damage == "empty":
        arrays["test"] = arrays["test"][:0]
    elif damage == "no_test":
        del arrays["test"]
    elif damage == "extra_key":
        arrays["valid"] = arrays["test"]
    elif damage == "shapes_differ":
        arrays["test"] = rng.random((3, 5, 5)).astype(np.float32)
    elif damage == "mixed_dtypes":
        arrays["test"] = rng.integers(0, 256, (3, 6, 6), dtype=np.uint8)
    elif damage == "channels":
        arrays["train"] = rng.random((10, 2, 6, 6)).astype(np.float32)
    if damage == "pickled":
        np.savez(path, train=np.array([{"x": 1}] * 3, dtype=object), test=arrays["test"])
    elif damage == "not_zip":
        path.write_bytes(b"PK\x03\x04 truncated")
    else:
        np.savez(path, **arrays)


@pytest.mark.parametrize("damage,match", [
    ("flat", r"shape \(10, 36\) is not a stack of images"),
    ("channels", r"shape \(10, 2, 6, 6\) is not a stack of images"),
    ("dtype", "dtype complex64 is not an image type"),
    ("pickled", "not a readable .npz file without pickled objects"),
    ("not_zip", "not a readable .npz file"),
    ("float_range", r"outside \[0, 1\]. Fix: divide 8-bit intensities by 255"),
    ("int_range", r"integer values span \[-1, 29\d\], outside the 8-bit range"),
    ("nan", "NaN or infinite values .first in image 7"),
    ("empty", r"holds no images \(shape \(0, 1, 6, 6\)\): that split would be empty"),
    ("no_test", "has no 'test' images"),
    ("extra_key", r"holds arrays \['valid'\]"),
    ("shapes_differ", "the splits disagree on the image shape"),
    ("mixed_dtypes", "the splits mix dtypes"),
])
def test_bad_npz_is_one_line_naming_the_file_and_fix(tmp_path, damage, match):
    path = tmp_path / "data.npz"
    write_npz_case(path, damage)
    with pytest.raises(DataError, match=match) as err:
        load_dataset("npy", path)
    msg = str(err.value)
    assert msg.startswith(str(path)) and "Fix:" in msg and "\n" not in msg


def test_bad_npy_folder_names_the_array_file(tmp_path):
    np.save(tmp_path / "train.npy", np.full((4, 3, 3), 2.0))
    np.save(tmp_path / "test.npy", np.zeros((2, 3, 3)))
    with pytest.raises(DataError, match=rf"^{tmp_path / 'train.npy'}: float values span \[2, 2\]"):
        load_dataset("npy", tmp_path)
    with pytest.raises(DataError, match="holds no train.npy / test.npy .to use x.npz, give its path as --data-dir"):
        (tmp_path / "sub").mkdir()
        np.savez(tmp_path / "sub" / "x.npz", train=np.zeros((2, 2, 2)))
        load_dataset("npy", tmp_path / "sub")


def test_validation_size_with_an_explicit_validation_array_is_refused(tmp_path):
    z = np.zeros((4, 3, 3), dtype=np.uint8)
    np.savez(tmp_path / "d.npz", train=z, validation=z, test=z)
    with pytest.raises(DataError, match=r"d.npz\['validation'\]: the data has its own validation split"):
        load_dataset("npy", tmp_path / "d.npz", validation_size=0.5)


# ----- data options on registered sets and in the Config -----------------------------------------------------

def test_registered_sets_refuse_other_validation_size_or_binarization(tmp_path, monkeypatch):
    small_mnist(monkeypatch)
    write_mnist(tmp_path)
    with pytest.raises(DataError, match="mnist's validation split is fixed .20 images.*Fix: unset validation_size"):
        load_dataset("mnist", tmp_path, download=False, validation_size=0.5)
    with pytest.raises(DataError, match="mnist is always binarized 'dynamic'.*Fix: unset binarization"):
        load_dataset("mnist", tmp_path, download=False, binarization="static")
    same = load_dataset("mnist", tmp_path, download=False, validation_size=20, binarization="dynamic")
    assert same.split_note.startswith("80/20/30")


def test_config_data_fields_validate_parse_and_reach_the_loader(tmp_path):
    assert parse_field("binarization", "none") == "none"  # the 8-bit choice, not Python's None
    assert parse_field("validation_size", "0.2") == 0.2 and parse_field("validation_size", "none") is None
    for bad in ({"validation_size": 0.0}, {"validation_size": 2.5}, {"binarization": "sometimes"}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            Config(**bad)
    base = Config(dataset="idx")
    assert base.config_hash() == Config(dataset="idx", validation_size=None, binarization="auto").config_hash()
    assert base.config_hash() != base.replace(validation_size=0.5).config_hash()
    write_mnist(tmp_path, n_train=40, n_test=5)
    d = load_config_dataset(base.replace(data_dir=str(tmp_path), validation_size=0.5, binarization="static"))
    assert (len(d.validation), d.binarization) == (20, "static")


# ----- your own data end to end: python -m ouvae.train --dataset idx|npy ------------------------------------

TINY_RUN = ["--steps", "3", "--latent-dims", "1x2", "--hidden-units", "8", "--hidden-layers", "1",
            "--batch-size", "10", "--eval-iw-k", "2", "--smooth-samples", "2", "--rho", "0.9", "--quiet"]


def test_train_cli_on_idx_files_end_to_end(tmp_path, capsys):
    from ouvae.train import main

    write_idx(tmp_path / "mine", "train", grey_images(36, 1, shape=(10, 9)))
    write_idx(tmp_path / "mine", "t10k", grey_images(8, 2, shape=(10, 9)))
    assert main(["--dataset", "idx", "--data-dir", str(tmp_path / "mine"), "--out", str(tmp_path / "run"),
                 *TINY_RUN]) == 0
    final = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert (final["step"], final["binarization"]) == (3, "dynamic")
    assert np.isfinite(final["elbo"]) and final["split"] == "validation"


def test_train_cli_on_npz_colour_end_to_end_and_bad_file_exits_2(tmp_path, capsys):
    from ouvae.train import main

    rng = np.random.default_rng(0)
    np.savez(tmp_path / "colour.npz", train=rng.integers(0, 256, (30, 6, 6, 3), dtype=np.uint8),
             test=rng.integers(0, 256, (6, 6, 6, 3), dtype=np.uint8))
    assert main(["--dataset", "npy", "--data-dir", str(tmp_path / "colour.npz"), "--out", str(tmp_path / "run"),
                 *TINY_RUN]) == 0
    final = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert (final["step"], final["binarization"]) == (3, "none") and np.isfinite(final["elbo"])

    np.savez(tmp_path / "bad.npz", train=np.zeros((30, 36)), test=np.zeros((6, 36)))
    capsys.readouterr()
    assert main(["--dataset", "npy", "--data-dir", str(tmp_path / "bad.npz"), "--out", str(tmp_path / "r2"),
                 *TINY_RUN]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {tmp_path / 'bad.npz'}['train']: shape (30, 36)") and "\n" not in err


# ----- registry, cache, container -------------------------------------------------------------------------

def test_registry_holds_the_paper_conventions():
    assert set(DATASETS) == {"digits", "mnist", "fashion_mnist", "static_mnist", "omniglot", "cifar10", "gaussian", "idx",
                             "npy"}
    assert {name for name, spec in DATASETS.items() if spec.user_data} == {"idx", "npy"}
    assert all(not DATASETS[name].files for name in ("idx", "npy"))
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
    # the same files through --dataset idx: the default validation_size 1/6 gives the registered split exactly
    own = load_dataset("idx", DEBIAN_FASHION)
    assert own.name == "idx:fashion-mnist"
    for split in ("train", "validation", "test"):
        assert torch.equal(getattr(own, split), getattr(d, split)), split

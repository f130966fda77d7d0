"""The user's own data: MNIST-format IDX files (``--dataset idx``) and NumPy arrays (``--dataset npy``).

Unlike the registry, nothing here knows the image count or size in advance: they come from the files. What
stays strict is the error standard -- a wrong shape, dtype, value range, NaN or an empty split is a one-line
`DataError` naming the file and the fix -- and the conventions: the validation split is held out of the end
of the training images (`validation_size`, default 1/6: MNIST's 10,000 of 60,000, so an MNIST-format set
such as KMNIST or Fashion-MNIST gets the paper's 50k/10k/10k split), and validation/test are binarized once
with the data seed, exactly as for the registered sets (`splits.make_splits`).
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

import numpy as np
import torch

from .files import Located
from .formats import read_idx_images
from .spec import DatasetSpec, LoadRequest
from .splits import DataError, DatasetSplits, make_splits, to_unit_float

DEFAULT_VALIDATION_FRACTION = 1 / 6

_IDX_FIX = ("Replace it with an intact MNIST-format file (IDX3: magic 00000803, then image count, rows and "
            "columns, then one unsigned byte per pixel), gzipped or not.")
_IDX_PATTERNS = {
    "training": re.compile(r"(?:^|.*[-_.])train-images[-.]idx3-ubyte(?:\.gz)?$"),
    "test": re.compile(r"(?:^|.*[-_.])(?:t10k|test)-images[-.]idx3-ubyte(?:\.gz)?$"),
}
NPY_SPLITS = ("train", "validation", "test")
_NPY_FIX = ("Save uint8 (8-bit), bool (0/1) or float (values in [0, 1]) images of shape (N, H, W), (N, C, H, W) "
            "or (N, H, W, C) with C = 1 or 3, e.g. np.savez(path, train=x_train, test=x_test)")


def _size_text(validation_size: float | None) -> str:
    if validation_size is None:
        return "validation_size 1/6 (default)"
    return f"validation_size {validation_size:g}"


def validation_count(n_images: int, validation_size: float | None, where: Path | str) -> int:
    """Images held out of the end of `n_images` training images: a fraction (0 < size < 1, rounded) or a whole
    count (size >= 1); default 1/6. At least one image must be left on each side."""
    size = DEFAULT_VALIDATION_FRACTION if validation_size is None else validation_size
    if 0 < size < 1:
        n = round(n_images * size)
    elif size >= 1 and float(size).is_integer():
        n = int(size)
    else:
        raise DataError(f"validation_size must be a fraction in (0, 1) or a whole count >= 1, got {size!r}")
    if n_images < 2:
        raise DataError(f"{where}: holds {n_images} training image(s); at least 2 are needed, one to train on and "
                        f"one held out for validation. Fix: supply more images")
    if n < 1 or n >= n_images:
        side = "validation" if n < 1 else "training"
        raise DataError(f"{where}: {_size_text(validation_size)} of its {n_images} training images holds out {n}, "
                        f"which leaves the {side} split empty. Fix: set validation_size (--validation-size) to a "
                        f"count from 1 to {n_images - 1}, or a fraction that gives one, or supply more images")
    return n


# ----- IDX files of any size ------------------------------------------------------------------------------

def _one_idx_file(folder: Path, role: str) -> Path:
    """The single training or test IDX image file in `folder`; an uncompressed copy wins over its .gz."""
    pattern = _IDX_PATTERNS[role]
    matches = sorted(p for p in folder.iterdir() if pattern.match(p.name) and p.is_file())
    stems = sorted({p.name.removesuffix(".gz") for p in matches})
    if not stems:
        example = "train-images-idx3-ubyte[.gz]" if role == "training" else "t10k-images-idx3-ubyte[.gz]"
        present = sorted(p.name for p in folder.iterdir())[:8]
        raise DataError(f"{folder}: no {role} image file (e.g. {example}; also <prefix>-{example}"
                        f"{' or test-images-idx3-ubyte[.gz]' if role == 'test' else ''}); the folder holds "
                        f"{present or 'nothing'}. Fix: put the IDX image files of one data set in it")
    if len(stems) > 1:
        raise DataError(f"{folder}: several {role} image files ({', '.join(stems)}). Fix: keep one data set per "
                        f"folder and point --data-dir at it")
    return min(matches, key=lambda p: p.suffix == ".gz")


def read_idx_folder(spec: DatasetSpec, req: LoadRequest) -> DatasetSplits:
    folder = req.data_dir
    assert folder is not None  # load_dataset checks
    if not folder.is_dir():
        raise DataError(f"data_dir {folder} is not a folder: --dataset idx needs a folder holding "
                        f"train-images-idx3-ubyte[.gz] and t10k-images-idx3-ubyte[.gz]")
    train_loc, test_loc = (Located(_one_idx_file(folder, role), _IDX_FIX) for role in ("training", "test"))
    train_u8, test_u8 = read_idx_images(train_loc), read_idx_images(test_loc)
    if len(train_u8) == 0 or len(test_u8) == 0:
        empty = train_loc if len(train_u8) == 0 else test_loc
        raise empty.corrupt("holds no images (its header says 0), so its split would be empty")
    if train_u8.shape[1:] != test_u8.shape[1:]:
        raise test_loc.corrupt(f"holds {test_u8.shape[2]}x{test_u8.shape[3]} images but {train_loc.path.name} "
                               f"holds {train_u8.shape[2]}x{train_u8.shape[3]}; both files must hold one image size")
    n_val = validation_count(len(train_u8), req.validation_size, train_loc.path)
    n_train = len(train_u8) - n_val
    stated = req.binarization != "auto"
    binarization = req.binarization if stated else spec.binarization
    why = "stated" if stated else "default for grey-level IDX images"
    source = (f"IDX files in {folder}: train/validation = first {n_train}/last {n_val} of the {len(train_u8)} "
              f"images in {train_loc.path.name} ({_size_text(req.validation_size)}), test = the {len(test_u8)} "
              f"images in {test_loc.path.name}; {binarization} binarization ({why})")
    train, validation, test = (to_unit_float(x, 255.0) for x in (train_u8[:n_train], train_u8[n_train:], test_u8))
    return make_splits(f"idx:{folder.resolve().name}", train, validation, test, binarization, req.seed, source)


# ----- NumPy arrays ---------------------------------------------------------------------------------------

def _load_npy_arrays(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str], str]:
    """(split -> array, split -> where it came from for messages, name) from an .npz file or a folder of
    <split>.npy files. Pickled (object) arrays are refused: loading them could run code."""
    if path.is_file() and path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as npz:
                unknown = sorted(set(npz.files) - set(NPY_SPLITS))
                if unknown:
                    raise DataError(f"{path}: holds arrays {unknown} besides {sorted(set(npz.files) & set(NPY_SPLITS))}"
                                    f"; an .npz for --dataset npy holds only 'train', 'test' and optionally "
                                    f"'validation'. Fix: np.savez(path, train=x_train, test=x_test)")
                arrays = {k: npz[k] for k in NPY_SPLITS if k in npz.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
            raise DataError(f"{path}: is not a readable .npz file without pickled objects ({type(e).__name__}: "
                            f"{e}). Fix: {_NPY_FIX}") from e
        return arrays, {k: f"{path}['{k}']" for k in arrays}, path.stem
    if path.is_dir():
        arrays, where = {}, {}
        for split in NPY_SPLITS:
            f = path / f"{split}.npy"
            if f.is_file():
                try:
                    arrays[split] = np.load(f, mmap_mode="r", allow_pickle=False)
                except (OSError, ValueError, EOFError) as e:
                    raise DataError(f"{f}: is not a readable .npy file without pickled objects "
                                    f"({type(e).__name__}: {e}). Fix: {_NPY_FIX}") from e
                where[split] = str(f)
        if not arrays:
            npz = sorted(p.name for p in path.glob("*.npz"))
            hint = f" (to use {npz[0]}, give its path as --data-dir)" if npz else ""
            raise DataError(f"{path}: holds no train.npy / test.npy{hint}. Fix: np.save the images as "
                            f"{path}/train.npy and {path}/test.npy (and optionally validation.npy)")
        return arrays, where, path.resolve().name
    raise DataError(f"data_dir {path}: --dataset npy needs an .npz file with 'train' and 'test' arrays, or a "
                    f"folder holding train.npy and test.npy")


def _as_images(a: np.ndarray, where: str) -> np.ndarray:
    """(N, C, H, W) view of `a` after dtype, shape, emptiness and value checks (the message names `where`)."""
    if a.dtype.kind not in "biuf":
        raise DataError(f"{where}: dtype {a.dtype} is not an image type. Fix: {_NPY_FIX}")
    if a.ndim == 3:
        a = a[:, None]
    elif a.ndim == 4 and a.shape[1] not in (1, 3) and a.shape[3] in (1, 3):
        a = a.transpose(0, 3, 1, 2)  # channels last -> first
    elif a.ndim != 4 or a.shape[1] not in (1, 3):
        raise DataError(f"{where}: shape {a.shape} is not a stack of images (flat rows need x.reshape(N, H, W)). "
                        f"Fix: {_NPY_FIX}")
    if a.shape[0] == 0 or a.shape[2] == 0 or a.shape[3] == 0:
        raise DataError(f"{where}: holds no images (shape {a.shape}): that split would be empty. Fix: {_NPY_FIX}")
    if a.dtype.kind == "f":
        finite = np.isfinite(a)
        if not finite.all():
            first = int(np.argmin(finite.reshape(len(a), -1).all(axis=1)))
            raise DataError(f"{where}: holds NaN or infinite values (first in image {first}). Fix: remove or "
                            f"repair those images")
        lo, hi = float(a.min()), float(a.max())
        if lo < 0 or hi > 1:
            raise DataError(f"{where}: float values span [{lo:g}, {hi:g}], outside [0, 1]. Fix: divide 8-bit "
                            f"intensities by 255 (or save them as uint8)")
    elif a.dtype.kind in "iu":
        lo, hi = int(a.min()), int(a.max())
        if lo < 0 or hi > 255:
            raise DataError(f"{where}: integer values span [{lo}, {hi}], outside the 8-bit range [0, 255]. Fix: "
                            f"{_NPY_FIX}")
    return a


def _is_binary(a: np.ndarray) -> bool:
    return a.dtype.kind == "b" or bool(((a == 0) | (a == 1)).all())


def read_numpy(spec: DatasetSpec, req: LoadRequest) -> DatasetSplits:
    path = req.data_dir
    assert path is not None  # load_dataset checks
    raw, where, stem = _load_npy_arrays(path)
    for split in ("train", "test"):
        if split not in raw:
            raise DataError(f"{path}: has no '{split}' images (found {sorted(raw)}). Fix: {_NPY_FIX}")
    images = {k: _as_images(a, where[k]) for k, a in raw.items()}
    shapes = {k: a.shape[1:] for k, a in images.items()}
    if len(set(shapes.values())) > 1:
        raise DataError(f"{path}: the splits disagree on the image shape (C, H, W): {shapes}. Fix: {_NPY_FIX}")
    binary = all(_is_binary(a) for a in images.values())
    kinds = {k: {"b": "bool", "i": "integer", "u": "integer", "f": "float"}[a.dtype.kind] for k, a in images.items()}
    if not binary and len(set(kinds.values())) > 1:
        raise DataError(f"{path}: the splits mix dtypes ({kinds}), so they cannot be read alike. Fix: save every "
                        f"split with one dtype")
    unit = {}
    for k, a in images.items():
        x = np.array(a, dtype=np.float32, order="C")  # a copy: .npy files are memory-mapped read-only
        if kinds[k] == "integer" and not binary:
            x /= 255.0  # 8-bit intensities
        unit[k] = torch.from_numpy(x)
    channels = shapes["train"][0]
    if req.binarization != "auto":
        binarization, why = req.binarization, "stated"
    elif binary:
        binarization, why = "static", "inferred: every value is 0 or 1"
    elif channels == 1:
        binarization, why = "dynamic", "inferred: grey levels, one channel"
    else:
        binarization, why = "none", "inferred: colour intensities, 3 channels"
    if "validation" in unit:
        if req.validation_size is not None:
            raise DataError(f"{where['validation']}: the data has its own validation split, so validation_size "
                            f"({req.validation_size:g}) has nothing to hold out. Fix: unset validation_size, or "
                            f"drop the validation array to hold images out of train")
        train, validation = unit["train"], unit["validation"]
        split_text = f"train, validation and test = its {len(train)}, {len(validation)} and {len(unit['test'])} images"
    else:
        n_val = validation_count(len(unit["train"]), req.validation_size, where["train"])
        train, validation = unit["train"][:-n_val], unit["train"][-n_val:]
        split_text = (f"train/validation = first {len(train)}/last {n_val} of its {n_val + len(train)} train "
                      f"images ({_size_text(req.validation_size)}), test = its {len(unit['test'])} test images")
    source = f"NumPy arrays from {path}: {split_text}; {binarization} binarization ({why})"
    return make_splits(f"npy:{stem}", train, validation, unit["test"], binarization, req.seed, source)

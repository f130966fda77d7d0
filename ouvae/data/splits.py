"""What a loader returns (`DatasetSplits`), the one error type (`DataError`), and the split and binarization
rules that the registered data sets and the user's own data share, so both follow one convention."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..config import BINARIZATIONS

LIKELIHOODS = ("bernoulli", "discretized_logistic", "gaussian")
# The likelihood each binarization implies: 0/1 pixels are Bernoulli; 8-bit intensities ("none") are modelled
# with the discretized logistic, as for CIFAR-10 in the paper.
LIKELIHOOD_OF = {"dynamic": "bernoulli", "static": "bernoulli", "none": "discretized_logistic"}
# Streams of the one-time binarization (numpy PCG64 seeded with (seed, stream)): validation and test as the
# registered sets have always used; train only for a static binarization of grey levels.
_STREAMS = {"train": 0, "validation": 1, "test": 2}


class DataError(Exception):
    """A data problem the user can fix; the message says what is wrong and how to fix it."""


@dataclass(frozen=True)
class DatasetSplits:
    """Train/validation/test images of one data set, float32 (N, C, H, W) in [0, 1] (real values for "gaussian").

    name: identifies the data on every result row: the registry name (``mnist``), or for the user's own files
    ``idx:<folder name>`` / ``npy:<file or folder name>``.
    binarization: "dynamic" -- `train` holds grey-level probabilities and the trainer draws fresh Bernoulli
    pixels each batch, while `validation`/`test` were binarized once with a fixed seed (exactly 0/1), so every
    run is evaluated on the same binary images; "static" -- all splits are 0/1; "none" -- 8-bit
    intensities / 255 (CIFAR-10), modelled with the discretized logistic, or real values (the generated
    ``gaussian`` set, likelihood "gaussian").
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


def to_unit_float(x_uint8: np.ndarray, scale: float) -> torch.Tensor:
    """uint8 array -> float32 tensor / scale, one allocation (only the slice is converted, not the whole file)."""
    return torch.from_numpy(x_uint8.astype(np.float32)).div_(scale)


def binarize_once(probs: torch.Tensor, seed: int, stream: int) -> torch.Tensor:
    """Bernoulli(probs) drawn once from numpy's PCG64 seeded with (seed, stream): the same 0/1 images on every
    load, machine and torch version, so validation/test numbers are comparable across runs. Images that are
    already 0/1 come back unchanged."""
    rng = np.random.default_rng([seed, stream])
    u = rng.random(tuple(probs.shape), dtype=np.float32)
    return torch.from_numpy(u < probs.numpy()).to(torch.float32)


def make_splits(name: str, train: torch.Tensor, validation: torch.Tensor, test: torch.Tensor, binarization: str,
                seed: int, source: str) -> DatasetSplits:
    """DatasetSplits from [0, 1] images, binarized as `binarization` says, with a split note that starts with
    the sizes and says where the images came from (`source`) and how they were binarized."""
    if binarization == "dynamic":
        validation = binarize_once(validation, seed, _STREAMS["validation"])
        test = binarize_once(test, seed, _STREAMS["test"])
        how = f"validation and test binarized once with seed {seed}; train re-binarized every batch"
    elif binarization == "static":
        train, validation, test = (binarize_once(x, seed, _STREAMS[s])
                                   for x, s in ((train, "train"), (validation, "validation"), (test, "test")))
        how = f"all splits binarized once with seed {seed} (0/1 images unchanged)"
    else:
        how = "no binarization, 8-bit intensities / 255"
    note = f"{len(train)}/{len(validation)}/{len(test)} ({source}; {how})"
    return DatasetSplits(name, train, validation, test, binarization, LIKELIHOOD_OF[binarization], note)

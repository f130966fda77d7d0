"""How a data set is described (`DatasetSpec`) and what a reader is given (`LoadRequest`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from .files import Located, RemoteFile
from .splits import DatasetSplits


@dataclass(frozen=True)
class LoadRequest:
    """Everything a reader needs besides its spec.

    files: the located files of a registered set, keyed by official name (empty for digits and user data).
    data_dir: the user's folder (or, for npy, file); None when not given.
    seed: the data seed of the one-time binarizations (and of the digits split).
    validation_size, binarization: the user's choices for their own data (None / "auto": the default).
    params: the Config fields a generated data set is made from (its spec's ``config_fields``).
    """

    files: Mapping[str, Located]
    data_dir: Path | None
    seed: int
    validation_size: float | None = None
    binarization: str = "auto"
    params: Mapping[str, Any] = field(default_factory=dict)


Reader = Callable[["DatasetSpec", LoadRequest], DatasetSplits]


@dataclass(frozen=True)
class DatasetSpec:
    """How to find, check and split one data set, or (user_data=True) one route for the user's own files.

    n_validation: images held out of the training file(s) as validation (the last ones); user data uses
    `validation_size` instead.
    n_test: digits only -- images carved out of the single pool as test.
    expected_counts: image count per source (e.g. {"train": 60000, "test": 10000}) checked after reading;
    None skips the check.
    image_shape: (C, H, W) of a registered set; None for user data (the files say).
    binarization: the set's fixed convention; for user data the default ("auto": inferred from the arrays).
    user_data: the files are the user's, in data_dir (required): any image count and size, no download.
    config_fields: Config fields a generated data set is made from (passed as ``LoadRequest.params`` and recorded
    on every result row); another set refuses them at non-default values.
    """

    name: str
    description: str
    files: tuple[RemoteFile, ...]
    reader: Reader
    n_validation: int = 0
    n_test: int = 0
    expected_counts: Mapping[str, int] | None = None
    system_dirs: tuple[str, ...] = ()
    install_hint: str = ""
    image_shape: tuple[int, int, int] | None = (1, 28, 28)
    binarization: str = "dynamic"
    likelihood: str = "bernoulli"
    homepage: str = ""
    user_data: bool = False
    config_fields: tuple[str, ...] = ()

"""The checkpoint file: plain tensors, numbers and strings, loaded with ``torch.load(weights_only=True)``.

Why: a checkpoint in a shared bucket or folder is input from elsewhere. Pickled Python objects would run code on
every node that resumes from a planted file; PyTorch's weights-only loader accepts only tensors and plain
containers. So configurations and histories are stored as JSON text, RNG states as uint8 tensors, and nothing
else.

One format for one run and for a population of runs (a single run is a population of one): ``configs`` has one
JSON config per member, ``params`` is the (M, P) parameter matrix, ``optimizer`` its Adam moments and per-member
step counts. Files carry ``format`` (= FORMAT), ``format_version`` and ``ouvae_version``; a file from a newer
format, from another program, or from ouvae 0.1 (pickled objects) is refused with a one-line
``CheckpointFormatError`` that says what to do.
"""

from __future__ import annotations

import pickle
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch

from . import __version__
from .atomic import write_atomically

FORMAT = "ouvae-checkpoint"
FORMAT_VERSION = 1
CHECKPOINT_FILE = "checkpoint.pt"
_KEYS = ("configs", "layout", "params", "optimizer", "step", "members", "rng", "train_seconds", "eval_seconds")


class CheckpointFormatError(ValueError):
    """A checkpoint file that this ouvae cannot or must not load; the message names the file and the fix."""


def _version_tuple(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in str(text).split(".")[:3])
    except ValueError:
        return (0,)


def write(state: dict[str, Any], path: Path) -> Path:
    """Write `state` (plain data only) to `path` atomically (ouvae/atomic.py)."""
    full = {"format": FORMAT, "format_version": FORMAT_VERSION, "ouvae_version": __version__, **state}
    return write_atomically(path, lambda tmp: torch.save(full, tmp))


def read(path: Path) -> dict[str, Any]:
    """The checked contents of an ouvae checkpoint file (tensors on the CPU)."""
    if not path.is_file():
        raise CheckpointFormatError(f"{path}: no such checkpoint file; pass the folder a run wrote (it holds "
                                    f"{CHECKPOINT_FILE})")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointFormatError(
            f"{path}: refused: the file holds Python objects, not only tensors and plain data (written by ouvae "
            f"0.1, by another program, or tampered with; loading it could run code). Retrain the run, or load it "
            f"with ouvae 0.1 if you trust it") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as e:
        raise CheckpointFormatError(f"{path}: not a readable checkpoint ({type(e).__name__}: "
                                    f"{str(e).splitlines()[0][:160] if str(e) else 'truncated'}); the file is "
                                    f"damaged or incomplete: use an older checkpoint or retrain") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointFormatError(f"{path}: not an ouvae checkpoint (no format field {FORMAT!r}); pass a file "
                                    f"written by ouvae's trainer")
    version = state.get("format_version")
    written_by = state.get("ouvae_version", "unknown")
    if not isinstance(version, int):
        raise CheckpointFormatError(f"{path}: incomplete ouvae checkpoint (no format_version); use an older "
                                    f"checkpoint or retrain")
    if version > FORMAT_VERSION:
        raise CheckpointFormatError(f"{path}: written by ouvae {written_by} in checkpoint format {version}; this "
                                    f"ouvae {__version__} reads format {FORMAT_VERSION} and older: upgrade ouvae")
    if _version_tuple(written_by) > _version_tuple(__version__):
        # Same format from a newer release: readable, but say so: its configs may carry newer defaults.
        warnings.warn(f"{path}: written by the newer ouvae {written_by} (checkpoint format {version}, which this "
                      f"ouvae {__version__} reads); upgrade ouvae if anything looks off", stacklevel=2)
    missing = [k for k in _KEYS if k not in state]
    if missing:
        raise CheckpointFormatError(f"{path}: incomplete ouvae checkpoint (missing {', '.join(missing)}); the file "
                                    f"was not written by a complete save: use an older checkpoint or retrain")
    return state

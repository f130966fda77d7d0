"""Parsers of the image file formats (IDX, Larochelle's .amat, Burda's chardata.mat, the CIFAR-10 python
batches). Each takes a `Located` file and returns numpy arrays, or raises the file's one-line `DataError`:
header, size and value checks come before anything is reshaped, so a damaged file is never a numpy error from
deep inside. Counts and splits are the callers' business (the registry is strict, user data is not)."""

from __future__ import annotations

import gzip
import io
import pickle
import struct
import tarfile
import zlib
from typing import Mapping

import numpy as np

from .files import Located


def read_maybe_gzip(loc: Located) -> bytes:
    """File bytes, gunzipped if the file starts with the gzip magic (whatever its name says)."""
    try:
        raw = loc.path.read_bytes()
    except OSError as e:
        raise loc.corrupt(f"cannot be read ({e})") from e
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise loc.corrupt(f"is not a valid gzip file ({e}); it is probably truncated") from e
    return raw


# ----- IDX (MNIST and every data set in its format) --------------------------------------------------------

def read_idx_images(loc: Located) -> np.ndarray:
    """(N, 1, rows, cols) uint8 from an IDX3 file of any image count and size (the sizes come from its header);
    the payload must be exactly what the header promises."""
    raw = read_maybe_gzip(loc)
    if len(raw) < 16 or raw[0:2] != b"\x00\x00" or raw[2] != 0x08 or raw[3] != 3:
        magic = raw[:4].hex() if len(raw) >= 4 else f"only {len(raw)} bytes"
        hint = " (this looks like an IDX labels file)" if raw[:4] == b"\x00\x00\x08\x01" else ""
        raise loc.corrupt(f"is not an IDX image file: magic number {magic}, expected 00000803{hint}")
    n, rows, cols = struct.unpack(">III", raw[4:16])
    if rows == 0 or cols == 0:
        raise loc.corrupt(f"its header declares {rows}x{cols} images, which hold no pixels")
    expected = 16 + n * rows * cols
    if len(raw) != expected:
        raise loc.corrupt(f"has {len(raw)} bytes (uncompressed) but its header promises {n} images of {rows}x{cols}"
                          f" = {expected} bytes; the file is truncated or damaged")
    return np.frombuffer(raw, dtype=np.uint8, offset=16).reshape(n, 1, rows, cols)


# ----- Larochelle's static binarized MNIST (.amat) ---------------------------------------------------------

_AMAT_ALLOWED = np.zeros(256, dtype=bool)
_AMAT_ALLOWED[[ord("0"), ord("1"), ord(" "), ord("\t"), ord("\n"), ord("\r")]] = True


def read_amat(loc: Located, width: int = 784) -> np.ndarray:
    """(N, width) uint8 from a text file of 0/1 tokens separated by whitespace, one image per line.

    No published checksum exists for these files, so structure is the check: only single-digit 0/1 tokens,
    exactly `width` per non-empty line. Parsing works on the raw bytes with numpy (a token split in Python
    would take seconds and gigabytes for the 39M values of the training file).
    """
    try:
        b = np.frombuffer(loc.path.read_bytes(), dtype=np.uint8)
    except OSError as e:
        raise loc.corrupt(f"cannot be read ({e})") from e

    def line_of(pos: int) -> int:
        return int(np.count_nonzero(b[:pos] == ord("\n"))) + 1

    bad = np.flatnonzero(~_AMAT_ALLOWED[b])
    if bad.size:
        ch = chr(int(b[bad[0]]))
        raise loc.corrupt(f"is not a binarized-MNIST .amat file: unexpected character {ch!r} on line "
                          f"{line_of(int(bad[0]))} (only 0/1 values separated by spaces are allowed)")
    is_digit = (b == ord("0")) | (b == ord("1"))
    joined = np.flatnonzero(is_digit[:-1] & is_digit[1:])
    if joined.size:
        raise loc.corrupt(f"is malformed: a multi-digit value on line {line_of(int(joined[0]))} "
                          f"(only single 0/1 values are allowed)")
    ends = np.flatnonzero(b == ord("\n"))
    if b.size and b[-1] != ord("\n"):
        ends = np.append(ends, b.size - 1)
    counts = np.diff(np.concatenate([[0], np.cumsum(is_digit)[ends]])) if ends.size else np.zeros(0, int)
    rows = counts[counts > 0]
    wrong = np.flatnonzero((counts > 0) & (counts != width))
    if wrong.size:
        raise loc.corrupt(f"is malformed: line {int(wrong[0]) + 1} has {int(counts[wrong[0]])} values, "
                          f"expected {width}; the file is truncated or damaged")
    if rows.size == 0:
        raise loc.corrupt("holds no images")
    return (b[is_digit] - ord("0")).reshape(rows.size, width)


# ----- Burda's OMNIGLOT (chardata.mat) ---------------------------------------------------------------------

def read_chardata(loc: Located) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) float32 (N, 1, 28, 28) images from Burda's chardata.mat ('data' and 'testdata')."""
    import scipy.io  # lazy: scipy.io is only needed for this data set

    try:
        mat = scipy.io.loadmat(loc.path, variable_names=["data", "testdata"])
    except NotImplementedError as e:  # MATLAB v7.3 (HDF5) files
        raise loc.corrupt(f"is a MATLAB v7.3 file that scipy cannot read ({e}); Burda's file is v5") from e
    except Exception as e:  # scipy raises ValueError, TypeError, OSError, MatReadError... on damaged files
        raise loc.corrupt(f"is not a readable .mat file ({type(e).__name__}: {e})") from e
    return _omniglot_images(loc, mat, "data"), _omniglot_images(loc, mat, "testdata")


def _omniglot_images(loc: Located, mat: Mapping[str, object], key: str) -> np.ndarray:
    """(N, 1, 28, 28) float32 from a (784, N) matrix whose columns are column-major (MATLAB) 28x28 images.

    Burda reads `data.T.reshape(-1, 28, 28).reshape(-1, 784, order='F')`, i.e. each 784-vector is the image
    flattened in Fortran order; reshaping it in Fortran order (= C order, then transposing the two pixel
    axes) gives upright characters.
    """
    a = mat.get(key)
    if a is None:
        raise loc.corrupt(f"has no variable '{key}' (Burda's chardata.mat holds 'data' and 'testdata')")
    if not isinstance(a, np.ndarray) or a.ndim != 2 or a.shape[0] != 784 or a.shape[1] < 1:
        raise loc.corrupt(f"variable '{key}' has shape {getattr(a, 'shape', None)}, expected (784, N)")
    try:
        a = a.astype(np.float32, copy=False)
    except (TypeError, ValueError) as e:
        raise loc.corrupt(f"variable '{key}' is not numeric ({e})") from e
    if not np.isfinite(a).all() or a.min() < 0 or a.max() > 1:
        raise loc.corrupt(f"variable '{key}' has values outside [0, 1] or non-finite values")
    n = a.shape[1]
    return np.ascontiguousarray(a.T.reshape(n, 28, 28).transpose(0, 2, 1)).reshape(n, 1, 28, 28)


# ----- CIFAR-10 (python tarball) ---------------------------------------------------------------------------

CIFAR_DIR = "cifar-10-batches-py"
CIFAR_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR_TEST = "test_batch"


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


def _parse_cifar_batch(loc: Located, member: str, payload: bytes) -> np.ndarray:
    try:
        d = _BatchUnpickler(io.BytesIO(payload), encoding="latin1").load()
    except Exception as e:  # UnpicklingError, EOFError, ValueError... on damaged data
        raise loc.corrupt(f"member {member} is not a readable CIFAR batch ({type(e).__name__}: {e})") from e
    data = d.get("data", d.get(b"data")) if isinstance(d, dict) else None
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise loc.corrupt(f"member {member} has no uint8 'data' array of shape (N, 3072)")
    return data


def read_cifar_batches(loc: Located) -> dict[str, np.ndarray]:
    """Batch name -> (N, 3072) uint8, from the tarball or an already-extracted cifar-10-batches-py/ folder."""
    wanted = {*CIFAR_TRAIN, CIFAR_TEST}
    found: dict[str, np.ndarray] = {}
    if loc.path.is_dir():
        for name in sorted(wanted):
            p = loc.path / name
            try:
                found[name] = _parse_cifar_batch(loc, name, p.read_bytes())
            except OSError as e:
                raise loc.corrupt(f"has no readable {name} ({e})") from e
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
        raise loc.corrupt(f"is not a readable tar archive ({type(e).__name__}: {e}); it is probably truncated") from e
    missing = sorted(wanted - found.keys())
    if missing:
        raise loc.corrupt(f"lacks the batch file(s) {', '.join(missing)} (expected under {CIFAR_DIR}/)")
    return found

"""The generated Gaussian data set (``dataset="gaussian"``): real-valued vectors with a chosen covariance spectrum.

Why: a linear VAE with a Gaussian likelihood on Gaussian data has a critical rho known in closed form
(``analysis/closed_form.py``), so this data set is what the rho_c locator is calibrated on (docs/calibration.md).
For the closed form to hold for the trained model exactly, each split has *exactly* the intended second moments,
not just in expectation: the draws are centred and whitened (sample covariance with divisor N equal to I), then
scaled, so the mean of every split is 0 and its covariance (divisor N) is diag(eigenvalue * ratio^i), i = 0 ..
dim - 1, along the coordinate axes. Splits are drawn from numpy's PCG64 seeded with (gaussian_seed, split).
"""

from __future__ import annotations

import numpy as np
import torch

from .spec import DatasetSpec, LoadRequest
from .splits import DataError, DatasetSplits

_STREAMS = {"train": 0, "validation": 1, "test": 2}


def gaussian_spectrum(dim: int, eigenvalue: float, ratio: float) -> np.ndarray:
    """The covariance eigenvalues eigenvalue * ratio^i, i = 0 .. dim - 1 (largest first)."""
    return float(eigenvalue) * float(ratio) ** np.arange(int(dim), dtype=np.float64)


def exact_gaussian(n: int, variances: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """n vectors whose mean is exactly 0 and whose covariance (divisor n) is exactly diag(variances)."""
    z = rng.standard_normal((n, variances.size))
    z -= z.mean(0)
    chol = np.linalg.cholesky(z.T @ z / n)
    white = np.linalg.solve(chol, z.T).T  # covariance exactly I
    return white * np.sqrt(variances)


def read_gaussian(spec: DatasetSpec, req: LoadRequest) -> DatasetSplits:
    p = dict(req.params)
    missing = sorted(set(spec.config_fields) - set(p))
    if missing:
        raise DataError(f"dataset 'gaussian' is generated from {', '.join(spec.config_fields)}; missing "
                        f"{', '.join(missing)} (load it through load_config_dataset, or pass params=...)")
    dim, n, seed = int(p["gaussian_dim"]), int(p["gaussian_samples"]), int(p["gaussian_seed"])
    if dim < 1 or n <= dim or seed < 0 or not 0 < p["gaussian_ratio"] <= 1 or not p["gaussian_eigenvalue"] > 0:
        raise DataError(f"dataset 'gaussian' needs gaussian_dim >= 1, gaussian_samples > gaussian_dim, "
                        f"gaussian_eigenvalue > 0, 0 < gaussian_ratio <= 1 and gaussian_seed >= 0; got {p}")
    variances = gaussian_spectrum(dim, p["gaussian_eigenvalue"], p["gaussian_ratio"])
    splits = {s: torch.from_numpy(exact_gaussian(n, variances, np.random.default_rng([seed, i])).astype(np.float32))
              .view(n, 1, 1, dim) for s, i in _STREAMS.items()}
    note = (f"{n}/{n}/{n} (generated: N(0, diag({p['gaussian_eigenvalue']:g} x {p['gaussian_ratio']:g}^i)), "
            f"i < {dim}, each split centred and whitened to exactly these moments, seed {seed})")
    return DatasetSplits(spec.name, splits["train"], splits["validation"], splits["test"], spec.binarization,
                         spec.likelihood, note)

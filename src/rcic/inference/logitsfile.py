"""The logits file: the interface between prediction and submission (numpy only).

An ``.npz`` with:

- ``id_code``: (N,) str, one per well;
- ``logits``: (N, K) float32, K = 1139: column j is siRNA j, columns 1108..1137 the positive
  controls and 1138 the untreated control (a file may carry only the first 1108 columns);
- optional ``temperature``: () float, the calibration fitted on held-out experiments (divide the
  logits by it before the softmax);
- optional per-well metadata of the same length: ``experiment``, ``plate``, ``well``,
  ``cell_type``, ``sirna`` (-1 where unknown);
- optional ``embedding``: (N, D) float32, and free-form strings such as ``source``.

Any tool can write one with ``numpy.savez``; :func:`read_logits` checks it.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from rcic import layout
from rcic.errors import LogitsError
from rcic.fileio import atomic_path

PER_WELL = ("experiment", "plate", "well", "cell_type", "sirna", "well_type", "oof", "embedding")


def write_logits(path: str | Path, id_code, logits: np.ndarray, **extra) -> Path:
    """Write a logits file atomically (temporary name, then rename)."""
    path = Path(path)
    arrays = {
        "id_code": np.asarray(id_code, dtype=str),
        "logits": np.asarray(logits, dtype=np.float32),
    }
    for k, v in extra.items():
        if v is not None:
            v = np.asarray(v)
            arrays[k] = v.astype(str) if v.dtype == object else v  # readable without pickle
    _check(arrays, path)
    with atomic_path(path, ".tmp.npz") as tmp:
        np.savez(tmp, **arrays)
    return path


def read_logits(path: str | Path) -> dict[str, np.ndarray]:
    """Read and check a logits file; return its arrays."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise LogitsError(f"{path}: cannot be read as .npz ({e})") from None
    _check(arrays, path)
    return arrays


def _check(arrays: dict, path: Path) -> None:
    for key in ("id_code", "logits"):
        if key not in arrays:
            raise LogitsError(f"{path}: no '{key}' array")
    ids, logits = arrays["id_code"], arrays["logits"]
    if logits.ndim != 2 or len(ids) != len(logits):
        raise LogitsError(
            f"{path}: logits must be (wells, classes) with one row per id_code; got {logits.shape} for {len(ids)} ids"
        )
    if logits.shape[1] not in (layout.N_TREATMENTS, layout.N_CLASSES):
        raise LogitsError(
            f"{path}: {logits.shape[1]} classes; expected {layout.N_CLASSES} (or the {layout.N_TREATMENTS} treatments)"
        )
    bad = ~np.isfinite(logits).all(axis=1)
    if bad.any():
        raise LogitsError(
            f"{path}: {int(bad.sum())} well(s) have NaN or infinite logits, e.g. {ids[bad][:3].tolist()}"
        )
    uniq, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        raise LogitsError(f"{path}: duplicate id_code {uniq[counts > 1][:3].tolist()}")
    for key in PER_WELL:
        if key in arrays and len(arrays[key]) != len(ids):
            raise LogitsError(
                f"{path}: '{key}' has {len(arrays[key])} entries for {len(ids)} wells"
            )
    if "temperature" in arrays and not (
        np.isfinite(arrays["temperature"]) and float(arrays["temperature"]) > 0
    ):
        raise LogitsError(f"{path}: temperature must be a positive number")

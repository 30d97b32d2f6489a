"""The logits file: the interface between prediction and submission (numpy only).

An ``.npz`` with:

- ``id_code``: (N,) str, one per well;
- ``logits``: (N, K) float32, K = 1139: column j is siRNA j, columns 1108..1137 the positive
  controls and 1138 the untreated control (a file may carry only the first 1108 columns);
- optional ``temperature``: () float, the calibration fitted on held-out experiments (divide the
  logits by it before the softmax);
- optional per-well metadata of the same length: ``experiment``, ``plate``, ``well``,
  ``cell_type``, ``sirna`` (-1 where unknown);
- optional ``embedding``: (N, D) float32, and free-form strings such as ``source``;
- optional ``model`` (a digest of the checkpoint) and ``part`` (``"K/N"``): the parts of one
  model's prediction, joined by :func:`read_models`.

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


# --- parts: one model's prediction written by several processes --------------------------------


def part_label(part: tuple[int, int]) -> str:
    """(K, N) -> 'K/N', as files record it."""
    return f"{part[0]}/{part[1]}"


def _part_numbers(label: str, where) -> tuple[int, int]:
    try:
        k, n = (int(x) for x in str(label).split("/"))
    except ValueError:
        raise LogitsError(f"{where}: part {label!r} is not K/N") from None
    return k, n


def group_parts(entries: list[tuple[object, str | None, str | None]]) -> list[list[int]]:
    """Which of `entries` (where, model, part label or None) make one model: a file without a
    part is a model alone; the files of one `model` with parts must be parts 1..N of one N, each
    once. Returns the entries' indices per model, parts in order, models in order of first sight;
    LogitsError names a missing, repeated or mismatched part."""
    groups: list[list[int]] = []
    by_model: dict[str, list[int]] = {}
    for i, (_, model, part) in enumerate(entries):
        if part is None:
            groups.append([i])
        elif model not in by_model:
            by_model[model] = [i]
            groups.append(by_model[model])
        else:
            by_model[model].append(i)
    for model, idx in by_model.items():
        idx.sort(key=lambda i: _part_numbers(entries[i][2], entries[i][0]))
        _check_parts(model, [entries[i] for i in idx])
    return groups


def _check_parts(model: str, entries: list) -> None:
    numbers = [_part_numbers(part, where) for where, _, part in entries]
    counts = {n for _, n in numbers}
    if len(counts) > 1:
        shown = ", ".join(f"{w} ({p})" for w, _, p in entries)
        raise LogitsError(f"model {model}: parts of different counts: {shown}")
    n = counts.pop()
    seen: dict[int, object] = {}
    for (k, _), (where, _, _) in zip(numbers, entries, strict=True):
        if k in seen:
            raise LogitsError(f"model {model}: part {k}/{n} given twice: {seen[k]} and {where}")
        seen[k] = where
    missing = sorted(set(range(1, n + 1)) - set(seen))
    if missing:
        have = ", ".join(str(w) for w, _, _ in entries)
        raise LogitsError(
            f"model {model}: part(s) {', '.join(f'{k}/{n}' for k in missing)} missing "
            f"(given: {have})"
        )


def join_parts(files: list[dict], paths: list) -> dict:
    """One model's logits from the arrays of its parts (`group_parts` order): per-well arrays
    concatenated, the rest from the first part; LogitsError where a well is in two parts or the
    parts carry different temperatures (a temperature belongs to the model, fitted once)."""
    if len(files) == 1:
        return files[0]
    temps = {float(f["temperature"]) if "temperature" in f else None for f in files}
    if len(temps) > 1:
        raise LogitsError(
            f"{paths[0]} ...: the parts carry different temperatures {sorted(temps, key=str)}; "
            "predict every part with the temperature fitted on the model's held-out fold"
        )
    joined = dict(files[0])
    for key in ("id_code", "logits", *PER_WELL):
        if all(key in f for f in files):
            joined[key] = np.concatenate([f[key] for f in files])
    ids, counts = np.unique(joined["id_code"], return_counts=True)
    if (counts > 1).any():
        raise LogitsError(f"{paths}: well {ids[counts > 1][0]} is in two parts")
    joined.pop("part", None)
    return joined


def read_models(paths: list[str | Path]) -> list[tuple[list[Path], dict]]:
    """The logits files of `paths` as models: each file alone, or the parts of one model
    (``model`` and ``part`` fields, as `rcic predict --part` writes them) joined into one."""
    paths = [Path(p) for p in paths]
    files = [read_logits(p) for p in paths]
    entries = [
        (p, _field(f, "model"), _field(f, "part")) for p, f in zip(paths, files, strict=True)
    ]
    return [
        ([paths[i] for i in idx], join_parts([files[i] for i in idx], [paths[i] for i in idx]))
        for idx in group_parts(entries)
    ]


def _field(arrays: dict, key: str) -> str | None:
    return str(arrays[key]) if key in arrays else None

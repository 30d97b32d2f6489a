"""The packed image store: every site decoded once into a chunked zarr array.

Layout of a store folder::

    STORE/
      store.json   what was packed (size, channels, compression, source) and whether it is complete
      index.csv    one row per site, in array order (the site table of rcic.metadata + `idx`)
      sites.zarr/  arrays `images` (N, 6, S, S) uint8 chunked one site per chunk, so a site is one
                   contiguous read; `state` (N,) 0 todo / 1 packed / 2 unreadable; `sums` (N, 6, 2)
                   per-site pixel sums and sums of squares, from which plate statistics are made
      stats.csv    per plate and channel: mean and std over all wells and over negative controls
      failed.csv   sites that could not be read, with the reason

Packing is resumable: sites are marked packed only after their chunk is written, so a run that is
interrupted and started again redoes at most the sites that were in flight.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import zarr
from PIL import Image
from tqdm import tqdm

from rcic import layout
from rcic.errors import InputError, StoreError
from rcic.fileio import atomic_csv, atomic_text
from rcic.images import ImageReadError, load_site
from rcic.metadata import SITE_COLUMNS

log = logging.getLogger(__name__)

TODO, PACKED, FAILED = 0, 1, 2
COMPRESSIONS = ("none", "zstd", "lz4")
_BATCH = 64


@dataclass
class PackResult:
    packed: int
    failed: int
    skipped: int  # already packed by an earlier run


def _compressors(name: str):
    if name == "none":
        return None
    if name not in COMPRESSIONS:
        raise InputError(f"compression {name!r}: expected one of {COMPRESSIONS}")
    from zarr.codecs import BloscCodec

    return BloscCodec(cname=name, clevel=3, shuffle="bitshuffle")


def pack(
    data_dir: str | Path,
    sites: pd.DataFrame,
    out: str | Path,
    *,
    size: int | None = None,
    workers: int | None = None,
    compression: str = "none",
    strict: bool = False,
) -> PackResult:
    """Decode every site listed in `sites` from `data_dir` into the store at `out`.

    Args:
        data_dir: dataset folder holding ``train/`` and ``test/``.
        sites: the site table from :func:`rcic.metadata.load_metadata`.
        out: store folder; created, or resumed if it holds the same sites and size.
        size: resize sites to size x size (area averaging); default: the images' own size.
        workers: decoding processes (default: all cores).
        compression: ``none`` (fastest reads), ``zstd`` or ``lz4``.
        strict: raise if any site is unreadable, instead of listing it in ``failed.csv``.
    """
    out, data_dir = Path(out), Path(data_dir)
    index = sites[SITE_COLUMNS].reset_index(drop=True).rename_axis("idx").reset_index()
    size = size or _native_size(data_dir, index)
    group = _open_or_create(out, index, size, compression, str(data_dir))
    state = group["state"][:]
    todo = np.flatnonzero(state != PACKED)
    skipped = len(index) - len(todo)
    if skipped:
        log.info("resuming %s: %d of %d sites already packed", out, skipped, len(index))
    if compression == "none":  # the size is known: refuse before writing what cannot fit
        _check_space(out, len(todo) * len(layout.CHANNELS) * size * size)
    try:
        failures = _pack_sites(group, data_dir, index, todo, size, workers or os.cpu_count() or 1)
    except OSError as e:
        if e.errno != errno.ENOSPC:
            raise
        free = shutil.disk_usage(out).free
        raise StoreError(
            f"{out}: the disk is full ({_mb(free)} free); the sites written so far are kept: free "
            f"some space and run `rcic prepare` again to finish (it resumes)"
        ) from None
    _write_failed(out, index, failures)
    n_failed = len(failures)
    first = "; ".join(failures[i] for i in sorted(failures)[:3])
    if n_failed and strict:
        raise StoreError(
            f"{n_failed} site(s) could not be read, and --strict was given: {first}"
            + (f" (all listed in {out / 'failed.csv'})" if n_failed > 3 else "")
        )
    if n_failed == len(index):
        raise StoreError(f"no site could be read: {first} (all listed in {out / 'failed.csv'})")
    write_stats(out)
    _update_meta(out, complete=True, failed=n_failed)
    return PackResult(packed=len(todo) - n_failed, failed=n_failed, skipped=skipped)


def _mb(n: float) -> str:
    return f"{n / 2**20:,.1f} MiB"


def _check_space(out: Path, needed: int) -> None:
    """Raise StoreError naming the store, the space needed and the space free, if it cannot fit."""
    free = shutil.disk_usage(out).free
    margin = 1.02 * needed + 2**20  # chunk files have a little overhead
    if margin > free:
        raise StoreError(
            f"{out}: packing needs about {_mb(margin)} but only {_mb(free)} is free on its disk; "
            "free some space (or choose another --out, a smaller --size, or --compression zstd) and "
            "run `rcic prepare` again: it resumes where it stopped"
        )


def _native_size(data_dir: Path, index: pd.DataFrame) -> int:
    for row in index.itertuples():
        path = (
            data_dir
            / row.split
            / row.experiment
            / f"Plate{row.plate}"
            / layout.png_name(row.well, row.site, 1)
        )
        if path.exists():
            with Image.open(path) as im:
                return im.size[0]
    raise StoreError(
        f"{data_dir}: none of the listed sites has a w1 PNG; is this the dataset folder?"
    )


def _open_or_create(
    out: Path, index: pd.DataFrame, size: int, compression: str, source: str
) -> zarr.Group:
    meta_path = out / "store.json"
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        old = pd.read_csv(out / "index.csv")
        same = (
            meta["size"] == size
            and meta["compression"] == compression
            and old["id_code"].tolist() == index["id_code"].tolist()
            and old["site"].tolist() == index["site"].tolist()
        )
        if not same:
            raise StoreError(
                f"{out} holds a different store (other sites, size or compression); choose another --out or delete it"
            )
        return zarr.open_group(out / "sites.zarr", mode="r+")
    out.mkdir(parents=True, exist_ok=True)
    group = zarr.open_group(out / "sites.zarr", mode="w")
    n, c = len(index), len(layout.CHANNELS)
    group.create_array(
        "images",
        shape=(n, c, size, size),
        chunks=(1, c, size, size),
        dtype="uint8",
        compressors=_compressors(compression),
        fill_value=0,
    )
    group.create_array(
        "state", shape=(n,), chunks=(max(1, min(n, 65536)),), dtype="uint8", fill_value=TODO
    )
    group.create_array(
        "sums",
        shape=(n, c, 2),
        chunks=(max(1, min(n, 8192)), c, 2),
        dtype="float64",
        fill_value=0.0,
    )
    atomic_csv(index, out / "index.csv")
    meta = {
        "format": 1,
        "size": size,
        "channels": list(layout.CHANNELS),
        "compression": compression,
        "source": source,
        "n_sites": n,
        "complete": False,
    }
    atomic_text(out / "store.json", json.dumps(meta, indent=1))
    return group


def _pack_sites(group, data_dir, index, todo, size, workers) -> dict[int, str]:
    """Decode the `todo` sites in batches; mark each batch done once written. Return failures."""
    batches = [todo[i : i + _BATCH] for i in range(0, len(todo), _BATCH)]
    rows = index[["split", "experiment", "plate", "well", "site"]].to_numpy()
    jobs = [(str(group.store.root), str(data_dir), b, rows[b], size) for b in batches]
    failures: dict[int, str] = {}
    executor = ProcessPoolExecutor(workers) if workers > 1 and len(jobs) > 1 else None
    results = executor.map(_pack_batch, jobs) if executor else map(_pack_batch, jobs)
    try:
        with tqdm(total=len(todo), desc="packing sites", unit="site") as bar:
            for idx, sums, ok, errors in results:
                group["sums"][idx[0] : idx[-1] + 1] = _fill(
                    group["sums"][idx[0] : idx[-1] + 1], idx - idx[0], sums
                )
                state = np.where(ok, PACKED, FAILED).astype(np.uint8)
                group["state"][idx[0] : idx[-1] + 1] = _fill(
                    group["state"][idx[0] : idx[-1] + 1], idx - idx[0], state
                )
                failures.update(errors)
                bar.update(len(idx))
    finally:
        if executor:
            executor.shutdown(cancel_futures=True)
    return failures


def _fill(block: np.ndarray, where: np.ndarray, values: np.ndarray) -> np.ndarray:
    block[where] = values
    return block


def _pack_batch(job):
    root, data_dir, idx, rows, size = job
    images = zarr.open_array(Path(root) / "images", mode="r+")
    sums = np.zeros((len(idx), len(layout.CHANNELS), 2))
    ok = np.zeros(len(idx), bool)
    errors = {}
    for k, (i, (split, exp, plate, well, site)) in enumerate(zip(idx, rows, strict=True)):
        try:
            arr = _resize(load_site(data_dir, split, exp, plate, well, site), size)
        except ImageReadError as e:
            errors[int(i)] = str(e)
            continue
        images[int(i)] = arr
        flat = arr.reshape(arr.shape[0], -1).astype(np.float64)
        sums[k] = np.stack([flat.sum(1), (flat**2).sum(1)], 1)
        ok[k] = True
    return idx, sums, ok, errors


def _resize(site: np.ndarray, size: int) -> np.ndarray:
    if site.shape[-1] == size and site.shape[-2] == size:
        return site
    return np.stack(
        [np.asarray(Image.fromarray(p).resize((size, size), Image.Resampling.BOX)) for p in site]
    )


def _write_failed(out: Path, index: pd.DataFrame, failures: dict[int, str]) -> None:
    frame = index.loc[sorted(failures), ["idx", "id_code", "site"]].assign(
        reason=[failures[i] for i in sorted(failures)]
    )
    atomic_csv(frame, out / "failed.csv")
    for i in sorted(failures)[:10]:
        log.warning("unreadable site left out: %s", failures[i])
    if len(failures) > 10:
        log.warning("... and %d more, listed in %s", len(failures) - 10, out / "failed.csv")


def write_stats(out: str | Path) -> pd.DataFrame:
    """Per-plate, per-channel mean and std from all packed sites and from negative controls."""
    out = Path(out)
    group = zarr.open_group(out / "sites.zarr", mode="r")
    index = pd.read_csv(out / "index.csv")
    sums, state = group["sums"][:], group["state"][:]
    npix = float(np.prod(group["images"].shape[2:]))
    rows = []
    packed = index[state == PACKED]
    for (exp, plate), sub in packed.groupby(["experiment", "plate"]):
        neg = sub[sub["well_type"] == "negative_control"]
        for c, ch in enumerate(layout.CHANNELS):
            row = {"experiment": exp, "plate": plate, "channel": ch}
            for name, part in (("all", sub), ("neg", neg)):
                s = sums[part["idx"].to_numpy(), c]
                n = npix * len(part)
                mean = s[:, 0].sum() / n if n else np.nan
                var = s[:, 1].sum() / n - mean**2 if n else np.nan
                row[f"mean_{name}"], row[f"std_{name}"] = (
                    mean,
                    np.sqrt(max(var, 1e-6)) if n else np.nan,
                )
            rows.append(row)
    stats = pd.DataFrame(rows)
    atomic_csv(stats, out / "stats.csv")
    return stats


def _update_meta(out: Path, **fields) -> None:
    meta = json.loads((out / "store.json").read_text())
    meta.update(fields)
    atomic_text(out / "store.json", json.dumps(meta, indent=1))


class SiteStore:
    """Read access to a packed store; safe to use from DataLoader worker processes."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        meta_path = self.path / "store.json"
        if not meta_path.exists():
            raise StoreError(
                f"{self.path}: not an rcic store (no store.json); run `rcic prepare` first"
            )
        self.meta = json.loads(meta_path.read_text())
        if not self.meta.get("complete"):
            raise StoreError(
                f"{self.path}: packing did not finish; run `rcic prepare` again to resume it"
            )
        self.index = pd.read_csv(self.path / "index.csv", dtype={"well": str})
        self.stats = pd.read_csv(self.path / "stats.csv")
        self._images = None
        self._state = None

    @property
    def size(self) -> int:
        return int(self.meta["size"])

    def _arrays(self):
        if self._images is None:  # opened lazily, so each worker process opens its own
            group = zarr.open_group(self.path / "sites.zarr", mode="r")
            self._images, self._state = group["images"], group["state"][:]
        return self._images, self._state

    @property
    def packed(self) -> np.ndarray:
        """Boolean mask over `index` of the sites that hold an image."""
        return self._arrays()[1] == PACKED

    def read(self, idx: int) -> np.ndarray:
        """One site, uint8 (6, S, S)."""
        return self._arrays()[0][int(idx)]

    def read_many(self, idx: Sequence[int]) -> np.ndarray:
        images = self._arrays()[0]
        return np.stack([images[int(i)] for i in idx])

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_images"] = None  # zarr handles are reopened in the receiving process
        return state

    def plate_stats(self, source: str = "all") -> dict[tuple[str, int], np.ndarray]:
        """(experiment, plate) -> array (6, 2) of channel mean and std, from `all` wells or `neg` controls."""
        out = {}
        for (exp, plate), sub in self.stats.groupby(["experiment", "plate"]):
            sub = sub.sort_values("channel")
            out[(exp, int(plate))] = sub[[f"mean_{source}", f"std_{source}"]].to_numpy(np.float32)
        return out

    def check_matches(self, sites: pd.DataFrame) -> None:
        """Raise StoreError unless every site in `sites` is in this store."""
        key = ["id_code", "site"]
        have = set(map(tuple, self.index[key].to_numpy()))
        want = list(map(tuple, sites[key].to_numpy()))
        missing = [w for w in want if w not in have]
        if missing:
            raise StoreError(
                f"{self.path} does not match the metadata: {len(missing)} site(s) absent, e.g. {missing[:3]}; "
                "run `rcic prepare` on this dataset"
            )

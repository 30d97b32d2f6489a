"""Single-cell crops: a store of one small image per cell, cut around the nuclei of every site.

A CNN that sees whole sites must learn, from a few dozen sites per siRNA, which of the many
differences between two sites matter; one that sees single cells gets every cell of a well as a
sample, centred and at the scale of its structures. This is how profiling tools for cell painting
work (DeepProfiler, for one: crops around nuclei, a CNN trained to name the treatment, features
averaged per well); rcic's version keeps everything else of the chain unchanged:

    rcic prepare --data DATA --out STORE     whole sites, with per-plate statistics
    rcic cells --store STORE --out CELLS     one row per cell: same columns + cell, y, x
    rcic train --store CELLS ...             samples are cells; validation and `rcic predict`
                                             combine each well's cells as they combine its sites

Nuclei are found in the DNA channel (w1) of each site, standardised with its plate's statistics:
local maxima of the image smoothed at about a nucleus' scale, above a threshold. A site where none
is found contributes its centre crop, so every well keeps its sites. Crops reaching past the site's
edge are filled with the plate's mean (zero after normalisation). The cell store keeps the site
store's plate statistics, so a cell is normalised exactly as its site was.

Aligned crops (`rcic cells --align axis` or `front`): a cell's crop is cut from a window about 1.5
times larger, turned so that its nucleus' long axis (second moments of the DNA signal near the
centre) lies horizontal, and cut to size; with ``front``, also mirrored left-right so that the side
of the nucleus holding more cytoplasm signal (ER, w2, and mitochondria, w5) is on the right. Shape
and polarity then sit in the same place in every crop instead of at any angle, so the model need
not learn each at every orientation. An aligned store lists the dihedral views that keep the
alignment (``views`` in store.json: 4 for ``axis``, 2 for ``front``), and training's random flips
and prediction's test-time views draw from those only. `benchmarks/cells.py` measures it.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import zarr
from scipy import ndimage
from tqdm import tqdm

from rcic import layout
from rcic.data.store import FAILED, PACKED, SiteStore
from rcic.errors import InputError
from rcic.fileio import atomic_csv, atomic_text, make_dir

log = logging.getLogger(__name__)

SHARD = 256  # cells per shard file; each cell is its own inner chunk (one partial read)

# The dihedral views (rcic.training.batches.dihedral: k < 4 turns by k quarter turns, k >= 4 mirrors
# left-right first) that keep an alignment: a horizontal axis survives the half turn (2) and both
# mirrors (4: left-right, 6: top-bottom); a cell body on the right survives only the top-bottom one.
ALIGN_VIEWS = {"none": tuple(range(8)), "axis": (0, 2, 4, 6), "front": (0, 6)}


@dataclass(frozen=True)
class CellFinder:
    """How nuclei are found and cropped.

    Attributes:
        crop: side of a cell's crop, in pixels; about a cell's diameter.
        sigma: smoothing of the DNA channel before looking for maxima (default crop / 16).
        min_distance: two nuclei are at least this far apart, in pixels (default crop / 4).
        threshold: a nucleus' smoothed DNA signal, in plate standard deviations above the plate mean.
        max_cells: keep at most this many cells per site (a seeded random subset); 0: all.
        align: ``none``; ``axis``: turn each crop so its nucleus' long axis is horizontal;
            ``front``: and mirror it so that the side with more ER and mitochondria is on the right.
    """

    crop: int = 32
    sigma: float = 0.0
    min_distance: int = 0
    threshold: float = 0.5
    max_cells: int = 0
    align: str = "none"

    def __post_init__(self):
        if self.crop < 8:
            raise InputError(f"cell crop {self.crop}: must be at least 8 pixels")
        if self.threshold != self.threshold or self.max_cells < 0:
            raise InputError("cell finder: threshold must be a number and max_cells >= 0")
        if self.align not in ALIGN_VIEWS:
            raise InputError(
                f"cell alignment {self.align!r}: expected one of {sorted(ALIGN_VIEWS)}"
            )

    @property
    def window(self) -> int:
        """Side of the window cut around a nucleus: the crop, or room to turn it when aligning."""
        return self.crop if self.align == "none" else int(np.ceil(self.crop * 1.5 / 2)) * 2

    @property
    def smoothing(self) -> float:
        return self.sigma or self.crop / 16

    @property
    def spacing(self) -> int:
        return self.min_distance or max(2, self.crop // 4)


def find_nuclei(dna: np.ndarray, finder: CellFinder, rng: np.random.Generator) -> np.ndarray:
    """(k, 2) int centres (row, column) of the nuclei in one standardised DNA image (H, W)."""
    smooth = ndimage.gaussian_filter(dna.astype(np.float32), finder.smoothing)
    peak = ndimage.maximum_filter(smooth, size=2 * finder.spacing - 1, mode="nearest")
    centres = np.argwhere((smooth == peak) & (smooth > finder.threshold))
    if finder.max_cells and len(centres) > finder.max_cells:
        centres = centres[np.sort(rng.choice(len(centres), finder.max_cells, replace=False))]
    return centres


def crop_cells(site: np.ndarray, centres: np.ndarray, crop: int, fill: np.ndarray) -> np.ndarray:
    """(k, 6, crop, crop) uint8 crops of `site` (6, H, W) centred on `centres`; outside: `fill`."""
    half = crop // 2
    padded = np.empty((site.shape[0], site.shape[1] + crop, site.shape[2] + crop), np.uint8)
    padded[:] = fill[:, None, None]
    padded[:, half : half + site.shape[1], half : half + site.shape[2]] = site
    return np.stack([padded[:, y : y + crop, x : x + crop] for y, x in centres])


def nucleus_angle(dna: np.ndarray, radius: float) -> float:
    """Angle in degrees of the long axis of the DNA signal within `radius` of a crop's centre.

    Second moments of the signal above the crop's median; measured from the columns' axis towards
    the rows' (image coordinates), in (-90, 90]. Turning the crop by it (`align_crop`) lays the
    axis horizontal.
    """
    h, w = dna.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    yy -= (h - 1) / 2
    xx -= (w - 1) / 2
    weight = np.clip(dna.astype(np.float32) - np.median(dna), 0, None)
    weight *= yy**2 + xx**2 < radius**2
    total = weight.sum()
    if total <= 0:
        return 0.0
    cy, cx = (weight * yy).sum() / total, (weight * xx).sum() / total
    syy = (weight * (yy - cy) ** 2).sum() / total
    sxx = (weight * (xx - cx) ** 2).sum() / total
    sxy = (weight * (yy - cy) * (xx - cx)).sum() / total
    return float(np.degrees(0.5 * np.arctan2(2 * sxy, sxx - syy)))


def align_crop(window: np.ndarray, crop: int, front: bool) -> tuple[np.ndarray, float, bool]:
    """One cell's (6, crop, crop) aligned crop from its larger (6, W, W) uint8 window.

    Returns the crop, the angle it was turned by (degrees) and whether it was mirrored.
    """
    angle = nucleus_angle(window[0], crop / 3)
    turned = ndimage.rotate(
        window.astype(np.float32), angle, axes=(1, 2), reshape=False, order=1, mode="nearest"
    )
    o = (window.shape[-1] - crop) // 2
    out = turned[:, o : o + crop, o : o + crop]
    mirrored = False
    if front:
        body = out[[1, 4]] - np.median(out[[1, 4]], axis=(1, 2), keepdims=True)
        body = np.clip(body, 0, None).sum(0)
        mirrored = bool(body[:, : crop // 2].sum() > body[:, crop - crop // 2 :].sum())
        if mirrored:
            out = out[:, :, ::-1]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8), angle, mirrored


def pack_cells(
    store: str | Path, out: str | Path, finder: CellFinder = CellFinder(), progress: bool = True
) -> pd.DataFrame:
    """Write the cell store of the site store `store` to `out`; return its index.

    Built in a temporary folder beside `out` and renamed into place when complete, so `out` is
    either a whole cell store or absent.
    """
    st, out = SiteStore(store), Path(out)
    if st.kind == "cells":
        raise InputError(f"{store}: already a cell store; give the site store it was cut from")
    if finder.crop > st.size:
        raise InputError(f"cell crop {finder.crop}: larger than the store's {st.size} px sites")
    if out.exists():
        raise InputError(f"{out}: exists; remove it or choose another folder")
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    make_dir(tmp)
    try:
        index = _cut(st, tmp, finder, progress)
    except BaseException:  # an error or Ctrl-C leaves neither `out` nor the partial folder
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    tmp.rename(out)
    found = int((index["state"] == PACKED).sum())
    sites = int(st.packed.sum())
    log.info(
        "cut %d cells from %d sites (%.1f per site) into %s",
        found,
        sites,
        found / max(1, sites),
        out,
    )
    return index


def _cut(st: SiteStore, tmp: Path, finder: CellFinder, progress: bool) -> pd.DataFrame:
    """Find and crop every site's cells into the folder `tmp`; the cell store's index."""
    stats, packed = st.plate_stats("all"), st.packed
    writer = _CropWriter(tmp, finder.crop)
    rows = []
    sites = tqdm(
        st.index.iterrows(),
        total=len(st.index),
        desc="finding cells",
        unit="site",
        disable=not progress,
    )
    for i, site in sites:
        if not packed[i]:  # an unreadable site stays listed, as in its store
            rows.append(_cell_row(site, 0, (-1, -1), (0.0, False), FAILED))
            writer.add(np.zeros((1, len(layout.CHANNELS), finder.crop, finder.crop), np.uint8))
            continue
        centres, crops, turns = _site_cells(st.read(site["idx"]), site, stats, finder)
        writer.add(crops)
        for k, (centre, turn) in enumerate(zip(centres, turns, strict=True)):
            rows.append(_cell_row(site, k, centre, turn, PACKED))
    writer.close()
    index = pd.DataFrame(rows).drop(columns="idx").reset_index(drop=True)
    index = index.rename_axis("idx").reset_index()
    _write_index(tmp, st, finder, index)
    return index


def _cell_row(site, k: int, centre, turn, state: int) -> dict:
    """The index row of cell `k` of `site`: its centre (y, x), its turn (angle, mirrored)."""
    (y, x), (angle, mirrored) = centre, turn
    return {
        **site.to_dict(),
        "cell": k,
        "y": int(y),
        "x": int(x),
        "angle": round(angle, 1),
        "mirrored": mirrored,
        "state": state,
    }


def _write_index(tmp: Path, st: SiteStore, finder: CellFinder, index: pd.DataFrame) -> None:
    """The cell store's records beside its crops: states, index, statistics, store.json."""
    state = index["state"].to_numpy(np.uint8)
    group = zarr.open_group(tmp / "sites.zarr", mode="a")
    group.create_array(
        "state", shape=state.shape, chunks=(max(1, min(len(state), 65536)),), dtype="uint8"
    )[:] = state
    atomic_csv(index.drop(columns="state"), tmp / "index.csv")
    atomic_csv(st.stats, tmp / "stats.csv")  # a cell is normalised as its site was
    meta = {
        "kind": "cells",
        "size": finder.crop,
        "channels": len(layout.CHANNELS),
        "source": str(st.path),
        "finder": finder.__dict__,
        "views": list(ALIGN_VIEWS[finder.align]),
        "cells": int((index["state"] == PACKED).sum()),
        "sites": int(st.packed.sum()),
        "complete": True,
    }
    atomic_text(tmp / "store.json", json.dumps(meta, indent=1))


def _site_cells(image: np.ndarray, site, stats, finder: CellFinder):
    """One site's nuclei (the site's centre if none is found), their crops and, when aligning,
    each crop's turn (angle, mirrored)."""
    plate = stats[(site["experiment"], int(site["plate"]))]
    mean, std = plate[:, 0], plate[:, 1]
    dna = (image[0].astype(np.float32) - mean[0]) / max(float(std[0]), 1e-3)
    rng = np.random.default_rng([int(site["idx"]), 7])
    centres = find_nuclei(dna, finder, rng)
    if len(centres) == 0:  # no nucleus found: the site's centre stands for it
        centres = np.array([[image.shape[1] // 2, image.shape[2] // 2]])
    fill = np.clip(np.rint(mean), 0, 255).astype(np.uint8)
    crops = crop_cells(image, centres, finder.window, fill)
    turns = [(0.0, False)] * len(crops)
    if finder.align != "none":
        aligned = [align_crop(c, finder.crop, finder.align == "front") for c in crops]
        crops = np.stack([a[0] for a in aligned])
        turns = [a[1:] for a in aligned]
    return centres, crops, turns


class _CropWriter:
    """Appends crops to the `images` array a whole shard at a time, holding at most one shard."""

    def __init__(self, out: Path, crop: int):
        c = len(layout.CHANNELS)
        group = zarr.open_group(out / "sites.zarr", mode="w")
        self.images = group.create_array(
            "images",
            shape=(0, c, crop, crop),
            chunks=(1, c, crop, crop),
            shards=(SHARD, c, crop, crop),
            dtype="uint8",
            fill_value=0,
        )
        self.pending: list[np.ndarray] = []
        self.n_pending = 0

    def add(self, crops: np.ndarray) -> None:
        self.pending.append(crops)
        self.n_pending += len(crops)
        if self.n_pending >= SHARD:
            block = np.concatenate(self.pending)
            full = len(block) // SHARD * SHARD
            self._write(block[:full])
            self.pending, self.n_pending = [block[full:]], len(block) - full

    def close(self) -> None:
        if self.n_pending:
            self._write(np.concatenate(self.pending))
        self.pending, self.n_pending = [], 0

    def _write(self, block: np.ndarray) -> None:
        n = self.images.shape[0]
        self.images.resize((n + len(block), *self.images.shape[1:]))
        self.images[n:] = block

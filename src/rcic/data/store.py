"""Reading the packed image store (`SiteStore`); packing it is rcic.data.packing.

Layout of a store folder::

    STORE/
      store.json   what was packed (size, channels, compression, source) and whether it is complete
      index.csv    one row per site, in array order (the site table of rcic.data.metadata + `idx`)
      sites.zarr/  arrays `images` (N, 6, S, S) uint8 chunked one site per chunk, so a site is one
                   contiguous read; `state` (N,) 0 todo / 1 packed / 2 unreadable; `sums` (N, 6, 2)
                   per-site pixel sums and sums of squares, from which plate statistics are made
      stats.csv    per plate and channel: mean and std over all wells and over negative controls
      failed.csv   sites that could not be read, with the reason

Packing is resumable: sites are marked packed only after their chunk is written, so a run that is
interrupted and started again redoes at most the sites that were in flight.

Packing (rcic.data.packing) can be split over machines sharing the store's folder: ``pack(..., part=(k, n))`` (``rcic
prepare --part K/N``) packs the plates dealt to part k of n (plates in sorted order, every n-th).
Parts write their sites' images into the one `images` array (one chunk per site, so parts never
write the same file) and their progress into arrays of their own (`state.K-of-N`, `sums.K-of-N`,
`failed.K-of-N.csv`); the part that finishes last, or any later `rcic prepare` without --part,
folds them into `state` and `sums`, writes the statistics and marks the store complete.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import zarr

from rcic.errors import StoreError

log = logging.getLogger(__name__)

TODO, PACKED, FAILED = 0, 1, 2  # a site's packing state


def is_url(location: str | Path) -> bool:
    """A store location given as an fsspec URL (``s3://``, ``gs://``, ``memory://``, ...)."""
    return "://" in str(location)


class SiteStore:
    """Read access to a packed store; safe to use from DataLoader worker processes.

    `location` is the store's folder, or an fsspec URL of one on shared or object storage
    (``s3://bucket/rxrx1-store``, ``gs://...``; the filesystem's package, such as s3fs or gcsfs,
    must be installed, and credentials come from the environment as fsspec reads them). The store
    is read there directly: images through zarr's fsspec store, tables once at opening.
    """

    def __init__(self, location: str | Path):
        self.url = str(location).rstrip("/") if is_url(location) else None
        self.path = self.url or Path(location)
        if not self._exists("store.json"):
            raise StoreError(
                f"{self.path}: not an rcic store (no store.json); run `rcic prepare` first"
            )
        self.meta = json.loads(self._read("store.json"))
        if not self.meta.get("complete"):
            raise StoreError(
                f"{self.path}: packing did not finish; run `rcic prepare` again to resume it"
            )
        self.index = pd.read_csv(io.BytesIO(self._read("index.csv")), dtype={"well": str})
        self.stats = pd.read_csv(io.BytesIO(self._read("stats.csv")))
        self._images = None
        self._state = None

    def _exists(self, name: str) -> bool:
        if self.url is None:
            return (self.path / name).exists()
        import fsspec

        try:
            fs, root = fsspec.core.url_to_fs(self.url)
        except (ImportError, ValueError) as e:  # an unknown protocol, or its package is missing
            raise StoreError(f"{self.url}: cannot open this URL ({e})") from None
        return fs.exists(f"{root}/{name}")

    def _read(self, name: str) -> bytes:
        if self.url is None:
            return (self.path / name).read_bytes()
        import fsspec

        with fsspec.open(f"{self.url}/{name}", "rb") as f:
            return f.read()

    def _group(self):
        if self.url is None:
            return zarr.open_group(self.path / "sites.zarr", mode="r")
        from zarr.storage import FsspecStore

        return zarr.open_group(
            store=FsspecStore.from_url(f"{self.url}/sites.zarr", read_only=True), mode="r"
        )

    @property
    def size(self) -> int:
        return int(self.meta["size"])

    @property
    def kind(self) -> str:
        """``sites`` (rcic prepare) or ``cells`` (rcic cells: one row per cell crop)."""
        return str(self.meta.get("kind", "sites"))

    @property
    def views(self) -> tuple[int, ...]:
        """The dihedral views (rcic.training.batches.dihedral) that keep what the store's images share:
        all 8, or those that keep an aligned cell store's alignment (rcic.data.cells)."""
        return tuple(int(k) for k in self.meta.get("views", range(8)))

    def _arrays(self):
        if self._images is None:  # opened lazily, so each worker process opens its own
            group = self._group()
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

    def index_of(self, sites: pd.DataFrame) -> pd.DataFrame:
        """The index rows of the sites in `sites`, with their labels, well types and splits taken
        from `sites` (the metadata, which may fill in labels the store was packed without)."""
        mine = ["sirna", "well_type", "split"]
        return self.index.drop(columns=mine, errors="ignore").merge(
            sites[["id_code", "site", *mine]], on=["id_code", "site"]
        )

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

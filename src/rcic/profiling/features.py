"""`rcic features --kind cellprofiler` over a whole store: plate by plate, in parallel, resumable.

Each plate is one job (a worker process segments and measures its sites, rcic.profiling.cpfeatures) and
leaves one file: its wells' median profiles in ``OUT.parts/``, and, when asked, its cells in
``CELLS/`` (a folder of Parquet files, one per plate, that pandas and pyarrow read as one table)
and its labels in a zarr array beside the store's sites. A plate whose file exists is not measured
again, so a run that was stopped resumes where it was. ``--part K/N`` deals plates exactly as
`rcic prepare --part` does; whichever run finds every plate measured writes the profile table and
removes ``OUT.parts/``.

Masks (``--masks M.zarr``): array ``labels`` (sites, 3, H, W) int32 in the order of the store's
``index.csv`` (row ``idx``), nuclei, cells and cytoplasm per site, 0 where a site was not
measured; attribute ``objects`` names the three.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from rcic.data.segment import OBJECTS, Segmenter
from rcic.errors import InputError
from rcic.fileio import atomic_path, make_dir
from rcic.profiling import cpfeatures

log = logging.getLogger(__name__)

WELL_KEYS = ["id_code", "experiment", "plate", "well", "cell_type", "split", "sirna", "well_type"]


@dataclass(frozen=True)
class FeatureJob:
    """Everything one plate's worker needs (picklable)."""

    store: str
    sites: pd.DataFrame  # the plate's rows of the store index: idx, id_code, site, ...
    well_file: Path
    cells_file: Path | None
    masks: str | None
    segmenter: Segmenter
    measurements: cpfeatures.Measurements


def plate_name(split: str, experiment: str, plate) -> str:
    return f"{split}-{experiment}-{plate}"


def measure_plate(job: FeatureJob) -> int:
    """Segment and measure one plate's sites; write its well medians (and cells); return how many
    cells it held."""
    import zarr

    from rcic.data.store import SiteStore

    _accelerate()
    store = SiteStore(job.store)
    masks = zarr.open_array(job.masks, mode="r+") if job.masks else None
    frames = []
    for idx, code, site in job.sites[["idx", "id_code", "site"]].itertuples(index=False):
        labels, cells = cpfeatures.segment_and_measure(
            store.read(idx), job.segmenter, job.measurements
        )
        if masks is not None:
            masks[int(idx)] = labels
        frames.append(cells.assign(Metadata_id_code=code, Metadata_Site=int(site)))
    cells = pd.concat(frames, ignore_index=True)
    features = cpfeatures.profile_columns(cells)
    if job.cells_file is not None:
        _write_parquet(_cell_table(cells), job.cells_file)
    _write_parquet(cpfeatures.well_medians(cells, features), job.well_file)
    return len(cells)


def _cell_table(cells: pd.DataFrame) -> pd.DataFrame:
    """Per-cell rows with the ``Metadata_*`` columns first."""
    meta = ["Metadata_id_code", "Metadata_Site", "Metadata_ObjectNumber"]
    return cells[meta + [c for c in cells.columns if c not in meta]]


def _write_parquet(frame: pd.DataFrame, path: Path) -> None:
    with atomic_path(path, ".tmp.parquet") as tmp:
        frame.to_parquet(tmp, index=False)


def _accelerate() -> None:
    """cp-measure's numba kernels (texture and intensity 5-10x faster) where numba is installed."""
    import cp_measure

    try:
        import numba  # noqa: F401
    except ImportError:
        return
    cp_measure.set_accelerator("numba")


def site_index(store, sites: pd.DataFrame) -> pd.DataFrame:
    """The store's index rows of `sites`, with the labels and splits of `sites`."""
    index = store.index_of(sites)
    if index.empty:
        raise InputError(f"{store.path}: none of the dataset's sites are in this store")
    return index


def cellprofiler_table(
    store_location,
    sites: pd.DataFrame,
    out: str | Path,
    *,
    segmenter: Segmenter | None = None,
    measurements: cpfeatures.Measurements | None = None,
    workers: int = 1,
    part: tuple[int, int] | None = None,
    cells_dir: str | Path | None = None,
    masks: str | Path | None = None,
) -> pd.DataFrame | None:
    """Measure every plate of `sites` (those dealt to `part`) not measured yet; once every plate
    is, return the per-well profile table (for `rcic.tables.write_table`), else None. `segmenter`
    and `measurements` default to rcic.data.segment's and rcic.profiling.cpfeatures' defaults."""
    from rcic.data.packing import part_mask
    from rcic.data.store import SiteStore

    segmenter = segmenter or Segmenter()
    measurements = measurements or cpfeatures.Measurements()
    store = SiteStore(store_location)
    index = site_index(store, sites)
    if masks:
        _open_masks(masks, len(store.index), store.size)
    parts = make_dir(Path(str(out) + ".parts"))
    cells_dir = make_dir(cells_dir) if cells_dir else None
    index = index.assign(mine=part_mask(index, part))
    jobs = []
    for (split, exp, plate), rows in index.groupby(["split", "experiment", "plate"]):
        name = plate_name(split, exp, plate)
        done = (parts / f"{name}.parquet").exists()
        if rows["mine"].iat[0] and not done:
            cells_file = cells_dir / f"{name}.parquet" if cells_dir else None
            jobs.append(
                FeatureJob(
                    str(store.path),
                    rows,
                    parts / f"{name}.parquet",
                    cells_file,
                    str(masks) if masks else None,
                    segmenter,
                    measurements,
                )
            )
    _run(jobs, workers)
    return combine(index, parts)


def _run(jobs: list[FeatureJob], workers: int) -> None:
    from rcic.parallel import ordered_map

    n_sites = sum(len(j.sites) for j in jobs)
    log.info("measuring %d plates (%d sites) with %d worker(s)", len(jobs), n_sites, workers)
    with (
        ordered_map(measure_plate, jobs, workers) as results,
        tqdm(total=n_sites, desc="segment + measure", unit="site") as bar,
    ):
        for job, _ in zip(jobs, results, strict=True):
            bar.update(len(job.sites))


def _open_masks(path, n_sites: int, size: int) -> None:
    """Create the masks array unless a matching one exists (a resumed run keeps its masks)."""
    import zarr

    path = Path(path)
    if path.exists():
        arr = zarr.open_array(path, mode="r")
        if arr.shape == (n_sites, len(OBJECTS), size, size):
            return
        raise InputError(f"{path}: holds masks of shape {arr.shape}, not of this store's sites")
    arr = zarr.create_array(
        store=str(path),
        shape=(n_sites, len(OBJECTS), size, size),
        chunks=(1, len(OBJECTS), size, size),
        dtype="int32",
        fill_value=0,
    )
    arr.attrs["objects"] = list(OBJECTS)


def combine(index: pd.DataFrame, parts: Path) -> pd.DataFrame | None:
    """The profile table of every well of `index`, once each of its plates has a file in `parts`
    (None before); wells without cells and features missing in a well take the plate's median."""
    from rcic.data.tables import make_table, metadata_frame

    files = {plate_name(*k): k for k in index.groupby(["split", "experiment", "plate"]).groups}
    missing = [n for n in files if not (parts / f"{n}.parquet").exists()]
    if missing:
        log.info("%d plate(s) still to measure (other parts?), e.g. %s", len(missing), missing[0])
        return None
    medians = pd.concat([pd.read_parquet(parts / f"{n}.parquet") for n in files])
    wells = index.groupby(WELL_KEYS, as_index=False, dropna=False).agg(n_sites=("site", "size"))
    merged = wells.merge(medians, left_on="id_code", right_on="Metadata_id_code", how="left")
    values = _fill(merged, [c for c in medians.columns if not c.startswith("Metadata_")])
    meta = metadata_frame(merged, "rcic", n_sites=merged["n_sites"])
    meta["Metadata_n_cells"] = merged["Metadata_n_cells"].fillna(0).astype(int).to_numpy()
    return make_table(meta, values.to_numpy(), list(values.columns))


def _fill(merged: pd.DataFrame, features: list[str]) -> pd.DataFrame:
    """The features that have a value in some well, gaps filled by the plate's median (or 0)."""
    values = merged[features].astype(np.float32)
    values = values.loc[:, values.notna().any()]
    plate_median = values.groupby([merged["experiment"], merged["plate"]]).transform("median")
    return values.fillna(plate_median).fillna(0.0)


def remove_parts(out: str | Path) -> None:
    shutil.rmtree(Path(str(out) + ".parts"), ignore_errors=True)

"""Segmentation and CellProfiler measurements: nuclei against the truth, what each group costs, speed.

Usage: python benchmarks/segmentation.py [--work /tmp/rcic-bench-segmentation] [--seed 0]
        [--shared ../shared/rxrx1] [--docs docs] [--workers 2]

1. Real sites (where ../shared/rxrx1 is present): the nuclei rcic.data.segment finds on site 1 of well
   B02, plate 1, of each cell type's first experiment, beside a count made by hand on the same site
   (`HAND_COUNTS`); writes docs/segmentation.png, a 256 px quarter of each with nuclei (red) and
   cells (green) outlined.
2. The demo screen (generator seed `--seed`): nuclei found per site against the number of cells
   the generator drew there (its site_cells.csv), per cell type, over every site.
3. Speed, on the same screen, with `--workers` processes: segmentation alone (sites/s over every
   site) and the whole `rcic features --kind cellprofiler` (segmentation, the default measurement
   groups, medians per well, the table written), timed as its own process; and what each
   cp-measure group costs on one site of each cell type (one process, the median of 3 calls).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from rcic import __version__
from rcic.data import metadata, packing
from rcic.data.images import read_png
from rcic.data.segment import Segmenter, overlay
from rcic.data.store import SiteStore
from rcic.parallel import ordered_map
from rcic.profiling import cpfeatures
from rcic.profiling import features as features_pipeline
from rcic.synthetic import synth

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import timed  # noqa: E402

# Nuclei counted by hand (on a screen, tile by tile, a nucleus counted in the tile holding its
# centre) on site 1 of well B02, plate 1, of each cell type's first experiment: HUVEC, RPE and U2OS
# on all four 256 px quarters; HEPG2, about four times denser, on the 8 of its 16 tiles of 128 px
# that lie on the two diagonals (413 nuclei), times two.
HAND_COUNTS = {"HEPG2": 826, "HUVEC": 136, "RPE": 109, "U2OS": 163}


def real_site(shared: Path, cell_type: str) -> np.ndarray:
    root = shared / "images" / "train" / f"{cell_type}-01" / "Plate1"
    return np.stack([read_png(root / f"B02_s1_w{c}.png") for c in range(1, 7)])


def real_counts(shared: Path, docs: Path) -> None:
    print("real sites (B02 site 1, plate 1 of each first experiment): nuclei rcic finds vs by hand")
    quarters = []
    for ct, hand in HAND_COUNTS.items():
        site = real_site(shared, ct)
        labels = Segmenter().segment(site)
        found = int(labels[0].max())
        print(f"  {ct:6} rcic {found:4d}  by hand {hand:4d}  ratio {found / hand:.2f}")
        quarters.append(overlay(site, labels)[:256, :256])
    picture = np.concatenate(quarters, axis=1)
    Image.fromarray(picture).save(docs / "segmentation.png")
    print(
        f"  wrote {docs / 'segmentation.png'} (HEPG2 HUVEC RPE U2OS, the top-left quarter of each)"
    )


def _segment_plate(job) -> list[tuple[str, int, int]]:
    store, rows = job
    store = SiteStore(store)
    seg = Segmenter()
    return [
        (code, site, int(seg.segment(store.read(idx))[0].max()))
        for idx, code, site in rows[["idx", "id_code", "site"]].itertuples(index=False)
    ]


def synthetic_counts(data: Path, st: Path, workers: int) -> None:
    index = SiteStore(st).index
    jobs = [(str(st), rows) for _, rows in index.groupby(["experiment", "plate"])]
    t0 = time.perf_counter()
    with ordered_map(_segment_plate, jobs, workers) as results:
        found = pd.DataFrame(
            [r for rows in results for r in rows], columns=["id_code", "site", "found"]
        )
    seconds = time.perf_counter() - t0
    truth = pd.read_csv(data / "site_cells.csv").merge(found, on=["id_code", "site"])
    truth["cell_type"] = truth["id_code"].str.split("-").str[0]
    truth["error"] = (truth["found"] - truth["n_cells"]).abs() / truth["n_cells"]
    print(
        f"\ndemo screen: nuclei found per site against the cells the generator drew "
        f"({len(truth)} sites)"
    )
    print(
        f"  {'cell type':9} {'drawn':>7} {'found':>7} {'ratio':>6} {'median |err|':>13} "
        f"{'sites within 25%':>17}"
    )
    for ct, g in truth.groupby("cell_type"):
        print(
            f"  {ct:9} {g['n_cells'].sum():7d} {g['found'].sum():7d} "
            f"{g['found'].sum() / g['n_cells'].sum():6.2f} {g['error'].median():13.3f} "
            f"{(g['error'] <= 0.25).mean():17.3f}"
        )
    print(
        f"\nspeed, {workers} processes: segmentation alone {len(truth) / seconds:.1f} sites/s "
        f"({seconds:.1f} s for {len(truth)} sites)"
    )


def whole_features(data: Path, st: Path, work: Path, workers: int) -> None:
    out = work / "cellprofiler.parquet"
    out.unlink(missing_ok=True)
    features_pipeline.remove_parts(out)
    cmd = [
        sys.executable,
        "-m",
        "rcic.cli",
        "features",
        "--kind",
        "cellprofiler",
        "--data",
        str(data),
        "--store",
        str(st),
        "--out",
        str(out),
        "--workers",
        str(workers),
    ]
    seconds, peak = timed(cmd)
    n_sites = len(SiteStore(st).index)
    table = pd.read_parquet(out)
    n_features = sum(not c.startswith("Metadata_") for c in table.columns)
    print(
        f"  rcic features --kind cellprofiler: {n_sites / seconds:.2f} sites/s ({seconds:.0f} s "
        f"for {n_sites} sites, peak {peak:.0f} MB in the main process), {len(table)} wells x "
        f"{n_features} features"
    )


def group_costs(st: Path) -> None:
    """Seconds per site of each cp-measure group, on the first treatment site of each cell type."""
    from cp_measure.featurizer import featurize

    features_pipeline._accelerate()
    store = SiteStore(st)
    first = store.index[store.index["well_type"] == "treatment"].drop_duplicates("cell_type")
    first = first.sort_values("cell_type")
    print(
        "\ncost per site of each cp-measure group (1 process; nuclei, cells, cytoplasm x 6 "
        "channels; median of 3 calls), seconds:"
    )
    print(f"  {'group':26} {'default':>7} " + " ".join(f"{ct:>6}" for ct in first["cell_type"]))
    sites = [store.read(i) for i in first["idx"]]
    labels = [Segmenter().segment(s) for s in sites]
    cells = [int(lab[0].max()) for lab in labels]
    print(f"  {'(nuclei on the site)':26} {'':>7} " + " ".join(f"{n:6d}" for n in cells))
    totals = np.zeros(len(sites))
    for group, default in cpfeatures.GROUPS.items():
        config = cpfeatures.Measurements((group,)).config()
        row = []
        for site, lab in zip(sites, labels, strict=True):
            pixels = (site / 255.0).astype(np.float32)[None]
            times = []
            for _ in range(4):  # the first call compiles numba's kernels
                t0 = time.perf_counter()
                with warnings.catch_warnings(), np.errstate(all="ignore"):
                    warnings.simplefilter("ignore")
                    featurize(pixels, lab[None], config)
                times.append(time.perf_counter() - t0)
            row.append(float(np.median(times[1:])))
        if default:
            totals += row
        print(f"  {group:26} {'yes' if default else 'no':>7} " + " ".join(f"{t:6.3f}" for t in row))
    print(f"  {'default set':26} {'':>7} " + " ".join(f"{t:6.3f}" for t in totals))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/rcic-bench-segmentation"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--shared", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "rxrx1"
    )
    ap.add_argument("--docs", type=Path, default=Path(__file__).resolve().parents[1] / "docs")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()
    print(f"rcic {__version__}; {args.workers} worker processes on {os.cpu_count()} cores")
    if (args.shared / "images").exists():
        real_counts(args.shared, args.docs)
    data, st = args.work / "data", args.work / "store"
    if not (data / "site_cells.csv").exists():
        synth.generate(data, "demo", args.seed)
    sites = metadata.load_metadata(data)
    if not (st / "store.json").exists():
        packing.pack(data, sites, st)
    synthetic_counts(data, st, args.workers)
    whole_features(data, st, args.work, args.workers)
    group_costs(st)


if __name__ == "__main__":
    main()

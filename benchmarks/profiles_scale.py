"""`rcic profiles` on tables of the full RxRx1 layout: time and peak memory at 1/8, 1/2 and all.

Usage: python benchmarks/profiles_scale.py [--dims 128 1024] [--fractions 0.125 0.5 1]
                                          [--work /tmp/rcic-profiles-scale]

The wells are the `rxrx1` preset's plate maps (51 experiments, every well of train, test and
controls, every label known: the largest table `rcic profiles` can be handed for RxRx1). Each
well's profile has the structure of a screen: a per-siRNA direction (its pathway's plus its own),
a per-experiment offset and per-well noise, float32, `--dims` wide. A fraction keeps that share of
the experiments, as `benchmarks/scale.py` picks them. Each size runs `rcic profiles --correction
standardize --relationships PAIRS` as its own process (pycytominer's correction, the consensus,
copairs' activity mAP, EFAAR recall of the pathway pairs): wall time and peak resident memory.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from _measure import timed
from scale import pick_experiments

from rcic.data import tables
from rcic.synthetic import synth

PATHWAYS = 150  # as the rxrx1 preset draws them


def profile_table(wells: pd.DataFrame, dims: int, seed: int = 0) -> pd.DataFrame:
    """Every well's synthetic profile: siRNA direction + experiment offset + noise."""
    rng = np.random.default_rng(seed)
    n_classes = int(wells["sirna"].max()) + 1
    pathway = rng.integers(PATHWAYS, size=n_classes)
    direction = rng.normal(size=(PATHWAYS, dims))[pathway] + rng.normal(size=(n_classes, dims))
    exps = {e: rng.normal(0, 2.0, dims) for e in wells["experiment"].unique()}
    values = 0.5 * direction[wells["sirna"].to_numpy()]
    values += np.stack([exps[e] for e in wells["experiment"]])
    values += rng.normal(size=values.shape)
    meta = tables.metadata_frame(wells, "rcic-synthetic", n_sites=np.full(len(wells), 2))
    return tables.make_table(meta, values.astype(np.float32)), pathway


def pathway_pairs(pathway: np.ndarray, present: set[int]) -> pd.DataFrame:
    """Every pair of siRNAs of one pathway, by the names profile tables give them."""
    rows = []
    for p in np.unique(pathway):
        ids = [i for i in np.flatnonzero(pathway == p) if i in present]
        rows += [(f"sirna_{a}", f"sirna_{b}") for k, a in enumerate(ids) for b in ids[k + 1 :]]
    return pd.DataFrame(rows, columns=["entity1", "entity2"])


def measure(work: Path, wells: pd.DataFrame, dims: int, fraction: float) -> dict:
    keep = wells["experiment"].isin(pick_experiments(None, fraction))
    table, pathway = profile_table(wells[keep].reset_index(drop=True), dims)
    path, pairs = work / f"wells-{dims}-{fraction}.parquet", work / "pairs.csv"
    tables.write_table(table, path, {"command": "benchmarks/profiles_scale.py", "split": "all"})
    treated = set(wells.loc[keep & (wells["well_type"] == "treatment"), "sirna"].astype(int))
    pathway_pairs(pathway, treated).to_csv(pairs, index=False)
    cmd = [sys.executable, "-m", "rcic.cli", "profiles", "--table", str(path)]
    cmd += ["--correction", "standardize", "--relationships", str(pairs)]
    seconds, mb = timed([*cmd, "--out", str(work / "out")])
    table_mb = table.memory_usage(deep=True).sum() / 2**20
    return {
        "dims": dims,
        "fraction": fraction,
        "wells": len(table),
        "seconds": round(seconds, 1),
        "ms/well": round(1000 * seconds / len(table), 3),
        "peak MB": round(mb),
        "table MB": round(table_mb),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dims", type=int, nargs="+", default=[128, 1024])
    ap.add_argument("--fractions", type=float, nargs="+", default=[0.125, 0.5, 1.0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/rcic-profiles-scale"))
    args = ap.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    wells, _ = synth.make_layout(synth.PRESETS["rxrx1"], 0)
    print(f"rxrx1 preset layout: {len(wells)} wells, {wells['experiment'].nunique()} experiments")
    rows = []
    for dims in args.dims:
        for fraction in args.fractions:
            rows.append(measure(args.work, wells, dims, fraction))
            print(rows[-1], flush=True)
    table = pd.DataFrame(rows)
    print(table.to_string(index=False))
    for dims, part in table.groupby("dims"):
        a, b = part.iloc[0], part.iloc[-1]
        print(
            f"{dims} dims: peak memory {a['peak MB']} -> {b['peak MB']} MB from {a['fraction']} to "
            f"{b['fraction']} of the layout (+{b['peak MB'] - a['peak MB']} MB; the table itself "
            f"+{b['table MB'] - a['table MB']} MB); time per well x{b['ms/well'] / a['ms/well']:.2f}"
        )
    shutil.rmtree(args.work, ignore_errors=True)


if __name__ == "__main__":
    main()

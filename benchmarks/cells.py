"""Single cells against whole sites on the `demo` screen, several seeds, equal optimiser steps.

Usage: python benchmarks/cells.py [--work DIR] [--seeds 0 1 2] [--arms sites cells aligned]

The screen and site store are those of benchmarks/recipes.py (same --work, screen seed 0): a screen
that chose nothing in configs/cells.yaml (that was chosen on the certificate screen, seed 5).
- whole sites: configs/demo.yaml (what benchmarks/recipes.py measured), with its epochs raised so
  that it takes as many optimiser steps as the cell recipe;
- single cells: configs/cells.yaml on `rcic cells --crop 32` of the same store;
- aligned single cells: the same recipe on `rcic cells --crop 32 --align ALIGN` (the same nuclei,
  so the same cells and steps; flips and test-time views limited to those that keep the alignment).
All hold out fold 0. `--arms` trains and prints only some of them (finished runs are cached in
WORK/cells.json and reused). Accuracy per well of treatment wells, 8 views (of every site, or of every
cell of both sites): `val` on fold 0's held-out training experiments, `test` on the test experiments.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
from recipes import ALIGN, CROP, _print_row, n_samples, train_and_score

from rcic.data import cells, metadata, packing
from rcic.data.store import SiteStore
from rcic.synthetic import synth
from rcic.training import config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/rcic-bench-recipes"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument(
        "--arms",
        nargs="+",
        choices=("sites", "cells", "aligned"),
        default=["sites", "cells", "aligned"],
    )
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    data, site_dir, cell_dir = args.work / "demo", args.work / "store", args.work / f"cells{CROP}"
    aligned_dir = args.work / f"cells{CROP}-{ALIGN}"
    if not (data / "test_labels.csv").exists():
        synth.generate(data, "demo", seed=0)
    sites = metadata.load_metadata(data)
    if not (site_dir / "store.json").exists():
        packing.pack(data, sites, site_dir)
    t0 = time.perf_counter()
    if not (cell_dir / "store.json").exists():
        cells.pack_cells(site_dir, cell_dir, cells.CellFinder(crop=CROP), progress=False)
    t1 = time.perf_counter()
    if not (aligned_dir / "store.json").exists():
        finder = cells.CellFinder(crop=CROP, align=ALIGN)
        cells.pack_cells(site_dir, aligned_dir, finder, progress=False)
    t2 = time.perf_counter()
    sst, cst, ast = SiteStore(site_dir), SiteStore(cell_dir), SiteStore(aligned_dir)
    assert int(ast.packed.sum()) == int(cst.packed.sum())  # the same nuclei, so the same steps
    n_cells = int(cst.packed.sum())
    print(
        f"demo screen (seed 0): {n_cells} cells from {int(sst.packed.sum())} sites "
        f"({n_cells / sst.packed.sum():.1f} per site, {t1 - t0:.0f} s to cut, {t2 - t1:.0f} s aligned)"
    )
    labelled = synth.with_test_labels(sites, data)
    cell_cfg = config.load_config(CONFIGS / "cells.yaml", ["fold=0"])
    steps = cell_cfg.epochs * (n_samples(cell_cfg, sites, cst) // cell_cfg.batch_size)
    site_cfg = config.load_config(CONFIGS / "demo.yaml", ["fold=0"])
    site_epochs = max(1, round(steps / (n_samples(site_cfg, sites, sst) // site_cfg.batch_size)))
    arms = {
        "whole sites (demo.yaml)": ("sites", "demo.yaml", [f"epochs={site_epochs}"], site_dir, sst),
        "single cells (cells.yaml)": ("cells", "cells.yaml", [], cell_dir, cst),
        f"aligned cells ({ALIGN})": ("aligned", "cells.yaml", [], aligned_dir, ast),
    }
    print(f"{steps} optimiser steps for each; seeds {args.seeds}; accuracy per well, 8 views")
    print(f"{'recipe':26} {'val (fold 0) mean+-sd':>22} {'test mean+-sd':>16}   per seed (test)")
    path = args.work / "cells.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    for name, (arm, file, extra, where, st) in arms.items():
        if arm not in args.arms:
            continue
        for seed in args.seeds:
            key = f"{name}|{seed}"
            if key in results:
                continue
            cfg = config.load_config(CONFIGS / file, ["fold=0", *extra, f"seed={seed}"])
            tag = f"-{ALIGN}" if arm == "aligned" else ""
            run = args.work / "runs" / f"{file.split('.')[0]}{tag}-steps{steps}-s{seed}"
            results[key] = train_and_score(cfg, run, sites, labelled, where, st)
            path.write_text(json.dumps(results, indent=1))
        rows = [results[f"{name}|{s}"] for s in args.seeds]
        _print_row(name, rows)
        print(f"{'':26} {np.mean([r['minutes'] for r in rows]):.1f} min per run (train + predict)")


if __name__ == "__main__":
    main()

"""Held-out-experiment accuracy on the `demo` screen: the bronze-medal way against rcic's recipes.

Usage: python benchmarks/recipes.py [--work DIR] [--epochs 12] [--only NAME ...]
Every recipe trains the same backbone for the same number of epochs on fold 0 (whole experiments
held out) and is scored per well on those experiments, with the 8-view TTA, on treatment wells.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from rcic import config, metadata, predict, store, synth, train
from rcic.metrics import treatment_argmax

COMMON = ["backbone=resnet18", "batch_size=64", "fold=0", "seed=0"]
RECIPES = {
    # the bronze-medal reference solution's way: plain softmax, one global normalisation, one site,
    # no control wells, no cell type
    "bronze": [
        "head=softmax",
        "normalisation=global",
        "sites=1",
        "use_controls=false",
        "cell_type_input=false",
    ],
    "rcic-plate": ["head=both", "normalisation=plate"],
    "rcic-plate_neg": ["head=both", "normalisation=plate_neg"],
    "rcic-image": ["head=both", "normalisation=image"],
    "rcic-global": ["head=both", "normalisation=global"],
    "rcic-plate-softmax": ["head=softmax", "normalisation=plate"],
    "rcic-plate-nocontrols": ["head=both", "normalisation=plate", "use_controls=false"],
}


def held_out_accuracy(run: Path, sites, st, one_site: bool) -> float:
    model, cfg = predict.load_checkpoint(run, "last")
    chosen = predict.split_wells(sites, "0", cfg)
    if one_site:
        chosen = chosen[chosen["site"] == 1]
    res = predict.predict_logits(model, cfg, chosen, st, views=8, progress=False)
    return float((treatment_argmax(res["logits"]) == res["sirna"]).mean())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", type=Path, default=Path("/tmp/rcic-bench-recipes"))
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--only", nargs="*")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    data = args.work / "demo"
    if not (data / "test_labels.csv").exists():
        synth.generate(data, "demo", seed=0)
    sites = metadata.load_metadata(data)
    st_path = args.work / "store"
    if not (st_path / "store.json").exists():
        store.pack(data, sites, st_path)
    st = store.SiteStore(st_path)
    n_treat = int((sites.well_type == "treatment").sum() / 2)
    print(
        f"demo screen: {n_treat} treatment wells, 80 siRNAs (chance 1/80 = 0.0125); {args.epochs} epochs each, fold 0 held out"
    )
    results = {}
    for name, overrides in RECIPES.items():
        if args.only and name not in args.only:
            continue
        cfg = config.load_config(None, COMMON + overrides + [f"epochs={args.epochs}"])
        run = args.work / name
        t0 = time.perf_counter()
        row = train.train(cfg, sites, st_path, run, progress=False)
        minutes = (time.perf_counter() - t0) / 60
        tta = held_out_accuracy(run, sites, st, one_site=cfg.sites == "1")
        results[name] = {
            "val_1view": row["val"]["overall"],
            "val_tta8": tta,
            "minutes": minutes,
            "per_cell_type": row["val"]["cell_type"],
        }
        print(
            f"{name:24} held-out accuracy: 1 view {row['val']['overall']:.3f}, 8-view TTA {tta:.3f}   "
            f"({minutes:.1f} min)  {' '.join(f'{k} {v:.2f}' for k, v in row['val']['cell_type'].items())}",
            flush=True,
        )
    (args.work / "recipes.json").write_text(json.dumps(results, indent=1))
    best = max(
        (k for k in results if k.startswith("rcic")),
        key=lambda k: results[k]["val_tta8"],
        default=None,
    )
    if best and "bronze" in results:
        print(
            f"best rcic recipe: {best} ({results[best]['val_tta8']:.3f}) vs bronze {results['bronze']['val_tta8']:.3f}: "
            f"x{results[best]['val_tta8'] / max(results['bronze']['val_tta8'], 1e-9):.1f}"
        )


if __name__ == "__main__":
    main()

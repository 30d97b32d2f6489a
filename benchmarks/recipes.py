"""Recipes on the `demo` screen, several seeds: rcic's defaults against the bronze-medal way and
against each of its own switches, chosen on one split and reported on another.

Usage: python benchmarks/recipes.py [--work DIR] [--seeds 0 1 2] [--only NAME ...]

Every recipe trains resnet18 on the same screen with fold 0's experiments held out, for the same
number of optimiser steps as rcic's recipe (`epochs` is scaled by the recipe's number of training
samples: the bronze way sees one site per well and no controls, so it gets more epochs, not fewer
steps). Two accuracies per run, per well with the 8-view TTA (one site for one-site recipes):
- `val`: fold 0's held-out training experiments. This is where defaults are chosen.
- `test`: the screen's test experiments, never used to choose anything. This is what is reported.
Also: pseudo-label rounds against the same number of extra epochs without them, and the embedding
heads (correction chosen on fold 0 by leave-one-experiment-out, reported on the test experiments).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np

from rcic import config, metadata, packing, predict, runs, samples, synth, train
from rcic.metrics import treatment_argmax
from rcic.store import SiteStore

DEMO = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"
BRONZE = [
    "head=softmax",
    "normalisation=global",
    "sites=1",
    "use_controls=false",
    "cell_type_input=false",
]
RECIPES = {
    "rcic (demo.yaml)": [],
    "bronze way": BRONZE,
    "bronze way + plate norm": [*BRONZE[:1], "normalisation=plate", *BRONZE[2:]],
    "softmax only": ["head=softmax"],
    "no control wells": ["use_controls=false"],
    "no cell-type input": ["cell_type_input=false"],
    "normalisation=plate_neg": ["normalisation=plate_neg"],
    "normalisation=image": ["normalisation=image"],
    "normalisation=global": ["normalisation=global"],
}


def accuracy(run: Path, sites, st: SiteStore, split: str) -> float:
    model, cfg = runs.load_checkpoint(run, "last")
    chosen = samples.split_sites(sites, split, cfg)
    res = predict.predict_logits(model, cfg, chosen, st, views=8, progress=False)
    return float((treatment_argmax(res["logits"]) == res["sirna"]).mean())


def train_and_score(cfg, run: Path, sites, labelled, store_path: Path, st: SiteStore) -> dict:
    """Train `run` (unless it has finished) and score it per well on fold 0 and on the test
    experiments (`labelled`: the sites with the hidden test labels filled in)."""
    t0 = time.perf_counter()
    if not (run / "checkpoints" / "last.pt").exists():
        train.train(cfg, sites, store_path, run, progress=False)
    return {
        "val": accuracy(run, sites, st, "0"),
        "test": accuracy(run, labelled, st, "test"),
        "epochs": cfg.epochs,
        "minutes": (time.perf_counter() - t0) / 60,
    }


def n_samples(cfg, sites, st) -> int:
    return len(samples.select_samples(sites, st, cfg).train_rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/rcic-bench-recipes"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--screen-seed", type=int, default=0)
    ap.add_argument("--only", nargs="*")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    data, st_path = args.work / "demo", args.work / "store"
    if not (data / "test_labels.csv").exists():
        synth.generate(data, "demo", seed=args.screen_seed)
    sites = metadata.load_metadata(data)
    if not (st_path / "store.json").exists():
        packing.pack(data, sites, st_path)
    labelled = synth.with_test_labels(sites, data)
    st = SiteStore(st_path)
    base = config.load_config(DEMO, ["fold=0"])
    base_n = n_samples(base, sites, st)
    print(
        f"demo screen (seed {args.screen_seed}), 80 siRNAs (chance 0.0125); resnet18, "
        f"{base.epochs} epochs x {base_n} samples of rcic's recipe = {base.epochs * base_n // base.batch_size} "
        f"steps for every recipe; seeds {args.seeds}; accuracy per well, 8-view TTA"
    )
    print(f"{'recipe':26} {'val (fold 0) mean+-sd':>22} {'test mean+-sd':>16}   per seed (test)")
    results = _load(args.work)
    for name, overrides in RECIPES.items():
        if args.only and name not in args.only:
            continue
        cfg0 = config.load_config(DEMO, ["fold=0", *overrides])
        epochs = max(1, round(base.epochs * base_n / n_samples(cfg0, sites, st)))
        for seed in args.seeds:
            key = f"{name}|{seed}"
            if key in results:
                continue
            cfg = config.load_config(
                DEMO, ["fold=0", *overrides, f"epochs={epochs}", f"seed={seed}"]
            )
            run = args.work / "runs" / f"{_slug(name)}-s{seed}"
            results[key] = train_and_score(cfg, run, sites, labelled, st_path, st)
            _save(args.work, results)
        _print_row(name, [results[f"{name}|{s}"] for s in args.seeds])
    (args.work / "recipes.json").write_text(json.dumps(results, indent=1))


def _print_row(name: str, rows: list[dict]) -> None:
    val = np.array([r["val"] for r in rows])
    test = np.array([r["test"] for r in rows])
    print(
        f"{name:26} {val.mean():14.3f} +- {val.std(ddof=1) if len(val) > 1 else 0:.3f} "
        f"{test.mean():8.3f} +- {test.std(ddof=1) if len(test) > 1 else 0:.3f}   "
        + " ".join(f"{t:.3f}" for t in test)
        + f"   ({rows[0]['epochs']} epochs)",
        flush=True,
    )


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name).strip("-")


def _load(work: Path) -> dict:
    path = work / "partial.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _save(work: Path, results: dict) -> None:
    (work / "partial.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()

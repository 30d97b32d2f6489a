"""The fair fight of issue 24: hand-crafted image features against rcic's CNN embeddings as
profiles, on the test experiments of a demo screen, judged by the field's metrics.

The screen is the demo preset with two test experiments per cell type instead of one (the demo's
has one, so no siRNA has two test wells of one cell type, and activity needs replicates).

- hand-crafted: `rcic features` (the 42 statistics, 15 channel correlations, 6 orientation
  coherences per well; deterministic, one run);
- CNN: configs/demo.yaml trained with fold 0 held out, 3 seeds; each model embeds its held-out
  fold and the test experiments (8 views, both sites), wells it never trained on.
Each table is corrected three ways (none, standardize per experiment on its negative controls,
spherize with epsilon chosen on the training-split wells: for the CNN its held-out fold, for the
features every training experiment; never the test experiments) and
scored on the test experiments only (hidden labels filled in): activity mAP and the fraction of
siRNA x cell type retrieved (copairs), consistency mAP by pathway, EFAAR known-relationship
recall for same-pathway pairs (random about 0.10), and the mean over cell types of the Spearman
correlation between true and measured cosines.

Usage: python benchmarks/profiles.py [--work /tmp/rcic-bench-profiles] [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from rcic import (
    __version__,
    config,
    embed_pipeline,
    metadata,
    packing,
    profiles,
    synth,
    train,
)

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
SCREEN = replace(synth.PRESETS["demo"], name="demo-2test", test_experiments=(2, 2, 2, 2))
CORRECTIONS = ("none", "standardize", "spherize")
FIGURES = ("activity mAP", "retrieved", "consistency mAP", "recall", "spearman")


def figures(m: dict) -> dict:
    rho = list(m["true_vs_measured_spearman"].values())
    return {
        "activity mAP": m["activity"]["mAP"],
        "retrieved": m["activity"]["fraction_retrieved"],
        "consistency mAP": m["consistency"]["mAP"],
        "recall": m["relationship_recall"]["recall"],
        "spearman": float(np.mean(rho)),
    }


def score(tables: list[Path], out: Path, truth: Path) -> dict[str, dict]:
    return {
        c: figures(profiles.run_profiles(tables, out / c, c, truth=truth, evaluate="test"))
        for c in CORRECTIONS
    }


def feature_table(st: Path, labelled, out: Path) -> Path:
    if not out.exists():
        table = profiles.features_table(st, labelled)
        profiles.write_table(table, out, {"command": "benchmarks/profiles.py features",
                                          "rcic_version": __version__})  # fmt: skip
    return out


def cnn_tables(work: Path, seed: int, sites, labelled, st: Path) -> list[Path]:
    run = work / f"cnn-seed{seed}"
    cfg = config.load_config(CONFIGS / "demo.yaml", [f"seed={seed}", "fold=0"])
    if not (run / "checkpoints" / "last.pt").exists():
        train.train(cfg, sites, st, run, progress=False)
    out = []
    for name, split in (("fold", "0"), ("test", "test")):
        path = run / f"embed-{name}.parquet"
        if not path.exists():
            embed_pipeline.embed_run(
                run, labelled, st, split, path, checkpoint="last", progress=False
            )
        out.append(path)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/rcic-bench-profiles"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    t0 = time.perf_counter()
    data, st = args.work / "data", args.work / "store"
    if not (data / "test_labels.csv").exists():
        synth.generate(data, SCREEN, 0)
    sites = metadata.load_metadata(data)
    packing.pack(data, sites, st)
    labelled, truth = synth.with_test_labels(sites, data), data / "synth.json"
    rows = {"hand-crafted features": score(
        [feature_table(st, labelled, args.work / "features.parquet")],
        args.work / "profiles-features", truth,
    )}  # fmt: skip
    per_seed = [
        score(cnn_tables(args.work, s, sites, labelled, st), args.work / f"profiles-cnn{s}", truth)
        for s in args.seeds
    ]
    print(f"demo screen with 2 test experiments per cell type (seed 0), metrics on the test "
          f"experiments; CNN: configs/demo.yaml, fold 0 held out, "
          f"seeds {args.seeds}, mean +- sd; {(time.perf_counter() - t0) / 60:.1f} min")  # fmt: skip
    print(f"{'profiles':22} {'correction':12} " + " ".join(f"{f:>17}" for f in FIGURES))
    for c in CORRECTIONS:
        feats = rows["hand-crafted features"][c]
        print(f"{'hand-crafted features':22} {c:12} "
              + " ".join(f"{feats[f]:17.3f}" for f in FIGURES))  # fmt: skip
        vals = {f: np.array([r[c][f] for r in per_seed]) for f in FIGURES}
        print(f"{'CNN embeddings':22} {c:12} "
              + " ".join(f"{v.mean():9.3f} +- {v.std(ddof=1) if len(v) > 1 else 0:.3f}"
                         for v in vals.values()))  # fmt: skip


if __name__ == "__main__":
    main()

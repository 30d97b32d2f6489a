"""Levers for the CNN in the small-data regime (issue 39), on the development screens.

Usage: python benchmarks/levers.py [--work DIR] [--screens 0 5] [--seeds 0 1 2] [--only NAME ...]
        [--steps 1760]   (the certificate's budget; a separate --work, finished runs are reused)

Each lever is one change to rcic's recipe (configs/demo.yaml; its backbone is resnet10t since this
table chose it, so the previous ResNet-18 is now a row), trained at the demo's optimiser steps, or
with --steps at the certificate's, on a generated `demo` screen (the development seeds 0 and 5: levers are chosen here, never
reported as the CNN's standing on fresh screens), 3 training seeds, fold 0's experiments held out.
Two accuracies per run, per well, 8-view TTA, single model (no plate stage), as
`benchmarks/recipes.py` scores them: `val` (fold 0, where a lever is chosen) and `test` (the
screen's test experiments). A lever's effect on val is called beyond its spread when the
difference of means exceeds twice its standard error over the training seeds.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
from recipes import Screen, trained_rows

BASE = "rcic (demo.yaml)"
# the certificate's budget: the optimiser steps of benchmarks/synth_difficulty.py's CNN rows
# (20 epochs of aligned cells), 13.4 min for the ResNet-18 on whole sites (synth_difficulty.txt)
CERTIFICATE_STEPS = 1760
# name: (config file, overrides, input kind); each row one lever against the first
LEVERS = {
    BASE: ("demo.yaml", [], "sites"),
    "CutMix (alpha 1)": ("demo.yaml", ["cutmix=1.0"], "sites"),
    "channel scale/shift 0.3": ("demo.yaml", ["intensity_jitter=0.3"], "sites"),
    "no control wells": ("demo.yaml", ["use_controls=false"], "sites"),
    "dropout 0.5, weight decay 0.05": (
        "demo.yaml",
        ["drop_rate=0.5", "weight_decay=0.05"],
        "sites",
    ),
    "resnet18 (the previous default)": ("demo.yaml", ["backbone=resnet18"], "sites"),
    "softmax only": ("demo.yaml", ["head=softmax"], "sites"),
}


def verdicts(results: dict, seeds, split: str) -> None:
    """Each lever against the base recipe on `split` (val: where levers are chosen)."""
    names = [n for n in LEVERS if all(f"{n}|{s}" in results for s in seeds)]
    acc = {n: np.array([results[f"{n}|{s}"][split] for s in seeds]) for n in names}
    ref = acc[BASE]
    for n in names[1:]:
        diff = acc[n].mean() - ref.mean()
        se = np.sqrt(acc[n].var(ddof=1) / len(seeds) + ref.var(ddof=1) / len(seeds))
        verdict = "beyond its spread" if abs(diff) > 2 * se else "within its spread"
        print(f"  {n:30} {diff:+.3f} (2 se {2 * se:.3f}): {verdict}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/rcic-bench-levers"))
    ap.add_argument("--screens", type=int, nargs="+", default=[0, 5])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--only", nargs="*")
    ap.add_argument(
        "--steps",
        type=int,
        help=f"optimiser steps per run (default the demo's; the certificate's: {CERTIFICATE_STEPS})",
    )
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    t0 = time.perf_counter()
    every = {}
    for seed in args.screens:
        screen = Screen(args.work / f"screen{seed}", seed, cell_stores=False, steps=args.steps)
        results = trained_rows(screen, LEVERS, args.seeds, args.only)
        for split in ("val", "test"):
            print(f"against {BASE} on {split} (screen {seed}):")
            verdicts(results, args.seeds, split)
        every[seed] = results
    print(f"wall time {(time.perf_counter() - t0) / 60:.1f} min")
    (args.work / "levers.json").write_text(json.dumps(every, indent=1))


if __name__ == "__main__":
    main()

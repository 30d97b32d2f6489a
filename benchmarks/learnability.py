"""Can rcic's demo recipe learn the demo screen at the demo's budget, and how does that change
with the strength of the siRNA phenotypes?

Usage: python benchmarks/learnability.py [--work DIR] [--strengths 7 14 28] [--seeds 3]

For each strength (the demo preset's is 7), the demo screen (generator seed 0, the preset with only
`strength` changed) is generated and packed; on its test experiments, accuracy per well of:
- the best of the four image-statistics baselines of benchmarks/synth_difficulty.py (logistic and
  LDA, raw and per-plate; the logistic's strength chosen on held-out training experiments);
- configs/demo.yaml (what `rcic demo` trains, its 9 epochs), fold 0 held out, one model per seed
  (3 seeds): the single model, then the plate groups and the well decision of `rcic submit`.
Chance is 1/80. This measures the screen, not a recipe: a strength at which neither the baselines
nor the CNN leave chance says the demo's budget cannot show learning there.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import time
from pathlib import Path

import numpy as np
from synth_difficulty import CONFIGS, baseline_table, cnn_row, fold0_experiments, screen

from rcic.synthetic import synth
from rcic.training import config

STAGES = ("ensemble", "groups", "wells")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", type=Path, default=Path("/tmp/rcic-bench-learnability"))
    ap.add_argument("--strengths", type=float, nargs="+", default=[7.0, 14.0, 28.0])
    ap.add_argument("--seeds", type=int, default=3)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    t0 = time.perf_counter()
    demo = synth.PRESETS["demo"]
    print(f"demo preset, generator seed 0; its strength is {demo.strength:g}; chance 1/80 = 0.0125")
    print("CNN columns: mean +- std over seeds")
    print("strength  best baseline   single model    plate groups   well decision")
    for strength in args.strengths:
        work = args.work / f"strength-{strength:g}"
        spec = dataclasses.replace(demo, strength=strength)
        data, sites, st = screen(work, spec, 0)
        labelled = synth.with_test_labels(sites, data)
        base = max(baseline_table(labelled, st, fold0_experiments(sites), verbose=False).values())
        scores = {s: [] for s in STAGES}
        for seed in range(args.seeds):
            cfg = config.load_config(CONFIGS / "demo.yaml", [f"seed={seed}", "fold=0"])
            row = cnn_row(work, data, sites, st, cfg, f"cnn-seed{seed}")
            for s in STAGES:
                scores[s].append(row["scores"][s])
        cells = "  ".join(
            f"{np.mean(scores[s]):.3f} +- {np.std(scores[s], ddof=1):.3f}" for s in STAGES
        )
        print(f"{strength:8g}  {base:13.3f}  {cells}", flush=True)
    print(f"wall time {(time.perf_counter() - t0) / 60:.1f} min")


if __name__ == "__main__":
    main()

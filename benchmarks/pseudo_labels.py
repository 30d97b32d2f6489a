"""Do pseudo-label rounds help on the `demo` screen? Against the same extra training without them.

Usage: python benchmarks/pseudo_labels.py [--work /tmp/rcic-bench-recipes] [--seeds 0 1 2] [--start NAME]
        [--fraction 0.5] [--epochs 4]

Starts from the runs of rcic's recipe that benchmarks/recipes.py trained (fold 0 held out, one per
seed; `--start rcic--demo-yaml`: configs/demo.yaml, see recipes.txt). For
each: (a) one round of `rcic pseudo` (predict the test experiments, plate post-processing, keep the
most confident `fraction` of every plate's wells, fine-tune `epochs` epochs from the last weights);
(b) the same fine-tuning from the same weights without pseudo-labels, for as many optimiser steps
as (a) took (its epochs scaled to the fewer samples, rounded). Both are scored on the test
experiments per well (8-view TTA) and after the plate stages of `rcic submit`.
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from rcic import pseudo
from rcic.data import metadata
from rcic.data.store import SiteStore
from rcic.inference import predict
from rcic.inference.predict import InferenceOptions
from rcic.plates import submit
from rcic.training import config, train
from rcic.training.samples import select_samples


def scores(run: Path, sites, data: Path, st: Path, out: Path) -> dict:
    test = predict.predict_run(
        run,
        sites,
        st,
        "test",
        out / "test.npz",
        InferenceOptions(checkpoint="last", progress=False),
    )
    res = submit.run_submit([test], data, out / "submission.csv", labels=data / "test_labels.csv")
    return {k: v["overall"] for k, v in res.scores.items()}


def same_steps_epochs(round_run: Path, base, sites, st: Path, epochs: int) -> int:
    """Epochs that give the plain fine-tuning as many optimiser steps as the pseudo-label round."""
    cfg = config.load_config(round_run / "config.yaml")
    store_ = SiteStore(st)
    pseudo_rows = pd.read_csv(cfg.pseudo_labels)
    n_round = len(select_samples(sites, store_, cfg, pseudo_rows).train_rows)
    n_plain = len(select_samples(sites, store_, base).train_rows)
    steps = epochs * (n_round // cfg.batch_size)
    return max(1, round(steps / (n_plain // base.batch_size)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/rcic-bench-recipes"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--fraction", type=float, default=0.5)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--start", default="rcic--demo-yaml", help="recipes.py run name, no seed")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    data, st = args.work / "demo", args.work / "store"
    sites = metadata.load_metadata(data)
    rows = {"start": [], "pseudo": [], "no pseudo": []}
    accs, steps = [], []
    for seed in args.seeds:
        run = args.work / "runs" / f"{args.start}-s{seed}"
        out = args.work / "pseudo" / f"s{seed}"
        out.mkdir(parents=True, exist_ok=True)
        rows["start"].append(scores(run, sites, data, st, out / "start"))
        hist = pseudo.pseudo_rounds(
            run,
            sites,
            data,
            st,
            out / "rounds",
            fractions=(args.fraction,),
            epochs=args.epochs,
            labels=data / "test_labels.csv",
        )
        accs.append(hist[0]["pseudo_label_accuracy"])
        rows["pseudo"].append(scores(Path(hist[0]["run"]), sites, data, st, out / "pseudo"))
        base = config.load_config(run / "config.yaml")
        cfg = replace(
            base,
            weights=str(run / "checkpoints" / "last.pt"),
            pretrained=None,
            epochs=same_steps_epochs(Path(hist[0]["run"]), base, sites, st, args.epochs),
            warmup_epochs=0.0,
        )
        steps.append(cfg.epochs)
        plain = out / f"no-pseudo-{cfg.epochs}ep"
        if not (plain / "checkpoints" / "last.pt").exists():
            train.train(cfg, sites, st, plain, progress=False)
        rows["no pseudo"].append(scores(plain, sites, data, st, out / "no-pseudo-scores"))
    print(
        f"demo screen, fold-0 models '{args.start}' of seeds {args.seeds}; one round keeping {args.fraction:.0%} "
        f"of each plate's wells, {args.epochs} epochs of fine-tuning ({steps} epochs without, the same "
        "optimiser steps); pseudo-label accuracy " + " ".join(f"{a:.3f}" for a in accs)
    )
    print(
        f"{'':12} {'single model':>20} {'plate groups':>20} {'assignment':>20}   (test experiments, mean +- sd)"
    )
    for name, per_seed in rows.items():
        cells = []
        for stage in ("ensemble", "groups", "wells"):
            v = np.array([r[stage] for r in per_seed])
            cells.append(f"{v.mean():12.3f} +- {v.std(ddof=1) if len(v) > 1 else 0:.3f}")
        print(f"{name:12} " + " ".join(cells))
    (args.work / "pseudo.json").write_text(
        json.dumps({"rows": rows, "label_accuracy": accs}, indent=1)
    )


if __name__ == "__main__":
    main()

"""Plate post-processing on the real RxRx1 plate maps, with simulated logits from chance to near perfect.

Usage: python benchmarks/plates_real.py [--shared DIR] [--seeds 2]
Training experiments of ../shared/rxrx1/kaggle are held out as pseudo-test: all experiments with
shift 2 (so their plate order is a shift the remaining training plates never show) and three more.
Groups and orders are discovered from the remaining training plates. Each held-out well gets logits
signal * onehot(true siRNA) + N(0, 1) noise over the 1,139 classes; the temperature is fitted on a
second, independent draw (as `rcic predict --split FOLD` does on held-out experiments).

Methods:  bronze  = per-plate argmax vote, mask, argmax
          winner  = argmax counts per candidate order, mask, Hungarian assignment
          rcic-*  = calibrated probabilities; group choice by the named rule; the named well decision
                    (sinkhorn(x): per-well argmax after Sinkhorn balancing of p ** (1 / x))
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd

from rcic import layout, metadata, plates, rules
from rcic.logitsfile import write_logits
from rcic.predict import fit_temperature
from rcic.submit import run_submit

METHODS = {  # name: (group method, well method, calibrated, sharpen)
    "bronze": ("vote", "argmax", False, 1.0),
    "winner": ("counts", "assign", False, 1.0),
    "rcic-loglik+assign": ("loglik", "assign", True, 1.0),
    "rcic-loglik+sinkhorn(1.0)": ("loglik", "sinkhorn", True, 1.0),
    "rcic-loglik+sinkhorn(0.7)": ("loglik", "sinkhorn", True, 0.7),
    "rcic-loglik+sinkhorn(0.5) [default]": ("loglik", "sinkhorn", True, 0.5),
    "rcic-probsum+sinkhorn(0.5)": ("probsum", "sinkhorn", True, 0.5),
    "rcic-joint+sinkhorn(0.5)": ("joint", "sinkhorn", True, 0.5),
}
SIGNALS = (0.0, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0, 6.0)


def simulate(labels: np.ndarray, signal: float, rng) -> np.ndarray:
    z = rng.normal(0, 1, (len(labels), layout.N_CLASSES))
    z[np.arange(len(labels)), labels] += signal
    return z


def run_method(lp, test, pg, group_method, well_method, sharpen):
    """rcic's own post-processing with the named methods; also the share of plates given the right group."""
    exps, pls = test.experiment.to_numpy(), test.plate.to_numpy()
    post = plates.postprocess(lp, exps, pls, pg, group_method, well_method, sharpen=sharpen)
    of = plates.group_index(pg)
    truth = test.sirna.to_numpy()
    right = [
        np.bincount(of[truth[(exps == exp) & (pls == plate)]]).argmax() == g
        for exp, choice in post.choices.items()
        for plate, g in choice.plate_group.items()
    ]
    return post.stages["groups"], post.stages["assign"], float(np.mean(right))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument(
        "--shared", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "rxrx1"
    )
    ap.add_argument("--seeds", type=int, default=2)
    args = ap.parse_args()
    wells = metadata.wells_of(metadata.load_metadata(args.shared / "kaggle"))
    train = wells[(wells.split == "train")]
    full = rules.discover_groups(train)
    held = sorted(e for e, s in full.shifts.items() if s == 2) + ["HEPG2-02", "HUVEC-03", "RPE-02"]
    pg = rules.discover_groups(train[~train.experiment.isin(held)])
    seen = sorted({s for s in pg.shifts.values()})
    test = train[train.experiment.isin(held) & (train.well_type == "treatment")].reset_index(
        drop=True
    )
    print(
        f"pseudo-test: {len(held)} experiments, {len(test)} wells; remaining training plates show shifts {seen} "
        f"of the canonical order; {sum(full.shifts[e] == 2 for e in held)} held-out experiments use a shift they never show"
    )
    labels = test.sirna.to_numpy()
    rows = []
    for signal in SIGNALS:
        for seed in range(args.seeds):
            rng = np.random.default_rng(seed)
            z = simulate(labels, signal, rng)
            temperature = fit_temperature(simulate(labels, signal, rng), labels)
            for name, (gm, wm, calibrated, sharpen) in METHODS.items():
                lp = plates.treatment_log_probs(z, temperature if calibrated else 1.0)
                masked, final, group_acc = run_method(lp, test, pg, gm, wm, sharpen)
                rows.append(
                    {
                        "signal": signal,
                        "seed": seed,
                        "method": name,
                        "argmax": (lp.argmax(1) == labels).mean(),
                        "groups": (masked == labels).mean(),
                        "final": (final == labels).mean(),
                        "group_choice": group_acc,
                    }
                )
        print(f"signal {signal} done", flush=True)
    table = (
        pd.DataFrame(rows)
        .groupby(["signal", "method"])[["argmax", "groups", "final", "group_choice"]]
        .mean()
    )
    pd.set_option("display.width", 200)
    print(table.round(4).to_string())
    final = table["final"].unstack()
    print("\nfinal accuracy by method (columns) and signal (rows):")
    print(final.round(4).to_string())
    _time_real_test(args.shared / "kaggle")


def _time_real_test(root: Path) -> None:
    import tempfile

    test = pd.read_csv(root / "test.csv")
    with tempfile.TemporaryDirectory() as tmp:
        z = np.random.default_rng(0).normal(0, 1, (len(test), layout.N_CLASSES)).astype(np.float32)
        write_logits(Path(tmp) / "t.npz", test.id_code.to_numpy(), z)
        t0 = time.perf_counter()
        run_submit([Path(tmp) / "t.npz"], root, Path(tmp) / "sub.csv")
        print(
            f"\nwhole real test set ({len(test)} wells, 18 experiments), rcic submit with defaults: {time.perf_counter() - t0:.1f} s"
        )


if __name__ == "__main__":
    main()

"""Hard or soft plate groups: choosing one order per experiment (``loglik``) against weighting every
order by its posterior (``marginal``), on plate maps where the wells say little about the groups.

Usage: python benchmarks/plates_soft.py [--shared DIR] [--seeds 5]

Why. On the demo screen (80 siRNAs, 4 groups of 20, about 16 treated wells per plate) a model a few
wells above chance cannot tell which group a plate holds: the certificate's whole-site model lost
accuracy at the groups stage (benchmarks/results/synth_difficulty.txt, 0.050 -> 0.019 before this
choice). ``marginal`` cannot lose that way when the probabilities are calibrated: with an unsure
order posterior it keeps each well's own answer.

Plate maps.
  demo   the demo preset's plate maps (rcic.synthetic.synth.make_layout, all 20 experiments of a screen as
         test wells, groups from its training experiments). TUNE: screens of layout seeds 101-103;
         REPORT: seeds 201-203 (disjoint plate maps).
  rxrx1  the real plate maps of ../shared/rxrx1 (skipped when absent): the held-out TUNE and REPORT
         experiments of benchmarks/plates_real.py, groups from the other 23.
Logits. As plates_real.py: z = signal * onehot(true siRNA) + N(0, 1), each well; on the demo maps the
treatment classes no screen uses get -30 (a trained model gives them no mass). The temperature is
fitted on an independent draw of the same kind (as `rcic predict --split FOLD` does), and
`rcic submit`'s in-memory path runs with its defaults (calibrate auto, sinkhorn) but the group method.

The group method is chosen on TUNE (see `choose`: ``marginal`` only if it beats ``loglik`` by more
than 2 standard errors) and both are reported on REPORT: accuracy after each stage, mean +- std
over the draws, and how often the most likely order is right.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd

from rcic import layout
from rcic.data import metadata, rules
from rcic.inference import calibration
from rcic.plates import postprocess as plates
from rcic.plates.submit import SubmitOptions, make_submission
from rcic.synthetic import synth

METHODS = ("loglik", "marginal")
SIGNALS = {"demo": (0.5, 1.0, 1.5, 2.0, 3.0), "rxrx1": (1.0, 2.0, 3.0)}
LAYOUT_SEEDS = {"TUNE": (101, 102, 103), "REPORT": (201, 202, 203)}
STAGES = ("ensemble", "groups", "wells")


def simulate(test: pd.DataFrame, signal: float, used: np.ndarray | None, rng) -> np.ndarray:
    labels = test.sirna.to_numpy()
    z = rng.normal(0, 1, (len(labels), layout.N_CLASSES)).astype(np.float32)
    z[np.arange(len(labels)), labels] += signal
    if used is not None:
        unused = np.setdiff1d(np.arange(layout.N_TREATMENTS), used)
        z[:, unused] = -30.0
    return z


def demo_sets(kind: str) -> list[tuple[pd.DataFrame, rules.PlateGroups, np.ndarray]]:
    out = []
    for seed in LAYOUT_SEEDS[kind]:
        wells, _ = synth.make_layout(synth.PRESETS["demo"], seed)
        pg = rules.discover_groups(wells[wells.split == "train"])
        treat = wells[wells.well_type == "treatment"].reset_index(drop=True)
        out.append((treat, pg, np.sort(treat.sirna.unique())))
    return out


def rxrx1_sets(shared: Path) -> dict[str, list]:
    """plates_real.py's held-out experiments (TUNE, REPORT) and the groups of the other 23."""
    wells = metadata.wells_of(metadata.load_metadata(shared / "kaggle"))
    train = wells[wells.split == "train"]
    full = rules.discover_groups(train)
    held = sorted(e for e, s in full.shifts.items() if s == 2) + ["HEPG2-02", "HUVEC-03", "RPE-02"]
    pg = rules.discover_groups(train[~train.experiment.isin(held)])
    treat = train[train.experiment.isin(held) & (train.well_type == "treatment")]
    return {
        kind: [(treat[treat.experiment.isin(exps)].reset_index(drop=True), pg, None)]
        for kind, exps in (("TUNE", held[0::2]), ("REPORT", held[1::2]))
    }


def one_draw(test, pg, used, signal, seed) -> list[dict]:
    rng = np.random.default_rng(seed)
    z = simulate(test, signal, used, rng)
    right = calibration.fit_temperature(simulate(test, signal, used, rng), test.sirna.to_numpy())
    lp = plates.treatment_log_probs(z, right)
    truth = test.sirna.to_numpy()
    rows = []
    for method in METHODS:
        res = make_submission(
            lp, test, pg, SubmitOptions(group_method=method), stored_temperature=True, truth=truth
        )
        row = {"method": method}
        for stage in STAGES:
            row[stage] = float((res.post.stages[stage] == truth).mean())
        row["order right"] = float(res.groups["right"].mean())
        rows.append(row)
    return rows


def run(sets: dict[str, list], seeds: int) -> pd.DataFrame:
    rows, t0 = [], time.perf_counter()
    for kind, maps in sets.items():
        for name, parts in maps.items():
            for signal in SIGNALS[name]:
                for i, (test, pg, used) in enumerate(parts):
                    for seed in range(seeds):
                        draw = 1000 * i + seed
                        for r in one_draw(test, pg, used, signal, draw):
                            rows.append(
                                {"set": kind, "maps": name, "signal": signal, "draw": draw, **r}
                            )
                print(
                    f"  {kind} {name} signal {signal}: {time.perf_counter() - t0:.0f} s", flush=True
                )
    return pd.DataFrame(rows)


def choose(tune: pd.DataFrame) -> str:
    """``marginal`` if its final accuracy beats ``loglik``'s by more than twice the standard error of
    the paired difference (same draw of logits) on TUNE; otherwise the simpler ``loglik``."""
    wide = tune.pivot_table(index=["maps", "signal", "draw"], columns="method", values="wells")
    diff = wide["marginal"] - wide["loglik"]
    se = diff.std() / np.sqrt(len(diff))
    print("\nTUNE: final accuracy, mean over every map, signal and draw")
    print(wide.mean().round(4).to_string())
    print(f"marginal - loglik, paired: {diff.mean():+.4f} (se {se:.4f}, {len(diff)} draws)")
    return "marginal" if diff.mean() > 2 * se else "loglik"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument(
        "--shared", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "rxrx1"
    )
    ap.add_argument("--seeds", type=int, default=5)
    args = ap.parse_args()
    sets = {kind: {"demo": demo_sets(kind)} for kind in LAYOUT_SEEDS}
    if (args.shared / "kaggle").exists():
        for kind, parts in rxrx1_sets(args.shared).items():
            sets[kind]["rxrx1"] = parts
    else:
        print(f"{args.shared / 'kaggle'} absent: demo plate maps only")
    frame = run(sets, args.seeds)
    pd.set_option("display.width", 250)
    chosen = choose(frame[frame.set == "TUNE"])
    print(f"chosen on TUNE: {chosen}; rcic submit's default group method: {plates.GROUP_DEFAULT}")
    rep = frame[frame.set == "REPORT"]
    cell = ["maps", "signal", "method"]
    mean = rep.groupby(cell)[[*STAGES, "order right"]].mean()
    std = rep.groupby(cell)[list(STAGES)].std()
    table = mean.copy().astype(object)
    for stage in STAGES:
        table[stage] = [f"{m:.4f}+-{s:.4f}" for m, s in zip(mean[stage], std[stage], strict=True)]
    table["order right"] = mean["order right"].round(3)
    print("\nREPORT (disjoint from TUNE): accuracy after each stage, mean+-std over draws")
    print(table.to_string())
    wide = rep.pivot_table(index=["maps", "signal", "draw"], columns="method", values="wells")
    diff = (wide["marginal"] - wide["loglik"]).groupby(["maps", "signal"])
    paired = pd.DataFrame(
        {"marginal - loglik": diff.mean(), "se": diff.std() / np.sqrt(diff.size())}
    )
    print("\nREPORT: final accuracy, marginal - loglik, paired over the same draws")
    print(paired.round(4).to_string())
    adds = rep[rep.method == chosen].groupby(["maps", "signal"])[list(STAGES)].mean()
    ok = (adds["groups"] >= adds["ensemble"]) & (adds["wells"] >= adds["groups"])
    print(
        f"REPORT: with {chosen}, groups >= ensemble and wells >= groups in {int(ok.sum())} of "
        f"{len(ok)} cells"
    )


if __name__ == "__main__":
    main()

"""Temperature from the test plates (`rcic submit --calibrate`): how close to the true one.

Usage: python benchmarks/calibration.py [--seeds 0 1]

Simulated plates of the real size: 2 experiments x 4 plates, groups of 277 siRNAs, 272 wells a
plate; logits = scale * (signal * one-hot + N(0, 1)), so the calibrated temperature of their
log-softmax is scale / signal. The estimate uses 4 plates, as `rcic submit` does.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from rcic import layout
from rcic.data import rules
from rcic.plates import postprocess as plates


def simulate(signal: float, scale: float, seed: int, m: int = 277, n: int = 272):
    rng = np.random.default_rng(seed)
    groups = [np.arange(k * m, (k + 1) * m) for k in range(4)]
    rows, exps, pls, choices = [], [], [], {}
    for e in range(2):
        for p in range(1, 5):
            lab = rng.permutation(groups[(p - 1 + e) % 4])[:n]
            z = rng.normal(0, 1, (n, layout.N_TREATMENTS))
            z[np.arange(n), lab] += signal
            rows.append(scale * z)
            exps += [f"E{e}"] * n
            pls += [p] * n
        choices[f"E{e}"] = plates.GroupChoice(
            f"E{e}", {p: (p - 1 + e) % 4 for p in range(1, 5)}, 0.0
        )
    pg = rules.PlateGroups(groups, {}, (0, 1, 2, 3), True, {})
    lp = plates.treatment_log_probs(np.concatenate(rows))
    return lp, np.array(exps), np.array(pls), choices, pg


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    args = ap.parse_args()
    print("signal  scale  true T   estimate / true (per seed)   seconds per estimate")
    for signal in (1.0, 2.0, 3.0, 4.0, 5.0):
        for scale in (1.0, 4.0, 0.25):
            ratios, secs = [], []
            for seed in args.seeds:
                lp, exps, pls, choices, pg = simulate(signal, scale, seed)
                t0 = time.perf_counter()
                cal = plates.estimate_temperature(lp, exps, pls, choices, pg)
                secs.append(time.perf_counter() - t0)
                ratios.append(cal.temperature / (scale / signal))
            print(
                f"{signal:6.1f} {scale:6.2f} {scale / signal:7.3f}   "
                + " ".join(f"{r:8.2f}" for r in ratios)
                + f"   {np.mean(secs):6.1f}"
            )


if __name__ == "__main__":
    main()

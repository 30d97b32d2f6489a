"""The winning solution's plate steps as a plain numpy/scipy script: the speed yardstick for `rcic submit`.

Usage: python benchmarks/winner_plain.py LOGITS.npz KAGGLE_DIR OUT.csv
Groups: the siRNAs of the four plates of the first training experiment with all four plates.
Per test experiment: the cyclic shift of those groups with most per-well argmaxes inside their
plate's group; per plate: the Hungarian assignment within the group. No checks, no report.
"""

import sys

import numpy as np
import pandas as pd
from scipy.optimize import linear_sum_assignment


def main(logits_path: str, root: str, out: str) -> None:
    train = pd.read_csv(f"{root}/train.csv")
    test = pd.read_csv(f"{root}/test.csv")
    f = np.load(logits_path)
    order = pd.Index(f["id_code"]).get_indexer(test.id_code)
    z = f["logits"][order, :1108]
    first = train[train.experiment == train.experiment.iloc[0]]
    groups = [np.sort(first.sirna[first.plate == p].unique()) for p in (1, 2, 3, 4)]
    of = np.full(1108, -1)
    for k, g in enumerate(groups):
        of[g] = k
    top = of[z.argmax(1)]
    answer = np.empty(len(test), dtype=int)
    for exp in test.experiment.unique():
        on = (test.experiment == exp).to_numpy()
        plate = test.plate.to_numpy()[on]
        counts = [(top[on] == (plate - 1 + s) % 4).sum() for s in range(4)]
        shift = int(np.argmax(counts))
        for p in (1, 2, 3, 4):
            rows = np.flatnonzero(on)[plate == p]
            cols = groups[(p - 1 + shift) % 4]
            r, c = linear_sum_assignment(z[np.ix_(rows, cols)], maximize=True)
            answer[rows[r]] = cols[c]
    pd.DataFrame({"id_code": test.id_code, "sirna": answer}).to_csv(out, index=False)


if __name__ == "__main__":
    main(*sys.argv[1:4])

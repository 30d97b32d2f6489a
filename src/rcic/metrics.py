"""Accuracy tables: overall, per cell type, per experiment and per plate. numpy/pandas only.

Low in the module stack (it needs only `layout`), so training, submission and reports share it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from rcic import layout


def accuracy_table(
    wells: pd.DataFrame, predicted: np.ndarray, by: tuple[str, ...] = ("cell_type", "experiment")
) -> dict:
    """Accuracy of `predicted` against ``wells.sirna``; rows with unknown labels are ignored.

    Returns ``{"overall": float, "n": int, "<by>": {value: float}}`` for each name in `by`.
    """
    labels = wells["sirna"].to_numpy()
    known = labels != layout.UNKNOWN
    correct = pd.Series(np.asarray(predicted)[known] == labels[known], index=wells.index[known])
    table = {
        "overall": float(correct.mean()) if len(correct) else float("nan"),
        "n": int(known.sum()),
    }
    for name in by:
        table[name] = {
            str(k): float(v) for k, v in correct.groupby(wells.loc[known, name]).mean().items()
        }
    return table


def treatment_argmax(logits: np.ndarray) -> np.ndarray:
    """Best treatment class of each row (controls ignored: a treatment well is never a control)."""
    return logits[:, : layout.N_TREATMENTS].argmax(1)


def format_table(rows: dict[str, dict], columns: list[str] | None = None) -> str:
    """A plain-text table of {row name: {column: accuracy}} for the terminal and README."""
    columns = columns or sorted({c for r in rows.values() for c in r})
    width = max(len(n) for n in rows) + 2
    cw = [max(10, len(c) + 2) for c in columns]
    head = "stage".ljust(width) + "".join(f"{c:>{w}}" for c, w in zip(columns, cw, strict=True))
    lines = [head, "-" * len(head)]
    for name, r in rows.items():
        cells = "".join(
            f"{r[c]:>{w}.3f}" if isinstance(r.get(c), float) else f"{'-':>{w}}"
            for c, w in zip(columns, cw, strict=True)
        )
        lines.append(name.ljust(width) + cells)
    return "\n".join(lines)

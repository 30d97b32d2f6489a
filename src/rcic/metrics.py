"""Accuracy tables (overall, per cell type, per experiment and per plate) and `rcic evaluate`
(a submission against labels). numpy/pandas only.

Low in the module stack (it needs only `layout`), so training, submission and reports share it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from rcic import layout
from rcic.errors import SubmissionError


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


# the demo's stages, in order: a route's own model, an ensemble, then the plate stages
DEMO_STAGES = ("single model", "ensemble", "plate groups", "well decision")


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


def read_id_sirna(path: str | Path, what: str) -> pd.DataFrame:
    """Read a CSV of id_code,sirna (a submission or labels): integer siRNAs, each well once; a
    fault raises SubmissionError naming the file and the first offending rows."""
    path = Path(path)
    if not path.is_file():
        raise SubmissionError(f"{path}: no such {what} file")
    try:
        frame = pd.read_csv(path, dtype={"id_code": str})
    except (UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        raise SubmissionError(f"{path}: cannot be read as a CSV {what} ({e})") from None
    if not {"id_code", "sirna"} <= set(frame.columns):
        raise SubmissionError(
            f"{path}: a {what} needs columns id_code,sirna; found {list(frame.columns)}"
        )
    sirna = pd.to_numeric(frame["sirna"], errors="coerce")
    bad = sirna.isna() | (sirna % 1 != 0) | (sirna < 0)
    if bad.any():
        rows = [f"line {i + 2}: {v!r}" for i, v in frame.loc[bad, "sirna"].head(3).items()]
        raise SubmissionError(f"{path}: sirna must be a non-negative integer; {', '.join(rows)}")
    dup = frame["id_code"].duplicated()
    if dup.any():
        raise SubmissionError(
            f"{path}: id_code listed twice: {frame.id_code[dup].head(3).tolist()}"
        )
    return frame.assign(sirna=sirna.astype(int))


def evaluate(submission: str | Path, labels: str | Path) -> dict:
    """Accuracy of a submission overall, per cell type, per experiment and per plate."""
    sub = read_id_sirna(submission, "submission")
    lab = read_id_sirna(labels, "labels")
    merged = lab.merge(sub, on="id_code", how="left", suffixes=("", "_pred"))
    lacking = merged.loc[merged["sirna_pred"].isna(), "id_code"]
    if len(lacking):
        raise SubmissionError(
            f"{submission} lacks {len(lacking)} labelled wells of {labels}, e.g. {lacking.head(3).tolist()}"
        )
    parts = merged["id_code"].str.rsplit("_", n=2, expand=True)
    merged["experiment"], merged["plate"] = parts[0], parts[0] + "_" + parts[1]
    merged["cell_type"] = merged["experiment"].map(layout.cell_type_of)
    return accuracy_table(
        merged, merged["sirna_pred"].astype(int).to_numpy(), by=("cell_type", "experiment", "plate")
    )

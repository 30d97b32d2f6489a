"""The hand-crafted route to a submission: a linear head on a table of well features, written as a
logits file that `rcic submit` takes like a CNN's.

    rcic features [--kind stats|cellprofiler] --data DATA --store STORE --out F.parquet
    rcic features-head --table F.parquet --out features.npz
    rcic submit --logits features.npz [--logits cnn.npz ...] --data DATA --out submission.csv

Everything is chosen on one fold of the training experiments (dealt as `rcic train` deals them:
`rcic.training.samples.make_folds`, fold 0 of 3 with seed 0 by default), never on the test experiments:

- the correction: ``none``, or ``plate``: each feature z-scored over its plate's treatment wells
  (label-free; it undoes per-plate gains and offsets, as the difficulty certificate's baselines
  do);
- the features: ``all``, or ``selected`` by pycytominer's `feature_select` (variance, correlation
  above 0.9, missing values, its blocklist; label-free, over every well);
- the inverse regularisation strength C of a multinomial logistic regression on standardised
  features (`rcic.profiling.corrections.linear_logits`).

The choice with the best accuracy on the held-out fold is refitted on every training experiment.
The held-out fold's logits from the fold's own fit give the temperature (as `rcic predict --split
FOLD` fits one), stored in the file, so that `rcic submit` calibrates this route as it calibrates
a CNN and can average the two. ``OUT.choices.json`` beside the file records the choice and every
score of the grid.
"""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from rcic import layout
from rcic.data import tables
from rcic.errors import InputError
from rcic.fileio import atomic_text
from rcic.inference.logitsfile import write_logits
from rcic.profiling import profiles

log = logging.getLogger(__name__)

FEATURE_CORRECTIONS = ("none", "plate")
FEATURE_SETS = ("all", "selected")
C_GRID = (0.01, 0.1, 1.0, 10.0)
SELECTION = ("variance_threshold", "correlation_threshold", "drop_na_columns", "blocklist")


@dataclass(frozen=True)
class Choice:
    correction: str
    features: str
    c: float


def well_frame(table: pd.DataFrame) -> pd.DataFrame:
    """The per-well columns rcic's folds and heads read, from a profile table's metadata."""
    return profiles.embed_metadata(table).assign(
        split=table["Metadata_split"].to_numpy(),
        cell_type=table["Metadata_CellType"].to_numpy(),
        id_code=table["Metadata_id_code"].to_numpy(),
    )


def per_plate_z(values: np.ndarray, wells: pd.DataFrame) -> np.ndarray:
    """Each column z-scored over its plate's treatment wells."""
    out = np.empty_like(values)
    treat = (wells["well_type"] == "treatment").to_numpy()
    for _, rows in wells.groupby("plate").indices.items():
        ref = values[rows[treat[rows]]] if treat[rows].any() else values[rows]
        out[rows] = (values[rows] - ref.mean(0)) / (ref.std(0) + 1e-9)
    return out


def selected_columns(table: pd.DataFrame, features: list[str]) -> list[str]:
    """pycytominer's label-free feature selection over every well."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pycytominer

        kept = pycytominer.feature_select(table, features=features, operation=list(SELECTION))
    return [f for f in features if f in kept.columns]


class FeatureHead:
    """A table's wells, their corrected feature matrices and the fold they are chosen on."""

    def __init__(self, table: pd.DataFrame, fold: int = 0, folds: int = 3, seed: int = 0):
        from rcic.training.samples import make_folds

        self.wells = well_frame(table)
        features = tables.feature_columns(table)
        raw = table[features].to_numpy(np.float64)
        self.sets = {"all": np.arange(len(features))}
        chosen = set(selected_columns(table, features)) if len(features) > 1 else set(features)
        self.sets["selected"] = np.array([k for k, f in enumerate(features) if f in chosen])
        self.x = {"none": raw, "plate": per_plate_z(raw, self.wells)}
        fold_of = make_folds(self.wells, folds, seed)
        self.held = self.wells["experiment"].map(fold_of).eq(fold).to_numpy()
        labelled = (self.wells["well_type"] == "treatment") & (self.wells["sirna"] >= 0)
        self.train = (labelled & (self.wells["split"] == "train")).to_numpy()
        if not (self.train & self.held).any() or not (self.train & ~self.held).any():
            raise InputError(f"fold {fold} of {folds}: needs labelled training wells in and out")

    def logits(self, choice: Choice, fit: np.ndarray, apply: np.ndarray) -> np.ndarray:
        """(apply wells, classes) logits of the head of `choice` fitted on the `fit` wells."""
        from rcic.profiling.corrections import linear_logits

        x = self.x[choice.correction][:, self.sets[choice.features]]
        meta = self.wells[fit].reset_index(drop=True)
        return linear_logits(x[fit], meta, x[apply], c=choice.c)

    def choose(self) -> tuple[Choice, dict[str, float]]:
        """The choice with the best accuracy on the held-out fold (the first of equals)."""
        fit, val = self.train & ~self.held, self.train & self.held
        truth = self.wells["sirna"].to_numpy()[val]
        scores = {}
        for correction in FEATURE_CORRECTIONS:
            for features in FEATURE_SETS:
                for c in C_GRID:
                    choice = Choice(correction, features, c)
                    pred = self.logits(choice, fit, val)[:, : layout.N_TREATMENTS].argmax(1)
                    scores[choice] = float((pred == truth).mean())
                    log.info("%s: %.3f on the held-out fold", choice, scores[choice])
        best = max(scores, key=scores.get)
        return best, {f"{k.correction} {k.features} C={k.c:g}": v for k, v in scores.items()}


def join_tables(paths) -> tuple[pd.DataFrame, dict]:
    """One table of every well from `paths`: tables of the same features (parts of one kind)
    stacked, tables of different features (the statistics and CellProfiler's, say) joined well by
    well; a well missing from one kind, or a feature in two, is refused by name. A folder stands
    for its ``*.parquet`` files (the parts of one table)."""
    kinds: dict[tuple, list[Path]] = {}
    for path in profiles.table_files(paths):
        features = tuple(tables.feature_columns(tables.read_table(path)[0]))
        kinds.setdefault(features, []).append(path)
    joined, provenance = None, {}
    for features, group in kinds.items():
        table, prov = profiles.load_tables(group)
        provenance = provenance or prov
        if joined is None:
            joined = table
            continue
        clash = sorted(set(features) & set(tables.feature_columns(joined)))
        if clash:
            raise InputError(f"{group[0]}: features also in another table, e.g. {clash[:3]}")
        if set(table["Metadata_id_code"]) != set(joined["Metadata_id_code"]):
            raise InputError(f"{group[0]}: holds other wells than {paths[0]}")
        joined = joined.merge(table[["Metadata_id_code", *features]], on="Metadata_id_code")
    return joined, provenance


def fit_head(tables, out: str | Path, fold: int = 0, folds: int = 3, seed: int = 0) -> dict:
    """Choose and fit the head on `tables` (the features of every well: one kind, or several
    joined well by well), write the test treatment wells' logits to `out` and
    ``OUT.choices.json`` beside it; return the record."""
    from rcic.inference.calibration import fit_temperature

    table, provenance = join_tables(tables)
    head = FeatureHead(table, fold, folds, seed)
    best, scores = head.choose()
    val = head.train & head.held
    temperature = fit_temperature(
        head.logits(best, head.train & ~head.held, val), head.wells["sirna"].to_numpy()[val]
    )
    test = ((head.wells["split"] == "test") & (head.wells["well_type"] == "treatment")).to_numpy()
    if not test.any():
        raise InputError(f"{tables[0]}: no test treatment wells to predict")
    logits = head.logits(best, head.train, test)
    w = head.wells[test]
    source = f"features-head {best.correction} {best.features} C={best.c:g} on {tables[0]}"
    write_logits(
        out,
        w["id_code"].to_numpy(),
        logits.astype(np.float32),
        temperature=temperature,
        experiment=w["experiment"].to_numpy(),
        plate=w["plate"].to_numpy(),
        cell_type=w["cell_type"].to_numpy(),
        sirna=w["sirna"].to_numpy(),
        source=source,
    )
    record = {
        "choice": vars(best),
        "temperature": temperature,
        "fold": fold,
        "folds": folds,
        "seed": seed,
        "validation_accuracy": scores,
        "inputs": [str(t) for t in tables],
        "features": provenance.get("kind", "stats"),
    }
    atomic_text(Path(out).with_suffix(".choices.json"), json.dumps(record, indent=1))
    return record

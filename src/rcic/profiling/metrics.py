"""The figures the profiling field reports on a map of profiles.

- Phenotypic activity and consistency: mean average precision through copairs (Kalinin et al.,
  Nature Communications 2025): each siRNA x cell type's wells retrieved against the negative
  controls; consensus profiles retrieved by the siRNAs of the same pathway. The parameters used go
  into the result, and from there into ``metrics.json``.
- Known-relationship recall as EFAAR defines it (Celik et al., "Building, benchmarking, and
  exploring perturbative maps of transcriptional and morphological data", PLOS Comput Biol 2024):
  the share of annotated pairs whose cosine similarity lies below the 5th or above the 95th
  percentile of the cosines of all pairs of profiles (random profiles: about 0.10).
- On a synthetic screen only: the Spearman correlation between the true and the measured cosine of
  every pair of siRNAs, per cell type.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from rcic.data.tables import feature_columns, metadata_columns
from rcic.errors import InputError
from rcic.profiling.corrections import unit_rows

NULL_SIZE = 10000  # permutations of copairs' null for the mAP p-values
THRESHOLD = 0.05  # on the corrected p-values: "retrieved"
RECALL_PERCENTILES = (5.0, 95.0)
# copairs computes pair similarities in batches, one per thread and as many threads as cores,
# each batch holding about six float64 arrays of pairs x features: its rows are chosen so that
# all batches together stay near this many bytes, whatever the cores and the features
PAIR_BATCH_BYTES = 256 * 2**20
# which rows the activity and consistency mAPs rank (pandas queries, recorded in metrics.json)
ACTIVITY_ROWS = "Metadata_pert_type in ['trt', 'negcon'] and Metadata_sirna != ''"
REFERENCE = "Metadata_pert_type == 'negcon'"
TREATMENTS = "Metadata_pert_type == 'trt'"  # the profiles whose average precisions make the mAP
CONSISTENCY_ROWS = (
    "Metadata_pert_type == 'trt' and Metadata_pathway != '' and Metadata_CellType != 'all'"
)


def cosine_matrix(x: np.ndarray) -> np.ndarray:
    u = unit_rows(np.asarray(x, np.float64))
    return u @ u.T


def relationship_recall(
    profiles: pd.DataFrame, pairs: pd.DataFrame, percentiles=RECALL_PERCENTILES
) -> dict:
    """EFAAR's known-relationship recall of `pairs` (columns entity1, entity2) among `profiles`
    (one row per entity, indexed by the entity's name, feature columns only).

    The null is the cosine of every unordered pair of distinct profiles; a pair counts once
    whichever way round it is listed, and pairs naming an absent entity (or one entity twice) are
    left out and counted in ``n_missing``.
    """
    names = profiles.index.astype(str)
    where = {n: i for i, n in enumerate(names)}
    cos = cosine_matrix(profiles.to_numpy())
    upper = cos[np.triu_indices(len(names), k=1)]
    lo, hi = np.percentile(upper, percentiles)
    found = set()
    for a, b in pairs[["entity1", "entity2"]].astype(str).itertuples(index=False):
        if a in where and b in where and a != b:
            found.add((min(where[a], where[b]), max(where[a], where[b])))
    values = np.array([cos[i, j] for i, j in sorted(found)])
    recalled = int(((values < lo) | (values > hi)).sum()) if len(values) else 0
    return {
        "recall": recalled / len(values) if len(values) else float("nan"),
        "n_pairs": len(values),
        "n_missing": len(pairs) - len(values),
        "percentiles": list(percentiles),
        "thresholds": [float(lo), float(hi)],
    }


def true_vs_measured(consensus: pd.DataFrame, truth: dict[str, np.ndarray]) -> dict:
    """Per cell type, the Spearman correlation between the true cosine of every pair of siRNAs
    (`truth`: cell type -> (n_classes, dims) phenotypes, rows by class id) and their measured one
    (the cell type's consensus profiles)."""
    from scipy.stats import spearmanr

    feats = feature_columns(consensus)
    out = {}
    for ct, part in consensus.groupby("Metadata_CellType"):
        if ct not in truth:
            continue
        part = part[part["Metadata_pert_type"] == "trt"]
        if len(part) < 3:
            continue
        ids = part["Metadata_sirna_id"].to_numpy()
        iu = np.triu_indices(len(part), k=1)
        measured = cosine_matrix(part[feats].to_numpy())[iu]
        true = cosine_matrix(truth[ct][ids])[iu]
        out[str(ct)] = float(spearmanr(true, measured).statistic)
    return out


def _quiet_map(ap: pd.DataFrame, sameby: list[str], seed: int) -> pd.DataFrame:
    from copairs.map import mean_average_precision

    return mean_average_precision(
        ap, sameby, null_size=NULL_SIZE, threshold=THRESHOLD, seed=seed, progress_bar=False
    )


def pair_batch_size(n_features: int, threads: int | None = None) -> int:
    """copairs' ``batch_size`` (pairs per batch) that keeps its threads' batches within
    PAIR_BATCH_BYTES: its default of 20,000 pairs is about 1 GB per thread at 1,024 features."""
    import os

    threads = threads or os.cpu_count() or 1
    return max(64, PAIR_BATCH_BYTES // (threads * 6 * 8 * max(1, n_features)))


def _average_precision(frame: pd.DataFrame, feats, params: dict) -> pd.DataFrame:
    """copairs' average precision per profile of `frame` (copairs raises UnpairedException where
    no profile has a positive pair)."""
    from copairs.map import average_precision

    return average_precision(
        frame[metadata_columns(frame)],
        frame[feats].to_numpy(np.float64),
        **params,
        batch_size=pair_batch_size(len(feats)),
        progress_bar=False,
    )


def _activity_ranks(rows: pd.DataFrame, feats, params: dict) -> pd.DataFrame | None:
    """The treatment wells' average precisions among `rows` (None where none has a replicate)."""
    from copairs.matching import UnpairedException, assign_reference_index

    frame = assign_reference_index(
        rows.query(ACTIVITY_ROWS).reset_index(drop=True),
        REFERENCE,
        reference_col="Metadata_reference_index",
    )
    try:
        return _average_precision(frame, feats, params).query(TREATMENTS)
    except UnpairedException:
        return None


def activity(
    wells: pd.DataFrame, seed: int = 0, per_cell_type: bool = True
) -> tuple[pd.DataFrame, dict]:
    """Phenotypic activity: each treatment well ranks the other wells of its siRNA and cell type
    against the cell type's negative controls (copairs average precision, cosine); the mAP per
    siRNA x cell type with its permutation p-value and the BH-corrected one. Returns that table and
    the copairs parameters used. Without `per_cell_type`: per siRNA, its wells of every cell type
    against all negative controls (for wells with one experiment per cell type).

    Per cell type no pair crosses cell types, so copairs ranks one cell type's wells at a time
    (the same average precisions, a fraction of the memory), then one mAP over them all."""
    feats = feature_columns(wells)
    group = ["Metadata_sirna", "Metadata_CellType"] if per_cell_type else ["Metadata_sirna"]
    params = {
        "pos_sameby": [*group, "Metadata_reference_index"],
        "pos_diffby": [],
        "neg_sameby": group[1:],
        "neg_diffby": ["Metadata_sirna", "Metadata_reference_index"],
    }
    by = wells.groupby("Metadata_CellType", sort=False) if per_cell_type else [(None, wells)]
    ranked = [ap for _, rows in by if (ap := _activity_ranks(rows, feats, params)) is not None]
    if not ranked:
        where = " of one cell type" if per_cell_type else ""
        raise InputError(f"no siRNA has two wells{where} among the wells evaluated ({len(wells)})")
    table = _quiet_map(pd.concat(ranked, ignore_index=True), group, seed)
    params.update(
        map_sameby=group, null_size=NULL_SIZE, threshold=THRESHOLD, seed=seed, distance="cosine"
    )
    return table, {**_recipe(params, ACTIVITY_ROWS, REFERENCE), "map_rows": TREATMENTS}


def _recipe(params: dict, rows: str, reference: str | None = None) -> dict:
    """copairs' parameters and what else a notebook needs to recompute the mAP from the table
    alone: the rows ranked (a pandas query), the reference query that builds
    ``Metadata_reference_index`` (copairs' ``assign_reference_index``), the features used."""
    recipe = {"rows": rows, "features": "every column not named Metadata_*"}
    if reference:
        recipe.update(reference_query=reference, reference_col="Metadata_reference_index")
    return {**params, **recipe}


def consistency(consensus: pd.DataFrame, seed: int = 0) -> tuple[pd.DataFrame, dict]:
    """Phenotypic consistency: each siRNA's consensus profile ranks the other siRNAs of its
    pathway (``Metadata_pathway``) against those of other pathways, within a cell type; the mAP
    per pathway x cell type."""
    from copairs.matching import UnpairedException

    feats = feature_columns(consensus)
    frame = consensus.query(CONSISTENCY_ROWS).reset_index(drop=True)
    params = {
        "pos_sameby": ["Metadata_pathway", "Metadata_CellType"],
        "pos_diffby": ["Metadata_sirna"],
        "neg_sameby": ["Metadata_CellType"],
        "neg_diffby": ["Metadata_pathway"],
    }
    try:
        ap = _average_precision(frame, feats, params)
    except UnpairedException:
        raise InputError(
            f"no pathway has two siRNAs of one cell type among the profiles ({len(frame)})"
        ) from None
    table = _quiet_map(ap, ["Metadata_pathway", "Metadata_CellType"], seed)
    params.update(
        map_sameby=["Metadata_pathway", "Metadata_CellType"],
        null_size=NULL_SIZE,
        threshold=THRESHOLD,
        seed=seed,
        distance="cosine",
    )
    return table, _recipe(params, CONSISTENCY_ROWS)


def pooled_activity_map(wells: pd.DataFrame, seed: int = 0) -> float:
    """Mean activity mAP with each siRNA's wells of every cell type together: the score a
    correction or its epsilon is chosen by on a validation split (which may hold one experiment
    per cell type, so no siRNA has two wells of one cell type there)."""
    table, _ = activity(wells, seed, per_cell_type=False)
    return float(table["mean_average_precision"].mean())


def summarise(table: pd.DataFrame) -> dict:
    """mAP and the fraction retrieved (corrected p < THRESHOLD), overall and per cell type."""

    def one(t):
        return {
            "mAP": float(t["mean_average_precision"].mean()),
            "fraction_retrieved": float(t["below_corrected_p"].mean()),
            "n": len(t),
        }

    out = one(table)
    out["cell_type"] = {str(ct): one(t) for ct, t in table.groupby("Metadata_CellType")}
    return out

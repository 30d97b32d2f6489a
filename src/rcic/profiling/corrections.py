"""Classifying embeddings: batch correction with control wells and heads for `rcic embed-head`
(profiles for profiling users, corrected through pycytominer, live in `rcic.profiling.profiles`).

numpy, scipy and scikit-learn only. Embeddings come from `rcic embed` (the CNN's neck, with the
same test-time augmentation as prediction) in the logits-file style: ``id_code``, ``embedding``
(N, D) and per-well ``experiment``, ``plate``, ``cell_type``, ``well_type``, ``sirna``, plus ``oof``
(True where every well's experiment was held out from the model's training).

Corrections (applied in the order given, each fitted within a plate or an experiment):
  ``center_neg``   subtract the mean of the unit's negative-control wells;
  ``standardize``  z-score each dimension with the unit's mean and std over all its wells;
  ``tvn``          typical variation normalisation: whitening by the covariance of the negative
                   controls (each centred in its unit, shrunk), then per-unit centring on them;
  ``align_pos``    shift each experiment so that its positive-control centroids sit on the
                   centroids averaged over experiments (the controls every plate shares).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from rcic import layout
from rcic.errors import InputError

if TYPE_CHECKING:  # the CLI builds its parser from this module: keep it light
    import pandas as pd

log = logging.getLogger(__name__)

EMBED_CORRECTIONS = ("none", "center_neg", "standardize", "tvn", "align_pos")
EMBED_HEADS = ("centroid", "linear")
MISSING_LOGIT = (
    -30.0
)  # logit of a class a head cannot score (no training wells), finite by the file format


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Each row scaled to unit length (zero rows stay zero)."""
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norm > 0, norm, 1.0)


def _units(meta: pd.DataFrame, level: str) -> np.ndarray:
    if level == "plate":
        return (meta["experiment"].astype(str) + "_" + meta["plate"].astype(str)).to_numpy()
    if level == "experiment":
        return meta["experiment"].astype(str).to_numpy()
    raise InputError(f"level {level!r}: expected plate or experiment")


def _negatives(meta: pd.DataFrame) -> np.ndarray:
    return (meta["well_type"] == "negative_control").to_numpy()


def center_neg(emb: np.ndarray, meta: pd.DataFrame, level: str = "plate") -> np.ndarray:
    out = emb.copy()
    neg = _negatives(meta)
    units = _units(meta, level)
    for u in np.unique(units):
        sel = units == u
        ref = sel & neg
        if not ref.any():
            log.warning("%s %s has no negative control: centred on all its wells", level, u)
            ref = sel
        out[sel] -= emb[ref].mean(0)
    return out


def standardize(emb: np.ndarray, meta: pd.DataFrame, level: str = "plate") -> np.ndarray:
    out = emb.copy()
    units = _units(meta, level)
    for u in np.unique(units):
        sel = units == u
        out[sel] = (emb[sel] - emb[sel].mean(0)) / (emb[sel].std(0) + 1e-6)
    return out


def tvn(
    emb: np.ndarray, meta: pd.DataFrame, level: str = "plate", shrinkage: float = 0.1
) -> np.ndarray:
    """Typical variation normalisation: whiten by the negative controls' covariance, centre per unit.

    Negative controls are first centred within their unit, so the whitening learns the variation
    among untreated wells rather than the batch offsets. The covariance is shrunk towards its mean
    eigenvalue (`shrinkage`), since RxRx1 has only one or two negative wells per plate. Each unit is
    then centred on its own negatives (all its wells where it has none).
    """
    neg = _negatives(meta)
    if neg.sum() < 3:
        raise InputError(f"tvn needs at least 3 negative-control wells; there are {int(neg.sum())}")
    centred = center_neg(emb, meta, level)
    cov = np.cov(centred[neg], rowvar=False)
    cov = (1 - shrinkage) * cov + shrinkage * np.trace(cov) / len(cov) * np.eye(len(cov))
    values, vectors = np.linalg.eigh(cov)
    whiten = vectors / np.sqrt(np.maximum(values, 1e-12))
    return centred @ whiten


def align_pos(emb: np.ndarray, meta: pd.DataFrame, level: str = "experiment") -> np.ndarray:
    """Shift each unit so its positive-control centroids match the mean over units."""
    pos = (meta["well_type"] == "positive_control").to_numpy()
    if not pos.any():
        raise InputError("align_pos needs positive-control wells in the embeddings")
    units = _units(meta, level)
    labels = meta["sirna"].to_numpy()
    classes = np.unique(labels[pos])
    centroids = {
        u: {
            c: emb[(units == u) & (labels == c)].mean(0)
            for c in classes
            if ((units == u) & (labels == c)).any()
        }
        for u in np.unique(units)
    }
    overall = {c: np.mean([cs[c] for cs in centroids.values() if c in cs], axis=0) for c in classes}
    out = emb.copy()
    for u, cs in centroids.items():
        if cs:
            out[units == u] -= np.mean([cs[c] - overall[c] for c in cs], axis=0)
    return out


_STEPS = {"center_neg": center_neg, "standardize": standardize, "tvn": tvn, "align_pos": align_pos}


def correct_embeddings(
    emb: np.ndarray, meta: pd.DataFrame, steps: Sequence[str], level: str = "plate"
) -> np.ndarray:
    """Apply the named corrections in order (``align_pos`` always works per experiment)."""
    out = np.asarray(emb, dtype=np.float64)
    for step in steps:
        if step == "none":
            continue
        if step not in _STEPS:
            raise InputError(f"correction {step!r}: expected some of {EMBED_CORRECTIONS}")
        out = _STEPS[step](out, meta, "experiment" if step == "align_pos" else level)
    return out


# --- heads -------------------------------------------------------------------------------------


def centroid_logits(
    train_emb: np.ndarray,
    train_meta: pd.DataFrame,
    emb: np.ndarray,
    meta: pd.DataFrame,
    scale: float = 20.0,
) -> np.ndarray:
    """Cosine similarity to class centroids of the same cell type (all cell types where it has none)."""
    logits = np.full((len(emb), layout.N_CLASSES), MISSING_LOGIT)
    x = unit_rows(emb)
    labels = train_meta["sirna"].to_numpy()
    cts = train_meta["cell_type"].to_numpy()
    for ct in np.unique(meta["cell_type"]):
        rows = (meta["cell_type"] == ct).to_numpy()
        pool = cts == ct if (cts == ct).any() else np.ones(len(cts), bool)
        classes = np.unique(labels[pool])
        cents = unit_rows(np.stack([train_emb[pool & (labels == c)].mean(0) for c in classes]))
        logits[np.ix_(rows, classes)] = scale * x[rows] @ cents.T
        # classes seen only in other cell types: their all-cell-type centroids
        rest = np.setdiff1d(np.unique(labels), classes)
        if len(rest):
            other = unit_rows(np.stack([train_emb[labels == c].mean(0) for c in rest]))
            logits[np.ix_(rows, rest)] = scale * x[rows] @ other.T
    return logits


def linear_logits(
    train_emb: np.ndarray, train_meta: pd.DataFrame, emb: np.ndarray, c: float = 1.0, seed: int = 0
) -> np.ndarray:
    """Multinomial logistic regression on standardised embeddings; unseen classes get MISSING_LOGIT."""
    # imported here: the CLI builds its parser from this module
    from sklearn.linear_model import LogisticRegression

    mu, sd = train_emb.mean(0), train_emb.std(0) + 1e-6
    model = LogisticRegression(C=c, max_iter=300, random_state=seed)
    model.fit((train_emb - mu) / sd, train_meta["sirna"].to_numpy())
    logits = np.full((len(emb), layout.N_CLASSES), MISSING_LOGIT)
    logits[:, model.classes_] = model.decision_function((emb - mu) / sd)
    return logits


def head_logits(head: str, train_emb, train_meta, emb, meta) -> np.ndarray:
    if head == "centroid":
        return centroid_logits(train_emb, train_meta, emb, meta)
    if head == "linear":
        return linear_logits(train_emb, train_meta, emb)
    raise InputError(f"head {head!r}: expected one of {EMBED_HEADS}")


def require_out_of_fold(meta: pd.DataFrame, oof: np.ndarray, what: str) -> None:
    """Refuse labelled training wells whose embedding came from a model that trained on them."""
    bad = ~np.asarray(oof, bool)
    if bad.any():
        exps = sorted(set(meta.loc[bad, "experiment"]))[:5]
        raise InputError(
            f"{what}: {int(bad.sum())} wells (experiments {exps}) were embedded by a model that trained on "
            "them; a head fitted on them would be judged on its own training data. Embed each fold's "
            "held-out experiments with the model of that fold (rcic embed --split FOLD)."
        )

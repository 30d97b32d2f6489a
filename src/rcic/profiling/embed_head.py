"""`rcic embed-head`: a head on a model's batch-corrected embeddings (`rcic.profiling.corrections`),
fitted on out-of-fold wells, its choice scored by leaving one experiment out."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from rcic import layout
from rcic.errors import InputError
from rcic.inference.logitsfile import read_logits, write_logits
from rcic.profiling import corrections as embed

log = logging.getLogger(__name__)

META = ("experiment", "plate", "cell_type", "well_type", "sirna")


def load_embeddings(path: str | Path) -> tuple[np.ndarray, pd.DataFrame, dict]:
    f = read_logits(path)
    missing = [k for k in ("embedding", *META) if k not in f]
    if missing:
        raise InputError(
            f"{path}: not an embedding file (missing {missing}); write one with `rcic embed`"
        )
    meta = pd.DataFrame({k: f[k] for k in META}).assign(
        id_code=f["id_code"], oof=f.get("oof", np.zeros(len(f["id_code"]), bool))
    )
    return f["embedding"].astype(np.float64), meta, f


def _joint(paths: list[Path]) -> tuple[np.ndarray, pd.DataFrame, list[int]]:
    """Concatenate embedding files of one model; corrections are then fitted on all of them at once."""
    parts = [load_embeddings(p) for p in paths]
    sources = {str(f.get("source", "")) for _, _, f in parts}
    if len(sources) > 1:
        raise InputError(
            f"embedding files come from different models {sorted(sources)}: their spaces do not match"
        )
    sizes = [len(m) for _, m, _ in parts]
    return (
        np.vstack([e for e, _, _ in parts]),
        pd.concat([m for _, m, _ in parts], ignore_index=True),
        sizes,
    )


def fit_apply(
    train_path, apply_path, out, steps: list[str], level: str = "plate", head: str = "centroid"
) -> dict:
    """Correct both files jointly, fit the head on the labelled out-of-fold training wells, write logits."""
    emb, meta, (n_train, _) = _joint([Path(train_path), Path(apply_path)])
    corrected = embed.correct_embeddings(emb, meta, steps, level)
    train_meta, apply_meta = meta.iloc[:n_train], meta.iloc[n_train:].reset_index(drop=True)
    labelled = (train_meta["sirna"] >= 0).to_numpy()
    embed.require_out_of_fold(
        train_meta[labelled], train_meta["oof"].to_numpy()[labelled], str(train_path)
    )
    x_train, m_train = corrected[:n_train][labelled], train_meta[labelled].reset_index(drop=True)
    cv = leave_one_experiment_out(x_train, m_train, head)
    treat = (apply_meta["well_type"] == "treatment").to_numpy()
    logits = embed.head_logits(
        head, x_train, m_train, corrected[n_train:][treat], apply_meta[treat].reset_index(drop=True)
    )
    write_logits(
        out,
        apply_meta.loc[treat, "id_code"].to_numpy(),
        logits.astype(np.float32),
        sirna=apply_meta.loc[treat, "sirna"].to_numpy(),
        experiment=apply_meta.loc[treat, "experiment"].to_numpy(),
        plate=apply_meta.loc[treat, "plate"].to_numpy(),
        cell_type=apply_meta.loc[treat, "cell_type"].to_numpy(),
        source=f"embed-head {head} {'+'.join(steps)} {level}",
    )
    return {"cv_accuracy": cv}


def leave_one_experiment_out(x: np.ndarray, meta: pd.DataFrame, head: str) -> float:
    """Accuracy on treatment wells of each experiment from a head fitted on the other experiments."""
    correct, total = 0, 0
    exps = meta["experiment"].unique()
    if len(exps) < 2:
        return float("nan")
    for exp in exps:
        held = (meta["experiment"] == exp).to_numpy()
        test = held & (meta["well_type"] == "treatment").to_numpy()
        if not test.any():
            continue
        logits = embed.head_logits(
            head,
            x[~held],
            meta[~held].reset_index(drop=True),
            x[test],
            meta[test].reset_index(drop=True),
        )
        correct += int(
            (logits[:, : layout.N_TREATMENTS].argmax(1) == meta["sirna"].to_numpy()[test]).sum()
        )
        total += int(test.sum())
    return correct / max(total, 1)

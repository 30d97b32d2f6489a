"""Which sites a fold or split uses: one home for the choices `train`, `predict` and `embed` share.

Folds hold out whole experiments (balanced over cell types); a split is ``test``, ``train`` or a
fold number; the store rows of a set of sites are found by one join on (id_code, site).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

from rcic import layout
from rcic.data.metadata import wells_of
from rcic.data.store import SiteStore
from rcic.errors import InputError
from rcic.training.config import TrainConfig

log = logging.getLogger(__name__)


def make_folds(wells: pd.DataFrame, n_folds: int, seed: int = 0) -> dict[str, int]:
    """Assign each training experiment to a fold, dealing each cell type's experiments round-robin.

    Every fold holds out whole experiments, and each cell type is spread over the folds as evenly
    as its number of experiments allows.
    """
    rng = np.random.default_rng(seed)
    exps = wells.loc[wells["split"] == "train", ["experiment", "cell_type"]].drop_duplicates()
    fold_of: dict[str, int] = {}
    start = 0
    for _, group in exps.groupby("cell_type", sort=True):
        names = rng.permutation(sorted(group["experiment"]))
        for k, name in enumerate(names):
            fold_of[str(name)] = (start + k) % n_folds
        start += len(names)  # the next cell type starts where this one stopped, keeping folds even
    return fold_of


def fold_experiments(sites: pd.DataFrame, cfg: TrainConfig, fold: int) -> list[str]:
    """The training experiments fold `fold` holds out (sorted)."""
    fold_of = make_folds(wells_of(sites), cfg.folds, cfg.seed)
    return sorted(e for e, f in fold_of.items() if f == fold)


def store_rows(st: SiteStore, sites: pd.DataFrame) -> pd.DataFrame:
    """The store index rows of `sites` (their labels and well types from the metadata), packed
    sites only; raises StoreError when the store lacks some of them."""
    st.check_matches(sites)
    rows = st.index.drop(columns=["sirna", "well_type"]).merge(
        sites[["id_code", "site", "sirna", "well_type"]], on=["id_code", "site"], how="inner"
    )
    return rows[st.packed[rows["idx"].to_numpy()]].reset_index(drop=True)


def split_sites(
    sites: pd.DataFrame,
    split: str,
    cfg: TrainConfig,
    treatments_only: bool = True,
    held_out: list[str] | None = None,
) -> pd.DataFrame:
    """Sites of a split: ``test``, ``train`` or a fold number (its held-out experiments).

    For the run's own fold, `held_out` (the experiments recorded when it trained) is used when
    given; other folds are recomputed from the config. Treatment wells only unless
    `treatments_only` is False (embeddings take the controls too). Both sites of each well, unless
    the run trained on site 1 alone.
    """
    chosen = sites[sites["well_type"] == "treatment"] if treatments_only else sites
    if cfg.sites == "1":  # a model trained on one site predicts from that site
        chosen = chosen[chosen["site"] == 1]
    if split in ("test", "train"):
        return chosen[chosen["split"] == split]
    try:
        fold = int(split)
    except ValueError:
        raise InputError(f"split {split!r}: expected test, train or a fold number") from None
    exps = (
        held_out
        if held_out is not None and fold == cfg.fold
        else fold_experiments(sites, cfg, fold)
    )
    if fold != cfg.fold:
        log.warning(
            "split %d: the run held out fold %d; fold %d's experiments were training data",
            fold,
            cfg.fold,
            fold,
        )
    if not exps:
        raise InputError(
            f"split {split}: fold {fold} holds no experiments (the run has {cfg.folds} folds)"
        )
    absent = sorted(set(exps) - set(sites["experiment"]))
    if absent:
        raise InputError(
            f"split {split}: the run held out {absent}, which this metadata does not have"
        )
    return chosen[chosen["experiment"].isin(exps)]


@dataclass
class Samples:
    train_rows: pd.DataFrame  # store index rows used for training
    train_labels: np.ndarray
    val_rows: pd.DataFrame  # store index rows of held-out experiments (treatment wells)
    val_experiments: list[str]


def select_samples(
    sites: pd.DataFrame,
    st: SiteStore,
    cfg: TrainConfig,
    pseudo: pd.DataFrame | None = None,
    held_out: list[str] | None = None,
) -> Samples:
    """Training and validation sites: validation holds out whole experiments (fold `cfg.fold`, or
    `held_out` when given: the experiments a run recorded)."""
    if held_out is not None:
        val_exps = sorted(held_out)
    else:
        val_exps = fold_experiments(sites, cfg, cfg.fold) if cfg.fold >= 0 else []
    index = store_rows(st, sites)
    if cfg.sites == "1":
        index = index[index["site"] == 1]
    labels = index["sirna"].to_numpy().copy()
    if pseudo is not None:
        extra = index["id_code"].map(pseudo.set_index("id_code")["sirna"])
        take = extra.notna().to_numpy() & (labels == layout.UNKNOWN)
        labels[take] = extra[take].astype(int)
        log.info(
            "pseudo-labels: %d test wells added to training",
            index.loc[take, "id_code"].nunique(),  # a well has 1-2 sites, or many cells
        )
    held_out = index["experiment"].isin(val_exps).to_numpy()
    is_treat = (index["well_type"] == "treatment").to_numpy()
    usable = (labels != layout.UNKNOWN) & ~held_out & (is_treat | cfg.use_controls)
    val = held_out & is_treat
    return Samples(
        index[usable].reset_index(drop=True),
        labels[usable],
        index[val].reset_index(drop=True),
        val_exps,
    )

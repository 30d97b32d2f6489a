"""`rcic embed`: a run's embedding of every well, as an .npz (for `rcic embed-head`,
`rcic.profiling.embed_head`) or as a profile table (`rcic.data.tables`, for `rcic profiles`)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from rcic.data import tables
from rcic.inference.logitsfile import write_logits
from rcic.inference.predict import InferenceOptions, part_fields, predict_split

log = logging.getLogger(__name__)


def embed_run(
    run: str | Path,
    sites: pd.DataFrame,
    store: str | Path,
    split: str,
    out: str | Path,
    options: InferenceOptions | None = None,
) -> Path:
    """Embed every well (treatments and controls) of a split with a run's model; write an .npz,
    or with a ``.parquet`` `out` a profile table (`rcic.data.tables`: the raw well profiles).

    ``oof`` marks the wells that were not training samples of this model (their embeddings can
    train a head honestly): the held-out fold's experiments, and unlabelled test treatments.
    """
    options = options or InferenceOptions()
    pr = predict_split(run, sites, store, split, options, treatments_only=False, embeddings=True)
    if not pr.main:
        return Path(out)  # rank 0 writes the file
    res = pr.res
    wells = pr.chosen.drop_duplicates("id_code").set_index("id_code").loc[res["id_code"]]
    oof = ~np.isin(res["id_code"], _trained_on(sites, pr.st, pr.cfg, pr.held_out))
    source = str(Path(run).resolve())
    if str(out).endswith(".parquet"):
        how = {
            "run": source,
            "checkpoint": options.checkpoint,
            "views": options.views,
            "split": split,
            **part_fields(pr, options),
        }
        return _profile_table(out, wells, oof, res, how)
    return write_logits(
        out,
        res.pop("id_code"),
        res.pop("logits"),
        well_type=wells["well_type"].to_numpy(str),
        oof=oof,
        source=source,
        checkpoint=options.checkpoint,
        views=options.views,
        **part_fields(pr, options),
        **res,
    )


def _profile_table(out, wells: pd.DataFrame, oof: np.ndarray, res: dict, how: dict) -> Path:
    """The raw well profiles as a profile table (`rcic.profiling.profiles`) at `out`; `how`: the run,
    checkpoint, views and split that made them."""
    from rcic import __version__

    meta = tables.metadata_frame(wells.reset_index(), "rcic", oof, res["n_sites"])
    provenance = {
        "command": "rcic embed",
        **how,
        "correction": "none",
        "level": "well",
        "rcic_version": __version__,
    }
    return tables.write_table(tables.make_table(meta, res["embedding"]), out, provenance)


def _trained_on(sites: pd.DataFrame, st, cfg, held_out) -> list[str]:
    """The wells (id_codes) that were training samples of a run, pseudo-labelled ones included."""
    pseudo = (
        pd.read_csv(cfg.pseudo_labels)
        if cfg.pseudo_labels and Path(cfg.pseudo_labels).exists()
        else None
    )
    from rcic.training.samples import select_samples

    return list(set(select_samples(sites, st, cfg, pseudo, held_out).train_rows["id_code"]))

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
    table = str(out).endswith(".parquet")
    pr = predict_split(
        run, sites, store, split, options, treatments_only=False, embeddings=True, stream=table
    )
    if not pr.main:
        return Path(out)  # rank 0 writes the file
    trained = _trained_on(sites, pr.st, pr.cfg, pr.held_out)
    source = str(Path(run).resolve())
    if table:
        how = {
            "run": source,
            "checkpoint": options.checkpoint,
            "views": options.views,
            "split": split,
            **part_fields(pr, options),
        }
        return _profile_table(out, pr, trained, how)
    res = pr.res
    wells = pr.chosen.drop_duplicates("id_code").set_index("id_code").loc[res["id_code"]]
    oof = ~np.isin(res["id_code"], trained)
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


def _profile_table(out, pr, trained: list[str], how: dict) -> Path:
    """The raw well profiles as a profile table (`rcic.profiling.profiles`) at `out`, written a
    chunk of plates at a time as `pr` predicts them (one row group each); `trained`: the wells the
    model trained on; `how`: the run, checkpoint, views and split that made them."""
    from rcic import __version__

    by_id = pr.chosen.drop_duplicates("id_code").set_index("id_code")

    def rows():
        for res in pr.pieces():
            wells = by_id.loc[res["id_code"]].reset_index()
            oof = ~np.isin(res["id_code"], trained)
            meta = tables.metadata_frame(wells, "rcic", oof, res["n_sites"])
            yield tables.make_table(meta, res["embedding"])

    provenance = {
        "command": "rcic embed",
        **how,
        "correction": "none",
        "level": "well",
        "rcic_version": __version__,
    }
    return tables.write_row_groups(rows(), out, provenance)


def _trained_on(sites: pd.DataFrame, st, cfg, held_out) -> list[str]:
    """The wells (id_codes) that were training samples of a run, pseudo-labelled ones included."""
    pseudo = (
        pd.read_csv(cfg.pseudo_labels)
        if cfg.pseudo_labels and Path(cfg.pseudo_labels).exists()
        else None
    )
    from rcic.training.samples import select_samples

    return list(set(select_samples(sites, st, cfg, pseudo, held_out).train_rows["id_code"]))

"""Progressive pseudo-labelling (the winning solution's recipe), respecting the plate rules.

Each round predicts the test experiments with the current model, runs the plate post-processing
(groups, one siRNA per well per plate), keeps the most confident fraction of every plate's assigned
wells as labels, and fine-tunes from the current weights with them; the fraction grows each round.
Because the labels come from the per-plate assignment, no siRNA is pseudo-labelled twice on a plate.
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path

import pandas as pd

from rcic.fileio import atomic_text
from rcic.inference import predict
from rcic.plates import submit
from rcic.training import train
from rcic.training.config import TrainConfig
from rcic.training.runs import RunFolder

log = logging.getLogger(__name__)


def pseudo_rounds(
    run: str | Path,
    sites: pd.DataFrame,
    data: str | Path,
    store: str | Path,
    out: str | Path,
    fractions=(0.3, 0.6, 0.9),
    epochs: int | None = None,
    labels: str | Path | None = None,
) -> list[dict]:
    """Run one fine-tuning round per fraction, starting from `run`'s last checkpoint.

    Returns one record per round: the fraction, the number of pseudo-labels, their accuracy when
    `labels` (hidden test labels) are given, and the round's run folder.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    current = RunFolder(run)
    base = current.read_config()
    history = []
    for k, fraction in enumerate(fractions, start=1):
        pseudo_csv, record = _pseudo_labels(current, sites, data, store, out, k, fraction, labels)
        cfg: TrainConfig = replace(
            base,
            pseudo_labels=str(pseudo_csv),
            weights=str(current.checkpoint("last")),
            pretrained=None,
            epochs=epochs or base.epochs,
            warmup_epochs=0.0,
        )
        next_run = out / f"round{k}"
        train.train(cfg, sites, store, next_run, progress=False)
        record["run"] = str(next_run)
        history.append(record)
        log.info("pseudo-label round %d: %s", k, record)
        current = RunFolder(next_run)
    atomic_text(out / "rounds.json", json.dumps(history, indent=1))
    return history


def _pseudo_labels(current, sites, data, store, out, k, fraction, labels) -> tuple[Path, dict]:
    """Predict the test wells with `current`, assign them per plate, keep the surest `fraction`."""
    logits = predict.predict_run(
        current.root,
        sites,
        store,
        "test",
        out / f"round{k}-test.npz",
        predict.InferenceOptions(checkpoint="last", progress=False),
    )
    pseudo_csv = out / f"round{k}-pseudo.csv"
    submit.run_submit(
        [logits],
        data,
        out / f"round{k}-submission.csv",
        pseudo_out=pseudo_csv,
        pseudo_top=fraction,
        labels=labels,
    )
    chosen = pd.read_csv(pseudo_csv)
    record = {"round": k, "fraction": fraction, "pseudo_labels": len(chosen)}
    if labels:
        truth = pd.read_csv(labels).set_index("id_code")["sirna"]
        record["pseudo_label_accuracy"] = float(
            (chosen["sirna"].to_numpy() == truth.loc[chosen["id_code"]].to_numpy()).mean()
        )
    return pseudo_csv, record

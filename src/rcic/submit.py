"""From logits files to a checked submission.csv, scored after every stage (no torch).

Stages: ``ensemble`` (weighted mean of the files, argmax over treatments), ``groups`` (each test
experiment's plate groups chosen, siRNAs outside a plate's group masked) and ``assign`` (one siRNA
per well per plate).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.special import log_softmax

from rcic import layout
from rcic.errors import RcicError
from rcic.fileio import atomic_csv, atomic_text
from rcic.logitsfile import read_logits
from rcic.metadata import load_metadata, wells_of
from rcic.metrics import accuracy_table
from rcic.plates import (
    SHARPEN,
    WELL_DECISIONS,
    PostResult,
    choose_groups,
    estimate_temperature,
    group_index,
    postprocess,
)
from rcic.rules import PlateGroups, discover_groups

log = logging.getLogger(__name__)

STAGES = ("ensemble", "groups", "assign")


class SubmissionError(RcicError, ValueError):
    """The inputs cannot make a valid submission; the message says which file and wells."""


def combine_logits(
    paths: list[str | Path],
    weights: list[float] | None = None,
    mode: str = "logprob",
    temperature: float | None = None,
) -> tuple[np.ndarray, np.ndarray, bool]:
    """Weighted mean of several logits files, each first divided by its own temperature.

    Args:
        mode: ``logprob`` averages log-softmax outputs; ``logits`` averages raw (calibrated) logits.
        temperature: override every file's stored temperature.

    Returns id_code, treatment log-probabilities (N, 1108) with rows sorted by id_code, and
    whether every file carried a fitted temperature (or `temperature` was given).
    """
    if mode not in ("logprob", "logits"):
        raise SubmissionError(f"ensemble mode {mode!r}: expected logprob or logits")
    weights = list(weights) if weights else [1.0] * len(paths)
    if len(weights) != len(paths):
        raise SubmissionError(f"{len(weights)} weights for {len(paths)} logits files")
    ids, total, calibrated = None, 0.0, True
    for path, w in zip(paths, weights, strict=True):
        f = read_logits(path)
        if temperature is None and "temperature" not in f:
            calibrated = False
        t = temperature or float(f.get("temperature", 1.0))
        order = np.argsort(f["id_code"])
        these = f["id_code"][order]
        if ids is None:
            ids = these
        elif len(these) != len(ids) or (these != ids).any():
            only_a = sorted(set(ids) - set(these))[:3]
            only_b = sorted(set(these) - set(ids))[:3]
            raise SubmissionError(
                f"{path} covers other wells than {paths[0]}: missing {only_a}, extra {only_b}"
            )
        z = f["logits"][order, : layout.N_TREATMENTS].astype(np.float64) / t
        total = total + w * (log_softmax(z, axis=1) if mode == "logprob" else z)
    mean = total / sum(weights)
    return ids, log_softmax(mean, axis=1), calibrated


@dataclass
class SubmitResult:
    submission: pd.DataFrame
    post: PostResult
    scores: dict  # stage -> accuracy table (when labels were given)
    groups: pd.DataFrame  # one row per test plate: chosen group, margin, whether right
    calibration: dict  # what calibrate_plates did


def run_submit(
    logits: list[str | Path],
    metadata_dir: str | Path,
    out: str | Path,
    *,
    weights=None,
    mode: str = "logprob",
    labels: str | Path | None = None,
    stages=STAGES,
    temperature: float | None = None,
    group_method: str = "loglik",
    well_method: str = "sinkhorn",
    sharpen: float = SHARPEN,
    calibrate: str = "off",
    pseudo_out: str | Path | None = None,
    pseudo_top: float = 0.5,
    label_map=None,
    reference=None,
) -> SubmitResult:
    """Ensemble, choose plate groups, assign, check and write `out` (and `stages.json` beside it)."""
    t0 = time.perf_counter()
    sites = load_metadata(metadata_dir, label_map=label_map, reference=reference)
    wells = wells_of(sites)
    test = _test_wells(metadata_dir, wells)
    ids, lp, calibrated = combine_logits(logits, weights, mode, temperature)
    _check_coverage(ids, test, logits)
    order = np.searchsorted(ids, test["id_code"].to_numpy())
    lp = lp[order]
    pg = discover_groups(wells)
    _check_plate_sizes(test, pg)
    lp, calibration = calibrate_plates(
        lp, test, pg, calibrate, group_method, stored=calibrated and len(logits) == 1
    )
    post = postprocess(
        lp,
        test["experiment"].to_numpy(),
        test["plate"].to_numpy(),
        pg,
        group_method,
        well_method,
        stages,
        sharpen,
    )
    final = post.stages[[s for s in STAGES if s in post.stages][-1]]
    submission = pd.DataFrame({"id_code": test["id_code"].to_numpy(), "sirna": final.astype(int)})
    validate_submission(submission, metadata_dir)
    atomic_csv(submission, Path(out))
    truth = _read_labels(labels, test) if labels else None
    scores = (
        {
            s: accuracy_table(test.assign(sirna=truth), p, by=("cell_type", "experiment"))
            for s, p in post.stages.items()
        }
        if truth is not None
        else {}
    )
    groups = group_report(post, pg, test, truth)
    report = {
        "stages": scores,
        "groups": groups.to_dict("records"),
        "group_method": group_method,
        "well_method": well_method,
        "well_decision": WELL_DECISIONS[well_method],
        "calibration": calibration,
        "files": [str(p) for p in logits],
        "seconds": time.perf_counter() - t0,
    }
    atomic_text(Path(out).with_name("stages.json"), json.dumps(report, indent=1, default=_jsonable))
    if pseudo_out:
        write_pseudo_labels(pseudo_out, test, post, pseudo_top)
    return SubmitResult(submission, post, scores, groups, calibration)


CALIBRATE = ("off", "on", "auto")


def calibrate_plates(
    lp: np.ndarray, test: pd.DataFrame, pg: PlateGroups, mode: str, group_method: str, stored: bool
) -> tuple[np.ndarray, dict]:
    """Rescale `lp` by a temperature estimated from the test plates (:func:`estimate_temperature`).

    ``off``: keep `lp`. ``on``: always use the estimate. ``auto``: use it when the probabilities
    carry no fitted temperature of their own (a file without one, or an ensemble of several files)
    or when the estimate disagrees with the stored one by more than 2x. An estimate at the edge of
    its search range means the plates carry no information on the temperature; it is not used.
    Returns the log-probabilities to use and what was done (for stages.json).
    """
    if mode not in CALIBRATE:
        raise SubmissionError(f"calibrate {mode!r}: expected one of {CALIBRATE}")
    if mode == "off":
        return lp, {"mode": "off"}
    exps, plates = test["experiment"].to_numpy(), test["plate"].to_numpy()
    choices = choose_groups(lp, exps, plates, pg, group_method)
    cal = estimate_temperature(lp, exps, plates, choices, pg)
    t = cal.temperature
    informative = 2e-3 < t < 5e2
    if mode == "on":
        use, why = informative, "--calibrate on"
    elif not stored:
        use, why = informative, "no fitted temperature (a file without one, or an ensemble)"
    else:
        use, why = (
            informative and abs(np.log(t)) > np.log(2),
            "the stored temperature is off by more than 2x",
        )
    if not informative:
        why = "the plates carry no information on the temperature (estimate at its bound)"
    report = {
        "mode": mode,
        "estimate": t,
        "used": bool(use),
        "reason": why,
        "plates": cal.plates,
        "wells": cal.wells,
    }
    log.info(
        "temperature from the plates: %.3f (%d plates, %d wells); %s: %s",
        t,
        cal.plates,
        cal.wells,
        "used" if use else "not used",
        why,
    )
    return (log_softmax(lp / t, axis=1) if use else lp), report


def _test_wells(metadata_dir, wells: pd.DataFrame) -> pd.DataFrame:
    path = Path(metadata_dir) / "test.csv"
    if path.exists():
        order = pd.read_csv(path, usecols=["id_code"])["id_code"]
    else:  # rxrx1 v1.0: test treatments of metadata.csv
        order = wells.loc[(wells.split == "test") & (wells.well_type == "treatment"), "id_code"]
    return wells.set_index("id_code").loc[order.to_numpy()].reset_index()


def _check_coverage(ids: np.ndarray, test: pd.DataFrame, paths) -> None:
    want = set(test["id_code"])
    have = set(ids)
    missing, extra = sorted(want - have), sorted(have - want)
    if missing or extra:
        raise SubmissionError(
            f"{paths[0]}: logits do not match test.csv: {len(missing)} test wells missing "
            f"(e.g. {missing[:3]}), {len(extra)} wells not in test.csv (e.g. {extra[:3]})"
        )


def _check_plate_sizes(test: pd.DataFrame, pg: PlateGroups) -> None:
    size = min(len(g) for g in pg.groups)
    counts = test.groupby(["experiment", "plate"]).size()
    big = counts[counts > size]
    if len(big):
        log.warning(
            "%d test plate(s) hold more wells than a group's %d siRNAs (e.g. %s): their surplus wells "
            "get their most likely siRNA, repeating one",
            len(big),
            size,
            list(big.index[:2]),
        )


def validate_submission(submission: pd.DataFrame, metadata_dir) -> None:
    """Raise SubmissionError unless the frame is exactly test.csv's wells, in order, with integer siRNAs."""
    root = Path(metadata_dir)
    for name in ("test.csv", "sample_submission.csv"):
        path = root / name
        if not path.exists():
            continue
        expected = pd.read_csv(path, usecols=["id_code"])["id_code"]
        if (
            len(expected) != len(submission)
            or (expected.to_numpy() != submission["id_code"].to_numpy()).any()
        ):
            raise SubmissionError(
                f"submission ids differ from {path} ({len(submission)} rows vs {len(expected)})"
            )
    s = submission["sirna"]
    if not pd.api.types.is_integer_dtype(s) or ((s < 0) | (s >= layout.N_TREATMENTS)).any():
        raise SubmissionError(f"submission sirna must be integers 0..{layout.N_TREATMENTS - 1}")


def _read_labels(path, test: pd.DataFrame) -> np.ndarray:
    frame = pd.read_csv(path)
    if not {"id_code", "sirna"} <= set(frame.columns):
        raise SubmissionError(f"{path}: labels need columns id_code,sirna")
    labels = test["id_code"].map(frame.set_index("id_code")["sirna"])
    if labels.isna().any():
        log.warning(
            "%s lacks labels for %d test wells; they are not scored", path, int(labels.isna().sum())
        )
    return labels.fillna(layout.UNKNOWN).astype(int).to_numpy()


POSTERIOR_FLAG = 0.99  # experiments whose chosen plate order is less probable than this are flagged


def group_report(
    post: PostResult, pg: PlateGroups, test: pd.DataFrame, truth: np.ndarray | None
) -> pd.DataFrame:
    """One row per test plate: chosen group, the experiment's margin, and (with labels) whether it is right."""
    of = group_index(pg)
    rows = []
    for exp, choice in post.choices.items():
        for plate, g in sorted(choice.plate_group.items()):
            row = {
                "experiment": exp,
                "plate": plate,
                "group": g,
                "margin": choice.margin,
                "order_posterior": choice.posterior,
                "plate_posterior": choice.plate_posterior.get(plate, float("nan")),
                "unsure": choice.posterior < POSTERIOR_FLAG,
            }
            if truth is not None:
                sel = (
                    (test["experiment"] == exp).to_numpy()
                    & (test["plate"] == plate).to_numpy()
                    & (truth >= 0)
                )
                if sel.any():
                    row["true_group"] = int(np.bincount(of[truth[sel]] + 1).argmax() - 1)
                    row["right"] = row["true_group"] == g
            rows.append(row)
    return pd.DataFrame(rows)


def write_pseudo_labels(path, test: pd.DataFrame, post: PostResult, top: float) -> pd.DataFrame:
    """The most confident `top` fraction of each test plate's decided wells, as id_code,sirna,confidence.

    An siRNA is pseudo-labelled at most once per plate: where the well decision repeated one (the
    ``sinkhorn`` decision may), only its most confident well is kept.
    """
    final = post.stages.get("assign", post.stages.get("groups", post.stages["ensemble"]))
    frame = test[["id_code", "experiment", "plate"]].assign(sirna=final, confidence=post.confidence)
    frame = frame.sort_values("confidence", ascending=False).drop_duplicates(
        ["experiment", "plate", "sirna"]
    )
    keep = frame.groupby(["experiment", "plate"])["confidence"].rank(
        ascending=False, method="first"
    ) <= (top * test.groupby(["experiment", "plate"])["id_code"].transform("size").loc[frame.index])
    chosen = frame.loc[keep, ["id_code", "sirna", "confidence"]].sort_index()
    atomic_csv(chosen, Path(path))
    log.info(
        "wrote %d pseudo-labels (top %.0f%% of each plate) to %s", len(chosen), 100 * top, path
    )
    return chosen


def evaluate(submission: str | Path, labels: str | Path) -> dict:
    """Accuracy of a submission overall, per cell type, per experiment and per plate."""
    sub = pd.read_csv(submission)
    lab = pd.read_csv(labels)
    merged = lab.merge(sub, on="id_code", how="left", suffixes=("", "_pred"))
    if merged["sirna_pred"].isna().any():
        raise SubmissionError(
            f"{submission} lacks {int(merged['sirna_pred'].isna().sum())} labelled wells"
        )
    parts = merged["id_code"].str.rsplit("_", n=2, expand=True)
    merged["experiment"], merged["plate"] = parts[0], parts[0] + "_" + parts[1]
    merged["cell_type"] = merged["experiment"].map(layout.cell_type_of)
    return accuracy_table(
        merged, merged["sirna_pred"].astype(int).to_numpy(), by=("cell_type", "experiment", "plate")
    )


def _jsonable(x):
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, tuple):
        return list(x)
    raise TypeError(type(x))

"""From logits files to a checked submission.csv, scored after every stage (no torch).

Stages: ``ensemble`` (weighted mean of the files, argmax over treatments), ``groups`` (each test
experiment's plate groups chosen, siRNAs outside a plate's group masked) and ``wells`` (the well
decision: each well's siRNA within its plate's group, by the chosen ``well_method``; only
``hungarian`` and ``sinkhorn_hungarian`` never repeat an siRNA on a plate).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from rcic import layout
from rcic.data.metadata import load_metadata, wells_of
from rcic.data.rules import PlateGroups, discover_groups
from rcic.errors import SubmissionError
from rcic.fileio import atomic_csv, atomic_text
from rcic.inference.calibration import log_softmax
from rcic.inference.logitsfile import read_models
from rcic.metrics import accuracy_table, read_id_sirna
from rcic.plates.postprocess import (
    CALIBRATE_DEFAULT,
    GROUP_DEFAULT,
    SHARPEN,
    WELL_DECISIONS,
    WELL_METHOD_DEFAULT,
    PostResult,
    calibrate_plates,
    group_index,
    postprocess,
    well_method_name,
)

log = logging.getLogger(__name__)

STAGES = ("ensemble", "groups", "wells")


def combine_logits(
    paths: list[str | Path],
    weights: list[float] | None = None,
    combine: str = "logprob",
    temperature: float | None = None,
    ids: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, bool]:
    """Weighted mean of several models' logits, each first divided by its own temperature; the
    parts of one model (`rcic predict --part`) are joined into that model first.

    Args:
        combine: ``logprob`` averages log-softmax outputs; ``mean`` averages the (calibrated)
            logits themselves (the values of `rcic predict --combine`).
        temperature: override every file's stored temperature.
        ids: the wells wanted, in this order (each file must hold exactly these); default: the
            first file's wells, sorted.

    Returns id_code, treatment log-probabilities (N, 1108) with rows in the order of `ids`, and
    whether every file carried a fitted temperature (or `temperature` was given).
    """
    if combine not in ("logprob", "mean"):
        raise SubmissionError(f"combine {combine!r}: expected logprob or mean")
    if temperature is not None and not (np.isfinite(temperature) and temperature > 0):
        raise SubmissionError(f"temperature {temperature}: must be a positive number")
    weights = list(weights) if weights else [1.0] * len(paths)
    if len(weights) != len(paths):
        raise SubmissionError(f"{len(weights)} weights for {len(paths)} logits files")
    models = read_models(paths)
    model_weights = [_model_weight(files, paths, weights) for files, _ in models]
    total, calibrated = 0.0, True
    for (files, f), w in zip(models, model_weights, strict=True):
        if temperature is None and "temperature" not in f:
            calibrated = False
        if ids is None:
            ids = np.sort(f["id_code"])
        order = _rows_of(f["id_code"], ids, files[0] if len(files) == 1 else files)
        z = f["logits"][order, : layout.N_TREATMENTS].astype(np.float32, copy=False)
        z /= np.float32(temperature or float(f.get("temperature", 1.0)))
        if combine == "logprob":
            z = log_softmax(z, copy=False)
        if len(models) == 1:
            return ids, (z if combine == "logprob" else log_softmax(z, copy=False)), calibrated
        total = total + np.float32(w) * z
    return ids, log_softmax(total / np.float32(sum(model_weights)), copy=False), calibrated


def _model_weight(files: list[Path], paths: list, weights: list[float]) -> float:
    """The weight of one model: its file's, or that of each of its parts (which must agree)."""
    where = [str(p) for p in paths]
    mine = {weights[where.index(str(f))] for f in files}
    if len(mine) > 1:
        raise SubmissionError(
            f"the parts {[str(f) for f in files]} of one model have weights {sorted(mine)}"
        )
    return mine.pop()


def _rows_of(have: np.ndarray, want: np.ndarray, path) -> np.ndarray:
    """Row of `have` holding each id of `want`; SubmissionError unless they are the same set."""
    order = np.argsort(have)
    at = np.searchsorted(have, want, sorter=order).clip(0, len(have) - 1)
    rows = order[at]
    if len(have) != len(want) or (have[rows] != want).any():
        missing = sorted(set(want) - set(have))
        extra = sorted(set(have) - set(want))
        raise SubmissionError(
            f"{path}: covers other wells than test.csv (or the first file): {len(missing)} "
            f"missing (e.g. {missing[:3]}), {len(extra)} extra (e.g. {extra[:3]})"
        )
    return rows


@dataclass
class SubmitOptions:
    """How `make_submission` turns per-well log-probabilities into one siRNA per well."""

    group_method: str = GROUP_DEFAULT
    well_method: str = WELL_METHOD_DEFAULT
    sharpen: float = SHARPEN
    calibrate: str = CALIBRATE_DEFAULT
    stages: tuple[str, ...] = STAGES
    marginals: bool = False  # each answer's one-per-plate marginal (for pseudo-labels)

    def __post_init__(self):
        self.well_method = well_method_name(self.well_method)


@dataclass
class SubmitResult:
    submission: pd.DataFrame  # id_code, sirna in the order of the well table
    post: PostResult
    scores: dict  # stage -> accuracy table (when labels were given)
    groups: pd.DataFrame  # one row per test plate: chosen group, margin, whether right
    calibration: dict  # what calibrate_plates did
    options: SubmitOptions | None = None


def make_submission(
    lp: np.ndarray,
    test: pd.DataFrame,
    pg: PlateGroups,
    options: SubmitOptions | None = None,
    *,
    stored_temperature: bool = False,
    truth: np.ndarray | None = None,
) -> SubmitResult:
    """The plate stages in memory: no files read or written.

    Args:
        lp: per-well treatment log-probabilities (N, 1108), row i for well i of `test`.
        test: the wells: ``id_code``, ``experiment``, ``plate`` (and ``cell_type`` for scores).
        pg: the plate groups and orders (:func:`rcic.data.rules.discover_groups` of the metadata).
        stored_temperature: `lp` was calibrated with a fitted temperature (guards ``auto``).
        truth: siRNA of each well (-1 unknown), to score each stage.
    """
    options = options or SubmitOptions()
    if len(lp) != len(test):
        raise SubmissionError(f"{len(lp)} rows of log-probabilities for {len(test)} wells")
    exps, plates = test["experiment"].to_numpy(), test["plate"].to_numpy()
    raw_argmax = lp.argmax(1)
    lp, calibration = calibrate_plates(
        lp, test, pg, options.calibrate, options.group_method, stored=stored_temperature
    )
    post = postprocess(
        lp,
        exps,
        plates,
        pg,
        options.group_method,
        options.well_method,
        options.stages,
        options.sharpen,
        marginals=options.marginals,
    )
    post.stages["ensemble"] = raw_argmax  # the models' own answer, before any plate stage
    final = post.stages[[s for s in STAGES if s in post.stages][-1]]
    submission = pd.DataFrame({"id_code": test["id_code"].to_numpy(), "sirna": final.astype(int)})
    scores = {}
    if truth is not None:
        scored = test.assign(sirna=truth)
        scores = {
            s: accuracy_table(scored, p, by=("cell_type", "experiment"))
            for s, p in post.stages.items()
        }
    groups = group_report(post, pg, test, truth)
    return SubmitResult(submission, post, scores, groups, calibration, options)


def _stages_report(res: SubmitResult, options: SubmitOptions, logits, seconds: float) -> dict:
    """What stages.json records of a submission."""
    return {
        "stages": res.scores,
        "groups": res.groups.to_dict("records"),
        "group_method": options.group_method,
        "well_method": options.well_method,
        "well_decision": WELL_DECISIONS[options.well_method],
        "calibration": res.calibration,
        "files": [str(p) for p in logits],
        "seconds": seconds,
    }


def run_submit(
    logits: list[str | Path],
    metadata_dir: str | Path,
    out: str | Path,
    *,
    weights=None,
    combine: str = "logprob",
    labels: str | Path | None = None,
    temperature: float | None = None,
    options: SubmitOptions | None = None,
    pseudo_out: str | Path | None = None,
    pseudo_top: float = 0.5,
    label_map=None,
    reference=None,
) -> SubmitResult:
    """Read the logits files and metadata, :func:`make_submission` with `options`, check and
    write `out` (and `stages.json` beside it)."""
    t0 = time.perf_counter()
    options = options or SubmitOptions()
    if pseudo_out:  # pseudo-labels rank wells by their one-per-plate marginals
        options = replace(options, marginals=True)
    sites = load_metadata(metadata_dir, label_map=label_map, reference=reference)
    wells = wells_of(sites)
    test = _test_wells(metadata_dir, wells)
    _, lp, calibrated = combine_logits(
        logits, weights, combine, temperature, ids=test["id_code"].to_numpy()
    )
    pg = discover_groups(wells)
    _check_plate_sizes(test, pg)
    truth = _read_labels(labels, test) if labels else None
    res = make_submission(
        lp, test, pg, options, stored_temperature=calibrated and len(logits) == 1, truth=truth
    )
    validate_submission(res.submission, metadata_dir)
    atomic_csv(res.submission, Path(out))
    report = _stages_report(res, options, logits, time.perf_counter() - t0)
    atomic_text(Path(out).with_name("stages.json"), json.dumps(report, indent=1, default=_jsonable))
    if pseudo_out:
        write_pseudo_labels(pseudo_out, test, res.post, pseudo_top)
    return res


def _test_wells(metadata_dir, wells: pd.DataFrame) -> pd.DataFrame:
    path = Path(metadata_dir) / "test.csv"
    if path.exists():
        order = pd.read_csv(path, usecols=["id_code"])["id_code"]
    else:  # rxrx1 v1.0: test treatments of metadata.csv
        order = wells.loc[(wells.split == "test") & (wells.well_type == "treatment"), "id_code"]
    return wells.set_index("id_code").loc[order.to_numpy()].reset_index()


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
    frame = read_id_sirna(path, "labels")
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
    final = post.stages.get("wells", post.stages.get("groups", post.stages["ensemble"]))
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


def _jsonable(x):
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, tuple):
        return list(x)
    raise TypeError(type(x))

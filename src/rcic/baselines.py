"""Image-statistics baselines: how much of a screen's labels a handful of image-wide numbers give.

A synthetic screen is only a fair instrument if its labels are *not* readable from such numbers:
per channel the mean, standard deviation, 50/90/99th percentiles, the fraction of foreground pixels
and a texture figure (mean absolute Laplacian over the mean), both sites of a well averaged, raw or
standardised over each plate's treatment wells, fed to a logistic regression or an LDA.
(numpy, scipy and scikit-learn only.)
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from rcic import layout
from rcic.errors import InputError
from rcic.store import SiteStore

FEATURES = ("mean", "std", "p50", "p90", "p99", "foreground", "texture")


def site_features(images: np.ndarray) -> np.ndarray:
    """(N, 6, H, W) uint8 -> (N, 6 * len(FEATURES)) float64, channel-major."""
    x = images.astype(np.float32)
    n, c = x.shape[:2]
    flat = x.reshape(n, c, -1)
    mean = flat.mean(-1)
    pct = np.percentile(flat, [50, 90, 99], axis=-1)  # (3, N, C)
    # foreground: pixels brighter than halfway between the dark background and the bright tail
    lo, hi = np.percentile(flat, [5, 99], axis=-1)
    fg = (flat > ((lo + hi) / 2)[..., None]).mean(-1)
    lap = np.abs(_laplace(x))
    texture = lap.reshape(n, c, -1).mean(-1) / (mean + 1.0)
    feats = np.stack([mean, flat.std(-1), pct[0], pct[1], pct[2], fg, texture], axis=-1)
    return feats.reshape(n, -1).astype(np.float64)


def _laplace(x: np.ndarray) -> np.ndarray:
    """4-neighbour Laplacian over the last two axes (edges replicated)."""
    p = np.pad(x, [(0, 0)] * (x.ndim - 2) + [(1, 1), (1, 1)], mode="edge")
    return p[..., :-2, 1:-1] + p[..., 2:, 1:-1] + p[..., 1:-1, :-2] + p[..., 1:-1, 2:] - 4 * x


def well_features(store: SiteStore, sites: pd.DataFrame, batch: int = 512) -> pd.DataFrame:
    """Features of every well in `sites` (its sites averaged), with the well's columns."""
    mine = ["sirna", "well_type", "split"]
    index = store.index.drop(columns=mine, errors="ignore").merge(
        sites[["id_code", "site", *mine]], on=["id_code", "site"]
    )
    feats = np.concatenate(
        [
            site_features(store.read_many(index["idx"].to_numpy()[i : i + batch]))
            for i in range(0, len(index), batch)
        ]
    )
    names = [f"w{c}_{f}" for c in layout.CHANNELS for f in FEATURES]
    frame = pd.concat([index.reset_index(drop=True), pd.DataFrame(feats, columns=names)], axis=1)
    keys = ["id_code", "experiment", "plate", "well", "cell_type", "split", "sirna", "well_type"]
    return frame.groupby(keys, as_index=False)[names].mean()


def feature_columns(frame: pd.DataFrame) -> list[str]:
    names = {f"w{c}_{f}" for c in layout.CHANNELS for f in FEATURES}
    return [c for c in frame.columns if c in names]


def standardise_per_plate(frame: pd.DataFrame) -> pd.DataFrame:
    """Each feature z-scored over its plate's treatment wells (labels are not used)."""
    cols = feature_columns(frame)
    out = frame.copy()
    treat = frame["well_type"] == "treatment"
    for _, idx in frame.groupby(["experiment", "plate"]).groups.items():
        ref = frame.loc[idx][treat.loc[idx]][cols]
        out.loc[idx, cols] = (frame.loc[idx, cols] - ref.mean()) / (ref.std() + 1e-9)
    return out


def make_classifier(kind: str, c: float = 1.0):
    """`logistic` (standardised inputs, L2, inverse strength `c`) or `lda` (shrinkage)."""
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if kind == "logistic":
        return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=3000))
    if kind == "lda":
        return make_pipeline(
            StandardScaler(), LinearDiscriminantAnalysis(solver="lsqr", shrinkage="auto")
        )
    raise InputError(f"classifier {kind!r}: expected logistic or lda")


def baseline_accuracy(train: pd.DataFrame, test: pd.DataFrame, kind: str, c: float = 1.0) -> float:
    """Fit on the treatment wells of `train`, return the accuracy on those of `test`."""
    cols = feature_columns(train)
    tr, te = train[train["well_type"] == "treatment"], test[test["well_type"] == "treatment"]
    model = make_classifier(kind, c).fit(tr[cols].to_numpy(), tr["sirna"].to_numpy())
    return float((model.predict(te[cols].to_numpy()) == te["sirna"].to_numpy()).mean())


def tuned_baseline(
    train: pd.DataFrame, val_exps: list[str], test: pd.DataFrame, kind: str
) -> tuple[float, float]:
    """Choose the logistic regression's strength on held-out training experiments, then refit on
    all of `train` and score `test`. Returns (accuracy, chosen c); LDA has nothing to tune."""
    if kind != "logistic":
        return baseline_accuracy(train, test, kind), float("nan")
    held = train["experiment"].isin(val_exps)
    grid = (0.01, 0.1, 1.0, 10.0)
    scores = [baseline_accuracy(train[~held], train[held], kind, c) for c in grid]
    best = grid[int(np.argmax(scores))]
    return baseline_accuracy(train, test, kind, best), best

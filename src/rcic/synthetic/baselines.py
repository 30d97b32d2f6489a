"""Image-statistics baselines: how much of a screen's labels a handful of image-wide numbers give.

A synthetic screen is only a fair instrument if its labels are *not* readable from such numbers:
per channel the mean, standard deviation, 50/90/99th percentiles, the fraction of foreground pixels
and a texture figure (mean absolute Laplacian over the mean), both sites of a well averaged, raw or
standardised over each plate's treatment wells, fed to a logistic regression or an LDA.
(numpy, scipy and scikit-learn only.)
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd

from rcic import layout
from rcic.data.store import SiteStore
from rcic.errors import InputError

FEATURES = ("mean", "std", "p50", "p90", "p99", "foreground", "texture")
# the 42 statistics of a well, channel-major as `site_features` returns them
FEATURE_NAMES = tuple(f"w{c}_{f}" for c in layout.CHANNELS for f in FEATURES)


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


def well_features(
    store: SiteStore, sites: pd.DataFrame, batch: int = 512, extended: bool = False
) -> pd.DataFrame:
    """Features of every well in `sites` (its sites averaged), with the well's columns and
    ``n_sites``: the 42 statistics, and with `extended` also `PROFILE_NAMES` (profiling)."""
    index = store.index_of(sites)
    fn, names = (profile_features, PROFILE_NAMES) if extended else (site_features, FEATURE_NAMES)
    feats = np.concatenate(
        [
            fn(store.read_many(index["idx"].to_numpy()[i : i + batch]))
            for i in range(0, len(index), batch)
        ]
    )
    names = list(names)
    frame = pd.concat([index.reset_index(drop=True), pd.DataFrame(feats, columns=names)], axis=1)
    keys = ["id_code", "experiment", "plate", "well", "cell_type", "split", "sirna", "well_type"]
    out = frame.groupby(keys, as_index=False).agg(
        **{n: (n, "mean") for n in names}, n_sites=("id_code", "size")
    )
    return out


# channel pairs of the cross-channel correlations, and the extended feature names
PAIRS = tuple((a, b) for a in layout.CHANNELS for b in layout.CHANNELS if a < b)
PROFILE_NAMES = (
    FEATURE_NAMES
    + tuple(f"w{a}_w{b}_correlation" for a, b in PAIRS)
    + tuple(f"w{c}_coherence" for c in layout.CHANNELS)
)


def profile_features(images: np.ndarray) -> np.ndarray:
    """The 42 statistics, the 15 pixel correlations between channels, and per channel how
    strongly its structures share one orientation over the site (coherence of the summed
    structure tensor of its gradients, 0 for none, 1 for all alike)."""
    x = images.astype(np.float32)
    n, c = x.shape[:2]
    flat = x.reshape(n, c, -1)
    z = (flat - flat.mean(-1, keepdims=True)) / (flat.std(-1, keepdims=True) + 1e-6)
    corr = np.einsum("ncp,ndp->ncd", z, z) / z.shape[-1]
    pairs = corr[:, [a - 1 for a, _ in PAIRS], [b - 1 for _, b in PAIRS]]
    gy, gx = np.gradient(x, axis=(2, 3))
    jxx, jyy, jxy = (gx * gx).sum((2, 3)), (gy * gy).sum((2, 3)), (gx * gy).sum((2, 3))
    coherence = np.sqrt((jxx - jyy) ** 2 + 4 * jxy**2) / (jxx + jyy + 1e-6)
    return np.concatenate([site_features(images), pairs, coherence], axis=1)


def feature_columns(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns if c in FEATURE_NAMES]


def standardise_per_plate(frame: pd.DataFrame, cols: list[str] | None = None) -> pd.DataFrame:
    """Each feature (the 42 statistics unless `cols`) z-scored over its plate's treatment wells
    (labels are not used)."""
    cols = cols or feature_columns(frame)
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


def baseline_accuracy(
    train: pd.DataFrame, test: pd.DataFrame, kind: str, c: float = 1.0, cols=None
) -> float:
    """Fit on the treatment wells of `train`, return the accuracy on those of `test`; the
    features are the 42 statistics unless `cols`."""
    cols = cols or feature_columns(train)
    tr, te = train[train["well_type"] == "treatment"], test[test["well_type"] == "treatment"]
    model = make_classifier(kind, c).fit(tr[cols].to_numpy(), tr["sirna"].to_numpy())
    return float((model.predict(te[cols].to_numpy()) == te["sirna"].to_numpy()).mean())


def tuned_baseline(
    train: pd.DataFrame, val_exps: list[str], test: pd.DataFrame, kind: str
) -> tuple[float, float]:
    """Choose the logistic regression's strength on held-out training experiments, then refit on
    all of `train` and score `test`. Returns (accuracy, chosen c); LDA has nothing to tune."""
    acc, c, _ = tuned_choice(train, val_exps, test, kind, {"statistics": feature_columns(train)})
    return acc, c


def tuned_choice(
    train: pd.DataFrame, val_exps: list[str], test: pd.DataFrame, kind: str, column_sets: dict
) -> tuple[float, float, str]:
    """Choose the feature set (a name of `column_sets`) and, for the logistic regression, its
    strength on held-out training experiments (`val_exps`), then refit on all of `train` and score
    `test`. Returns (accuracy, chosen c or nan, chosen set)."""
    held = train["experiment"].isin(val_exps)
    grid = (0.01, 0.1, 1.0, 10.0) if kind == "logistic" else (float("nan"),)
    scores = {
        (name, c): baseline_accuracy(train[~held], train[held], kind, c, cols)
        for name, cols in column_sets.items()
        for c in grid
    }
    name, c = max(scores, key=scores.get)  # the first of equals: the smaller c, the first set
    return baseline_accuracy(train, test, kind, c, column_sets[name]), c, name


def leak_audit(
    strength: float,
    n_pathways: int = 0,
    *,
    image_size: int = 64,
    cell_radius: float = 15.0,
    cell_types: tuple[str, ...] = layout.CELL_TYPES,
    experiments: int = 1,
    n_wells: int = 16,
    n_sites: int = 2,
    quantile: float = 0.95,
    seed: int = 0,
    dims: tuple[str, ...] | None = None,
    workers: int = 1,
) -> pd.DataFrame:
    """How far each phenotype dimension of the simulator moves the image statistics of a well.

    On the first plate of `experiments` experiments per cell type (`{type}-01`, ...), control
    wells are rendered twice with the same nuisance and random draws: without a phenotype, and
    with only one dimension at plus or minus its `quantile` of |effect| over the treatments (a
    strong siRNA; penetrance 0.9) times the experiment's phenotype scale. A statistic's shift is
    its mean paired change over its well-to-well sd (`n_wells` wells, `n_sites` sites each); as
    arrangement also re-draws how cells overlap, each shift has a standard error `se`.

    Returns one row per dimension, over every cell type, experiment and statistic: `max_shift`,
    the largest raw shift; `upper`, the largest shift + 2 se (what the audit cannot rule out);
    `bound`, the largest shift - 2 se (what it shows), with that statistic's `shift`, `se`,
    name, cell type and experiment; and the `amplitude` before scaling. `dims` audits only those
    dimensions; `workers` processes share the plates and dimensions.
    """
    from rcic.parallel import ordered_map
    from rcic.synthetic import cellsim

    pheno = cellsim.sirna_phenotypes(strength, n_pathways, seed)
    amplitude = _strong(pheno, quantile)
    chosen = [cellsim.D[name] for name in (dims or cellsim.PHENOTYPE_DIMS)]
    units = [(ct, f"{ct}-{e:02d}") for ct in cell_types for e in range(1, experiments + 1)]
    parts = [
        list(c) for c in np.array_split(chosen, max(1, min(len(chosen), workers // len(units))))
    ]
    render = (n_wells, n_sites, image_size, cell_radius, seed)
    jobs = [(pheno, ct, exp, *render, part, amplitude) for ct, exp in units for part in parts]
    with ordered_map(_audit_part, jobs, workers) as results:
        done = list(results)  # per plate, its parts of the dims in order
    per_unit = [done[i : i + len(parts)] for i in range(0, len(done), len(parts))]
    shift, se = (
        np.stack([np.concatenate([r[j] for r in rows]) for rows in per_unit]) for j in (0, 1)
    )  # (plates, dims, stats)
    return _audit_rows(chosen, amplitude, shift, se, units)


def _strong(pheno, quantile: float) -> np.ndarray:
    """Per dimension, the `quantile` of |effect| over the treatments that have one."""
    treat = np.abs(pheno.effect[:, : layout.N_TREATMENTS])
    return np.array([np.quantile(t[t > 0], quantile) for t in np.moveaxis(treat, -1, 0)])


def _audit_rows(chosen, amplitude, shift, se, units) -> pd.DataFrame:
    """One row per audited dimension: its largest raw shift and upper bound, and the statistic
    and plate with its largest bound."""
    from rcic.synthetic import cellsim

    bound, upper = shift - 2 * se, shift + 2 * se
    rows = []
    for k, d in enumerate(chosen):
        u, stat = np.unravel_index(int(np.argmax(bound[:, k])), bound[:, k].shape)
        rows.append(
            {
                "dimension": cellsim.PHENOTYPE_DIMS[d],
                "amplitude": float(amplitude[d]),
                "max_shift": float(shift[:, k].max()),
                "upper": float(upper[:, k].max()),
                "bound": float(bound[u, k, stat]),
                "shift": float(shift[u, k, stat]),
                "se": float(se[u, k, stat]),
                "statistic": FEATURE_NAMES[stat],
                "cell_type": units[u][0],
                "experiment": units[u][1],
            }
        )
    return pd.DataFrame(rows)


def _audit_part(job) -> tuple[np.ndarray, np.ndarray]:
    """(dims, statistics) shifts and their standard errors for one plate and some of the dims,
    of the sign whose shift - 2 se is larger."""
    pheno, ct, exp, n_wells, n_sites, image_size, cell_radius, seed, chosen, amplitude = job
    wells = _AuditWells(pheno, ct, exp, n_wells, n_sites, image_size, cell_radius, seed)
    shifts, ses = [], []
    for d in chosen:
        (up, up_se), (down, down_se) = wells.shift(d, amplitude[d]), wells.shift(d, -amplitude[d])
        pick = up - 2 * up_se >= down - 2 * down_se
        shifts.append(np.where(pick, up, down))
        ses.append(np.where(pick, up_se, down_se))
    return np.stack(shifts), np.stack(ses)


class _AuditWells:
    """Control wells of one cell type on one plate, rendered with and without a phenotype."""

    def __init__(self, pheno, ct, exp, n_wells, n_sites, image_size, cell_radius, seed):
        from rcic.synthetic import cellsim

        self.batch = cellsim.plate_batch(seed, exp, 1)
        self.size, self.radius, self.seed, self.n_sites = image_size, cell_radius, seed, n_sites
        neg = layout.NEGATIVE_ID
        self.conds = [
            replace(
                cellsim.well_conditions(seed, exp, 1, w, neg, ct, pheno, self.batch),
                penetrance=0.9,
            )
            for w in layout.WELLS[1 : 1 + 19 * n_wells : 19]
        ]
        self.base = np.stack([self._render(c, k) for k, c in enumerate(self.conds)])
        self.sd = self.base.std(0, ddof=1) + 1e-9

    def _render(self, cond, k: int) -> np.ndarray:
        from rcic.synthetic import cellsim

        imgs = [
            cellsim.render_site(
                cellsim.seeded(self.seed, "audit", cond.cell_type, k, s),
                self.size,
                self.radius,
                cond,
                self.batch,
            )
            for s in range(self.n_sites)
        ]
        return site_features(np.stack(imgs)).mean(0)

    def shift(self, dim: int, amount: float) -> tuple[np.ndarray, np.ndarray]:
        """|mean paired change| / well-to-well sd of every statistic with `dim` set to `amount`
        times the experiment's phenotype scale, and its standard error."""
        from rcic.synthetic import cellsim

        effect = np.zeros(cellsim.N_DIMS, np.float32)
        effect[dim] = amount * self.batch.pheno_scale
        moved = np.stack(
            [self._render(replace(c, effect=effect), k) for k, c in enumerate(self.conds)]
        )
        diff = moved - self.base
        se = diff.std(0, ddof=1) / np.sqrt(len(diff)) / self.sd
        return np.abs(diff.mean(0)) / self.sd, se

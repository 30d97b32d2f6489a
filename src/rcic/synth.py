"""Synthetic screens in the RxRx1 layout: plate maps that obey the real rules, and cell images.

The generator is rcic's stand-in for the real images (which are not shipped): it renders cells
(nuclei, cytoplasm, actin rims, nucleoli, mitochondria, Golgi) whose morphology and stain
intensities depend on the cell type and on the siRNA, and overlays the batch effects that make
RxRx1 hard: per-experiment and per-plate channel gains and offsets, uneven illumination and an
experiment-specific change in how strongly phenotypes show. Same seed, same bytes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from rcic import layout, rules
from rcic.fileio import atomic_csv, atomic_text
from rcic.images import write_png
from rcic.metadata import load_metadata, wells_of

log = logging.getLogger(__name__)

# Phenotype dimensions: how an siRNA changes a cell, as log-scale factors.
PHENOTYPE_DIMS = (
    "nucleus_size",
    "cell_size",
    "w1",
    "w2",
    "w3",
    "w4",
    "w5",
    "w6",
    "nucleoli",
    "golgi_size",
    "elongation",
)
N_DIMS = len(PHENOTYPE_DIMS)


@dataclass(frozen=True)
class Preset:
    """Size of a synthetic screen.

    Attributes:
        name: preset name.
        group_size: siRNAs per group (277 in RxRx1); every plate holds one group.
        n_groups: number of groups, one per plate of an experiment (4 in RxRx1).
        n_positive: positive-control siRNAs on every plate (30 in RxRx1).
        train_experiments: training experiments per cell type.
        test_experiments: test experiments per cell type.
        image_size: site width and height in pixels (512 in RxRx1).
        cell_radius: typical cell radius in pixels.
        missing_wells: treatment wells dropped across the screen (RxRx1 plates hold 272..277).
        strength: standard deviation of an siRNA's phenotype, in log units.
        n_pathways: siRNAs are drawn from this many pathways sharing part of their phenotype.
    """

    name: str
    group_size: int
    n_groups: int = 4
    n_positive: int = 30
    train_experiments: tuple[int, ...] = (2, 2, 2, 2)
    test_experiments: tuple[int, ...] = (1, 1, 1, 1)
    image_size: int = 64
    cell_radius: float = 9.0
    missing_wells: int = 4
    strength: float = 0.25
    n_pathways: int = 0

    def __post_init__(self):
        if self.group_size + self.n_positive + 1 > layout.N_WELLS:
            raise ValueError(
                f"preset {self.name}: {self.group_size} + {self.n_positive} + 1 wells exceed {layout.N_WELLS}"
            )
        if (
            self.n_groups * self.group_size > layout.N_TREATMENTS
            or self.n_positive > layout.N_POSITIVE
        ):
            raise ValueError(f"preset {self.name}: more siRNAs than the RxRx1 class ids allow")
        if self.n_groups != len(layout.PLATES):
            raise ValueError(
                f"preset {self.name}: n_groups must equal the {len(layout.PLATES)} plates of an experiment"
            )


PRESETS = {
    "tiny": Preset(
        "tiny",
        group_size=4,
        n_positive=2,
        image_size=32,
        cell_radius=6.0,
        missing_wells=2,
        n_pathways=4,
    ),
    "demo": Preset(
        "demo",
        group_size=20,
        n_positive=5,
        train_experiments=(3, 3, 3, 3),
        image_size=64,
        cell_radius=9.0,
        missing_wells=6,
        strength=0.3,
        n_pathways=16,
    ),
    # The real dimensions: 51 experiments (HEPG2 7+4, HUVEC 16+8, RPE 7+4, U2OS 3+2), 512 px.
    "rxrx1": Preset(
        "rxrx1",
        group_size=277,
        n_positive=30,
        train_experiments=(7, 16, 7, 3),
        test_experiments=(4, 8, 4, 2),
        image_size=512,
        cell_radius=26.0,
        missing_wells=60,
        strength=0.2,
        n_pathways=150,
    ),
}

# Cell-type morphology: (radius scale, elongation, density, brightness); HEPG2 is the brightest.
CELL_MORPHOLOGY = {
    "HEPG2": (0.85, 1.1, 1.3, 1.6),
    "HUVEC": (1.0, 1.8, 1.0, 1.0),
    "RPE": (1.1, 1.3, 0.8, 1.1),
    "U2OS": (1.25, 1.4, 0.6, 0.9),
}
# Mean stain intensities (0..255) inside a cell, channels w1..w6; backgrounds are dark.
BASE_INTENSITY = np.array([55.0, 30.0, 30.0, 25.0, 25.0, 30.0])


# --- plate maps --------------------------------------------------------------------------------


def make_layout(preset: Preset, seed: int) -> tuple[pd.DataFrame, dict]:
    """Plate maps of a new screen: one row per well with its label and split.

    Returns the wells and the truth (groups, canonical order, shift of every experiment).
    """
    rng = np.random.default_rng([seed, 1])
    n_treat = preset.n_groups * preset.group_size
    sirnas = rng.permutation(np.arange(n_treat))
    groups = [
        np.sort(sirnas[k * preset.group_size : (k + 1) * preset.group_size])
        for k in range(preset.n_groups)
    ]
    canonical = tuple(int(g) for g in rng.permutation(preset.n_groups))
    experiments = _experiments(preset, rng)
    positives = layout.N_TREATMENTS + np.arange(preset.n_positive)
    rows = []
    for exp, split, shift in experiments:
        order = rules.shifted(canonical, shift)
        for p, plate in enumerate(layout.PLATES):
            rows += _plate_wells(rng, exp, split, plate, groups[order[p]], positives)
    wells = pd.DataFrame(rows)
    wells = _drop_missing(wells, preset.missing_wells, rng)
    truth = {
        "groups": [g.tolist() for g in groups],
        "canonical": canonical,
        "shifts": {e: s for e, _, s in experiments},
    }
    return wells, truth


def _experiments(preset: Preset, rng: np.random.Generator) -> list[tuple[str, str, int]]:
    """(name, split, shift) of every experiment; the last shift occurs only in test experiments."""
    n = preset.n_groups
    out = []
    n_train = sum(preset.train_experiments)
    train_shifts = rng.permutation(np.arange(n_train) % (n - 1))
    i = 0
    first_test = True
    for ct, n_tr, n_te in zip(
        layout.CELL_TYPES, preset.train_experiments, preset.test_experiments, strict=True
    ):
        for k in range(n_tr + n_te):
            name = f"{ct}-{k + 1:02d}"
            if k < n_tr:
                out.append((name, "train", int(train_shifts[i])))
                i += 1
            else:
                shift = n - 1 if first_test else int(rng.integers(n))
                first_test = False
                out.append((name, "test", shift))
    return out


def _plate_wells(
    rng, exp: str, split: str, plate: int, group: np.ndarray, positives: np.ndarray
) -> list[dict]:
    free = [w for w in layout.WELLS if w != "B02"]
    n_extra_neg = int(rng.random() < 0.2 and len(free) > len(group) + len(positives))
    chosen = rng.choice(len(free), size=len(group) + len(positives) + n_extra_neg, replace=False)
    labels = np.concatenate(
        [rng.permutation(group), rng.permutation(positives), [layout.NEGATIVE_ID] * n_extra_neg]
    )
    wells = [("B02", layout.NEGATIVE_ID)] + [
        (free[i], int(s)) for i, s in zip(chosen, labels, strict=True)
    ]
    return [
        {
            "id_code": layout.id_code(exp, plate, w),
            "experiment": exp,
            "plate": plate,
            "well": w,
            "split": split,
            "sirna": s,
            "well_type": layout.well_type_of(s),
            "cell_type": layout.cell_type_of(exp),
        }
        for w, s in sorted(wells)
    ]


def _drop_missing(wells: pd.DataFrame, n: int, rng: np.random.Generator) -> pd.DataFrame:
    treat = np.flatnonzero(wells["well_type"].to_numpy() == "treatment")
    drop = rng.choice(treat, size=min(n, len(treat)), replace=False)
    return wells.drop(index=wells.index[drop]).reset_index(drop=True)


def layout_from(root: str | Path, seed: int) -> tuple[pd.DataFrame, dict]:
    """Plate maps copied from a real Kaggle-layout metadata folder.

    Hidden test labels are filled in by the rules: each test experiment takes a cyclic shift of
    the training plates' canonical order (the first one a shift never seen in training, if any)
    and its wells a random arrangement of the group's siRNAs.
    """
    rng = np.random.default_rng([seed, 2])
    wells = wells_of(load_metadata(root))
    pg = rules.discover_groups(wells)
    if not pg.cyclic:
        raise ValueError(f"{root}: training plate orders are not cyclic; cannot fill test plates")
    unseen = sorted(set(range(pg.n_groups)) - {s for s in pg.shifts.values() if s is not None})
    shifts = dict(pg.shifts)
    for i, exp in enumerate(sorted(wells.loc[wells["split"] == "test", "experiment"].unique())):
        shifts[exp] = unseen[0] if (i == 0 and unseen) else int(rng.integers(pg.n_groups))
    hidden = (wells["split"] == "test") & (wells["well_type"] == "treatment")
    for (exp, plate), idx in wells[hidden].groupby(["experiment", "plate"]).groups.items():
        group = pg.groups[rules.shifted(pg.canonical, shifts[exp])[int(plate) - 1]]
        if len(idx) > len(group):
            raise ValueError(
                f"{root}: {exp} plate {plate} has {len(idx)} treatment wells, more than its group's {len(group)}"
            )
        wells.loc[idx, "sirna"] = rng.permutation(group)[: len(idx)]
    truth = {"groups": [g.tolist() for g in pg.groups], "canonical": pg.canonical, "shifts": shifts}
    return wells, truth


# --- phenotypes and batch effects ------------------------------------------------------------


def _seeded(seed: int, *keys) -> np.random.Generator:
    """A generator that depends only on the seed and the keys, not on the order of work."""
    digest = hashlib.sha256(json.dumps([seed, *map(str, keys)]).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def sirna_phenotypes(preset: Preset, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Phenotype of every class id (N_CLASSES, N_DIMS) and the pathway of every treatment (-1: none).

    siRNAs of one pathway share 60% of their phenotype's variance, so their profiles are similar.
    Positive controls are three times stronger; the negative control has none.
    """
    rng = _seeded(seed, "phenotypes")
    own = rng.normal(0, 1, (layout.N_CLASSES, N_DIMS))
    pathway = np.full(layout.N_CLASSES, -1)
    if preset.n_pathways:
        centres = rng.normal(0, 1, (preset.n_pathways, N_DIMS))
        pathway[: layout.N_TREATMENTS] = rng.integers(preset.n_pathways, size=layout.N_TREATMENTS)
        treat = slice(0, layout.N_TREATMENTS)
        own[treat] = np.sqrt(0.6) * centres[pathway[treat]] + np.sqrt(0.4) * own[treat]
    pheno = own * preset.strength
    pheno[layout.N_TREATMENTS : layout.NEGATIVE_ID] *= 3.0
    pheno[layout.NEGATIVE_ID] = 0.0
    return pheno, pathway


@dataclass(frozen=True)
class Batch:
    """Batch effect of one plate: what the instrument and the day did to its images."""

    gain: np.ndarray  # (6,) multiplicative, per channel
    offset: np.ndarray  # (6,) additive background, per channel
    tilt: np.ndarray  # (2,) illumination gradient across the field
    vignette: float  # darkening towards the corners
    pheno_scale: float  # how strongly phenotypes show in this experiment
    pheno_shift: np.ndarray  # (N_DIMS,) a phenotype every well of the experiment shares


def plate_batch(seed: int, experiment: str, plate: int) -> Batch:
    exp = _seeded(seed, "experiment", experiment)
    pl = _seeded(seed, "plate", experiment, plate)
    gain = np.exp(exp.normal(0, 0.35, 6) + pl.normal(0, 0.12, 6))
    offset = exp.uniform(1, 7, 6) + pl.uniform(0, 2, 6)
    tilt = exp.normal(0, 0.25, 2)
    return Batch(
        gain,
        offset,
        tilt,
        float(exp.uniform(0.1, 0.35)),
        float(np.exp(exp.normal(0, 0.2))),
        exp.normal(0, 0.08, N_DIMS),
    )


# --- rendering -------------------------------------------------------------------------------


def render_site(
    rng: np.random.Generator,
    size: int,
    radius: float,
    cell_type: str,
    phenotype: np.ndarray,
    batch: Batch,
) -> np.ndarray:
    """Render one site as uint8 (6, size, size)."""
    r_scale, elong, density, bright = CELL_MORPHOLOGY.get(cell_type, (1.0, 1.3, 1.0, 1.0))
    p = phenotype * batch.pheno_scale + batch.pheno_shift
    p = 1.2 * np.tanh(p / 1.2)  # keep extreme phenotypes within a factor of about 3
    cell_r = radius * r_scale * np.exp(p[1])
    n_cells = max(1, rng.poisson(density * 0.3 * (size / cell_r) ** 2))
    elong = elong * np.exp(p[10])
    pad = (
        int(np.ceil(1.2 * cell_r * max(elong, 1.0) * 1.3)) + 3
    )  # the largest window _draw_cell may use
    canvas = np.zeros((6, size + 2 * pad, size + 2 * pad), np.float32)
    level = BASE_INTENSITY * bright * np.exp(p[2:8])
    for _ in range(n_cells):
        _draw_cell(canvas, rng, pad, size, cell_r, elong, p, level)
    img = canvas[:, pad:-pad, pad:-pad]
    return _apply_batch(img, rng, batch)


def _draw_cell(canvas, rng, pad, size, cell_r, elong, p, level) -> None:
    r_c = cell_r * rng.uniform(0.8, 1.2)
    r_n = r_c * 0.5 * np.exp(p[0] - p[1] * 0.5)
    ecc = 1 + (elong - 1) * rng.uniform(0.5, 1.0)
    theta = rng.uniform(0, np.pi)
    half = int(np.ceil(r_c * ecc * 1.3)) + 1
    cy, cx = rng.uniform(0, size, 2) + pad
    y0, x0 = int(cy) - half, int(cx) - half
    yy, xx = np.mgrid[y0 : y0 + 2 * half + 1, x0 : x0 + 2 * half + 1].astype(np.float32)
    dy, dx = yy - cy, xx - cx
    u = dx * np.cos(theta) + dy * np.sin(theta)
    v = -dx * np.sin(theta) + dy * np.cos(theta)
    d_cell = np.sqrt((u / (r_c * ecc)) ** 2 + (v / r_c) ** 2 * ecc)  # 1 at the cell edge
    d_nuc = np.sqrt((u / (r_n * np.sqrt(ecc))) ** 2 + (v / r_n) ** 2)  # 1 at the nucleus edge
    nucleus = 1 / (1 + np.exp((d_nuc - 1) * 8))
    cell = 1 / (1 + np.exp((d_cell - 1) * 6))
    cyto = cell * (1 - nucleus)
    shape = yy.shape
    spots = _spots(
        rng, shape, u, v, r_n * 0.6, int(rng.poisson(2.5 * np.exp(p[8]))) + 1, r_n * 0.18
    )
    g_ang = rng.uniform(0, 2 * np.pi)
    golgi = _spots(
        rng,
        shape,
        u - np.cos(g_ang) * r_n * 1.25,
        v - np.sin(g_ang) * r_n * 1.25,
        r_n * 0.2,
        1,
        r_n * 0.35 * np.exp(p[9]),
    )
    speckle = rng.random(shape, dtype=np.float32)
    planes = (
        nucleus * (0.85 + 0.3 * speckle),
        cyto * np.exp(-np.maximum(d_cell - 0.3, 0)) * 1.3,
        np.exp(-(((d_cell - 0.95) / 0.12) ** 2)) + 0.25 * cyto * (speckle > 0.8),
        0.25 * cyto + nucleus * spots * 2.0,
        cyto * (speckle > 0.55) * 1.4,
        golgi * cell * 1.5 + 0.15 * cell,
    )
    win = canvas[:, y0 : y0 + 2 * half + 1, x0 : x0 + 2 * half + 1]
    for c in range(6):
        win[c] += level[c] * planes[c]


def _spots(rng, shape, u, v, spread, n, sigma) -> np.ndarray:
    out = np.zeros(shape, np.float32)
    for du, dv in rng.normal(0, spread, (n, 2)):
        out += np.exp(-((u - du) ** 2 + (v - dv) ** 2) / (2 * sigma**2))
    return out


def _apply_batch(img: np.ndarray, rng: np.random.Generator, batch: Batch) -> np.ndarray:
    size = img.shape[-1]
    ax = np.linspace(-1, 1, size, dtype=np.float32)
    yy, xx = np.meshgrid(ax, ax, indexing="ij")
    illum = (1 + batch.tilt[0] * xx + batch.tilt[1] * yy) * (
        1 - batch.vignette * (xx**2 + yy**2) / 2
    )
    out = img * illum[None] * batch.gain[:, None, None] + batch.offset[:, None, None]
    out += rng.normal(0, 1.5, out.shape).astype(np.float32)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


# --- writing a dataset ----------------------------------------------------------------------


def generate(
    out: str | Path,
    preset: str | Preset = "tiny",
    seed: int = 0,
    *,
    layout_dir: str | Path | None = None,
    workers: int | None = None,
    image_size: int | None = None,
) -> Path:
    """Write a complete synthetic screen in the Kaggle layout to `out`; return its path.

    Writes ``train.csv``, ``test.csv``, ``train_controls.csv``, ``test_controls.csv``,
    ``sample_submission.csv``, the PNGs under ``train/`` and ``test/``, the hidden test labels in
    ``test_labels.csv`` and the generator's truth (groups, plate shifts, pathways) in ``synth.json``.
    """
    spec = PRESETS[preset] if isinstance(preset, str) else preset
    if image_size:
        spec = replace(
            spec, image_size=image_size, cell_radius=spec.cell_radius * image_size / spec.image_size
        )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    wells, truth = layout_from(layout_dir, seed) if layout_dir else make_layout(spec, seed)
    _, pathway = sirna_phenotypes(spec, seed)
    jobs = [
        (str(out), spec, seed, exp, plate, group)
        for (exp, plate), group in wells.groupby(["experiment", "plate"])
    ]
    workers = workers or os.cpu_count() or 1
    pool = ProcessPoolExecutor(workers) if workers > 1 and len(jobs) > 1 else None
    try:
        results = pool.map(_render_plate, jobs) if pool else map(_render_plate, jobs)
        list(tqdm(results, total=len(jobs), desc="rendering plates", unit="plate"))
    finally:
        if pool:
            pool.shutdown(cancel_futures=True)
    _write_tables(out, wells)
    truth.update(
        preset=asdict(spec),
        seed=seed,
        pathway={str(i): int(p) for i, p in enumerate(pathway) if p >= 0},
    )
    atomic_text(out / "synth.json", json.dumps(truth, indent=1))
    log.info("wrote a %s screen of %d wells to %s", spec.name, len(wells), out)
    return out


def _render_plate(job) -> int:
    root, spec, seed, exp, plate, wells = job
    pheno, _ = sirna_phenotypes(spec, seed)
    batch = plate_batch(seed, exp, plate)
    split = wells["split"].iat[0]
    folder = Path(root) / split / exp / f"Plate{plate}"
    folder.mkdir(parents=True, exist_ok=True)
    for well, sirna, ct in zip(wells["well"], wells["sirna"], wells["cell_type"], strict=True):
        for site in layout.SITES:
            rng = _seeded(seed, "site", exp, plate, well, site)
            img = render_site(rng, spec.image_size, spec.cell_radius, ct, pheno[sirna], batch)
            for c in layout.CHANNELS:
                write_png(folder / layout.png_name(well, site, c), img[c - 1])
    return len(wells)


def _write_tables(out: Path, wells: pd.DataFrame) -> None:
    cols = ["id_code", "experiment", "plate", "well"]
    treat = wells["well_type"] == "treatment"
    train, test = wells["split"] == "train", wells["split"] == "test"
    atomic_csv(wells.loc[train & treat, cols + ["sirna"]], out / "train.csv")
    atomic_csv(wells.loc[test & treat, cols], out / "test.csv")
    atomic_csv(wells.loc[train & ~treat, cols + ["sirna", "well_type"]], out / "train_controls.csv")
    atomic_csv(wells.loc[test & ~treat, cols + ["sirna", "well_type"]], out / "test_controls.csv")
    sample = wells.loc[test & treat, ["id_code"]].assign(sirna=int(wells.loc[treat, "sirna"].min()))
    atomic_csv(sample, out / "sample_submission.csv")
    atomic_csv(wells.loc[test & treat, ["id_code", "sirna"]], out / "test_labels.csv")

"""Synthetic screens in the RxRx1 layout: plate maps that obey the real rules, and cell images.

The generator is rcic's stand-in for the real images (which are not shipped): it renders cells
(nuclei, cytoplasm, actin rims, nucleoli, mitochondria, Golgi) whose morphology and stain
intensities depend on the cell type and on the siRNA, and overlays the batch effects that make
RxRx1 hard: per-experiment and per-plate channel gains and offsets, uneven illumination and an
experiment-specific change in how strongly phenotypes show. Same seed, same bytes.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from rcic import layout
from rcic.data import rules
from rcic.data.images import write_png
from rcic.data.metadata import load_metadata, wells_of
from rcic.errors import InputError
from rcic.fileio import atomic_csv, atomic_text
from rcic.parallel import ordered_map
from rcic.synthetic import cellsim

log = logging.getLogger(__name__)


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
        strength: median size of an siRNA's phenotype (see rcic.synthetic.cellsim.sirna_phenotypes).
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
    strength: float = 5.0
    n_pathways: int = 0

    def __post_init__(self):
        if self.group_size + self.n_positive + 1 > layout.N_WELLS:
            raise InputError(
                f"preset {self.name}: {self.group_size} + {self.n_positive} + 1 wells exceed {layout.N_WELLS}"
            )
        if (
            self.n_groups * self.group_size > layout.N_TREATMENTS
            or self.n_positive > layout.N_POSITIVE
        ):
            raise InputError(f"preset {self.name}: more siRNAs than the RxRx1 class ids allow")
        if self.n_groups != len(layout.PLATES):
            raise InputError(
                f"preset {self.name}: n_groups must equal the {len(layout.PLATES)} plates of an experiment"
            )


PRESETS = {
    "tiny": Preset(
        "tiny",
        group_size=4,
        n_positive=2,
        image_size=32,
        cell_radius=8.0,
        missing_wells=2,
        strength=15.0,
        n_pathways=4,
    ),
    "demo": Preset(
        "demo",
        group_size=20,
        n_positive=5,
        train_experiments=(3, 3, 3, 3),
        image_size=64,
        cell_radius=11.0,
        missing_wells=6,
        strength=7.0,
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
        strength=5.0,
        n_pathways=150,
    ),
}

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
        raise InputError(f"{root}: training plate orders are not cyclic; cannot fill test plates")
    unseen = sorted(set(range(pg.n_groups)) - {s for s in pg.shifts.values() if s is not None})
    shifts = dict(pg.shifts)
    for i, exp in enumerate(sorted(wells.loc[wells["split"] == "test", "experiment"].unique())):
        shifts[exp] = unseen[0] if (i == 0 and unseen) else int(rng.integers(pg.n_groups))
    hidden = (wells["split"] == "test") & (wells["well_type"] == "treatment")
    for (exp, plate), idx in wells[hidden].groupby(["experiment", "plate"]).groups.items():
        group = pg.groups[rules.shifted(pg.canonical, shifts[exp])[int(plate) - 1]]
        if len(idx) > len(group):
            raise InputError(
                f"{root}: {exp} plate {plate} has {len(idx)} treatment wells, more than its group's {len(group)}"
            )
        wells.loc[idx, "sirna"] = rng.permutation(group)[: len(idx)]
    truth = {"groups": [g.tolist() for g in pg.groups], "canonical": pg.canonical, "shifts": shifts}
    return wells, truth


def with_test_labels(sites: pd.DataFrame, data: str | Path) -> pd.DataFrame:
    """`sites` with the test treatments' hidden labels (a synthetic screen's test_labels.csv) filled
    in, for scoring and profiling on the test experiments."""
    labels = pd.read_csv(Path(data) / "test_labels.csv").set_index("id_code")["sirna"]
    out = sites.copy()
    hidden = (out["split"] == "test") & out["id_code"].isin(labels.index)
    out.loc[hidden, "sirna"] = out.loc[hidden, "id_code"].map(labels)
    return out


# --- writing a dataset ----------------------------------------------------------------------


def _resolve_spec(preset: str | Preset, image_size: int | None) -> Preset:
    """The preset (by name or as given), its cells scaled with the image when resized."""
    spec = PRESETS[preset] if isinstance(preset, str) else preset
    if image_size:
        spec = replace(
            spec, image_size=image_size, cell_radius=spec.cell_radius * image_size / spec.image_size
        )
    return spec


def generate(
    out: str | Path,
    preset: str | Preset = "tiny",
    seed: int = 0,
    *,
    layout_dir: str | Path | None = None,
    workers: int | None = None,
    image_size: int | None = None,
    render: str = "cells",
    experiments: list[str] | None = None,
) -> Path:
    """Write a complete synthetic screen in the Kaggle layout to `out`; return its path.

    Writes ``train.csv``, ``test.csv``, ``train_controls.csv``, ``test_controls.csv``,
    ``sample_submission.csv``, the PNGs under ``train/`` and ``test/``, the hidden test labels in
    ``test_labels.csv``, the generator's truth (groups, plate shifts, pathways) in ``synth.json``
    and, for rendered cells, how many cells each site holds in ``site_cells.csv`` (id_code, site,
    n_cells: what a segmentation is checked against).

    Args:
        render: ``cells`` (the simulator) or ``noise`` (seeded random pixels, no phenotype: for
            measuring the rest of the chain at full layout size, where simulating cells would
            dominate the time).
        experiments: keep only these experiments of the layout (default: all).
    """
    if render not in ("cells", "noise"):
        raise InputError(f"render {render!r}: expected cells or noise")
    spec = _resolve_spec(preset, image_size)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    wells, truth = layout_from(layout_dir, seed) if layout_dir else make_layout(spec, seed)
    if experiments is not None:
        wells = wells[wells["experiment"].isin(experiments)].reset_index(drop=True)
    pathway = cellsim.sirna_phenotypes(spec.strength, spec.n_pathways, seed).pathway
    jobs = [
        (str(out), spec, seed, exp, plate, group, render)
        for (exp, plate), group in wells.groupby(["experiment", "plate"])
    ]
    _render(out, jobs, workers or os.cpu_count() or 1)
    _write_tables(out, wells)
    truth.update(
        preset=asdict(spec),
        seed=seed,
        generator=cellsim.GENERATOR,
        pathway={str(i): int(p) for i, p in enumerate(pathway) if p >= 0},
    )
    atomic_text(out / "synth.json", json.dumps(truth, indent=1))
    log.info("wrote a %s screen of %d wells to %s", spec.name, len(wells), out)
    return out


def _render(out: Path, jobs: list, workers: int) -> None:
    """Render the plates of `jobs`; with cells, write how many each site holds."""
    with ordered_map(_render_plate, jobs, workers) as results:
        counts = list(tqdm(results, total=len(jobs), desc="rendering plates", unit="plate"))
    if any(c is not None for c in counts):
        atomic_csv(pd.concat(counts, ignore_index=True), out / "site_cells.csv")


def _render_plate(job) -> pd.DataFrame | None:
    """Render one plate's PNGs; return how many cells each site holds (id_code, site, n_cells)."""
    root, spec, seed, exp, plate, wells, render = job
    if render == "noise":
        return _noise_plate(root, spec, seed, exp, plate, wells)
    pheno = cellsim.sirna_phenotypes(spec.strength, spec.n_pathways, seed)
    batch = cellsim.plate_batch(seed, exp, plate)
    split = wells["split"].iat[0]
    folder = Path(root) / split / exp / f"Plate{plate}"
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for code, well, sirna, ct in wells[["id_code", "well", "sirna", "cell_type"]].itertuples(
        index=False
    ):
        cond = cellsim.well_conditions(seed, exp, plate, well, int(sirna), ct, pheno, batch)
        for site in layout.SITES:
            rng = cellsim.seeded(seed, "site", exp, plate, well, site)
            img, n = cellsim.render_site_counted(
                rng, spec.image_size, spec.cell_radius, cond, batch
            )
            rows.append((code, site, n))
            for c in layout.CHANNELS:
                write_png(folder / layout.png_name(well, site, c), img[c - 1])
    return pd.DataFrame(rows, columns=["id_code", "site", "n_cells"])


def _noise_plate(root, spec, seed, exp, plate, wells) -> None:
    folder = Path(root) / wells["split"].iat[0] / exp / f"Plate{plate}"
    folder.mkdir(parents=True, exist_ok=True)
    rng = cellsim.seeded(seed, "noise", exp, plate)
    shape = (len(layout.SITES), len(layout.CHANNELS), spec.image_size, spec.image_size)
    for well in wells["well"]:
        img = rng.integers(0, 64, shape, dtype=np.uint8)
        for s, site in enumerate(layout.SITES):
            for c in layout.CHANNELS:
                write_png(folder / layout.png_name(well, site, c), img[s, c - 1])
    return None


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

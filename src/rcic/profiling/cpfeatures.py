"""CellProfiler measurements of segmented cells (cp-measure), per cell and per well.

`rcic features --kind cellprofiler` segments every site (rcic.data.segment: nuclei, cells, cytoplasm),
measures each compartment in all six channels with cp-measure (CellProfiler's measurement modules
as numpy functions, from CellProfiler's own lab) and names each feature as CellProfiler does:
``{Compartment}_{Module}_{Measurement}_{Channel}[_{parameters}]``, e.g.
``Cells_Intensity_MeanIntensity_DNA``, ``Nuclei_AreaShape_Area``,
``Cytoplasm_Texture_Contrast_Mito_3_00_256``, ``Cells_Correlation_Correlation_ER_Golgi``, with the
channels w1..w6 named DNA, ER, Actin, RNA, Mito and Golgi. Intensities are the 8-bit pixels / 255,
as CellProfiler reads 8-bit images. pycytominer's `infer_cp_features`, `feature_select` and
`aggregate` recognise these tables as their own.

A well's profile is the median over all its cells, both sites together (pycytominer's
`aggregate`, the field's default). Where one of a cell's compartments is empty (a cell no larger
than its nucleus has no cytoplasm), that cell's measurements of it are missing and the median skips
them; a feature missing in a whole well (a well without cells) takes its plate's median, so that
every profile is complete, and ``Metadata_n_cells`` says how many cells a well had. Positions in
the field of view (``Location_*``, ``AreaShape_Center_*``, ``AreaShape_BoundingBox*``) stay in
the per-cell table and leave the profile: where a cell lies is no phenotype.

The measurement groups and what the default set costs are in `GROUPS` (docs/profiles.md).
"""

from __future__ import annotations

import logging
import re
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd

from rcic import layout
from rcic.data.segment import OBJECTS, Segmenter
from rcic.errors import InputError

log = logging.getLogger(__name__)

CHANNEL_NAMES = layout.FEATURE_CHANNELS  # w1..w6: DNA, ER, Actin, RNA, Mito, Golgi
COMPARTMENTS = {"nuclei": "Nuclei", "cells": "Cells", "cytoplasm": "Cytoplasm"}
# cp-measure's groups; True: in the default set. Costes' colocalisation (about 7 s a 64 px site of
# 50 cells, 10x everything else together) and the radial Zernike moments (360 columns per
# compartment, most of them phases that turn with the cell) are options.
GROUPS = {
    "intensity": True,
    "sizeshape": True,
    "texture": True,
    "granularity": True,
    "radial_distribution": True,
    "zernike": True,
    "feret": True,
    "correlation_pearson": True,
    "correlation_manders_fold": True,
    "correlation_rwc": True,
    "correlation_costes": False,
    "radial_zernikes": False,
}
DEFAULT_GROUPS = tuple(g for g, on in GROUPS.items() if on)
HARALICK = {
    "AngularSecondMoment",
    "Contrast",
    "Correlation",
    "Variance",
    "InverseDifferenceMoment",
    "SumAverage",
    "SumVariance",
    "SumEntropy",
    "Entropy",
    "DifferenceVariance",
    "DifferenceEntropy",
    "InfoMeas1",
    "InfoMeas2",
}
POSITION = re.compile(r"^[A-Za-z]+_(Location_|AreaShape_Center_|AreaShape_BoundingBox)")
_TEXTURE = re.compile(r"^(?P<name>[A-Za-z0-9]+)_(?P<params>\d+_\d+_\d+)$")
_RADIAL = re.compile(r"^RadialDistribution_(?P<name>[A-Za-z]+)_(?P<params>.+)$")
_PAIR = re.compile(r"^Correlation_(?P<name>[A-Za-z]+?)(?:_(?P<which>[12]))?$")


@dataclass(frozen=True)
class Measurements:
    """Which cp-measure groups to compute (`GROUPS`), for which channels."""

    groups: tuple[str, ...] = DEFAULT_GROUPS
    channels: tuple[str, ...] = CHANNEL_NAMES

    def __post_init__(self):
        unknown = [g for g in self.groups if g not in GROUPS]
        if unknown or not self.groups:
            raise InputError(
                f"measurement groups {unknown or '(none)'}: choose from {list(GROUPS)}"
            )

    @classmethod
    def parse(cls, text: str) -> Measurements:
        """``default``, ``all``, or a comma list of groups, where ``default,+costes``-style
        entries add to the default set (``correlation_costes`` may be written ``costes``)."""
        names = [t.strip() for t in text.split(",") if t.strip()]
        groups: list[str] = []
        for name in names:
            name = name.lstrip("+")
            name = "correlation_costes" if name == "costes" else name
            add = {"default": DEFAULT_GROUPS, "all": tuple(GROUPS)}.get(name, (name,))
            groups += [g for g in add if g not in groups]
        return cls(tuple(groups))

    def config(self) -> dict:
        """cp-measure's featurizer configuration of these groups."""
        from cp_measure.featurizer import make_featurizer_config

        flags = {g: g in self.groups for g in GROUPS}
        # Costes' thresholds search the intensity range: 0..1 here, in 8-bit steps
        costes = (
            {"correlation_costes_params": {"scale_max": 255}} if flags["correlation_costes"] else {}
        )
        return make_featurizer_config(list(self.channels), objects=list(OBJECTS), **flags, **costes)


def cellprofiler_name(compartment: str, key: str) -> str:
    """cp-measure's column `key` of `compartment` as CellProfiler names it:
    ``Intensity_MeanIntensity__DNA`` -> ``Cells_Intensity_MeanIntensity_DNA``,
    ``Contrast_3_00_256__ER`` -> ``Cells_Texture_Contrast_ER_3_00_256``,
    ``Correlation_Manders_2__DNA__ER`` -> ``Cells_Correlation_Manders_ER_DNA``."""
    base, *channels = key.split("__")
    if len(channels) == 2:
        m = _PAIR.match(base)
        first, second = channels[::-1] if m and m["which"] == "2" else channels
        name = "Correlation" if m and m["name"] == "Pearson" else (m["name"] if m else base)
        return f"{compartment}_Correlation_{name}_{first}_{second}"
    if not channels:
        return f"{compartment}_AreaShape_{base}"
    (channel,) = channels
    texture, radial = _TEXTURE.match(base), _RADIAL.match(base)
    if texture and texture["name"] in HARALICK:
        return f"{compartment}_Texture_{texture['name']}_{channel}_{texture['params']}"
    if radial:
        return f"{compartment}_RadialDistribution_{radial['name']}_{channel}_{radial['params']}"
    return f"{compartment}_{base}_{channel}"  # Intensity_*, Granularity_*, Location_*


def measure_site(image: np.ndarray, labels: np.ndarray, measurements: Measurements) -> pd.DataFrame:
    """One row per cell of a site: ``Metadata_ObjectNumber`` (the cell's label, shared by its
    nucleus and cytoplasm), then every compartment's measurements under CellProfiler's names.

    Args:
        image: (6, H, W) uint8 site.
        labels: (3, H, W) nuclei, cells and cytoplasm labels (rcic.data.segment).
    """
    from cp_measure.featurizer import featurize

    if not labels[1].any():
        return pd.DataFrame({"Metadata_ObjectNumber": np.zeros(0, np.int32)})
    pixels = (np.asarray(image, np.float32) / 255.0)[None]
    with warnings.catch_warnings():  # cp-measure warns of empty objects and of 0/0 in its ratios
        warnings.simplefilter("ignore")
        with np.errstate(all="ignore"):
            data, columns, rows = featurize(pixels, labels[None], measurements.config())
    frame = pd.DataFrame(data.astype(np.float32), columns=columns)
    frame["object"] = [r[1] for r in rows]
    frame["label"] = np.array([r[2] for r in rows], np.int32)
    parts = []
    for obj in OBJECTS:
        part = frame[frame["object"] == obj].set_index("label").drop(columns="object")
        part.columns = [cellprofiler_name(COMPARTMENTS[obj], c) for c in part.columns]
        parts.append(part)
    cells = parts[0].join(parts[1], how="outer").join(parts[2], how="left")
    cells = cells.replace([np.inf, -np.inf], np.nan)
    cells.index.name = "Metadata_ObjectNumber"
    return cells.reset_index()


def profile_columns(cells: pd.DataFrame) -> list[str]:
    """The per-cell columns that enter a well's profile: every CellProfiler feature but the
    positions in the field of view."""
    return [
        c
        for c in cells.columns
        if c.split("_", 1)[0] in COMPARTMENTS.values() and not POSITION.match(c)
    ]


def well_medians(cells: pd.DataFrame, features: list[str]) -> pd.DataFrame:
    """pycytominer's `aggregate` (median) of `cells` per ``Metadata_id_code``, with
    ``Metadata_n_cells``."""
    from rcic.profiling.profiles import _pycytominer, _quiet

    med = _quiet(
        _pycytominer().aggregate,
        cells[["Metadata_id_code", *features]],
        strata=["Metadata_id_code"],
        features=features,
        operation="median",
    )
    counts = cells.groupby("Metadata_id_code").size().rename("Metadata_n_cells")
    return med.merge(counts.reset_index(), on="Metadata_id_code")


def segment_and_measure(
    image: np.ndarray, segmenter: Segmenter, measurements: Measurements
) -> tuple[np.ndarray, pd.DataFrame]:
    """A site's labels (3, H, W) and its cells' measurements."""
    labels = segmenter.segment(image)
    return labels, measure_site(image, labels, measurements)

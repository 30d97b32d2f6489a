"""Cell segmentation as CellProfiler's classic pipelines do it, with scikit-image.

Per site (uint8, 6 channels, read as CellProfiler reads 8-bit images: intensities / 255):

- **nuclei** (IdentifyPrimaryObjects on DNA, w1): the DNA image smoothed, thresholded by Otsu,
  touching nuclei split by a watershed on the distance transform from one marker per nucleus
  (the smoothed DNA's local maxima, at least half a nucleus apart), objects much smaller than a
  nucleus dropped;
- **cells** (IdentifySecondaryObjects): each nucleus grown by a watershed over the gradient of a
  cytoplasm signal (ER, actin, RNA, mitochondria and Golgi, w2..w6, each scaled by its own 99th
  percentile and summed), within that signal's Otsu foreground and at most a cell's reach from a
  nucleus;
- **cytoplasm** (IdentifyTertiaryObjects): each cell minus its nucleus.

A nucleus, its cell and its cytoplasm share one label, so their measurements join per cell.

Sizes follow the image: unless a nucleus diameter is given, it is estimated on each site as twice
the median distance-transform maximum of the Otsu foreground (a nucleus' radius at its centre,
whether it touches others or not), and every other length (smoothing, marker spacing, the
smallest nucleus, a cell's reach) is a fixed fraction of it. The same code therefore runs on a
64 px synthetic site with nuclei 6 px across and on a real 512 px site with nuclei 20 px across.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

DNA, CYTOPLASM = 0, (1, 2, 3, 4, 5)  # channel indices (w1; w2..w6)
OBJECTS = ("nuclei", "cells", "cytoplasm")


@dataclass(frozen=True)
class Segmenter:
    """How nuclei and cells are found; every length is a fraction of the nucleus diameter.

    Attributes:
        nucleus_diameter: typical nucleus diameter in pixels; 0 estimates it on each site.
        smoothing: Gaussian sigma of the DNA image before thresholding and markers (x diameter).
        marker_spacing: two nuclei's markers are at least this far apart (x diameter).
        min_area: nuclei smaller than this fraction of a typical nucleus' area are dropped.
        cell_reach: a cell reaches at most this far beyond its nucleus (x diameter).
        compactness: scikit-image's watershed compactness when growing cells (0: pure gradient).
    """

    nucleus_diameter: float = 0.0
    smoothing: float = 0.12
    marker_spacing: float = 0.5
    min_area: float = 0.15
    cell_reach: float = 1.5
    compactness: float = 0.01

    def __post_init__(self):
        if self.nucleus_diameter < 0:
            raise ValueError(f"nucleus_diameter must be >= 0, not {self.nucleus_diameter}")
        for name in ("smoothing", "marker_spacing", "min_area", "cell_reach"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, not {getattr(self, name)}")

    def segment(self, site: np.ndarray) -> np.ndarray:
        """(6, H, W) uint8 -> (3, H, W) int32 labels of nuclei, cells and cytoplasm."""
        image = np.asarray(site, np.float32) / 255.0
        nuclei, diameter = self.nuclei(image[DNA])
        cells = self.cells(image, nuclei, diameter)
        cytoplasm = np.where(nuclei > 0, 0, cells)
        return np.stack([nuclei, cells, cytoplasm]).astype(np.int32)

    def nuclei(self, dna: np.ndarray) -> tuple[np.ndarray, float]:
        """Nucleus labels of a DNA image (0..1) and the nucleus diameter used."""
        from skimage.feature import peak_local_max
        from skimage.segmentation import watershed

        diameter = self.nucleus_diameter or estimate_diameter(dna)
        smooth = ndimage.gaussian_filter(dna, max(0.5, self.smoothing * diameter))
        if smooth.max() <= smooth.min():  # a blank site holds no nuclei
            return np.zeros(dna.shape, np.int32), diameter
        foreground = dna_foreground(smooth, diameter)
        distance = ndimage.distance_transform_edt(foreground)
        spacing = max(1, int(round(self.marker_spacing * diameter)))
        # markers: maxima of the DNA signal, weighed by how deep they lie inside the foreground
        peaks = peak_local_max(
            smooth * np.sqrt(distance),
            min_distance=spacing,
            labels=foreground,
            exclude_border=False,
        )
        markers = np.zeros(dna.shape, np.int32)
        markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
        labels = watershed(-distance, markers, mask=foreground)
        return _drop_small(labels, self.min_area * np.pi * diameter**2 / 4), diameter

    def cells(self, image: np.ndarray, nuclei: np.ndarray, diameter: float) -> np.ndarray:
        """Cell labels: each nucleus grown over the cytoplasm signal's gradient."""
        from skimage.filters import sobel, threshold_otsu
        from skimage.segmentation import watershed

        if not nuclei.any():
            return nuclei.copy()
        signal = cytoplasm_signal(image, max(0.5, self.smoothing * diameter))
        foreground = signal > threshold_otsu(signal) if signal.max() > signal.min() else nuclei > 0
        reach = ndimage.distance_transform_edt(nuclei == 0) <= self.cell_reach * diameter
        mask = (foreground & reach) | (nuclei > 0)
        return watershed(sobel(signal), nuclei, mask=mask, compactness=self.compactness)


def dna_foreground(smooth: np.ndarray, diameter: float) -> np.ndarray:
    """Where nuclei are: above a threshold that follows the illumination (scikit-image's local
    threshold over about four nuclei) and above Otsu's threshold of the log-intensities, which
    keeps dim nuclei beside bright ones and ignores the dark background's noise."""
    from skimage.filters import threshold_local, threshold_otsu

    block = 2 * int(2 * diameter) + 1
    log = np.log(smooth + 1e-3)
    return (smooth > threshold_local(smooth, block)) & (log > threshold_otsu(log))


def estimate_diameter(dna: np.ndarray) -> float:
    """A site's typical nucleus diameter in pixels: twice the median depth (distance-transform
    maximum) of the Otsu foreground's blobs, found after a light smoothing."""
    from skimage.feature import peak_local_max
    from skimage.filters import threshold_otsu

    smooth = ndimage.gaussian_filter(dna, 1.0)
    if smooth.max() <= smooth.min():
        return 8.0  # nothing to measure: any length will do on a blank site
    distance = ndimage.distance_transform_edt(smooth > threshold_otsu(smooth))
    peaks = peak_local_max(distance, min_distance=2, threshold_abs=1.0, exclude_border=False)
    if len(peaks) == 0:
        return 8.0
    return float(max(4.0, 2 * np.median(distance[tuple(peaks.T)])))


def cytoplasm_signal(image: np.ndarray, sigma: float) -> np.ndarray:
    """w2..w6, each divided by its own 99th percentile (so that no stain dominates), summed and
    smoothed: where cells are."""
    planes = [image[c] / max(float(np.percentile(image[c], 99)), 1e-6) for c in CYTOPLASM]
    return ndimage.gaussian_filter(np.sum(planes, axis=0), sigma)


def _drop_small(labels: np.ndarray, min_area: float) -> np.ndarray:
    """`labels` without objects under `min_area` pixels, the rest numbered 1..n in order."""
    area = np.bincount(labels.ravel())
    keep = area >= min_area
    keep[0] = False
    new = np.zeros(len(area), np.int32)
    new[keep] = np.arange(1, keep.sum() + 1)
    return new[labels]


def overlay(site: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """An RGB picture (H, W, 3) uint8 to check a segmentation by eye: the DNA channel in grey
    (stretched to its 99.7th percentile), nucleus outlines in red, cell outlines in green."""
    from skimage.segmentation import find_boundaries

    dna = site[DNA].astype(np.float32)
    grey = np.clip(dna / max(float(np.percentile(dna, 99.7)), 1.0), 0, 1)
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    cells = find_boundaries(labels[1], mode="inner")
    nuclei = find_boundaries(labels[0], mode="inner")
    rgb[cells & ~nuclei] = (0.1, 0.9, 0.1)
    rgb[nuclei] = (1.0, 0.15, 0.15)
    return (rgb * 255).astype(np.uint8)

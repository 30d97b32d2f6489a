"""Cell-image simulator behind the synthetic screens: phenotypes, nuisance, batch effects, cells.

The model follows the simulators in the literature (SimuCell, SIMCEP: subpopulations of cells with
their own shapes and markers, then image formation) and is built so that a screen's labels live in
*morphology*, not in a handful of image-wide numbers:

- An siRNA changes the shape, size, texture and position of structures (see ``MORPH_DIMS``):
  nuclear size, elongation, position in the cell and chromatin granularity, cell spreading and
  elongation, ER spread or perinuclear, mitochondria and Golgi gathered on one side or all around
  the nucleus, actin fibres along the cell's long axis or across it, nucleoli central or
  peripheral, clustering of cells, fractions of rounded, mitotic and dying cells. Most of an
  siRNA's effect is in *arrangement*, which keeps a stain's pixel values and moves only where
  they lie; effects on brightness, area and texture are damped (``DIM_WEIGHT``), and direct
  intensity effects (``INTENSITY_DIMS``) are small beside the nuisance below.
- Per cell: only a fraction of a well's cells respond (penetrance by siRNA, jittered by well), each
  with its own strength, on top of natural cell-to-cell variation in every parameter.
- Per cell type: a response of its own; about one siRNA in five is silent in some cell types.
- Strengths are right-skewed (log-normal): most siRNAs weak, a few strong; positive controls
  strong; the negative control has none.
- Per well (nuisance): cell count, focus, per-channel intensity jitter.
- Batch effects: per experiment a non-linear (power-law) intensity response, channel gains and
  offsets, a phenotype scale and a phenotype shift shared by all its cells, a density level; per
  plate an illumination field, a focus drift across the plate and plate-edge effects (outer wells
  sparser and brighter). A per-plate z-score undoes the gains and offsets only.

Everything is drawn from generators keyed by (seed, what, where), so the bytes of a site depend
only on the seed and its position, never on the order of work.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import ndimage
from scipy.special import expit

from rcic import layout

MORPH_DIMS = (
    "nucleus_size",
    "nucleus_elongation",
    "nucleus_eccentricity",
    "chromatin_granularity",
    "cell_size",
    "cell_elongation",
    "er_spread",
    "mito_polarity",
    "golgi_polarity",
    "actin_alignment",
    "nucleoli_position",
    "clustering",
    "rounded",
    "mitotic",
    "dying",
)
INTENSITY_DIMS = ("w1", "w2", "w3", "w4", "w5", "w6")
PHENOTYPE_DIMS = MORPH_DIMS + INTENSITY_DIMS
N_MORPH = len(MORPH_DIMS)
# How strongly an siRNA may act on each morphology dim. Arrangement (elongation, eccentricity,
# polarity, alignment, position) keeps a stain's pixel values and moves only where they lie; dims
# that change brightness, covered area or texture (sizes, spread, granularity, cell states) are
# damped, since image-wide statistics see them.
DIM_WEIGHT = np.array([0.12, 1, 1, 0.15, 0.12, 1, 0.15, 1, 1, 1, 1, 0.4, 0.12, 0.12, 0.12])
N_DIMS = len(PHENOTYPE_DIMS)
D = {name: i for i, name in enumerate(PHENOTYPE_DIMS)}

# Cell-type morphology: radius scale, elongation, density (confluence) and brightness.
CELL_TYPES = {
    "HEPG2": (0.8, 1.15, 1.45, 1.5),
    "HUVEC": (1.0, 1.9, 1.0, 1.0),
    "RPE": (1.1, 1.4, 0.9, 1.0),
    "U2OS": (1.05, 1.5, 1.0, 0.9),
}
# Mean stain intensity (0..255, before gains) of each channel where it is brightest in a cell.
BASE_LEVEL = np.array([60.0, 32.0, 30.0, 26.0, 26.0, 30.0], np.float32)
BACKGROUND = np.array([1.5, 3.0, 3.0, 2.5, 1.5, 3.0], np.float32)
INTENSITY_EFFECT = 0.03  # log-intensity change per unit of an intensity dimension: small
NUCLEUS = 0.38  # nucleus radius / cell radius of a typical cell
PATHWAY_SHARE = 0.35  # share of a treatment's phenotype common to its pathway
MAX_RADIUS, MAX_ELONGATION = 1.8, 4.0  # bounds on a cell's radius (x the type's) and elongation
MAX_HALF = MAX_RADIUS * np.sqrt(MAX_ELONGATION) * 1.25  # largest drawing window, in cell radii


def seeded(seed: int, *keys) -> np.random.Generator:
    """A generator that depends only on the seed and the keys, not on the order of work."""
    digest = hashlib.sha256(json.dumps([seed, *map(str, keys)]).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


# --- siRNA phenotypes ------------------------------------------------------------------------


@dataclass(frozen=True)
class Phenotypes:
    """What every class id does, per cell type.

    Attributes:
        effect: (n_cell_types, N_CLASSES, N_DIMS) phenotype of a fully responding cell.
        penetrance: (N_CLASSES,) fraction of a well's cells that respond.
        strength: (N_CLASSES,) overall strength (0 for the negative control).
        pathway: (N_CLASSES,) pathway of each treatment, -1 for none.
    """

    effect: np.ndarray
    penetrance: np.ndarray
    strength: np.ndarray
    pathway: np.ndarray

    def of(self, sirna: int, cell_type: str) -> np.ndarray:
        return self.effect[_cell_type_index(cell_type), sirna]


def _cell_type_index(cell_type: str) -> int:
    names = list(CELL_TYPES)
    return names.index(cell_type) if cell_type in names else 0


def _sparse_directions(rng: np.random.Generator, n: int) -> np.ndarray:
    """Unit vectors over the morphology dims, each with 2 to 4 non-zero entries."""
    out = np.zeros((n, N_DIMS))
    for i in range(n):
        k = int(rng.integers(2, 5))
        dims = rng.choice(N_MORPH, size=k, replace=False)
        out[i, dims] = rng.normal(0, 1, k)
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    out[:, :N_MORPH] *= DIM_WEIGHT
    out[:, N_MORPH:] = rng.normal(0, 0.5, (n, len(INTENSITY_DIMS)))  # small, see INTENSITY_EFFECT
    return out


@lru_cache(maxsize=4)
def sirna_phenotypes(strength: float, n_pathways: int, seed: int) -> Phenotypes:
    """Phenotypes of every class id.

    A treatment's direction is sparse (2-4 morphology dims); siRNAs of one pathway share ``PATHWAY_SHARE`` of it.
    Its strength is ``strength`` times a log-normal factor (sd 0.6): most siRNAs weak, few strong.
    Each cell type sees 75% of the shared response plus 25% of its own; a treatment is silent in a
    cell type with probability 0.2 (never in all of them). Positive controls: three times the
    median strength, all cell types, penetrance 0.9. The negative control: nothing.
    """
    rng = seeded(seed, "phenotypes")
    n_ct = len(CELL_TYPES)
    nt, neg = layout.N_TREATMENTS, layout.NEGATIVE_ID
    base = _sparse_directions(rng, layout.N_CLASSES)
    pathway = np.full(layout.N_CLASSES, -1)
    if n_pathways:
        centres = _sparse_directions(rng, n_pathways)
        pathway[:nt] = rng.integers(n_pathways, size=nt)
        base[:nt] = (
            np.sqrt(PATHWAY_SHARE) * centres[pathway[:nt]] + np.sqrt(1 - PATHWAY_SHARE) * base[:nt]
        )
    own = _sparse_directions(rng, n_ct * layout.N_CLASSES).reshape(n_ct, layout.N_CLASSES, N_DIMS)
    effect = np.sqrt(0.85) * base[None] + np.sqrt(0.15) * own
    active = rng.random((n_ct, layout.N_CLASSES)) >= 0.1
    active[:, ~active.any(axis=0)] = True
    active[:, nt:] = True
    factor = np.clip(np.exp(rng.normal(0, 0.6, layout.N_CLASSES)), 0.25, 3.0)
    factor[nt:neg] = 3.0
    s = strength * factor
    s[neg] = 0.0
    effect = effect * (active[..., None] * s[None, :, None])
    penetrance = 0.5 + 0.45 * rng.beta(3, 2, layout.N_CLASSES)
    penetrance[nt:neg] = 0.9
    penetrance[neg] = 0.0
    return Phenotypes(effect.astype(np.float32), penetrance, s, pathway)


# --- batch effects and nuisance ---------------------------------------------------------------


@dataclass(frozen=True)
class Batch:
    """What the day (experiment) and the plate did to the images of one plate."""

    gain: np.ndarray  # (6,) experiment x plate channel gain
    gamma: np.ndarray  # (6,) power-law response of the experiment's imaging
    offset: np.ndarray  # (6,) additive background after the gain
    pheno_scale: float  # how strongly phenotypes show in this experiment
    pheno_shift: np.ndarray  # (N_DIMS,) a morphology every cell of the experiment shares
    density: float  # the experiment's seeding density
    field: np.ndarray  # (3, 4) illumination field: amplitude, x and y frequency, phase
    focus: np.ndarray  # (3,) blur at the plate centre and its drift along rows and columns
    edge_density: float  # density factor of outer wells
    edge_intensity: float  # intensity factor of outer wells


def plate_batch(seed: int, experiment: str, plate: int) -> Batch:
    e = seeded(seed, "experiment", experiment)
    p = seeded(seed, "plate", experiment, plate)
    gain = np.exp(e.normal(0, 0.35, 6) + e.normal(0, 0.2) + p.normal(0, 0.1, 6))
    field = np.stack(
        [
            p.uniform(0.04, 0.12, 3),
            p.uniform(0.3, 1.0, 3),
            p.uniform(0.3, 1.0, 3),
            p.uniform(0, 6.3, 3),
        ],
        axis=1,
    )
    shift = np.zeros(N_DIMS)
    shift[:N_MORPH] = e.normal(0, 0.1, N_MORPH)
    return Batch(
        gain=gain,
        gamma=np.exp(e.normal(0, 0.12, 6)),
        offset=e.uniform(0.5, 4, 6),
        pheno_scale=float(np.exp(e.normal(0, 0.15))),
        pheno_shift=shift,
        density=float(np.exp(e.normal(0, 0.15))),
        field=field,
        focus=np.array([p.uniform(0.0, 0.4), p.normal(0, 0.2), p.normal(0, 0.2)]),
        edge_density=float(p.uniform(0.6, 0.9)),
        edge_intensity=float(p.uniform(1.05, 1.25)),
    )


@dataclass(frozen=True)
class Well:
    """Conditions shared by both sites of one well."""

    cell_type: str
    effect: np.ndarray  # (N_DIMS,) phenotype of a fully responding cell, batch scale applied
    shift: np.ndarray  # (N_DIMS,) the experiment's shared morphology
    penetrance: float
    density: float
    focus: float  # blur sigma in units of the cell radius / 15
    jitter: np.ndarray  # (6,) intensity factor


def well_conditions(
    seed: int,
    experiment: str,
    plate: int,
    well: str,
    sirna: int,
    cell_type: str,
    pheno: Phenotypes,
    batch: Batch,
) -> Well:
    rng = seeded(seed, "well", experiment, plate, well)
    row, col = layout.well_position(well)
    edge = row in (1, 14) or col in (2, 23)
    y, x = (row - 7.5) / 6.5, (col - 12.5) / 10.5  # -1..1 across the usable wells
    focus = batch.focus[0] + batch.focus[1] * y + batch.focus[2] * x + abs(rng.normal(0, 0.25))
    jitter = np.exp(rng.normal(0, 0.15, 6) + rng.normal(0, 0.12))
    if edge:
        jitter = jitter * batch.edge_intensity
    pen = float(np.clip(pheno.penetrance[sirna] + rng.normal(0, 0.1), 0.0, 1.0))
    return Well(
        cell_type=cell_type,
        effect=pheno.of(sirna, cell_type) * batch.pheno_scale,
        shift=batch.pheno_shift,
        penetrance=pen if pheno.strength[sirna] > 0 else 0.0,
        density=batch.density
        * float(np.exp(rng.normal(0, 0.3)))
        * (batch.edge_density if edge else 1.0),
        focus=float(np.clip(focus, 0.0, 1.5)),
        jitter=jitter,
    )


# --- rendering -------------------------------------------------------------------------------


def _sig(x):
    return expit(x)


class _Canvas:
    """A padded (6, H, W) canvas, smooth noise fields for textures, and max-compositing of cells."""

    def __init__(self, rng: np.random.Generator, size: int, radius: float):
        self.size, self.pad = size, int(np.ceil(radius * MAX_HALF)) + 3
        full = size + 2 * self.pad
        self.img = np.zeros((6, full, full), np.float32)
        noise = rng.standard_normal((3, full, full)).astype(np.float32)
        sig = (max(0.5, radius / 14), max(0.8, radius / 7), max(1.5, radius / 3.5))
        self.tex = np.stack(
            [_unit(ndimage.gaussian_filter(n, s)) for n, s in zip(noise, sig, strict=True)]
        )

    def window(self, cy: float, cx: float, half: int):
        y0, x0 = int(cy) - half + self.pad, int(cx) - half + self.pad
        sl = (slice(y0, y0 + 2 * half + 1), slice(x0, x0 + 2 * half + 1))
        yy, xx = np.mgrid[sl[0], sl[1]].astype(np.float32)
        return sl, yy - (cy + self.pad), xx - (cx + self.pad)

    def crop(self) -> np.ndarray:
        p = self.pad
        return self.img[:, p:-p, p:-p]


def _unit(a: np.ndarray) -> np.ndarray:
    return (a - a.mean()) / (a.std() + 1e-6)


def _positions(rng, n: int, size: int, radius: float, clustered: float) -> np.ndarray:
    """Cell centres: uniform, or (a fraction `clustered`) packed around a few colony centres."""
    pos = rng.uniform(0, size, (n, 2))
    in_cluster = rng.random(n) < clustered
    k = in_cluster.sum()
    if k:
        centres = rng.uniform(0.15 * size, 0.85 * size, (max(1, k // 6), 2))
        which = rng.integers(len(centres), size=k)
        spread = radius * (1.0 + 0.4 * np.sqrt(np.bincount(which, minlength=len(centres))[which]))
        pos[in_cluster] = np.clip(
            centres[which] + rng.normal(0, 1, (k, 2)) * spread[:, None], 0, size - 1
        )
    return pos


def render_site(
    rng: np.random.Generator, size: int, radius: float, well: Well, batch: Batch
) -> np.ndarray:
    """Render one site as uint8 (6, size, size)."""
    r_scale, elong, density, bright = CELL_TYPES.get(well.cell_type, (1.0, 1.4, 1.0, 1.0))
    r_cell = radius * r_scale
    n = max(1, int(rng.poisson(1.4 * density * well.density * size**2 / (np.pi * r_cell**2))))
    respond = rng.random(n) < well.penetrance
    strength = rng.gamma(4.0, 0.25, n) * respond
    mean_p = well.shift + well.effect * (well.penetrance * 1.0)
    pos = _positions(rng, n, size, r_cell, float(_sig(-1.5 + 1.5 * mean_p[D["clustering"]])))
    canvas = _Canvas(rng, size, r_cell)
    for i in rng.permutation(n):  # random z-order
        p = well.shift + strength[i] * well.effect
        _draw_cell(canvas, rng, pos[i], r_cell, elong, p)
    img = (
        canvas.crop()
        * (BASE_LEVEL * bright * np.exp(INTENSITY_EFFECT * mean_p[N_MORPH:]))[:, None, None]
    )
    return _form_image(img, rng, radius, well, batch)


def _state(rng, p) -> str:
    probs = _sig(np.array([-3.2, -3.5, -4.0]) + 1.5 * p[[D["rounded"], D["mitotic"], D["dying"]]])
    u = rng.random()
    for name, pr in zip(("rounded", "mitotic", "dying"), probs, strict=True):
        if u < pr:
            return name
        u -= pr
    return "normal"


def _cell_sizes(rng, p, state: str, r_cell: float, elong: float):
    """(cell radius, cell elongation, nucleus radius, nucleus elongation, gain) of one cell."""
    r_c = r_cell * np.exp(0.25 * p[D["cell_size"]] + rng.normal(0, 0.12))
    e_c = max(1.0, elong * np.exp(0.4 * p[D["cell_elongation"]] + rng.normal(0, 0.2)))
    r_n = NUCLEUS * r_cell * np.exp(0.3 * p[D["nucleus_size"]] + rng.normal(0, 0.1))
    e_n = max(1.0, 1.15 * np.exp(0.45 * p[D["nucleus_elongation"]] + rng.normal(0, 0.12)))
    gain = 1.0
    if state != "normal":
        r_c, e_c, gain = r_c * {"rounded": 0.62, "mitotic": 0.55, "dying": 0.45}[state], 1.0, 1.6
        r_n, e_n = (
            (r_n * 0.75, 1.0)
            if state == "rounded"
            else (r_n * 0.6, 2.4 if state == "mitotic" else 1.0)
        )
    r_c, e_c = min(r_c, MAX_RADIUS * r_cell), min(e_c, MAX_ELONGATION)
    r_n = min(r_n, 0.8 * r_c)
    return r_c, e_c, r_n, e_n, gain


def _draw_cell(canvas: _Canvas, rng, pos, r_cell, elong, p) -> None:
    state = _state(rng, p)
    r_c, e_c, r_n, e_n, gain = _cell_sizes(rng, p, state, r_cell, elong)
    theta = rng.uniform(0, np.pi)
    half = int(np.ceil(r_c * np.sqrt(e_c) * 1.25)) + 2
    sl, dy, dx = canvas.window(pos[0], pos[1], half)
    ct, st = np.cos(theta), np.sin(theta)
    u, v = dx * ct + dy * st, -dx * st + dy * ct
    a, b = r_c * np.sqrt(e_c), r_c / np.sqrt(e_c)
    phi = np.arctan2(v / b, u / a)
    wob = (
        1
        + 0.08 * np.cos(2 * phi + rng.uniform(0, 6.3))
        + 0.06 * np.cos(3 * phi + rng.uniform(0, 6.3))
    )
    rho_c = np.sqrt((u / a) ** 2 + (v / b) ** 2) / wob
    cell = _sig((1 - rho_c) * 9)
    # nucleus: off centre along the long axis, its own orientation
    ecc = 0.35 * _sig(1.5 * p[D["nucleus_eccentricity"]] - 1.0 + rng.normal(0, 0.3))
    nu, nv = u - ecc * a * rng.choice((-1, 1)), v
    tn = rng.normal(0, 0.3)
    nu, nv = nu * np.cos(tn) + nv * np.sin(tn), -nu * np.sin(tn) + nv * np.cos(tn)
    an, bn = r_n * np.sqrt(e_n), r_n / np.sqrt(e_n)
    rho_n = np.sqrt((nu / an) ** 2 + (nv / bn) ** 2)
    nucleus = _sig((1 - rho_n) * 10)
    cyto = cell * (1 - nucleus)
    t = np.maximum(rho_n - 1, 0) * r_n / r_c  # distance from the nucleus, in cell radii
    tex = [canvas.tex[k][sl] for k in range(3)]
    planes = np.empty((6,) + cell.shape, np.float32)
    planes[0] = (
        _nucleus_plane(rng, p, state, nucleus, tex, nu, nv, r_n) * (NUCLEUS * r_cell / r_n) ** 1.2
    )
    planes[1] = _spread(
        cyto, t, 0.35 * np.exp(0.6 * p[D["er_spread"]]), 0.75 + 0.35 * np.clip(tex[1], -1, 2)
    )
    planes[2] = _actin(rng, p, cell, cyto, rho_c, tex, dx, dy, theta, r_cell)
    planes[3] = _nucleoli(rng, p, state, nucleus, cyto, nu, nv, an, bn, r_n)
    pol = 0.9 * _sig(2 * p[D["mito_polarity"]] - 1 + rng.normal(0, 0.3))
    side = 1 + pol * np.cos(np.arctan2(nv, nu) - rng.uniform(0, 2 * np.pi))
    planes[4] = _spread(cyto, t, 0.3, 2.2 * np.maximum(tex[0] - 0.2, 0) * side)
    planes[5] = _golgi(rng, p, cell, rho_c, nu, nv, r_n)
    if state == "dying":
        planes[[1, 4]] *= 0.5
    win = canvas.img[(slice(None),) + sl]
    np.maximum(win, planes * gain, out=win)


def _nucleus_plane(rng, p, state, nucleus, tex, nu, nv, r_n):
    if state == "dying":  # fragmented: a few small bright pieces
        out = np.zeros_like(nucleus)
        for du, dv in rng.normal(0, 0.7 * r_n, (int(rng.integers(2, 5)), 2)):
            out += 1.3 * np.exp(-((nu - du) ** 2 + (nv - dv) ** 2) / (2 * (0.35 * r_n) ** 2))
        return out
    g = _sig(1.5 * p[D["chromatin_granularity"]] + rng.normal(0, 0.3))
    grain = g * tex[2] + (1 - g) * tex[0]
    level = 2.0 if state == "mitotic" else 1.0
    return nucleus * level * (0.8 + 0.3 * np.clip(grain, -2, 2))


def _spread(cyto, t, scale, texture):
    """A stain spread from the nucleus with length `scale` (in cell radii); its total is fixed."""
    prof = cyto * np.exp(-t / scale) * texture
    return prof * (cyto.sum() / (prof.sum() + 1e-6))


def _actin(rng, p, cell, cyto, rho_c, tex, dx, dy, theta, r_cell):
    ring = np.exp(-(((rho_c - 0.9) / 0.12) ** 2)) * cell
    tf = theta + np.pi / 2 * _sig(2.5 * p[D["actin_alignment"]] - 1 + rng.normal(0, 0.3))
    w = -dx * np.sin(tf) + dy * np.cos(tf)
    period = max(2.5, r_cell / 3.2)
    fib = (0.5 + 0.5 * np.cos(2 * np.pi * w / period + rng.uniform(0, 6.3))) ** 6 * cell
    fib = fib * (0.7 + 0.3 * np.clip(tex[0], -2, 2))
    alpha = _sig(rng.normal(0.3, 0.5))
    total = cell.sum()
    out = (1 - alpha) * ring * (total / (ring.sum() + 1e-6)) + alpha * fib * (
        total / (fib.sum() + 1e-6)
    )
    return 0.3 * out + 0.3 * cyto


def _nucleoli(rng, p, state, nucleus, cyto, nu, nv, an, bn, r_n):
    rna = 0.3 * cyto + 0.15 * nucleus
    if state in ("mitotic", "dying"):
        return rna
    k = 1 + int(rng.poisson(2.5))
    sigma = 0.13 * r_n
    spots = np.zeros_like(nucleus)
    where = 0.1 + 0.45 * _sig(2 * p[D["nucleoli_position"]] + rng.normal(0, 0.3))
    ang, rad = rng.uniform(0, 2 * np.pi, k), where * rng.uniform(0.7, 1.0, k)
    for da, dr in zip(ang, rad, strict=True):
        spots += np.exp(
            -((nu - dr * an * np.cos(da)) ** 2 + (nv - dr * bn * np.sin(da)) ** 2) / (2 * sigma**2)
        )
    area = 2 * np.pi * sigma**2 * k
    return rna + np.minimum(spots, 1.5) * nucleus * min(2.0, 0.9 * np.pi * r_n**2 / area * 0.35)


def _golgi(rng, p, cell, rho_c, nu, nv, r_n):
    gd = _sig(2 * p[D["golgi_polarity"]] - 1 + rng.normal(0, 0.3))
    k = 4
    centre = rng.uniform(0, 2 * np.pi)
    spread = 0.5 + 2.3 * gd  # radians: gathered on one side of the nucleus, or all around it
    ang = centre + spread * (np.linspace(-0.5, 0.5, k) + rng.normal(0, 0.08, k))
    dist = r_n * (1.2 + rng.uniform(0, 0.4, k))
    sigma = 0.25 * r_n
    blobs = np.zeros_like(cell)
    for a, d in zip(ang, dist, strict=True):
        blobs += np.exp(-((nu - d * np.cos(a)) ** 2 + (nv - d * np.sin(a)) ** 2) / (2 * sigma**2))
    membrane = 0.15 * cell + 0.25 * np.exp(-(((rho_c - 0.95) / 0.07) ** 2)) * cell
    return membrane + 1.2 * np.minimum(blobs, 1.2) * cell


def _form_image(img, rng, radius, well: Well, batch: Batch) -> np.ndarray:
    """Image formation: illumination, focus, gain, non-linear response, background and noise."""
    size = img.shape[-1]
    ax = np.linspace(-1, 1, size, dtype=np.float32)
    yy, xx = np.meshgrid(ax, ax, indexing="ij")
    field = np.ones_like(xx)
    for amp, fx, fy, ph in batch.field:
        field += amp * np.cos(np.pi * (fx * xx + fy * yy) + ph)
    out = img * field[None] * well.jitter[:, None, None] + BACKGROUND[:, None, None]
    sigma = well.focus * radius / 15
    if sigma > 0.3:
        out = ndimage.gaussian_filter(out, (0, sigma, sigma))
    out = out * batch.gain[:, None, None]
    out = (
        255.0 * (np.maximum(out, 0) / 255.0) ** batch.gamma[:, None, None]
        + batch.offset[:, None, None]
    )
    out += rng.normal(0, 1, out.shape).astype(np.float32) * np.sqrt(0.3 * out + 1.0)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)

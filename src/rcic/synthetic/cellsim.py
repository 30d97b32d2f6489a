"""Cell-image simulator behind the synthetic screens: phenotypes, nuisance, batch effects, cells.

The model follows the simulators in the literature (SimuCell, SIMCEP: subpopulations of cells with
their own shapes and markers, then image formation) and is built so that a screen's labels live in
*arrangement*, which image-wide numbers cannot read (since generator v4; v5 re-fits w5):

- Each cell has a frame: its long axis (lined up with a per-site axis as much as
  ``cell_alignment`` says), its nucleus' long axis (turned from the cell's by
  ``nucleus_orientation``), and a front at one end, which shows as a migrating cell's does: an
  actin-rich leading edge at that end of the cell (``LEADING_EDGE``) and the nucleus a little set
  back from it. An siRNA moves where stains lie in that frame (see ``MORPH_DIMS``): the nucleus
  off centre, ER gathered behind the nucleus, RNA and nucleoli toward the front, mitochondria on
  one side (along the nucleus axis or across it), Golgi in front or behind, actin fibres along
  the cell or across it. A polarity dim sets how consistently cells take that side; every cell
  gathers its stain equally either way, so the histogram of a channel moves little. (In v3 only
  the small set-back of the nucleus marked the front, so a side "toward the front" could hardly
  be told from one away from it, and the demo recipe stayed at chance:
  benchmarks/results/learnability_v3.txt.)
- Effects on brightness, size, texture, clustering and cell states are damped (``DAMPED``) until
  the leak audit (``rcic.synthetic.baselines.leak_audit``) showed none of them moving any of the
  baselines' 42 statistics by more than half their well-to-well spread (shift - 2 standard
  errors) on the plates it audited; direct intensity effects (``INTENSITY_DIMS``) are tiny. The
  arrangement dims do move some statistics (a polarity the foreground fraction of its channel
  by up to 1.6 sd at a strong siRNA; benchmarks/results/leak_audit.txt), yet the baselines read
  at most 0.022 of the test wells.
- Per cell: only a fraction of a well's cells respond (penetrance by siRNA, jittered by well), each
  with its own strength, on top of natural cell-to-cell variation in every parameter.
- Per cell type: size, shape, confluence and per-channel stain levels and backgrounds matched to
  the real negative-control sites (``CELL_TYPES``, benchmarks/synth_vs_real.py), and a response of
  its own; an siRNA is silent in a cell type with probability 0.1.
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

GENERATOR = 5  # the simulator's version, written to a screen's synth.json
MORPH_DIMS = (
    "nucleus_size",
    "nucleus_elongation",
    "nucleus_orientation",
    "nucleus_eccentricity",
    "chromatin_granularity",
    "cell_size",
    "cell_elongation",
    "cell_alignment",
    "er_spread",
    "er_polarity",
    "mito_polarity",
    "mito_position",
    "golgi_polarity",
    "golgi_side",
    "rna_polarity",
    "nucleoli_position",
    "actin_alignment",
    "clustering",
    "rounded",
    "mitotic",
    "dying",
)
INTENSITY_DIMS = ("w1", "w2", "w3", "w4", "w5", "w6")
PHENOTYPE_DIMS = MORPH_DIMS + INTENSITY_DIMS
N_MORPH = len(MORPH_DIMS)
# How strongly an siRNA may act on each morphology dim. Arrangement (orientation, polarity, position,
# alignment) keeps a stain's pixel values and moves only where they lie; dims that change
# brightness, covered area or texture (sizes, spread, granularity, clustering, cell states) are
# damped so that image-wide statistics cannot read them (the leak audit:
# rcic.synthetic.baselines.leak_audit, tests/test_difficulty.py).
DAMPED = {
    "nucleus_size": 0.012,
    "chromatin_granularity": 0.02,
    "cell_size": 0.006,
    "er_spread": 0.01,
    "clustering": 0.025,
    "rounded": 0.008,
    "mitotic": 0.012,
    "dying": 0.05,
}
DIM_WEIGHT = np.array([DAMPED.get(name, 1.0) for name in MORPH_DIMS])
N_DIMS = len(PHENOTYPE_DIMS)
D = {name: i for i, name in enumerate(PHENOTYPE_DIMS)}


@dataclass(frozen=True)
class CellType:
    """Morphology and imaging of one cell type, matched to the real B02 sites
    (benchmarks/synth_vs_real.py): cell radius (x the preset's), elongation, confluence, and per
    channel the stain level where a cell is brightest and the background."""

    radius: float
    elongation: float
    density: float
    level: tuple[float, ...]
    background: tuple[float, ...]


CELL_TYPES = {
    "HEPG2": CellType(0.52, 1.2, 1.3, (150, 11, 55, 55, 32, 55), (40, 20, 48, 38, 60, 26)),
    "HUVEC": CellType(1.0, 1.9, 1.0, (13, 15, 6, 19, 1.2, 14), (0.3, 5, 3, 5, 0.2, 6)),
    "RPE": CellType(1.05, 1.4, 1.15, (21, 9, 24, 19, 3.5, 22), (2, 5, 13, 4, 3.5, 10)),
    "U2OS": CellType(0.98, 1.4, 1.0, (28, 10, 10, 16, 1.5, 15), (1.5, 4, 5, 4, 0.4, 7)),
}
INTENSITY_EFFECT = 0.004  # log-intensity change per unit of an intensity dimension: tiny
NUCLEUS = 0.55  # nucleus radius / cell radius of a typical cell
BODY = 1.25  # a cell's body reaches past half the spacing of cells: a confluent layer
# The front of every cell, whatever the siRNA (no label lives here; it is the frame the polarity
# dims are read in): the share of a cell's actin in a crescent along its rim at the front end.
# Drawn in the cell's frame, not the nucleus', so that turning the nucleus does not move it.
LEADING_EDGE = 0.35
# How tightly ER, RNA and mitochondria gather around the side they take (von Mises sharpness).
GATHER = {"er": 2.0, "rna": 2.0, "mito": 1.5}
PATHWAY_SHARE = 0.35  # share of a treatment's phenotype common to its pathway
MAX_RADIUS, MAX_ELONGATION = 1.8, 4.0  # bounds on a cell's radius (x the type's) and elongation
MAX_HALF = MAX_RADIUS * np.sqrt(MAX_ELONGATION) * 1.25  # largest drawing window, in cell radii


def cell_type(name: str) -> CellType:
    """The cell type's morphology; any other name gets HUVEC's."""
    return CELL_TYPES.get(name, CELL_TYPES["HUVEC"])


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
    return names.index(cell_type) if cell_type in names else names.index("HUVEC")


def _sparse_directions(rng: np.random.Generator, n: int) -> np.ndarray:
    """Unit vectors over the morphology dims, each with 3 to 5 non-zero entries (a damped dim is
    drawn a fifth as often as an arrangement dim)."""
    out = np.zeros((n, N_DIMS))
    odds = np.where(DIM_WEIGHT < 1, 0.2, 1.0)
    for i in range(n):
        k = int(rng.integers(3, 6))
        dims = rng.choice(N_MORPH, size=k, replace=False, p=odds / odds.sum())
        out[i, dims] = rng.normal(0, 1, k)
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    out[:, :N_MORPH] *= DIM_WEIGHT
    out[:, N_MORPH:] = rng.normal(0, 0.5, (n, len(INTENSITY_DIMS)))  # small, see INTENSITY_EFFECT
    return out


@lru_cache(maxsize=4)
def sirna_phenotypes(strength: float, n_pathways: int, seed: int) -> Phenotypes:
    """Phenotypes of every class id.

    A treatment's direction is sparse (3-5 morphology dims, mostly arrangement); siRNAs of one pathway share ``PATHWAY_SHARE`` of it.
    Its strength is ``strength`` times a log-normal factor (sd 0.6): most siRNAs weak, few strong.
    Each cell type's response is 85% shared and 15% its own (in variance); a treatment is silent
    in a cell type with probability 0.1 (never in all of them). Positive controls: three times the
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
        offset=e.uniform(0.2, 2, 6),
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
            [_zscore(ndimage.gaussian_filter(n, s)) for n, s in zip(noise, sig, strict=True)]
        )

    def window(self, cy: float, cx: float, half: int):
        y0, x0 = int(cy) - half + self.pad, int(cx) - half + self.pad
        sl = (slice(y0, y0 + 2 * half + 1), slice(x0, x0 + 2 * half + 1))
        yy, xx = np.mgrid[sl[0], sl[1]].astype(np.float32)
        return sl, yy - (cy + self.pad), xx - (cx + self.pad)

    def crop(self) -> np.ndarray:
        p = self.pad
        return self.img[:, p:-p, p:-p]


def _zscore(a: np.ndarray) -> np.ndarray:
    return (a - a.mean()) / (a.std() + 1e-6)


def _positions(rng, n: int, size: int, radius: float, clustered: float) -> np.ndarray:
    """Cell centres that do not pile up (a hard core of about one cell radius, as in a confluent
    monolayer), a fraction `clustered` of the candidates drawn around a few colony centres. The
    random draws do not depend on `clustered`, so a slight change moves only a few cells."""
    m = 4 * n + 8
    cand = rng.uniform(0, size, (m, 2))
    centres = rng.uniform(0.15 * size, 0.85 * size, (max(1, n // 6), 2))
    near = centres[rng.integers(len(centres), size=m)] + rng.normal(0, 1.5 * radius, (m, 2))
    in_cluster = rng.random(m) < clustered
    cand[in_cluster] = np.clip(near[in_cluster], 0, size - 1)
    gap = (1.15 - 0.3 * clustered) * radius
    out = np.empty((n, 2))
    k = 0
    for c in cand:
        if k == n:
            break
        if k == 0 or np.min(np.sum((out[:k] - c) ** 2, axis=1)) >= gap * gap:
            out[k] = c
            k += 1
    return out[:k]


def render_site(
    rng: np.random.Generator, size: int, radius: float, well: Well, batch: Batch
) -> np.ndarray:
    """Render one site as uint8 (6, size, size)."""
    return render_site_counted(rng, size, radius, well, batch)[0]


def render_site_counted(
    rng: np.random.Generator, size: int, radius: float, well: Well, batch: Batch
) -> tuple[np.ndarray, int]:
    """`render_site`'s image and how many cells were drawn on it (cells centred inside the site,
    each with one nucleus): the truth a segmentation is checked against."""
    ct = cell_type(well.cell_type)
    r_cell = radius * ct.radius
    n = max(1, int(rng.poisson(ct.density * well.density * size**2 / (np.pi * r_cell**2))))
    mean_p = well.shift + well.effect * well.penetrance
    pos = _positions(rng, n, size, r_cell, float(_sig(-2.0 + 1.5 * mean_p[D["clustering"]])))
    n = len(pos)
    respond = rng.random(n) < well.penetrance
    strength = rng.gamma(4.0, 0.25, n) * respond
    axis = rng.uniform(0, np.pi)  # the direction cells of this site line up along, if they do
    canvas = _Canvas(rng, size, r_cell)
    for i in rng.permutation(n):  # random z-order
        p = well.shift + strength[i] * well.effect
        _draw_cell(canvas, rng, pos[i], r_cell, ct.elongation, p, axis)
    level = np.asarray(ct.level, np.float32) * np.exp(INTENSITY_EFFECT * mean_p[N_MORPH:])
    img = canvas.crop() * level.astype(np.float32)[:, None, None]
    return _form_image(img, rng, radius, well, batch, np.asarray(ct.background, np.float32)), n


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
    r_c = BODY * r_cell * np.exp(0.25 * p[D["cell_size"]] + rng.normal(0, 0.12))
    e_c = max(1.0, elong * np.exp(0.2 * np.tanh(p[D["cell_elongation"]] / 3) + rng.normal(0, 0.2)))
    r_n = NUCLEUS * r_cell * np.exp(0.3 * p[D["nucleus_size"]] + rng.normal(0, 0.1))
    e_n = max(
        1.0, 1.35 * np.exp(0.15 * np.tanh(p[D["nucleus_elongation"]] / 3) + rng.normal(0, 0.12))
    )
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


def _gather(rng, value, plus, minus):
    """Where a cell gathers a stain: anywhere for `value` near 0 (no phenotype), toward `plus`
    for a clearly positive value and toward `minus` for a clearly negative one. The stain gathers
    just as much either way; only where it gathers changes, so its histogram barely does."""
    c = _sig(2.5 * abs(value) - 2.5 + rng.normal(0, 0.3))
    return (plus if value >= 0 else minus) + (1 - c) * rng.uniform(-np.pi, np.pi)


def _toward(ang, direction, kappa):
    """A crescent: a stain gathered around `direction` (von Mises profile, sharpness `kappa`)."""
    return np.exp(kappa * (np.cos(ang - direction) - 1))


@dataclass
class _Frame:
    """A cell's masks and coordinates in its own frame (see `_draw_cell`)."""

    cell: np.ndarray  # the cell body, 0..1
    rho_c: np.ndarray  # radius in units of the cell's outline
    phi: np.ndarray  # angle around the cell's centre, 0 toward the front end of its long axis
    nucleus: np.ndarray  # the nucleus, 0..1
    cyto: np.ndarray  # the cytoplasm, 0..1
    around: np.ndarray  # room around the nucleus that organelles may take
    nu: np.ndarray  # coordinates along and across the nucleus' long axis
    nv: np.ndarray
    t: np.ndarray  # distance from the nucleus, in cell radii
    ang: np.ndarray  # angle around the nucleus, 0 along its long axis
    front: float  # 0 or pi: the end of the nucleus axis where the cytoplasm is wider
    an: float  # the nucleus' half axes
    bn: float
    r_n: float  # the nucleus' radius
    dx: np.ndarray  # the window's offsets from the cell's centre
    dy: np.ndarray
    theta: float  # the direction of the cell's long axis


def _draw_cell(canvas: _Canvas, rng, pos, r_cell, elong, p, axis) -> None:
    """One cell, its arrangement in its own frame: the cell's long axis (lined up with the site's
    `axis` as much as `cell_alignment` says), the nucleus' long axis turned from it by
    `nucleus_orientation`, and a front along the nucleus axis that the organelles take sides by."""
    state = _state(rng, p)
    r_c, e_c, r_n, e_n, gain = _cell_sizes(rng, p, state, r_cell, elong)
    aligned = _sig(2.5 * p[D["cell_alignment"]] - 1.0 + rng.normal(0, 0.3))
    theta = axis + (1 - aligned) * rng.uniform(-np.pi / 2, np.pi / 2) + rng.normal(0, 0.1)
    half = int(np.ceil(r_c * np.sqrt(e_c) * 1.25)) + 2
    sl, dy, dx = canvas.window(pos[0], pos[1], half)
    f = _frame(rng, p, dx, dy, theta, (r_c, e_c, r_n, e_n))
    tex = [canvas.tex[k][sl] for k in range(3)]
    planes = np.empty((6,) + f.cell.shape, np.float32)
    planes[0] = _nucleus_plane(rng, p, state, f, tex) * (NUCLEUS * r_cell / r_n) ** 1.2
    back = f.front + np.pi
    er_at = _gather(rng, p[D["er_polarity"]], back, f.front)
    planes[1] = _spread(
        f.cyto,
        f.t,
        0.4 * np.exp(0.6 * p[D["er_spread"]]),
        (0.8 + 0.25 * np.clip(tex[1], -1, 2)) * _toward(f.ang, er_at, GATHER["er"]),
        f.around,
    )
    actin = _actin(rng, p, f, tex, r_cell)
    edge = _leading_edge(f)
    planes[2] = (1 - LEADING_EDGE) * actin + LEADING_EDGE * edge * (
        actin.sum() / (edge.sum() + 1e-6)
    )
    rna_at = _gather(rng, p[D["rna_polarity"]], f.front, back)
    rna = _spread(f.cyto, f.t, 1.0, _toward(f.ang, rna_at, GATHER["rna"]), f.around)
    planes[3] = _nucleoli(rng, p, state, f, rna)
    across = np.pi / 2 * _sig(2 * p[D["mito_position"]] - 1.5 + rng.normal(0, 0.3))
    turn = across * rng.choice((-1, 1))
    mito_at = _gather(rng, p[D["mito_polarity"]], back + turn, f.front + turn)
    mito = (0.5 + 1.0 * np.maximum(tex[0], 0)) * _toward(f.ang, mito_at, GATHER["mito"])
    planes[4] = _spread(f.cyto, f.t, 1.0, mito, f.around)  # a network through the cytoplasm
    golgi_at = _gather(rng, p[D["golgi_side"]], back, f.front)
    planes[5] = _golgi(rng, p, f, golgi_at)
    if state == "dying":
        planes[[1, 4]] *= 0.5
    win = canvas.img[(slice(None),) + sl]
    np.maximum(win, planes * gain, out=win)


def _frame(rng, p, dx, dy, theta, sizes) -> _Frame:
    """The cell's outline (turned by `theta`, a little wobbly), its nucleus pushed back from the
    front along the long axis and turned from it, and the coordinates around the nucleus;
    `sizes`: the cell's radius and elongation, the nucleus' radius and elongation."""
    r_c, e_c, r_n, e_n = sizes
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
    ecc = 0.1 * _sig(1.5 * p[D["nucleus_eccentricity"]] + 0.5 + rng.normal(0, 0.3))
    ahead = rng.choice((-1, 1))
    nu, nv = u + ahead * ecc * a, v
    turn = np.pi / 3 * _sig(2 * p[D["nucleus_orientation"]] - 1.5 + rng.normal(0, 0.3))
    tn = turn * rng.choice((-1, 1))
    nu, nv = nu * np.cos(tn) + nv * np.sin(tn), -nu * np.sin(tn) + nv * np.cos(tn)
    an, bn = r_n * np.sqrt(e_n), r_n / np.sqrt(e_n)
    rho_n = np.sqrt((nu / an) ** 2 + (nv / bn) ** 2)
    nucleus = _sig((1 - rho_n) * 10)
    # organelles gather around the nucleus without being cut by the cell's edge, so that the
    # side they take does not change how much of them shows
    return _Frame(
        cell=cell,
        rho_c=rho_c,
        phi=phi if ahead > 0 else phi + np.pi,
        nucleus=nucleus,
        cyto=cell * (1 - nucleus),
        around=_sig((1.3 - rho_c) * 9) * (1 - nucleus),
        nu=nu,
        nv=nv,
        t=np.maximum(rho_n - 1, 0) * r_n / r_c,
        ang=np.arctan2(nv, nu),
        front=0.0 if ahead > 0 else np.pi,
        an=an,
        bn=bn,
        r_n=r_n,
        dx=dx,
        dy=dy,
        theta=theta,
    )


def _leading_edge(f: _Frame) -> np.ndarray:
    """A crescent along the inside of the cell's rim at its front end: where a migrating cell's
    actin gathers, and what marks its front in the image."""
    return f.cell * np.exp(-(((f.rho_c - 0.8) / 0.2) ** 2)) * _toward(f.phi, 0.0, 2.0)


def _nucleus_plane(rng, p, state, f: _Frame, tex):
    nucleus, nu, nv, r_n = f.nucleus, f.nu, f.nv, f.r_n
    if state == "dying":  # fragmented: a few small bright pieces
        out = np.zeros_like(nucleus)
        for du, dv in rng.normal(0, 0.7 * r_n, (int(rng.integers(2, 5)), 2)):
            out += 1.3 * np.exp(-((nu - du) ** 2 + (nv - dv) ** 2) / (2 * (0.35 * r_n) ** 2))
        return out
    g = _sig(1.5 * p[D["chromatin_granularity"]] + rng.normal(0, 0.3))
    grain = g * tex[2] + (1 - g) * tex[0]
    level = 2.0 if state == "mitotic" else 1.0
    return nucleus * level * (0.8 + 0.3 * np.clip(grain, -2, 2))


def _spread(cyto, t, scale, texture, region=None):
    """A stain spread from the nucleus with length `scale` (in cell radii) over `region` (default
    the cytoplasm); its total is the cytoplasm's, whichever way it is arranged."""
    prof = (cyto if region is None else region) * np.exp(-t / scale) * texture
    return prof * (cyto.sum() / (prof.sum() + 1e-6))


def _actin(rng, p, f: _Frame, tex, r_cell):
    """Actin: a ring under the cell's rim and fibres across it, turned from its long axis by
    `actin_alignment`, mixed in a random share, with the same total either way."""
    cell, cyto, rho_c, dx, dy, theta = f.cell, f.cyto, f.rho_c, f.dx, f.dy, f.theta
    ring = np.exp(-(((rho_c - 0.9) / 0.12) ** 2)) * cell
    tf = theta + np.pi / 2 * _sig(2.5 * p[D["actin_alignment"]] - 1 + rng.normal(0, 0.3))
    w = -dx * np.sin(tf) + dy * np.cos(tf)
    period = max(2.5, r_cell / 3.2)
    fib = (0.5 + 0.5 * np.cos(2 * np.pi * w / period + rng.uniform(0, 6.3))) ** 4 * cell
    fib = fib * (0.7 + 0.3 * np.clip(tex[0], -2, 2))
    alpha = _sig(rng.normal(0.3, 0.5))
    total = cell.sum()
    out = (1 - alpha) * ring * (total / (ring.sum() + 1e-6)) + alpha * fib * (
        total / (fib.sum() + 1e-6)
    )
    return 0.3 * out + 0.15 * cyto


def _nucleoli(rng, p, state, f: _Frame, cyto):
    """RNA: `cyto` (the stain spread through the cytoplasm) and a little in the nucleus, plus a
    few nucleoli on the side `nucleoli_position` picks (none in mitotic or dying cells)."""
    nucleus, nu, nv, an, bn, r_n, front = f.nucleus, f.nu, f.nv, f.an, f.bn, f.r_n, f.front
    rna = 0.3 * cyto + 0.15 * nucleus
    if state in ("mitotic", "dying"):
        return rna
    k = 1 + int(rng.poisson(2.5))
    sigma = 0.13 * r_n
    spots = np.zeros_like(nucleus)
    toward = _gather(rng, p[D["nucleoli_position"]], front, front + np.pi)
    ang, rad = toward + rng.normal(0, 0.6, k), 0.35 * rng.uniform(0.7, 1.0, k)
    for da, dr in zip(ang, rad, strict=True):
        spots += np.exp(
            -((nu - dr * an * np.cos(da)) ** 2 + (nv - dr * bn * np.sin(da)) ** 2) / (2 * sigma**2)
        )
    area = 2 * np.pi * sigma**2 * k
    return rna + np.minimum(spots, 1.5) * nucleus * min(1.0, 0.45 * np.pi * r_n**2 / area * 0.35)


def _golgi(rng, p, f: _Frame, centre):
    """Golgi: a few blobs on one side of the nucleus (`centre`), close to it or further out."""
    cell, reach, rho_c, nu, nv, r_n = f.cell, f.around + f.nucleus, f.rho_c, f.nu, f.nv, f.r_n
    k = 4
    ang = centre + 1.2 * (np.linspace(-0.5, 0.5, k) + rng.normal(0, 0.08, k))
    out = 0.2 * _sig(2 * p[D["golgi_polarity"]] + rng.normal(0, 0.3))
    dist = r_n * (1.05 + out + rng.uniform(0, 0.3, k))
    sigma = 0.25 * r_n
    blobs = np.zeros_like(cell)
    for a, d in zip(ang, dist, strict=True):
        blobs += np.exp(-((nu - d * np.cos(a)) ** 2 + (nv - d * np.sin(a)) ** 2) / (2 * sigma**2))
    membrane = 0.45 * cell + 0.25 * np.exp(-(((rho_c - 0.95) / 0.07) ** 2)) * cell
    return membrane + 0.6 * np.minimum(blobs, 1.2) * reach


def _form_image(img, rng, radius, well: Well, batch: Batch, background: np.ndarray) -> np.ndarray:
    """Image formation: illumination, focus, gain, non-linear response, background and noise."""
    size = img.shape[-1]
    ax = np.linspace(-1, 1, size, dtype=np.float32)
    yy, xx = np.meshgrid(ax, ax, indexing="ij")
    field = np.ones_like(xx)
    for amp, fx, fy, ph in batch.field:
        field += amp * np.cos(np.pi * (fx * xx + fy * yy) + ph)
    out = img * field[None] * well.jitter[:, None, None] + background[:, None, None]
    sigma = well.focus * radius / 15
    if sigma > 0.3:
        out = ndimage.gaussian_filter(out, (0, sigma, sigma))
    out = out * batch.gain[:, None, None]
    out = (
        255.0 * (np.maximum(out, 0) / 255.0) ** batch.gamma[:, None, None]
        + batch.offset[:, None, None]
    )
    out += rng.normal(0, 1, out.shape).astype(np.float32) * np.sqrt(0.15 * out + 0.3)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)

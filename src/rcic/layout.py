"""Plate geometry, channels and class ids of the RxRx1 layout: the one home of these facts.

RxRx1 plates are 384-well plates of which the outer ring is unused, leaving rows B..O and
columns 02..23 (308 wells). Every well is imaged at 2 sites in 6 channels. Class ids follow the
Kaggle release: 0..1107 are the siRNA treatments, 1108..1137 the 30 positive controls and 1138
the untreated negative control.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from rcic.errors import InputError

ROWS = "BCDEFGHIJKLMNO"
COLUMNS = tuple(range(2, 24))
WELLS = tuple(f"{r}{c:02d}" for r in ROWS for c in COLUMNS)
N_WELLS = len(WELLS)  # 308
PLATE_SHAPE = (16, 24)  # the full 384-well grid, rows A..P, columns 01..24
PLATES = (1, 2, 3, 4)
SITES = (1, 2)
CHANNELS = (1, 2, 3, 4, 5, 6)
CHANNEL_NAMES = (
    "nuclei (Hoechst)",
    "endoplasmic reticulum",
    "actin",
    "nucleoli and cytoplasmic RNA",
    "mitochondria",
    "Golgi and membrane",
)
# the channels' short names in feature columns, as Cell Painting's CellProfiler pipelines name them
FEATURE_CHANNELS = ("DNA", "ER", "Actin", "RNA", "Mito", "Golgi")

N_TREATMENTS = 1108
N_POSITIVE = 30
NEGATIVE_ID = N_TREATMENTS + N_POSITIVE  # 1138, untreated
N_CLASSES = NEGATIVE_ID + 1  # 1139
UNKNOWN = -1  # label of a test treatment well

CELL_TYPES = ("HEPG2", "HUVEC", "RPE", "U2OS")
N_CELL_TYPES = len(CELL_TYPES) + 1  # ids for the model's cell-type input; the last: any other
WELL_TYPES = ("treatment", "positive_control", "negative_control")

_WELL_RE = re.compile(r"^([A-P])(\d{2})$")
_ID_RE = re.compile(r"^(?P<experiment>[A-Za-z0-9]+-\d+)_(?P<plate>\d+)_(?P<well>[A-P]\d{2})$")


@dataclass(frozen=True)
class WellId:
    """The parts of an `id_code` such as ``HEPG2-01_1_B03``."""

    experiment: str
    plate: int
    well: str

    @property
    def code(self) -> str:
        return f"{self.experiment}_{self.plate}_{self.well}"


def parse_id_code(code: str) -> WellId:
    """Split an `id_code` into experiment, plate and well; raise ValueError if malformed."""
    m = _ID_RE.match(code)
    if not m:
        raise InputError(f"id_code {code!r} is not of the form EXPERIMENT_PLATE_WELL")
    return WellId(m["experiment"], int(m["plate"]), m["well"])


def id_code(experiment: str, plate: int, well: str) -> str:
    return f"{experiment}_{int(plate)}_{well}"


def is_usable_well(well: str) -> bool:
    return well in _WELL_SET


def well_position(well: str) -> tuple[int, int]:
    """(row, column) of a well in the 16x24 grid, both 0-based (A01 -> (0, 0))."""
    m = _WELL_RE.match(well)
    if not m:
        raise InputError(f"well {well!r} is not a letter A-P followed by two digits")
    return ord(m[1]) - ord("A"), int(m[2]) - 1


def cell_type_of(experiment: str) -> str:
    """The cell type is the experiment name's prefix: ``HUVEC-05`` -> ``HUVEC``."""
    return experiment.split("-", 1)[0]


def well_type_of(sirna: int) -> str:
    if sirna == NEGATIVE_ID:
        return "negative_control"
    if sirna >= N_TREATMENTS:
        return "positive_control"
    return "treatment"


def png_name(well: str, site: int, channel: int) -> str:
    return f"{well}_s{site}_w{channel}.png"


_WELL_SET = frozenset(WELLS)

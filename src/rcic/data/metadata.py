"""Read RxRx1 metadata in any of its three released formats into one tidy table of sites.

Formats:
- ``kaggle``: the 2019 Kaggle release, ``train.csv``/``test.csv`` (treatments) and
  ``train_controls.csv``/``test_controls.csv``, integer labels.
- ``rerelease``: the same files with string labels (``sirna_250``, ``UNTREATED``). Their integer
  ids are not the number in the name; they follow from joining on ``id_code`` with the Kaggle
  release (``reference=``) or from a mapping file (``label_map=``, columns ``name,sirna``).
- ``rxrx1``: rxrx1 v1.0's ``metadata.csv``, one row per site with integer ``sirna_id``.

The result has one row per site with columns :data:`SITE_COLUMNS`; ``sirna`` is -1 where the label
is hidden (Kaggle test treatments).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from rcic import layout
from rcic.errors import MetadataError

log = logging.getLogger(__name__)

SITE_COLUMNS = [
    "id_code",
    "experiment",
    "cell_type",
    "plate",
    "well",
    "site",
    "split",
    "well_type",
    "sirna",
]
KAGGLE_FILES = ("train.csv", "test.csv", "train_controls.csv", "test_controls.csv")
NEGATIVE_NAME = "UNTREATED"


@dataclass
class _Table:
    """One CSV as read, remembering its path so errors can name it."""

    path: Path
    frame: pd.DataFrame
    split: str


def detect_format(root: str | Path) -> str:
    """Return ``kaggle``, ``rerelease`` or ``rxrx1`` for the metadata in folder `root`."""
    root = Path(root)
    if (root / "metadata.csv").exists():
        return "rxrx1"
    if not (root / "train.csv").exists():
        raise MetadataError(
            f"{root}: no metadata.csv (rxrx1 v1.0) and no train.csv (Kaggle layout)"
        )
    labels = _read_csv(root / "train.csv", ["sirna"], nrows=200)["sirna"].dropna().astype(str)
    # judged by the values, not by the dtype pandas gives a column (an empty one is "object"):
    # the re-release's labels are names such as sirna_250 and UNTREATED; one bad cell in an
    # integer table is an error named later, not a change of format
    names = ~labels.str.strip().str.fullmatch(r"[+-]?\d+(\.0*)?")
    return "rerelease" if len(labels) and names.mean() > 0.5 else "kaggle"


def load_metadata(
    root: str | Path,
    *,
    label_map: str | Path | None = None,
    reference: str | Path | None = None,
) -> pd.DataFrame:
    """Load and validate the metadata in `root`; return the tidy site table.

    Args:
        root: folder holding the CSVs.
        label_map: CSV with columns ``name,sirna`` mapping string labels to integer ids
            (re-release only).
        reference: folder of the integer-labelled Kaggle release, joined on ``id_code`` to
            derive the string -> integer mapping (re-release only).
    """
    root = Path(root)
    fmt = detect_format(root)
    if fmt == "rxrx1":
        wells = _read_rxrx1(root / "metadata.csv")
    else:
        tables = _read_kaggle_tables(root)
        if fmt == "rerelease":
            mapping = _label_mapping(tables, label_map, reference)
            for t in tables:
                _apply_mapping(t, mapping)
        wells = _combine_kaggle(tables)
    sites = _expand_sites(wells) if "site" not in wells.columns else wells
    sites = sites[SITE_COLUMNS].sort_values(["split", "experiment", "plate", "well", "site"])
    log.info("read %s metadata from %s: %d sites", fmt, root, len(sites))
    return sites.reset_index(drop=True)


def wells_of(sites: pd.DataFrame) -> pd.DataFrame:
    """One row per well (the site table without its site column)."""
    cols = [c for c in SITE_COLUMNS if c != "site"]
    return sites.drop_duplicates("id_code")[cols].reset_index(drop=True)


# --- Kaggle tables -----------------------------------------------------------------------------


def _read_csv(path: Path, required: list[str], nrows: int | None = None) -> pd.DataFrame:
    try:
        frame = pd.read_csv(
            path, dtype={"well": str, "experiment": str, "id_code": str}, nrows=nrows
        )
    except UnicodeDecodeError:
        raise MetadataError(
            f"{path}: not a text CSV (undecodable bytes; a binary file saved under this name?)"
        ) from None
    except pd.errors.EmptyDataError:
        raise MetadataError(f"{path}: the file is empty (not even a header row)") from None
    except (OSError, pd.errors.ParserError, ValueError) as e:
        raise MetadataError(f"{path}: cannot be read as CSV ({e})") from None
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise MetadataError(f"{path}: missing column(s) {missing}; found {list(frame.columns)}")
    return frame


def _read_kaggle_tables(root: Path) -> list[_Table]:
    tables = []
    for name in KAGGLE_FILES:
        path = root / name
        if not path.exists():
            if name.endswith("controls.csv"):
                log.warning("%s is absent: no control wells for that split", path)
                continue
            raise MetadataError(f"{path}: required file is missing")
        split = "train" if name.startswith("train") else "test"
        required = ["id_code", "experiment", "plate", "well"]
        if name != "test.csv":
            required.append("sirna")
        tables.append(_Table(path, _read_csv(path, required), split))
    return tables


def _label_mapping(tables: list[_Table], label_map, reference) -> dict[str, int]:
    if label_map is not None:
        frame = _read_csv(Path(label_map), ["name", "sirna"])
        return dict(zip(frame["name"].astype(str), frame["sirna"].astype(int), strict=True))
    if reference is None:
        raise MetadataError(
            f"{tables[0].path.parent}: labels are strings (the Kaggle re-release); give a mapping file "
            "(--label-map FILE, columns name,sirna) or the integer-labelled Kaggle release (--reference DIR) "
            "to derive the mapping by joining on id_code"
        )
    return derive_label_mapping(tables, _read_kaggle_tables(Path(reference)))


def derive_label_mapping(named: list[_Table], numbered: list[_Table]) -> dict[str, int]:
    """String label -> integer id, from wells present in both releases (joined on id_code)."""
    left = pd.concat([t.frame[["id_code", "sirna"]] for t in named if "sirna" in t.frame])
    right = pd.concat([t.frame[["id_code", "sirna"]] for t in numbered if "sirna" in t.frame])
    pairs = left.merge(right, on="id_code", suffixes=("_name", "_id")).drop_duplicates(
        ["sirna_name", "sirna_id"]
    )
    clash = pairs[
        pairs.duplicated("sirna_name", keep=False) | pairs.duplicated("sirna_id", keep=False)
    ]
    if len(clash):
        raise MetadataError(
            f"the two releases disagree on labels: {clash.head().to_dict('records')}"
        )
    return dict(zip(pairs["sirna_name"].astype(str), pairs["sirna_id"].astype(int), strict=True))


def _apply_mapping(table: _Table, mapping: dict[str, int]) -> None:
    if "sirna" not in table.frame:
        return
    names = table.frame["sirna"].astype(str)
    unknown = ~names.isin(mapping.keys())
    if unknown.any():
        raise MetadataError(
            _rows_message(
                table.path, unknown, f"label not in the mapping: {sorted(set(names[unknown]))[:5]}"
            )
        )
    table.frame["sirna"] = names.map(mapping).astype(int)


def _combine_kaggle(tables: list[_Table]) -> pd.DataFrame:
    for t in tables:
        _validate_table(t)
        t.frame["split"] = t.split
        t.frame["_line"] = np.arange(len(t.frame)) + 2
        if "sirna" not in t.frame:
            t.frame["sirna"] = layout.UNKNOWN
        if "well_type" not in t.frame:
            t.frame["well_type"] = "treatment"
    wells = pd.concat([t.frame for t in tables], ignore_index=True)
    sources = np.concatenate([[str(t.path)] * len(t.frame) for t in tables])
    _check_duplicates(wells, sources)
    _check_split_overlap(wells)
    wells["cell_type"] = _cell_types(wells["experiment"])
    return wells


def _cell_types(experiments: pd.Series) -> pd.Series:
    """Cell type of each row, computed once per distinct experiment."""
    return experiments.map({e: layout.cell_type_of(e) for e in experiments.unique()})


def _validate_table(table: _Table) -> None:
    f = table.frame
    raw = f["plate"].to_numpy(copy=True)
    f["plate"] = pd.to_numeric(f["plate"], errors="coerce")
    bad = ~f["plate"].isin(layout.PLATES)
    if bad.any():
        raise MetadataError(
            _rows_message(table.path, bad, f"plate must be one of {layout.PLATES}", raw)
        )
    f["plate"] = f["plate"].astype(int)
    bad = ~f["well"].isin(layout.WELLS)
    if bad.any():
        raise MetadataError(
            _rows_message(
                table.path,
                bad,
                "well outside the 308 usable wells (rows B..O, columns 02..23)",
                f["well"],
            )
        )
    expected = (
        f["experiment"].astype(str) + "_" + f["plate"].astype(str) + "_" + f["well"].astype(str)
    )
    bad = f["id_code"] != expected
    if bad.any():
        pairs = [f"{c} (columns say {e})" for c, e in zip(f["id_code"], expected, strict=True)]
        raise MetadataError(
            _rows_message(
                table.path, bad, "id_code disagrees with its experiment/plate/well columns", pairs
            )
        )
    if "sirna" in f:
        _validate_labels(table)


def _validate_labels(table: _Table) -> None:
    f = table.frame
    labels = pd.to_numeric(f["sirna"], errors="coerce")
    bad = labels.isna() | (labels < 0) | (labels >= layout.N_CLASSES) | (labels % 1 != 0)
    if bad.any():
        raise MetadataError(
            _rows_message(
                table.path,
                bad,
                f"unknown label (expected an integer 0..{layout.N_CLASSES - 1})",
                f["sirna"],
            )
        )
    f["sirna"] = labels.astype(int)
    implied = f["sirna"].map(layout.well_type_of)
    if "well_type" in f:
        bad = f["well_type"] != implied
        if bad.any():
            raise MetadataError(
                _rows_message(table.path, bad, "well_type disagrees with the label")
            )


def _check_duplicates(wells: pd.DataFrame, sources: np.ndarray) -> None:
    dup = wells["id_code"].duplicated(keep=False).to_numpy()
    if dup.any():
        where = [
            f"{sources[i]} line {wells['_line'].iat[i]}: {wells['id_code'].iat[i]}"
            for i in np.flatnonzero(dup)[:6]
        ]
        raise MetadataError("duplicate id_code:\n  " + "\n  ".join(where))


def _check_split_overlap(wells: pd.DataFrame) -> None:
    splits = wells.groupby("experiment")["split"].nunique()
    both = sorted(splits[splits > 1].index)
    if both:
        raise MetadataError(f"experiment(s) in both train and test: {both}")


def _rows_message(path: Path, bad: pd.Series, what: str, values=None) -> str:
    """`path`: what is wrong, with the CSV line numbers (and the values at fault, if given)."""
    rows = np.flatnonzero(bad.to_numpy())
    lines = (rows + 2).tolist()  # CSV line numbers (header is line 1)
    if values is None:
        shown = ", ".join(map(str, lines[:10]))
    else:
        vals = np.asarray(values, dtype=object)[rows]
        shown = ", ".join(f"{n} ({v!r})" for n, v in zip(lines[:6], vals[:6], strict=False))
    more = " ..." if len(lines) > (10 if values is None else 6) else ""
    return f"{path}: {what}; {len(lines)} row(s), at line(s) {shown}{more}"


def _expand_sites(wells: pd.DataFrame) -> pd.DataFrame:
    sites = pd.concat([wells.assign(site=s) for s in layout.SITES], ignore_index=True)
    return sites


# --- rxrx1 v1.0 -------------------------------------------------------------------------------


def _read_rxrx1(path: Path) -> pd.DataFrame:
    frame = _read_csv(
        path, ["well_id", "experiment", "plate", "well", "site", "dataset", "sirna_id"]
    )
    frame = frame.drop(
        columns=["sirna"], errors="ignore"
    )  # the vendor's name; sirna_id is the class id
    table = _Table(path, frame.rename(columns={"well_id": "id_code", "sirna_id": "sirna"}), "")
    f = table.frame
    f["split"] = f["dataset"].astype(str)
    bad = ~f["split"].isin(["train", "test"])
    if bad.any():
        raise MetadataError(_rows_message(path, bad, "dataset must be train or test"))
    bad = ~pd.to_numeric(f["site"], errors="coerce").isin(layout.SITES)
    if bad.any():
        raise MetadataError(_rows_message(path, bad, f"site must be one of {layout.SITES}"))
    f["site"] = f["site"].astype(int)
    keep = f.drop(columns=["well_type"], errors="ignore")
    table.frame = keep
    _validate_table(table)
    site_keys = keep["id_code"] + "_" + keep["site"].astype(str)
    dup = site_keys.duplicated(keep=False)
    if dup.any():
        raise MetadataError(_rows_message(path, dup, "duplicate site (well_id, site)"))
    keep["well_type"] = keep["sirna"].map(layout.well_type_of)
    _check_split_overlap(keep)
    keep["cell_type"] = _cell_types(keep["experiment"])
    return keep

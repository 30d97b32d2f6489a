"""Well profiles in the form the image-based profiling field works with (pycytominer, copairs,
JUMP's recipes): one Parquet table, ``Metadata_*`` columns first, then float32 feature columns
(``emb_0000...`` for a model's embeddings, named statistics for hand-crafted features), and the
provenance (command, run, checkpoint, views, correction, level, rcic version) in the file's
key-value metadata under ``rcic``.

A row is a well. ``Metadata_Plate`` is unique across experiments (``HEPG2-01_1``), as JUMP keys
rows by plate and well; ``Metadata_sirna`` is the class id's name (``sirna_17``, ``UNTREATED``;
empty for a test well without a label) beside the integer ``Metadata_sirna_id``;
``Metadata_pert_type`` is ``trt``, ``poscon`` or ``negcon``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from rcic import layout
from rcic.errors import InputError, OutputError
from rcic.fileio import atomic_path

METADATA = (
    "Metadata_Source",
    "Metadata_Batch",
    "Metadata_Plate",
    "Metadata_Well",
    "Metadata_id_code",
    "Metadata_CellType",
    "Metadata_sirna",
    "Metadata_sirna_id",
    "Metadata_pert_type",
    "Metadata_split",
    "Metadata_oof",
    "Metadata_n_sites",
)
PERT_TYPE = {"treatment": "trt", "positive_control": "poscon", "negative_control": "negcon"}
PROVENANCE_KEY = b"rcic"
READ_COLUMNS = 64  # feature columns decoded at a time when a table is read


def sirna_name(sirna_id: int) -> str:
    """The name of a class id in profile tables: ``UNTREATED`` for the negative control,
    ``sirna_<id>`` otherwise, empty for an unknown label."""
    if sirna_id == layout.UNKNOWN:
        return ""
    return "UNTREATED" if sirna_id == layout.NEGATIVE_ID else f"sirna_{sirna_id}"


def metadata_frame(wells: pd.DataFrame, source: str, oof=None, n_sites=None) -> pd.DataFrame:
    """The ``Metadata_*`` columns of `wells` (rcic's well table: id_code, experiment, plate, well,
    cell_type, sirna, well_type, split)."""
    n = len(wells)
    sirna = wells["sirna"].fillna(layout.UNKNOWN).astype(int).to_numpy()
    return pd.DataFrame(
        {
            "Metadata_Source": source,
            "Metadata_Batch": wells["experiment"].astype(str).to_numpy(),
            "Metadata_Plate": (
                wells["experiment"].astype(str) + "_" + wells["plate"].astype(str)
            ).to_numpy(),
            "Metadata_Well": wells["well"].astype(str).to_numpy(),
            "Metadata_id_code": wells["id_code"].astype(str).to_numpy(),
            "Metadata_CellType": wells["cell_type"].astype(str).to_numpy(),
            "Metadata_sirna": [sirna_name(s) for s in sirna],
            "Metadata_sirna_id": sirna,
            "Metadata_pert_type": wells["well_type"].map(PERT_TYPE).fillna("trt").to_numpy(),
            "Metadata_split": wells["split"].astype(str).to_numpy(),
            "Metadata_oof": np.ones(n, bool) if oof is None else np.asarray(oof, bool),
            "Metadata_n_sites": np.zeros(n, int) if n_sites is None else np.asarray(n_sites, int),
        }
    )


def make_table(meta: pd.DataFrame, features: np.ndarray, names=None) -> pd.DataFrame:
    """Metadata columns, then the features as float32 (named ``emb_0000...`` unless `names`)."""
    features = np.asarray(features, np.float32)
    if names is None:
        names = [f"emb_{k:04d}" for k in range(features.shape[1])]
    feats = pd.DataFrame(features, columns=list(names))
    return pd.concat([meta.reset_index(drop=True), feats], axis=1)


def feature_columns(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns if not c.startswith("Metadata_")]


def write_table(frame: pd.DataFrame, path: str | Path, provenance: dict) -> Path:
    """Write `frame` as Parquet with `provenance` in its key-value metadata (atomically)."""
    return write_row_groups([frame], path, provenance)


def write_row_groups(frames: Iterable[pd.DataFrame], path: str | Path, provenance: dict) -> Path:
    """Write `frames` (of the same columns) as one Parquet table, a row group each, taking them
    as they come: only one frame need be in memory. Atomic: a table is at `path` only once every
    frame is written; an error in between leaves nothing there."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    with atomic_path(path, ".tmp.parquet") as tmp:
        tmp_writer = None
        try:
            for frame in frames:
                table = pa.Table.from_pandas(frame, preserve_index=False)
                if tmp_writer is None:
                    meta = dict(table.schema.metadata or {})
                    meta[PROVENANCE_KEY] = json.dumps(provenance, default=str).encode()
                    tmp_writer = pq.ParquetWriter(tmp, table.schema.with_metadata(meta))
                tmp_writer.write_table(table.cast(tmp_writer.schema))
        finally:
            if tmp_writer is not None:
                tmp_writer.close()
        if tmp_writer is None:
            raise OutputError(f"{path}: no rows to write")
    return path


def read_table(path: str | Path) -> tuple[pd.DataFrame, dict]:
    """A profile table and its provenance; a file that is not one is refused by name. The
    features are read a few columns at a time into one block, so the peak is about the frame
    itself (Arrow's copy of the whole table beside pandas' columns and block was four times it)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such profile table")
    try:
        parquet = pq.ParquetFile(path)
        meta, feats = _table_columns(path, parquet.schema_arrow)
        frame = _read_frame(parquet, meta, feats)
    except (pa.ArrowInvalid, OSError) as e:
        raise InputError(f"{path}: not a Parquet profile table ({e})") from None
    raw = (parquet.schema_arrow.metadata or {}).get(PROVENANCE_KEY, b"{}")
    return frame, json.loads(raw)


def _table_columns(path: Path, schema) -> tuple[list[str], list[str]]:
    """The ``Metadata_*`` and feature columns of a Parquet schema (a pandas index stored as a
    column is neither), checked: rcic's metadata present, the features all floats."""
    import pyarrow as pa

    index = (schema.pandas_metadata or {}).get("index_columns", [])
    names = [c for c in schema.names if c not in index]
    missing = [c for c in METADATA if c not in names]
    if missing:
        raise InputError(
            f"{path}: not an rcic profile table (missing {missing}); write one with "
            "`rcic embed --out X.parquet` or `rcic features`"
        )
    meta = [c for c in names if c.startswith("Metadata_")]
    feats = [c for c in names if not c.startswith("Metadata_")]
    if not feats or not all(pa.types.is_floating(schema.field(c).type) for c in feats):
        raise InputError(f"{path}: profile features must be float columns after the Metadata_ ones")
    return meta, feats


def _read_frame(parquet, meta: list[str], feats: list[str]) -> pd.DataFrame:
    """The rows of `parquet`, features as one float32 block (float64 if any column is wider),
    filled READ_COLUMNS features at a time: Arrow decodes a whole row group at once, and a table
    is often one row group, so reading by rows would hold all of it twice."""
    import pyarrow as pa

    wide = any(parquet.schema_arrow.field(c).type == pa.float64() for c in feats)
    values = np.empty((parquet.metadata.num_rows, len(feats)), np.float64 if wide else np.float32)
    for start in range(0, len(feats), READ_COLUMNS):
        chunk = parquet.read(columns=feats[start : start + READ_COLUMNS])
        for j, column in enumerate(chunk.columns):
            values[:, start + j] = column.to_numpy(zero_copy_only=False)
        del chunk
    head = parquet.read(columns=meta).to_pandas()
    return pd.concat([head, pd.DataFrame(values, columns=feats, copy=False)], axis=1)


def metadata_columns(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns if c.startswith("Metadata_")]

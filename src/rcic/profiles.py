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
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from rcic import layout
from rcic.errors import InputError
from rcic.fileio import atomic_csv, atomic_path

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


def features_table(store, sites: pd.DataFrame) -> pd.DataFrame:
    """`rcic features`: the hand-crafted features of every well of `sites` as a profile table."""
    from rcic import baselines
    from rcic.store import SiteStore

    wells = baselines.well_features(SiteStore(store), sites, extended=True)
    names = list(baselines.PROFILE_NAMES)
    meta = metadata_frame(wells, "rcic", n_sites=wells["n_sites"])
    return make_table(meta, wells[names].to_numpy(), names)


def feature_columns(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns if not c.startswith("Metadata_")]


def write_table(frame: pd.DataFrame, path: str | Path, provenance: dict) -> Path:
    """Write `frame` as Parquet with `provenance` in its key-value metadata (atomically)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(frame, preserve_index=False)
    meta = dict(table.schema.metadata or {})
    meta[PROVENANCE_KEY] = json.dumps(provenance, default=str).encode()
    table = table.replace_schema_metadata(meta)
    path = Path(path)
    with atomic_path(path, ".tmp.parquet") as tmp:
        pq.write_table(table, tmp)
    return path


def read_table(path: str | Path) -> tuple[pd.DataFrame, dict]:
    """A profile table and its provenance; a file that is not one is refused by name."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such profile table")
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise InputError(f"{path}: not a Parquet profile table ({e})") from None
    frame = table.to_pandas()
    missing = [c for c in METADATA if c not in frame]
    if missing:
        raise InputError(
            f"{path}: not an rcic profile table (missing {missing}); write one with "
            "`rcic embed --out X.parquet` or `rcic features`"
        )
    feats = feature_columns(frame)
    if not feats or not all(np.issubdtype(frame[c].dtype, np.floating) for c in feats):
        raise InputError(f"{path}: profile features must be float columns after the Metadata_ ones")
    raw = (table.schema.metadata or {}).get(PROVENANCE_KEY, b"{}")
    return frame, json.loads(raw)


# --- batch correction and consensus (pycytominer) -----------------------------------------------

CORRECTIONS = ("none", "standardize", "spherize", "spherize-pca", "tvn")
WHITENING = {"spherize": "ZCA", "spherize-pca": "PCA"}  # pycytominer's spherize_method
EPSILONS = tuple(10.0**k for k in range(-4, 3))  # the spherize epsilons tried on validation
NEGCON = "Metadata_pert_type == 'negcon'"


def metadata_columns(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns if c.startswith("Metadata_")]


def _pycytominer():
    """pycytominer, imported on first use (it switches pandas' copy-on-write on for the whole
    process; on pandas 3 that is the default, and setting it warns)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pycytominer
    return pycytominer


def _quiet(fn, *args, **kwargs):
    """Call a pycytominer function without pandas' fragmentation warnings about its own frames."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", pd.errors.PerformanceWarning)
        return fn(*args, **kwargs)


def correct(frame: pd.DataFrame, method: str, epsilon: float = 1e-2) -> pd.DataFrame:
    """Batch correction through pycytominer (imported here only: it switches pandas'
    copy-on-write on for the whole process). ``standardize``: each experiment (``Metadata_Batch``)
    z-scored on its negative controls (pycytominer ``normalize``); ``spherize``: that, then one ZCA
    whitening (``normalize(method="spherize")``, `epsilon` its regulariser) fitted on all wells,
    not on the controls: RxRx1 has one negative control per plate, and after the first step each
    experiment's controls are centred on themselves, which leaves too few independent ones to
    whiten a few hundred features; ``spherize-pca``: the same with PCA whitening (rotated onto the
    principal axes, where ZCA stays closest to the standardised features); ``none``: the table as
    it is; ``tvn``: rcic's typical variation normalisation (`rcic.embed.tvn`), each experiment
    centred on its negative controls, then whitened by their covariance shrunk towards its mean
    eigenvalue, which whitens on the controls where pycytominer's spherize cannot."""
    if method not in CORRECTIONS:
        raise InputError(f"unknown correction {method!r}; choose from {CORRECTIONS}")
    if method == "none":
        return frame
    if method == "tvn":
        return _tvn(frame)
    normalize = _pycytominer().normalize
    feats, meta = feature_columns(frame), metadata_columns(frame)
    parts = []
    for _, part in frame.groupby("Metadata_Batch", sort=False):
        if not (part["Metadata_pert_type"] == "negcon").any():
            raise InputError(f"experiment {part['Metadata_Batch'].iat[0]}: no negative controls")
        parts.append(_quiet(normalize, part, features=feats, meta_features=meta, samples=NEGCON))
    out = pd.concat(parts).loc[frame.index]
    if method in WHITENING:
        return _whiten(out[meta + feats], meta, feats, method, epsilon)
    out[feats] = out[feats].astype(np.float32)
    return out[frame.columns]


def embed_metadata(frame: pd.DataFrame) -> pd.DataFrame:
    """The per-well columns `rcic.embed`'s corrections read (experiment, plate, well_type, sirna),
    from a profile table's ``Metadata_*`` ones."""
    return pd.DataFrame(
        {
            "experiment": frame["Metadata_Batch"].to_numpy(),
            "plate": frame["Metadata_Plate"].to_numpy(),
            "well_type": frame["Metadata_pert_type"]
            .map({v: k for k, v in PERT_TYPE.items()})
            .to_numpy(),
            "sirna": frame["Metadata_sirna_id"].to_numpy(),
        }
    )


def _tvn(frame: pd.DataFrame) -> pd.DataFrame:
    from rcic import embed

    feats = feature_columns(frame)
    values = embed.tvn(frame[feats].to_numpy(np.float64), embed_metadata(frame), "experiment")
    return make_table(frame[metadata_columns(frame)], values, feats).set_index(frame.index)


def _whiten(frame: pd.DataFrame, meta, feats, method: str, epsilon: float) -> pd.DataFrame:
    """pycytominer's spherize on the features that vary (constant ones carry nothing); ZCA keeps
    the features' names, PCA's components are named ``pc_0000...``."""
    live = [c for c in feats if frame[c].std() > 0]
    try:
        res = _quiet(
            _pycytominer().normalize,
            frame[meta + live],
            features=live,
            meta_features=meta,
            samples="all",
            method="spherize",
            spherize_method=WHITENING[method],
            spherize_epsilon=epsilon,
        )
    except ValueError as e:  # pycytominer refuses a rank-deficient matrix
        raise InputError(
            f"{method}: pycytominer cannot whiten these {len(live)} features ({e}); with "
            "thousands of them (CellProfiler's), select features first (pycytominer's "
            "feature_select, docs/features.md) or use --correction tvn"
        ) from None
    values = res.drop(columns=meta).to_numpy(np.float32)
    names = live if method == "spherize" else [f"pc_{k:04d}" for k in range(values.shape[1])]
    whitened = pd.DataFrame(values, columns=names, index=frame.index)
    return pd.concat([frame[meta], whitened], axis=1)


def consensus(frame: pd.DataFrame, pathways: dict[int, int] | None = None) -> pd.DataFrame:
    """One median profile per siRNA x cell type and per siRNA over all cell types
    (``Metadata_CellType`` = ``all``), labelled wells only, with ``Metadata_n_wells`` (pycytominer
    ``consensus``) and, given `pathways` (class id -> pathway), ``Metadata_pathway``."""
    pyc_consensus = _pycytominer().consensus
    feats = feature_columns(frame)
    keys = ["Metadata_sirna", "Metadata_sirna_id", "Metadata_pert_type", "Metadata_CellType"]
    labelled = frame[frame["Metadata_sirna"] != ""]
    pooled = labelled.assign(Metadata_CellType="all")
    parts = []
    for part in (labelled, pooled):
        med = _quiet(pyc_consensus, part[keys + feats], replicate_columns=keys, features=feats)
        n = part.groupby(keys).size().rename("Metadata_n_wells").reset_index()
        parts.append(n.merge(med, on=keys))
    out = pd.concat(parts, ignore_index=True).copy()
    if pathways is not None:
        out.insert(
            len(keys) + 1,
            "Metadata_pathway",
            [str(pathways.get(int(s), "")) for s in out["Metadata_sirna_id"]],
        )
        out.loc[out["Metadata_pathway"] == "-1", "Metadata_pathway"] = ""
    out[feats] = out[feats].astype(np.float32)
    return out


# --- the `rcic profiles` step ----------------------------------------------------------------


def synthetic_truth(path: str | Path) -> tuple[dict[int, int], dict[str, np.ndarray]]:
    """A synthetic screen's pathways (class id -> pathway) and true phenotypes per cell type,
    from its ``synth.json``."""
    from rcic import cellsim, synth

    try:
        info = json.loads(Path(path).read_text())
        spec = synth.Preset(**info["preset"])
        pathways = {int(k): int(v) for k, v in info["pathway"].items()}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise InputError(f"{path}: not a synthetic screen's synth.json ({e})") from None
    pheno = cellsim.sirna_phenotypes(spec.strength, spec.n_pathways, int(info["seed"]))
    truth = {ct: pheno.effect[i] for i, ct in enumerate(cellsim.CELL_TYPES)}
    return pathways, truth


def read_relationships(path: str | Path) -> pd.DataFrame:
    """Annotated pairs in EFAAR's form: a CSV with columns entity1, entity2 (siRNA names)."""
    try:
        pairs = pd.read_csv(path, dtype=str)
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        raise InputError(f"{path}: cannot read the relationships CSV ({e})") from None
    if not {"entity1", "entity2"} <= set(pairs.columns):
        raise InputError(f"{path}: the relationships CSV needs columns entity1,entity2")
    return pairs[["entity1", "entity2"]]


def pathway_pairs(pathways: dict[int, int], profiles: pd.DataFrame) -> pd.DataFrame:
    """Every pair of `profiles` (``Metadata_sirna`` names, ``Metadata_sirna_id`` ids) whose
    siRNAs share a pathway."""
    by = {}
    for name, sid in profiles[["Metadata_sirna", "Metadata_sirna_id"]].itertuples(index=False):
        if pathways.get(int(sid), -1) >= 0:
            by.setdefault(pathways[int(sid)], []).append(name)
    rows = [(a, b) for group in by.values() for i, a in enumerate(group) for b in group[i + 1 :]]
    return pd.DataFrame(rows, columns=["entity1", "entity2"])


def choose_epsilon(
    frame: pd.DataFrame, split: str = "train", method: str = "spherize"
) -> tuple[float, dict]:
    """The spherize epsilon with the best activity mAP on the wells of `split` (the validation
    experiments; the figures reported elsewhere come from other ones), each siRNA's wells of all
    cell types together (a validation fold may hold one experiment per cell type)."""
    from rcic import profile_metrics

    scores = {}
    for eps in EPSILONS:
        part = correct(frame, method, eps)
        scores[eps] = profile_metrics.pooled_activity_map(part[part["Metadata_split"] == split])
    return max(scores, key=scores.get), {str(k): v for k, v in scores.items()}


def load_tables(paths) -> tuple[pd.DataFrame, dict]:
    """One table from several (a model's embeddings of several splits, say); the provenance of
    the first."""
    frames, provenance = [], None
    for path in paths:
        frame, prov = read_table(path)
        if frames and feature_columns(frame) != feature_columns(frames[0]):
            raise InputError(f"{path}: its features differ from {paths[0]}'s")
        frames.append(frame)
        provenance = provenance or prov
    frame = pd.concat(frames, ignore_index=True)
    dup = frame["Metadata_id_code"].duplicated()
    if dup.any():
        raise InputError(f"well {frame.loc[dup, 'Metadata_id_code'].iat[0]} is in two tables")
    return frame, provenance or {}


def run_profiles(
    tables,
    out: str | Path,
    correction: str = "standardize",
    epsilon: float | str = "auto",
    relationships: str | Path | None = None,
    truth: str | Path | None = None,
    evaluate: str = "all",
    seed: int = 0,
) -> dict:
    """Correct the well profiles of `tables`, write ``wells.parquet``, ``consensus.parquet`` and
    ``metrics.json`` into `out`, and return the metrics. `evaluate`: the split whose labelled wells
    the consensus and metrics use (``all``: every labelled well); a spherize epsilon of ``auto`` is
    chosen on the ``train`` split's wells."""
    frame, provenance = load_tables([Path(t) for t in tables])
    chosen = {}
    if correction in WHITENING and epsilon == "auto":
        epsilon, chosen = choose_epsilon(frame, method=correction)
    wells = correct(frame, correction, float(epsilon if epsilon != "auto" else 1e-2))
    setup = {
        "correction": correction,
        "epsilon": epsilon if correction in WHITENING else None,
        "epsilon_scores": chosen,
        "evaluate": evaluate,
        "inputs": [str(t) for t in tables],
    }
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_table(wells, out / "wells.parquet", {**provenance, **setup, "level": "well"})
    pathways, true = synthetic_truth(truth) if truth else (None, {})
    part = wells if evaluate == "all" else wells[wells["Metadata_split"] == evaluate]
    cons = consensus(part, pathways)
    write_table(cons, out / "consensus.parquet", {**provenance, **setup, "level": "consensus"})
    scores, act = _scores(part, cons, (pathways, true), relationships, seed)
    metrics = {**setup, **scores}
    with atomic_path(out / "metrics.json", ".tmp.json") as tmp:
        tmp.write_text(json.dumps(metrics, indent=1, default=float))
    atomic_csv(act, out / "activity.csv")
    return metrics


def _scores(part: pd.DataFrame, cons: pd.DataFrame, truth, relationships, seed: int):
    """(metrics, per-profile activity table): copairs' activity mAP of the wells `part`; with the generator's `truth` (pathways, true
    strengths) the consistency mAP of the consensus and how it ranks the true strengths; the
    relationship recall of `relationships` (or of the pathways)."""
    from rcic import profile_metrics as pm

    pathways, true = truth
    act, act_params = pm.activity(part, seed)
    metrics = {"activity": pm.summarise(act), "copairs_activity": act_params}
    if pathways is not None:
        con, con_params = pm.consistency(cons[cons["Metadata_CellType"] != "all"], seed)
        metrics.update(consistency=pm.summarise(con), copairs_consistency=con_params)
        metrics["true_vs_measured_spearman"] = pm.true_vs_measured(cons, true)
    pooled = cons[(cons["Metadata_CellType"] == "all") & (cons["Metadata_pert_type"] == "trt")]
    pairs = read_relationships(relationships) if relationships else None
    if pairs is None and pathways is not None:
        pairs = pathway_pairs(pathways, pooled)
    if pairs is not None:
        profiles = pooled.set_index("Metadata_sirna")[feature_columns(pooled)]
        metrics["relationship_recall"] = pm.relationship_recall(profiles, pairs)
    return metrics, act

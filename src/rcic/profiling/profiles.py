"""Profiles as the image-based profiling field builds them from well tables (`rcic.training.batches.tables`):
batch correction (pycytominer's, and rcic's TVN), consensus per siRNA and cell type, and
`rcic profiles`, which writes the corrected wells, the consensus and copairs' metrics."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from rcic.data.tables import (
    PERT_TYPE,
    feature_columns,
    make_table,
    metadata_columns,
    metadata_frame,
    read_table,
    write_table,
)
from rcic.errors import InputError, RcicError
from rcic.fileio import atomic_csv, atomic_path


def features_table(store, sites: pd.DataFrame) -> pd.DataFrame:
    """`rcic features`: the hand-crafted features of every well of `sites` as a profile table."""
    from rcic.data.store import SiteStore
    from rcic.synthetic import baselines

    wells = baselines.well_features(SiteStore(store), sites, extended=True)
    names = list(baselines.PROFILE_NAMES)
    meta = metadata_frame(wells, "rcic", n_sites=wells["n_sites"])
    return make_table(meta, wells[names].to_numpy(), names)


# --- batch correction and consensus (pycytominer) -----------------------------------------------

PROFILE_CORRECTIONS = ("none", "standardize", "spherize", "spherize-pca", "tvn", "harmony")
WHITENING = {"spherize": "ZCA", "spherize-pca": "PCA"}  # pycytominer's spherize_method
EPSILONS = tuple(10.0**k for k in range(-4, 3))  # the spherize epsilons tried on validation
NEGCON = "Metadata_pert_type == 'negcon'"
HARMONY_PCS = 50  # principal components Harmony corrects (fewer where the table is smaller)


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


def correction_steps(correction: str | list[str]) -> list[str]:
    """The steps of a ``--correction`` value (a comma list, applied in order), checked by name."""
    steps = correction.split(",") if isinstance(correction, str) else list(correction)
    steps = [s.strip() for s in steps if s.strip()]
    for step in steps:
        if step not in PROFILE_CORRECTIONS:
            raise InputError(f"unknown correction {step!r}; choose from {PROFILE_CORRECTIONS}")
    if sum(step in WHITENING for step in steps) > 1:
        raise InputError(f"correction {','.join(steps)!r}: at most one whitening step")
    return steps or ["none"]


def correct_profiles(
    frame: pd.DataFrame, correction: str | list[str], epsilon: float = 1e-2
) -> pd.DataFrame:
    """Apply the correction steps of `correction` in order (``standardize,harmony``, say):

    - ``standardize``: each experiment (``Metadata_Batch``) z-scored on its negative controls
      (pycytominer ``normalize``);
    - ``spherize``: that, then one ZCA whitening (``normalize(method="spherize")``, `epsilon` its
      regulariser) fitted on all wells, not on the controls: RxRx1 has one negative control per
      plate, and after the first step each experiment's controls are centred on themselves, which
      leaves too few independent ones to whiten a few hundred features; ``spherize-pca``: the
      same with PCA whitening (rotated onto the principal axes, where ZCA stays closest to the
      standardised features);
    - ``tvn``: rcic's typical variation normalisation (`rcic.profiling.corrections.tvn`), each
      experiment centred on its negative controls, then whitened by their covariance shrunk
      towards its mean eigenvalue, which whitens on the controls where spherize cannot;
    - ``harmony``: ``standardize``, then Harmony (harmonypy; batch = experiment) on the principal
      components of the standardised profiles (`harmony`);
    - ``none``: the table as it is.

    pycytominer is imported here only: it switches pandas' copy-on-write on for the whole
    process."""
    for step in correction_steps(correction):
        frame = _correct_step(frame, step, epsilon)
    return frame


def _correct_step(frame: pd.DataFrame, step: str, epsilon: float) -> pd.DataFrame:
    if step == "none":
        return frame
    if step == "tvn":
        return _tvn(frame)
    if step == "harmony":
        return harmony(_correct_step(frame, "standardize", epsilon))
    whitens = step in WHITENING
    out = _standardized(frame, np.float64 if whitens else np.float32)
    if whitens:
        return _whiten(out, metadata_columns(frame), feature_columns(frame), step, epsilon)
    return out[frame.columns]


def _standardized(frame: pd.DataFrame, dtype) -> pd.DataFrame:
    """pycytominer's ``normalize`` of each experiment on its negative controls, written into one
    block of `dtype` an experiment at a time (pycytominer works in float64: the whole table
    through it at once held several float64 copies)."""
    normalize = _pycytominer().normalize
    feats, meta = feature_columns(frame), metadata_columns(frame)
    values = np.empty((len(frame), len(feats)), dtype)
    for batch, rows in frame.groupby("Metadata_Batch", sort=False).indices.items():
        part = frame.iloc[rows]
        if not (part["Metadata_pert_type"] == "negcon").any():
            raise InputError(f"experiment {batch}: no negative controls")
        done = _quiet(normalize, part, features=feats, meta_features=meta, samples=NEGCON)
        values[rows] = done.loc[part.index, feats].to_numpy(dtype)
    block = pd.DataFrame(values, columns=feats, index=frame.index, copy=False)
    return pd.concat([frame[meta], block], axis=1)


def principal_components(frame: pd.DataFrame, n: int = HARMONY_PCS) -> np.ndarray:
    """The first `n` principal components (scores) of the features that vary, each feature
    z-scored over all wells first; fewer where the table has fewer features or wells."""
    from sklearn.decomposition import PCA

    x = frame[feature_columns(frame)].to_numpy(np.float64)
    x = x[:, x.std(axis=0) > 0]
    x = (x - x.mean(axis=0)) / x.std(axis=0)
    k = max(1, min(n, x.shape[1], len(x) - 1))
    return PCA(k, svd_solver="full").fit_transform(x)


def harmony(frame: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """Harmony (Korsunsky et al., Nat Methods 2019; harmonypy) on the principal components of
    `frame`'s features, batch = experiment (``Metadata_Batch``): the corrected components, named
    ``harmony_0000...``. The batch correction a large benchmark of image-based profiles ranks among
    the best (Arevalo et al., Nat Commun 2024) and JUMP's profiling recipe uses."""
    import harmonypy

    pcs = principal_components(frame)
    batches = frame[["Metadata_Batch"]].astype(str).reset_index(drop=True)
    if batches["Metadata_Batch"].nunique() < 2:
        raise InputError("harmony: the wells come from one experiment; nothing to correct")
    fitted = harmonypy.run_harmony(pcs, batches, "Metadata_Batch", random_state=seed, verbose=False)
    values = _cells_by_dims(np.asarray(fitted.Z_corr), len(frame))
    names = [f"harmony_{k:04d}" for k in range(values.shape[1])]
    return make_table(frame[metadata_columns(frame)], values, names).set_index(frame.index)


def _cells_by_dims(z: np.ndarray, n: int) -> np.ndarray:
    """harmonypy's corrected matrix as wells x components (it returns components x wells)."""
    return (z.T if z.shape[1] == n else z).astype(np.float32)


def embed_metadata(frame: pd.DataFrame) -> pd.DataFrame:
    """The per-well columns `rcic.profiling.corrections`'s corrections read (experiment, plate, well_type, sirna),
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
    from rcic.profiling import corrections as embed

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


CONSENSUS_KEYS = ["Metadata_sirna", "Metadata_sirna_id", "Metadata_pert_type", "Metadata_CellType"]
CONSENSUS_SIRNAS = 64  # siRNAs whose wells are aggregated at a time


def consensus(frame: pd.DataFrame, pathways: dict[int, int] | None = None) -> pd.DataFrame:
    """One median profile per siRNA x cell type and per siRNA over all cell types
    (``Metadata_CellType`` = ``all``), labelled wells only, with ``Metadata_n_wells`` (pycytominer
    ``consensus``) and, given `pathways` (class id -> pathway), ``Metadata_pathway``. A median
    is a siRNA's own, so the wells go through pycytominer CONSENSUS_SIRNAS siRNAs at a time (in
    the order it sorts them): only those wells are copied, never the whole table."""
    feats = feature_columns(frame)
    names = frame["Metadata_sirna"]
    labelled = np.sort(names[names != ""].unique())
    levels = ([], [])  # per cell type, then over all cell types
    for chunk in np.array_split(labelled, max(1, -(-len(labelled) // CONSENSUS_SIRNAS))):
        part = frame.loc[names.isin(chunk), CONSENSUS_KEYS + feats]
        for level, rows in zip(levels, (part, part.assign(Metadata_CellType="all")), strict=True):
            level.append(_medians(rows, feats))
    out = pd.concat([*levels[0], *levels[1]], ignore_index=True)
    if pathways is not None:
        out.insert(
            len(CONSENSUS_KEYS) + 1,
            "Metadata_pathway",
            [str(pathways.get(int(s), "")) for s in out["Metadata_sirna_id"]],
        )
        out.loc[out["Metadata_pathway"] == "-1", "Metadata_pathway"] = ""
    out[feats] = out[feats].astype(np.float32)
    return out


def _medians(rows: pd.DataFrame, feats: list[str]) -> pd.DataFrame:
    """pycytominer's median per CONSENSUS_KEYS group of `rows`, with the wells it took."""
    keys = CONSENSUS_KEYS
    med = _quiet(_pycytominer().consensus, rows, replicate_columns=keys, features=feats)
    n = rows.groupby(keys).size().rename("Metadata_n_wells").reset_index()
    return n.merge(med, on=keys)


# --- the `rcic profiles` step ----------------------------------------------------------------


def synthetic_truth(path: str | Path) -> tuple[dict[int, int], dict[str, np.ndarray]]:
    """A synthetic screen's pathways (class id -> pathway) and true phenotypes per cell type,
    from its ``synth.json``."""
    from rcic.synthetic import cellsim, synth

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
    frame: pd.DataFrame, split: str = "train", correction: str | list[str] = "spherize"
) -> tuple[float, dict]:
    """The spherize epsilon of `correction` with the best activity mAP on the wells of `split`
    (the validation experiments; the figures reported elsewhere come from other ones), each siRNA's
    wells of all cell types together (a validation fold may hold one experiment per cell type)."""
    from rcic.profiling import metrics as profile_metrics

    scores = {}
    for eps in EPSILONS:
        part = correct_profiles(frame, correction, eps)
        scores[eps] = profile_metrics.pooled_activity_map(part[part["Metadata_split"] == split])
    return max(scores, key=scores.get), {str(k): v for k, v in scores.items()}


def table_files(paths) -> list[Path]:
    """The Parquet files of `paths`: a file as given, a folder as its ``*.parquet`` files (the
    parts of one table, as pandas and pyarrow read a folder), sorted."""
    files = []
    for path in map(Path, paths):
        inside = sorted(path.glob("*.parquet")) if path.is_dir() else [path]
        if not inside:
            raise InputError(f"{path}: a folder without .parquet files")
        files += inside
    return files


def load_tables(paths) -> tuple[pd.DataFrame, dict]:
    """One table from several (a model's embeddings of several splits, or the parts of one, or a
    folder of them); the provenance of the first."""
    paths = table_files(paths)
    frames, provenances = [], []
    for path in paths:
        frame, prov = read_table(path)
        if frames and feature_columns(frame) != feature_columns(frames[0]):
            raise InputError(f"{path}: its features differ from {paths[0]}'s")
        frames.append(frame)
        provenances.append(prov or {})
    _check_one_model(paths, provenances)
    frame = pd.concat(frames, ignore_index=True)
    provenance = next((p for p in provenances if p), None)
    dup = frame["Metadata_id_code"].duplicated()
    if dup.any():
        raise InputError(f"well {frame.loc[dup, 'Metadata_id_code'].iat[0]} is in two tables")
    return frame, provenance or {}


def _check_one_model(paths, provenances: list[dict]) -> None:
    """The tables come from one model (or feature set), and a table written in parts
    (`rcic embed --part`) comes with all its parts: a missing or repeated part is named."""
    from rcic.inference.logitsfile import group_parts

    models = {p["model"] for p in provenances if p.get("model")}
    if len(models) > 1:
        raise InputError(
            f"the tables come from {len(models)} models ({', '.join(sorted(models))}): "
            "profile one model's tables at a time"
        )
    try:
        group_parts(
            [
                (path, f"{p.get('model')}, split {p.get('split')}", p.get("part"))
                for path, p in zip(paths, provenances, strict=True)
            ]
        )
    except RcicError as e:
        raise InputError(str(e)) from None


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
    steps = correction_steps(correction)
    whitens = any(step in WHITENING for step in steps)
    frame, provenance = load_tables([Path(t) for t in tables])
    chosen = {}
    if whitens and epsilon == "auto":
        epsilon, chosen = choose_epsilon(frame, correction=steps)
    wells = correct_profiles(frame, steps, float(epsilon if epsilon != "auto" else 1e-2))
    del frame  # the uncorrected table: not needed again, and as large as the corrected one
    setup = {
        "correction": ",".join(steps),
        "epsilon": epsilon if whitens else None,
        "epsilon_scores": chosen,
        "evaluate": evaluate,
        "evaluate_rows": None if evaluate == "all" else f"Metadata_split == '{evaluate}'",
        "inputs": [str(t) for t in tables],
    }
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_table(wells, out / "wells.parquet", {**provenance, **setup, "level": "well"})
    pathways, true = synthetic_truth(truth) if truth else (None, {})
    part = wells if evaluate == "all" else wells.query(setup["evaluate_rows"])
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
    from rcic.profiling import metrics as pm

    pathways, true = truth
    act, act_params = pm.activity(part, seed)
    metrics = {"activity": pm.summarise(act), "copairs_activity": act_params}
    if pathways is not None:
        con, con_params = pm.consistency(cons, seed)
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

"""The fair fight of issue 24: hand-crafted image features against rcic's CNN embeddings as
profiles, on the test experiments of a demo screen, judged by the field's metrics.

The screen is the demo preset with two test experiments per cell type instead of one (the demo's
has one, so no siRNA has two test wells of one cell type, and activity needs replicates).

- rcic statistics: `rcic features` (the 42 statistics, 15 channel correlations, 6 orientation
  coherences per well; deterministic, one run);
- CellProfiler: `rcic features --kind cellprofiler` (segmented cells, cp-measure's default groups,
  the median per well), as it is and after pycytominer's feature selection (variance, correlation
  above 0.9, missing values, its blocklist; label-free);
- CNN: configs/demo.yaml trained with fold 0 held out, 3 seeds; each model embeds its held-out
  fold and the test experiments (8 views, both sites), wells it never trained on.
Each table is corrected by pycytominer (none; standardize per experiment on its negative controls;
spherize and spherize-pca, that plus ZCA or PCA whitening with epsilon chosen on the training-split
wells) and by rcic's own corrections, fitted per experiment: tvn (`rcic profiles --correction
tvn`: each experiment centred on its negative controls, whitened by their shrunk covariance), and
those only `rcic embed-head` offers (center_neg: the centring alone; either then align_pos: each
experiment shifted so its positive-control centroids meet the mean over experiments). One more
row fits center_neg per plate (`rcic embed-head`'s default level): with one or two negative
controls per plate it moves them onto (or symmetric about) the origin, where a cosine says
nothing, so its activity mAP measures that artefact, not the profiles.
Two scores:
- `val`: activity mAP on the training-split wells (for the CNN its held-out fold 0; for the
  features every training experiment), each siRNA's wells of all cell types together (fold 0 holds
  one experiment per cell type). This is where a correction is chosen (and spherize's epsilon).
- on the test experiments only (hidden labels filled in), never used to choose: activity mAP and
  the fraction of siRNA x cell type retrieved (copairs), consistency mAP by pathway, EFAAR
  known-relationship recall for same-pathway pairs (random about 0.10), and the mean over cell
  types of the Spearman correlation between true and measured cosines.

Usage: python benchmarks/profiles.py [--work /tmp/rcic-bench-profiles] [--screen-seed 0]
        [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from rcic import __version__
from rcic.data import metadata, packing, tables
from rcic.errors import InputError
from rcic.inference import embed as embed_pipeline
from rcic.inference.predict import InferenceOptions
from rcic.profiling import corrections as embed
from rcic.profiling import features as features_pipeline
from rcic.profiling import features_head, profiles
from rcic.profiling import metrics as profile_metrics
from rcic.synthetic import synth
from rcic.training import config, train

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
SCREEN = replace(synth.PRESETS["demo"], name="demo-2test", test_experiments=(2, 2, 2, 2))
PYCYTOMINER = ("none", "standardize", "spherize", "spherize-pca")
OWN = ("tvn", "center_neg", "center_neg+align_pos", "tvn+align_pos")  # rcic's, per experiment
ARTEFACT = "center_neg per plate"
CORRECTIONS = profiles.PROFILE_CORRECTIONS + OWN[1:] + (ARTEFACT,)
FIGURES = ("val mAP", "activity mAP", "retrieved", "consistency mAP", "recall", "spearman")


def figures(m: dict) -> dict:
    rho = list(m["true_vs_measured_spearman"].values())
    return {
        "activity mAP": m["activity"]["mAP"],
        "retrieved": m["activity"]["fraction_retrieved"],
        "consistency mAP": m["consistency"]["mAP"],
        "recall": m["relationship_recall"]["recall"],
        "spearman": float(np.mean(rho)),
    }


def own_correction(paths: list[Path], steps: str, out: Path) -> Path:
    """The wells of `paths` corrected by rcic.profiling.corrections's `steps` (``+``-joined, per experiment, or
    per plate with the suffix `` per plate``), as one table."""
    level = "plate" if steps.endswith(" per plate") else "experiment"
    frame, provenance = profiles.load_tables(paths)
    feats = tables.feature_columns(frame)
    meta = profiles.embed_metadata(frame)
    values = embed.correct_embeddings(
        frame[feats].to_numpy(np.float64), meta, steps.split(" ")[0].split("+"), level
    )
    table = tables.make_table(frame[tables.metadata_columns(frame)], values, feats)
    out.mkdir(parents=True, exist_ok=True)
    return tables.write_table(table, out / "input.parquet", {**provenance, "correction": steps})


def val_map(wells_path: Path) -> float:
    """Activity mAP on the corrected training-split wells, each siRNA's cell types together."""
    wells, _ = tables.read_table(wells_path)
    return profile_metrics.pooled_activity_map(wells[wells["Metadata_split"] == "train"])


def score(paths: list[Path], out: Path, truth: Path) -> dict[str, dict]:
    res = {}
    for c in CORRECTIONS:
        where = out / c.replace(" ", "-")
        inputs, method = (
            (paths, c)
            if c in profiles.PROFILE_CORRECTIONS
            else ([own_correction(paths, c, where)], "none")
        )
        try:
            m = profiles.run_profiles(inputs, where, method, truth=truth, evaluate="test")
        except InputError as e:  # pycytominer refuses to whiten some tables: said, row left empty
            print(f"{paths[0].name} {c}: {e}", flush=True)
            res[c] = dict.fromkeys(FIGURES, float("nan"))
            continue
        res[c] = {**figures(m), "val mAP": val_map(where / "wells.parquet")}
    return res


def feature_table(st: Path, labelled, out: Path) -> Path:
    if not out.exists():
        table = profiles.features_table(st, labelled)
        tables.write_table(
            table, out, {"command": "benchmarks/profiles.py features", "rcic_version": __version__}
        )
    return out


def cellprofiler_tables(st: Path, labelled, work: Path) -> dict[str, Path]:
    """`rcic features --kind cellprofiler` of every well, as it is and after pycytominer's feature
    selection (variance, correlation above 0.9, missing values, its blocklist; label-free)."""
    out, chosen = work / "cellprofiler.parquet", work / "cellprofiler-selected.parquet"
    prov = {"command": "benchmarks/profiles.py cellprofiler", "rcic_version": __version__}
    if not out.exists():
        table = features_pipeline.cellprofiler_table(st, labelled, out, workers=2)
        tables.write_table(table, out, prov)
        features_pipeline.remove_parts(out)
    if not chosen.exists():
        table, _ = tables.read_table(out)
        kept = set(features_head.selected_columns(table, tables.feature_columns(table)))
        keep = [c for c in table.columns if c.startswith("Metadata_") or c in kept]
        tables.write_table(
            table[keep], chosen, {**prov, "selection": list(features_head.SELECTION)}
        )
    return {"CellProfiler": out, "CellProfiler, selected": chosen}


def cnn_tables(work: Path, seed: int, sites, labelled, st: Path) -> list[Path]:
    run = work / f"cnn-seed{seed}"
    cfg = config.load_config(CONFIGS / "demo.yaml", [f"seed={seed}", "fold=0"])
    if not (run / "checkpoints" / "last.pt").exists():
        train.train(cfg, sites, st, run, progress=False)
    out = []
    for name, split in (("fold", "0"), ("test", "test")):
        path = run / f"embed-{name}.parquet"
        if not path.exists():
            embed_pipeline.embed_run(
                run, labelled, st, split, path, InferenceOptions(checkpoint="last", progress=False)
            )
        out.append(path)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/rcic-bench-profiles"))
    ap.add_argument("--screen-seed", type=int, default=0, help="the generator's seed")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    t0 = time.perf_counter()
    data, st = args.work / "data", args.work / "store"
    if not (data / "test_labels.csv").exists():
        synth.generate(data, SCREEN, args.screen_seed)
    sites = metadata.load_metadata(data)
    packing.pack(data, sites, st)
    labelled, truth = synth.with_test_labels(sites, data), data / "synth.json"
    inputs = {"rcic statistics": feature_table(st, labelled, args.work / "features.parquet")}
    inputs.update(cellprofiler_tables(st, labelled, args.work))
    rows = {
        name: score([path], args.work / f"profiles-{name.replace(', ', '-')}", truth)
        for name, path in inputs.items()
    }
    per_seed = [
        score(cnn_tables(args.work, s, sites, labelled, st), args.work / f"profiles-cnn{s}", truth)
        for s in args.seeds
    ]
    print_table(args, rows, per_seed, (time.perf_counter() - t0) / 60)


def print_table(args, rows: dict, per_seed: list[dict], minutes: float) -> None:
    print(
        f"demo screen with 2 test experiments per cell type (generator seed {args.screen_seed}); "
        f"val: activity mAP on the training-split wells, the rest on the test experiments; CNN: "
        f"configs/demo.yaml, fold 0 held out, training seeds {args.seeds}, mean +- sd; "
        f"{minutes:.1f} min"
    )
    print(f"{'profiles':22} {'correction':21} " + " ".join(f"{f:>17}" for f in FIGURES))
    cnn = {c: {f: np.array([r[c][f] for r in per_seed]) for f in FIGURES} for c in CORRECTIONS}
    for c in CORRECTIONS:
        for name, res in rows.items():
            print(f"{name:22} {c:21} " + " ".join(f"{res[c][f]:17.3f}" for f in FIGURES))
        print(
            f"{'CNN embeddings':22} {c:21} "
            + " ".join(
                f"{v.mean():9.3f} +- {v.std(ddof=1) if len(v) > 1 else 0:.3f}"
                for v in cnn[c].values()
            )
        )
    vals = {name: {c: res[c]["val mAP"] for c in CORRECTIONS} for name, res in rows.items()}
    vals["CNN embeddings"] = {c: cnn[c]["val mAP"].mean() for c in CORRECTIONS}
    for name, val in vals.items():
        val.pop(ARTEFACT)
        val = {c: v if v == v else -np.inf for c, v in val.items()}  # a refused correction: last
        best = max(val, key=val.get)
        best_pyc = max(PYCYTOMINER, key=val.get)
        best_own = max(OWN, key=val.get)
        print(
            f"{name}: best on val {best} ({val[best]:.3f}); best pycytominer {best_pyc} "
            f"({val[best_pyc]:.3f}); best of rcic's own {best_own} ({val[best_own]:.3f})"
        )


if __name__ == "__main__":
    main()

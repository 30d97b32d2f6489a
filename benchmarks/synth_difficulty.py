"""Difficulty certificate of a synthetic screen: image-statistics baselines beside the CNN.

Usage: python benchmarks/synth_difficulty.py [--work DIR] [--seed 5] [--preset demo] [--no-cnn]
        [--no-audit] [--cellprofiler] [--set KEY=VALUE ...]   (config overrides for both CNN rows)

On the screen's test experiments (labels hidden from every model, read back from
test_labels.csv only to score), per well:
- the leak audit (rcic.synthetic.baselines.leak_audit): how far each phenotype dimension, at the 95th
  percentile of its strength over the screen's siRNAs, moves any of the 42 statistics below, in
  units of their well-to-well standard deviation;
- baselines: per channel mean, std, 50/90/99th percentiles, foreground fraction, texture (7 x 6
  numbers, both sites averaged), raw and standardised over each plate's treatment wells, with a
  logistic regression (its strength chosen on held-out training experiments) and a shrinkage LDA,
  trained on every training experiment;
- with --cellprofiler, the same two classifiers on CellProfiler profiles (`rcic features --kind
  cellprofiler`: segmented cells, cp-measure's default groups, the median per well), raw and
  per-plate z, the feature set (all, or pycytominer's selection) and the logistic regression's
  strength chosen on held-out training experiments: the baseline a reviewer of the field would
  name, reported beside the certificate's checks, not inside its <= 0.10 rule (which is about the
  42 statistics the generator was built to keep blind);
- two CNN recipes at the same optimiser steps, each one model holding out fold 0, then the plate
  stages of `rcic submit` (groups, then one siRNA per well): configs/cells.yaml on single-cell crops
  turned to their nucleus' axis (`rcic cells --crop 32 --align front`, the views that keep the
  alignment) and configs/demo.yaml on whole sites (8 views), its epochs raised to the cells' steps.
  The best recipe is the one with the higher accuracy on fold 0's held-out training experiments;
  the test experiments only report it.
Targets (issue 23): every baseline <= 0.10; the best CNN recipe as a single model >= 3x the best
baseline, trained in at most 45 minutes; the plate groups and then the well decision each adding.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import pandas as pd

from rcic.data import cells, metadata, packing, store, tables
from rcic.inference.predict import InferenceOptions
from rcic.synthetic import baselines, synth
from rcic.training import config

CELL_CROP = 32  # the demo preset's cells are about 30 px across (benchmarks/cells.py uses the same)
ALIGN = "front"  # as benchmarks/cells.py
CONFIGS = Path(__file__).resolve().parents[1] / "configs"
MAX_MINUTES = 45

log = logging.getLogger("synth_difficulty")


def screen(work: Path, preset: str | synth.Preset, seed: int) -> tuple[Path, pd.DataFrame, Path]:
    data, st = work / "data", work / "store"
    t0 = time.perf_counter()
    if not (data / "test_labels.csv").exists():
        synth.generate(data, preset, seed)
        name = preset if isinstance(preset, str) else preset.name
        print(f"generated the {name} screen (seed {seed}) in {time.perf_counter() - t0:.1f} s")
    sites = metadata.load_metadata(data)
    if not (st / "store.json").exists():
        packing.pack(data, sites, st)
    return data, sites, st


def fold0_experiments(sites: pd.DataFrame) -> list[str]:
    """The training experiments of fold 0 (of 3), where the logistic regression is tuned."""
    from rcic.training.samples import make_folds

    fold_of = make_folds(metadata.wells_of(sites), 3, 0)
    return sorted(e for e, f in fold_of.items() if f == 0)


def baseline_table(
    sites: pd.DataFrame, st: Path, val_exps: list[str], verbose: bool = True
) -> dict[str, float]:
    wells = baselines.well_features(store.SiteStore(st), sites)
    rows = {}
    for form, frame in (("raw", wells), ("per-plate z", baselines.standardise_per_plate(wells))):
        train, test = frame[frame["split"] == "train"], frame[frame["split"] == "test"]
        for kind in ("logistic", "lda"):
            acc, c = baselines.tuned_baseline(train, val_exps, test, kind)
            rows[f"{kind}, {form}"] = acc
            extra = f" (C={c:g}, chosen on held-out training experiments)" if c == c else ""
            if verbose:
                print(f"  {kind:9} {form:12} {acc:.3f}{extra}", flush=True)
    return rows


def cellprofiler_wells(work: Path, labelled: pd.DataFrame, st: Path) -> tuple[pd.DataFrame, dict]:
    """`rcic features --kind cellprofiler` of every well (cached in `work`) as the baselines'
    frame, and its feature sets: all, and pycytominer's selection (variance, correlation above
    0.9, missing values, its blocklist; label-free, on every well)."""
    from rcic.profiling import features as features_pipeline
    from rcic.profiling import features_head, profiles

    out = work / "cellprofiler.parquet"
    if not out.exists():
        table = features_pipeline.cellprofiler_table(st, labelled, out, workers=2)
        tables.write_table(table, out, {"command": "benchmarks/synth_difficulty.py"})
        features_pipeline.remove_parts(out)
    table, _ = tables.read_table(out)
    feats = tables.feature_columns(table)
    frame = profiles.embed_metadata(table).assign(split=table["Metadata_split"].to_numpy())
    frame = pd.concat([frame, table[feats]], axis=1)
    return frame, {"all": feats, "selected": features_head.selected_columns(table, feats)}


def cellprofiler_table(work: Path, labelled: pd.DataFrame, st: Path, val_exps) -> dict:
    """Logistic regression and LDA on CellProfiler profiles, the feature set (and the logistic
    regression's strength) chosen on held-out training experiments."""
    frame, sets = cellprofiler_wells(work, labelled, st)
    print(
        f"CellProfiler profiles ({len(sets['all'])} features per well, {len(sets['selected'])} "
        f"after pycytominer's selection; beside the certificate, not in its rule):"
    )
    rows = {}
    for form, f in (
        ("raw", frame),
        ("per-plate z", baselines.standardise_per_plate(frame, sets["all"])),
    ):
        train, test = f[f["split"] == "train"], f[f["split"] == "test"]
        for kind in ("logistic", "lda"):
            acc, c, name = baselines.tuned_choice(train, val_exps, test, kind, sets)
            rows[f"{kind}, {form}"] = acc
            extra = f", C={c:g}" if c == c else ""
            print(
                f"  {kind:9} {form:12} {acc:.3f} ({name} features{extra}; chosen on held-out "
                f"training experiments)",
                flush=True,
            )
    return rows


def cnn_row(work: Path, data: Path, sites: pd.DataFrame, st: Path, cfg, name: str) -> dict:
    from recipes import well_accuracy

    from rcic.inference import predict
    from rcic.inference.logitsfile import read_logits
    from rcic.plates import submit
    from rcic.training import train

    run = work / name
    t0 = time.perf_counter()
    if not (run / "checkpoints" / "last.pt").exists():
        train.train(cfg, sites, st, run, progress=False)
    minutes = (time.perf_counter() - t0) / 60
    fold = read_logits(
        predict.predict_run(run, sites, st, "0", run / "fold.npz", InferenceOptions(progress=False))
    )
    val = well_accuracy(fold)
    temp = float(fold["temperature"])
    test = predict.predict_run(
        run, sites, st, "test", run / "test.npz", InferenceOptions(progress=False), temperature=temp
    )
    res = submit.run_submit([test], data, run / "submission.csv", labels=data / "test_labels.csv")
    scores = {k: v["overall"] for k, v in res.scores.items()}
    return {"scores": scores, "val": val, "train_minutes": minutes, "epochs": cfg.epochs}


def cnn_rows(work: Path, data: Path, sites: pd.DataFrame, st: Path, seed: int, extra: list[str]):
    """The aligned-cell recipe and the whole-site recipe at the cells' optimiser steps."""
    from recipes import n_samples

    cell_dir = work / f"cells-{ALIGN}"
    if not (cell_dir / "store.json").exists():
        finder = cells.CellFinder(crop=CELL_CROP, align=ALIGN)
        cells.pack_cells(st, cell_dir, finder, progress=False)
    # fp32 (deterministic) as recorded: the same bits on a rerun on this machine
    base = [f"seed={seed}", "fold=0", "deterministic=true"]
    cell_cfg = config.load_config(CONFIGS / "cells.yaml", [*base, *extra])
    cst, sst = store.SiteStore(cell_dir), store.SiteStore(st)
    steps = cell_cfg.epochs * (n_samples(cell_cfg, sites, cst) // cell_cfg.batch_size)
    site_cfg = config.load_config(CONFIGS / "demo.yaml", [*base, *extra])
    per_epoch = n_samples(site_cfg, sites, sst) // site_cfg.batch_size
    site_cfg = config.load_config(
        CONFIGS / "demo.yaml", [*base, *extra, f"epochs={max(1, round(steps / per_epoch))}"]
    )
    tag = "-".join(o.replace("=", "_") for o in extra)
    return steps, {
        f"aligned cells (cells.yaml, --align {ALIGN})": cnn_row(
            work, data, sites, cell_dir, cell_cfg, f"cnn-cells-{ALIGN}{tag}"
        ),
        "whole sites (demo.yaml)": cnn_row(work, data, sites, st, site_cfg, f"cnn-sites{tag}"),
    }


def print_audit(preset: str, seed: int) -> float:
    spec = synth.PRESETS[preset]
    audit = baselines.leak_audit(
        spec.strength,
        spec.n_pathways,
        image_size=spec.image_size,
        cell_radius=spec.cell_radius,
        seed=seed,
        workers=2,
    )
    print(
        "leak audit (each dimension alone at the 95th percentile of its strength times the "
        "experiment's scale, 16 control wells x 2 sites per cell type, paired), in well-to-well "
        "sd: its largest raw shift and shift + 2 se over the 42 statistics; for the statistic "
        "with the largest bound = shift - 2 se, its shift, standard error and bound"
    )
    for r in audit.itertuples():
        print(
            f"  {r.dimension:22} max {r.max_shift:5.2f} upper {r.upper:5.2f} | shift {r.shift:5.2f}"
            f"  se {r.se:4.2f}  bound {r.bound:5.2f}  ({r.statistic}, {r.cell_type}; "
            f"amplitude {r.amplitude:.2f})"
        )
    print(
        f"  largest raw shift {audit['max_shift'].max():.2f}, largest shift + 2 se "
        f"{audit['upper'].max():.2f}, largest bound {audit['bound'].max():.2f}"
    )
    return float(audit["bound"].max())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/rcic-bench-difficulty"))
    ap.add_argument("--preset", default="demo")
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--no-cnn", action="store_true")
    ap.add_argument("--no-audit", action="store_true")
    ap.add_argument(
        "--cellprofiler", action="store_true", help="also classify CellProfiler profiles"
    )
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="recipe overrides")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    t0 = time.perf_counter()
    data, sites, st = screen(args.work, args.preset, args.seed)
    result = {"preset": args.preset, "seed": args.seed}
    if not args.no_audit:
        result["leak_audit_max"] = print_audit(args.preset, args.seed)
    val_exps = fold0_experiments(sites)
    labelled = synth.with_test_labels(sites, data)
    n_sirna = labelled.loc[labelled["well_type"] == "treatment", "sirna"].nunique()
    print(
        f"{args.preset} screen, seed {args.seed}: {n_sirna} siRNAs (chance {1 / n_sirna:.4f}); "
        f"accuracy per well on the test experiments"
    )
    print("image-statistics baselines (42 numbers per well):")
    rows = baseline_table(labelled, st, val_exps)
    result["baselines"] = rows
    best = max(rows.values())
    checks = {"every baseline <= 0.10": best <= 0.10}
    if args.cellprofiler:
        result["cellprofiler"] = cellprofiler_table(args.work, labelled, st, val_exps)
    if "leak_audit_max" in result:
        checks["leak audit: no dimension's bound above 0.5 sd"] = result["leak_audit_max"] <= 0.5
    if not args.no_cnn:
        steps, cnn = cnn_rows(args.work, data, sites, st, args.seed, args.set)
        result["cnn"], result["steps"] = cnn, steps
        for name, row in cnn.items():
            print(
                f"CNN, {name}: {row['epochs']} epochs = {steps} optimiser steps, "
                f"{row['train_minutes']:.1f} min to train, fold 0 held out "
                f"(single model on fold 0: {row['val']:.3f}); on the test experiments:"
            )
            for stage, acc in row["scores"].items():
                print(f"  {stage:10} {acc:.3f}")
        top = max(cnn, key=lambda k: cnn[k]["val"])  # chosen on fold 0, reported on test
        s = cnn[top]["scores"]
        single = s["ensemble"]
        print(
            f"best recipe on fold 0: {top}; on the test experiments its single model / best "
            f"baseline = {single / max(best, 1e-9):.1f}x"
        )
        checks.update(
            {
                "best recipe single model >= 3x the best baseline": single >= 3 * best,
                f"trained in <= {MAX_MINUTES} min": cnn[top]["train_minutes"] <= MAX_MINUTES,
                "plate groups add, then the well decision": s["wells"] > s["groups"] > single,
            }
        )
    for name, ok in checks.items():
        print(f"  [{'met' if ok else 'NOT MET'}] {name}")
    result["targets"] = checks
    print(f"wall time {(time.perf_counter() - t0) / 60:.1f} min")
    (args.work / "difficulty.json").write_text(json.dumps(result, indent=1, default=float))


if __name__ == "__main__":
    main()

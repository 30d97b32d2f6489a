"""`rcic demo`: the whole chain on a generated screen, scored against its hidden labels.

synth -> prepare -> two routes to per-well logits, each scored after every plate stage:
- CNN: train an ensemble (two models, each holding out a different fold of experiments) ->
  predict fold (temperature) and test (8-view TTA, both sites);
- features: `rcic features` (63 image statistics per well) -> `rcic features-head` (a logistic
  regression whose correction, features and strength are chosen on fold 0, calibrated there);
-> submit each route, and both together (each route weighed alike, each file by its own
temperature: ``submission.csv``), with plate post-processing -> the bronze-medal way beside them
-> the first model's profiles of wells it never trained on (`rcic profiles`) -> report.html.
"""

from __future__ import annotations

import json
import logging
import time
from contextlib import contextmanager
from importlib import resources
from pathlib import Path

from rcic.data import metadata, packing, store, tables
from rcic.fileio import atomic_text
from rcic.inference import embed as embed_pipeline
from rcic.inference import predict
from rcic.inference.logitsfile import read_logits
from rcic.metrics import DEMO_STAGES, format_table
from rcic.plates import submit
from rcic.synthetic import synth
from rcic.training import config, samples, train

log = logging.getLogger(__name__)


class Clock:
    """Seconds spent in each named part of the demo (``demo.json["seconds"]``)."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextmanager
    def part(self, name: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0


def recipe(name: str, overrides: list[str]) -> config.TrainConfig:
    path = resources.files("rcic") / "configs" / f"{name}.yaml"
    with resources.as_file(path) as p:
        return config.load_config(p, overrides)


def run_demo(
    out: str | Path, quick: bool = False, seed: int = 0, workers: int | None = None
) -> dict:
    """Run the demo into `out`; return the stage table (also written to ``out/demo.json``).

    `quick`: a smoke run of the same chain on the ``tiny`` screen with 1 epoch per model, in fp32
    so that a rerun gives the same bits (its numbers say nothing about what the recipe learns; the
    full demo's do, within their run-to-run spread: it trains in the path the probe finds
    fastest, `rcic.training.precision`). ``demo.json["seconds"]``: where the time went.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0, clock = time.perf_counter(), Clock()
    data, store_dir = out / "data", out / "store"
    with clock.part("generate"):
        if not (data / "test_labels.csv").exists():
            log.info("1/6 generating the demo screen in %s", data)
            synth.generate(data, "tiny" if quick else "demo", seed, workers=workers)
        sites = metadata.load_metadata(data)
    with clock.part("pack"):
        log.info("2/6 packing %d sites into %s", len(sites), store_dir)
        packing.pack(data, sites, store_dir, workers=workers)
    epochs = ["epochs=1", "deterministic=true"] if quick else []
    models = {
        f"model-{k}": recipe("demo", epochs + [f"seed={seed + k}", f"fold={k}"]) for k in range(2)
    }
    bronze = recipe("bronze", epochs + [f"seed={seed}", "fold=0"])
    models["bronze"] = same_steps(bronze, models["model-0"], sites, store_dir)
    with clock.part("features route"):
        logits = {"features": _features_route(out / "features", sites, store_dir)}
    for i, (name, cfg) in enumerate(models.items()):
        log.info("3/6 training %s (%d of %d)", name, i + 1, len(models))
        logits[name] = _train_and_predict(cfg, out / "runs" / name, sites, store_dir, clock)
    log.info("5/6 plate post-processing and scoring; profiles of the first model")
    with clock.part("plates and scores"):
        table = _score(out, data, logits)
    with clock.part("profiles"):
        table["profiles"] = _profiles(out, data, sites, store_dir)
    log.info("6/6 writing the report")
    with clock.part("report"):
        from rcic.report import build_report

        _record(table, out, t0, clock)  # the report reads demo.json
        build_report(out, out / "report.html")
    return _record(table, out, t0, clock)


def _record(table: dict, out: Path, t0: float, clock: Clock) -> dict:
    """`table` with the time so far, written to out/demo.json."""
    table["minutes"] = (time.perf_counter() - t0) / 60
    table["seconds"] = {k: round(v, 1) for k, v in clock.seconds.items()}
    atomic_text(out / "demo.json", json.dumps(table, indent=1))
    return table


def _features_route(folder: Path, sites, store_dir: Path) -> Path:
    """`rcic features` then `rcic features-head`: the test wells' logits of the hand-crafted
    route, its choices made on fold 0 of the training experiments."""
    from rcic import __version__
    from rcic.profiling import features_head, profiles

    log.info("3/6 the features route: image statistics of every well, a linear head")
    table = profiles.features_table(store_dir, sites)
    path = tables.write_table(
        table,
        folder / "features.parquet",
        {"command": "rcic demo", "kind": "stats", "rcic_version": __version__},
    )
    features_head.fit_head([path], folder / "logits-test.npz")
    return folder / "logits-test.npz"


def _train_and_predict(cfg: config.TrainConfig, run: Path, sites, store_dir, clock: Clock) -> Path:
    """Train (or finish) one run, predict its held-out fold for the temperature, then the test
    experiments with that temperature; the test logits file."""
    done = run / "checkpoints" / "last.pt"
    with clock.part("train"):
        if not done.exists() or _epochs_done(run) < cfg.epochs:
            train.train(cfg, sites, store_dir, run, resume=done.exists())
    log.info("4/6 predicting with %s", run.name)
    with clock.part("predict"):
        last = predict.InferenceOptions(checkpoint="last", progress=False)
        fold = predict.predict_run(
            run, sites, store_dir, str(cfg.fold), run / "logits-fold.npz", last
        )
        temperature = float(read_logits(fold)["temperature"])
        out = run / "logits-test.npz"
        return predict.predict_run(
            run, sites, store_dir, "test", out, last, temperature=temperature
        )


def _profiles(out: Path, data: Path, sites, store_dir: Path) -> dict:
    """The first model's embeddings of wells it never trained on (its held-out fold, and the test
    experiments with the screen's hidden labels), corrected and scored as a profiling user would
    (`rcic profiles --correction tvn`, which measured best for embeddings: out/profiles/)."""
    from rcic.profiling import profiles

    labelled, run = synth.with_test_labels(sites, data), out / "runs" / "model-0"
    tables = [
        embed_pipeline.embed_run(
            run,
            labelled,
            store_dir,
            split,
            out / "profiles" / f"{name}.parquet",
            predict.InferenceOptions(checkpoint="last", views=2, progress=False),
        )
        for name, split in (("embed-fold", "0"), ("embed-test", "test"))
    ]
    m = profiles.run_profiles(tables, out / "profiles", "tvn", truth=data / "synth.json")
    return {
        "activity mAP": m["activity"]["mAP"],
        "consistency mAP": m["consistency"]["mAP"],
        "relationship recall": m["relationship_recall"]["recall"],
    }


def same_steps(cfg: config.TrainConfig, reference: config.TrainConfig, sites, store_dir):
    """`cfg` with its epochs scaled so that it takes as many optimiser steps as `reference`.

    The bronze way trains on one site per well and no control wells: at equal epochs it would get
    well under half of rcic's steps, which is no fair comparison.
    """
    from dataclasses import replace

    st = store.SiteStore(store_dir)
    n = len(samples.select_samples(sites, st, cfg).train_rows)
    n_ref = len(samples.select_samples(sites, st, reference).train_rows)
    steps_ref = reference.epochs * (n_ref // reference.batch_size)
    return replace(cfg, epochs=max(1, round(steps_ref / max(1, n // cfg.batch_size))))


def _epochs_done(run: Path) -> int:
    metrics = run / "metrics.jsonl"
    return len(metrics.read_text().splitlines()) if metrics.exists() else 0


def _score(out: Path, data: Path, logits: dict[str, Path]) -> dict:
    """Every route through the plate stages, scored against the screen's hidden labels."""
    labels, cnn = data / "test_labels.csv", [logits["model-0"], logits["model-1"]]

    def run(files, folder, weights=None, **options):
        res = submit.run_submit(
            files,
            data,
            out / folder / "submission.csv",
            weights=weights,
            labels=labels,
            options=submit.SubmitOptions(**options),
        )
        return {k: v["overall"] for k, v in res.scores.items()}, res

    single, _ = run([logits["model-0"]], "single", stages=("ensemble",))
    ens, _ = run(cnn, "cnn")
    feats, _ = run([logits["features"]], "features")
    both, res = run([*cnn, logits["features"]], ".", weights=[0.5, 0.5, 1.0])
    bronze, _ = run(
        [logits["bronze"]],
        "bronze",
        stages=("ensemble", "groups"),
        group_method="vote",
        well_method="argmax",
    )
    routes = {
        "CNN": {
            "single model": single["ensemble"],
            "ensemble": ens["ensemble"],
            "plate groups": ens["groups"],
            "well decision": ens["wells"],
        },
        "features": {
            "single model": feats["ensemble"],
            "plate groups": feats["groups"],
            "well decision": feats["wells"],
        },
        "CNN + features": {
            "ensemble": both["ensemble"],
            "plate groups": both["groups"],
            "well decision": both["wells"],
        },
    }
    return {
        "routes": routes,
        "bronze": {"single model": bronze["ensemble"], "plate groups": bronze["groups"]},
        "cell_type": {k: v["cell_type"] for k, v in res.scores.items()},
        "group_choice_right": float(res.groups["right"].mean()) if "right" in res.groups else None,
    }


def format_demo_table(table: dict) -> str:
    """Stages down, routes (and the bronze way) across; '-' where a route has no such stage."""
    columns = {**table["routes"], "bronze way": table["bronze"]}
    rows = {stage: {name: col.get(stage) for name, col in columns.items()} for stage in DEMO_STAGES}
    return format_table(rows, list(columns))

"""The `rcic` command line: one subcommand per step, each a thin wrapper over library functions."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from rcic.errors import InputError, RcicError

# Idle OpenMP threads sleep instead of spinning, so that processes sharing the cores do not starve
# each other (two trainings on 2 cores keep most of their speed: benchmarks/threads.py). OpenMP reads
# this once, when torch loads it, which is after this module is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

log = logging.getLogger("rcic")

DESCRIPTION = """\
rcic: learn which siRNA was applied to cells from 6-channel microscopy laid out like RxRx1.

The steps, in order (each writes a folder or file you can inspect):
  synth     generate a synthetic screen in the RxRx1 / Kaggle layout (stand-in for real data)
  check     check a dataset's metadata against the plate rules, and optionally every PNG
  prepare   decode every site once into a fast packed store, with per-plate statistics
  cells     cut a store of single-cell crops around the nuclei of every site (train on cells)
  train     train a 6-channel CNN validated on held-out experiments
  predict   per-well logits with test-time augmentation over views and both sites
  submit    ensemble logits, choose plate groups, decide each well's siRNA, write submission.csv
  evaluate  accuracy of a submission overall, per cell type, experiment and plate
  pseudo    progressive pseudo-labelling rounds (plate-consistent labels for test wells)
  embed     the model's embedding of every well (for batch correction and heads on embeddings)
  embed-head  batch-correct embeddings, fit a head on out-of-fold wells, write logits for submit
  features  hand-crafted image features of every well, as a profile table
  features-head  a linear head on feature tables: logits of the test wells for submit
  profiles  batch-corrected profiles, consensus per siRNA, activity mAP and relationship recall
  demo      the whole chain on a generated screen, in minutes on a laptop CPU
  report    an HTML report with images, curves, stage scores and plate maps

Run `rcic COMMAND --help` for each command's options.
"""


def _add_synth(sub) -> None:
    p = sub.add_parser(
        "synth",
        help="generate a synthetic screen in the Kaggle layout",
        description="Write a complete synthetic RxRx1-layout dataset: the four metadata CSVs, "
        "sample_submission.csv, train/ and test/ PNGs, hidden test labels in test_labels.csv and "
        "the generator's truth in synth.json. Same seed, same bytes.",
    )
    p.add_argument("out", type=Path, help="folder to write")
    p.add_argument(
        "--preset",
        choices=["tiny", "demo", "rxrx1"],
        default="tiny",
        help="tiny: seconds, for tests; demo: a small CNN learns it in minutes; rxrx1: real dimensions (51 experiments, 512 px)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--layout-from", type=Path, help="copy the plate maps of this Kaggle-layout metadata folder"
    )
    p.add_argument("--image-size", type=int, help="override the preset's image size")
    p.add_argument(
        "--workers", type=int, default=None, help="rendering processes (default: all cores)"
    )
    p.set_defaults(func=cmd_synth)


def cmd_synth(args) -> int:
    from rcic.synthetic import synth

    synth.generate(
        args.out,
        args.preset,
        args.seed,
        layout_dir=args.layout_from,
        workers=args.workers,
        image_size=args.image_size,
    )
    print(f"wrote {args.preset} screen to {args.out}")
    return 0


def _add_data_arg(p, old_positional: bool = False, old_flag: str | None = None) -> None:
    """--data, the dataset folder, in every command; the spellings of earlier versions (a
    positional folder in check and prepare, --metadata in submit) still work, with a warning."""
    p.add_argument(
        "--data", type=Path, help="dataset folder (train.csv, test.csv, ... or metadata.csv)"
    )
    if old_positional:
        p.add_argument("old_data", type=Path, nargs="?", help=argparse.SUPPRESS)
    if old_flag:
        p.add_argument(old_flag, dest="old_data", type=Path, help=argparse.SUPPRESS)
    p.set_defaults(
        needs_data=True, old_spelling="a positional DATA" if old_positional else old_flag
    )


def _resolve_data(args) -> None:
    """Fill args.data from an old spelling (warning), or refuse a command run without one."""
    old = getattr(args, "old_data", None)
    if old is not None:
        _deprecated(f"{args.old_spelling} ({old})", f"--data {old}")
        if args.data is not None and args.data != old:
            raise InputError(f"two dataset folders given: --data {args.data} and {old}")
        args.data = old
    if getattr(args, "needs_data", False) and args.data is None:
        raise InputError(f"rcic {args.command} needs --data DATASET_FOLDER")


def _add_metadata_args(p) -> None:
    p.add_argument(
        "--label-map",
        type=Path,
        help="CSV name,sirna mapping string labels (Kaggle re-release) to ids",
    )
    p.add_argument(
        "--reference",
        type=Path,
        help="integer-labelled Kaggle release to derive the string label mapping from",
    )


def _add_run_data_store(p, help_run: str = "run folder") -> None:
    """--run, --data, --store and the metadata options, shared by the commands that use a model."""
    p.add_argument("--run", type=Path, required=True, help=help_run)
    p.add_argument("--data", type=Path, required=True, help="dataset folder")
    p.add_argument("--store", required=True, help=STORE_HELP)
    _add_metadata_args(p)


def _add_inference_args(p) -> None:
    """Which checkpoint and split, TTA views, batch size and device (predict, embed)."""
    p.add_argument("--checkpoint", default="best", help="best, last or a checkpoint path")
    p.add_argument("--split", default="test", help="test, train or a fold number")
    p.add_argument(
        "--views",
        type=int,
        default=8,
        choices=range(1, 9),
        metavar="1..8",
        help="dihedral TTA views (default 8; an aligned cell store allows fewer, and uses those)",
    )
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument(
        "--threads",
        type=int,
        default=0,
        help="CPU threads (default 0: this process's share of the cores it may run on)",
    )
    p.add_argument(
        "--part",
        metavar="K/N",
        help="only the split's plates dealt to part K of N, as prepare deals them (one output per "
        "part; submit and profiles join the parts of one model)",
    )


def _sites(args):
    from rcic.data import metadata

    return metadata.load_metadata(args.data, label_map=args.label_map, reference=args.reference)


def _add_check(sub) -> None:
    p = sub.add_parser(
        "check",
        help="check metadata, plate rules and (optionally) every image",
        description="Read the dataset's metadata (Kaggle, Kaggle re-release or rxrx1 v1.0 format), "
        "validate it, and check the RxRx1 plate rules: one siRNA per well per plate, disjoint siRNA "
        "groups, one group per plate, cyclic plate orders, controls. With --images, open every PNG and "
        "list missing or unreadable ones. Exits 1 if anything fails.",
    )
    _add_data_arg(p, old_positional=True)
    p.add_argument(
        "--images", action="store_true", help="also open every PNG (in parallel, with progress)"
    )
    p.add_argument("--workers", type=int, default=None)
    _add_metadata_args(p)
    p.set_defaults(func=cmd_check)


def cmd_check(args) -> int:
    from rcic.data.check import check_dataset

    report = check_dataset(
        args.data,
        open_images=args.images,
        workers=args.workers,
        label_map=args.label_map,
        reference=args.reference,
    )
    print(report.summary)
    for f in report.findings:
        print(f)
    if args.images:
        problems = report.image_problems
        print(
            f"[{'ok' if not problems else 'FAIL'}] images: {report.sites_opened} sites opened, "
            f"{len(problems)} problem file(s)"
        )
        for msg in problems:
            print("  " + msg)
    return 0 if report.ok else 1


def _add_prepare(sub) -> None:
    p = sub.add_parser(
        "prepare",
        help="pack every site once into a fast store",
        description="Decode every site's 6 PNGs once into a chunked zarr store (one contiguous read per "
        "site), with an index and per-plate, per-channel statistics. Resumable: run it again after an "
        "interruption and it finishes the rest. Unreadable sites are listed in STORE/failed.csv.",
    )
    _add_data_arg(p, old_positional=True)
    p.add_argument("--out", type=Path, required=True, help="store folder")
    p.add_argument(
        "--size", type=int, help="resize sites to SIZE x SIZE (default: keep the images' size)"
    )
    p.add_argument(
        "--workers", type=int, default=None, help="decoding processes (default: all cores)"
    )
    p.add_argument(
        "--compression",
        choices=["none", "zstd", "lz4"],
        default="none",
        help="none reads fastest; zstd/lz4 trade read speed for disk",
    )
    p.add_argument("--strict", action="store_true", help="fail if any site is unreadable")
    p.add_argument(
        "--part",
        metavar="K/N",
        help="pack only the plates dealt to part K of N (one part per machine, all into the same "
        "--out on shared storage); the store is complete when every part has finished",
    )
    _add_metadata_args(p)
    p.set_defaults(func=cmd_prepare)


def cmd_prepare(args) -> int:
    from rcic.data import metadata, packing

    sites = metadata.load_metadata(args.data, label_map=args.label_map, reference=args.reference)
    result = packing.pack(
        args.data,
        sites,
        args.out,
        size=args.size,
        workers=args.workers,
        compression=args.compression,
        strict=args.strict,
        part=packing.parse_part(args.part) if args.part else None,
    )
    print(
        f"{args.out}{' part ' + args.part if args.part else ''}: {result.packed} sites packed, "
        f"{result.skipped} already there, {result.failed} unreadable"
    )
    return 0


def _add_cells(sub) -> None:
    p = sub.add_parser(
        "cells",
        help="cut single-cell crops around the nuclei of every site into a cell store",
        description="Find the nuclei in each site's DNA channel (w1, standardised per plate) and cut a "
        "CROP x CROP crop around each into a new store, one row per cell with its site's columns. "
        "Train and predict on it like a site store: samples are cells, and each well's logits are "
        "the mean over its cells. A site without a nucleus found contributes its centre crop.",
    )
    p.add_argument("--store", required=True, type=Path, help="site store (rcic prepare)")
    p.add_argument("--out", required=True, type=Path, help="cell store folder to write")
    p.add_argument(
        "--crop", type=int, default=32, help="crop side in pixels, about a cell's diameter"
    )
    p.add_argument(
        "--threshold",
        type=float,
        default=0.5,
        help="a nucleus' smoothed DNA signal in plate standard deviations above the plate mean",
    )
    p.add_argument(
        "--max-cells", type=int, default=0, help="keep at most this many cells per site (0: all)"
    )
    p.add_argument(
        "--align",
        choices=("none", "axis", "front"),
        default="none",
        help="turn each crop so its nucleus' long axis is horizontal (axis); and mirror it so the "
        "side with more ER and mitochondria is on the right (front). Training flips and test-time "
        "views then keep to the views that keep the alignment",
    )
    p.set_defaults(func=cmd_cells)


def cmd_cells(args) -> int:
    from rcic.data import cells

    finder = cells.CellFinder(
        crop=args.crop, threshold=args.threshold, max_cells=args.max_cells, align=args.align
    )
    index = cells.pack_cells(args.store, args.out, finder)
    found = int((index["state"] == cells.PACKED).sum())
    print(f"{args.out}: {found} cells from {index['id_code'].nunique()} wells")
    return 0


def _add_train(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train a 6-channel CNN validated on held-out experiments",
        description="Train one model and leave a run folder (config.yaml, env.json, split.json, train.log, "
        "metrics.jsonl, checkpoints/last.pt and best.pt). Validation holds out whole experiments "
        "(fold FOLD of FOLDS, balanced across cell types). Settings come from --config and KEY=VALUE "
        "overrides; `rcic train --list-keys` lists every key with its meaning. For several processes: "
        "torchrun --nproc-per-node N -m rcic.cli train ...",
    )
    p.add_argument("--data", type=Path, help="dataset folder (metadata CSVs)")
    p.add_argument("--store", help=STORE_HELP)
    p.add_argument("--config", type=Path, help="YAML config (see configs/)")
    p.add_argument("--out", type=Path, help="run folder")
    p.add_argument("--resume", action="store_true", help="continue from RUN/checkpoints/last.pt")
    p.add_argument("--list-keys", action="store_true", help="list the config keys and exit")
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="config overrides, e.g. epochs=5 backbone=densenet121",
    )
    _add_metadata_args(p)
    p.set_defaults(func=cmd_train)


def cmd_train(args) -> int:
    from rcic.training import config

    if args.list_keys:
        for name, doc in config.describe_keys():
            print(f"{name:18} {doc}")
        return 0
    missing = [f"--{k}" for k in ("data", "store", "out") if getattr(args, k) is None]
    if missing:
        raise InputError(f"train needs {', '.join(missing)}")
    cfg = config.load_config(args.config, args.overrides)
    from rcic.data import metadata
    from rcic.training import train

    sites = metadata.load_metadata(args.data, label_map=args.label_map, reference=args.reference)
    row = train.train(cfg, sites, args.store, args.out, resume=args.resume)
    if row.get("val"):
        print(
            f"{args.out}: held-out accuracy {row['val']['overall']:.3f} after epoch {row['epoch']}"
        )
    return 0


def _add_predict(sub) -> None:
    p = sub.add_parser(
        "predict",
        help="per-well logits with test-time augmentation",
        description="Write per-well logits (.npz: id_code, logits[wells x 1139], metadata, temperature) "
        "for a split: test, train, or a fold number (that fold's held-out experiments; then a "
        "temperature is fitted on them and stored). Each well's logits are the mean over VIEWS of the 8 "
        "flips/rotations and over both sites.",
    )
    _add_run_data_store(p)
    _add_inference_args(p)
    p.add_argument("--out", type=Path, required=True, help="logits file to write (.npz)")
    p.add_argument(
        "--combine",
        choices=["mean", "logprob"],
        default="mean",
        help="average logits (default) or log-probabilities",
    )
    p.add_argument(
        "--temperature",
        type=float,
        help="the logits' temperature (they are divided by it), stored in the file for `rcic submit`",
    )
    p.add_argument(
        "--temperature-from", type=Path, help="copy the temperature stored in this logits file"
    )
    p.set_defaults(func=cmd_predict)


def _run_split_out(args) -> tuple:
    """(run, sites, store, split, out) of `rcic predict` and `rcic embed`."""
    return args.run, _sites(args), args.store, args.split, args.out


def _inference_options(args):
    """The options `_add_inference_args` adds."""
    from rcic.data.packing import parse_part
    from rcic.inference.predict import InferenceOptions

    return InferenceOptions(
        checkpoint=args.checkpoint,
        views=args.views,
        batch_size=args.batch_size,
        device=args.device,
        threads=args.threads,
        part=parse_part(args.part) if args.part else None,
    )


def cmd_predict(args) -> int:
    from rcic.inference import predict
    from rcic.inference.logitsfile import read_logits

    temperature = args.temperature
    if args.temperature_from:
        temperature = float(read_logits(args.temperature_from).get("temperature", 1.0))
    path = predict.predict_run(
        *_run_split_out(args),
        _inference_options(args),
        combine=args.combine,
        temperature=temperature,
    )
    _say_written(path)
    return 0


def _say_written(path) -> None:
    """'wrote PATH', from the process that wrote it (rank 0 under torchrun)."""
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"wrote {path}")


def _add_submit(sub) -> None:
    p = sub.add_parser(
        "submit",
        help="ensemble logits, plate groups, well decision -> submission.csv",
        description="Combine logits files, choose each test experiment's plate groups (discovered from the "
        "training metadata; every cyclic shift is a candidate, also shifts never seen in training), "
        "give each well one siRNA of its plate's group, check and write submission.csv and stages.json. "
        "With --labels, print accuracy after each stage.",
    )
    p.add_argument(
        "--logits",
        type=Path,
        nargs="+",
        action="extend",
        required=True,
        help="logits files (.npz); repeat the flag or list several",
    )
    p.add_argument(
        "--weights", type=float, nargs="+", action="extend", help="one weight per logits file"
    )
    p.add_argument(
        "--combine",
        choices=["logprob", "mean"],
        default="logprob",
        help="average the files' log-probabilities (default) or their logits (mean), as `rcic "
        "predict --combine` averages views",
    )
    p.add_argument("--mode", choices=["logprob", "logits"], help=argparse.SUPPRESS)  # 0.1.0
    _add_data_arg(p, old_flag="--metadata")
    p.add_argument("--out", type=Path, required=True, help="submission CSV to write")
    p.add_argument(
        "--labels",
        type=Path,
        help="id_code,sirna of test wells (a synthetic screen's test_labels.csv) to score",
    )
    _add_plate_options(p)
    p.add_argument(
        "--pseudo-out",
        type=Path,
        help="also write the most confident assigned wells as pseudo-labels",
    )
    p.add_argument(
        "--pseudo-top",
        type=float,
        default=0.5,
        help="fraction of each plate to keep as pseudo-labels",
    )
    _add_metadata_args(p)
    p.set_defaults(func=cmd_submit)


def _add_plate_options(p) -> None:
    """The plate stages' options: stages, temperature and calibration, group and well decisions."""
    from rcic.plates.postprocess import (
        CALIBRATE,
        CALIBRATE_DEFAULT,
        GROUP_DEFAULT,
        GROUP_METHODS,
        OLD_WELL_METHODS,
        SHARPEN,
        WELL_METHOD_DEFAULT,
        WELL_METHODS,
    )

    p.add_argument(
        "--stages", default="ensemble,groups,wells", help="comma-separated stages to run"
    )
    p.add_argument(
        "--temperature",
        type=float,
        help="the logits' temperature (they are divided by it), in place of what the files store",
    )
    p.add_argument(
        "--calibrate",
        choices=CALIBRATE,
        default=CALIBRATE_DEFAULT,
        help="estimate a temperature from the test plates (one siRNA per well per plate): on = use "
        "it; auto (default) = use it when the files carry none, are several, or disagree with it by "
        "more than 2x; off = trust the files",
    )
    p.add_argument("--group-method", choices=GROUP_METHODS, default=GROUP_DEFAULT)
    p.add_argument(
        "--well-method",
        choices=[*WELL_METHODS, *OLD_WELL_METHODS],
        default=WELL_METHOD_DEFAULT,
        help="how each plate's wells get their siRNA (see docs/plates.md; assign and "
        "sinkhorn_assign are the deprecated names of hungarian and sinkhorn_hungarian)",
    )
    p.add_argument(
        "--sharpen",
        type=float,
        default=SHARPEN,
        help="sinkhorn decision: balance p ** (1 / SHARPEN); 1 = plain marginals, towards 0 = assignment",
    )


def cmd_submit(args) -> int:
    from rcic.plates import submit

    stages = tuple(_stage_name(s.strip()) for s in args.stages.split(","))
    unknown = set(stages) - set(submit.STAGES)
    if unknown:
        raise InputError(f"--stages: unknown stage(s) {sorted(unknown)}; expected {submit.STAGES}")
    ran = [s for s in submit.STAGES if s in {"ensemble", *stages}]
    if ran != list(submit.STAGES[: len(ran)]):
        raise InputError(
            f"--stages {args.stages}: each stage needs the one before it; give a prefix of "
            f"{','.join(submit.STAGES)}"
        )
    res = submit.run_submit(
        args.logits,
        args.data,
        args.out,
        weights=args.weights,
        combine=_combine(args),
        labels=args.labels,
        temperature=args.temperature,
        options=submit.SubmitOptions(
            group_method=args.group_method,
            well_method=args.well_method,
            sharpen=args.sharpen,
            calibrate=args.calibrate,
            stages=stages,
        ),
        pseudo_out=args.pseudo_out,
        pseudo_top=args.pseudo_top,
        label_map=args.label_map,
        reference=args.reference,
    )
    print(f"wrote {args.out} ({len(res.submission)} wells)")
    _print_submit_summary(res, stages, res.options.well_method)
    return 0


def _print_submit_summary(res, stages: tuple[str, ...], well_method: str) -> None:
    """Calibration, the well decision, each experiment's group order and the stage scores."""
    from rcic.metrics import format_table
    from rcic.plates.postprocess import WELL_DECISIONS
    from rcic.plates.submit import POSTERIOR_FLAG

    cal = res.calibration
    if cal.get("mode", "off") != "off":
        print(
            f"temperature from the test plates: {cal['estimate']:.3f} ({cal['plates']} plates, "
            f"{cal['wells']} wells): {'used' if cal['used'] else 'not used'} ({cal['reason']})"
        )
    if "wells" in stages:
        print(f"well decision ({well_method}): {WELL_DECISIONS[well_method]}")
    for exp, choice in res.post.choices.items():
        flag = f"  <- unsure (below {POSTERIOR_FLAG})" if choice.posterior < POSTERIOR_FLAG else ""
        print(
            f"  {exp}: groups {[choice.plate_group[p] for p in sorted(choice.plate_group)]}, "
            f"margin {choice.margin:.2f}, P(order) {choice.posterior:.4f}{flag}"
        )
    if res.scores:
        rows = {s: {"overall": t["overall"], **t["cell_type"]} for s, t in res.scores.items()}
        print(
            format_table(rows, ["overall", *sorted(next(iter(res.scores.values()))["cell_type"])])
        )
    return 0


def _add_evaluate(sub) -> None:
    p = sub.add_parser(
        "evaluate",
        help="accuracy of a submission against labels",
        description="Accuracy of a submission (id_code,sirna) against labels (id_code,sirna): overall, per "
        "cell type, per experiment and per plate. Writes JSON with --out.",
    )
    p.add_argument("--submission", type=Path, required=True)
    p.add_argument("--labels", type=Path, required=True)
    p.add_argument("--out", type=Path, help="write the table as JSON")
    p.set_defaults(func=cmd_evaluate)


def cmd_evaluate(args) -> int:
    import json

    from rcic import metrics
    from rcic.fileio import atomic_text

    table = metrics.evaluate(args.submission, args.labels)
    print(f"overall {table['overall']:.4f} on {table['n']} wells")
    for key in ("cell_type", "experiment", "plate"):
        print(f"by {key}: " + ", ".join(f"{k} {v:.3f}" for k, v in table[key].items()))
    if args.out:
        atomic_text(args.out, json.dumps(table, indent=1))
    return 0


def _add_demo(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="the whole chain on a generated screen, in minutes on a CPU",
        description="Generate the `demo` synthetic screen, pack it, train two models (each holding out "
        "a different fold of experiments) and the bronze-medal way for comparison, predict the test "
        "experiments with 8-view TTA over both sites, post-process by plate, score every stage against "
        "the screen's hidden labels and write report.html. Same seed, same numbers. Run it again in the "
        "same folder and finished steps are reused.",
    )
    p.add_argument(
        "--out", type=Path, default=Path("demo-run"), help="output folder (default demo-run)"
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run: the tiny screen, 1 epoch per model (under a minute; its numbers mean nothing)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=None)
    p.set_defaults(func=cmd_demo)


def cmd_demo(args) -> int:
    from rcic import demo

    table = demo.run_demo(args.out, quick=args.quick, seed=args.seed, workers=args.workers)
    print(f"\nrcic demo finished in {table['minutes']:.1f} min. Outputs in {args.out}/:")
    parts = ", ".join(f"{k} {v:.0f} s" for k, v in table["seconds"].items())
    print(f"  where the time went: {parts}")
    print(
        "  submission.csv and stages.json (CNN + features), cnn/, features/, report.html, "
        "runs/ (model-0, model-1, bronze), data/, store/"
    )
    print("\nAccuracy on the test experiments after each stage, by route:")
    print(demo.format_demo_table(table))
    return 0


def _add_report(sub) -> None:
    p = sub.add_parser(
        "report",
        help="an HTML report of a run or demo folder",
        description="Write one self-contained HTML file (images embedded; opens without a network): "
        "example images per cell type, training curves, accuracy after each stage per cell type and "
        "experiment, test plate maps, confused siRNA pairs, and the configuration and versions.",
    )
    p.add_argument("root", type=Path, help="run folder or demo folder")
    p.add_argument("--out", type=Path, required=True, help="HTML file to write")
    p.set_defaults(func=cmd_report)


def cmd_report(args) -> int:
    from rcic.report import build_report

    print(f"wrote {build_report(args.root, args.out)}")
    return 0


def _add_embed(sub) -> None:
    p = sub.add_parser(
        "embed",
        help="the model's embedding of every well (treatments and controls)",
        description="Write the neck embedding of every well of a split (test, train or a fold number: "
        "that fold's held-out experiments), averaged over the TTA views and both sites, with the "
        "model's logits, per-well metadata and `oof` (the well was not one of the model's training "
        "samples). Embed the run's own fold to get out-of-fold embeddings for training heads.",
    )
    _add_run_data_store(p)
    _add_inference_args(p)
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=cmd_embed)


def cmd_embed(args) -> int:
    from rcic.inference import embed as embed_pipeline

    path = embed_pipeline.embed_run(*_run_split_out(args), _inference_options(args))
    _say_written(path)
    return 0


def _add_embed_head(sub) -> None:
    from rcic.profiling.corrections import EMBED_CORRECTIONS, EMBED_HEADS

    p = sub.add_parser(
        "embed-head",
        help="batch-correct embeddings and classify them; write logits for `rcic submit`",
        description="Fit a head (cosine nearest centroid per cell type, or logistic regression) on "
        "out-of-fold embeddings of labelled wells (--train, from `rcic embed --split FOLD`), after batch "
        "correction fitted per plate or experiment on control wells, and write logits for the wells of "
        "--apply (same model) in the logits-file format. Prints the head's leave-one-experiment-out "
        "accuracy on the training embeddings.",
    )
    p.add_argument(
        "--train", type=Path, required=True, help="embeddings of labelled, held-out wells"
    )
    p.add_argument(
        "--apply", type=Path, required=True, help="embeddings to classify (e.g. the test split)"
    )
    p.add_argument(
        "--correction",
        default="standardize",
        help=f"comma-separated steps from {EMBED_CORRECTIONS}",
    )
    p.add_argument("--level", choices=["plate", "experiment"], default="plate")
    p.add_argument("--head", choices=EMBED_HEADS, default="centroid")
    p.add_argument("--out", type=Path, required=True, help="logits file to write")
    p.set_defaults(func=cmd_embed_head)


def cmd_embed_head(args) -> int:
    from rcic.profiling import embed_head

    res = embed_head.fit_apply(
        args.train, args.apply, args.out, args.correction.split(","), args.level, args.head
    )
    print(
        f"wrote {args.out}; leave-one-experiment-out accuracy on the training embeddings: {res['cv_accuracy']:.3f}"
    )
    return 0


def _add_profiles(sub) -> None:
    from rcic.profiling.profiles import PROFILE_CORRECTIONS

    p = sub.add_parser(
        "profiles",
        help="batch-corrected profiles, consensus per siRNA and the field's metrics",
        description="Read profile tables (`rcic embed --out X.parquet`, `rcic features`), correct "
        "them through pycytominer (per experiment on the negative controls; spherize, spherize-pca: "
        "then ZCA or PCA whitening) or rcic's tvn (whitened on the negative controls), and write "
        "OUT/wells.parquet, OUT/consensus.parquet (median per siRNA x cell type and over all cell "
        "types), OUT/activity.csv and OUT/metrics.json: phenotypic activity "
        "(copairs mAP against the negative controls, fraction retrieved at corrected p < 0.05); with "
        "pathways (a synthetic screen's synth.json) or --relationships, phenotypic consistency and "
        "EFAAR's known-relationship recall; with synth.json, the Spearman correlation of true and "
        "measured cosines per cell type.",
    )
    p.add_argument(
        "--table",
        type=Path,
        nargs="+",
        action="extend",
        required=True,
        help="profile tables (.parquet) of one model or feature set, or folders of them (parts); "
        "repeat or list several",
    )
    p.add_argument(
        "--correction",
        default="standardize",
        help=f"comma-separated steps from {PROFILE_CORRECTIONS}, applied in order",
    )
    p.add_argument(
        "--epsilon",
        default="auto",
        help="spherize regulariser, or auto: the best activity mAP on the train split's wells",
    )
    p.add_argument("--relationships", type=Path, help="CSV entity1,entity2 of known pairs")
    p.add_argument("--truth", type=Path, help="synth.json of a synthetic screen (pathways)")
    p.add_argument(
        "--split", default="all", help="split whose wells the metrics use (all, train, test)"
    )
    p.add_argument("--evaluate", help=argparse.SUPPRESS)  # 0.1.0's name of --split
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.set_defaults(func=cmd_profiles)


def cmd_profiles(args) -> int:
    from rcic.profiling import profiles

    epsilon = args.epsilon if args.epsilon == "auto" else _float(args.epsilon, "--epsilon")
    m = profiles.run_profiles(
        args.table,
        args.out,
        args.correction,
        epsilon,
        args.relationships,
        args.truth,
        _profiles_split(args),
    )
    a = m["activity"]
    print(f"wrote {args.out}: activity mAP {a['mAP']:.3f}, retrieved {a['fraction_retrieved']:.3f}")
    for key in ("consistency", "relationship_recall"):
        if key in m:
            v = m[key].get("mAP", m[key].get("recall"))
            print(f"{key.replace('_', ' ')}: {v:.3f}")
    return 0


def _stage_name(name: str) -> str:
    """The well-decision stage was called ``assign`` (a name that promised one siRNA per plate,
    which the default decision does not keep); the old name still works, with a warning."""
    if name == "assign":
        _deprecated("--stages assign", "--stages wells")
        return "wells"
    return name


def _profiles_split(args) -> str:
    if args.evaluate is None:
        return args.split
    _deprecated(f"--evaluate {args.evaluate}", f"--split {args.evaluate}")
    return args.evaluate


def _combine(args) -> str:
    """--combine, or the deprecated --mode of 0.1.0 (logits: the mean of logits)."""
    if args.mode is None:
        return args.combine
    new = {"logprob": "logprob", "logits": "mean"}[args.mode]
    _deprecated(f"--mode {args.mode}", f"--combine {new}")
    return new


def _deprecated(old: str, new: str) -> None:
    logging.getLogger("rcic.cli").warning("%s is deprecated: use %s (removed in 0.3)", old, new)


def _float(text: str, name: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise InputError(f"{name} must be a number or auto, not {text!r}") from None


def _add_features(sub) -> None:
    p = sub.add_parser(
        "features",
        help="hand-crafted image features of every well, as a profile table",
        description="--kind stats (the default, far cheaper): per well, both sites "
        "averaged, per channel mean, std, 50/90/99th percentiles, foreground fraction and texture "
        "(the 42 statistics of the difficulty certificate), the 15 pixel correlations between "
        "channels and each channel's orientation coherence. --kind cellprofiler: every site "
        "segmented into nuclei, cells and cytoplasm (scikit-image), each measured in all six "
        "channels by cp-measure (CellProfiler's measurements, CellProfiler's feature names, "
        "channels DNA ER Actin RNA Mito Golgi), the median over a well's cells as its profile "
        "(pycytominer's aggregate); plate by plate in parallel, resumable, in parts. Either is "
        "written as a profile table (.parquet) that `rcic profiles` and pycytominer read.",
    )
    p.add_argument("--data", type=Path, required=True, help="dataset folder")
    p.add_argument("--store", required=True, help=STORE_HELP)
    p.add_argument("--out", type=Path, required=True, help="profile table (.parquet)")
    p.add_argument("--kind", choices=["stats", "cellprofiler"], default="stats")
    cp = p.add_argument_group("--kind cellprofiler")
    cp.add_argument(
        "--measurements",
        default="default",
        help="cp-measure groups: default, all, or a comma list (default,costes adds Costes' "
        "colocalisation, about 10x the time; radial_zernikes adds 360 columns per compartment)",
    )
    cp.add_argument(
        "--nucleus-diameter",
        type=float,
        default=0.0,
        help="typical nucleus diameter in pixels (default: estimated on each site)",
    )
    cp.add_argument("--cells", type=Path, help="also write every cell's row: a folder of Parquet")
    cp.add_argument("--masks", type=Path, help="also write the labels to this zarr array")
    cp.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    p.add_argument(
        "--part",
        help="only the plates dealt to part K of N, as prepare deals them. --kind stats: this "
        "part's table at --out (`rcic profiles` and `rcic features-head` join the parts, listed or "
        "as a folder); --kind cellprofiler: the last part to finish writes the whole table",
    )
    _add_metadata_args(p)
    p.set_defaults(func=cmd_features)


def cmd_features(args) -> int:
    from rcic import __version__
    from rcic.data import tables
    from rcic.profiling import profiles

    provenance = {
        "command": "rcic features",
        "kind": args.kind,
        "store": str(args.store),
        "correction": "none",
        "level": "well",
        "rcic_version": __version__,
    }
    if args.kind == "cellprofiler":
        table = _cellprofiler_features(args, provenance)
        if table is None:
            print(f"part {args.part} done; the table is written when every part is")
            return 0
    else:
        table = profiles.features_table(args.store, _statistics_sites(args, provenance))
    tables.write_table(table, args.out, provenance)
    if args.kind == "cellprofiler":
        from rcic.profiling.features import remove_parts

        remove_parts(args.out)
    n = len(tables.feature_columns(table))
    print(f"wrote {args.out}: {len(table)} wells x {n} features")
    return 0


def _statistics_sites(args, provenance: dict):
    """The sites `rcic features --kind stats` measures: those of the plates dealt to ``--part``
    (recorded in `provenance`, with the feature set, so that the parts join as one table)."""
    from rcic.data import packing
    from rcic.inference.logitsfile import part_label

    sites = _sites(args)
    if not args.part:
        return sites
    part = packing.parse_part(args.part)
    provenance.update(model="rcic features --kind stats", part=part_label(part))
    return packing.part_sites(sites, part, "dataset")


def _cellprofiler_features(args, provenance: dict):
    from rcic.data import packing
    from rcic.data.segment import Segmenter
    from rcic.profiling import cpfeatures
    from rcic.profiling import features as features_pipeline

    try:
        segmenter = Segmenter(nucleus_diameter=args.nucleus_diameter)
    except ValueError as e:
        raise InputError(f"--nucleus-diameter: {e}") from None
    measurements = cpfeatures.Measurements.parse(args.measurements)
    provenance.update(measurements=list(measurements.groups), segmenter=vars(segmenter).copy())
    return features_pipeline.cellprofiler_table(
        args.store,
        _sites(args),
        args.out,
        segmenter=segmenter,
        measurements=measurements,
        workers=args.workers or os.cpu_count() or 1,
        cells_dir=args.cells,
        masks=args.masks,
        part=packing.parse_part(args.part) if args.part else None,
    )


def _add_features_head(sub) -> None:
    p = sub.add_parser(
        "features-head",
        help="a linear head on feature tables; logits of the test wells for `rcic submit`",
        description="The hand-crafted route to a submission: from a table of every well's "
        "features (`rcic features`, either kind), choose on one fold of the training experiments "
        "the correction (none, or per-plate z over treatment wells), the features (all, or "
        "pycytominer's label-free selection) and a logistic regression's C; refit on every "
        "training experiment; write the test treatment wells' logits with the temperature fitted "
        "on the held-out fold, and OUT.choices.json. `rcic submit` takes the file alone or "
        "beside a CNN's, each calibrated by its own temperature.",
    )
    p.add_argument(
        "--table",
        type=Path,
        nargs="+",
        action="extend",
        required=True,
        help="feature tables (.parquet) of every well: parts of one kind are stacked, "
        "different kinds (statistics, CellProfiler) joined well by well",
    )
    p.add_argument("--out", type=Path, required=True, help="logits file to write (.npz)")
    p.add_argument("--fold", type=int, default=0, help="the fold choices are made on")
    p.add_argument("--folds", type=int, default=3, help="folds of the training experiments")
    p.add_argument("--seed", type=int, default=0, help="the seed that deals the folds")
    p.set_defaults(func=cmd_features_head)


def cmd_features_head(args) -> int:
    from rcic.profiling import features_head

    rec = features_head.fit_head(args.table, args.out, args.fold, args.folds, args.seed)
    c = rec["choice"]
    best = rec["validation_accuracy"][f"{c['correction']} {c['features']} C={c['c']:g}"]
    print(
        f"wrote {args.out}: correction {c['correction']}, {c['features']} features, C={c['c']:g}"
        f" ({best:.3f} on fold {args.fold}), temperature {rec['temperature']:.3f}"
    )
    return 0


def _add_pseudo(sub) -> None:
    p = sub.add_parser(
        "pseudo",
        help="progressive pseudo-labelling rounds from a trained run",
        description="Each round: predict the test experiments, post-process by plate, keep the most "
        "confident FRACTION of every plate's assigned wells (never one siRNA twice on a plate) as labels, "
        "and fine-tune from the current weights with them. Fractions grow round by round.",
    )
    _add_run_data_store(p, help_run="trained run to start from")
    p.add_argument("--out", type=Path, required=True, help="folder for the rounds")
    p.add_argument(
        "--fractions",
        type=float,
        nargs="+",
        action="extend",
        help="fraction of each plate's wells kept per round (default: 0.3 0.6 0.9)",
    )
    p.add_argument("--epochs", type=int, help="fine-tuning epochs per round (default: the run's)")
    p.add_argument(
        "--labels", type=Path, help="hidden test labels, to report pseudo-label accuracy"
    )
    p.set_defaults(func=cmd_pseudo)


def cmd_pseudo(args) -> int:
    from rcic import pseudo

    fractions = {"fractions": args.fractions} if args.fractions else {}
    for r in pseudo.pseudo_rounds(
        args.run,
        _sites(args),
        args.data,
        args.store,
        args.out,
        epochs=args.epochs,
        labels=args.labels,
        **fractions,
    ):
        print(r)
    return 0


COMMANDS = [
    _add_synth,
    _add_check,
    _add_prepare,
    _add_cells,
    _add_train,
    _add_predict,
    _add_submit,
    _add_evaluate,
    _add_pseudo,
    _add_embed,
    _add_embed_head,
    _add_profiles,
    _add_features,
    _add_features_head,
    _add_demo,
    _add_report,
]


STORE_HELP = (
    "packed store of the same dataset (rcic prepare): a folder, or an fsspec URL such as "
    "s3://bucket/store on shared or object storage"
)


class _Version(argparse.Action):
    """--version: looked up only when asked (importlib.metadata slows every command)."""

    def __call__(self, parser, namespace, values, option_string=None):
        from rcic import __version__

        print(f"rcic {__version__}")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rcic", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="debug logging, and the traceback of an error"
    )
    parser.add_argument("--version", action=_Version, nargs=0, help="print rcic's version")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        _resolve_data(args)
        return args.func(args)
    except RcicError as e:  # rcic's own errors: one line (the traceback too with -v)
        if args.verbose:
            import traceback

            traceback.print_exc()
        print(f"rcic {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

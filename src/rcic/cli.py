"""The `rcic` command line: one subcommand per step, each a thin wrapper over library functions."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

log = logging.getLogger("rcic")

DESCRIPTION = """\
rcic: learn which siRNA was applied to cells from 6-channel microscopy laid out like RxRx1.

The steps, in order (each writes a folder or file you can inspect):
  synth     generate a synthetic screen in the RxRx1 / Kaggle layout (stand-in for real data)
  check     check a dataset's metadata against the plate rules, and optionally every PNG
  prepare   decode every site once into a fast packed store, with per-plate statistics
  train     train a 6-channel CNN validated on held-out experiments
  predict   per-well logits with test-time augmentation over views and both sites
  submit    ensemble logits, choose plate groups, assign one siRNA per well, write submission.csv
  evaluate  accuracy of a submission overall, per cell type, experiment and plate
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
    from rcic import synth

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


def _add_check(sub) -> None:
    p = sub.add_parser(
        "check",
        help="check metadata, plate rules and (optionally) every image",
        description="Read the dataset's metadata (Kaggle, Kaggle re-release or rxrx1 v1.0 format), "
        "validate it, and check the RxRx1 plate rules: one siRNA per well per plate, disjoint siRNA "
        "groups, one group per plate, cyclic plate orders, controls. With --images, open every PNG and "
        "list missing or unreadable ones. Exits 1 if anything fails.",
    )
    p.add_argument("data", type=Path, help="dataset folder")
    p.add_argument(
        "--images", action="store_true", help="also open every PNG (in parallel, with progress)"
    )
    p.add_argument("--workers", type=int, default=None)
    _add_metadata_args(p)
    p.set_defaults(func=cmd_check)


def cmd_check(args) -> int:
    from rcic import images, metadata, rules

    sites = metadata.load_metadata(args.data, label_map=args.label_map, reference=args.reference)
    wells = metadata.wells_of(sites)
    print(
        f"{args.data}: {len(wells)} wells, {len(sites)} sites, "
        f"{wells['experiment'].nunique()} experiments ({', '.join(sorted(wells['cell_type'].unique()))})"
    )
    findings = rules.check_rules(wells)
    for f in findings:
        print(f)
    ok = all(f.ok for f in findings)
    if args.images:
        keys = list(
            sites[["split", "experiment", "plate", "well", "site"]].itertuples(
                index=False, name=None
            )
        )
        problems = images.scan_sites(args.data, keys, workers=args.workers or os.cpu_count() or 1)
        print(
            f"[{'ok' if not problems else 'FAIL'}] images: {len(keys)} sites opened, {len(problems)} problem file(s)"
        )
        for msg in problems:
            print("  " + msg)
        ok = ok and not problems
    return 0 if ok else 1


def _add_prepare(sub) -> None:
    p = sub.add_parser(
        "prepare",
        help="pack every site once into a fast store",
        description="Decode every site's 6 PNGs once into a chunked zarr store (one contiguous read per "
        "site), with an index and per-plate, per-channel statistics. Resumable: run it again after an "
        "interruption and it finishes the rest. Unreadable sites are listed in STORE/failed.csv.",
    )
    p.add_argument("data", type=Path, help="dataset folder")
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
    _add_metadata_args(p)
    p.set_defaults(func=cmd_prepare)


def cmd_prepare(args) -> int:
    from rcic import metadata, store

    sites = metadata.load_metadata(args.data, label_map=args.label_map, reference=args.reference)
    result = store.pack(
        args.data,
        sites,
        args.out,
        size=args.size,
        workers=args.workers,
        compression=args.compression,
        strict=args.strict,
    )
    print(
        f"{args.out}: {result.packed} sites packed, {result.skipped} already there, {result.failed} unreadable"
    )
    return 0


COMMANDS = [_add_synth, _add_check, _add_prepare]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rcic", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
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
    from rcic.metadata import MetadataError
    from rcic.store import StoreError

    try:
        return args.func(args)
    except (MetadataError, StoreError, ValueError, FileNotFoundError) as e:
        print(f"rcic {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

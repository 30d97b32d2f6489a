"""The README's demo table: run `rcic demo` once and print its stage table, wall time and profile
figures, then the image-statistics baselines on the same screen (benchmarks/synth_difficulty.py's, after the
timing) that the single model is measured against.

Usage: python benchmarks/demo_table.py [--out /tmp/rcic-demo] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
from pathlib import Path

from rcic import cli, demo  # noqa: F401 (cli first: its OpenMP settings, as `rcic demo` has them)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("/tmp/rcic-demo"))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    shutil.rmtree(args.out, ignore_errors=True)
    t0 = time.perf_counter()
    table = demo.run_demo(args.out, seed=args.seed)
    minutes = (time.perf_counter() - t0) / 60
    print(
        f"rcic demo --out {args.out} (seed {args.seed}): {minutes:.1f} min wall clock, from nothing"
    )
    print("Accuracy on the test experiments after each stage:")
    print(demo.format_demo_table(table))
    print(f"group choice right on {table['group_choice_right']:.0%} of test plates")
    print(json.dumps(table["cell_type"], indent=1))
    print(
        "model-0's profiles (rcic profiles --correction tvn, its held-out fold and the test wells): "
        + ", ".join(f"{k} {v:.3f}" for k, v in table["profiles"].items())
    )
    from synth_difficulty import baseline_table, fold0_experiments

    from rcic.data import metadata
    from rcic.synthetic import synth

    data = args.out / "data"
    sites = metadata.load_metadata(data)
    print("image-statistics baselines on the same screen (42 numbers per well):")
    labelled = synth.with_test_labels(sites, data)
    rows = baseline_table(labelled, args.out / "store", fold0_experiments(sites))
    best = max(rows.values())
    single = table["routes"]["CNN"]["single model"]
    print(
        f"best of the 42 statistics' baselines {best:.3f}; CNN single model / that = "
        f"{single / max(best, 1e-9):.1f}x; the features route (63 statistics, a linear head "
        f"chosen on fold 0) as a single model: {table['routes']['features']['single model']:.3f}"
    )


if __name__ == "__main__":
    main()

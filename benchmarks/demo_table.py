"""The README's demo table: run `rcic demo` once and print its stage table and wall time.

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
    print(json.dumps(table["rcic_cell_type"], indent=1))


if __name__ == "__main__":
    main()

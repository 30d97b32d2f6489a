"""Learned against hand-crafted over generator seeds: each route's mean +- sd over the screens of
`benchmarks/routes.py` outputs, at every stage.

Usage: python benchmarks/routes_summary.py benchmarks/results/routes_seed101.txt ...

Reads each file's table (a route per row; for CNN rows the mean over its training seeds) and prints,
per route and stage, the mean over the files with its standard deviation over them (the spread
between generator seeds), and the number of screens on which the route read more than every
hand-crafted route (other than itself) at the well decision.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np

STAGES = ("single model", "plate groups", "well decision")
NUMBER = re.compile(r"(\d\.\d{3})(?: \+- \d\.\d{3})?(?: \[[^\]]*\])?")


def read_table(path: Path) -> dict[str, list[float]]:
    """route -> its three stage figures (the means, for rows over training seeds)."""
    lines = path.read_text().splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("route"))
    rows = {}
    for line in lines[start + 1 :]:
        first = NUMBER.search(line)
        if not first:
            continue
        name = line[: first.start()].strip()
        rows[name] = [float(m.group(1)) for m in NUMBER.finditer(line)][:3]
    return rows


def main(paths: list[Path]) -> None:
    tables = [read_table(p) for p in paths]
    routes = [r for r in tables[0] if all(r in t for t in tables)]
    hand = [r for r in routes if not r.startswith("CNN")]
    print(f"{len(paths)} screens: {', '.join(p.name for p in paths)}; mean +- sd over screens")
    print(
        f"{'route':32} "
        + " ".join(f"{s:>16}" for s in STAGES)
        + "  above every other hand-crafted route (well decision)"
    )
    for route in routes:
        v = np.array([t[route] for t in tables])
        cells = " ".join(
            f"{m:.3f} +- {s:.3f}" for m, s in zip(v.mean(0), v.std(0, ddof=1), strict=True)
        )
        others = [h for h in hand if h != route]
        wins = sum(t[route][2] > max(t[h][2] for h in others) for t in tables) if others else "-"
        print(f"{route:32} {cells}  {wins} of {len(tables)}")


if __name__ == "__main__":
    main([Path(a) for a in sys.argv[1:]])

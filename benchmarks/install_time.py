"""How long `make setup` takes on a fresh clone: the install half of `make demo`'s budget
(the demo half: benchmarks/demo_table.py).

Clones the repository's HEAD into a temporary folder and times `make setup` there (a new virtual
environment, rcic and its pinned dependencies from the package registry or pip's cache).

Usage: python benchmarks/install_time.py
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        clone = Path(tmp) / "rcic"
        subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
        head = subprocess.run(["git", "-C", str(clone), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
        t0 = time.perf_counter()
        done = subprocess.run(["make", "setup"], cwd=clone, capture_output=True, text=True)
        seconds = time.perf_counter() - t0
    if done.returncode:
        sys.exit(f"make setup failed:\n{done.stderr[-2000:]}")
    print(f"make setup on a fresh clone of {head}: {seconds:.0f} s ({seconds / 60:.1f} min)")


if __name__ == "__main__":
    main()

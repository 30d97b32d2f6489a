"""How long `make setup` takes on a fresh clone, and with `--demo` the whole `make demo` (install
included), the budget of issue 23's demo: at most 10 minutes on 2 cores.

Clones the repository's HEAD into a temporary folder and times `make setup` there (a new virtual
environment, rcic and its pinned dependencies from the package registry or pip's cache); with
`--demo`, then `make demo` in the same clone (its setup is done by then, so that half is `rcic
demo` itself) and prints the demo's stage table as a check that it is the recorded demo.

Usage: python benchmarks/install_time.py [--demo]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUDGET_MINUTES = 10


def timed(cmd: list[str], cwd: Path) -> tuple[float, str]:
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if done.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
    return seconds, done.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--demo", action="store_true", help="then time `make demo` in the clone")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        clone = Path(tmp) / "rcic"
        subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
        rev = ["git", "-C", str(clone), "rev-parse", "--short", "HEAD"]
        head = subprocess.run(rev, capture_output=True, text=True, check=True).stdout.strip()
        setup, _ = timed(["make", "setup"], clone)
        print(f"make setup on a fresh clone of {head}: {setup:.0f} s ({setup / 60:.1f} min)")
        if args.demo:
            demo, out = timed(["make", "demo"], clone)
            _, head, rest = out.partition("Accuracy on the test")
            table = head + rest if head else out[-2000:]  # the stage table, else the output's tail
            parts = [ln.strip() for ln in out.splitlines() if "where the time went" in ln]
            print(f"make demo after it: {demo:.0f} s ({demo / 60:.1f} min); {' '.join(parts)}")
            print(table.rstrip())
            total = (setup + demo) / 60
            verdict = "within" if total <= BUDGET_MINUTES else "over"
            print(
                f"make demo from a fresh clone, install included: {total:.1f} min "
                f"({verdict} the {BUDGET_MINUTES}-minute budget)"
            )


if __name__ == "__main__":
    main()

"""Wall time and peak memory of `rcic submit` on the whole real test set, side by side with a plain
numpy/scipy script of the winning solution's steps (benchmarks/winner_plain.py) on the same file.

Usage: python benchmarks/plates_speed.py [--shared DIR] [--repeats 11]
The logits file: 19,897 test wells x 1,139 classes, float32, simulated (signal 3), with a stored
temperature as `rcic predict` writes it. Each command runs as its own process (imports included);
peak memory is the process's maximum resident set size. Targets (issue 10): rcic within 1.5x the
plain script's median wall time, under 1 GB, and no torch imported.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from _measure import timed

from rcic import layout
from rcic.inference.logitsfile import write_logits

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shared", type=Path, default=HERE.parents[1] / "shared" / "rxrx1")
    ap.add_argument("--repeats", type=int, default=11)
    args = ap.parse_args()
    root = args.shared / "kaggle"
    test = pd.read_csv(root / "test.csv")
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        z = rng.normal(0, 1, (len(test), layout.N_CLASSES)).astype(np.float32)
        z[np.arange(len(test)), rng.integers(0, layout.N_TREATMENTS, len(test))] += 3.0
        write_logits(tmp / "t.npz", test.id_code.to_numpy(), z, temperature=np.float32(1 / 3))
        probe = (
            "import runpy, sys; sys.argv = ['rcic', 'submit', '--logits', sys.argv[1], "
            "'--metadata', sys.argv[2], '--out', sys.argv[3]]\n"
            "code = 0\ntry:\n    runpy.run_module('rcic.cli', run_name='__main__')\n"
            "except SystemExit as e:\n    code = e.code\n"
            "assert 'torch' not in sys.modules, 'rcic submit imported torch'\nsys.exit(code)"
        )
        commands = {
            "winner (plain script)": [
                sys.executable,
                str(HERE / "winner_plain.py"),
                str(tmp / "t.npz"),
                str(root),
                str(tmp / "plain.csv"),
            ],
            "rcic submit (defaults)": [
                sys.executable,
                "-c",
                probe,
                str(tmp / "t.npz"),
                str(root),
                str(tmp / "sub.csv"),
            ],
        }
        rows = []
        for _ in range(args.repeats):  # interleaved, so drifts in machine load hit both
            for name, cmd in commands.items():
                seconds, mb = timed(cmd)
                rows.append({"command": name, "seconds": seconds, "peak MB": mb})
    table = pd.DataFrame(rows).groupby("command").agg(["median", "min", "max"])
    print(f"whole real test set: {len(test)} wells, {test.experiment.nunique()} experiments")
    print(f"{args.repeats} runs each, interleaved; each a fresh process (imports included)")
    print(table.round(2).to_string())
    med = table["seconds"]["median"]
    ratio = med["rcic submit (defaults)"] / med["winner (plain script)"]
    peak = table["peak MB"]["max"]["rcic submit (defaults)"]
    print(
        f"rcic / plain wall time: {ratio:.2f}x (target <= 1.5: {'MET' if ratio <= 1.5 else 'NOT MET'}); "
        f"rcic peak memory {peak:.0f} MB (target < 1024: {'MET' if peak < 1024 else 'NOT MET'}); "
        "torch not imported (asserted)"
    )


if __name__ == "__main__":
    main()

"""Two trainings sharing the cores: each one's speed against the same training alone.

Usage: python benchmarks/threads.py [--work DIR] [--epochs 2]

The training is the tiny cell training of the test suite (`rcic synth screen --preset tiny --seed 0`,
`rcic prepare`, `rcic cells --crop 16`, `rcic train ... batch_size=64 embedding_dim=32`), run as
`rcic` processes: alone, then two at once on the same cores. Arms:
- fp32: ``deterministic=true`` (a CPU run then computes in fp32), rcic's thread settings;
- fp32, spinning OpenMP threads: the same with OMP_WAIT_POLICY=ACTIVE (OpenMP's behaviour before
  rcic set PASSIVE);
- bf16: ``deterministic=false`` (bf16 autocast), rcic's thread settings.
Speed is the last epoch's images/s from the run's metrics.jsonl; "same bits" says whether each run of
the pair ended with exactly the solo run's loss and weights.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

RCIC = [sys.executable, "-m", "rcic.cli"]
ARMS = {
    "fp32 (deterministic=true)": (["deterministic=true"], {}),
    "fp32, OMP_WAIT_POLICY=ACTIVE": (["deterministic=true"], {"OMP_WAIT_POLICY": "ACTIVE"}),
    "bf16 (deterministic=false)": (["deterministic=false", "amp=true"], {}),
}


def prepare(work: Path) -> tuple[Path, Path]:
    screen, sites, cells = work / "screen", work / "store", work / "cells"
    if not cells.exists():
        steps = [
            ["synth", str(screen), "--preset", "tiny", "--seed", "0"],
            ["prepare", "--data", str(screen), "--out", str(sites)],
            ["cells", "--store", str(sites), "--out", str(cells), "--crop", "16"],
        ]
        for step in steps:
            subprocess.run(RCIC + step, check=True, stdout=subprocess.DEVNULL)
    return screen, cells


def launch(screen: Path, cells: Path, out: Path, keys: list[str], env: dict, epochs: int):
    cmd = RCIC + ["train", "--data", str(screen), "--store", str(cells), "--out", str(out),
                  f"epochs={epochs}", "batch_size=64", "embedding_dim=32", *keys]  # fmt: skip
    log = open(out.parent / f"{out.name}.log", "w")  # noqa: SIM115 (closed by finish)
    return subprocess.Popen(cmd, stdout=log, stderr=log, env={**os.environ, **env}), log


def finish(job) -> None:
    proc, log = job
    code = proc.wait()
    log.close()
    if code:
        raise SystemExit(f"{proc.args} failed; see {log.name}")


def outcome(run: Path) -> dict:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    state = torch.load(run / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    digest = hashlib.sha256()
    for name, tensor in sorted(state["model"].items()):
        digest.update(name.encode() + tensor.numpy().tobytes())
    return {
        "speed": rows[-1]["images_per_s"],
        "loss": rows[-1]["loss"],
        "weights": digest.hexdigest(),
    }


def run_arm(screen, cells, work: Path, tag: str, keys, env, epochs) -> dict:
    solo = work / f"{tag}-solo"
    finish(launch(screen, cells, solo, keys, env, epochs))
    pair = [work / f"{tag}-pair{i}" for i in (1, 2)]
    for job in [launch(screen, cells, p, keys, env, epochs) for p in pair]:
        finish(job)
    return {"solo": outcome(solo), "pair": [outcome(p) for p in pair]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--epochs", type=int, default=2)
    args = ap.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="rcic-threads-"))
    work.mkdir(parents=True, exist_ok=True)
    screen, cells = prepare(work)
    print(f"# python benchmarks/threads.py --epochs {args.epochs}  ({os.cpu_count()} cores, "
          f"torch {torch.__version__}; nothing else running)")  # fmt: skip
    print(f"{'arm':30} {'alone img/s':>11} {'two at once img/s (% of alone)':>34}  same bits")
    for i, (name, (keys, env)) in enumerate(ARMS.items()):
        for stale in work.glob(f"arm{i}-*"):
            (shutil.rmtree if stale.is_dir() else Path.unlink)(stale)
        res = run_arm(screen, cells, work, f"arm{i}", keys, env, args.epochs)
        solo = res["solo"]
        shares = "  ".join(f"{p['speed']:6.1f} ({100 * p['speed'] / solo['speed']:3.0f}%)"
                           for p in res["pair"])  # fmt: skip
        same = all(
            p["weights"] == solo["weights"] and p["loss"] == solo["loss"] for p in res["pair"]
        )
        print(
            f"{name:30} {solo['speed']:11.1f} {shares:>34}  {'yes' if same else 'no'}", flush=True
        )


if __name__ == "__main__":
    main()

"""Two trainings sharing the cores: each one's speed against the same training alone.

Usage: python benchmarks/threads.py [--work DIR] [--epochs 3] [--data DIR --store DIR]

The training is `rcic train configs/demo.yaml` on the demo screen (`rcic synth --preset demo --seed
0`, `rcic prepare`; or `--data`/`--store` of one already made), fold 0, `--epochs` epochs, run as
`rcic` processes: alone, then two at once on the same cores. Arms:
- fp32, deterministic: ``deterministic=true`` (a CPU run then computes in fp32 on fixed threads);
- the default: ``amp: auto``, ``channels_last: auto`` (the probe's path, cached by the solo run)
  with the thread guard (rcic.training.precision.ThreadGuard).
Without the guard, two bf16 trainings at once collapse: the bare loops' contention rows of
benchmarks/train_throughput.py show it in a minute, where three epochs here would take 15.
Speed is the images/s over all epochs (the harmonic mean of metrics.jsonl's epoch speeds), so
the steps lost before the guard acts count; "same bits" says whether each run of the pair ended
with exactly the solo run's loss and weights.
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
CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"
ARMS = {
    "fp32, deterministic": (["deterministic=true"], {}),
    "default (auto path, guard)": ([], {}),
}


def prepare(work: Path) -> tuple[Path, Path]:
    screen, store = work / "screen", work / "store"
    if not (store / "store.json").exists():
        steps = [
            ["synth", str(screen), "--preset", "demo", "--seed", "0"],
            ["prepare", "--data", str(screen), "--out", str(store)],
        ]
        for step in steps:
            subprocess.run(RCIC + step, check=True, stdout=subprocess.DEVNULL)
    return screen, store


def launch(screen: Path, store: Path, out: Path, keys: list[str], env: dict, epochs: int):
    places = ["--data", str(screen), "--store", str(store), "--out", str(out)]
    cmd = [*RCIC, "train", *places, "--config", str(CONFIG), f"epochs={epochs}", "fold=0", *keys]
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
    return {  # every epoch has as many images: their speed over all epochs is the harmonic mean
        "speed": len(rows) / sum(1 / r["images_per_s"] for r in rows),
        "path": json.loads((run / "env.json").read_text())["path"],
        "loss": rows[-1]["loss"],
        "weights": digest.hexdigest(),
    }


def run_arm(screen, store, work: Path, tag: str, keys, env, epochs) -> dict:
    solo = work / f"{tag}-solo"
    finish(launch(screen, store, solo, keys, env, epochs))
    pair = [work / f"{tag}-pair{i}" for i in (1, 2)]
    for job in [launch(screen, store, p, keys, env, epochs) for p in pair]:
        finish(job)
    return {"solo": outcome(solo), "pair": [outcome(p) for p in pair]}


def row(name: str, res: dict) -> str:
    solo = res["solo"]
    shares = [f"{p['speed']:6.1f} ({100 * p['speed'] / solo['speed']:3.0f}%)" for p in res["pair"]]
    same = all(p["weights"] == solo["weights"] and p["loss"] == solo["loss"] for p in res["pair"])
    return (
        f"{name:28} {solo['path']:20} {solo['speed']:11.1f} {'  '.join(shares):>34}  "
        f"{'yes' if same else 'no'}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--data", type=Path, help="a demo screen already made (with --store)")
    ap.add_argument("--store", type=Path)
    args = ap.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="rcic-threads-"))
    work.mkdir(parents=True, exist_ok=True)
    screen, store = (args.data, args.store) if args.data else prepare(work)
    print(
        f"# python benchmarks/threads.py --epochs {args.epochs}  ({os.cpu_count()} cores, "
        f"torch {torch.__version__}; nothing else running)"
    )
    print(
        f"{'arm':28} {'path':20} {'alone img/s':>11} {'two at once img/s (% of alone)':>34}  same bits"
    )
    for i, (name, (keys, env)) in enumerate(ARMS.items()):
        for stale in work.glob(f"arm{i}-*"):
            (shutil.rmtree if stale.is_dir() else Path.unlink)(stale)
        print(
            row(name, run_arm(screen, store, work, f"arm{i}", keys, env, args.epochs)), flush=True
        )


if __name__ == "__main__":
    main()

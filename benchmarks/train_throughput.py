"""Training images/s on this CPU: every precision and memory format, 1 and 2 threads, two input
sizes, as a bare loop, alone and two at once; then `rcic train` on the demo screen in the path it
picks for itself.

Usage: python benchmarks/train_throughput.py [--work DIR] [--sizes 64 256] [--backbone resnet18]

The bare loop trains the demo's RcicModel (configs/demo.yaml: ResNet-18, batch 64; batch 32 above
128 px) on one batch already in memory (no data loading, no augmentation) with AdamW: fp32 or bf16
autocast, contiguous or channels-last, `torch.set_num_threads(1 or 2)`; the speed of the timed
steps after warm-up. Then `rcic train configs/demo.yaml` at 64 px, 2 epochs, in the path chosen by
its own probe (`amp: auto`, `channels_last: auto`): its second epoch's images/s against the best
bare loop at 2 threads. Contention rows: at 64 px, two bare loops of one path started at once
(each 2 threads, then each 1 thread; OMP_WAIT_POLICY=PASSIVE as `rcic` sets it), each one's speed
against the path alone on 2 threads. The
CPU's model name and its bf16/AMX/AVX-512 flags head the table.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import torch

from rcic.data import metadata, packing
from rcic.synthetic import synth
from rcic.training import config, precision, train
from rcic.training.models import build_model, compute_loss

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"
# as the rcic command line runs: idle OpenMP threads sleep (spinning ones collapse sooner)
ENV = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


def cpu_line() -> str:
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next(
        (ln.split(":", 1)[1].strip() for ln in info.splitlines() if "model name" in ln), "?"
    )
    flags = set(
        next(
            (ln.split(":", 1)[1].split() for ln in info.splitlines() if ln.startswith("flags")), []
        )
    )
    return f"CPU: {model}; flags: {' '.join(f for f in FLAGS if f in flags) or 'none of ' + ','.join(FLAGS)}"


def bare_loop(cfg, size: int, bf16: bool, channels_last: bool, steps: int) -> float:
    """Images/s of `steps` timed optimiser steps after 2 of warm-up: rcic's probe, longer."""
    torch.manual_seed(0)

    def loss(out, y):
        return compute_loss(out, y, y, 1.0, cfg)

    args = (build_model(cfg), cfg, size, cfg.batch_size, loss, bf16, channels_last)
    return precision.probe(*args, steps=steps, warmup=2)


def bare_table(sizes: list[int], backbone: str) -> tuple[dict, dict]:
    best, alone64 = {}, {}
    print(f"{'bare loop, images/s':22} " + " ".join(f"{p:>16}" for p in precision.PATHS))
    for size in sizes:
        batch = 64 if size <= 128 else 32
        cfg = config.load_config(CONFIG, [f"backbone={backbone}", f"batch_size={batch}"])
        steps = max(3, 40 * 64 * 64 // (size * size))
        for threads in (1, 2):
            torch.set_num_threads(threads)
            speeds = {p: bare_loop(cfg, size, *precision.PATHS[p], steps) for p in precision.PATHS}
            label = f"{size:4d} px, {threads} thread{'s' if threads > 1 else ' '}, batch {batch:2d}"
            print(label + " ".join(f"{v:16.1f}" for v in speeds.values()))
            best[(size, threads)] = max(speeds.items(), key=lambda kv: kv[1])
            if (size, threads) == (64, 2):
                alone64 = speeds
    torch.set_num_threads(2)
    return best, alone64


def one_loop(path: str, threads: int, steps: int, size: int = 64) -> float:
    torch.set_num_threads(threads)
    return bare_loop(config.load_config(CONFIG, []), size, *precision.PATHS[path], steps)


def contention_rows(alone: dict, steps: int = 6) -> None:
    """Two bare loops of each path at once, each on 2 then on 1 thread(s)."""
    print("two at once, 64 px: images/s of each (% of the path alone on 2 threads)")
    for path, solo in alone.items():
        cells = []
        for threads in (2, 1):
            cmd = [sys.executable, __file__, "--one", path, str(threads), str(steps)]
            procs = [
                subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=ENV) for _ in range(2)
            ]
            speeds = [float(p.communicate()[0].split()[-1]) for p in procs]
            cells.append(" ".join(f"{v:6.1f} ({100 * v / solo:3.0f}%)" for v in speeds))
        print(f"  {path:20} 2 threads each: {cells[0]}   1 thread each: {cells[1]}")


def rcic_row(work: Path, best: tuple[str, float]) -> None:
    data = work / "demo"
    if not (data / "test_labels.csv").exists():
        synth.generate(data, "demo", seed=0)
    sites = metadata.load_metadata(data)
    st = work / "store64"
    if not (st / "store.json").exists():
        packing.pack(data, sites, st)
    cfg = config.load_config(CONFIG, ["epochs=2", "fold=0", "amp=auto", "channels_last=auto"])
    run = work / "run64"
    train.train(cfg, sites, st, run, progress=False)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    env = json.loads((run / "env.json").read_text())
    speed = rows[-1]["images_per_s"]
    print(
        f"rcic train (configs/demo.yaml, 64 px, 2 threads, its probe chose {env['path']}): "
        f"{speed:.1f} images/s = {100 * speed / best[1]:.1f}% of the best bare loop ({best[0]}, "
        f"{best[1]:.1f})"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/rcic-bench-train"))
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 256])
    ap.add_argument("--backbone", default="resnet18")
    ap.add_argument("--no-rcic", action="store_true", help="the bare loops only")
    ap.add_argument("--one", nargs=3, metavar=("PATH", "THREADS", "STEPS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:  # one loop of a contention pair
        print(one_loop(args.one[0], int(args.one[1]), int(args.one[2])))
        return
    logging.basicConfig(level=logging.WARNING)
    print(f"torch {torch.__version__}, backbone {args.backbone}; {cpu_line()}")
    best, alone64 = bare_table(args.sizes, args.backbone)
    if alone64:
        contention_rows(alone64)
    if not args.no_rcic:
        rcic_row(args.work, best[(64, 2)])


if __name__ == "__main__":
    main()

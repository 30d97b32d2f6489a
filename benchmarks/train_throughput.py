"""Training images/s of `rcic train` against a bare PyTorch loop: same model, batch, input size.

Usage: python benchmarks/train_throughput.py [--work DIR] [--sizes 64 128]
The bare loop trains the same RcicModel on batches already in memory (no data loading, no
augmentation), with the same optimiser, bf16 autocast and channels-last; rcic trains from the store
of the `demo` screen with its full augmentation. Both report the second epoch, after warm-up.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import torch

from rcic import config, metadata, packing, samples, store, synth, train
from rcic.models import build_model, compute_loss
from rcic.tta import autocast


def bare_loop(cfg: config.TrainConfig, n_images: int, size: int) -> float:
    torch.manual_seed(0)
    model = build_model(cfg).to(memory_format=torch.channels_last)
    opt = train.make_optimizer(model, cfg)
    x = torch.randn(cfg.batch_size, 6, size, size).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 1139, (cfg.batch_size,))
    ct = torch.zeros(cfg.batch_size, dtype=torch.long)
    steps = n_images // cfg.batch_size
    model.train()
    speeds = []
    for _ in range(2):
        t0 = time.perf_counter()
        for _ in range(steps):
            with autocast(torch.device("cpu"), cfg.amp):
                out = model(x, ct)
            loss = compute_loss(out, y, y, 1.0, cfg)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        speeds.append(steps * cfg.batch_size / (time.perf_counter() - t0))
    return speeds[-1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", type=Path, default=Path("/tmp/rcic-bench-train"))
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    ap.add_argument("--backbone", default="resnet18")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    data = args.work / "demo"
    if not (data / "test_labels.csv").exists():
        synth.generate(data, "demo", seed=0)
    sites = metadata.load_metadata(data)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, backbone {args.backbone}, batch 64, bf16 autocast, channels-last"
    )
    for size in args.sizes:
        st = args.work / f"store{size}"
        if not (st / "store.json").exists():
            packing.pack(data, sites, st, size=size)
        cfg = config.TrainConfig(backbone=args.backbone, batch_size=64, epochs=2, fold=0)
        run = args.work / f"run{size}"
        train.train(cfg, sites, st, run, progress=False)
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        rcic_speed = rows[-1]["images_per_s"]
        n = len(samples.select_samples(sites, store.SiteStore(st), cfg).train_rows)
        bare = bare_loop(cfg, n, size)
        print(
            f"{size:4d} px: rcic train {rcic_speed:7.1f} images/s, bare loop {bare:7.1f} images/s -> rcic keeps {100 * rcic_speed / bare:5.1f}%"
        )


if __name__ == "__main__":
    main()

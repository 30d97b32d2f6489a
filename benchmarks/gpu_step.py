"""One short GPU check: rcic's real training step at 512 px, data from a store to the device.

Usage: python benchmarks/gpu_step.py [--store STORE] [--batch 32] [--steps 20] [--size 512]
                                     [--backbones densenet161 efficientnet_b5] [--device auto]
For each backbone, fp32 / NCHW and bf16 autocast / channels-last: images per second of rcic's
model, loss (both heads) and optimiser step, and peak device memory. With --store, batches come
from the packed store as uint8 (SiteDataset + DataLoader, as `rcic train` reads them), go to the
device as uint8, and are normalised and augmented there (BatchTransform); the loading rate alone
(store -> device, no model) is measured first. Without --store, a synthetic uint8 batch stands in
(one process, on the device). Prints one JSON line per measurement.

On a GPU machine it runs in well under 8 minutes; tests/test_benchmarks.py runs it on the CPU at
tiny size so it cannot rot before a GPU is lent. Record a GPU run in benchmarks/results/gpu_step.txt.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from rcic.data.store import SiteStore
from rcic.training import config
from rcic.training.batches import BatchTransform, SiteDataset, collate_batch
from rcic.training.infer import resolve_device
from rcic.training.models import build_model, compute_loss
from rcic.training.precision import autocast


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def _peak_gib(dev: torch.device) -> float | None:
    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if dev.type == "cuda" else None


def batches(store: str | None, batch: int, size: int, workers: int):
    """An endless iterator of uint8 batches (dicts as the training loader yields them)."""
    if store is None:
        rng = np.random.default_rng(0)
        fake = {
            "image": torch.from_numpy(rng.integers(0, 255, (batch, 6, size, size), np.uint8)),
            "stats": torch.tensor([[30.0, 20.0]] * 6).expand(batch, 6, 2).contiguous(),
            "label": torch.randint(0, 1139, (batch,)),
            "cell_type": torch.zeros(batch, dtype=torch.long),
        }
        while True:
            yield fake
    st = SiteStore(store)
    rows = st.index[st.packed]
    stats = np.tile(np.array([[30.0, 20.0]], np.float32), (len(rows), 6, 1))
    labels = np.clip(rows["sirna"].to_numpy(), 0, 1138)
    dataset = SiteDataset(st, rows, labels, stats)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=batch,
        shuffle=True,
        drop_last=True,
        num_workers=workers,
        collate_fn=collate_batch,
        persistent_workers=workers > 0,
        pin_memory=torch.cuda.is_available(),
    )
    while True:
        yield from loader


def loading_rate(source, dev: torch.device, steps: int) -> dict:
    """Store -> device as uint8, no model: the ceiling the data path puts on training."""
    next(source)  # workers started
    _sync(dev)
    t0 = time.perf_counter()
    n = 0
    for _ in range(steps):
        b = next(source)
        b["image"].to(dev, non_blocking=True)
        n += len(b["image"])
    _sync(dev)
    return {"measure": "loading only", "images_per_s": round(n / (time.perf_counter() - t0), 1)}


def step_speed(backbone, source, dev, batch, size, steps, fast, warmup=3) -> dict:
    cfg = config.TrainConfig(backbone=backbone, head="both", batch_size=batch, image_size=size)
    model = build_model(cfg).to(dev)
    if fast:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    transform = BatchTransform(size, flips=True, zoom=(0.8, 1.0), intensity_jitter=0.1)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for i in range(steps + warmup):
        if i == warmup:
            _sync(dev)
            t0 = time.perf_counter()
        b = next(source)
        x = transform(b["image"].to(dev, non_blocking=True), b["stats"].to(dev), True)
        if fast:
            x = x.contiguous(memory_format=torch.channels_last)
        y, ct = b["label"].to(dev), b["cell_type"].to(dev)
        with autocast(dev, fast):
            out = model(x, ct)
        loss = compute_loss(out, y, y, 1.0, cfg)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    _sync(dev)
    elapsed = time.perf_counter() - t0
    return {
        "backbone": backbone,
        "mode": "bf16+channels_last" if fast else "fp32",
        "batch": batch,
        "size": size,
        "images_per_s": round(steps * batch / elapsed, 1),
        "peak_gib": _peak_gib(dev),
        "loss_finite": bool(torch.isfinite(loss)),
    }


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser()
    ap.add_argument("--store", help="packed store to read batches from (default: synthetic)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--backbones", nargs="+", default=["densenet161", "efficientnet_b5"])
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    args = ap.parse_args(argv)
    dev = torch.device(resolve_device(args.device))
    name = torch.cuda.get_device_name() if dev.type == "cuda" else "cpu"
    print(f"{name}, torch {torch.__version__}", flush=True)
    source = batches(args.store, args.batch, args.size, args.workers)
    results = [loading_rate(source, dev, args.steps)]
    print(json.dumps(results[-1]), flush=True)
    for backbone in args.backbones:
        for fast in (False, True):
            results.append(
                step_speed(backbone, source, dev, args.batch, args.size, args.steps, fast)
            )
            print(json.dumps(results[-1]), flush=True)
            if dev.type == "cuda":
                torch.cuda.empty_cache()
    return results


if __name__ == "__main__":
    main()

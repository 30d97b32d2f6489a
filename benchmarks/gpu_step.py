"""One short GPU check: a real 512 px, 6-channel training step of DenseNet-161 and EfficientNet-B5.

Usage: python benchmarks/gpu_step.py [--batch 32] [--steps 20]
For each backbone, times rcic's model and loss (both heads) with fp32 / NCHW and with bf16 autocast /
channels-last: images per second and peak GPU memory. Needs a CUDA device; exits 0 with a note
without one. Run it whenever a GPU is lent, and record its output in benchmarks/results/.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from rcic import config
from rcic.inference import autocast
from rcic.models import build_model, compute_loss


def step_speed(backbone: str, batch: int, steps: int, fast: bool) -> dict:
    cfg = config.TrainConfig(backbone=backbone, head="both", batch_size=batch)
    dev = torch.device("cuda")
    model = build_model(cfg).to(dev)
    if fast:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(batch, 6, 512, 512, device=dev)
    if fast:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 1139, (batch,), device=dev)
    ct = torch.zeros(batch, dtype=torch.long, device=dev)
    torch.cuda.reset_peak_memory_stats()
    for i in range(steps + 3):
        if i == 3:  # after warm-up
            torch.cuda.synchronize()
            t0 = time.perf_counter()
        with autocast(dev, fast):
            out = model(x, ct)
        loss = compute_loss(out, y, y, 1.0, cfg)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    elapsed = time.perf_counter() - t0
    return {
        "backbone": backbone,
        "mode": "bf16+channels_last" if fast else "fp32",
        "batch": batch,
        "images_per_s": round(steps * batch / elapsed, 1),
        "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
        "loss_finite": bool(torch.isfinite(loss)),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--backbones", nargs="+", default=["densenet161", "efficientnet_b5"])
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device: nothing measured (run this on a GPU machine)")
        return
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}")
    for backbone in args.backbones:
        for fast in (False, True):
            print(json.dumps(step_speed(backbone, args.batch, args.steps, fast)), flush=True)
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()

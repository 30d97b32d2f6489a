"""Milliseconds per AdamW step on the demo's model, by PyTorch implementation, beside a whole step.

Usage: python benchmarks/optimizer_step.py [--rounds 8]
The demo recipe's model (configs/demo.yaml), training on one batch of 64 images at 64 px with bf16
autocast and channels-last. Three copies of it, one per implementation of `opt.step()`: the
per-tensor loop (PyTorch's default on the CPU, what `rcic train` uses), `foreach` and `fused`.
They take turns, 5 steps each per round over `--rounds` rounds (after one round of warm-up), so
that the machine's drift in speed falls on all three alike; each row is the median of its steps,
the optimiser step alone and the whole training step (forward, backward, step).
"drift" is how far the loop's and fused's weights are apart after 20 fp32 steps from the same
start on the same batch: the kernels round differently, so a training run's bits would change.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from rcic import demo
from rcic.training import optim
from rcic.training.models import build_model, compute_loss
from rcic.training.precision import autocast


def _batch(cfg, size: int = 64):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(cfg.batch_size, 6, size, size, generator=g)
    x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 1139, (cfg.batch_size,), generator=g)
    return x, y, torch.zeros(cfg.batch_size, dtype=torch.long)


def _model(cfg):
    torch.manual_seed(0)
    return build_model(cfg).to(memory_format=torch.channels_last).train()


def _backward(model, cfg, x, y, ct, amp: bool = True) -> None:
    with autocast(torch.device("cpu"), amp and cfg.amp):
        out = model(x, ct)
    compute_loss(out, y, y, 1.0, cfg).backward()


def _optimizer(model, cfg, kind: str):
    opt = optim.make_optimizer(model, cfg)
    for group in opt.param_groups:  # the implementation under test, whatever rcic's default
        group["fused"], group["foreach"] = kind == "fused", kind == "foreach"
    return opt


def interleaved_ms(cfg, kinds: tuple[str, ...], rounds: int, per_round: int = 5) -> dict:
    """{kind: (median ms of the optimiser step alone, of the whole training step)}."""
    x, y, ct = _batch(cfg)
    runs = {}
    for kind in kinds:
        model = _model(cfg)
        runs[kind] = (model, _optimizer(model, cfg, kind), [], [])
    for r in range(rounds + 1):
        for model, opt, alone, whole in runs.values():
            for _ in range(per_round):
                t0 = time.perf_counter()
                _backward(model, cfg, x, y, ct)
                t1 = time.perf_counter()
                opt.step()
                opt.zero_grad(set_to_none=True)
                if r > 0:  # the first round warms up
                    alone.append(1000 * (time.perf_counter() - t1))
                    whole.append(1000 * (time.perf_counter() - t0))
    return {k: (statistics.median(a), statistics.median(w)) for k, (_, _, a, w) in runs.items()}


def drift(cfg, steps: int) -> float:
    """Largest weight difference between the loop and fused after `steps` steps (fp32)."""
    weights = []
    for kind in ("loop", "fused"):
        model, (x, y, ct) = _model(cfg), _batch(cfg)
        opt = _optimizer(model, cfg, kind)
        for _ in range(steps):
            _backward(model, cfg, x, y, ct, amp=False)
            opt.step()
            opt.zero_grad(set_to_none=True)
        weights.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    return (weights[0] - weights[1]).abs().max().item()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=8)
    args = ap.parse_args()
    cfg = demo.recipe("demo", [])
    n = sum(p.numel() for p in _model(cfg).parameters())
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; demo model {cfg.backbone}, "
        f"{n / 1e6:.1f} M parameters, batch {cfg.batch_size}, 64 px, bf16 autocast, "
        f"{args.rounds} rounds of 5 steps each"
    )
    ms = interleaved_ms(cfg, ("loop", "foreach", "fused"), args.rounds)
    for kind, (alone, whole) in ms.items():
        print(
            f"AdamW {kind:8s} step {alone:6.1f} ms, whole training step {whole:6.1f} ms "
            f"(the optimiser {100 * alone / whole:4.1f}% of it)"
        )
    gain = 1 - ms["fused"][1] / ms["loop"][1]
    print(f"fused instead of the loop: the whole step {100 * gain:+.1f}% shorter")
    print(f"drift after 20 fp32 steps, loop vs fused: {drift(cfg, 20):.2e}")


if __name__ == "__main__":
    main()

"""Which precision and memory format a model computes in: the fastest robust path for this machine.

`amp` and `channels_last` in a config are true, false or ``auto``. On a GPU, auto means bf16 (where
the GPU has it) and channels-last. On a CPU, auto means fp32 (bf16 is taken only when asked for:
two bf16 trainings sharing the cores each fell to 3% of their speed alone, fp32 kept 81-85%,
benchmarks/results/threads.txt, and bf16 was not the fastest path at 64 px on either kind of CPU
measured, benchmarks/results/train_throughput.txt), and the memory format is chosen by a probe:
a few optimiser steps of a copy of the model on a random batch in each candidate path, the
fastest kept. The probe's answer is cached per CPU, torch version, threads, model and input
(``$RCIC_CACHE``, else ``$XDG_CACHE_HOME/rcic``, else ``~/.cache/rcic``), so it runs once per
machine and setting; a run records its path in env.json and keeps it when resumed.

A deterministic run on a CPU computes in fp32, contiguous unless asked otherwise: oneDNN's bf16
kernels gave different bits from one run to the next when another process shared the cores,
and a probe's answer would make the path depend on timing.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import platform
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch

# name -> (bf16, channels_last)
PATHS = {
    "fp32": (False, False),
    "fp32 channels-last": (False, True),
    "bf16": (True, False),
    "bf16 channels-last": (True, True),
}
PROBE_STEPS = 3  # timed, after one step of warm-up


@dataclass(frozen=True)
class ComputePath:
    """The path a run computes in, and how it was chosen (``config``, ``probe``, ``cache``)."""

    bf16: bool
    channels_last: bool
    how: str = "config"
    speeds: dict | None = None

    @property
    def name(self) -> str:
        return next(n for n, p in PATHS.items() if p == (self.bf16, self.channels_last))

    def record(self) -> dict:
        return {"path": self.name, "path_chosen_by": self.how, "path_probe": self.speeds}


def use_bf16(device: torch.device, amp: bool | str, deterministic: bool) -> bool:
    """Whether a run computes in bf16 autocast: asked for (`amp` true, or ``auto`` on a GPU), and
    not on a CPU under `deterministic`."""
    if device.type == "cpu":
        return amp is True and not deterministic
    return amp is True or amp == "auto"


def use_channels_last(device: torch.device, channels_last: bool | str) -> bool | None:
    """The memory format a config fixes, or None when a probe has to choose (auto on a CPU)."""
    if channels_last == "auto":
        return True if device.type == "cuda" else None
    return bool(channels_last)


def autocast(device: torch.device, enabled: bool):
    """bf16 autocast where the device supports it (CPU, and GPUs of compute capability 8+)."""
    if not enabled:
        return nullcontext()
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def choose_path(cfg, device: torch.device, model, size: int, batch: int, loss_fn) -> ComputePath:
    """The path `cfg` asks for, probing the memory format where it says auto on a CPU.

    `loss_fn(out, labels)` is the training loss; `batch` the per-process batch size.
    """
    bf16 = use_bf16(device, cfg.amp, cfg.deterministic)
    fixed = use_channels_last(device, cfg.channels_last)
    if cfg.deterministic and device.type == "cpu" and fixed is None:
        fixed = False
    if fixed is not None:
        return ComputePath(bf16, fixed)
    key = _cache_key(cfg, size, batch, bf16)
    cached = _read_cache().get(key)
    if cached in PATHS:
        return ComputePath(*PATHS[cached], how="cache")
    with torch.random.fork_rng(devices=[]):  # the run's random stream as if no probe had run
        speeds = {
            name: probe(model, cfg, size, batch, loss_fn, *PATHS[name])
            for name, (b, _) in PATHS.items()
            if b == bf16
        }
    best = max(speeds, key=speeds.get)
    _write_cache(key, best)
    return ComputePath(
        *PATHS[best], how="probe", speeds={k: round(v, 1) for k, v in speeds.items()}
    )


def probe(model, cfg, size: int, batch: int, loss_fn, bf16: bool, channels_last: bool) -> float:
    """Images/s of a few training steps of a copy of `model` in one path (the model is untouched)."""
    from rcic.train import make_optimizer

    fmt = torch.channels_last if channels_last else torch.contiguous_format
    trial = copy.deepcopy(model).to(memory_format=fmt).train()
    opt = make_optimizer(trial, cfg)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 6, size, size, generator=gen).contiguous(memory_format=fmt)
    y = torch.randint(0, 1108, (batch,), generator=gen)
    ct = torch.zeros(batch, dtype=torch.long)
    for i in range(1 + PROBE_STEPS):
        if i == 1:
            t0 = time.perf_counter()
        with autocast(torch.device("cpu"), bf16):
            out = trial(x, ct)
        loss_fn(out, y).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return PROBE_STEPS * batch / (time.perf_counter() - t0)


def cache_file() -> Path:
    root = os.environ.get("RCIC_CACHE") or os.environ.get("XDG_CACHE_HOME")
    base = Path(root) if root else Path.home() / ".cache"
    return (base if os.environ.get("RCIC_CACHE") else base / "rcic") / "paths.json"


def _cache_key(cfg, size: int, batch: int, bf16: bool) -> str:
    cpu = platform.processor() or platform.machine()
    info = Path("/proc/cpuinfo")
    if info.exists():
        lines = info.read_text().splitlines()
        cpu = next((ln for ln in lines if ln.startswith("model name")), cpu)
        cpu += next((ln for ln in lines if ln.startswith("flags")), "")
    model = (cfg.backbone, cfg.embedding_dim, cfg.head)
    parts = [cpu, torch.__version__, torch.get_num_threads(), model, size, batch, bf16]
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:16]


def _read_cache() -> dict:
    try:
        return json.loads(cache_file().read_text())
    except (OSError, ValueError):
        return {}  # no cache yet, or an unreadable one: probe again


def _write_cache(key: str, name: str) -> None:
    path = cache_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(json.dumps({**_read_cache(), key: name}, indent=1))
        tmp.replace(path)
    except OSError:
        pass  # a read-only home: the probe runs again next time

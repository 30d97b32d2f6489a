"""Which precision and memory format a model computes in, and how many threads: the fastest path
for this machine, kept fast when other processes share its cores.

`amp` and `channels_last` in a config are true, false or ``auto``. On a GPU, auto means bf16 (where
the GPU has it) and channels-last. On a CPU, a probe times a few optimiser steps of a copy of the
model on a random batch in each path the config leaves open (fp32 or bf16, contiguous or
channels-last) and keeps the fastest: which one wins differs between CPUs (bf16 channels-last on
one with AMX, fp32 contiguous on one with AVX-512 BF16 alone; benchmarks/results/
train_throughput.txt). The answer is cached per CPU, torch version, threads, backbone and input
(``$RCIC_CACHE``, else ``$XDG_CACHE_HOME/rcic``, else ``~/.cache/rcic``), so it runs once per
machine and setting; a run records its path in env.json and keeps it when resumed.

A run on a CPU that shares its cores with another busy process can collapse: bf16 kernels wait
for their threads by spinning, and two bf16 trainings of two threads each on two cores fell to 3%
of their speed. `ThreadGuard` watches each step's speed and drops torch to one thread when it
falls below a fifth of the speed alone, trying the full count again after a back-off.

A deterministic run on a CPU computes in fp32, contiguous unless asked otherwise, on a fixed
number of threads: oneDNN's bf16 kernels gave different bits from one run to the next when
another process shared the cores, and a probe's answer would make the path depend on timing.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
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
log = logging.getLogger(__name__)


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
    """Whether bf16 autocast is asked for: `amp` true, or ``auto`` on a GPU (on a CPU auto is the
    probe's to decide, `choose_path`); never on a CPU under `deterministic`."""
    if device.type == "cpu":
        return amp is True and not deterministic
    return amp is True or amp == "auto"


def autocast(device: torch.device, enabled: bool):
    """bf16 autocast where the device supports it (CPU, and GPUs of compute capability 8+)."""
    if not enabled:
        return nullcontext()
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def choose_path(cfg, device: torch.device, model, size: int, batch: int, loss_fn) -> ComputePath:
    """The path `cfg` asks for, probing on a CPU what it leaves to auto.

    `loss_fn(out, labels)` is the training loss; `batch` the per-process batch size.
    """
    if device.type != "cpu":
        channels_last = cfg.channels_last in (True, "auto")
        return ComputePath(use_bf16(device, cfg.amp, cfg.deterministic), channels_last)
    free = not cfg.deterministic  # a deterministic run's path must not depend on a timing
    precisions = [False, True] if cfg.amp == "auto" and free else [use_bf16(device, cfg.amp, False)]
    precisions = [b and free for b in precisions]
    formats = [False, True] if cfg.channels_last == "auto" and free else [cfg.channels_last is True]
    candidates = [n for n, p in PATHS.items() if p[0] in precisions and p[1] in formats]
    if len(candidates) == 1:
        return ComputePath(*PATHS[candidates[0]])
    key = _cache_key(cfg, size, batch, candidates)
    cached = _read_cache().get(key, {})
    if cached.get("path") in candidates:
        return ComputePath(*PATHS[cached["path"]], how="cache", speeds=cached.get("speeds"))
    with torch.random.fork_rng(devices=[]):  # the run's random stream as if no probe had run
        speeds = {
            n: round(probe(model, cfg, size, batch, loss_fn, *PATHS[n]), 1) for n in candidates
        }
    best = max(speeds, key=speeds.get)
    _write_cache(key, {"path": best, "speeds": speeds})
    return ComputePath(*PATHS[best], how="probe", speeds=speeds)


def probe(
    model,
    cfg,
    size: int,
    batch: int,
    loss_fn,
    bf16: bool,
    channels_last: bool,
    steps: int = PROBE_STEPS,
    warmup: int = 1,
) -> float:
    """Images/s of `steps` training steps, after `warmup` untimed ones, of a copy of `model` in
    one path (the model is untouched)."""
    from rcic.training.optim import make_optimizer

    fmt = torch.channels_last if channels_last else torch.contiguous_format
    trial = copy.deepcopy(model).to(memory_format=fmt).train()
    opt = make_optimizer(trial, cfg)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 6, size, size, generator=gen).contiguous(memory_format=fmt)
    y = torch.randint(0, 1108, (batch,), generator=gen)
    ct = torch.zeros(batch, dtype=torch.long)
    for i in range(warmup + steps):
        if i == warmup:
            t0 = time.perf_counter()
        with autocast(torch.device("cpu"), bf16):
            out = trial(x, ct)
        loss_fn(out, y).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return steps * batch / (time.perf_counter() - t0)


def cache_file() -> Path:
    if os.environ.get("RCIC_CACHE"):
        return Path(os.environ["RCIC_CACHE"]) / "paths.json"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "rcic" / "paths.json"


def _cache_key(cfg, size: int, batch: int, candidates: list[str]) -> str:
    cpu = platform.processor() or platform.machine()
    info = Path("/proc/cpuinfo")
    if info.exists():
        lines = info.read_text().splitlines()
        cpu = next((ln for ln in lines if ln.startswith("model name")), cpu)
        cpu += next((ln for ln in lines if ln.startswith("flags")), "")
    # the backbone sets the cost of a step; a neck and head of a few matrix products do not
    model = (cfg.backbone, cfg.stem_pool)
    parts = [cpu, torch.__version__, torch.get_num_threads(), model, size, batch, candidates]
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:16]


def _read_cache() -> dict:
    try:
        return json.loads(cache_file().read_text())
    except (OSError, ValueError):
        return {}  # no cache yet, or an unreadable one: probe again


def _write_cache(key: str, entry: dict) -> None:
    path = cache_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(json.dumps({**_read_cache(), key: entry}, indent=1))
        tmp.replace(path)
    except OSError:
        pass  # a read-only home: the probe runs again next time


class ThreadGuard:
    """Drops torch's intra-op pool to one thread when `patience` steps running take under
    `COLLAPSE` of the speed alone (the probe's, or the best step seen; a collapsed step of the
    demo lasts about 9 s, so one is enough to act on); after a back-off of
    `FIRST_RETRY` steps (doubled on each failed try) it gives one step the full count back and
    keeps it if that step reaches `RECOVER` of the speed alone. Off for deterministic runs."""

    COLLAPSE, RECOVER, FIRST_RETRY = 0.2, 0.5, 64

    def __init__(self, reference: float | None = None, enabled: bool = True, patience: int = 1):
        self.full = torch.get_num_threads()
        self.enabled = enabled and self.full > 1
        self.ref, self.patience = reference, patience
        self.slow = self.steps = 0
        self.backoff, self.retry_at, self.trying = self.FIRST_RETRY, None, False
        self.drops = 0

    def after_step(self, n_images: int, seconds: float) -> None:
        """Account for one step of `n_images` that took `seconds`."""
        if not self.enabled:
            return
        self.steps += 1
        speed = n_images / max(seconds, 1e-9)
        if self.trying:
            self._judge_try(speed)
        elif self.retry_at is not None:
            if self.steps >= self.retry_at:
                torch.set_num_threads(self.full)
                self.trying = True
        else:
            self._watch(speed)

    def _watch(self, speed: float) -> None:
        if self.ref is None:  # no probe: the second step is the reference (the first warms up)
            self.ref = speed if self.steps > 1 else None
            return
        self.slow = self.slow + 1 if speed < self.COLLAPSE * self.ref else 0
        self.ref = max(self.ref, speed)
        if self.slow >= self.patience:
            log.warning(
                "%.0f images/s against %.0f alone: another process shares the cores; training on "
                "1 thread, trying %d again in %d steps",
                speed,
                self.ref,
                self.full,
                self.backoff,
            )
            self._drop()

    def _judge_try(self, speed: float) -> None:
        self.trying = False
        if speed >= self.RECOVER * self.ref:
            log.info("the cores are free again: training on %d threads", self.full)
            self.retry_at, self.backoff, self.slow = None, self.FIRST_RETRY, 0
        else:
            self.backoff *= 2
            self._drop()

    def restore(self) -> None:
        """The thread count the guard found, whatever it did."""
        if self.enabled:
            torch.set_num_threads(self.full)

    def _drop(self) -> None:
        torch.set_num_threads(1)
        self.drops += 1
        self.slow, self.retry_at = 0, self.steps + self.backoff

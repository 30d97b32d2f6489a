"""Where a process stands in a data-parallel run launched by torchrun, and what follows from it.

One process (no torchrun) is a world of one; under ``torchrun --nproc_per_node K [--nnodes N ...]``
each process joins PyTorch's process group (gloo on CPU, NCCL on GPUs).
"""

from __future__ import annotations

import logging
import os
import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

log = logging.getLogger(__name__)


@dataclass
class Dist:
    """Where this process stands in a (possibly single-process) data-parallel run."""

    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


def setup_distributed(device: str) -> Dist:
    """Join the process group when launched by torchrun (gloo on CPU, NCCL on GPU)."""
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if use_cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    else:
        dev = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return Dist(rank, world, dev)


def cpu_threads(requested: int = 0, num_workers: int = 0) -> int:
    """Threads for torch's intra-op pool on a CPU.

    `requested` > 0 is taken as given. Otherwise OMP_NUM_THREADS is honoured where it is set (torchrun
    sets it for its ranks); else each of the LOCAL_WORLD_SIZE processes on this machine takes an
    equal share of the cores this process may run on (``os.sched_getaffinity``: a cgroup or
    ``taskset`` limit counts), less one core per DataLoader worker, so that torch's threads and the
    workers do not together ask for more cores than there are.
    """
    if requested > 0:
        return requested
    if os.environ.get("OMP_NUM_THREADS", "").isdigit():
        return max(1, int(os.environ["OMP_NUM_THREADS"]))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(1, (cores or 1) // local - num_workers)


def set_threads(requested: int = 0, num_workers: int = 0) -> int:
    """Size torch's intra-op pool (:func:`cpu_threads`); the number of threads it now has."""
    n = cpu_threads(requested, num_workers)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=False)
        torch.backends.cudnn.benchmark = False
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def sync_batchnorm(model: nn.Module, ctx: Dist, enabled: bool) -> nn.Module:
    """BatchNorm layers made SyncBatchNorm when several CUDA ranks train and `enabled`; the model
    unchanged otherwise (PyTorch's SyncBatchNorm needs CUDA and NCCL)."""
    if not (enabled and ctx.world > 1 and ctx.device.type == "cuda"):
        return model
    log.info("BatchNorm synchronised across %d GPUs", ctx.world)
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


def all_reduce_sum(values: list[float], ctx: Dist) -> list[float]:
    """The sums of `values` over all ranks (the values themselves in a world of one)."""
    if ctx.world == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=ctx.device)
    dist.all_reduce(t)
    return t.tolist()


def any_rank(flag: bool, ctx: Dist) -> bool:
    """True on every rank when `flag` is true on any rank."""
    if ctx.world == 1:
        return flag
    t = torch.tensor([float(flag)], device=ctx.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def gather(obj, ctx: Dist) -> list:
    """Every rank's `obj`, in rank order, on every rank."""
    if ctx.world == 1:
        return [obj]
    parts = [None] * ctx.world
    dist.all_gather_object(parts, obj)
    return parts


def gather_to_main(obj, ctx: Dist) -> list | None:
    """Every rank's `obj`, in rank order, on rank 0 (None elsewhere): the outputs of a sharded
    prediction meet where they are written, not on every rank."""
    if ctx.world == 1:
        return [obj]
    parts = [None] * ctx.world if ctx.main else None
    dist.gather_object(obj, parts, dst=0)
    return parts

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

"""The training loop: one run folder per run, resumable, data-parallel under torchrun.

Run folder::

    RUN/config.yaml        resolved configuration
    RUN/env.json           git revision, library versions, device, world size
    RUN/train.log          the log
    RUN/metrics.jsonl      one JSON object per epoch (loss, speed, held-out accuracy tables)
    RUN/checkpoints/{last,best}.pt   model, optimiser, scheduler, scaler, epoch, RNG states
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import random
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from rcic import layout
from rcic.config import ConfigError, TrainConfig, save_config, to_dict
from rcic.data import (
    BatchTransform,
    EpochBatches,
    SiteDataset,
    cache_fits,
    collate_batch,
    mix_batch,
    plate_norm_stats,
)
from rcic.errors import TrainingError
from rcic.fileio import atomic_path
from rcic.inference import autocast, infer
from rcic.metrics import accuracy_table, treatment_argmax
from rcic.models import build_model, compute_loss, load_torch_file
from rcic.samples import select_samples
from rcic.store import SiteStore, StoreError

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


# --- samples --------------------------------------------------------------------------------


# --- run folder -----------------------------------------------------------------------------


def git_revision() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).parent,
            timeout=5,
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def environment(ctx: Dist) -> dict:
    import timm

    return {
        "git": git_revision(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "device": str(ctx.device),
        "world_size": ctx.world,
        "cpu_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(ctx.device) if ctx.device.type == "cuda" else None,
    }


@contextmanager
def run_log(out: Path, enabled: bool):
    """Copy rcic's log records into RUN/train.log for the duration of the run."""
    if not enabled:
        yield
        return
    handler = logging.FileHandler(out / "train.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("rcic")
    root.addHandler(handler)
    if root.getEffectiveLevel() > logging.INFO:
        root.setLevel(logging.INFO)
    try:
        yield
    finally:
        root.removeHandler(handler)
        handler.close()


def save_checkpoint(path: Path, state: dict) -> None:
    """Write to a temporary name, then rename: a crash never leaves a half-written checkpoint."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def rng_state() -> dict:
    """RNG states as plain types and tensors, so checkpoints load with torch.load(weights_only=True)."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
        "python": random.getstate(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(state["python"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --- the loop -------------------------------------------------------------------------------


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=0.9, nesterov=True)
    cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return cls(groups, lr=cfg.lr)


def make_scheduler(opt, cfg: TrainConfig, steps_per_epoch: int):
    """Linear warm-up, then cosine decay to zero, stepped once per optimiser step."""
    total = max(1, cfg.epochs * steps_per_epoch)
    warm = int(cfg.warmup_epochs * steps_per_epoch)

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def check_input_size(model, cfg: TrainConfig, size: int, device) -> None:
    """Fail before training when the backbone cannot take the configured input."""
    model.eval()
    try:
        with torch.no_grad():
            model(
                torch.zeros(2, 6, size, size, device=device),
                torch.zeros(2, dtype=torch.long, device=device),
            )
    except (RuntimeError, ValueError, AssertionError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConfigError(
            f"config image_size={size}: backbone {cfg.backbone} cannot take a 6x{size}x{size} input ({first})"
        ) from None


def train(
    cfg: TrainConfig,
    sites: pd.DataFrame,
    store_path: str | Path,
    out: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    stop_after_epoch: int | None = None,
) -> dict:
    """Train one model; return the last epoch's metrics.

    Args:
        cfg: the run's configuration.
        sites: site table of the dataset (``rcic.metadata.load_metadata``).
        store_path: packed store of the same dataset.
        out: run folder.
        resume: continue from ``out/checkpoints/last.pt``.
        stop_after_epoch: end this process after that many epochs (the run stays resumable);
            used to test resuming and to split long runs.
    """
    out = Path(out)
    ctx = setup_distributed(cfg.device)
    seed_everything(cfg.seed, cfg.deterministic)
    st = SiteStore(store_path)
    size = cfg.image_size or st.size
    if size > st.size:
        raise ConfigError(f"config image_size={size}: larger than the store's {st.size} px sites")
    pseudo = pd.read_csv(cfg.pseudo_labels) if cfg.pseudo_labels else None
    samples = select_samples(sites, st, cfg, pseudo)
    if len(samples.train_rows) == 0:
        raise StoreError("no training samples: check the metadata, the store and the fold")
    if cfg.batch_size % ctx.world:
        raise ConfigError(
            f"config batch_size={cfg.batch_size}: not divisible by the {ctx.world} processes"
        )
    model = build_model(cfg).to(ctx.device)
    check_input_size(model, cfg, size, ctx.device)
    ckpt_dir = out / "checkpoints"
    if ctx.main:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        if not resume:
            save_config(cfg, out / "config.yaml")
            env = {
                **environment(ctx),
                "store": st.url or str(Path(store_path).resolve()),
                "n_train_samples": len(samples.train_rows),
                "held_out_experiments": samples.val_experiments,
            }
            (out / "env.json").write_text(json.dumps(env, indent=1))
            (out / "metrics.jsonl").write_text("")
    with run_log(out, ctx.main):
        return _fit(cfg, ctx, st, samples, model, size, out, resume, progress, stop_after_epoch)


def _loaders(cfg, ctx, st, samples, size):
    cache_train = cache_fits(st, len(samples.train_rows), cfg.cache_mb)
    train_stats = plate_norm_stats(st, cfg.normalisation, samples.train_rows)
    if cfg.normalisation == "global":  # the held-out experiments use the training pool too
        val_stats = np.broadcast_to(train_stats[:1], (len(samples.val_rows), 6, 2)).copy()
    else:
        val_stats = plate_norm_stats(st, cfg.normalisation, samples.val_rows)
    train_set = SiteDataset(
        st, samples.train_rows, samples.train_labels, train_stats, cache=cache_train
    )
    val_set = SiteDataset(
        st, samples.val_rows, samples.val_rows["sirna"].to_numpy(), val_stats, cache=cache_train
    )
    sampler = EpochBatches(
        len(train_set), cfg.batch_size, ctx.world, ctx.rank, seed=cfg.seed, shuffle=True
    )
    kw = {
        "num_workers": cfg.num_workers,
        "persistent_workers": cfg.num_workers > 0,
        "pin_memory": ctx.device.type == "cuda",
    }
    train_loader = DataLoader(train_set, batch_sampler=sampler, collate_fn=collate_batch, **kw)
    shard = torch.utils.data.Subset(val_set, range(ctx.rank, len(val_set), ctx.world))
    val_loader = DataLoader(
        shard,
        batch_size=max(1, 2 * cfg.batch_size // ctx.world),
        shuffle=False,
        collate_fn=collate_batch,
        **kw,
    )
    return train_loader, val_loader, sampler


def _fit(cfg, ctx, st, samples, model, size, out, resume, progress, stop_after_epoch) -> dict:
    train_loader, val_loader, sampler = _loaders(cfg, ctx, st, samples, size)
    steps = max(1, len(train_loader) // cfg.accumulate)
    opt = make_optimizer(model, cfg)
    sched = make_scheduler(opt, cfg, steps)
    start_epoch, best = 0, -1.0
    ckpt_dir = out / "checkpoints"
    if resume:
        start_epoch, best = _restore(ckpt_dir / "last.pt", model, opt, sched, ctx)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    model = sync_batchnorm(model, ctx, cfg)
    wrapped = DistributedDataParallel(model) if ctx.world > 1 else model
    if cfg.compile:
        wrapped = torch.compile(wrapped)
    transform = BatchTransform(size, cfg.flips, cfg.zoom, cfg.intensity_jitter)
    log.info(
        "training %s on %d samples (%d held-out sites of %s), %d px, %d epochs, world %d, device %s",
        cfg.backbone,
        len(samples.train_rows),
        len(samples.val_rows),
        samples.val_experiments,
        size,
        cfg.epochs,
        ctx.world,
        ctx.device,
    )
    row = {}
    for epoch in range(start_epoch, cfg.epochs):
        sampler.set_epoch(epoch)
        loss, speed = _train_epoch(
            wrapped, train_loader, transform, opt, sched, cfg, ctx, epoch, progress, ckpt_dir
        )
        row = {
            "epoch": epoch + 1,
            "loss": loss,
            "images_per_s": speed,
            "lr": sched.get_last_lr()[0],
        }
        if len(samples.val_rows):  # every rank scores its shard; the metrics see all of them
            row["val"] = validate(model, val_loader, transform, samples.val_rows, ctx, cfg)
        score = row.get("val", {}).get("overall", -loss)
        if ctx.main:
            _log_epoch(row)
            with open(out / "metrics.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")
            state = _state(model, opt, sched, epoch + 1, max(best, score), cfg)
            if cfg.normalisation == "global":  # prediction must use the training pool, not its own
                state["global_stats"] = torch.from_numpy(train_loader.dataset.stats[0].copy())
            save_checkpoint(ckpt_dir / "last.pt", state)
            if score > best:
                save_checkpoint(ckpt_dir / "best.pt", state)
        best = max(best, score)
        if ctx.world > 1:
            dist.barrier()
        if stop_after_epoch is not None and epoch + 1 >= stop_after_epoch:
            break
    return row


def sync_batchnorm(model: nn.Module, ctx: Dist, cfg: TrainConfig) -> nn.Module:
    """BatchNorm layers made SyncBatchNorm when several CUDA ranks train (cfg.sync_batchnorm);
    the model unchanged otherwise (PyTorch's SyncBatchNorm needs CUDA and NCCL)."""
    if not (cfg.sync_batchnorm and ctx.world > 1 and ctx.device.type == "cuda"):
        return model
    log.info("BatchNorm synchronised across %d GPUs", ctx.world)
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


def _train_epoch(
    model, loader, transform, opt, sched, cfg, ctx, epoch, progress, ckpt_dir
) -> tuple[float, float]:
    model.train()
    gen = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch * 1_009 + ctx.rank)
    total, count, t0, n_images = 0.0, 0, time.perf_counter(), 0
    bar = tqdm(
        loader,
        desc=f"epoch {epoch + 1}/{cfg.epochs}",
        unit="batch",
        disable=not (progress and ctx.main),
        leave=False,
    )
    opt.zero_grad(set_to_none=True)
    for i, batch in enumerate(bar):
        x = transform(
            batch["image"].to(ctx.device, non_blocking=True),
            batch["stats"].to(ctx.device),
            True,
            gen,
        )
        labels = batch["label"].to(ctx.device)
        x, ya, yb, lam = mix_batch(x, labels, cfg.mixup, cfg.cutmix, gen)
        if cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(ctx.device, cfg.amp):
            out = model(x, batch["cell_type"].to(ctx.device))
        loss = compute_loss(out, ya, yb, lam, cfg) / cfg.accumulate
        loss.backward()
        if _any_rank_not_finite(loss, ctx):  # every rank learns it, so all stop together
            last = ckpt_dir / "last.pt"
            kept = (
                f"the last good checkpoint is {last}"
                if last.exists()
                else "no epoch had finished, so there is no checkpoint"
            )
            raise TrainingError(
                f"the loss became NaN or infinite at epoch {epoch + 1}, batch {i + 1}; {kept}. Lower lr, or set amp=false."
            )
        if (i + 1) % cfg.accumulate == 0:
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
        total += loss.item() * cfg.accumulate
        count += 1
        n_images += x.shape[0]
        speed = n_images * ctx.world / (time.perf_counter() - t0)  # estimate while running
        bar.set_postfix(loss=f"{total / count:.3f}", img_s=f"{speed:.0f}")
    seconds = time.perf_counter() - t0
    if ctx.world > 1:  # the epoch's loss and speed over all ranks, not rank 0's alone
        sums = torch.tensor([total, count, n_images], dtype=torch.float64, device=ctx.device)
        dist.all_reduce(sums)
        total, count, n_images = sums.tolist()
    return total / max(count, 1), n_images / seconds


def _any_rank_not_finite(loss: torch.Tensor, ctx: Dist) -> bool:
    bad = (~torch.isfinite(loss.detach())).float().reshape(1)
    if ctx.world > 1:
        dist.all_reduce(bad, op=dist.ReduceOp.MAX)
    return bool(bad.item())


def validate(model, loader, transform, rows: pd.DataFrame, ctx: Dist, cfg: TrainConfig) -> dict:
    """Held-out accuracy per well (logits averaged over its sites), treatments only.

    Under torchrun each rank's loader holds a shard of the held-out sites; their logits are
    gathered, so every rank returns the metrics of the whole held-out set.
    """
    res = infer(
        model,
        loader,
        transform,
        ctx.device,
        views=(0,),
        amp=cfg.amp,
        channels_last=cfg.channels_last,
    )
    if ctx.world > 1:
        parts = [None] * ctx.world
        dist.all_gather_object(parts, (res["rows"], res["logits"]))
        res = {
            "rows": np.concatenate([r for r, _ in parts]),
            "logits": np.concatenate([z for _, z in parts]),
        }
    frame = rows.iloc[res["rows"]][["id_code", "experiment", "cell_type", "sirna"]].reset_index(
        drop=True
    )
    logits = pd.DataFrame(res["logits"]).groupby(frame["id_code"].to_numpy()).mean()
    wells = frame.drop_duplicates("id_code").set_index("id_code").loc[logits.index].reset_index()
    return accuracy_table(wells, treatment_argmax(logits.to_numpy()))


def _log_epoch(row: dict) -> None:
    msg = f"epoch {row['epoch']}: loss {row['loss']:.4f}, {row['images_per_s']:.1f} images/s"
    if "val" in row:
        v = row["val"]
        msg += (
            f", held-out accuracy {v['overall']:.3f} ("
            + ", ".join(f"{k} {a:.3f}" for k, a in v["cell_type"].items())
            + ")"
        )
    log.info(msg)


def _state(model, opt, sched, epoch: int, best: float, cfg: TrainConfig) -> dict:
    return {
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "epoch": epoch,
        "best": best,
        "config": to_dict(cfg),
        "rng": rng_state(),
        "n_classes": layout.N_CLASSES,
    }


def _restore(path: Path, model, opt, sched, ctx: Dist) -> tuple[int, float]:
    if not path.exists():
        raise TrainingError(f"--resume: {path} does not exist; start without --resume")
    state = load_torch_file(path, "checkpoint", ctx.device)
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"])
    log.info("resumed %s at epoch %d", path, state["epoch"])
    return int(state["epoch"]), float(state["best"])

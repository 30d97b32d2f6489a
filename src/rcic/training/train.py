"""The training loop: resumable, data-parallel under torchrun.

`train` leaves a run folder (layout and checkpoint format in :mod:`rcic.training.runs`); the loop's
state (model, optimiser, loaders, epoch, best score) lives in one :class:`Trainer`.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from rcic.data.store import SiteStore, StoreError
from rcic.errors import TrainingError
from rcic.metrics import accuracy_table, treatment_argmax
from rcic.training.batches import (
    BatchTransform,
    EpochBatches,
    SiteDataset,
    cache_fits,
    collate_batch,
    mix_batch,
    plate_norm_stats,
)
from rcic.training.config import ConfigError, TrainConfig
from rcic.training.distributed import (
    Dist,
    all_reduce_sum,
    any_rank,
    gather,
    seed_everything,
    set_threads,
    setup_distributed,
    sync_batchnorm,
)
from rcic.training.infer import infer, sum_by_well
from rcic.training.models import build_model, compute_loss
from rcic.training.optim import make_optimizer, make_scheduler
from rcic.training.precision import PATHS, ComputePath, ThreadGuard, autocast, choose_path, use_bf16
from rcic.training.runs import RunFolder, environment, restore, run_log, training_state
from rcic.training.samples import Samples, select_samples

log = logging.getLogger(__name__)


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
        sites: site table of the dataset (``rcic.data.metadata.load_metadata``).
        store_path: packed store of the same dataset.
        out: run folder.
        resume: continue from ``out/checkpoints/last.pt``.
        stop_after_epoch: end this process after that many epochs (the run stays resumable);
            used to test resuming and to split long runs.
    """
    folder = RunFolder(out)
    ctx = setup_distributed(cfg.device)
    set_threads(cfg.threads, cfg.num_workers)
    seed_everything(cfg.seed, cfg.deterministic)
    st = SiteStore(store_path)
    size = cfg.image_size or st.size
    if size > st.size:
        raise ConfigError(f"config image_size={size}: larger than the store's {st.size} px sites")
    if resume:
        folder.check_store_kind(st.kind, st.url or store_path)
    samples = _samples(cfg, ctx, sites, st, folder, resume)
    model = build_model(cfg).to(ctx.device)
    check_input_size(model, cfg, size, ctx.device)
    path = _compute_path(cfg, ctx, model, size, folder if resume else None)
    if ctx.main:
        folder.checkpoints.mkdir(parents=True, exist_ok=True)
        if not resume:  # config.yaml as asked (auto stays auto), env.json the path taken
            _start_folder(folder, cfg, ctx, st, store_path, samples, path)
    cfg = replace(cfg, amp=path.bf16, channels_last=path.channels_last)
    with run_log(folder, ctx.main):
        trainer = Trainer.build(cfg, ctx, st, samples, model, size, folder, resume=resume)
        alone = (path.speeds or {}).get(path.name)
        on_cpu = ctx.device.type == "cpu" and not cfg.deterministic
        trainer.guard = ThreadGuard(alone, enabled=on_cpu and cfg.thread_guard)
        try:
            return trainer.fit(progress, stop_after_epoch)
        finally:
            trainer.guard.restore()


def _samples(cfg: TrainConfig, ctx, sites, st, folder: RunFolder, resume: bool) -> Samples:
    """The run's training and held-out samples; a resumed run keeps the validation experiments it
    recorded when it started."""
    pseudo = pd.read_csv(cfg.pseudo_labels) if cfg.pseudo_labels else None
    samples = select_samples(sites, st, cfg, pseudo, folder.held_out() if resume else None)
    if len(samples.train_rows) == 0:
        raise StoreError("no training samples: check the metadata, the store and the fold")
    if cfg.batch_size % ctx.world:
        raise ConfigError(
            f"config batch_size={cfg.batch_size}: not divisible by the {ctx.world} processes"
        )
    return samples


def _compute_path(cfg: TrainConfig, ctx, model, size: int, resumed: RunFolder | None):
    """The precision and memory format of the run: a resumed run keeps the one it recorded; rank
    0 chooses for every rank (rcic.training.precision)."""
    if resumed is not None:
        env = json.loads(resumed.env.read_text()) if resumed.env.exists() else {}
        if env.get("path") in PATHS:
            return ComputePath(*PATHS[env["path"]], how="resumed")
    batch = cfg.batch_size // ctx.world
    path = None
    if ctx.main:

        def loss(out, y):
            return compute_loss(out, y, y, 1.0, cfg)

        path = choose_path(cfg, ctx.device, model, size, batch, loss)
    return gather(path, ctx)[0]


def _start_folder(folder: RunFolder, cfg: TrainConfig, ctx, st, store_path, samples, path) -> None:
    """A new run's records: config, environment (with the path it computes in) and split."""
    env = {
        **environment(ctx.device, ctx.world),
        "store": st.url or str(Path(store_path).resolve()),
        "store_kind": st.kind,
        "n_train_samples": len(samples.train_rows),
        "bf16": path.bf16,
        **path.record(),
    }
    folder.start(cfg, env, split_record(cfg, samples))


def split_record(cfg: TrainConfig, samples: Samples) -> dict:
    """What RUN/split.json records: the fold rule's inputs and the experiments it gave."""
    return {
        "fold": cfg.fold,
        "folds": cfg.folds,
        "seed": cfg.seed,
        "held_out_experiments": samples.val_experiments,
        "train_experiments": sorted(samples.train_rows["experiment"].astype(str).unique()),
    }


@dataclass
class Loaders:
    train: DataLoader
    val: DataLoader
    sampler: EpochBatches
    train_stats: np.ndarray  # per training sample: (6, 2) normalisation statistics


def make_loaders(cfg: TrainConfig, ctx: Dist, st: SiteStore, samples: Samples) -> Loaders:
    """Training batches (every sample once per epoch over all ranks) and this rank's validation shard."""
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
        "collate_fn": collate_batch,
    }
    shard = torch.utils.data.Subset(val_set, range(ctx.rank, len(val_set), ctx.world))
    return Loaders(
        DataLoader(train_set, batch_sampler=sampler, **kw),
        DataLoader(shard, batch_size=max(1, 2 * cfg.batch_size // ctx.world), shuffle=False, **kw),
        sampler,
        train_stats,
    )


@dataclass
class Trainer:
    """The state of one training run between epochs."""

    cfg: TrainConfig
    ctx: Dist
    folder: RunFolder
    samples: Samples
    loaders: Loaders
    model: nn.Module  # the bare model (its state is what checkpoints hold)
    wrapped: nn.Module  # what the loop calls: the model, under DDP and/or torch.compile
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LRScheduler
    transform: BatchTransform
    start_epoch: int = 0
    best: float = -1.0
    guard: ThreadGuard = field(default_factory=lambda: ThreadGuard(enabled=False))

    @classmethod
    def build(cls, cfg, ctx, st, samples, model, size, folder, *, resume=False) -> Trainer:
        loaders = make_loaders(cfg, ctx, st, samples)
        opt = make_optimizer(model, cfg)
        sched = make_scheduler(opt, cfg, max(1, len(loaders.train) // cfg.accumulate))
        start_epoch, best = 0, -1.0
        if resume:
            start_epoch, best = restore(folder.checkpoint("last"), model, opt, sched, ctx.device)
        if cfg.channels_last:
            model = model.to(memory_format=torch.channels_last)
        model = sync_batchnorm(model, ctx, cfg.sync_batchnorm)
        wrapped = DistributedDataParallel(model) if ctx.world > 1 else model
        if cfg.compile:
            wrapped = torch.compile(wrapped)
        transform = BatchTransform(size, cfg.flips, cfg.zoom, cfg.intensity_jitter, st.views)
        return cls(
            cfg,
            ctx,
            folder,
            samples,
            loaders,
            model,
            wrapped,
            opt,
            sched,
            transform,
            start_epoch,
            best,
        )

    def fit(self, progress: bool = True, stop_after_epoch: int | None = None) -> dict:
        """Train from `start_epoch` to the configured epochs; the last epoch's metrics."""
        cfg, s = self.cfg, self.samples
        log.info(
            "training %s on %d samples (%d held-out samples of %s), %d px, %d epochs, world %d, device %s",
            cfg.backbone,
            len(s.train_rows),
            len(s.val_rows),
            s.val_experiments,
            self.transform.out_size,
            cfg.epochs,
            self.ctx.world,
            self.ctx.device,
        )
        row = {}
        for epoch in range(self.start_epoch, cfg.epochs):
            self.loaders.sampler.set_epoch(epoch)
            loss, speed = self.train_epoch(epoch, progress)
            row = {
                "epoch": epoch + 1,
                "loss": loss,
                "images_per_s": speed,
                "lr": self.sched.get_last_lr()[0],
            }
            if self.scores(epoch):  # every rank scores its shard; the metrics see all of them
                row["val"] = validate(
                    self.model, self.loaders.val, self.transform, s.val_rows, self.ctx, cfg
                )
            self.end_epoch(epoch, row)
            if stop_after_epoch is not None and epoch + 1 >= stop_after_epoch:
                break
        return row

    def scores(self, epoch: int) -> bool:
        """Whether `epoch` (0-based) scores the held-out experiments: every `val_every`-th, and
        the last."""
        last = epoch + 1 == self.cfg.epochs
        return len(self.samples.val_rows) > 0 and ((epoch + 1) % self.cfg.val_every == 0 or last)

    def end_epoch(self, epoch: int, row: dict) -> None:
        """Log the epoch, append its metrics, save `last` (and `best` when the score improved:
        held-out accuracy where the epoch scored one, minus the loss where the run holds none
        out; an epoch that skipped scoring is no candidate)."""
        if "val" in row:
            score = row["val"]["overall"]
        else:
            score = -math.inf if len(self.samples.val_rows) else -row["loss"]
        if self.ctx.main:
            self.folder.record_epoch(row)
            state = training_state(
                self.model, self.opt, self.sched, epoch + 1, max(self.best, score), self.cfg
            )
            if self.cfg.normalisation == "global":  # prediction uses the training pool
                state["global_stats"] = torch.from_numpy(self.loaders.train_stats[0].copy())
            self.folder.save_checkpoint("last", state)
            if score > self.best:
                self.folder.copy_checkpoint("last", "best")
        self.best = max(self.best, score)
        self.ctx.barrier()

    def train_epoch(self, epoch: int, progress: bool) -> tuple[float, float]:
        """One pass over this rank's batches; (mean loss, images/s) over all ranks."""
        cfg, ctx = self.cfg, self.ctx
        self.wrapped.train()
        gen = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch * 1_009 + ctx.rank)
        total, count, n_images, t0 = 0.0, 0, 0, time.perf_counter()
        bar = tqdm(
            self.loaders.train,
            desc=f"epoch {epoch + 1}/{cfg.epochs}",
            unit="batch",
            disable=not (progress and ctx.main),
            leave=False,
        )
        self.opt.zero_grad(set_to_none=True)
        for i, batch in enumerate(bar):
            t_step = time.perf_counter()
            loss, n = self.step(batch, gen, epoch, i)
            self.guard.after_step(n, time.perf_counter() - t_step)
            total += loss * cfg.accumulate
            count += 1
            n_images += n
            speed = n_images * ctx.world / (time.perf_counter() - t0)  # estimate while running
            bar.set_postfix(loss=f"{total / count:.3f}", img_s=f"{speed:.0f}")
        seconds = time.perf_counter() - t0
        # the epoch's loss and speed over all ranks, not rank 0's alone
        total, count, n_images = all_reduce_sum([total, count, n_images], ctx)
        return total / max(count, 1), n_images / seconds

    def step(self, batch: dict, gen: torch.Generator, epoch: int, i: int) -> tuple[float, int]:
        """Forward and backward of batch `i`; an optimiser step every `accumulate` batches."""
        cfg, dev = self.cfg, self.ctx.device
        x = self.transform(
            batch["image"].to(dev, non_blocking=True), batch["stats"].to(dev), True, gen
        )
        x, ya, yb, lam = mix_batch(x, batch["label"].to(dev), cfg.mixup, cfg.cutmix, gen)
        if cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(dev, use_bf16(dev, cfg.amp, cfg.deterministic)):
            out = self.wrapped(x, batch["cell_type"].to(dev))
        loss = compute_loss(out, ya, yb, lam, cfg) / cfg.accumulate
        loss.backward()
        if any_rank(not torch.isfinite(loss.detach()).item(), self.ctx):  # all ranks stop together
            raise TrainingError(
                f"the loss became NaN or infinite at epoch {epoch + 1}, batch {i + 1}; "
                f"{self._kept()}. Lower lr, or set amp=false."
            )
        if (i + 1) % cfg.accumulate == 0:
            self.opt.step()
            self.sched.step()
            self.opt.zero_grad(set_to_none=True)
        return loss.item(), x.shape[0]

    def _kept(self) -> str:
        last = self.folder.checkpoint("last")
        if last.exists():
            return f"the last good checkpoint is {last}"
        return "no epoch had finished, so there is no checkpoint"


def validate(model, loader, transform, rows: pd.DataFrame, ctx: Dist, cfg: TrainConfig) -> dict:
    """Held-out accuracy per well (the argmax of its sites' summed logits, which is that of their
    mean), treatments only.

    Under torchrun each rank's loader holds a shard of the held-out sites; their logits are
    gathered, so every rank returns the metrics of the whole held-out set.
    """
    amp = use_bf16(ctx.device, cfg.amp, cfg.deterministic)
    res = infer(
        model, loader, transform, ctx.device, views=(0,), amp=amp, channels_last=cfg.channels_last
    )
    parts = gather((res["rows"], res["logits"]), ctx)
    at = np.concatenate([r for r, _ in parts])
    frame = rows.iloc[at][["id_code", "experiment", "cell_type", "sirna"]].reset_index(drop=True)
    codes, well = np.unique(frame["id_code"].to_numpy(), return_inverse=True)
    summed = sum_by_well(well, len(codes), [z for _, z in parts])
    wells = frame.drop_duplicates("id_code").set_index("id_code").loc[codes].reset_index()
    return accuracy_table(wells, treatment_argmax(summed))

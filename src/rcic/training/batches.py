"""Training data: samples from the store, folds by experiment, normalisation and augmentation.

The Dataset returns raw uint8 sites with their plate statistics; normalisation and augmentation run
batched on the training device (:class:`BatchTransform`), which is cheap on a GPU and keeps
DataLoader workers light on a CPU.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from rcic import layout
from rcic.data.store import SiteStore
from rcic.errors import InputError

log = logging.getLogger(__name__)

CELL_TYPE_IDS = {ct: i for i, ct in enumerate(layout.CELL_TYPES)}


def cell_type_id(cell_type: str) -> int:
    return CELL_TYPE_IDS.get(cell_type, layout.N_CELL_TYPES - 1)


def plate_norm_stats(store: SiteStore, source: str, rows: pd.DataFrame) -> np.ndarray:
    """Per-sample (mean, std) of each channel, shape (N, 6, 2), for `rows` of the store index.

    Args:
        source: ``plate`` (all wells of the plate), ``plate_neg`` (its negative controls; plates
            without any fall back to all wells), ``global`` (pooled over the given rows' plates) or
            ``image`` (zeros: computed from each image on the device).
    """
    if source == "image":
        return np.zeros((len(rows), 6, 2), np.float32)
    stats = store.plate_stats("all")
    if source == "plate_neg":
        neg = store.plate_stats("neg")
        stats = {k: (neg[k] if np.isfinite(neg[k]).all() else v) for k, v in stats.items()}
    keys = list(zip(rows["experiment"], rows["plate"].astype(int), strict=True))
    per_row = np.stack([stats[k] for k in keys]).astype(np.float32)
    if source == "global":
        mean = per_row[:, :, 0].mean(0)
        second = (per_row[:, :, 1] ** 2 + per_row[:, :, 0] ** 2).mean(0)
        pooled = np.stack([mean, np.sqrt(np.maximum(second - mean**2, 1e-6))], 1)
        return np.broadcast_to(pooled, per_row.shape).copy()
    return per_row


class SiteDataset(torch.utils.data.Dataset):
    """Sites of the store with labels; items are dicts of tensors.

    Args:
        store: the packed store.
        rows: rows of ``store.index`` (with its ``idx`` column) to serve.
        labels: class id of each row (-1 where unknown).
        stats: (N, 6, 2) normalisation statistics of each row.
        cache: read all rows into memory now (fast epochs when they fit).
    """

    def __init__(
        self,
        store: SiteStore,
        rows: pd.DataFrame,
        labels: np.ndarray,
        stats: np.ndarray,
        cache: bool = False,
    ):
        self.store = store
        self.rows = rows.reset_index(drop=True)
        self.idx = self.rows["idx"].to_numpy()
        self.labels = np.asarray(labels, np.int64)
        self.stats = np.asarray(stats, np.float32)
        self.cell_types = np.array([cell_type_id(c) for c in self.rows["cell_type"]], np.int64)
        self.images = store.read_many(self.idx) if cache else None

    def __len__(self) -> int:
        return len(self.idx)

    def __getitem__(self, i: int) -> dict:
        image = self.images[i] if self.images is not None else self.store.read(self.idx[i])
        return {
            "image": torch.from_numpy(np.ascontiguousarray(image)),
            "stats": torch.from_numpy(self.stats[i]),
            "label": torch.tensor(self.labels[i]),
            "cell_type": torch.tensor(self.cell_types[i]),
            "row": torch.tensor(i),
        }

    def __getitems__(self, rows: list[int]) -> dict:
        """A whole batch with one fancy-indexing read (the DataLoader calls this instead of
        __getitem__ per sample, which saves a per-sample collate on every step)."""
        rows = np.asarray(rows)
        images = (
            self.images[rows] if self.images is not None else self.store.read_many(self.idx[rows])
        )
        return {
            "image": torch.from_numpy(np.ascontiguousarray(images)),
            "stats": torch.from_numpy(self.stats[rows]),
            "label": torch.from_numpy(self.labels[rows]),
            "cell_type": torch.from_numpy(self.cell_types[rows]),
            "row": torch.from_numpy(rows.astype(np.int64)),
        }


def collate_batch(batch):
    """Collate for SiteDataset: batches arrive already stacked from __getitems__."""
    return batch if isinstance(batch, dict) else torch.utils.data.default_collate(batch)


def cache_fits(store: SiteStore, n_rows: int, cache_mb: int) -> bool:
    return n_rows * 6 * store.size**2 / 2**20 <= cache_mb


# --- batched transforms on the device -------------------------------------------------------


def dihedral(x: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th of the 8 flips/rotations (k in 0..7) of a (B, C, H, W) batch."""
    if k >= 4:
        x = x.flip(-1)
    return torch.rot90(x, k % 4, dims=(-2, -1))


class BatchTransform:
    """Normalise, then (in training) augment a batch of uint8 sites on its device.

    Args:
        out_size: side of the model's input.
        flips: random flips and 90-degree rotations.
        views: the dihedral views that flips draw from, uniformly (default all 8; fewer for an
            aligned cell store, `SiteStore.views`).
        zoom: random crop side as a fraction of the image, (low, high); resized to out_size.
        intensity_jitter: std of per-channel random scale (log) and shift, in normalised units.
    """

    def __init__(
        self,
        out_size: int,
        flips: bool = True,
        zoom=(1.0, 1.0),
        intensity_jitter: float = 0.0,
        views: Sequence[int] = tuple(range(8)),
    ):
        self.out_size = out_size
        self.flips = flips
        self.views = torch.as_tensor(list(views), dtype=torch.long)
        if len(self.views) == 0 or not all(0 <= int(k) < 8 for k in self.views):
            raise ValueError(f"views {list(views)}: expected indices in 0..7")
        self.zoom = tuple(zoom)
        self.jitter = intensity_jitter

    @staticmethod
    def normalise(images: torch.Tensor, stats: torch.Tensor) -> torch.Tensor:
        """(B, 6, H, W) uint8 -> float; stats (B, 6, 2) of mean/std, all zero for per-image."""
        mean, std = stats[..., 0, None, None].clone(), stats[..., 1, None, None].clone()
        x = images.float()
        per_image = (stats == 0).all(dim=(1, 2))
        if per_image.any():
            mean[per_image] = x[per_image].mean(dim=(-2, -1), keepdim=True)
            std[per_image] = x[per_image].std(dim=(-2, -1), keepdim=True).clamp_min(1.0)
        return x.sub_(mean).div_(std.clamp_min(1e-3))

    @torch.no_grad()
    def __call__(
        self,
        images: torch.Tensor,
        stats: torch.Tensor,
        train: bool,
        generator: torch.Generator | None = None,
    ):
        x = self.normalise(images, stats)
        if not train:
            return self._resize(x)
        b = x.shape[0]
        if self.zoom != (1.0, 1.0) or x.shape[-1] != self.out_size:
            x = self._random_crop(x, generator)
        if self.flips:
            ks = self.views[torch.randint(0, len(self.views), (b,), generator=generator)]
            out = torch.empty_like(x)
            for k in ks.unique().tolist():  # one batched op per view, not one per sample
                sel = (ks == k).nonzero().squeeze(1).to(x.device)
                out[sel] = dihedral(x[sel], k)
            x = out
        if self.jitter > 0:
            scale = torch.exp(torch.randn(b, x.shape[1], 1, 1, generator=generator) * self.jitter)
            shift = torch.randn(b, x.shape[1], 1, 1, generator=generator) * self.jitter
            x = x.mul_(scale.to(x.device)).add_(shift.to(x.device))
        return x

    def _resize(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] == self.out_size:
            return x
        return F.interpolate(
            x,
            size=(self.out_size, self.out_size),
            mode="bilinear",
            align_corners=False,
            antialias=True,
        )

    def _random_crop(self, x: torch.Tensor, generator) -> torch.Tensor:
        """A random square crop per sample, its side drawn once per batch from `zoom`, resized to out_size."""
        size = x.shape[-1]
        lo, hi = self.zoom
        side = max(1, round(size * (lo + (hi - lo) * float(torch.rand(1, generator=generator)))))
        offsets = torch.randint(0, size - side + 1, (x.shape[0], 2), generator=generator).tolist()
        crops = torch.stack(
            [x[i, :, oy : oy + side, ox : ox + side] for i, (oy, ox) in enumerate(offsets)]
        )
        if side == self.out_size:
            return crops
        return F.interpolate(
            crops, size=(self.out_size, self.out_size), mode="bilinear", align_corners=False
        )


def mix_batch(
    x: torch.Tensor,
    labels: torch.Tensor,
    mixup: float,
    cutmix: float,
    generator: torch.Generator | None = None,
):
    """Mixup or cutmix a batch. Returns (x, labels_a, labels_b, lam): loss = lam*L(a) + (1-lam)*L(b)."""
    modes = [m for m, a in (("mixup", mixup), ("cutmix", cutmix)) if a > 0]
    if not modes:
        return x, labels, labels, 1.0
    mode = modes[int(torch.randint(len(modes), (1,), generator=generator))]
    alpha = mixup if mode == "mixup" else cutmix
    lam = _beta(alpha, generator)
    perm = torch.randperm(x.shape[0], generator=generator).to(x.device)
    if mode == "mixup":
        return lam * x + (1 - lam) * x[perm], labels, labels[perm], lam
    h, w = x.shape[-2:]
    cut = math.sqrt(1 - lam)
    ch, cw = int(h * cut), int(w * cut)
    cy = int(torch.randint(0, h, (1,), generator=generator))
    cx = int(torch.randint(0, w, (1,), generator=generator))
    y0, y1 = max(cy - ch // 2, 0), min(cy + ch // 2, h)
    x0, x1 = max(cx - cw // 2, 0), min(cx + cw // 2, w)
    x = x.clone()
    x[..., y0:y1, x0:x1] = x[perm][..., y0:y1, x0:x1]
    lam = 1 - (y1 - y0) * (x1 - x0) / (h * w)  # the area actually pasted
    return x, labels, labels[perm], lam


def _beta(alpha: float, generator: torch.Generator | None) -> float:
    """A Beta(alpha, alpha) draw that follows the seeded torch generator."""
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
    return float(np.random.default_rng(seed).beta(alpha, alpha))


class EpochBatches(torch.utils.data.Sampler):
    """Batches of one rank: every sample exactly once per epoch across all ranks, no padding.

    Each epoch the N samples are shuffled (seeded by `seed` and the epoch, the same on every rank)
    and cut into global batches of `batch_size`; rank r takes its share of each (the shares differ
    by at most one sample). A last global batch too small to give every rank `min_share` samples
    is merged into the one before, so every rank runs the same number of steps (which
    DistributedDataParallel needs) and no sample is dropped or repeated. DDP averages the ranks'
    gradients, so in a batch whose shares differ a sample of a smaller share weighs a little more.
    """

    def __init__(
        self,
        n: int,
        batch_size: int,
        world: int = 1,
        rank: int = 0,
        seed: int = 0,
        shuffle: bool = True,
        min_share: int = 2,
    ):
        if batch_size < world * min_share:
            raise InputError(
                f"batch_size={batch_size}: must be at least {min_share} per rank x {world} ranks"
            )
        if n < world * min_share:
            raise InputError(
                f"{n} training samples: fewer than {min_share} per rank x {world} ranks"
            )
        self.n, self.batch_size, self.world, self.rank = n, batch_size, world, rank
        self.seed, self.shuffle, self.min_share, self.epoch = seed, shuffle, min_share, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _cuts(self) -> list[int]:
        cuts = list(range(self.batch_size, self.n, self.batch_size))
        if cuts and self.n - cuts[-1] < self.world * self.min_share:
            cuts.pop()  # the tail joins the batch before it
        return cuts

    def global_batches(self) -> list[np.ndarray]:
        """This epoch's global batches (sample indices), the same on every rank."""
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(self.n)
        else:
            order = np.arange(self.n)
        return np.split(order, self._cuts())

    def __iter__(self):
        for batch in self.global_batches():
            yield np.array_split(batch, self.world)[self.rank].tolist()

    def __len__(self) -> int:
        return len(self._cuts()) + 1

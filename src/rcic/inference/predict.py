"""Prediction: per-well logits with test-time augmentation over the 8 flips/rotations and both sites."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy.special import log_softmax
from torch.utils.data import DataLoader
from tqdm import tqdm

from rcic.data.packing import part_mask, part_sites
from rcic.data.store import SiteStore
from rcic.errors import InputError
from rcic.inference.calibration import fit_temperature
from rcic.inference.logitsfile import part_label, write_logits
from rcic.training.batches import (
    BatchTransform,
    SiteDataset,
    cache_fits,
    collate_batch,
    plate_norm_stats,
)
from rcic.training.config import TrainConfig
from rcic.training.distributed import gather_to_main, set_threads, setup_distributed
from rcic.training.infer import infer, resolve_device, sum_by_well
from rcic.training.models import RcicModel
from rcic.training.precision import use_bf16
from rcic.training.runs import RunFolder, load_checkpoint
from rcic.training.samples import split_sites, store_rows

log = logging.getLogger(__name__)


def predict_logits(
    model: RcicModel, cfg: TrainConfig, sites: pd.DataFrame, st: SiteStore, **options
) -> dict[str, np.ndarray]:
    """Per-well logits (and embeddings) of `sites`, wells in id order; `options` as
    `predict_chunks` takes them."""
    return _joined_wells(list(predict_chunks(model, cfg, sites, st, **options)))


def predict_chunks(
    model: RcicModel,
    cfg: TrainConfig,
    sites: pd.DataFrame,
    st: SiteStore,
    *,
    views: int = 8,
    combine: str = "mean",
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    embeddings: bool = False,
    progress: bool = True,
) -> Iterator[dict[str, np.ndarray]]:
    """Per-well logits: mean over the first `views` dihedral views the store allows (all 8 but for an
    aligned cell store, `SiteStore.views`) and the well's sites; with `embeddings`, the embeddings
    too. Yielded one chunk of whole plates at a time (`plate_chunks`), chunks in plate order, wells
    in id order within each: a writer that takes them as they come holds one chunk's outputs,
    never the split's.

    Args:
        combine: ``mean`` of logits, or ``logprob``: mean of log-softmax outputs.
    """
    if combine not in ("mean", "logprob"):
        raise InputError(f"combine {combine!r}: expected mean or logprob")
    device = torch.device(device)
    rows = store_rows(st, sites).sort_values(["experiment", "plate"], kind="stable")
    rows = rows.reset_index(drop=True)
    if rows.empty:
        raise InputError(f"{st.path}: holds no packed site of the {len(sites)} sites to predict")
    stats = _norm_stats(model, cfg, st, rows)
    model = model.to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    run = _Inference(model, cfg, st, device, st.views[:views], batch_size, embeddings)
    chunks = plate_chunks(rows, CHUNK_SITES)
    for chunk in tqdm(chunks, desc="predicting", unit="chunk", disable=not progress):
        part = rows.iloc[chunk].reset_index(drop=True)
        res = run(part, stats[chunk])
        per_site = res["logits"] if combine == "mean" else log_softmax(res["logits"], axis=1)
        frame = part.iloc[res["rows"]].reset_index(drop=True)
        yield _per_well(frame, per_site, res.get("embedding"))


CHUNK_SITES = 4096  # sites predicted at once (whole plates): what bounds the per-site arrays


def plate_chunks(rows: pd.DataFrame, max_sites: int) -> list[np.ndarray]:
    """Row positions in chunks of whole plates, each closed once it holds `max_sites` sites (a
    plate larger than that is a chunk of its own): per-site outputs live one chunk at a time."""
    chunks, first = [], 0
    for end in _plate_spans(rows)[1]:
        if end - first >= max_sites:
            chunks.append(np.arange(first, end))
            first = end
    if first < len(rows):
        chunks.append(np.arange(first, len(rows)))
    return chunks


@dataclass
class _Inference:
    """The model and settings one chunk of sites is predicted with."""

    model: RcicModel
    cfg: TrainConfig
    st: SiteStore
    device: torch.device
    views: tuple[int, ...]
    batch_size: int
    embeddings: bool

    def __call__(self, rows: pd.DataFrame, stats: np.ndarray) -> dict[str, np.ndarray]:
        cache = cache_fits(self.st, len(rows), self.cfg.cache_mb)
        dataset = SiteDataset(self.st, rows, rows["sirna"].to_numpy(), stats, cache=cache)
        loader = DataLoader(
            dataset, batch_sampler=plate_batches(rows, self.batch_size), collate_fn=collate_batch
        )
        return infer(
            self.model,
            loader,
            BatchTransform(self.cfg.image_size or self.st.size),
            self.device,
            views=self.views,
            amp=use_bf16(self.device, self.cfg.amp, self.cfg.deterministic),
            channels_last=self.cfg.channels_last,
            embeddings=self.embeddings,
        )


def plate_batches(rows: pd.DataFrame, batch_size: int) -> list[list[int]]:
    """Batches of at most `batch_size` consecutive rows that never span two plates, so a plate's
    sites meet the model in the same batches whichever other plates are predicted with it: a part
    of the screen (`--part`) gives the numbers one pass over it gives."""
    starts, ends = _plate_spans(rows)
    return [
        list(range(b, min(b + batch_size, end)))
        for start, end in zip(starts, ends, strict=True)
        for b in range(start, end, batch_size)
    ]


def _plate_spans(rows: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Start and end positions of each run of consecutive rows of one plate."""
    plate = (rows["experiment"].astype(str) + "/" + rows["plate"].astype(str)).to_numpy()
    starts = np.flatnonzero(np.r_[True, plate[1:] != plate[:-1]])
    return starts, np.r_[starts[1:], len(rows)].astype(int)


def _norm_stats(model, cfg: TrainConfig, st: SiteStore, rows: pd.DataFrame) -> np.ndarray:
    """Normalisation statistics of `rows`; with ``global``, the pool the model was trained with."""
    if cfg.normalisation != "global":
        return plate_norm_stats(st, cfg.normalisation, rows)
    pooled = getattr(model, "global_stats", None)
    if pooled is None:
        raise InputError(
            "normalisation=global: the checkpoint does not record the training statistics "
            "(written by an older rcic); train the model again"
        )
    return np.broadcast_to(np.asarray(pooled, np.float32), (len(rows), 6, 2)).copy()


def _per_well(
    frame: pd.DataFrame, per_site: np.ndarray, embedding: np.ndarray | None
) -> dict[str, np.ndarray]:
    codes, inverse = np.unique(frame["id_code"].to_numpy(), return_inverse=True)
    counts = np.bincount(inverse).astype(np.float32)[:, None]
    logits = sum_by_well(inverse, len(codes), [per_site])
    first = frame.groupby(inverse).head(1).sort_values("id_code")
    out = {
        "id_code": codes,
        "logits": logits / counts,
        "experiment": first["experiment"].to_numpy(str),
        "plate": first["plate"].to_numpy(np.int64),
        "well": first["well"].to_numpy(str),
        "cell_type": first["cell_type"].to_numpy(str),
        "sirna": first["sirna"].to_numpy(np.int64),
        "n_sites": counts[:, 0].astype(np.int64),
    }
    if embedding is not None:
        out["embedding"] = sum_by_well(inverse, len(codes), [embedding]) / counts
    return out


@dataclass
class InferenceOptions:
    """How `rcic predict` and `rcic embed` apply a run's model: its `checkpoint` (best, last or a
    path), the first `views` of the 8 flips/rotations (over both sites), `batch_size`, `device`
    (auto, cpu, cuda), CPU `threads` (0: this process's share of the cores), a progress bar, and
    the `part` of the split's plates to predict."""

    checkpoint: str = "best"
    views: int = 8
    batch_size: int = 64
    device: str = "auto"
    threads: int = 0
    progress: bool = True
    part: tuple[int, int] | None = None
    """(K, N): only the plates dealt to part K of N (`rcic.data.packing.part_mask`)."""


@dataclass
class _Prediction:
    res: dict[str, np.ndarray] | None  # per-well arrays from predict_logits (None off rank 0)
    chosen: pd.DataFrame  # the split's sites
    cfg: TrainConfig
    st: SiteStore
    held_out: list[str] | None  # as the run recorded them
    model: str  # the checkpoint's digest: which parts belong to one model
    main: bool = True  # this process writes the output (rank 0 under torchrun)
    chunks: Iterator[dict[str, np.ndarray]] | None = None  # with stream: res chunk by chunk

    def pieces(self) -> Iterator[dict[str, np.ndarray]]:
        """The per-well arrays as they come: chunk by chunk when streamed, else all at once."""
        return self.chunks if self.chunks is not None else iter([self.res])


def predict_split(
    run, sites, store, split, options: InferenceOptions, *, treatments_only, stream=False, **kw
):
    """Load a run's checkpoint and predict one split of `sites` as `options` say; `kw` goes to
    predict_logits. Under torchrun each rank predicts the plates dealt to it and rank 0 gathers
    them into the result one process would have (the other ranks get ``res`` None). `stream`: in
    one process, ``chunks`` yields the result one chunk of plates at a time (``res`` stays None)
    as the caller consumes it."""
    ctx = setup_distributed(options.device) if _launched_by_torchrun() else None
    set_threads(options.threads)
    device = ctx.device if ctx else resolve_device(options.device)
    model, cfg = load_checkpoint(run, options.checkpoint, device)
    held_out = RunFolder(run).held_out()
    chosen = split_sites(sites, split, cfg, treatments_only, held_out=held_out)
    chosen = part_sites(chosen, options.part, "split")
    st = SiteStore(store)
    RunFolder(run).check_store_kind(st.kind, st.path)
    o = options
    main = ctx is None or ctx.main
    kw.update(views=o.views, batch_size=o.batch_size, progress=o.progress and main)
    # only the process that writes the output records the model (the digest reads the whole file)
    digest = RunFolder(run).checkpoint_digest(options.checkpoint) if main else ""
    if stream and ctx is None:
        chunks = predict_chunks(model, cfg, chosen, st, device=device, **kw)
        return _Prediction(None, chosen, cfg, st, held_out, digest, chunks=chunks)
    share = chosen if ctx is None else chosen[part_mask(chosen, (ctx.rank + 1, ctx.world))]
    res = predict_logits(model, cfg, share, st, device=device, **kw) if len(share) else None
    if ctx is not None:  # every rank takes part in the gather; rank 0 joins the shares
        shares = gather_to_main(res, ctx)
        res = _joined_wells(shares) if main else None
    return _Prediction(res, chosen, cfg, st, held_out, digest, main)


def _launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def _joined_wells(shares: list[dict | None]) -> dict[str, np.ndarray]:
    """The ranks' per-well arrays as one, wells in id order (as one process orders them)."""
    shares = [s for s in shares if s is not None]
    joined = {k: np.concatenate([s[k] for s in shares]) for k in shares[0]}
    order = np.argsort(joined["id_code"], kind="stable")
    return {k: v[order] for k, v in joined.items()}


def predict_run(
    run: str | Path,
    sites: pd.DataFrame,
    store: str | Path,
    split: str,
    out: str | Path,
    options: InferenceOptions | None = None,
    *,
    combine: str = "mean",
    temperature: float | None = None,
) -> Path:
    """Predict one split of a dataset with a run's checkpoint and write a logits file.

    On a fold split (held-out experiments with labels) the temperature is fitted and stored;
    otherwise `temperature` (for example from a fold's file) is stored if given.
    """
    options = options or InferenceOptions()
    if options.part is not None and split not in ("test", "train") and temperature is None:
        raise InputError(
            f"--part on fold {split}: the temperature is fitted once on the whole held-out fold; "
            "predict the fold in one pass, or give every part its --temperature (--temperature-from)"
        )
    pr = predict_split(run, sites, store, split, options, treatments_only=True, combine=combine)
    if not pr.main:
        return Path(out)  # rank 0 writes the file
    res = pr.res
    if split not in ("test", "train") and temperature is None:
        temperature = fit_temperature(res["logits"], res["sirna"])
        log.info("fitted temperature %.3f on %d held-out wells", temperature, len(res["id_code"]))
    return write_logits(
        out,
        res.pop("id_code"),
        res.pop("logits"),
        temperature=temperature,
        source=str(run),
        checkpoint=options.checkpoint,
        views=options.views,
        **part_fields(pr, options),
        **res,
    )


def part_fields(pr: _Prediction, options: InferenceOptions) -> dict:
    """What an output records so that its parts can be joined: the model's digest, and the part."""
    return {"model": pr.model, "part": part_label(options.part) if options.part else None}

"""Test-time augmentation: a model run over a DataLoader with its test-time views (dihedral turns
of each site), summed per well. Shared by validation and prediction."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from tqdm import tqdm

from rcic.training.batches import BatchTransform, dihedral
from rcic.training.precision import autocast


def resolve_device(device: str) -> str:
    """``auto`` -> cuda when available, else cpu."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


@torch.no_grad()
def infer(
    model,
    loader,
    transform: BatchTransform,
    device: torch.device,
    views: Sequence[int] = (0,),
    amp: bool = True,
    channels_last: bool = True,
    progress: bool = False,
    embeddings: bool = False,
) -> dict[str, np.ndarray]:
    """Mean over `views` (indices of the 8 flips/rotations) of each sample's logits (and embedding).

    Returns ``rows`` (the dataset positions, in loader order), ``logits`` (N, K) float32 and, with
    `embeddings`, ``embedding`` (N, D).
    """
    model.eval()
    n = len(loader.dataset)
    rows = np.empty(n, np.int64)
    logits = embs = None  # filled batch by batch: one (N, K) array, no list of copies
    done = 0
    for batch in tqdm(loader, desc="predicting", unit="batch", disable=not progress):
        x = transform(batch["image"].to(device), batch["stats"].to(device), train=False)
        cell_type = batch["cell_type"].to(device)
        acc_logit, acc_emb = 0.0, 0.0
        for k in views:
            xv = dihedral(x, k)
            if channels_last:
                xv = xv.contiguous(memory_format=torch.channels_last)
            with autocast(device, amp):
                out = model(xv, cell_type)
            acc_logit = acc_logit + out["logits"].float()
            if embeddings:
                acc_emb = acc_emb + out["embedding"].float()
        b = len(batch["row"])
        rows[done : done + b] = batch["row"].numpy()
        if logits is None:
            logits = np.empty((n, acc_logit.shape[1]), np.float32)
        logits[done : done + b] = (acc_logit / len(views)).cpu().numpy()
        if embeddings:
            if embs is None:
                embs = np.empty((n, acc_emb.shape[1]), np.float32)
            embs[done : done + b] = (acc_emb / len(views)).cpu().numpy()
        done += b
    result = {"rows": rows[:done], "logits": _filled(logits, done)}
    if embeddings:
        result["embedding"] = _filled(embs, done)
    return result


def _filled(a: np.ndarray | None, n: int) -> np.ndarray:
    return a[:n] if a is not None else np.zeros((0, 0), np.float32)


def sum_by_well(well: np.ndarray, n_wells: int, blocks: list[np.ndarray]) -> np.ndarray:
    """Per-site rows summed per well, float32: row i of the concatenated `blocks` (given in pieces,
    so gathered shards need no concatenated copy) is added to row `well[i]` of the result."""
    width = max((b.shape[1] for b in blocks if len(b)), default=0)
    out = np.zeros((n_wells, width), np.float32)
    start = 0
    for b in blocks:
        if len(b):  # a rank's shard may be empty
            np.add.at(out, well[start : start + len(b)], b)
        start += len(b)
    return out

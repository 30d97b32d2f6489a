"""Running a model over a DataLoader with test-time views; shared by validation and prediction."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext

import numpy as np
import torch
from tqdm import tqdm

from rcic.data import BatchTransform, dihedral


def resolve_device(device: str) -> str:
    """``auto`` -> cuda when available, else cpu."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def autocast(device: torch.device, enabled: bool):
    """bf16 autocast where the device supports it (CPU, and GPUs of compute capability 8+)."""
    if not enabled:
        return nullcontext()
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


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
    rows, logits, embs = [], [], []
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
        rows.append(batch["row"].numpy())
        logits.append((acc_logit / len(views)).cpu().numpy())
        if embeddings:
            embs.append((acc_emb / len(views)).cpu().numpy())
    result = {"rows": np.concatenate(rows), "logits": np.concatenate(logits).astype(np.float32)}
    if embeddings:
        result["embedding"] = np.concatenate(embs).astype(np.float32)
    return result

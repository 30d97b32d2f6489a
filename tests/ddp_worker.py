"""Run by torchrun in test_train.py: one data-parallel gradient step, written by rank 0.

BatchNorm layers use their running statistics (eval mode) so the gradient of a half batch on each
rank, averaged by DDP, must equal the gradient of the whole batch in one process.
"""

import sys

import torch
from torch.nn.parallel import DistributedDataParallel

from rcic import config, metadata, train
from rcic.data import BatchTransform
from rcic.models import build_model, compute_loss
from rcic.store import SiteStore


def first_batch_gradient(data, store_path, ctx):
    cfg = config.TrainConfig(
        batch_size=16,
        flips=False,
        zoom=(1.0, 1.0),
        intensity_jitter=0.0,
        amp=False,
        channels_last=False,
        seed=1,
    )
    st = SiteStore(store_path)
    samples = train.select_samples(metadata.load_metadata(data), st, cfg)
    loader, _, sampler = train._loaders(cfg, ctx, st, samples, st.size)
    sampler.set_epoch(0)
    batch = next(iter(loader))
    torch.manual_seed(0)
    model = build_model(cfg)
    model.train()
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.eval()
    wrapped = DistributedDataParallel(model) if ctx.world > 1 else model
    x = BatchTransform(st.size)(batch["image"], batch["stats"], train=False)
    out = wrapped(x, batch["cell_type"])
    compute_loss(out, batch["label"], batch["label"], 1.0, cfg).backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    rows = samples.train_rows.iloc[batch["row"].numpy()][["id_code", "site"]].to_numpy().tolist()
    return grads, rows


if __name__ == "__main__":
    data, store_path, out = sys.argv[1:4]
    ctx = train.setup_distributed("cpu")
    grads, rows = first_batch_gradient(data, store_path, ctx)
    gathered = [None] * ctx.world
    torch.distributed.all_gather_object(gathered, rows)
    if ctx.main:
        torch.save(
            {"grads": grads, "rows": [r for part in gathered for r in part], "world": ctx.world},
            out,
        )
    torch.distributed.destroy_process_group()

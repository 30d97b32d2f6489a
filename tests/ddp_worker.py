"""Run by torchrun in test_train.py. Mode ``grad``: one data-parallel gradient step, written by
rank 0; BatchNorm layers use their running statistics (eval mode) so the gradient of a half batch
on each rank, averaged by DDP, must equal the gradient of the whole batch in one process. Mode
``epoch``: the training sites every rank draws in one epoch, and the held-out metrics each rank
computes from its shard of the validation sites (gathered), written by rank 0.
"""

import sys

import torch
from torch.nn.parallel import DistributedDataParallel

from rcic.data import metadata
from rcic.data.store import SiteStore
from rcic.training import config, distributed, samples, train
from rcic.training.batches import BatchTransform
from rcic.training.models import build_model, compute_loss


def _cfg(**kw):
    return config.TrainConfig(
        **{"batch_size": 16, **kw},
        flips=False,
        zoom=(1.0, 1.0),
        intensity_jitter=0.0,
        amp=False,
        channels_last=False,
        seed=1,
    )


def first_batch_gradient(data, store_path, ctx):
    cfg = _cfg()
    st = SiteStore(store_path)
    chosen = samples.select_samples(metadata.load_metadata(data), st, cfg)
    loaders = train.make_loaders(cfg, ctx, st, chosen)
    loader, sampler = loaders.train, loaders.sampler
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
    rows = chosen.train_rows.iloc[batch["row"].numpy()][["id_code", "site"]].to_numpy().tolist()
    return grads, rows


def one_epoch(data, store_path, ctx, batch_size: int):
    """(sample indices this rank draws in epoch 0, steps, held-out metrics of a fixed model)."""
    cfg = _cfg(batch_size=batch_size)
    st = SiteStore(store_path)
    chosen = samples.select_samples(metadata.load_metadata(data), st, cfg)
    loaders = train.make_loaders(cfg, ctx, st, chosen)
    loader, val_loader, sampler = loaders.train, loaders.val, loaders.sampler
    sampler.set_epoch(0)
    drawn = [i for batch in sampler for i in batch]
    torch.manual_seed(0)
    model = build_model(cfg)
    val = train.validate(model, val_loader, BatchTransform(st.size), chosen.val_rows, ctx, cfg)
    return drawn, len(loader), val, len(chosen.train_rows)


if __name__ == "__main__":
    mode, data, store_path, out = sys.argv[1:5]
    ctx = distributed.setup_distributed("cpu")
    if mode == "grad":
        grads, rows = first_batch_gradient(data, store_path, ctx)
        result = {"grads": grads}
    else:
        rows, steps, val, n = one_epoch(data, store_path, ctx, int(sys.argv[5]))
        result = {"steps": steps, "val": val, "n": n}
    gathered = [None] * ctx.world
    torch.distributed.all_gather_object(gathered, rows)
    steps = [None] * ctx.world
    torch.distributed.all_gather_object(steps, result.get("steps"))
    if ctx.main:
        result |= {
            "rows": [r for part in gathered for r in part],
            "world": ctx.world,
            "all_steps": steps,
        }
        torch.save(result, out)
    torch.distributed.destroy_process_group()

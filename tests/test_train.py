import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from rcic import layout
from rcic.data import metadata
from rcic.data.store import StoreError
from rcic.errors import InputError
from rcic.training import batches as data
from rcic.training import config, distributed, models, optim, precision, runs, samples, train
from rcic.training.config import ConfigError

from .conftest import torchrun

FAST = [
    "epochs=2",
    "batch_size=32",
    "embedding_dim=64",
    "lr=0.003",
    "warmup_epochs=0.2",
    "folds=4",
    "fold=0",
]


def _cfg(*extra):
    return config.load_config(None, FAST + list(extra))


def _metrics(run):
    return [json.loads(line) for line in (Path(run) / "metrics.jsonl").read_text().splitlines()]


def test_training_reduces_loss_and_leaves_a_run_folder(tiny_sites, tiny_store, tmp_path):
    cfg = _cfg("epochs=4", "val_every=3")
    row = train.train(cfg, tiny_sites, tiny_store, tmp_path / "run", progress=False)
    m = _metrics(tmp_path / "run")
    assert [r["epoch"] for r in m] == [1, 2, 3, 4]
    assert ["val" in r for r in m] == [False, False, True, True]  # every 3rd epoch, and the last
    # the loss falls every epoch, by a tenth at least (the tiny screen's labels live in arrangement)
    assert all(r["loss"] < m[0]["loss"] for r in m[1:]) and m[-1]["loss"] < 0.9 * m[0]["loss"]
    for name in (
        "config.yaml",
        "env.json",
        "split.json",
        "train.log",
        "checkpoints/last.pt",
        "checkpoints/best.pt",
    ):
        assert (tmp_path / "run" / name).exists(), name
    assert config.load_config(tmp_path / "run" / "config.yaml") == cfg
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=False)
    assert {"model", "optimizer", "scheduler", "epoch", "rng", "config"} <= set(ckpt)
    assert ckpt["epoch"] == 4
    # best.pt: the first scored epoch with the highest held-out accuracy, the file `last` was then
    best_epoch = 3 if m[2]["val"]["overall"] >= m[3]["val"]["overall"] else 4
    best = torch.load(tmp_path / "run" / "checkpoints" / "best.pt", weights_only=False)
    assert best["epoch"] == best_epoch
    assert best["best"] == max(r["val"]["overall"] for r in m[2:])
    linked = (tmp_path / "run" / "checkpoints" / f"{n}.pt" for n in ("best", "last"))
    assert os.path.samefile(*linked) == (best_epoch == 4)
    assert set(row["val"]["cell_type"]) <= set(layout.CELL_TYPES)
    assert "held-out accuracy" in (tmp_path / "run" / "train.log").read_text()


def test_resume_equals_uninterrupted(tiny_sites, tiny_store, tmp_path):
    cfg = _cfg("deterministic=true", "epochs=2", "mixup=0.4")
    train.train(cfg, tiny_sites, tiny_store, tmp_path / "full", progress=False)
    train.train(cfg, tiny_sites, tiny_store, tmp_path / "cut", progress=False, stop_after_epoch=1)
    assert _metrics(tmp_path / "cut")[-1]["epoch"] == 1
    train.train(cfg, tiny_sites, tiny_store, tmp_path / "cut", resume=True, progress=False)
    a = torch.load(tmp_path / "full" / "checkpoints" / "last.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "cut" / "checkpoints" / "last.pt", weights_only=False)["model"]
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert [r["loss"] for r in _metrics(tmp_path / "full")] == [
        r["loss"] for r in _metrics(tmp_path / "cut")
    ]


def _weights(run) -> dict:
    return torch.load(Path(run) / "checkpoints" / "last.pt", weights_only=True)["model"]


def test_deterministic_training_gives_the_same_bits_when_two_share_the_cores(
    tiny_screen, tiny_store, tmp_path
):
    """Two `rcic train` processes with the same seed, at once on the same cores (the contention that
    made bf16 CPU runs differ): identical weights, losses and accuracies, computed in fp32."""
    runs = [tmp_path / "a", tmp_path / "b"]
    base = [
        "train",
        "--data",
        str(tiny_screen),
        "--store",
        str(tiny_store),
        *FAST,
        "deterministic=true",
        "amp=true",
    ]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "rcic.cli", *base, "--out", str(r)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in runs
    ]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-2000:]
    a, b = _weights(runs[0]), _weights(runs[1])
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    untimed = [
        [{k: v for k, v in row.items() if k != "images_per_s"} for row in _metrics(r)] for r in runs
    ]
    assert untimed[0] == untimed[1] and len(untimed[0]) == 2
    env_json = json.loads((runs[0] / "env.json").read_text())
    assert env_json["bf16"] is False and env_json["cpu_threads"] >= 1


def test_bf16_only_where_asked_and_not_on_a_deterministic_cpu_run():
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert precision.use_bf16(cpu, amp=True, deterministic=False)
    assert not precision.use_bf16(cpu, amp=True, deterministic=True)
    assert not precision.use_bf16(cpu, amp=False, deterministic=False)
    assert not precision.use_bf16(cpu, amp="auto", deterministic=False)  # fp32: no collapse
    # CUDA kernels have their own switch
    assert precision.use_bf16(gpu, amp=True, deterministic=True)
    assert precision.use_bf16(gpu, amp="auto", deterministic=False)
    assert not precision.use_bf16(gpu, amp=False, deterministic=False)


@pytest.mark.parametrize("optimizer", ["adamw", "adam", "sgd"])
def test_weight_decay_reaches_the_weights_only(optimizer):
    """Convolution and linear weights are decayed; biases and norm parameters are not, and every
    parameter is in exactly one of the two groups."""
    cfg = _cfg("backbone=resnet10t", f"optimizer={optimizer}", "weight_decay=0.5")
    model = models.build_model(cfg)
    decay, no_decay = optim.make_optimizer(model, cfg).param_groups
    assert decay["weight_decay"] == 0.5 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim > 1 for p in decay["params"])
    assert all(p.ndim == 1 for p in no_decay["params"])
    grouped = {id(p) for p in decay["params"] + no_decay["params"]}
    assert len(grouped) == len(decay["params"]) + len(no_decay["params"])
    assert grouped == {id(p) for p in model.parameters()}


def test_threads_follow_the_cores_given(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    assert distributed.cpu_threads() == 4
    assert distributed.cpu_threads(num_workers=1) == 3  # a core for the DataLoader worker
    assert distributed.cpu_threads(3) == 3  # asked for: taken as given
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # two ranks on this machine share the cores
    assert distributed.cpu_threads() == 2
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    assert distributed.cpu_threads() == 1
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # set by the user or torchrun: honoured
    assert distributed.cpu_threads() == 3 and distributed.cpu_threads(num_workers=1) == 3
    before = torch.get_num_threads()
    try:
        assert distributed.set_threads(2) == 2 and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    with pytest.raises(ConfigError, match="threads"):
        _cfg("threads=-1")


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_tiny_site_training_stays_finite_for_any_seed(tiny_sites, tiny_store, tmp_path, seed):
    cfg = _cfg(
        "epochs=1",
        f"seed={seed}",
        "deterministic=true",
        "lr=0.002",
        "batch_size=64",
        "embedding_dim=32",
        "warmup_epochs=1",
    )
    row = train.train(cfg, tiny_sites, tiny_store, tmp_path / "run", progress=False)
    assert np.isfinite(row["loss"]) and 0 <= row["val"]["overall"] <= 1
    assert all(
        torch.isfinite(v).all()
        for v in _weights(tmp_path / "run").values()
        if v.is_floating_point()
    )


def test_folds_hold_out_whole_experiments(tiny_sites, tiny_store):
    from rcic.data.store import SiteStore

    wells = metadata.wells_of(tiny_sites)
    fold_of = samples.make_folds(wells, 4, seed=0)
    assert set(fold_of) == set(wells.loc[wells.split == "train", "experiment"])
    for fold in range(4):
        s = samples.select_samples(tiny_sites, SiteStore(tiny_store), _cfg(f"fold={fold}"))
        assert not set(s.train_rows.experiment) & set(s.val_rows.experiment)
        assert set(s.val_rows.experiment) == {e for e, f in fold_of.items() if f == fold}
    # balanced across cell types: each fold holds out at most one more experiment of a cell type than another
    counts = (
        wells[wells.split == "train"]
        .drop_duplicates("experiment")
        .assign(fold=lambda t: t.experiment.map(fold_of))
    )
    per = counts.groupby(["cell_type", "fold"]).size().unstack(fill_value=0)
    assert (per.max(axis=1) - per.min(axis=1) <= 1).all()


def test_controls_and_pseudo_labels_are_training_data(tiny_sites, tiny_store, tmp_path):
    from rcic.data.store import SiteStore

    st = SiteStore(tiny_store)
    with_ctrl = samples.select_samples(tiny_sites, st, _cfg())
    test_ctrl = with_ctrl.train_rows[(with_ctrl.train_rows.split == "test")]
    assert len(test_ctrl) and (test_ctrl.well_type != "treatment").all()
    assert (with_ctrl.train_labels >= layout.N_TREATMENTS).any()
    without = samples.select_samples(tiny_sites, st, _cfg("use_controls=false"))
    assert (without.train_labels < layout.N_TREATMENTS).all()
    test_treat = tiny_sites[
        (tiny_sites.split == "test") & (tiny_sites.well_type == "treatment")
    ].drop_duplicates("id_code")
    pseudo = test_treat[["id_code"]].iloc[:5].assign(sirna=7)
    pseudo.to_csv(tmp_path / "p.csv", index=False)
    got = samples.select_samples(tiny_sites, st, _cfg(), pseudo)
    added = got.train_rows.id_code.isin(pseudo.id_code)
    assert added.sum() == 10 and (got.train_labels[added.to_numpy()] == 7).all()


@pytest.mark.parametrize("head", ["softmax", "arcface", "both"])
def test_heads_and_mixing_give_valid_losses(head):
    cfg = _cfg(f"head={head}", "backbone=resnet10t")
    model = models.build_model(cfg)
    x = torch.randn(6, 6, 32, 32)
    labels = torch.tensor([0, 5, 1108, 1138, 3, 3])
    gen = torch.Generator().manual_seed(0)
    for mixup, cutmix in [(0, 0), (0.4, 0), (0, 1.0)]:
        xm, ya, yb, lam = data.mix_batch(x, labels, mixup, cutmix, gen)
        assert 0 <= lam <= 1
        loss = models.compute_loss(model(xm, torch.zeros(6, dtype=torch.long)), ya, yb, lam, cfg)
        assert torch.isfinite(loss) and loss > 0
        loss.backward()
    # the margin makes the ArcFace loss larger than plain scaled-cosine cross-entropy on the true class
    cos = torch.rand(4, 10) * 2 - 1
    y = torch.tensor([1, 2, 3, 4])
    plain = torch.nn.functional.cross_entropy(cos * 30, y)
    assert models.arcface_loss(cos, y, 30.0, 0.3) > plain


def test_cutmix_pastes_a_box():
    x = torch.zeros(4, 6, 16, 16)
    x[1] = 1.0
    labels = torch.arange(4)
    out, ya, yb, lam = data.mix_batch(x, labels, 0.0, 1.0, torch.Generator().manual_seed(3))
    changed = (out != x).any(dim=1)  # (B, H, W)
    assert 0 < lam < 1 or changed.sum() == 0
    for i in range(4):
        frac = 1 - changed[i].float().mean().item()
        if yb[i] != ya[i] and x[yb[i]].ne(x[i]).any():
            assert abs(frac - lam) < 1e-6


@pytest.mark.parametrize(
    "overrides,error,message",
    [
        (["backbon=resnet18"], ConfigError, "unknown config key"),
        (["backbone=resnet81"], ConfigError, "timm has no such model"),
        (["backbone=densenet121", "image_size=16"], ConfigError, "cannot take a 6x16x16 input"),
        (["image_size=512"], ConfigError, "larger than the store"),
        (["head=cosface"], ConfigError, "head="),
    ],
)
def test_bad_input_fails_before_training(
    tiny_sites, tiny_store, tmp_path, overrides, error, message
):
    with pytest.raises(error, match=message):
        train.train(
            config.load_config(None, FAST + overrides),
            tiny_sites,
            tiny_store,
            tmp_path / "run",
            progress=False,
        )
    assert not (tmp_path / "run" / "checkpoints" / "last.pt").exists()


def test_store_that_does_not_match_fails_before_training(tiny_sites, tiny_store, tmp_path):
    other = tiny_sites.copy()
    other.loc[other.index[:4], "id_code"] = "HEPG2-99_1_B02"
    with pytest.raises(StoreError, match="does not match the metadata"):
        train.train(_cfg(), other, tiny_store, tmp_path / "run", progress=False)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(
    tiny_sites, tiny_store, tmp_path, monkeypatch
):
    real = models.compute_loss
    calls = {"n": 0}

    def poisoned(*args):
        calls["n"] += 1
        loss = real(*args)
        return loss * float("nan") if calls["n"] > 20 else loss

    monkeypatch.setattr(train, "compute_loss", poisoned)
    with pytest.raises(train.TrainingError, match="NaN") as err:
        train.train(_cfg("epochs=4"), tiny_sites, tiny_store, tmp_path / "run", progress=False)
    assert "last good checkpoint" in str(err.value)
    good = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=False)
    assert good["epoch"] >= 1
    assert all(torch.isfinite(v).all() for v in good["model"].values() if v.is_floating_point())


def test_stem_pool_false_doubles_the_feature_map():
    """stem_pool=false drops a resnet's stem max-pool: the last feature map is twice as wide; a
    backbone without one is refused by name."""

    def last_map(*extra):
        model = models.build_model(_cfg("backbone=resnet10t", *extra)).eval()
        with torch.no_grad():
            return model.backbone.forward_features(torch.zeros(1, 6, 64, 64)).shape[-1]

    assert last_map("stem_pool=false") == 2 * last_map()
    with pytest.raises(ConfigError, match="efficientnet_lite0.*no stem max-pool"):
        models.build_model(_cfg("backbone=efficientnet_lite0", "stem_pool=false"))


def test_local_weights_file_with_rgb_stem(tmp_path):
    import timm

    rgb = timm.create_model("resnet10t", num_classes=10)
    torch.save(rgb.state_dict(), tmp_path / "rgb.pth")
    model = models.build_model(_cfg("backbone=resnet10t", f"weights={tmp_path / 'rgb.pth'}"))
    stem = model.backbone.state_dict()["conv1.0.weight"]
    assert stem.shape[1] == 6
    # the 6-channel stem is the RGB stem repeated and rescaled (timm's adapt_input_conv)
    torch.testing.assert_close(stem[:, :3] * 2, rgb.state_dict()["conv1.0.weight"])
    torch.testing.assert_close(
        model.backbone.state_dict()["layer1.0.conv1.weight"],
        rgb.state_dict()["layer1.0.conv1.weight"],
    )
    with pytest.raises(InputError, match="junk.pth: not a weights file rcic can load safely"):
        (tmp_path / "junk.pth").write_bytes(b"junk")
        models.build_model(_cfg(f"weights={tmp_path / 'junk.pth'}"))


def test_ddp_gradient_matches_single_process(tiny_screen, tiny_store, tmp_path):
    from . import ddp_worker

    single, rows = ddp_worker.first_batch_gradient(tiny_screen, tiny_store, distributed.Dist())
    res = torchrun(
        [
            str(Path(ddp_worker.__file__)),
            "grad",
            str(tiny_screen),
            str(tiny_store),
            str(tmp_path / "g.pt"),
        ],
        tmp_path,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    dist = torch.load(tmp_path / "g.pt", weights_only=False)
    assert dist["world"] == 2
    assert sorted(map(tuple, dist["rows"])) == sorted(map(tuple, rows))  # the same global batch
    for name, g in single.items():
        torch.testing.assert_close(dist["grads"][name], g, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize(
    "n,batch,world",
    [(64, 16, 1), (65, 16, 2), (67, 16, 3), (33, 32, 2), (100, 7, 3), (5, 64, 2), (47, 12, 4)],
)
def test_every_sample_once_per_epoch_across_ranks(n, batch, world):
    steps, orders = set(), []
    for epoch in (0, 1):
        drawn = []
        for rank in range(world):
            sampler = data.EpochBatches(n, batch, world, rank, seed=3)
            sampler.set_epoch(epoch)
            batches = list(sampler)
            assert len(batches) == len(sampler)
            steps.add(len(batches))
            assert all(len(b) >= 2 for b in batches)  # BatchNorm needs two samples per rank
            drawn += [i for b in batches for i in b]
        assert sorted(drawn) == list(range(n))  # each sample exactly once, nothing padded
        orders.append(drawn)
    assert len(steps) == 1  # every rank runs the same number of steps (DDP needs it)
    assert orders[0] != orders[1]  # reshuffled each epoch


def test_torchrun_epoch_covers_every_site_and_validation_is_gathered(
    tiny_screen, tiny_store, tmp_path
):
    from . import ddp_worker

    batch = 24  # does not divide the training sites
    _, steps, single_val, n = ddp_worker.one_epoch(
        tiny_screen, tiny_store, distributed.Dist(), batch
    )
    assert n % batch != 0
    res = torchrun(
        [
            str(Path(ddp_worker.__file__)),
            "epoch",
            str(tiny_screen),
            str(tiny_store),
            str(tmp_path / "e.pt"),
            str(batch),
        ],
        tmp_path,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    got = torch.load(tmp_path / "e.pt", weights_only=False)
    assert got["world"] == 2
    assert sorted(got["rows"]) == list(range(n))  # every training site once across both ranks
    assert got["all_steps"] == [steps, steps]
    # the held-out metrics computed from two shards equal those of one process on all of them
    assert got["val"]["overall"] == pytest.approx(single_val["overall"], abs=1e-9)
    assert got["val"]["cell_type"] == pytest.approx(single_val["cell_type"], abs=1e-9)


def test_torchrun_train_only_rank0_writes(tiny_screen, tiny_store, tmp_path):
    res = torchrun(
        [
            "-m",
            "rcic.cli",
            "train",
            "--data",
            str(tiny_screen),
            "--store",
            str(tiny_store),
            "--out",
            str(tmp_path / "run"),
            "epochs=1",
            "batch_size=32",
            "embedding_dim=32",
        ],
        tmp_path,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    env = json.loads((tmp_path / "run" / "env.json").read_text())
    assert env["world_size"] == 2
    assert len(_metrics(tmp_path / "run")) == 1
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == [
        "best.pt",
        "last.pt",
    ]
    np.testing.assert_equal(len(list((tmp_path / "run").glob("*.tmp"))), 0)


def test_global_normalisation_predicts_with_the_training_pool(tiny_sites, tiny_store, tmp_path):
    """normalisation=global: a well's logits must not depend on which other wells are predicted,
    and the statistics used are those of the training samples, recorded in the checkpoint."""
    from rcic.data.store import SiteStore
    from rcic.inference import predict

    run = tmp_path / "run"
    cfg = _cfg("epochs=1", "normalisation=global", "deterministic=true")
    train.train(cfg, tiny_sites, tiny_store, run, progress=False)
    model, cfg = runs.load_checkpoint(run, "last")
    st = SiteStore(tiny_store)
    chosen = samples.select_samples(tiny_sites, st, cfg)
    expected = data.plate_norm_stats(st, "global", chosen.train_rows)[0]
    np.testing.assert_allclose(model.global_stats, expected, rtol=1e-6)
    test = samples.split_sites(tiny_sites, "test", cfg)
    one_exp = test[test.experiment == test.experiment.iloc[0]]
    assert data.plate_norm_stats(st, "global", test)[0] != pytest.approx(expected)  # pools differ
    both = predict.predict_logits(model, cfg, test, st, views=1, progress=False)
    alone = predict.predict_logits(model, cfg, one_exp, st, views=1, progress=False)
    pick = np.isin(both["id_code"], alone["id_code"])
    order = np.argsort(both["id_code"][pick])
    np.testing.assert_allclose(
        both["logits"][pick][order], alone["logits"][np.argsort(alone["id_code"])], atol=1e-4
    )


@pytest.mark.parametrize(
    "override, key, expected",
    [
        ("lr=abc", "lr", "a number"),
        ("batch_size=3.5", "batch_size", "a whole number"),
        ("epochs=ten", "epochs", "a whole number"),
        ("amp=1", "amp", "true, false or auto"),
        ("channels_last=fast", "channels_last", "true, false or auto"),
        ("deterministic=1", "deterministic", "true or false"),
        ("zoom=[0.8, x]", "zoom", "two numbers"),
    ],
)
def test_config_values_are_type_checked(override, key, expected):
    with pytest.raises(ConfigError) as err:
        config.load_config(None, [override])
    assert f"config {key}=" in str(err.value) and expected in str(err.value)


def test_batchnorm_is_synchronised_only_across_several_gpus():
    cfg = _cfg()
    for device, world, expect in (("cuda", 2, True), ("cpu", 2, False), ("cuda", 1, False)):
        ctx = distributed.Dist(0, world, torch.device(device))
        model = distributed.sync_batchnorm(models.build_model(cfg), ctx, cfg.sync_batchnorm)
        kinds = {type(m) for m in model.modules()}
        assert (torch.nn.SyncBatchNorm in kinds) == expect, (device, world)
        assert (torch.nn.BatchNorm2d in kinds) != expect
    off = config.load_config(None, FAST + ["sync_batchnorm=false"])
    model = distributed.sync_batchnorm(
        models.build_model(off), distributed.Dist(0, 2, torch.device("cuda")), off.sync_batchnorm
    )
    assert torch.nn.SyncBatchNorm not in {type(m) for m in model.modules()}

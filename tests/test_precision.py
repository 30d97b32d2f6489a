"""The path a training computes in: what a config fixes, what the probe picks on a CPU, what is
cached, recorded and kept on resume (rcic.training.precision)."""

import json

import pytest
import torch

from rcic.training import config, precision, train
from rcic.training.config import ConfigError
from rcic.training.models import build_model

FAST = ["epochs=1", "batch_size=32", "embedding_dim=32", "warmup_epochs=0.2", "folds=4", "fold=0"]
CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RCIC_CACHE", str(tmp_path / "cache"))


def _timed(monkeypatch, speeds: dict):
    """Replace the probe's timing by `speeds` (path name -> images/s); record what was probed."""
    probed = []

    def fake(model, cfg, size, batch, loss_fn, bf16, channels_last):
        name = precision.ComputePath(bf16, channels_last).name
        probed.append(name)
        return speeds[name]

    monkeypatch.setattr(precision, "probe", fake)
    return probed


def _choose(*overrides):
    cfg = config.load_config(None, [*FAST, *overrides])
    return precision.choose_path(cfg, CPU, build_model(cfg), 32, 32, None)


ALL = {"fp32": 100.0, "fp32 channels-last": 90.0, "bf16": 120.0, "bf16 channels-last": 150.0}


def test_auto_on_a_cpu_probes_every_path_keeps_the_fastest_and_caches_it(monkeypatch):
    probed = _timed(monkeypatch, ALL)
    path = _choose()
    assert probed == list(precision.PATHS)
    assert (path.name, path.how, path.speeds) == ("bf16 channels-last", "probe", ALL)
    again = _choose()
    assert len(probed) == 4 and (again.name, again.how) == ("bf16 channels-last", "cache")
    assert again.speeds == ALL  # the guard's reference survives the cache
    assert _choose("head=softmax", "embedding_dim=64").how == "cache"  # the same backbone
    assert len(probed) == 4
    _timed(monkeypatch, {**ALL, "fp32": 200.0})
    assert _choose("backbone=resnet34").name == "fp32"  # another backbone: its own probe
    assert _choose("stem_pool=false").how == "probe"  # twice the feature map: its own probe


def test_a_fixed_precision_or_format_narrows_the_probe(monkeypatch):
    probed = _timed(monkeypatch, ALL)
    assert _choose("amp=true").name == "bf16 channels-last"
    assert probed == ["bf16", "bf16 channels-last"]
    assert _choose("channels_last=false").name == "bf16"
    assert probed[2:] == ["fp32", "bf16"]
    assert _choose("amp=false").name == "fp32"


def test_fixed_settings_and_deterministic_runs_do_not_probe(monkeypatch):
    probed = _timed(monkeypatch, {})
    assert _choose("amp=false", "channels_last=true").name == "fp32 channels-last"
    assert _choose("deterministic=true", "channels_last=true").name == "fp32 channels-last"
    assert _choose("amp=true", "channels_last=false").name == "bf16"
    assert _choose("deterministic=true").name == "fp32"  # bits must not depend on a timing
    assert _choose("deterministic=true", "amp=true").name == "fp32"
    cfg = config.load_config(None, FAST)
    gpu = precision.choose_path(cfg, torch.device("cuda"), None, 32, 32, None)
    assert (gpu.bf16, gpu.channels_last, gpu.how) == (True, True, "config")
    assert probed == []


def test_the_real_probe_times_a_copy_and_leaves_the_model_and_rng_alone():
    cfg = config.load_config(None, FAST)
    model = build_model(cfg)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(7)
    state = torch.get_rng_state()

    def loss(out, y):
        return torch.nn.functional.cross_entropy(out["logits"], y)

    path = precision.choose_path(cfg, CPU, model, 16, 8, loss)
    assert path.how == "probe" and all(v > 0 for v in path.speeds.values())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.equal(torch.get_rng_state(), state)
    assert json.loads(precision.cache_file().read_text())  # cached for the next run


def test_a_run_records_its_path_and_keeps_it_when_resumed(
    tiny_sites, tiny_store, tmp_path, monkeypatch
):
    _timed(monkeypatch, {**ALL, "fp32 channels-last": 300.0})
    cfg = config.load_config(None, [*FAST, "epochs=2"])
    run = tmp_path / "run"
    train.train(cfg, tiny_sites, tiny_store, run, progress=False, stop_after_epoch=1)
    env = json.loads((run / "env.json").read_text())
    assert (env["path"], env["path_chosen_by"], env["bf16"]) == (
        "fp32 channels-last",
        "probe",
        False,
    )
    assert config.load_config(run / "config.yaml").channels_last == "auto"  # as asked
    _timed(monkeypatch, {**ALL, "fp32": 400.0})
    precision.cache_file().unlink()  # a resumed run does not ask the probe again
    seen = []
    real = train.Trainer.build

    def build(cfg, *a, **kw):
        seen.append((cfg.amp, cfg.channels_last))
        return real(cfg, *a, **kw)

    monkeypatch.setattr(train.Trainer, "build", build)
    train.train(cfg, tiny_sites, tiny_store, run, resume=True, progress=False)
    assert seen == [(False, True)]


@pytest.mark.parametrize("key", ["amp", "channels_last"])
def test_path_settings_are_checked_by_name(key):
    with pytest.raises(ConfigError, match=key):
        config.load_config(None, [f"{key}=fast"])


def test_the_guard_drops_to_one_thread_on_a_collapse_and_returns_when_the_cores_are_free():
    torch.set_num_threads(2)
    guard = precision.ThreadGuard(reference=200.0)
    for speed in (190, 60, 250):  # slower, not collapsed
        guard.after_step(speed, 1.0)
    assert torch.get_num_threads() == 2
    guard.after_step(45, 1.0)  # under a fifth of the best seen (250)
    assert torch.get_num_threads() == 1 and guard.drops == 1
    for _ in range(guard.FIRST_RETRY):
        guard.after_step(100, 1.0)
    assert torch.get_num_threads() == 2  # a try on the full count
    guard.after_step(10, 1.0)  # still shared: back to one thread, twice as long
    assert torch.get_num_threads() == 1 and guard.backoff == 2 * guard.FIRST_RETRY
    for _ in range(2 * guard.FIRST_RETRY):
        guard.after_step(100, 1.0)
    assert torch.get_num_threads() == 2
    guard.after_step(130, 1.0)  # free again (over half of 250): stays
    for _ in range(3):
        guard.after_step(170, 1.0)
    assert guard.backoff == guard.FIRST_RETRY
    assert torch.get_num_threads() == 2 and guard.drops == 2
    guard.after_step(10, 1.0)
    assert torch.get_num_threads() == 1
    guard.restore()
    assert torch.get_num_threads() == 2


def test_the_guard_is_off_for_deterministic_runs_and_one_thread():
    torch.set_num_threads(2)
    guard = precision.ThreadGuard(reference=200.0, enabled=False)
    for _ in range(10):
        guard.after_step(1, 1.0)
    assert torch.get_num_threads() == 2 and guard.drops == 0
    torch.set_num_threads(1)
    assert not precision.ThreadGuard(reference=200.0).enabled
    torch.set_num_threads(2)


def test_without_a_probe_the_guard_takes_its_reference_after_the_warm_up_step():
    torch.set_num_threads(2)
    guard = precision.ThreadGuard()
    guard.after_step(5, 1.0)  # cold kernels
    guard.after_step(200, 1.0)
    guard.after_step(100, 1.0)
    assert torch.get_num_threads() == 2 and guard.ref == 200
    guard.after_step(30, 1.0)
    assert torch.get_num_threads() == 1
    guard.restore()

"""The path a training computes in: what a config fixes, what the probe picks on a CPU, what is
cached, recorded and kept on resume (rcic.precision)."""

import json

import pytest
import torch

from rcic import config, precision, train
from rcic.config import ConfigError
from rcic.models import build_model

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


def test_auto_on_a_cpu_probes_fp32_formats_keeps_the_fastest_and_caches_it(monkeypatch):
    probed = _timed(monkeypatch, {"fp32": 100.0, "fp32 channels-last": 130.0})
    path = _choose()
    assert probed == ["fp32", "fp32 channels-last"]  # bf16 is never tried unless asked
    assert (path.name, path.how) == ("fp32 channels-last", "probe")
    assert path.record()["path_probe"] == {"fp32": 100.0, "fp32 channels-last": 130.0}
    again = _choose()
    assert probed == ["fp32", "fp32 channels-last"] and again.how == "cache"
    assert again.name == "fp32 channels-last"
    _timed(monkeypatch, {"fp32": 130.0, "fp32 channels-last": 100.0})
    assert _choose("backbone=resnet34").name == "fp32"  # another model: its own probe


def test_bf16_asked_on_a_cpu_probes_bf16_formats_only(monkeypatch):
    probed = _timed(monkeypatch, {"bf16": 90.0, "bf16 channels-last": 80.0})
    assert _choose("amp=true").name == "bf16"
    assert probed == ["bf16", "bf16 channels-last"]


def test_fixed_settings_and_deterministic_runs_do_not_probe(monkeypatch):
    probed = _timed(monkeypatch, {})
    assert _choose("channels_last=true").name == "fp32 channels-last"
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
    _timed(monkeypatch, {"fp32": 100.0, "fp32 channels-last": 130.0})
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
    _timed(monkeypatch, {"fp32": 200.0, "fp32 channels-last": 100.0})
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

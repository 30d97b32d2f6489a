"""The run folder: what training records, and what predict, embed and resume read back."""

import json
import logging
import shutil

import numpy as np
import pytest
import torch

from rcic.data import metadata
from rcic.errors import InputError
from rcic.inference import predict
from rcic.inference.logitsfile import read_logits
from rcic.inference.predict import InferenceOptions
from rcic.training import runs, samples
from rcic.training.runs import RunFolder


def test_split_record_names_the_held_out_and_training_experiments(trained, tiny_sites):
    rec = json.loads(RunFolder(trained).split.read_text())
    _, cfg = runs.load_checkpoint(trained, "last")
    assert rec["fold"] == cfg.fold and rec["folds"] == cfg.folds
    assert rec["held_out_experiments"] == samples.fold_experiments(tiny_sites, cfg, cfg.fold)
    # the controls of the test experiments are training samples too (use_controls)
    assert cfg.use_controls
    everything = set(tiny_sites["experiment"])
    assert set(rec["train_experiments"]) == everything - set(rec["held_out_experiments"])


def test_predict_reads_the_recorded_held_out_experiments(
    trained, tiny_screen, tiny_store, tmp_path
):
    """A run whose record names other experiments than today's fold rule gives: predict follows
    the record (had it recomputed the folds, the file would hold the rule's experiments)."""
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    sites = metadata.load_metadata(tiny_screen)
    folder = RunFolder(run)
    rec = json.loads(folder.split.read_text())
    train_exps = sorted(set(sites.loc[sites["split"] == "train", "experiment"]))
    other = [e for e in train_exps if e not in rec["held_out_experiments"]][:1]
    assert other
    folder.split.write_text(json.dumps({**rec, "held_out_experiments": other}))
    out = predict.predict_run(
        run, sites, tiny_store, "0", tmp_path / "f.npz", InferenceOptions(views=1, progress=False)
    )
    assert set(read_logits(out)["experiment"]) == set(other)


def test_held_out_of_an_older_run_comes_from_env_or_the_fold_rule(tmp_path):
    folder = RunFolder(tmp_path)
    assert folder.held_out() is None  # nothing recorded: callers recompute the folds
    folder.env.write_text(json.dumps({"held_out_experiments": ["HEPG2-01"]}))
    assert folder.held_out() == ["HEPG2-01"]
    folder.split.write_text("{not json")
    with pytest.raises(InputError, match="split.json"):
        folder.held_out()


def _rewrite_checkpoint(src, dst, **changes):
    state = torch.load(src, weights_only=True)
    config = {**state["config"], **changes.pop("config", {})}
    for key in changes.pop("drop_config", []):
        config.pop(key)
    state.update(config=config, **changes)
    torch.save(state, dst)
    return dst


def test_checkpoint_config_is_read_tolerantly(trained, tmp_path, caplog):
    """A key from a newer rcic is dropped with a warning naming it; a key the record lacks takes
    its default; the weights still load."""
    path = _rewrite_checkpoint(
        RunFolder(trained).checkpoint("last"),
        tmp_path / "c.pt",
        config={"a_key_from_the_future": 3},
        drop_config=["label_smoothing"],
    )
    with caplog.at_level(logging.INFO, logger="rcic"):
        model, cfg = runs.load_checkpoint(trained, str(path))
    assert "a_key_from_the_future" in caplog.text
    assert cfg.label_smoothing == 0.0
    ref, _ = runs.load_checkpoint(trained, "last")
    for (k, a), (_, b) in zip(model.state_dict().items(), ref.state_dict().items(), strict=True):
        assert torch.equal(a, b), k


def test_checkpoint_of_a_newer_format_is_refused_by_name(trained, tmp_path):
    path = _rewrite_checkpoint(
        RunFolder(trained).checkpoint("last"),
        tmp_path / "new.pt",
        format=runs.CHECKPOINT_FORMAT + 1,
    )
    with pytest.raises(InputError, match="new.pt.*newer"):
        runs.load_checkpoint(trained, str(path))


def test_checkpoint_holds_a_format_and_the_rng_state(trained):
    state = torch.load(RunFolder(trained).checkpoint("last"), weights_only=True)
    assert state["format"] == runs.CHECKPOINT_FORMAT
    torch.manual_seed(5)
    np.random.seed(5)
    saved = runs.rng_state()
    a = (torch.rand(3), np.random.rand(3))
    runs.set_rng_state(saved)
    b = (torch.rand(3), np.random.rand(3))
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_a_resumed_run_keeps_its_recorded_validation_experiments(tiny_sites, tiny_store, tmp_path):
    """Resuming reads split.json like predict does: an edited record moves the validation set
    (recomputing the folds would keep validating on the fold rule's experiments)."""
    from rcic.training import config, train

    cfg = config.load_config(None, ["epochs=2", "batch_size=32", "embedding_dim=32", "amp=false"])
    run = tmp_path / "run"
    train.train(cfg, tiny_sites, tiny_store, run, progress=False, stop_after_epoch=1)
    folder = RunFolder(run)
    rec = json.loads(folder.split.read_text())
    train_exps = sorted(set(tiny_sites.loc[tiny_sites["split"] == "train", "experiment"]))
    other = [e for e in train_exps if e not in rec["held_out_experiments"]][:1]
    folder.split.write_text(json.dumps({**rec, "held_out_experiments": other}))
    train.train(cfg, tiny_sites, tiny_store, run, resume=True, progress=False)
    rows = [json.loads(line) for line in folder.metrics.read_text().splitlines()]
    assert set(rows[0]["val"]["experiment"]) == set(rec["held_out_experiments"])
    assert set(rows[-1]["val"]["experiment"]) == set(other)

"""kill -9 in the middle of `prepare`, `train`, `predict` and `submit`, then a rerun: the result
must equal an uninterrupted run's, and no half-written output may sit under a final name.

Each command under test runs as its own process (the references it is compared with may run in
this one). The kill comes at a random point (seeded) after the command
has shown it is at work (its store or first checkpoint exists, or its progress bar has started);
every test asserts the kill landed before the command finished (a command that finished first
is run again with a shorter delay).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from rcic.data.store import SiteStore, StoreError
from rcic.inference.logitsfile import read_logits

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _rcic(argv: list[str], log: Path) -> subprocess.Popen:
    with open(log, "w") as err:
        return subprocess.Popen(
            [sys.executable, "-m", "rcic.cli", *map(str, argv)],
            stdout=subprocess.DEVNULL,
            stderr=err,
            env=ENV,
        )


def run_to_end(argv: list[str], tmp: Path) -> None:
    proc = _rcic(argv, tmp / "ok.log")
    assert proc.wait(timeout=300) == 0, (tmp / "ok.log").read_text()[-3000:]


def kill_when(argv: list[str], tmp: Path, ready: Callable[[Path], bool], delay: float) -> int:
    """Start the command, wait until ready(log) (polling its files), then `delay` s, then kill -9.

    Returns the exit status: -9 when the kill landed, 0 when the command had already finished.
    """
    log = tmp / "killed.log"
    proc = _rcic(argv, log)
    deadline = time.monotonic() + 300
    while proc.poll() is None and not ready(log):
        assert time.monotonic() < deadline, "the command never got to work"
        time.sleep(0.02)
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    return proc.wait(timeout=60)


def kill_landed(argv: list[str], tmp: Path, ready, delay: float, outputs: list[Path]) -> None:
    """kill_when until the kill lands before the command ends: a command that finished first is
    run again with a quarter of the delay (its `outputs` removed), down to no delay at all."""
    for _ in range(4):
        if kill_when(argv, tmp, ready, delay) == -signal.SIGKILL:
            return
        for path in outputs:
            path.unlink(missing_ok=True)
        delay /= 4
    assert kill_when(argv, tmp, ready, 0.0) == -signal.SIGKILL, "it ended before every kill"


def _said(text: str) -> Callable[[Path], bool]:
    return lambda log: log.exists() and text in log.read_text(errors="replace")


@pytest.mark.parametrize("seed", [0])
def test_prepare_killed_then_rerun_gives_the_same_store(tiny_screen, tiny_store, tmp_path, seed):
    delay = random.Random(seed).uniform(0.05, 0.4)
    out = tmp_path / "st"
    argv = ["prepare", "--data", tiny_screen, "--out", out, "--workers", "1"]
    status = kill_when(argv, tmp_path, _said("packing sites"), delay)
    assert status == -signal.SIGKILL
    with pytest.raises(StoreError, match="did not finish"):
        SiteStore(out)
    run_to_end(argv, tmp_path)
    a, b = SiteStore(out), SiteStore(tiny_store)
    idx = np.arange(len(b.index))
    assert np.array_equal(a.read_many(idx), b.read_many(idx))
    pd.testing.assert_frame_equal(a.stats, b.stats)


def _train_argv(screen, store, out) -> list:
    return [
        "train",
        "--data",
        screen,
        "--store",
        store,
        "--out",
        out,
        "epochs=3",
        "batch_size=32",
        "embedding_dim=32",
        "deterministic=true",
        "warmup_epochs=0.2",
        "folds=4",
        "fold=0",
        "backbone=resnet10t",  # the smallest ResNet: what is tested is the resume, not the model
    ]


def test_train_killed_then_resumed_equals_uninterrupted(tiny_screen, tiny_store, tmp_path):
    delay = random.Random(1).uniform(0.0, 1.0)
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    run_to_end(_train_argv(tiny_screen, tiny_store, ref), tmp_path)
    argv = _train_argv(tiny_screen, tiny_store, cut)
    status = kill_when(argv, tmp_path, lambda _: (cut / "checkpoints" / "last.pt").exists(), delay)
    assert status == -signal.SIGKILL
    done = [json.loads(x)["epoch"] for x in (cut / "metrics.jsonl").read_text().splitlines()]
    assert 1 <= len(done) < 3
    # the checkpoint under its final name is whole (a kill mid-write hits only the .tmp file)
    torch.load(cut / "checkpoints" / "last.pt", weights_only=False)
    run_to_end([*argv, "--resume"], tmp_path)
    a = torch.load(ref / "checkpoints" / "last.pt", weights_only=False)["model"]
    b = torch.load(cut / "checkpoints" / "last.pt", weights_only=False)["model"]
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def _predict_args(tiny_screen, tiny_store, trained) -> list[str]:
    return ["--run", trained, "--data", tiny_screen, "--store", tiny_store, "--views", "2"]


@pytest.fixture(scope="module")
def one_pass(tiny_screen, tiny_store, trained, tmp_path_factory) -> Path:
    """The test split predicted uninterrupted (in this process: it is the reference, not the
    command under test), for the kill tests of predict."""
    out = tmp_path_factory.mktemp("one-pass") / "one.npz"
    assert cli(["predict", *_predict_args(tiny_screen, tiny_store, trained), "--out", out]) == 0
    return out


def cli(argv: list) -> int:
    from rcic import cli as rcic_cli

    return rcic_cli.main([str(a) for a in argv])


def test_predict_killed_leaves_nothing_and_rerun_matches(
    tiny_screen, tiny_store, trained, one_pass, tmp_path
):
    delay = random.Random(2).uniform(0.0, 0.5)
    ref, out = one_pass, tmp_path / "out.npz"
    common = _predict_args(tiny_screen, tiny_store, trained)
    kill_landed(["predict", *common, "--out", out], tmp_path, _said("predicting"), delay, [out])
    # killed: no file under the final name, or a whole one (renamed into place just before)
    assert not out.exists() or read_logits(out)["logits"].shape == read_logits(ref)["logits"].shape
    run_to_end(["predict", *common, "--out", out], tmp_path)
    a, b = read_logits(ref), read_logits(out)
    assert (a["id_code"] == b["id_code"]).all()
    np.testing.assert_allclose(a["logits"], b["logits"], rtol=0, atol=1e-5)


def test_a_killed_part_is_rerun_alone(tiny_screen, tiny_store, trained, one_pass, tmp_path, capsys):
    """`predict --part 2/2` killed: submit refuses the set, naming the missing part; that part
    rerun alone completes it, and the parts submit as the one pass does."""
    delay = random.Random(3).uniform(0.0, 0.5)
    common = _predict_args(tiny_screen, tiny_store, trained)
    first, second = tmp_path / "p1.npz", tmp_path / "p2.npz"
    assert cli(["predict", *common, "--part", "1/2", "--out", first]) == 0
    argv = ["predict", *common, "--part", "2/2", "--out", second]
    kill_landed(argv, tmp_path, _said("predicting"), delay, [second])
    second.unlink(missing_ok=True)  # a kill after the rename leaves a whole file: drop it
    submit = ["submit", "--data", tiny_screen, "--logits"]
    assert cli([*submit, first, "--out", tmp_path / "s.csv"]) == 2
    assert "2/2 missing" in capsys.readouterr().err
    run_to_end(argv, tmp_path)  # the killed part alone
    assert cli([*submit, first, second, "--out", tmp_path / "parts.csv"]) == 0
    assert cli([*submit, one_pass, "--out", tmp_path / "one.csv"]) == 0
    pd.testing.assert_frame_equal(
        pd.read_csv(tmp_path / "parts.csv"), pd.read_csv(tmp_path / "one.csv")
    )


def test_submit_killed_leaves_nothing_and_rerun_matches(tiny_screen, tmp_path):
    from rcic.inference.logitsfile import write_logits

    test = pd.read_csv(tiny_screen / "test.csv")
    z = np.random.default_rng(0).normal(size=(len(test), 1139)).astype(np.float32)
    logits = write_logits(tmp_path / "l.npz", test.id_code, z)
    delay = random.Random(3).uniform(0.0, 0.3)
    argv = ["submit", "--logits", logits, "--data", tiny_screen]
    run_to_end([*argv, "--out", tmp_path / "ref" / "submission.csv"], tmp_path)
    out = tmp_path / "cut" / "submission.csv"
    ready, written = _said("read kaggle metadata"), [out, out.parent / "stages.json"]
    kill_landed([*argv, "--out", out], tmp_path, ready, delay, written)
    if out.exists():  # renamed into place before the kill: complete
        assert len(pd.read_csv(out)) == len(test)
    run_to_end([*argv, "--out", out], tmp_path)
    ref = tmp_path / "ref" / "submission.csv"
    pd.testing.assert_frame_equal(pd.read_csv(ref), pd.read_csv(out))
    assert (
        json.loads((ref.parent / "stages.json").read_text())["groups"]
        == json.loads((out.parent / "stages.json").read_text())["groups"]
    )

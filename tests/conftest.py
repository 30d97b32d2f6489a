"""Shared fixtures: a tiny synthetic screen and its store, generated once per test session."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from filelock import FileLock

from rcic import cli
from rcic.data import metadata, packing
from rcic.synthetic import synth

SHARED = Path(__file__).resolve().parents[2] / "shared" / "rxrx1"


def pytest_configure(config):
    """The training path probe's cache (rcic.training.precision) in a folder of this session,
    never the user's, for this process and the rcic processes tests start. Under pytest-xdist each worker
    computes with one thread (as do the processes its tests start: rcic's threads follow
    OMP_NUM_THREADS), so two workers' trainings share the cores without oversubscribing them,
    the case where bf16 collapses (benchmarks/results/train_throughput.txt)."""
    os.environ["RCIC_CACHE"] = tempfile.mkdtemp(prefix="rcic-test-cache-")
    if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
        os.environ["OMP_NUM_THREADS"] = "1"
        import torch

        torch.set_num_threads(1)


def shared_or_skip() -> Path:
    if not (SHARED / "kaggle" / "train.csv").exists():
        pytest.skip("../shared/rxrx1 is not present (a user's clone)")
    return SHARED


def _built_once(tmp_path_factory, name: str, build) -> Path:
    """The folder `name`, made by build(folder) once for the whole test run: under pytest-xdist
    the workers share it (the first builds it under a lock, the others wait and reuse it), so a
    session fixture costs its time once, not once per worker. Tests read these folders (and
    at most add files of their own beside what is there)."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the folder of this run that every worker's own folder is in
    folder, done = root / "built" / name, root / "built" / f"{name}.done"
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder) + ".lock"):
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)
            build(folder)
            done.touch()
    return folder


@pytest.fixture(scope="session")
def tiny_screen(tmp_path_factory) -> Path:
    def build(folder):
        synth.generate(folder / "screen", "tiny", seed=3, workers=1)

    return _built_once(tmp_path_factory, "tiny", build) / "screen"


@pytest.fixture(scope="session")
def tiny_sites(tiny_screen):
    return metadata.load_metadata(tiny_screen)


@pytest.fixture(scope="session")
def tiny_store(tiny_screen, tiny_sites, tmp_path_factory) -> Path:
    def build(folder):
        packing.pack(tiny_screen, tiny_sites, folder / "store", workers=1)

    return _built_once(tmp_path_factory, "store", build) / "store"


# A model trained for 3 epochs on the tiny screen, fold 0 held out; shared by the pipeline,
# embedding and bad-input tests, none of which needs it to beat chance.
@pytest.fixture(scope="session")
def trained(tiny_screen, tiny_store, tmp_path_factory):
    def build(folder):
        args = [
            "train",
            "--data",
            str(tiny_screen),
            "--store",
            str(tiny_store),
            "--out",
            str(folder / "run"),
            "epochs=3",
            "batch_size=32",
            "embedding_dim=64",
            "lr=0.003",
            "deterministic=true",
            "warmup_epochs=0.5",
            "normalisation=plate_neg",  # the setting these assertions were written for
        ]
        assert cli.main(args) == 0

    return _built_once(tmp_path_factory, "trained", build) / "run"


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs (root only; skipped elsewhere), grown by calling the returned function."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)]).returncode:
        pytest.skip("cannot mount a tmpfs here")

    def grow():
        subprocess.run(["mount", "-o", "remount,size=64m", str(mnt)], check=True)

    yield mnt, grow
    subprocess.run(["umount", str(mnt)], check=False)


def torchrun(args, cwd, timeout=300) -> subprocess.CompletedProcess:
    """`torchrun --nproc-per-node 2 --standalone ARGS` (gloo on the CPU, one thread per rank)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone"]
    return subprocess.run(
        [*cmd, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=cwd,
        check=False,
    )

"""Shared fixtures: a tiny synthetic screen and its store, generated once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

from rcic import metadata, store, synth

SHARED = Path(__file__).resolve().parents[2] / "shared" / "rxrx1"


def shared_or_skip() -> Path:
    if not (SHARED / "kaggle" / "train.csv").exists():
        pytest.skip("../shared/rxrx1 is not present (a user's clone)")
    return SHARED


@pytest.fixture(scope="session")
def tiny_screen(tmp_path_factory) -> Path:
    return synth.generate(tmp_path_factory.mktemp("tiny") / "screen", "tiny", seed=3, workers=1)


@pytest.fixture(scope="session")
def tiny_sites(tiny_screen):
    return metadata.load_metadata(tiny_screen)


@pytest.fixture(scope="session")
def tiny_store(tiny_screen, tiny_sites, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("store") / "store"
    store.pack(tiny_screen, tiny_sites, out, workers=1)
    return out

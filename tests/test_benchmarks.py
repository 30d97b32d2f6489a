"""Benchmarks that must not rot before the hardware they are for is lent: run at tiny size here."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_step_runs_on_the_cpu_from_a_store(tiny_store):
    gpu_step = _load("gpu_step")
    argv = ["--store", str(tiny_store), "--batch", "8", "--steps", "2", "--size", "32"]
    results = gpu_step.main([*argv, "--workers", "0", "--backbones", "resnet18", "--device", "cpu"])
    assert results[0]["measure"] == "loading only" and results[0]["images_per_s"] > 0
    steps = results[1:]
    assert [r["mode"] for r in steps] == ["fp32", "bf16+channels_last"]
    assert all(r["loss_finite"] and r["images_per_s"] > 0 and r["size"] == 32 for r in steps)


def _load_beside(name: str):
    """A benchmark that imports its neighbours (`_measure`, `scale`)."""
    import sys

    sys.path.insert(0, str(BENCH))
    try:
        return _load(name)
    finally:
        sys.path.remove(str(BENCH))


def test_scale_takes_the_median_run_and_keeps_untimed_rows():
    scale = _load_beside("scale")
    runs = [
        [{"step": "a", "seconds": s, "peak MB": m}, {"step": "equal", "equal": e, "wells": 3}]
        for s, m, e in ((3.0, 10, True), (1.0, 30, True), (2.0, 20, False))
    ]
    timed, parts = scale._median_run(runs)
    assert timed == {"step": "a", "seconds": 2.0, "peak MB": 30}
    assert parts == {"step": "equal", "equal": False, "wells": 3}


def test_profiles_benchmark_corrects_a_table_its_own_way(tmp_path):
    """benchmarks/profiles.py's rcic-only corrections write a table `rcic profiles` reads."""
    from rcic.data import tables
    from rcic.synthetic import synth

    profiles_bench, scale_of_profiles = _load_beside("profiles"), _load_beside("profiles_scale")
    wells, _ = synth.make_layout(synth.PRESETS["tiny"], 0)
    table, _ = scale_of_profiles.profile_table(wells, 8)
    tables.write_table(table, tmp_path / "in.parquet", {"command": "test"})
    out = profiles_bench.own_correction([tmp_path / "in.parquet"], "tvn", tmp_path / "tvn")
    corrected, prov = tables.read_table(out)
    assert prov["correction"] == "tvn" and len(corrected) == len(table)
    assert not np.allclose(corrected[tables.feature_columns(table)], table.iloc[:, -8:])

"""Benchmarks that must not rot before the hardware they are for is lent: run at tiny size here."""

from __future__ import annotations

import importlib.util
from pathlib import Path

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

"""`rcic demo --quick` end to end, its numbers, and the HTML report checked in a real browser."""

import json
import re
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from rcic import cli


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "demo"
    assert cli.main(["demo", "--quick", "--out", str(out)]) == 0
    return out


def test_demo_quick_numbers(demo_dir, capsys):
    table = json.loads((demo_dir / "demo.json").read_text())
    routes = table["routes"]
    # --quick trains 1 epoch on the tiny screen: a smoke run, so the CNN's figures say nothing of
    # what it learns; the features route's do, and every figure must be the submission's own
    assert list(routes) == ["CNN", "features", "CNN + features"]
    assert list(routes["CNN"]) == ["single model", "ensemble", "plate groups", "well decision"]
    assert list(routes["features"]) == ["single model", "plate groups", "well decision"]
    assert list(table["bronze"]) == ["single model", "plate groups"]
    labels = pd.read_csv(demo_dir / "data" / "test_labels.csv").set_index("id_code")["sirna"]
    for route, folder in (("CNN", "cnn"), ("features", "features"), ("CNN + features", ".")):
        sub = pd.read_csv(demo_dir / folder / "submission.csv").set_index("id_code")["sirna"]
        right = (sub == labels.loc[sub.index]).mean()
        assert routes[route]["well decision"] == pytest.approx(right)
    n_sirna = labels.nunique()
    assert routes["features"]["single model"] > 1.5 / n_sirna  # statistics read the tiny screen
    epochs = {
        n: yaml.safe_load((demo_dir / "runs" / n / "config.yaml").read_text())["epochs"]
        for n in ("model-0", "bronze")
    }
    # the bronze way gets the same steps, hence more epochs
    assert epochs["bronze"] > epochs["model-0"]
    parts = table["seconds"]  # where the time went: every part, within the whole
    named = ("generate", "pack", "features route", "train", "predict", "plates and scores")
    assert set(parts) == {*named, "profiles", "report"}
    assert all(v >= 0 for v in parts.values()) and parts["train"] > 0
    assert sum(parts.values()) <= 60 * table["minutes"] + 1
    for name in (
        "submission.csv",
        "stages.json",
        "report.html",
        "runs/model-0/metrics.jsonl",
        "runs/bronze/logits-test.npz",
        "features/logits-test.npz",
        "features/logits-test.choices.json",
        "profiles/wells.parquet",
        "profiles/consensus.parquet",
        "profiles/metrics.json",
    ):
        assert (demo_dir / name).exists(), name


def test_demo_is_reproducible(demo_dir, tmp_path):
    # a second run reuses the generated screen and two of the three finished runs, and retrains
    # the first model: same seed, same numbers
    for part in ("data", "runs/model-1", "runs/bronze"):
        shutil.copytree(demo_dir / part, tmp_path / "again" / part)
    assert cli.main(["demo", "--quick", "--out", str(tmp_path / "again")]) == 0
    a = json.loads((demo_dir / "demo.json").read_text())
    b = json.loads((tmp_path / "again" / "demo.json").read_text())
    assert a["routes"] == b["routes"] and a["bronze"] == b["bronze"]


def _chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    pytest.skip("no Chromium installed (.ci/run installs Debian's chromium)")


def test_report_renders_in_a_browser(demo_dir, tmp_path):
    report = tmp_path / "report.html"
    assert cli.main(["report", str(demo_dir), "--out", str(report)]) == 0
    text = report.read_text()
    assert "http://" not in text and "https://" not in text  # self-contained
    for section in (
        "Images",
        "Segmentation",
        "Training",
        "Accuracy after each stage",
        "Test plates",
        "Mistakes",
        "Profiles",
        "Configuration",
    ):
        assert f"<h2>{section}" in text
    browser = _chromium()
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--enable-logging=stderr",
        "--v=0",
    ]
    dom = subprocess.run(
        [browser, *flags, "--virtual-time-budget=5000", "--dump-dom", report.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert "Uncaught" not in dom.stderr
    m = re.search(r'data-images="(\d+)/(\d+)"', dom.stdout)
    assert m, "the page's load handler did not run"
    assert int(m[1]) == int(m[2]) >= 6, f"only {m[1]} of {m[2]} images decoded"
    segmentation = dom.stdout.split("<h2>Segmentation</h2>")[1].split("<h2>")[0]
    assert segmentation.count("<img") == 1
    # the profiles section as the browser built it: its table and both of its figures
    profiles = dom.stdout.split("<h2>Profiles</h2>")[1].split("<h2>")[0]
    assert "activity mAP" in profiles and profiles.count("<img") == 2
    shot = tmp_path / "shot.png"
    subprocess.run(
        [browser, *flags, f"--screenshot={shot}", "--window-size=1280,2400", report.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert pixels.std() > 20  # not a blank page
    assert (pixels < 100).mean() > 0.02  # dark pixels: the cell images and plots are drawn

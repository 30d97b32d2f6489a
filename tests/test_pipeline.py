"""The command line chain on the tiny screen: train -> predict (fold, test) -> submit -> evaluate."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from rcic import cli
from rcic.inference.logitsfile import read_logits
from rcic.plates import submit
from rcic.training import config
from rcic.training.batches import BatchTransform
from rcic.training.infer import infer
from rcic.training.models import build_model


def test_predict_fold_fits_temperature_and_test_has_all_wells(trained, tiny_screen, tiny_store):
    common = ["--run", str(trained), "--data", str(tiny_screen), "--store", str(tiny_store)]
    assert cli.main(["predict", *common, "--split", "0", "--out", str(trained / "val.npz")]) == 0
    val = read_logits(trained / "val.npz")
    assert 0.05 < float(val["temperature"]) < 20
    assert (val["sirna"] >= 0).all() and val["logits"].shape[1] == 1139
    assert (val["n_sites"] == 2).all()
    assert (
        cli.main(
            [
                "predict",
                *common,
                "--split",
                "test",
                "--out",
                str(trained / "test.npz"),
                "--temperature-from",
                str(trained / "val.npz"),
            ]
        )
        == 0
    )
    test = read_logits(trained / "test.npz")
    assert sorted(test["id_code"]) == sorted(pd.read_csv(tiny_screen / "test.csv").id_code)
    assert float(test["temperature"]) == pytest.approx(float(val["temperature"]))


def test_tta_views_change_and_average_logits(trained, tiny_screen, tiny_store, tmp_path):
    common = [
        "--run",
        str(trained),
        "--data",
        str(tiny_screen),
        "--store",
        str(tiny_store),
        "--split",
        "test",
    ]
    cli.main(["predict", *common, "--views", "1", "--out", str(tmp_path / "v1.npz")])
    cli.main(["predict", *common, "--views", "2", "--out", str(tmp_path / "v2.npz")])
    one, two = (
        read_logits(tmp_path / "v1.npz")["logits"],
        read_logits(tmp_path / "v2.npz")["logits"],
    )
    assert not np.allclose(one, two)


class _Loader:
    """Two batches of random sites, as a DataLoader over SiteDataset gives them."""

    def __init__(self, n=6, size=32, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.batches = [
            {
                "image": torch.randint(0, 256, (n // 2, 6, size, size), generator=g).to(
                    torch.uint8
                ),
                "stats": torch.zeros(n // 2, 6, 2),  # per-image normalisation
                "cell_type": torch.arange(n // 2) % 4,
                "row": torch.arange(k * n // 2, (k + 1) * n // 2),
            }
            for k in range(2)
        ]
        self.dataset = range(n)

    def __iter__(self):
        return iter(self.batches)


def test_tta_is_the_mean_of_its_views():
    """Predicting with several views gives exactly the mean of what each view alone gives, for
    logits and embeddings, and the views differ (else averaging would be untested)."""
    cfg = config.load_config(None, ["embedding_dim=16", "deterministic=true"])
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    kw = {"amp": False, "channels_last": False, "embeddings": True}

    def run(views):
        return infer(model, _Loader(), BatchTransform(32), torch.device("cpu"), views, **kw)

    views = (0, 3, 5)
    alone = [run((k,)) for k in views]
    together = run(views)
    for key in ("logits", "embedding"):
        mean = np.mean([a[key] for a in alone], axis=0)
        np.testing.assert_allclose(together[key], mean, rtol=0, atol=1e-5)
        assert not np.allclose(alone[0][key], alone[1][key], atol=1e-3)
    assert (together["rows"] == np.arange(6)).all()


def test_plate_stages_keep_accuracy_and_one_sirna_per_plate(
    trained, tiny_screen, tiny_store, tmp_path, capsys
):
    test_npz = trained / "test.npz"
    if not test_npz.exists():
        common = ["--run", str(trained), "--data", str(tiny_screen), "--store", str(tiny_store)]
        cli.main(["predict", *common, "--split", "test", "--out", str(test_npz)])
    sub = tmp_path / "submission.csv"
    labels = str(tiny_screen / "test_labels.csv")
    args = [
        "submit",
        "--logits",
        str(test_npz),
        "--data",
        str(tiny_screen),
        "--out",
        str(sub),
        "--labels",
        labels,
        "--well-method",
        "hungarian",
        "--calibrate",
        "off",
    ]
    assert cli.main(args) == 0
    stages = json.loads((tmp_path / "stages.json").read_text())["stages"]
    acc = {k: v["overall"] for k, v in stages.items()}
    # What holds for every run, even of a model at chance (the tiny one may be): on a plate whose
    # group was chosen right, the group stage keeps every well the model alone got right (the
    # true siRNA is in that group, so the best answer within it is the same); a wrong group may
    # cost all of a plate's wells, so no order of the overall figures is asserted.
    res = submit.run_submit(
        [test_npz],
        tiny_screen,
        tmp_path / "again.csv",
        labels=labels,
        options=submit.SubmitOptions(well_method="hungarian", calibrate="off"),
    )
    truth = pd.read_csv(labels).set_index("id_code").loc[res.submission["id_code"], "sirna"]
    well_plate = res.submission["id_code"].str.rsplit("_", n=1).str[0].to_numpy()
    groups = res.groups.assign(key=res.groups.experiment + "_" + res.groups.plate.astype(str))
    right_plate = np.isin(well_plate, groups.loc[groups["right"], "key"])
    kept = res.post.stages["ensemble"] == truth.to_numpy()
    assert (
        res.post.stages["groups"][kept & right_plate] == truth.to_numpy()[kept & right_plate]
    ).all()
    # the assignment's promise, exactly: no siRNA twice on a plate
    chosen = pd.read_csv(sub)
    plate = chosen.id_code.str.rsplit("_", n=1).str[0]
    assert not chosen.assign(plate=plate).duplicated(["plate", "sirna"]).any()
    out = capsys.readouterr().out
    assert "ensemble" in out and "wells" in out
    assert cli.main(["evaluate", "--submission", str(sub), "--labels", labels]) == 0
    assert f"overall {acc['wells']:.4f}" in capsys.readouterr().out


def test_pseudo_label_rounds_grow_and_respect_plates(trained, tiny_screen, tiny_store, tmp_path):
    out = tmp_path / "pseudo"
    assert (
        cli.main(
            [
                "pseudo",
                "--run",
                str(trained),
                "--data",
                str(tiny_screen),
                "--store",
                str(tiny_store),
                "--out",
                str(out),
                "--fractions",
                "0.25",
                "0.75",
                "--epochs",
                "1",
                "--labels",
                str(tiny_screen / "test_labels.csv"),
            ]
        )
        == 0
    )
    rounds = json.loads((out / "rounds.json").read_text())
    assert [r["fraction"] for r in rounds] == [0.25, 0.75]
    assert rounds[0]["pseudo_labels"] < rounds[1]["pseudo_labels"]
    for k in (1, 2):
        p = pd.read_csv(out / f"round{k}-pseudo.csv")
        plate = p.id_code.str.rsplit("_", n=1).str[0]
        assert not p.assign(plate=plate).duplicated(["plate", "sirna"]).any()
        env = json.loads((out / f"round{k}" / "env.json").read_text())
        assert (
            env["n_train_samples"]
            > json.loads((trained / "env.json").read_text())["n_train_samples"]
        )


class _Payload:
    """Unpickling this would create a file: a checkpoint that runs code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("kind", ["code", "garbage", "not-rcic"])
def test_a_checkpoint_that_is_not_one_is_refused_by_name(
    tiny_screen, tiny_store, tmp_path, capsys, kind
):
    import torch

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    ckpt = run / "checkpoints" / "last.pt"
    marker = tmp_path / "ran"
    if kind == "code":
        torch.save({"model": _Payload(marker)}, ckpt)
    elif kind == "garbage":
        ckpt.write_bytes(b"\x00\x01 this is not a checkpoint" * 10)
    else:
        torch.save({"weights": torch.zeros(3)}, ckpt)
    args = ["predict", "--run", str(run), "--data", str(tiny_screen), "--store", str(tiny_store)]
    assert (
        cli.main(
            [*args, "--split", "test", "--checkpoint", "last", "--out", str(tmp_path / "o.npz")]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert str(ckpt) in err and "Traceback" not in err
    assert ("not an rcic checkpoint" if kind == "not-rcic" else "rcic can load safely") in err
    assert not marker.exists() and not (tmp_path / "o.npz").exists()

import numpy as np
import pandas as pd
import pytest

from rcic import cli, layout
from rcic.inference.logitsfile import read_logits
from rcic.profiling import corrections as embed
from rcic.profiling import embed_head


def _planted(seed=0, n_plates=6, dim=8, scale_sd=0.0):
    """Wells on plates with a plate offset (and scale); classes with a fixed signal; controls on every plate."""
    rng = np.random.default_rng(seed)
    classes = {c: rng.normal(0, 1, dim) for c in [0, 1, 2, 3]}
    rows, emb = [], []
    for p in range(n_plates):
        offset, scale = rng.normal(0, 5, dim), np.exp(rng.normal(0, scale_sd, dim))
        exp = f"HUVEC-{p // 2 + 1:02d}"
        wells = (
            [(c, "treatment") for c in classes for _ in range(3)]
            + [(layout.NEGATIVE_ID, "negative_control")] * 4
            + [(layout.N_TREATMENTS, "positive_control")] * 2
        )
        for label, wt in wells:
            signal = (
                classes[label]
                if wt == "treatment"
                else (np.full(dim, 2.0) if wt == "positive_control" else np.zeros(dim))
            )
            emb.append((signal + rng.normal(0, 0.3, dim)) * scale + offset)
            rows.append(
                {
                    "experiment": exp,
                    "plate": p % 2 + 1,
                    "cell_type": "HUVEC",
                    "well_type": wt,
                    "sirna": label,
                }
            )
    return np.array(emb), pd.DataFrame(rows)


def _plate_offset_share(x, meta):
    """Share of the variance explained by the plate (0 when plate effects are gone)."""
    plate = meta.experiment + "_" + meta.plate.astype(str)
    means = pd.DataFrame(x).groupby(plate.to_numpy()).transform("mean").to_numpy()
    return ((means - x.mean(0)) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()


def _class_accuracy(x, meta):
    treat = (meta.well_type == "treatment").to_numpy()
    logits = embed.centroid_logits(x[treat], meta[treat], x[treat], meta[treat])
    return (logits.argmax(1) == meta.sirna.to_numpy()[treat]).mean()


@pytest.mark.parametrize(
    "steps",
    [["center_neg"], ["standardize"], ["tvn"], ["center_neg", "align_pos"], ["tvn", "align_pos"]],
)
def test_corrections_remove_plate_offset_and_keep_class_signal(steps):
    emb, meta = _planted()
    before = _plate_offset_share(emb, meta)
    fixed = embed.correct_embeddings(emb, meta, steps)
    assert before > 0.5
    assert _plate_offset_share(fixed, meta) < 0.05
    assert _class_accuracy(fixed, meta) > 0.95
    assert _class_accuracy(emb, meta) < _class_accuracy(fixed, meta)


@pytest.mark.parametrize("steps", [["standardize"], ["center_neg", "standardize"]])
def test_scaling_corrections_also_remove_plate_scale(steps):
    emb, meta = _planted(scale_sd=0.4)
    fixed = embed.correct_embeddings(emb, meta, steps)
    spread = [
        fixed[(meta.plate == p).to_numpy() & (meta.experiment == e).to_numpy()].std(0)
        for e, p in meta[["experiment", "plate"]].drop_duplicates().itertuples(index=False)
    ]
    raw = [
        emb[(meta.plate == p).to_numpy() & (meta.experiment == e).to_numpy()].std(0)
        for e, p in meta[["experiment", "plate"]].drop_duplicates().itertuples(index=False)
    ]
    assert np.std(np.log(spread), axis=0).mean() < 0.5 * np.std(np.log(raw), axis=0).mean()
    assert _class_accuracy(fixed, meta) > 0.9


def test_align_pos_moves_experiments_onto_shared_controls():
    emb, meta = _planted()
    shifted = emb.copy()
    shifted[(meta.experiment == "HUVEC-02").to_numpy()] += 10.0
    out = embed.align_pos(shifted, meta, "experiment")
    pos = (meta.well_type == "positive_control").to_numpy()
    cents = [out[pos & (meta.experiment == e).to_numpy()].mean(0) for e in meta.experiment.unique()]
    assert np.ptp(np.array(cents), axis=0).max() < 1e-9


def test_out_of_fold_embeddings_and_heads_through_submit(
    trained, tiny_screen, tiny_store, tmp_path
):
    common = [
        "--run",
        str(trained),
        "--data",
        str(tiny_screen),
        "--store",
        str(tiny_store),
        "--views",
        "2",
    ]
    assert cli.main(["embed", *common, "--split", "0", "--out", str(tmp_path / "fold.npz")]) == 0
    assert (
        cli.main(["embed", *common, "--split", "train", "--out", str(tmp_path / "train.npz")]) == 0
    )
    assert cli.main(["embed", *common, "--split", "test", "--out", str(tmp_path / "test.npz")]) == 0
    fold, trainset = read_logits(tmp_path / "fold.npz"), read_logits(tmp_path / "train.npz")
    import json

    held = set(json.loads((trained / "split.json").read_text())["held_out_experiments"])
    assert (
        set(fold["experiment"]) == held and fold["oof"].all()
    )  # out of fold: never a training sample
    assert not trainset["oof"][~np.isin(trainset["experiment"], list(held))].any()
    assert {"negative_control", "positive_control", "treatment"} <= set(fold["well_type"])
    # a head refuses embeddings the model trained on
    with pytest.raises(ValueError, match="trained on"):
        embed_head.fit_apply(
            tmp_path / "train.npz", tmp_path / "test.npz", tmp_path / "x.npz", ["tvn"]
        )
    for head in ("centroid", "linear"):
        out = tmp_path / f"{head}.npz"
        assert (
            cli.main(
                [
                    "embed-head",
                    "--train",
                    str(tmp_path / "fold.npz"),
                    "--apply",
                    str(tmp_path / "test.npz"),
                    "--correction",
                    "tvn,align_pos",
                    "--head",
                    head,
                    "--out",
                    str(out),
                ]
            )
            == 0
        )
        logits = read_logits(out)
        assert logits["logits"].shape[1] == layout.N_CLASSES
        assert sorted(logits["id_code"]) == sorted(pd.read_csv(tiny_screen / "test.csv").id_code)
        assert (
            cli.main(
                [
                    "submit",
                    "--logits",
                    str(out),
                    str(tmp_path / "test.npz"),
                    "--data",
                    str(tiny_screen),
                    "--out",
                    str(tmp_path / f"{head}.csv"),
                ]
            )
            == 2
        )  # the embedding file has controls too: refused
    test_cnn = tmp_path / "cnn.npz"
    assert cli.main(["predict", *common, "--split", "test", "--out", str(test_cnn)]) == 0
    assert (
        cli.main(
            [
                "submit",
                "--logits",
                str(tmp_path / "centroid.npz"),
                str(test_cnn),
                "--data",
                str(tiny_screen),
                "--out",
                str(tmp_path / "ens.csv"),
                "--labels",
                str(tiny_screen / "test_labels.csv"),
            ]
        )
        == 0
    )
    assert len(pd.read_csv(tmp_path / "ens.csv")) == len(pd.read_csv(tiny_screen / "test.csv"))
    # the same model's profile tables: the well table a profiling user reads
    table = tmp_path / "fold.parquet"
    assert cli.main(["embed", *common, "--split", "0", "--out", str(table)]) == 0
    frame = pd.read_parquet(table)
    npz = read_logits(tmp_path / "fold.npz")
    assert sorted(frame["Metadata_id_code"]) == sorted(npz["id_code"])
    order = pd.Series(range(len(npz["id_code"])), index=npz["id_code"])
    rows = order.loc[frame["Metadata_id_code"]].to_numpy()
    emb = frame[[c for c in frame.columns if c.startswith("emb_")]].to_numpy()
    np.testing.assert_allclose(emb, npz["embedding"][rows], rtol=1e-6)
    np.testing.assert_array_equal(frame["Metadata_oof"], npz["oof"][rows])

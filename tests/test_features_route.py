"""The hand-crafted route to a submission: `rcic features` -> `rcic features-head` -> `rcic submit`,
alone and mixed with a CNN's logits."""

import json

import numpy as np
import pandas as pd
import pytest
from scipy.special import log_softmax

from rcic import cli, layout
from rcic.data import tables
from rcic.errors import RcicError
from rcic.inference.logitsfile import read_logits
from rcic.plates import submit
from rcic.profiling import features_head


@pytest.fixture(scope="module")
def head(tiny_screen, tiny_store, tmp_path_factory):
    """The route as a user runs it on the tiny screen: features, then the head's logits file."""
    work = tmp_path_factory.mktemp("route")
    table, out = work / "features.parquet", work / "features.npz"
    common = ["--data", str(tiny_screen), "--store", str(tiny_store)]
    assert cli.main(["features", *common, "--out", str(table)]) == 0
    assert cli.main(["features-head", "--table", str(table), "--out", str(out)]) == 0
    return work


def test_the_head_writes_every_test_well_with_its_temperature(head, tiny_screen):
    f = read_logits(head / "features.npz")
    assert sorted(f["id_code"]) == sorted(pd.read_csv(tiny_screen / "test.csv")["id_code"])
    assert f["logits"].shape[1] == layout.N_CLASSES and 0.01 < float(f["temperature"]) < 100
    rec = json.loads((head / "features.choices.json").read_text())
    scores = rec["validation_accuracy"]
    assert len(scores) == 16  # 2 corrections x 2 feature sets x 4 strengths
    c = rec["choice"]
    assert scores[f"{c['correction']} {c['features']} C={c['c']:g}"] == max(scores.values())


def test_the_route_reads_the_labels_through_the_plate_stages(head, tiny_screen, tmp_path):
    res = submit.run_submit(
        [head / "features.npz"],
        tiny_screen,
        tmp_path / "submission.csv",
        labels=tiny_screen / "test_labels.csv",
    )
    scores = {k: v["overall"] for k, v in res.scores.items()}
    n_sirna = pd.read_csv(tiny_screen / "test_labels.csv")["sirna"].nunique()
    assert scores["ensemble"] > 1.5 / n_sirna  # the statistics read the tiny screen's labels
    assert scores["wells"] > scores["ensemble"]


def test_cnn_and_features_mix_each_by_its_own_temperature(
    head, trained, tiny_screen, tiny_store, tmp_path
):
    common = ["--run", str(trained), "--data", str(tiny_screen), "--store", str(tiny_store)]
    val, test = tmp_path / "val.npz", tmp_path / "cnn.npz"
    assert cli.main(["predict", *common, "--split", "0", "--out", str(val)]) == 0
    argv = [
        "predict",
        *common,
        "--split",
        "test",
        "--out",
        str(test),
        "--temperature-from",
        str(val),
    ]
    assert cli.main(argv) == 0
    feats = head / "features.npz"
    ids, mixed, calibrated = submit.combine_logits([test, feats])
    assert calibrated
    by_hand = 0
    for path in (test, feats):
        f = read_logits(path)
        rows = pd.Series(np.arange(len(f["id_code"])), index=f["id_code"]).loc[ids].to_numpy()
        z = f["logits"][rows, : layout.N_TREATMENTS] / float(f["temperature"])
        by_hand = by_hand + log_softmax(z.astype(np.float64), axis=1) / 2
    np.testing.assert_allclose(mixed, log_softmax(by_hand, axis=1), atol=1e-4)
    out = tmp_path / "submission.csv"
    argv = [
        "submit",
        "--logits",
        str(test),
        "--logits",
        str(feats),
        "--data",
        str(tiny_screen),
        "--out",
        str(out),
    ]
    assert cli.main(argv) == 0
    assert len(pd.read_csv(out)) == len(ids)


def test_a_file_of_other_wells_is_refused_by_name(head, tiny_screen, tmp_path):
    table, _ = tables.read_table(head / "features.parquet")
    test = table[(table["Metadata_split"] == "test") & (table["Metadata_pert_type"] == "trt")]
    fewer = tmp_path / "fewer.parquet"
    tables.write_table(table.drop(index=test.index[0]), fewer, {})
    features_head.fit_head([fewer], tmp_path / "fewer.npz")
    argv = [
        "submit",
        "--logits",
        str(head / "features.npz"),
        "--logits",
        str(tmp_path / "fewer.npz"),
        "--data",
        str(tiny_screen),
        "--out",
        str(tmp_path / "s.csv"),
    ]
    assert cli.main(argv) == 2
    with pytest.raises(RcicError, match="fewer.npz.*1 missing"):
        submit.combine_logits([head / "features.npz", tmp_path / "fewer.npz"])


def test_per_plate_z_uses_each_plates_treatment_wells():
    wells = pd.DataFrame(
        {
            "plate": ["a", "a", "a", "b", "b", "b"],
            "well_type": ["treatment", "treatment", "negative_control"] * 2,
        }
    )
    values = np.array([[1.0], [3.0], [100.0], [10.0], [14.0], [0.0]])
    z = features_head.per_plate_z(values, wells)
    np.testing.assert_allclose(z[:, 0], [-1, 1, 98, -1, 1, -6], atol=1e-6)


def test_kinds_join_well_by_well_and_a_mismatch_is_named(head, tmp_path):
    table, _ = tables.read_table(head / "features.parquet")
    feats = tables.feature_columns(table)
    other = table[tables.metadata_columns(table)].copy()
    other["extra_a"], other["extra_b"] = table[feats[0]] ** 2, table[feats[1]] * 3
    other = other.sample(frac=1.0, random_state=0)  # another row order: joined by well, not row
    tables.write_table(other, tmp_path / "other.parquet", {})
    joined, _ = features_head.join_tables([head / "features.parquet", tmp_path / "other.parquet"])
    assert tables.feature_columns(joined) == [*feats, "extra_a", "extra_b"]
    row = joined.set_index("Metadata_id_code").loc[table["Metadata_id_code"].iat[5]]
    assert row["extra_a"] == pytest.approx(table[feats[0]].iat[5] ** 2)
    tables.write_table(other.iloc[1:], tmp_path / "short.parquet", {})
    with pytest.raises(RcicError, match="short.parquet: holds other wells"):
        features_head.join_tables([head / "features.parquet", tmp_path / "short.parquet"])
    clash = other.rename(columns={"extra_a": feats[0]})
    tables.write_table(clash, tmp_path / "clash.parquet", {})
    with pytest.raises(RcicError, match="clash.parquet: features also in another table"):
        features_head.join_tables([head / "features.parquet", tmp_path / "clash.parquet"])

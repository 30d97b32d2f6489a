"""Profile tables, the field's metrics on them, and `rcic profiles`."""

import json
import math
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from rcic import cli
from rcic.data import tables
from rcic.errors import InputError
from rcic.profiling import metrics as profile_metrics
from rcic.profiling import profiles


def test_relationship_recall_by_hand():
    """Five unit vectors at known angles: the 10 pairwise cosines, their 5th and 95th percentiles
    (numpy's linear interpolation), and which annotated pairs fall outside, all worked out by hand."""
    angle = {"A": 0, "B": 5, "C": 60, "D": 150, "E": 200}
    profiles = pd.DataFrame(
        [[math.cos(math.radians(a)), math.sin(math.radians(a))] for a in angle.values()],
        index=list(angle),
        columns=["f0", "f1"],
    )
    c = lambda d: math.cos(math.radians(d))  # noqa: E731
    # sorted cosines: BE c(195), AE c(200), AD c(150), BD c(145), CE c(140), CD 0, AC c(60),
    # BC c(55), DE c(50), AB c(5); the 5th percentile lies 0.45 of the way from the 1st to the
    # 2nd, the 95th 0.55 of the way from the 9th to the 10th
    lo = c(195) + 0.45 * (c(200) - c(195))
    hi = c(50) + 0.55 * (c(5) - c(50))
    pairs = pd.DataFrame(
        [("A", "B"), ("E", "B"), ("C", "D"), ("B", "A"), ("A", "A"), ("A", "Z")],
        columns=["entity1", "entity2"],
    )
    res = profile_metrics.relationship_recall(profiles, pairs)
    assert res["thresholds"] == pytest.approx([lo, hi])
    # AB (above) and BE (below) are recalled, CD is not; BA repeats AB; AA and AZ are not pairs
    assert res["n_pairs"] == 3 and res["n_missing"] == 3
    assert res["recall"] == pytest.approx(2 / 3)


def test_recall_of_random_profiles_is_about_a_tenth():
    rng = np.random.default_rng(0)
    profiles = pd.DataFrame(rng.normal(size=(300, 16)), index=[f"g{i}" for i in range(300)])
    pairs = pd.DataFrame(rng.integers(300, size=(3000, 2)), columns=["entity1", "entity2"])
    pairs = "g" + pairs.astype(str)
    res = profile_metrics.relationship_recall(profiles, pairs)
    assert 0.08 < res["recall"] < 0.12


@pytest.fixture(scope="module")
def feature_profiles(tiny_screen, tiny_store, tmp_path_factory):
    """`rcic features` then `rcic profiles` on the tiny screen, as a user would run them."""
    work = tmp_path_factory.mktemp("profiles")
    table = work / "features.parquet"
    argv = ["features", "--data", str(tiny_screen), "--store", str(tiny_store), "--out", str(table)]
    assert cli.main(argv) == 0
    out = work / "standardize"
    argv = [
        "profiles",
        "--table",
        str(table),
        "--truth",
        str(tiny_screen / "synth.json"),
        "--out",
        str(out),
    ]
    assert cli.main(argv) == 0
    return table, out


def test_a_users_notebook_gets_the_numbers_rcic_reports(feature_profiles):
    """Read the Parquet tables with pandas and run pycytominer and copairs on them by hand."""
    import pyarrow.parquet as pq
    from copairs.map import average_precision, mean_average_precision
    from copairs.matching import assign_reference_index
    from pycytominer import consensus, normalize

    table, out = feature_profiles
    raw, wells = pd.read_parquet(table), pd.read_parquet(out / "wells.parquet")
    meta = [c for c in raw.columns if c.startswith("Metadata_")]
    feats = [c for c in raw.columns if not c.startswith("Metadata_")]
    assert meta == list(tables.METADATA) and len(feats) == 63
    assert all(raw[c].dtype == np.float32 for c in feats)
    assert raw["Metadata_Plate"].str.fullmatch(r".+-\d\d_[1-4]").all()  # unique across experiments
    assert set(raw["Metadata_pert_type"]) == {"trt", "poscon", "negcon"}
    prov = json.loads(pq.read_schema(out / "wells.parquet").metadata[b"rcic"])
    assert prov["command"] == "rcic features" and prov["correction"] == "standardize"
    # the correction: pycytominer's standardize on each experiment's negative controls
    by_hand = pd.concat(
        normalize(
            part, features=feats, meta_features=meta, samples="Metadata_pert_type == 'negcon'"
        )
        for _, part in raw.groupby("Metadata_Batch", sort=False)
    ).loc[raw.index]
    np.testing.assert_allclose(wells[feats], by_hand[feats], rtol=1e-4, atol=1e-4)
    # the activity figure: copairs with nothing but what metrics.json records
    metrics = json.loads((out / "metrics.json").read_text())
    p = metrics["copairs_activity"]
    labelled = assign_reference_index(
        wells.query(p["rows"]).reset_index(drop=True),
        p["reference_query"],
        reference_col=p["reference_col"],
    )
    ap = average_precision(
        labelled[[c for c in labelled.columns if c.startswith("Metadata_")]],
        labelled[feats].to_numpy(np.float64),
        p["pos_sameby"],
        p["pos_diffby"],
        p["neg_sameby"],
        p["neg_diffby"],
    )
    ap = ap.query(p["map_rows"])
    maps = mean_average_precision(ap, p["map_sameby"], p["null_size"], p["threshold"], p["seed"])
    assert metrics["activity"]["mAP"] == pytest.approx(maps["mean_average_precision"].mean())
    assert metrics["activity"]["fraction_retrieved"] == pytest.approx(
        maps["below_corrected_p"].mean()
    )
    # the consensus: pycytominer's median per siRNA x cell type
    cons = pd.read_parquet(out / "consensus.parquet")
    keys = ["Metadata_sirna", "Metadata_CellType"]
    mine = cons[cons["Metadata_CellType"] != "all"].set_index(keys)[feats].sort_index()
    theirs = consensus(wells[wells["Metadata_sirna"] != ""][keys + feats], keys, features=feats)
    np.testing.assert_allclose(mine, theirs.set_index(keys)[feats].sort_index(), rtol=1e-5)
    assert (cons["Metadata_n_wells"] >= 1).all()


def test_synthetic_truth_drives_consistency_recall_and_spearman(feature_profiles, tiny_screen):
    _, out = feature_profiles
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0 <= metrics["consistency"]["mAP"] <= 1
    assert metrics["relationship_recall"]["n_pairs"] > 0
    assert set(metrics["true_vs_measured_spearman"]) == {"HEPG2", "HUVEC", "RPE", "U2OS"}
    # consensus profiles equal to the true phenotypes correlate perfectly with them
    pathways, truth = profiles.synthetic_truth(tiny_screen / "synth.json")
    ids = np.array(sorted(pathways)[:12])
    cons = pd.DataFrame(
        {"Metadata_CellType": "RPE", "Metadata_pert_type": "trt", "Metadata_sirna_id": ids}
    )
    cons = tables.make_table(cons, truth["RPE"][ids] * 3.0)
    rho = profile_metrics.true_vs_measured(cons, truth)
    assert rho == {"RPE": pytest.approx(1.0)}


def test_importing_pycytominer_leaves_other_commands_unchanged(tiny_screen, tmp_path):
    """pycytominer switches pandas' copy-on-write on when imported: submit's outputs in a process
    that imported it match those of one that did not."""
    from rcic.inference.logitsfile import write_logits

    test = pd.read_csv(tiny_screen / "test.csv")
    z = np.random.default_rng(0).normal(size=(len(test), 1139)).astype(np.float32)
    logits = write_logits(tmp_path / "l.npz", test.id_code, z)
    outs = []
    for k, pre in enumerate(("", "import pycytominer; ")):
        sub = tmp_path / str(k) / "submission.csv"
        argv = [
            "submit",
            "--logits",
            str(logits),
            "--data",
            str(tiny_screen),
            "--out",
            str(sub),
            "--labels",
            str(tiny_screen / "test_labels.csv"),
        ]
        code = f"{pre}import sys; from rcic import cli; sys.exit(cli.main({argv!r}))"
        subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
        stages = json.loads((sub.parent / "stages.json").read_text())
        stages.pop("seconds")
        stages.pop("files")
        outs.append((sub.read_bytes(), stages))
    assert outs[0] == outs[1]


def test_a_file_that_is_not_a_profile_table_is_named(tmp_path):
    bad = tmp_path / "x.parquet"
    bad.write_text("id,feature\n1,2\n")
    with pytest.raises(InputError, match="x.parquet"):
        tables.read_table(bad)
    pd.DataFrame({"emb_0000": [1.0]}).to_parquet(tmp_path / "y.parquet")
    with pytest.raises(InputError, match="not an rcic profile table"):
        tables.read_table(tmp_path / "y.parquet")


def test_spherize_chooses_its_epsilon_on_the_training_split(feature_profiles, tmp_path):
    """`--epsilon auto` tries every epsilon on the train split's wells and keeps the best; the
    whitened wells (fitted on all wells) have an identity covariance up to that epsilon."""
    table, _ = feature_profiles
    m = profiles.run_profiles([table], tmp_path / "sph", "spherize")
    scores = {float(k): v for k, v in m["epsilon_scores"].items()}
    assert set(scores) == set(profiles.EPSILONS)
    assert m["epsilon"] == max(scores, key=scores.get)
    # the tiny screen has one test experiment per cell type: no replicates to score there
    with pytest.raises(InputError, match="two wells of one cell type"):
        profiles.run_profiles([table], tmp_path / "t", "standardize", evaluate="test")
    raw = pd.read_parquet(table)
    for method in ("spherize", "spherize-pca"):  # ZCA and PCA whitening
        whitened = profiles.correct_profiles(raw, method, 1e-6)
        cov = np.cov(whitened[tables.feature_columns(whitened)].to_numpy(np.float64), rowvar=False)
        live = np.diag(cov) > 0.5  # features that were not constant
        assert np.allclose(cov[np.ix_(live, live)], np.eye(live.sum()), atol=0.05), method


def test_tvn_whitens_each_experiments_negative_controls(feature_profiles):
    """`--correction tvn`: every experiment's negative controls centred on zero, and their
    variation whitened up to the shrinkage (no direction above 1/0.9 of a unit variance, where
    the standardised features have correlated directions far above it)."""
    table, _ = feature_profiles
    raw = pd.read_parquet(table)
    out = profiles.correct_profiles(raw, "tvn")
    assert list(out.columns) == list(raw.columns)
    neg = out["Metadata_pert_type"] == "negcon"
    feats = tables.feature_columns(out)
    means = out[neg].groupby("Metadata_Batch")[feats].mean().to_numpy()
    np.testing.assert_allclose(means, 0, atol=1e-4)

    def top_variance(frame):
        x = frame[neg].groupby("Metadata_Batch")[feats].transform(lambda c: c - c.mean())
        return np.linalg.eigvalsh(np.cov(x.to_numpy(np.float64), rowvar=False)).max()

    assert 0.5 < top_variance(out) <= 1 / 0.9 + 1e-3
    assert top_variance(profiles.correct_profiles(raw, "standardize")) > 3
    with pytest.raises(InputError, match="at least 3 negative-control wells"):
        profiles.correct_profiles(raw[raw["Metadata_pert_type"] != "negcon"], "tvn")


def test_harmony_is_harmonypy_on_the_standardised_principal_components(feature_profiles):
    """`--correction harmony`: pycytominer's standardize, then harmonypy called directly on
    the first principal components (computed here with numpy); equal up to the components' signs,
    so the wells' pairwise distances agree."""
    import harmonypy
    from scipy.spatial.distance import pdist

    table, _ = feature_profiles
    raw = pd.read_parquet(table)
    mine = profiles.correct_profiles(raw, "harmony")
    feats = tables.feature_columns(mine)
    assert feats[0] == "harmony_0000" and len(feats) == min(profiles.HARMONY_PCS, 63, len(raw) - 1)
    x = profiles.correct_profiles(raw, "standardize")[tables.feature_columns(raw)].to_numpy(float)
    x = x[:, x.std(axis=0) > 0]
    x = (x - x.mean(axis=0)) / x.std(axis=0)
    u, s, _ = np.linalg.svd(x, full_matrices=False)
    pcs = u[:, : len(feats)] * s[: len(feats)]
    ho = harmonypy.run_harmony(pcs, raw[["Metadata_Batch"]], "Metadata_Batch", verbose=False)
    theirs = ho.Z_corr.T if ho.Z_corr.shape[1] == len(raw) else ho.Z_corr
    np.testing.assert_allclose(
        pdist(mine[feats].to_numpy(np.float64)), pdist(theirs), rtol=1e-3, atol=1e-3
    )
    assert not np.allclose(pdist(pcs), pdist(theirs), atol=1e-2)  # harmony moved the wells
    with pytest.raises(InputError, match="one experiment"):
        profiles.correct_profiles(
            raw[raw["Metadata_Batch"] == raw["Metadata_Batch"].iat[0]], "harmony"
        )


def test_corrections_are_a_comma_list_applied_in_order(feature_profiles, tmp_path):
    """`rcic profiles --correction standardize,tvn` applies both, in order, and records them;
    an unknown step or two whitening steps are refused by name before any work."""
    table, _ = feature_profiles
    raw = pd.read_parquet(table)
    both = profiles.correct_profiles(raw, "standardize,tvn")
    expected = profiles.correct_profiles(profiles.correct_profiles(raw, "standardize"), "tvn")
    pd.testing.assert_frame_equal(both, expected)
    assert not np.allclose(
        both[tables.feature_columns(raw)],
        profiles.correct_profiles(raw, "tvn")[tables.feature_columns(raw)],
    )
    m = profiles.run_profiles([table], tmp_path / "two", "standardize, tvn")
    assert m["correction"] == "standardize,tvn"
    with pytest.raises(InputError, match="'tvm'"):
        profiles.correction_steps("standardize,tvm")
    with pytest.raises(InputError, match="at most one whitening"):
        profiles.correction_steps("spherize,spherize-pca")
    argv = ["profiles", "--table", str(table), "--correction", "tvm", "--out", str(tmp_path / "x")]
    assert cli.main(argv) != 0 and not (tmp_path / "x").exists()


def test_a_wide_table_is_read_as_pandas_reads_it(tmp_path):
    """More features than are decoded at a time, a pandas index stored as a column: the frame is
    pandas' own, the index aside; a feature that is not a float is refused by name."""
    rng = np.random.default_rng(0)
    n = tables.READ_COLUMNS * 2 + 5
    wells = pd.DataFrame({c: ["x"] * 7 for c in tables.METADATA})
    feats = pd.DataFrame(rng.normal(size=(7, n)).astype(np.float32)).add_prefix("f")
    frame = pd.concat([wells, feats], axis=1).set_index(pd.Index(list("abcdefg"), name="w"))
    frame.to_parquet(tmp_path / "wide.parquet")
    read, _ = tables.read_table(tmp_path / "wide.parquet")
    expected = pd.read_parquet(tmp_path / "wide.parquet").reset_index(drop=True)
    pd.testing.assert_frame_equal(read, expected)
    frame.assign(f3=np.arange(7)).to_parquet(tmp_path / "ints.parquet")
    with pytest.raises(InputError, match="ints.parquet: profile features must be float"):
        tables.read_table(tmp_path / "ints.parquet")


def test_profiles_computed_in_pieces_equal_the_whole(feature_profiles, monkeypatch):
    """The consensus a few siRNAs at a time, the activity a cell type at a time in small pair
    batches: the numbers of pycytominer and copairs run on the whole table at once."""
    import copairs.map
    from pycytominer import consensus

    _, out = feature_profiles
    wells = pd.read_parquet(out / "wells.parquet")
    feats = tables.feature_columns(wells)
    whole, _ = profile_metrics.activity(wells)
    calls = []
    monkeypatch.setattr(profiles, "CONSENSUS_SIRNAS", 2)
    monkeypatch.setattr(profile_metrics, "PAIR_BATCH_BYTES", 1)
    ranks = copairs.map.average_precision
    monkeypatch.setattr(
        copairs.map,
        "average_precision",
        lambda meta, *a, **kw: calls.append((len(meta), kw["batch_size"])) or ranks(meta, *a, **kw),
    )
    pieces, _ = profile_metrics.activity(wells)
    pd.testing.assert_frame_equal(pieces, whole)
    assert len(calls) == wells["Metadata_CellType"].nunique() and {b for _, b in calls} == {64}
    assert sum(n for n, _ in calls) == len(wells.query(profile_metrics.ACTIVITY_ROWS))
    mine = profiles.consensus(wells)
    keys = profiles.CONSENSUS_KEYS
    labelled = wells[wells["Metadata_sirna"] != ""][keys + feats]
    for level in (labelled, labelled.assign(Metadata_CellType="all")):
        theirs = consensus(level, keys, features=feats)
        got = mine[mine["Metadata_CellType"].isin(level["Metadata_CellType"].unique())]
        assert len(got) == len(theirs) > 2 * profiles.CONSENSUS_SIRNAS
        np.testing.assert_allclose(got[feats], theirs[feats].astype(np.float32))
        assert got[keys].to_numpy().tolist() == theirs[keys].to_numpy().tolist()


def test_copairs_batches_stay_within_their_budget_on_any_cores():
    for threads in (1, 2, 64, 256):
        for n_features in (63, 1024, 4096):
            rows = profile_metrics.pair_batch_size(n_features, threads)
            held = rows * threads * 6 * 8 * n_features
            assert held <= profile_metrics.PAIR_BATCH_BYTES or rows == 64
    assert profile_metrics.pair_batch_size(1024, 2) < 20000  # copairs' default: ~1 GB a thread

import shutil

import numpy as np
import pandas as pd
import pytest

from rcic import layout
from rcic.data import metadata, rules
from rcic.data.metadata import MetadataError, load_metadata

from .conftest import shared_or_skip

KAGGLE = ["train.csv", "test.csv", "train_controls.csv", "test_controls.csv"]


def _copy_tables(src, dst):
    dst.mkdir()
    for name in KAGGLE:
        shutil.copy(src / name, dst / name)
    return dst


def test_site_table_shape(tiny_screen, tiny_sites):
    wells = pd.concat([pd.read_csv(tiny_screen / n) for n in KAGGLE])
    assert len(tiny_sites) == 2 * len(wells)
    assert list(tiny_sites.columns) == metadata.SITE_COLUMNS
    test_treat = tiny_sites[(tiny_sites.split == "test") & (tiny_sites.well_type == "treatment")]
    assert (test_treat.sirna == layout.UNKNOWN).all()
    assert set(tiny_sites.cell_type) == set(layout.CELL_TYPES)


def _to_rerelease(src, dst, rng):
    """Rename integer labels to strings with a random, non-trivial naming."""
    ids = np.arange(layout.N_CLASSES)
    names = {int(i): f"sirna_{n}" for i, n in zip(ids, rng.permutation(ids), strict=True)}
    names[layout.NEGATIVE_ID] = "UNTREATED"
    dst.mkdir()
    for name in KAGGLE:
        t = pd.read_csv(src / name)
        if "sirna" in t:
            t["sirna"] = t["sirna"].map(names)
        t.to_csv(dst / name, index=False)
    return names


def test_rerelease_mapping_derived_by_join(tiny_screen, tiny_sites, tmp_path):
    names = _to_rerelease(tiny_screen, tmp_path / "re", np.random.default_rng(0))
    assert metadata.detect_format(tmp_path / "re") == "rerelease"
    with pytest.raises(MetadataError, match="--reference"):
        load_metadata(tmp_path / "re")
    got = load_metadata(tmp_path / "re", reference=tiny_screen)
    pd.testing.assert_frame_equal(got, tiny_sites)
    mapping = pd.DataFrame({"name": list(names.values()), "sirna": list(names)})
    mapping.to_csv(tmp_path / "map.csv", index=False)
    pd.testing.assert_frame_equal(
        load_metadata(tmp_path / "re", label_map=tmp_path / "map.csv"), tiny_sites
    )


def test_rxrx1_v1_metadata(tiny_screen, tiny_sites, tmp_path):
    # rxrx1 v1.0 lists every site, test labels included; hide nothing and compare labelled rows
    labels = pd.read_csv(tiny_screen / "test_labels.csv").set_index("id_code")["sirna"]
    full = tiny_sites.copy()
    hidden = full.sirna == layout.UNKNOWN
    full.loc[hidden, "sirna"] = full.loc[hidden, "id_code"].map(labels)
    v1 = pd.DataFrame(
        {
            "site_id": full.id_code + "_" + full.site.astype(str),
            "well_id": full.id_code,
            "cell_type": full.cell_type,
            "dataset": full.split,
            "experiment": full.experiment,
            "plate": full.plate,
            "well": full.well,
            "site": full.site,
            "well_type": full.well_type,
            "sirna": "s" + full.sirna.astype(str),
            "sirna_id": full.sirna,
        }
    ).sample(frac=1, random_state=0)
    (tmp_path / "v1").mkdir()
    v1.to_csv(tmp_path / "v1" / "metadata.csv", index=False)
    assert metadata.detect_format(tmp_path / "v1") == "rxrx1"
    pd.testing.assert_frame_equal(
        load_metadata(tmp_path / "v1"),
        full.sort_values(["split", "experiment", "plate", "well", "site"]).reset_index(drop=True),
    )


@pytest.mark.parametrize(
    "file,change,message",
    [
        ("train.csv", lambda t: pd.concat([t, t.iloc[[3]]]), "duplicate id_code"),
        (
            "train.csv",
            lambda t: t.assign(
                well=t.well.where(t.index != 2, "A01"),
                id_code=t.id_code.where(
                    t.index != 2, t.experiment + "_" + t.plate.astype(str) + "_A01"
                ),
            ),
            "outside the 308 usable wells",
        ),
        (
            "train.csv",
            lambda t: t.assign(plate=t.plate.where(t.index != 4, 5)),
            "plate must be one of",
        ),
        ("train.csv", lambda t: t.assign(sirna=t.sirna.where(t.index != 5, 5000)), "unknown label"),
        (
            "test.csv",
            lambda t: t.assign(
                experiment=t.experiment.where(t.index != 0, "HEPG2-01"),
                id_code=t.id_code.where(
                    t.index != 0, "HEPG2-01_" + t.plate.astype(str) + "_" + t.well
                ),
            ),
            "in both train and test",
        ),
        (
            "train.csv",
            lambda t: t.assign(id_code=t.id_code.where(t.index != 6, "HEPG2-01_4_O23")),
            "id_code disagrees",
        ),
    ],
    ids=["duplicate", "well", "plate", "label", "split-overlap", "id-mismatch"],
)
def test_validation_errors_name_file_and_row(tiny_screen, tmp_path, file, change, message):
    data = _copy_tables(tiny_screen, tmp_path / "bad")
    table = pd.read_csv(data / file)
    change(table).to_csv(data / file, index=False)
    with pytest.raises(MetadataError, match=message) as err:
        load_metadata(data)
    if message != "in both train and test":
        assert file in str(err.value)
    if message not in ("duplicate id_code", "in both train and test"):
        assert "line" in str(err.value)


def test_missing_required_file(tiny_screen, tmp_path):
    data = _copy_tables(tiny_screen, tmp_path / "bad")
    (data / "test.csv").unlink()
    with pytest.raises(MetadataError, match="test.csv: required file is missing"):
        load_metadata(data)


# --- the real tables, when ../shared is present --------------------------------------------


@pytest.fixture(scope="module")
def real():
    root = shared_or_skip()
    return root, load_metadata(root / "kaggle")


def test_real_row_counts(real):
    root, sites = real
    wells = metadata.wells_of(sites)
    counts = {n: len(pd.read_csv(root / "kaggle" / n)) for n in KAGGLE}
    assert len(wells) == sum(counts.values())
    assert (wells.split == "train").sum() == counts["train.csv"] + counts["train_controls.csv"]
    assert len(sites) == 2 * len(wells)
    assert wells.experiment.nunique() == 51


def test_real_releases_agree(real):
    root, sites = real
    re = load_metadata(root / "kaggle-rerelease", reference=root / "kaggle")
    both = sites.merge(re, on=["id_code", "site"], suffixes=("", "_re"))
    assert len(both) == len(sites)  # the re-release holds every Kaggle well
    assert (both.sirna == both.sirna_re).all()
    # the mapping derived from the treatments alone also labels every control the same way
    named = metadata._read_kaggle_tables(root / "kaggle-rerelease")
    numbered = metadata._read_kaggle_tables(root / "kaggle")
    mapping = metadata.derive_label_mapping(named[:1], numbered[:1])
    ctrl_named = pd.read_csv(root / "kaggle-rerelease" / "train_controls.csv")
    ctrl = pd.read_csv(root / "kaggle" / "train_controls.csv").merge(ctrl_named, on="id_code")
    treat_names = set(mapping)
    assert len(mapping) == layout.N_TREATMENTS and not treat_names & set(ctrl.sirna_y)


def test_real_plate_facts(real):
    _, sites = real
    wells = metadata.wells_of(sites)
    pg = rules.discover_groups(wells)
    assert [len(g) for g in pg.groups] == [277] * 4
    assert len(np.unique(np.concatenate(pg.groups))) == layout.N_TREATMENTS
    assert pg.cyclic
    seen = {s for s in pg.shifts.values()}
    assert len(seen) == 3  # three of the four shifts occur in train
    assert all(f.ok for f in rules.check_rules(wells))
    counts = wells[wells.well_type == "treatment"].groupby(["experiment", "plate"]).size()
    assert counts.max() == 277 and counts.min() < 277  # some plates miss wells


@pytest.mark.parametrize(
    "bad_value, shown",
    [("-1", "-1"), ("3.5", "3.5"), ("sirna_banana", "'sirna_banana'")],
)
def test_a_bad_label_is_named_by_value_and_line(tiny_screen, tmp_path, bad_value, shown):
    """One bad cell in the integer release is an error about that cell, not a change of format."""
    data = _copy_tables(tiny_screen, tmp_path / "bad")
    table = pd.read_csv(data / "train.csv", dtype=str)
    table.loc[3, "sirna"] = bad_value
    table.to_csv(data / "train.csv", index=False)
    with pytest.raises(MetadataError) as err:
        load_metadata(data)
    msg = str(err.value)
    assert "train.csv" in msg and "unknown label" in msg and f"5 ({shown})" in msg
    assert "re-release" not in msg


def test_well_and_id_code_errors_show_the_values(tiny_screen, tmp_path):
    data = _copy_tables(tiny_screen, tmp_path / "bad")
    table = pd.read_csv(data / "train.csv")
    table.loc[2, "id_code"] = "X-99_1_B03"
    table.to_csv(data / "train.csv", index=False)
    with pytest.raises(MetadataError, match=r"line\(s\) 4 \('X-99_1_B03 \(columns say "):
        load_metadata(data)


def test_binary_file_as_csv_is_named(tiny_screen, tmp_path):
    data = _copy_tables(tiny_screen, tmp_path / "bad")
    (data / "train.csv").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    with pytest.raises(MetadataError, match="train.csv: not a text CSV"):
        load_metadata(data)


def test_header_only_train_table_is_the_integer_release(tiny_screen, tmp_path):
    """A user packing only control wells: train.csv with a header and no rows."""
    data = _copy_tables(tiny_screen, tmp_path / "bad")
    header = pd.read_csv(data / "train.csv").iloc[:0]
    header.to_csv(data / "train.csv", index=False)
    sites = load_metadata(data)
    assert (sites[sites.split == "train"].well_type != "treatment").all()
    assert len(sites[sites.split == "train"])

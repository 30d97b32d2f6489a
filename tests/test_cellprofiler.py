"""Segmentation (rcic.data.segment) and CellProfiler measurements (rcic.profiling.cpfeatures) on generated and
real sites, and `rcic features --kind cellprofiler` as a user runs it."""

import warnings

import numpy as np
import pandas as pd
import pytest
import zarr

from rcic import cli
from rcic.data import metadata, packing, tables
from rcic.data.segment import Segmenter, estimate_diameter
from rcic.errors import InputError
from rcic.profiling import cpfeatures
from rcic.profiling import features as features_pipeline
from rcic.synthetic import synth

from .conftest import shared_or_skip
from .test_benchmarks import _load

# Two experiments of two cell types (the densest and a sparse one), three wells a plate: 96 sites.
SMALL = synth.Preset(
    "cp-small",
    group_size=2,
    n_positive=0,
    train_experiments=(1, 0, 0, 0),
    test_experiments=(0, 0, 0, 1),
    image_size=32,
    cell_radius=8.0,
    missing_wells=0,
    strength=15.0,
)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A generated screen, its store, and `rcic features --kind cellprofiler` run on it with the
    per-cell table and the masks, as a user would."""
    work = tmp_path_factory.mktemp("cp")
    data = synth.generate(work / "data", SMALL, seed=11, workers=1)
    sites = metadata.load_metadata(data)
    packing.pack(data, sites, work / "store", workers=1)
    argv = [
        "features",
        "--kind",
        "cellprofiler",
        "--data",
        str(data),
        "--store",
        str(work / "store"),
        "--out",
        str(work / "cp.parquet"),
        "--cells",
        str(work / "cells"),
        "--masks",
        str(work / "masks.zarr"),
        "--workers",
        "2",
    ]
    assert cli.main(argv) == 0
    return work


def test_nuclei_per_site_match_the_generators_count(small):
    truth = pd.read_csv(small / "data" / "site_cells.csv")
    cells = pd.read_parquet(small / "cells")
    found = cells.groupby(["Metadata_id_code", "Metadata_Site"]).size().rename("found")
    both = truth.join(found, on=["id_code", "site"]).fillna({"found": 0})
    both["cell_type"] = both["id_code"].str.split("-").str[0]
    per_type = both.groupby("cell_type")[["n_cells", "found"]].sum()
    assert set(per_type.index) == {"HEPG2", "U2OS"}
    ratio = per_type["found"] / per_type["n_cells"]
    assert ratio.between(0.75, 1.25).all(), ratio
    # and site by site: most sites within a quarter of the truth
    close = (both["found"] - both["n_cells"]).abs() <= 0.25 * both["n_cells"] + 1
    assert close.mean() >= 0.8


def test_masks_nest_nuclei_in_cells_and_cytoplasm_around_them(small):
    masks = zarr.open_array(small / "masks.zarr", mode="r")
    assert masks.attrs["objects"] == ["nuclei", "cells", "cytoplasm"]
    labels = masks[:]
    nuclei, cells, cyto = labels[:, 0], labels[:, 1], labels[:, 2]
    assert (nuclei.reshape(len(labels), -1).max(1) > 0).all()  # every site has nuclei
    inside = nuclei > 0
    assert (cells[inside] == nuclei[inside]).all()  # a nucleus lies in its own cell
    assert not cyto[inside].any()  # the cytoplasm leaves the nucleus out
    rest = cells > 0
    assert (cyto[rest & ~inside] == cells[rest & ~inside]).all()
    assert (cells > 0).sum() > inside.sum()  # cells reach beyond their nuclei


def test_a_cells_mean_intensity_is_the_mean_of_its_pixels_on_0_to_1(small):
    from rcic.data.store import SiteStore

    store = SiteStore(small / "store")
    masks = zarr.open_array(small / "masks.zarr", mode="r")
    cells = pd.read_parquet(small / "cells")
    row = cells.iloc[len(cells) // 2]
    idx = store.index.set_index(["id_code", "site"]).loc[
        (row["Metadata_id_code"], row["Metadata_Site"]), "idx"
    ]
    image, labels = store.read(idx), masks[int(idx)]
    label = row["Metadata_ObjectNumber"]
    for k, name in enumerate(cpfeatures.CHANNEL_NAMES):
        for compartment, plane in (("Cells", 1), ("Nuclei", 0), ("Cytoplasm", 2)):
            pixels = image[k][labels[plane] == label] / 255.0
            if len(pixels):
                column = f"{compartment}_Intensity_MeanIntensity_{name}"
                assert row[column] == pytest.approx(pixels.mean(), rel=1e-5)
    area = (labels[1] == label).sum()
    assert row["Cells_AreaShape_Area"] == area


def test_pycytominer_recognises_the_profiles(small):
    with warnings.catch_warnings():  # importing pycytominer sets a pandas option pandas 3 warns of
        warnings.simplefilter("ignore")
        from pycytominer.cyto_utils import infer_cp_features

    table, provenance = tables.read_table(small / "cp.parquet")
    features = tables.feature_columns(table)
    assert infer_cp_features(table) == features
    assert {f.split("_")[0] for f in features} == {"Nuclei", "Cells", "Cytoplasm"}
    for name in (
        "Cells_Intensity_MeanIntensity_DNA",
        "Nuclei_AreaShape_Area",
        "Cytoplasm_Texture_Contrast_Mito_3_00_256",
        "Cells_Granularity_1_Golgi",
        "Cells_RadialDistribution_FracAtD_RNA_1of4",
        "Cells_Correlation_Correlation_ER_Golgi",
    ):
        assert name in features
    assert not [f for f in features if "Location_" in f or "BoundingBox" in f]
    assert not table[features].isna().any().any()
    assert provenance["kind"] == "cellprofiler" and "texture" in provenance["measurements"]
    wells = metadata.wells_of(metadata.load_metadata(small / "data"))
    assert set(table["Metadata_id_code"]) == set(wells["id_code"])
    assert (table["Metadata_n_cells"] > 0).all()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pycytominer

        kept = pycytominer.feature_select(
            table, features="infer", operation=["variance_threshold", "drop_na_columns"]
        )
    assert 0 < len(infer_cp_features(kept)) < len(features)


def test_the_profile_is_the_median_of_the_wells_cells(small):
    table, _ = tables.read_table(small / "cp.parquet")
    cells = pd.read_parquet(small / "cells")
    code = table["Metadata_id_code"].iat[3]
    mine = cells[cells["Metadata_id_code"] == code]
    got = table.set_index("Metadata_id_code").loc[code]
    for column in ("Cells_AreaShape_Area", "Nuclei_Intensity_MeanIntensity_DNA"):
        assert got[column] == pytest.approx(mine[column].median(), rel=1e-5)
    assert got["Metadata_n_cells"] == len(mine)


def test_parts_and_a_stopped_run_give_the_one_pass_table(small, tmp_path):
    sites = metadata.load_metadata(small / "data")
    cheap = cpfeatures.Measurements(("intensity", "sizeshape"))  # the same plates, sooner

    def run(out, part=None):
        return features_pipeline.cellprofiler_table(
            small / "store", sites, out, measurements=cheap, workers=1, part=part
        )

    one_pass = run(tmp_path / "one.parquet")
    out = tmp_path / "cp.parquet"
    assert run(out, (1, 3)) is None
    parts = sorted((tmp_path / "cp.parquet.parts").iterdir())
    assert len(parts) == 3  # plates 1, 4 and 7 of 8, in sorted order
    parts[0].unlink()  # as if stopped before this plate was written
    assert run(out, (2, 3)) is None
    assert len(list((tmp_path / "cp.parquet.parts").iterdir())) == 5
    pd.testing.assert_frame_equal(run(out), one_pass)
    assert len(tables.feature_columns(one_pass)) < 500


def test_cellprofiler_names():
    name = cpfeatures.cellprofiler_name
    assert name("Cells", "Intensity_MeanIntensity__DNA") == "Cells_Intensity_MeanIntensity_DNA"
    assert name("Nuclei", "Area") == "Nuclei_AreaShape_Area"
    assert name("Nuclei", "Zernike_2_0") == "Nuclei_AreaShape_Zernike_2_0"
    assert name("Cells", "Contrast_3_00_256__ER") == "Cells_Texture_Contrast_ER_3_00_256"
    assert name("Cells", "Granularity_3__Mito") == "Cells_Granularity_3_Mito"
    assert (
        name("Cytoplasm", "RadialDistribution_FracAtD_1of4__RNA")
        == "Cytoplasm_RadialDistribution_FracAtD_RNA_1of4"
    )
    assert name("Cells", "Correlation_Pearson__DNA__ER") == "Cells_Correlation_Correlation_DNA_ER"
    assert name("Cells", "Correlation_Manders_1__DNA__ER") == "Cells_Correlation_Manders_DNA_ER"
    assert name("Cells", "Correlation_Manders_2__DNA__ER") == "Cells_Correlation_Manders_ER_DNA"
    assert name("Cells", "Correlation_Slope__ER__DNA") == "Cells_Correlation_Slope_ER_DNA"


def test_measurement_groups():
    parse = cpfeatures.Measurements.parse
    assert parse("default").groups == cpfeatures.DEFAULT_GROUPS
    assert "correlation_costes" not in cpfeatures.DEFAULT_GROUPS
    assert parse("default,costes").groups == (*cpfeatures.DEFAULT_GROUPS, "correlation_costes")
    assert parse("intensity,sizeshape").groups == ("intensity", "sizeshape")
    assert set(parse("all").groups) == set(cpfeatures.GROUPS)
    with pytest.raises(InputError, match="colour"):
        parse("intensity,colour")


def test_a_blank_site_has_no_cells():
    labels = Segmenter().segment(np.zeros((6, 32, 32), np.uint8))
    assert labels.shape == (3, 32, 32) and not labels.any()
    cells = cpfeatures.measure_site(
        np.zeros((6, 32, 32), np.uint8), labels, cpfeatures.Measurements()
    )
    assert len(cells) == 0


def test_the_nucleus_size_is_read_from_the_image():
    """Discs of diameter 8 and of diameter 20, touching along rows: the estimate follows."""
    for d in (8, 20):
        image = np.zeros((160, 160), np.float32)
        yy, xx = np.mgrid[:160, :160]
        for cy in range(d, 160 - d, 2 * d):
            for cx in range(d, 160 - d, d):  # touching along x
                image[(yy - cy) ** 2 + (xx - cx) ** 2 <= (d / 2) ** 2] = 0.5
        assert estimate_diameter(image) == pytest.approx(d, rel=0.2)


# Nuclei counted by hand on one real site of each cell type (benchmarks/segmentation.py says how)
HAND_COUNTS = _load("segmentation").HAND_COUNTS


@pytest.mark.parametrize("cell_type", sorted(HAND_COUNTS))
def test_nuclei_of_real_sites_match_a_count_by_hand(cell_type):
    from rcic.data.images import read_png

    root = shared_or_skip() / "images" / "train" / f"{cell_type}-01" / "Plate1"
    site = np.stack([read_png(root / f"B02_s1_w{c}.png") for c in range(1, 7)])
    found = Segmenter().segment(site)[0].max()  # within 35% of the count by hand
    assert abs(found - HAND_COUNTS[cell_type]) <= 0.35 * HAND_COUNTS[cell_type], found


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--measurements", "intensity,colour"], "colour"),
        (["--nucleus-diameter", "-3"], "--nucleus-diameter"),
        (["--part", "4/3"], "--part"),
        (["--masks", "MASKS"], "holds masks of shape"),
    ],
)
def test_bad_options_are_named_before_any_work(small, tmp_path, capsys, extra, message):
    zarr.create_array(store=str(tmp_path / "m.zarr"), shape=(2, 3, 8, 8), dtype="int32")
    extra = [str(tmp_path / "m.zarr") if e == "MASKS" else e for e in extra]
    argv = [
        "features",
        "--kind",
        "cellprofiler",
        "--data",
        str(small / "data"),
        "--store",
        str(small / "store"),
        "--out",
        str(tmp_path / "cp.parquet"),
        *extra,
    ]
    assert cli.main(argv) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "cp.parquet").exists()
    assert not (tmp_path / "cp.parquet.parts").exists()

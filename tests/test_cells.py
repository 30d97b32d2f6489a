"""Single-cell crops: nuclei found where they are, crops equal to their site's pixels, a cell store
that trains and predicts like a site store, and refusals of the wrong store."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from rcic import cli
from rcic.data import cells, store
from rcic.errors import InputError, StoreError
from rcic.inference import predict
from rcic.inference.predict import InferenceOptions


def _blobs(centres, size=48, sigma=2.0):
    yy, xx = np.mgrid[:size, :size]
    img = np.zeros((size, size), np.float32)
    for y, x in centres:
        img += 4 * np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * sigma**2))
    return img - 0.5  # background below the threshold


def test_find_nuclei_finds_each_blob_once():
    centres = [(8, 9), (10, 30), (30, 20), (40, 41)]
    finder = cells.CellFinder(crop=16, threshold=0.5)
    found = cells.find_nuclei(_blobs(centres), finder, np.random.default_rng(0))
    assert len(found) == len(centres)
    for y, x in centres:
        assert np.abs(found - [y, x]).max(axis=1).min() <= 1
    # nothing above the threshold: nothing found; max_cells keeps a subset of the found ones
    assert len(cells.find_nuclei(np.zeros((48, 48)), finder, np.random.default_rng(0))) == 0
    two = cells.CellFinder(crop=16, threshold=0.5, max_cells=2)
    sub = cells.find_nuclei(_blobs(centres), two, np.random.default_rng(1))
    assert len(sub) == 2 and {tuple(c) for c in sub} <= {tuple(c) for c in found}


def test_crop_cells_copies_pixels_and_fills_outside():
    rng = np.random.default_rng(0)
    site = rng.integers(0, 255, (6, 20, 20), dtype=np.uint8)
    fill = np.arange(6, dtype=np.uint8) + 200
    out = cells.crop_cells(site, np.array([[10, 10], [0, 19]]), 8, fill)
    assert out.shape == (2, 6, 8, 8)
    assert np.array_equal(out[0], site[:, 6:14, 6:14])
    # a cell at the corner: the part inside the site is copied, the rest is the fill
    assert np.array_equal(out[1][:, 4:, :5], site[:, :4, 15:20])
    assert (out[1][:, :4] == fill[:, None, None]).all() and (out[1][:, :, 7] == fill[:, None]).all()


@pytest.fixture(scope="module")
def cell_store(tiny_store, tmp_path_factory):
    out = tmp_path_factory.mktemp("cells") / "cells"
    cells.pack_cells(tiny_store, out, cells.CellFinder(crop=16), progress=False)
    return out


def test_cell_store_rows_and_pixels(tiny_store, cell_store):
    sites, cs = store.SiteStore(tiny_store), store.SiteStore(cell_store)
    assert cs.kind == "cells" and sites.kind == "sites" and cs.size == 16
    # every site is there, with its columns, and most sites hold several cells
    key = ["id_code", "site"]
    assert set(map(tuple, cs.index[key].to_numpy())) == set(map(tuple, sites.index[key].to_numpy()))
    per_site = cs.index.groupby(key).size()
    assert per_site.median() >= 2
    # each crop is its site's pixels around (y, x)
    stats = sites.plate_stats("all")
    for _, row in cs.index.sample(20, random_state=0).iterrows():
        site_row = sites.index.set_index(key).loc[(row["id_code"], row["site"])]
        image = sites.read(site_row["idx"])
        fill = np.rint(stats[(row["experiment"], int(row["plate"]))][:, 0]).astype(np.uint8)
        want = cells.crop_cells(image, np.array([[row["y"], row["x"]]]), 16, fill)[0]
        assert np.array_equal(cs.read(row["idx"]), want)
    # the plate statistics are the site store's: a cell is normalised as its site was
    assert cs.stats.equals(sites.stats)


def test_pack_cells_refuses(tiny_store, cell_store, tmp_path):
    with pytest.raises(InputError, match="exists"):
        cells.pack_cells(tiny_store, cell_store, progress=False)
    with pytest.raises(InputError, match="already a cell store"):
        cells.pack_cells(cell_store, tmp_path / "again", progress=False)
    with pytest.raises(InputError, match="larger than"):
        cells.pack_cells(tiny_store, tmp_path / "big", cells.CellFinder(crop=64), progress=False)
    assert not (tmp_path / "big").exists()
    with pytest.raises(InputError, match="alignment 'sideways'"):
        cells.CellFinder(align="sideways")


def test_pack_cells_failing_midway_leaves_nothing(tiny_store, tmp_path, monkeypatch):
    def broken(*args):
        raise RuntimeError("disk gone")

    monkeypatch.setattr(cells, "crop_cells", broken)
    with pytest.raises(RuntimeError, match="disk gone"):
        cells.pack_cells(tiny_store, tmp_path / "c", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # neither c nor c.partial


@pytest.fixture(scope="module")
def cell_run(tiny_screen, cell_store, tmp_path_factory):
    run = tmp_path_factory.mktemp("cell-run") / "run"
    args = [
        "train",
        "--data",
        str(tiny_screen),
        "--store",
        str(cell_store),
        "--out",
        str(run),
        "epochs=1",
        "batch_size=64",
        "embedding_dim=32",
        "deterministic=true",
    ]
    assert cli.main(args) == 0
    return run


@pytest.mark.parametrize("seed", [1])  # and seed 0: the cell_run fixture
def test_tiny_cell_training_stays_finite_for_any_seed(tiny_screen, cell_store, tmp_path, seed):
    """The training that went NaN in bf16 when another process shared the cores: one epoch per seed,
    a finite loss and finite weights every time."""
    run = tmp_path / "run"
    args = [
        "train",
        "--data",
        str(tiny_screen),
        "--store",
        str(cell_store),
        "--out",
        str(run),
        "epochs=1",
        "batch_size=64",
        "embedding_dim=32",
        "deterministic=true",
        f"seed={seed}",
    ]
    assert cli.main(args) == 0
    row = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert np.isfinite(row["loss"])
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def test_train_and_predict_on_cells(
    tiny_screen, tiny_sites, tiny_store, cell_store, cell_run, tmp_path, capsys
):
    run = cell_run
    out = predict.predict_run(
        run,
        tiny_sites,
        cell_store,
        "test",
        tmp_path / "t.npz",
        InferenceOptions(views=2, progress=False),
    )
    res = np.load(out)
    test_wells = tiny_sites.loc[
        (tiny_sites["split"] == "test") & (tiny_sites["well_type"] == "treatment"), "id_code"
    ].unique()
    assert sorted(res["id_code"]) == sorted(test_wells)  # one row per well, from its cells
    cs = store.SiteStore(cell_store)
    per_well = cs.index[cs.index["id_code"].isin(test_wells)].groupby("id_code").size()
    assert np.array_equal(res["n_sites"], per_well.loc[res["id_code"]].to_numpy())
    # a model of cells refuses a site store, and says what to do
    with pytest.raises(StoreError, match="rcic cells"):
        predict.predict_run(
            run,
            tiny_sites,
            tiny_store,
            "test",
            tmp_path / "x.npz",
            InferenceOptions(progress=False),
        )
    # and resuming it on a site store is refused before anything is trained
    before = (run / "metrics.jsonl").read_text()
    resume = [
        "train",
        "--data",
        str(tiny_screen),
        "--store",
        str(tiny_store),
        "--out",
        str(run),
        "--resume",
        "epochs=3",
        "batch_size=64",
        "embedding_dim=32",
    ]
    capsys.readouterr()
    assert cli.main(resume) == 2
    assert "started on a cells store" in capsys.readouterr().err
    assert (run / "metrics.jsonl").read_text() == before


def test_cli_cells(tiny_store, tmp_path, capsys):
    out = tmp_path / "c"
    assert cli.main(["cells", "--store", str(tiny_store), "--out", str(out), "--crop", "12"]) == 0
    assert "cells from" in capsys.readouterr().out
    assert store.SiteStore(out).size == 12
    assert cli.main(["cells", "--store", str(tiny_store), "--out", str(out)]) == 2  # exists


def test_site_without_nuclei_keeps_its_centre_crop(tiny_store, tmp_path):
    # a threshold no nucleus reaches: every site is still there, once, as its centre crop
    out = tmp_path / "none"
    cells.pack_cells(tiny_store, out, cells.CellFinder(crop=16, threshold=1e6), progress=False)
    sites, cs = store.SiteStore(tiny_store), store.SiteStore(out)
    assert len(cs.index) == len(sites.index)
    half = sites.size // 2
    assert (cs.index["y"] == half).all() and (cs.index["x"] == half).all()
    row = cs.index.iloc[0]
    site = sites.read(
        sites.index.set_index(["id_code", "site"]).loc[(row["id_code"], row["site"]), "idx"]
    )
    assert np.array_equal(cs.read(row["idx"]), site[:, half - 8 : half + 8, half - 8 : half + 8])


def _cell_window(angle_deg: float, body_right: bool, size: int = 48) -> np.ndarray:
    """A (6, size, size) uint8 window: an elongated nucleus (w1) along `angle_deg` (from the columns'
    axis towards the rows'), and ER/mitochondria (w2, w5) on one side of it, along the same axis."""
    yy, xx = np.mgrid[:size, :size].astype(np.float32) - (size - 1) / 2
    t = np.radians(angle_deg)
    along, across = xx * np.cos(t) + yy * np.sin(t), -xx * np.sin(t) + yy * np.cos(t)
    window = np.full((6, size, size), 10.0, np.float32)
    window[0] += 200 * np.exp(-(along**2) / (2 * 5.0**2) - across**2 / (2 * 2.0**2))
    side = 9.0 if body_right else -9.0
    body = 150 * np.exp(-((along - side) ** 2 + across**2) / (2 * 3.0**2))
    window[1] += body
    window[4] += body
    return window.astype(np.uint8)


def _right_heavy(image: np.ndarray) -> bool:
    """Whether the signal above the background lies mostly in the right half of a (H, W) image."""
    signal = np.clip(image.astype(np.float32) - np.median(image), 0, None)
    half = image.shape[-1] // 2
    return bool(signal[:, half:].sum() > 4 * signal[:, :half].sum())


@pytest.mark.parametrize("angle", [0.0, 25.0, -50.0, 80.0, 120.0])
@pytest.mark.parametrize("body_right", [True, False])
def test_align_crop_lays_the_nucleus_flat_with_its_body_on_the_right(angle, body_right):
    window = _cell_window(angle, body_right)
    assert abs((cells.nucleus_angle(window[0], 16) - angle + 90) % 180 - 90) < 3
    crop, turned, mirrored = cells.align_crop(window, 32, front=True)
    assert crop.shape == (6, 32, 32) and crop.dtype == np.uint8
    # the nucleus now lies along the columns, and the body is on the right half
    assert abs(cells.nucleus_angle(crop[0], 32 / 3)) < 3
    assert _right_heavy(crop[1]) and _right_heavy(crop[4])
    dna = crop[0].astype(np.float32) - np.median(crop[0])
    assert dna[14:18].sum() > 2 * dna[:, 14:18].sum()  # long along the rows, short across
    # axis only: flat, but the body stays on whichever side it was turned to
    flat, _, never = cells.align_crop(window, 32, front=False)
    assert not never and abs(cells.nucleus_angle(flat[0], 32 / 3)) < 3
    assert np.array_equal(crop, flat[:, :, ::-1] if mirrored else flat)


def test_aligned_views_keep_the_alignment():
    import torch

    from rcic.training.batches import BatchTransform, dihedral

    x = torch.from_numpy(_cell_window(0.0, True)[None].astype(np.float32))
    for name, views in cells.ALIGN_VIEWS.items():
        for k in views:
            y = dihedral(x, k)[0].numpy()
            if name == "none":
                continue
            assert abs(cells.nucleus_angle(y[0], 16)) < 3  # still flat
            if name == "front":  # and the body still on the right
                assert _right_heavy(y[1])
    # the views left out break it: a quarter turn stands the nucleus up, a left-right mirror
    # moves the body to the left
    assert abs(abs(cells.nucleus_angle(dihedral(x, 1)[0, 0].numpy(), 16)) - 90) < 3
    assert _right_heavy(x[0, 1].numpy()) and not _right_heavy(dihedral(x, 4)[0, 1].numpy())
    # training flips draw from the given views only
    batch = x.repeat(64, 1, 1, 1).to(torch.uint8)
    stats = torch.zeros(64, 6, 2)
    stats[..., 1] = 1.0
    flips = BatchTransform(48, views=(0, 6))
    out = flips(batch, stats, train=True, generator=torch.Generator().manual_seed(0))
    same = [(o == x[0]).all().item() for o in out]
    vflip = [(o == x[0].flip(-2)).all().item() for o in out]
    assert all(a or b for a, b in zip(same, vflip, strict=True)) and any(same) and any(vflip)
    with pytest.raises(ValueError, match="views"):
        BatchTransform(48, views=(0, 8))


def test_aligned_cell_store_predicts_on_its_views(
    tiny_sites, tiny_store, cell_run, tmp_path, monkeypatch
):
    out = tmp_path / "aligned"
    assert (
        cli.main(
            [
                "cells",
                "--store",
                str(tiny_store),
                "--out",
                str(out),
                "--crop",
                "16",
                "--align",
                "front",
            ]
        )
        == 0
    )
    cs, plain = store.SiteStore(out), store.SiteStore(tiny_store)
    assert cs.views == (0, 6) and plain.views == tuple(range(8))
    found = cs.index[cs.index["y"] >= 0]
    assert found["angle"].abs().max() <= 90 and found["angle"].abs().max() > 0
    assert found["mirrored"].any() and not found["mirrored"].all()

    # aligned crops have their nucleus flat (a turned crop's residual angle is small), unlike
    # plain ones; in a confluent field a neighbour's nucleus can tilt a few crops' estimate
    def flat_share(st):
        crops = [
            st.read(i)[0] for i in st.index[st.index["y"] >= 0].sample(40, random_state=0)["idx"]
        ]
        return np.mean([abs(cells.nucleus_angle(d, 16 / 3)) < 20 for d in crops])

    plain_cells = tmp_path / "plain"
    assert (
        cli.main(["cells", "--store", str(tiny_store), "--out", str(plain_cells), "--crop", "16"])
        == 0
    )
    aligned_flat, plain_flat = flat_share(cs), flat_share(store.SiteStore(plain_cells))
    assert aligned_flat >= 0.8 and plain_flat < 0.6, (aligned_flat, plain_flat)
    seen = []
    real_infer = predict.infer

    def spy(*a, **kw):
        seen.append(tuple(kw["views"]))
        return real_infer(*a, **kw)

    monkeypatch.setattr(predict, "infer", spy)
    # (a model trained on the unaligned crops of the same size serves to show which views are used)
    predict.predict_run(
        cell_run, tiny_sites, out, "test", tmp_path / "t.npz", InferenceOptions(progress=False)
    )
    predict.predict_run(
        cell_run,
        tiny_sites,
        out,
        "test",
        tmp_path / "t1.npz",
        InferenceOptions(views=1, progress=False),
    )
    assert seen == [(0, 6), (0,)]

import os
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from rcic import layout
from rcic.data import images, packing, store
from rcic.data.images import ImageReadError, load_site

from .conftest import SHARED


def test_missing_channel_names_the_file(tiny_screen, tmp_path):
    r = pd.read_csv(tiny_screen / "train.csv").iloc[0]
    folder = tmp_path / "train" / r.experiment / f"Plate{r.plate}"
    folder.mkdir(parents=True)
    for c in (1, 2, 3, 4):  # like the real site whose w5 and w6 are missing
        shutil.copy(
            tiny_screen / "train" / r.experiment / f"Plate{r.plate}" / f"{r.well}_s1_w{c}.png",
            folder,
        )
    assert (
        load_site(tmp_path, "train", r.experiment, r.plate, r.well, 1, channels=(1, 2, 3, 4)).shape[
            0
        ]
        == 4
    )
    with pytest.raises(ImageReadError, match=f"{r.well}_s1_w5.png: file is missing"):
        load_site(tmp_path, "train", r.experiment, r.plate, r.well, 1)
    (folder / f"{r.well}_s1_w5.png").write_bytes(b"not a png")
    with pytest.raises(ImageReadError, match="cannot be decoded"):
        images.read_png(folder / f"{r.well}_s1_w5.png")


def test_real_incomplete_site():
    root = SHARED / "images"
    if not root.exists():
        pytest.skip("../shared/rxrx1 is not present")
    site = load_site(root, "train", "HUVEC-01", 1, "B02", 1)
    assert site.shape == (6, 512, 512) and site.dtype == np.uint8
    assert 1 < site.mean() < 45
    with pytest.raises(ImageReadError, match="B02_s2_w5.png"):
        load_site(root, "train", "HUVEC-01", 1, "B02", 2)


def test_16bit_png_is_scaled(tmp_path):
    plane = (np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)
    Image.fromarray(plane).save(tmp_path / "x.png")
    got = images.read_png(tmp_path / "x.png")
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, (plane.astype(np.uint32) // 257).astype(np.uint8))


def test_composite_colours():
    site = np.zeros((6, 8, 8), np.uint8)
    site[0] = 200  # nuclei only: blue
    rgb = images.composite(site, ranges=np.tile([0, 200], (6, 1)))
    assert rgb.shape == (8, 8, 3)
    assert (
        rgb[..., 2].mean() > 3 * rgb[..., 0].mean() and rgb[..., 2].mean() > 3 * rgb[..., 1].mean()
    )


def test_store_round_trip_equals_png(tiny_screen, tiny_sites, tiny_store):
    st = store.SiteStore(tiny_store)
    assert st.packed.all()
    for i in range(0, len(st.index), 97):
        r = st.index.iloc[i]
        direct = load_site(tiny_screen, r.split, r.experiment, r.plate, r.well, r.site)
        np.testing.assert_array_equal(st.read(i), direct)
    # statistics agree with a direct computation on one plate
    exp, plate = st.index.experiment.iloc[0], st.index.plate.iloc[0]
    rows = st.index[(st.index.experiment == exp) & (st.index.plate == plate)]
    pixels = st.read_many(rows.idx).astype(float)
    stats = st.plate_stats("all")[(exp, plate)]
    np.testing.assert_allclose(stats[:, 0], pixels.mean(axis=(0, 2, 3)), rtol=1e-6)
    np.testing.assert_allclose(stats[:, 1], pixels.std(axis=(0, 2, 3)), rtol=1e-4)


def test_resume_after_interrupted_prepare(
    tiny_screen, tiny_sites, tiny_store, tmp_path, monkeypatch
):
    calls = {"n": 0}
    real_batch = packing._pack_batch

    def dying_batch(job):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # the user pressed Ctrl-C mid-run
        return real_batch(job)

    monkeypatch.setattr(packing, "_pack_batch", dying_batch)
    with pytest.raises(KeyboardInterrupt):
        packing.pack(tiny_screen, tiny_sites, tmp_path / "st", workers=1)
    with pytest.raises(store.StoreError, match="did not finish"):
        store.SiteStore(tmp_path / "st")
    monkeypatch.setattr(packing, "_pack_batch", real_batch)
    result = packing.pack(tiny_screen, tiny_sites, tmp_path / "st", workers=1)
    assert result.skipped == 2 * packing._BATCH and result.failed == 0
    assert result.packed + result.skipped == len(tiny_sites)
    a, b = store.SiteStore(tmp_path / "st"), store.SiteStore(tiny_store)
    np.testing.assert_array_equal(
        a.read_many(range(len(a.index))), b.read_many(range(len(b.index)))
    )
    pd.testing.assert_frame_equal(a.stats, b.stats)


def test_unreadable_site_is_listed_not_fatal(tiny_screen, tiny_sites, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny_screen, data)
    r = tiny_sites.iloc[10]
    (
        data / r.split / r.experiment / f"Plate{r.plate}" / layout.png_name(r.well, r.site, 6)
    ).unlink()
    result = packing.pack(data, tiny_sites, tmp_path / "st", workers=2)
    assert result.failed == 1
    failed = pd.read_csv(tmp_path / "st" / "failed.csv")
    assert failed.id_code.tolist() == [r.id_code] and "w6.png" in failed.reason.iloc[0]
    assert store.SiteStore(tmp_path / "st").packed.sum() == len(tiny_sites) - 1
    with pytest.raises(store.StoreError, match="--strict"):
        packing.pack(data, tiny_sites, tmp_path / "st2", workers=1, strict=True)


def test_store_rejects_other_dataset(tiny_screen, tiny_sites, tiny_store):
    with pytest.raises(store.StoreError, match="different store"):
        packing.pack(tiny_screen, tiny_sites.iloc[:20], tiny_store, workers=1)
    st = store.SiteStore(tiny_store)
    other = tiny_sites.iloc[:3].assign(id_code="X-01_1_B02")
    with pytest.raises(store.StoreError, match="does not match"):
        st.check_matches(other)


def test_compressed_store_round_trip(tiny_screen, tiny_sites, tiny_store, tmp_path):
    sub = tiny_sites.iloc[:40]
    packing.pack(tiny_screen, sub, tmp_path / "z", workers=1, compression="zstd", size=16)
    z = store.SiteStore(tmp_path / "z")
    assert z.read(0).shape == (6, 16, 16)
    full = store.SiteStore(tiny_store).read(0).astype(float)
    np.testing.assert_allclose(z.read(0), full.reshape(6, 16, 2, 16, 2).mean(axis=(2, 4)), atol=1)


def _broken_copy(tiny_screen, tiny_sites, tmp_path):
    """The tiny screen with one RGB channel and one site of another size (all six channels)."""
    data = tmp_path / "data"
    shutil.copytree(tiny_screen, data)
    a, b = tiny_sites.iloc[10], tiny_sites.iloc[30]
    folder = data / a.split / a.experiment / f"Plate{a.plate}"
    rgb = folder / layout.png_name(a.well, a.site, 3)
    grey = np.asarray(Image.open(rgb))
    Image.fromarray(np.stack([grey, grey // 2, grey], -1)).save(rgb)
    for c in layout.CHANNELS:
        p = data / b.split / b.experiment / f"Plate{b.plate}" / layout.png_name(b.well, b.site, c)
        Image.fromarray(np.asarray(Image.open(p))[:16, :16]).save(p)
    return data, rgb, b


def test_check_images_names_rgb_and_wrong_size_pngs(tiny_screen, tiny_sites, tmp_path, capsys):
    from rcic import cli

    data, rgb, b = _broken_copy(tiny_screen, tiny_sites, tmp_path)
    assert cli.main(["check", "--data", str(data), "--images", "--workers", "1"]) == 1
    out = capsys.readouterr().out
    assert f"{rgb}: a colour image" in out
    odd = layout.png_name(b.well, b.site, 1)
    assert f"{odd}: 16x16 pixels, while most sites are 32x32" in out


def test_strict_prepare_names_the_files_and_reasons(tiny_screen, tiny_sites, tmp_path):
    data, rgb, _ = _broken_copy(tiny_screen, tiny_sites, tmp_path)
    with pytest.raises(store.StoreError) as err:
        packing.pack(data, tiny_sites, tmp_path / "st", workers=1, strict=True)
    assert f"{rgb}: a colour image" in str(err.value) and "--strict" in str(err.value)


def test_full_disk_is_named_and_the_rerun_finishes_the_same_store(
    tiny_screen, tiny_sites, tiny_store, small_disk
):
    mnt, grow = small_disk
    # uncompressed: the size is known, so prepare refuses before writing
    with pytest.raises(store.StoreError, match=r"needs about .* MiB but only .* MiB is free"):
        packing.pack(tiny_screen, tiny_sites, mnt / "raw", workers=1)
    # compressed: the size is not known; the disk fills while packing
    with pytest.raises(store.StoreError, match=r"the disk is full .* run `rcic prepare` again"):
        packing.pack(tiny_screen, tiny_sites, mnt / "z", workers=1, compression="zstd")
    grow()
    packing.pack(tiny_screen, tiny_sites, mnt / "z", workers=1, compression="zstd")
    done, ref = store.SiteStore(mnt / "z"), store.SiteStore(tiny_store)
    assert done.packed.all()
    idx = np.arange(len(tiny_sites))
    assert np.array_equal(done.read_many(idx), ref.read_many(idx))


def test_parts_packed_on_several_machines_equal_one_pass(
    tiny_screen, tiny_sites, tiny_store, tmp_path
):
    out = tmp_path / "st"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "rcic.cli",
        "prepare",
        "--data",
        str(tiny_screen),
        "--out",
        str(out),
    ]
    # parts 2 and 3 at once, as two machines would (one creates the store, the other waits)
    procs = [
        subprocess.Popen(
            [*cmd, "--part", f"{k}/3", "--workers", "1"], env=env, stderr=subprocess.PIPE
        )
        for k in (2, 3)
    ]
    for proc in procs:
        assert proc.wait(timeout=300) == 0, proc.stderr.read().decode()[-2000:]
    with pytest.raises(store.StoreError, match="did not finish"):
        store.SiteStore(out)  # part 1 has not run
    masks = [packing.part_mask(tiny_sites.reset_index(drop=True), (k, 3)) for k in (1, 2, 3)]
    assert np.array_equal(
        sum(m.astype(int) for m in masks), np.ones(len(tiny_sites))
    )  # a partition
    result = packing.pack(tiny_screen, tiny_sites, out, workers=1, part=(1, 3))
    assert result.packed == masks[0].sum()
    a, b = store.SiteStore(out), store.SiteStore(tiny_store)
    idx = np.arange(len(tiny_sites))
    assert np.array_equal(a.read_many(idx), b.read_many(idx))
    assert a.packed.all()
    pd.testing.assert_frame_equal(a.stats, b.stats)


def test_store_read_through_an_fsspec_url_trains(tiny_screen, tiny_sites, tiny_store, tmp_path):
    """A store on shared or object storage: opened by URL (here fsspec's in-memory filesystem)."""
    import fsspec

    from rcic import cli

    fs = fsspec.filesystem("memory")
    fs.put(str(tiny_store), "/shared/store", recursive=True)
    remote, local = store.SiteStore("memory://shared/store"), store.SiteStore(tiny_store)
    idx = np.arange(0, len(local.index), 7)
    assert np.array_equal(remote.read_many(idx), local.read_many(idx))
    pd.testing.assert_frame_equal(remote.index, local.index)
    assert remote.packed.all()
    run = tmp_path / "run"
    argv = [
        "train",
        "--data",
        str(tiny_screen),
        "--store",
        "memory://shared/store",
        "--out",
        str(run),
    ]
    assert cli.main([*argv, "epochs=1", "batch_size=32", "embedding_dim=32", "num_workers=1"]) == 0
    assert (run / "checkpoints" / "last.pt").exists()
    with pytest.raises(store.StoreError, match="not an rcic store"):
        store.SiteStore("memory://shared/nothing")

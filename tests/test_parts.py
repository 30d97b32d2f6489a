"""Prediction and embedding in parts: plates dealt as `prepare --part` deals them, each part its
own file, joined by `rcic submit` and `rcic profiles` into the numbers one pass gives."""

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

from rcic import cli
from rcic.data import metadata, tables
from rcic.data.packing import part_mask
from rcic.errors import InputError, LogitsError
from rcic.inference import predict
from rcic.inference.logitsfile import read_logits, read_models, write_logits
from rcic.inference.predict import InferenceOptions, plate_batches
from rcic.profiling import profiles

from .conftest import torchrun

PARTS = (1, 3), (2, 3), (3, 3)


def test_plate_batches_never_span_two_plates():
    rows = pd.DataFrame({"experiment": ["A"] * 5 + ["B"] * 3 + ["A"] * 2, "plate": [1] * 10})
    batches = plate_batches(rows, batch_size=2)
    assert batches == [[0, 1], [2, 3], [4], [5, 6], [7], [8, 9]]
    assert plate_batches(rows, batch_size=64) == [list(range(5)), [5, 6, 7], [8, 9]]


def test_plate_chunks_hold_whole_plates_and_cover_every_row():
    rows = pd.DataFrame({"experiment": ["A"] * 5 + ["B"] * 3 + ["C"] * 2, "plate": [1] * 10})
    assert [c.tolist() for c in predict.plate_chunks(rows, 4)] == [
        [0, 1, 2, 3, 4],
        [5, 6, 7, 8, 9],
    ]
    assert [c.tolist() for c in predict.plate_chunks(rows, 100)] == [list(range(10))]
    assert [len(c) for c in predict.plate_chunks(rows, 1)] == [5, 3, 2]


def test_predicting_in_chunks_changes_no_number(trained, tiny_screen, tiny_store, monkeypatch):
    """Per-site outputs are held one chunk of plates at a time; the chunk size moves no bit."""
    from rcic.data.store import SiteStore
    from rcic.training.runs import load_checkpoint

    model, cfg = load_checkpoint(trained, "last")
    sites = metadata.load_metadata(tiny_screen)
    test = sites[(sites["split"] == "test") & (sites["well_type"] == "treatment")]
    st = SiteStore(tiny_store)
    one = predict.predict_logits(model, cfg, test, st, views=2, progress=False, embeddings=True)
    monkeypatch.setattr(predict, "CHUNK_SITES", 10)  # a chunk per plate or two
    assert len(predict.plate_chunks(test.assign(idx=0), 10)) > 4
    many = predict.predict_logits(model, cfg, test, st, views=2, progress=False, embeddings=True)
    for key in ("id_code", "logits", "embedding", "n_sites", "plate"):
        assert np.array_equal(one[key], many[key]), key


def test_a_table_stopped_mid_stream_leaves_nothing(
    trained, tiny_screen, tiny_store, tmp_path, monkeypatch
):
    """`rcic embed --out X.parquet` writes a row group per chunk of plates as it predicts them
    (test_embed_in_parts_is_one_profile_table counts them); a failure after the first chunk was
    written leaves no table and no temporary file behind."""
    from rcic.inference.embed import embed_run

    sites = metadata.load_metadata(tiny_screen)
    monkeypatch.setattr(predict, "CHUNK_SITES", 10)
    real, calls = predict._per_well, []

    def fails_second(*args):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("stopped mid-table")
        return real(*args)

    monkeypatch.setattr(predict, "_per_well", fails_second)
    with pytest.raises(RuntimeError, match="mid-table"):
        embed_run(trained, sites, tiny_store, "test", tmp_path / "cut.parquet", _options())
    assert len(calls) == 2 and list(tmp_path.iterdir()) == []


def _options(part=None):
    return InferenceOptions(views=2, progress=False, checkpoint="last", part=part)


def test_predict_in_parts_joins_to_one_pass_bit_for_bit(trained, tiny_screen, tiny_store, tmp_path):
    """Three parts of the test split (a deterministic run) give, joined, the logits of one pass
    over it, bit for bit; each part holds whole plates, and `rcic submit` takes the parts as the
    one model they are."""
    sites = metadata.load_metadata(tiny_screen)
    whole = read_logits(
        predict.predict_run(trained, sites, tiny_store, "test", tmp_path / "all.npz", _options())
    )
    paths = [
        predict.predict_run(
            trained, sites, tiny_store, "test", tmp_path / f"p{k}.npz", _options((k, n))
        )
        for k, n in PARTS
    ]
    files = [read_logits(p) for p in paths]
    assert [str(f["part"]) for f in files] == ["1/3", "2/3", "3/3"]
    assert len({str(f["model"]) for f in files} | {str(whole["model"])}) == 1
    plates = [set(zip(f["experiment"], f["plate"], strict=True)) for f in files]
    assert all(plates) and not plates[0] & plates[1] and not plates[1] & plates[2]
    [(_, joined)] = read_models(paths[::-1])  # any order
    order = np.argsort(joined["id_code"])
    assert np.array_equal(joined["id_code"][order], whole["id_code"])
    assert np.array_equal(joined["logits"][order], whole["logits"])
    subs = []
    for name, logits in (("one", [tmp_path / "all.npz"]), ("parts", paths)):
        argv = ["submit", "--data", str(tiny_screen), "--out", str(tmp_path / f"{name}.csv")]
        assert cli.main([*argv, "--logits", *map(str, logits)]) == 0
        subs.append(pd.read_csv(tmp_path / f"{name}.csv"))
    pd.testing.assert_frame_equal(subs[0], subs[1])


def test_a_fold_is_not_predicted_in_parts_without_its_temperature(
    trained, tiny_screen, tiny_store, tmp_path
):
    sites = metadata.load_metadata(tiny_screen)
    with pytest.raises(InputError, match="fitted once on the whole held-out fold"):
        predict.predict_run(trained, sites, tiny_store, "0", tmp_path / "f.npz", _options((1, 2)))
    with pytest.raises(InputError, match="no plate dealt to it"):
        predict.predict_run(
            trained, sites, tiny_store, "test", tmp_path / "t.npz", _options((99, 99))
        )


def _part(path, ids, model="m1", part="1/2", temperature=None, value=0.0):
    logits = np.full((len(ids), 1108), value, np.float32)
    return write_logits(path, ids, logits, model=model, part=part, temperature=temperature)


def test_a_missing_repeated_or_mismatched_part_is_refused_by_name(tmp_path):
    a = _part(tmp_path / "a.npz", ["w1", "w2"], part="1/2")
    b = _part(tmp_path / "b.npz", ["w3"], part="2/2")
    [(files, joined)] = read_models([a, b])
    assert files == [a, b] and sorted(joined["id_code"]) == ["w1", "w2", "w3"]
    with pytest.raises(LogitsError, match=r"part\(s\) 2/2 missing"):
        read_models([a])
    with pytest.raises(LogitsError, match="part 1/2 given twice"):
        read_models([a, _part(tmp_path / "a2.npz", ["w9"], part="1/2"), b])
    with pytest.raises(LogitsError, match="different counts"):
        read_models([a, _part(tmp_path / "c.npz", ["w3"], part="2/3")])
    with pytest.raises(LogitsError, match="in two parts"):
        read_models([a, _part(tmp_path / "d.npz", ["w2"], part="2/2")])
    with pytest.raises(LogitsError, match="different temperatures"):
        read_models([a, _part(tmp_path / "e.npz", ["w3"], part="2/2", temperature=2.0)])
    other = _part(tmp_path / "o.npz", ["w3"], model="m2", part="2/2")  # another model's part
    with pytest.raises(LogitsError, match="model m1"):
        read_models([a, other])


def test_embed_in_parts_is_one_profile_table(
    trained, tiny_screen, tiny_store, tmp_path, monkeypatch
):
    """`rcic embed --part` writes a table per part, streamed a row group per chunk of plates;
    `rcic profiles` reads the parts as one table (equal to one pass's, written in one chunk) and
    refuses a missing part by name."""
    base = ["embed", "--run", str(trained), "--data", str(tiny_screen), "--store", str(tiny_store)]
    base += ["--split", "test", "--checkpoint", "last", "--views", "2"]
    assert cli.main([*base, "--out", str(tmp_path / "all.parquet")]) == 0
    # the parts stream: a row group per plate or two
    monkeypatch.setattr(predict, "CHUNK_SITES", 10)
    for k, n in PARTS:
        assert (
            cli.main([*base, "--part", f"{k}/{n}", "--out", str(tmp_path / f"p{k}.parquet")]) == 0
        )
    parts = [tmp_path / f"p{k}.parquet" for k, _ in PARTS]
    assert pq.ParquetFile(tmp_path / "all.parquet").num_row_groups == 1
    sites = metadata.load_metadata(tiny_screen)
    test = sites[sites["split"] == "test"]
    part1 = test[part_mask(test, (1, 3))]
    chunks = len(predict.plate_chunks(part1.assign(idx=0), 10))
    assert pq.ParquetFile(parts[0]).num_row_groups == chunks > 1
    joined, prov = profiles.load_tables(parts)
    whole, _ = tables.read_table(tmp_path / "all.parquet")
    key = "Metadata_id_code"
    pd.testing.assert_frame_equal(
        joined.sort_values(key).reset_index(drop=True),
        whole.sort_values(key).reset_index(drop=True),
    )
    assert prov["part"] == "1/3" and prov["model"]
    folder = tmp_path / "emb-test"  # a folder of the parts is the table, for pandas and rcic
    folder.mkdir()
    for path in parts:
        path.rename(folder / path.name)
    from_folder, _ = profiles.load_tables([folder])
    pd.testing.assert_frame_equal(from_folder, joined)
    assert len(pd.read_parquet(folder)) == len(whole)
    parts = [folder / p.name for p in parts]
    with pytest.raises(InputError, match=r"part\(s\) 3/3 missing"):
        profiles.load_tables(parts[:2])


def test_statistics_in_parts_join_to_one_table(tiny_screen, tiny_store, tmp_path, capsys):
    """`rcic features --kind stats --part K/N` measures the plates dealt to part K only; its parts
    are one table for `rcic profiles` and `rcic features-head` (listed or as a folder), equal to
    one pass's, and a missing part is refused by name."""
    from rcic.profiling.features_head import join_tables

    base = ["features", "--data", str(tiny_screen), "--store", str(tiny_store)]
    assert cli.main([*base, "--out", str(tmp_path / "all.parquet")]) == 0
    folder = tmp_path / "stats"
    folder.mkdir()
    plates = []
    for k, n in PARTS:
        out = folder / f"p{k}.parquet"
        assert cli.main([*base, "--part", f"{k}/{n}", "--out", str(out)]) == 0
        part, prov = tables.read_table(out)
        assert prov["part"] == f"{k}/{n}" and len(part) > 0
        plates.append(set(part["Metadata_Plate"]))
    assert not (plates[0] & plates[1]) and not (plates[1] & plates[2])
    whole, _ = tables.read_table(tmp_path / "all.parquet")
    assert set().union(*plates) == set(whole["Metadata_Plate"])
    key = "Metadata_id_code"
    for joined, _ in (profiles.load_tables([folder]), join_tables([folder])):
        pd.testing.assert_frame_equal(
            joined.sort_values(key).reset_index(drop=True),
            whole.sort_values(key).reset_index(drop=True),
        )
    with pytest.raises(InputError, match=r"part\(s\) 2/3 missing"):
        profiles.load_tables([folder / "p1.parquet", folder / "p3.parquet"])
    assert cli.main([*base, "--part", "999/999", "--out", str(tmp_path / "none.parquet")]) == 2
    assert "--part 999/999: no plate dealt to it" in capsys.readouterr().err
    assert not (tmp_path / "none.parquet").exists()


def test_predict_under_torchrun_writes_one_pass(trained, tiny_screen, tiny_store, tmp_path):
    """`torchrun --nproc-per-node 2 -m rcic.cli predict`: each rank predicts the plates dealt to
    it, rank 0 writes one file equal to one process's, bit for bit."""
    sites = metadata.load_metadata(tiny_screen)
    before = torch.get_num_threads()
    try:  # one thread, as each rank has: the sums inside a convolution follow the thread count
        one = InferenceOptions(views=2, progress=False, checkpoint="last", threads=1)
        whole = read_logits(
            predict.predict_run(trained, sites, tiny_store, "test", tmp_path / "one.npz", one)
        )
    finally:
        torch.set_num_threads(before)
    # `--` ends torchrun's own options: its parser would take `--run` for its `--run-path`
    argv = ["-m", "rcic.cli", "--", "predict", "--run", str(trained), "--data", str(tiny_screen)]
    argv += ["--store", str(tiny_store), "--split", "test", "--checkpoint", "last", "--views", "2"]
    res = torchrun([*argv, "--out", str(tmp_path / "ranks.npz")], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    ranks = read_logits(tmp_path / "ranks.npz")
    assert "part" not in ranks  # one output, as if one process had run
    assert res.stdout.count("wrote") == 1  # said by the rank that wrote it
    assert np.array_equal(ranks["id_code"], whole["id_code"])
    assert np.array_equal(ranks["logits"], whole["logits"])
    assert sorted(p.name for p in tmp_path.glob("*.npz")) == ["one.npz", "ranks.npz"]

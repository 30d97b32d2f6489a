"""A corpus of bad inputs, one fault at a time, across every command that reads user files.

Each case runs the CLI in-process on a copy of the tiny screen broken one way and asserts: the exit
code (2: rcic refused the input; 1: `rcic check` found problems and listed them), no traceback (an
exception escaping `cli.main` fails the test), a message naming the file, row or value at fault, and
no output written (neither the output nor a temporary file beside it).
"""

from __future__ import annotations

import io
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from rcic import cli, layout
from rcic.inference.logitsfile import write_logits


@dataclass
class World:
    screen: Path  # the tiny screen (read only)
    store: Path
    tmp: Path  # this case's own folder
    trained: object  # () -> a trained run folder (trained on first use)

    @property
    def run(self) -> Path:
        return self.trained()

    def copy_screen(self) -> Path:
        """A copy of the screen whose files can be broken (hard links: fast, and replacing a file
        in the copy leaves the original alone)."""
        out = self.tmp / "screen"
        shutil.copytree(self.screen, out, copy_function=os.link)
        return out

    def csv(self, name: str, change) -> Path:
        """A screen copy whose table `name` is rewritten by change(frame) -> frame or raw text."""
        data = self.copy_screen()
        frame = pd.read_csv(data / name, dtype=str, keep_default_na=False)
        new = change(frame)
        (data / name).unlink()
        if isinstance(new, bytes):
            (data / name).write_bytes(new)
        elif isinstance(new, str):
            (data / name).write_text(new)
        else:
            new.to_csv(data / name, index=False)
        return data

    def png(self, change) -> tuple[Path, Path]:
        """A screen copy with the first training site's w1 PNG replaced by change(path)."""
        data = self.copy_screen()
        row = pd.read_csv(data / "train.csv").iloc[0]
        path = (
            data / "train" / row.experiment / f"Plate{row.plate}" / layout.png_name(row.well, 1, 1)
        )
        path.unlink()
        change(path)
        return data, path

    def test_ids(self) -> np.ndarray:
        return pd.read_csv(self.screen / "test.csv")["id_code"].to_numpy()

    def logits(self, name="l.npz", ids=None, n_classes=layout.N_CLASSES, **extra) -> Path:
        ids = self.test_ids() if ids is None else ids
        z = np.random.default_rng(0).normal(size=(len(ids), n_classes)).astype(np.float32)
        return write_logits(self.tmp / name, ids, z, **extra)

    def run_copy(self) -> Path:
        out = self.tmp / "run"
        shutil.copytree(self.run, out, copy_function=os.link)
        return out

    def store_copy(self, change) -> Path:
        out = self.tmp / "store"
        shutil.copytree(self.store, out, copy_function=os.link)
        change(out)
        return out


def _rewrite(path: Path, text: str) -> None:
    path.unlink()
    path.write_text(text)


def _edit_json(path: Path, **fields) -> None:
    meta = json.loads(path.read_text())
    meta.update(fields)
    _rewrite(path, json.dumps(meta))


def _edit_index(store: Path) -> None:
    index = pd.read_csv(store / "index.csv")
    for exp in ("HEPG2-01", "HEPG2-03"):  # a training and a test experiment of the tiny screen
        index["id_code"] = index["id_code"].str.replace(exp, "HEPG2-77")
    _rewrite(store / "index.csv", index.to_csv(index=False))


def _png_bytes(array: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array, mode).save(buf, format="PNG")
    return buf.getvalue()


def _wrong_size(path: Path) -> None:
    path.write_bytes(_png_bytes(np.zeros((7, 9), np.uint8)))


def _palette(path: Path) -> None:
    im = Image.fromarray(np.zeros((32, 32), np.uint8)).convert("P")
    im.save(path, format="PNG")


def _wrong_size_16bit(path: Path) -> None:
    path.write_bytes(_png_bytes(np.full((16, 16), 40000, np.uint16)))


def _rgb(path: Path) -> None:
    path.write_bytes(_png_bytes(np.zeros((32, 32, 3), np.uint8)))


def _truncated(path: Path) -> None:
    path.write_bytes(_png_bytes(np.random.default_rng(0).integers(0, 255, (32, 32), np.uint8))[:60])


def _image_case(w: World, change, *fragments: str):
    """`rcic check --images` on a screen whose first PNG is replaced by change(path): exit 1, the
    file named, and each fragment in the message."""
    data, path = w.png(change)
    return ["check", "--images", "--data", str(data)], 1, [path.name, *fragments], None


def _pickled_logits(w: World) -> Path:
    ids = w.test_ids()
    z = np.zeros((len(ids), layout.N_CLASSES), np.float32)
    np.savez(w.tmp / "p.npz", id_code=np.array(ids, dtype=object), logits=z)
    return w.tmp / "p.npz"


def _torch_save(obj, path: Path) -> Path:
    import torch

    torch.save(obj, path)
    return path


def _checkpoint(w: World, content) -> Path:
    """A run copy whose best checkpoint is replaced by `content` (bytes, or an object to torch.save)."""
    run = w.run_copy()
    target = run / "checkpoints" / "best.pt"
    target.unlink()
    if isinstance(content, bytes):
        target.write_bytes(content)
    else:
        _torch_save(content, target)
    return run


def _embedding_file(w: World, name: str, source: str = "m", **drop) -> Path:
    ids = w.test_ids()
    n = len(ids)
    extra = {
        "embedding": np.random.default_rng(1).normal(size=(n, 8)).astype(np.float32),
        "experiment": np.array([i.split("_")[0] for i in ids]),
        "plate": np.array([int(i.split("_")[1]) for i in ids]),
        "cell_type": np.array([i.split("-")[0] for i in ids]),
        "well_type": np.array(["treatment"] * n),
        "sirna": np.full(n, -1),
        "source": np.array(source),
    }
    for k in drop:
        extra.pop(k)
    return w.logits(name, **extra)


def _meta(w: World):
    return ["--data", str(w.screen)]


# Each case: (name, build(w) -> (argv, expected exit code, fragments the message must hold, output
# path that must not appear)).
CASES = {
    # --- check: tables -------------------------------------------------------------------------
    "check: no train.csv": lambda w: (
        ["check", "--data", str(_without(w, "train.csv"))],
        2,
        ["train.csv"],
        None,
    ),
    "check: empty train.csv": lambda w: (
        ["check", "--data", str(w.csv("train.csv", lambda f: ""))],
        2,
        ["train.csv", "empty"],
        None,
    ),
    "check: truncated train.csv": lambda w: (
        ["check", "--data", str(w.csv("train.csv", lambda f: f.to_csv(index=False)[:-9]))],
        2,
        ["train.csv"],
        None,
    ),
    "check: binary train.csv": lambda w: (
        ["check", "--data", str(w.csv("train.csv", lambda f: b"\x89PNG\r\n\x1a\n\x00\x00binary"))],
        2,
        ["train.csv"],
        None,
    ),
    "check: UTF-16 train.csv": lambda w: (
        [
            "check",
            "--data",
            str(w.csv("train.csv", lambda f: f.to_csv(index=False).encode("utf-16"))),
        ],
        2,
        ["train.csv"],
        None,
    ),
    "check: no sirna column": lambda w: (
        ["check", "--data", str(w.csv("train.csv", lambda f: f.drop(columns="sirna")))],
        2,
        ["train.csv", "sirna"],
        None,
    ),
    "check: columns renamed": lambda w: (
        ["check", "--data", str(w.csv("train.csv", lambda f: f.set_axis(list("abcde"), axis=1)))],
        2,
        ["train.csv", "column"],
        None,
    ),
    "check: plate 'x'": lambda w: (
        [
            "check",
            "--data",
            str(w.csv("train.csv", lambda f: f.assign(plate=["x"] + list(f.plate[1:])))),
        ],
        2,
        ["train.csv", "'x'"],
        None,
    ),
    "check: plate 5": lambda w: (
        [
            "check",
            "--data",
            str(w.csv("train.csv", lambda f: f.assign(plate=["5"] + list(f.plate[1:])))),
        ],
        2,
        ["train.csv", "plate"],
        None,
    ),
    "check: well A01": lambda w: (
        ["check", "--data", str(w.csv("train.csv", _set_first(well="A01", id_code=None)))],
        2,
        ["train.csv", "A01"],
        None,
    ),
    "check: id_code disagrees": lambda w: (
        ["check", "--data", str(w.csv("train.csv", _set_first(id_code="X-99_1_B03")))],
        2,
        ["train.csv", "X-99_1_B03"],
        None,
    ),
    "check: sirna -1": lambda w: (
        ["check", "--data", str(w.csv("train.csv", _set_first(sirna="-1")))],
        2,
        ["train.csv", "-1"],
        None,
    ),
    "check: sirna 3.5": lambda w: (
        ["check", "--data", str(w.csv("train.csv", _set_first(sirna="3.5")))],
        2,
        ["train.csv", "3.5"],
        None,
    ),
    "check: sirna_banana": lambda w: (
        ["check", "--data", str(w.csv("train.csv", _set_first(sirna="sirna_banana")))],
        2,
        ["train.csv", "sirna_banana"],
        None,
    ),
    "check: duplicate row": lambda w: (
        ["check", "--data", str(w.csv("train.csv", lambda f: pd.concat([f, f.iloc[:1]])))],
        2,
        ["train.csv", "duplicate"],
        None,
    ),
    "check: test.csv without well": lambda w: (
        ["check", "--data", str(w.csv("test.csv", lambda f: f.drop(columns="well")))],
        2,
        ["test.csv", "well"],
        None,
    ),
    "check: a well in train and test": lambda w: (
        ["check", "--data", str(w.csv("test.csv", lambda f: pd.concat([f, _first_train(w)])))],
        2,
        [_first_train_id(w)],
        None,
    ),
    "check: no such folder": lambda w: (
        ["check", "--data", str(w.tmp / "nope")],
        2,
        ["nope"],
        None,
    ),
    "check: a file, not a folder": lambda w: (
        ["check", "--data", str(w.screen / "train.csv")],
        2,
        ["train.csv"],
        None,
    ),
    # --- check --images ------------------------------------------------------------------------
    "check: missing PNG": lambda w: _image_case(w, lambda path: None),
    "check: truncated PNG": lambda w: _image_case(w, _truncated),
    "check: empty PNG": lambda w: _image_case(w, lambda path: path.write_bytes(b"")),
    "check: wrong-size PNG": lambda w: _image_case(w, _wrong_size, "7x9", "differ in size"),
    "check: RGB PNG": lambda w: _image_case(w, _rgb, "colour"),
    "check: palette PNG": lambda w: _image_case(w, _palette, "palette", "grey plane"),
    "check: 16-bit PNG of the wrong size": lambda w: _image_case(
        w, _wrong_size_16bit, "differ in size"
    ),
    "check: text file named .png": lambda w: _image_case(w, lambda path: path.write_text("hello")),
    # --- prepare -------------------------------------------------------------------------------
    "prepare --strict: truncated PNG": lambda w: (
        [
            "prepare",
            "--data",
            str((p := w.png(_truncated))[0]),
            "--out",
            str(w.tmp / "st"),
            "--strict",
        ],
        2,
        [p[1].name],
        None,
    ),
    "prepare --strict: wrong-size PNG": lambda w: (
        [
            "prepare",
            "--data",
            str((p := w.png(_wrong_size))[0]),
            "--out",
            str(w.tmp / "st"),
            "--strict",
        ],
        2,
        [p[1].name],
        None,
    ),
    "prepare: onto another dataset's store": lambda w: (
        ["prepare", "--data", str(w.screen), "--out", str(w.store_copy(_edit_index))],
        2,
        ["different store"],
        None,
    ),
    "prepare: output under a file": lambda w: (
        ["prepare", "--data", str(w.screen), "--out", str(w.screen / "train.csv" / "store")],
        2,
        ["train.csv"],
        None,
    ),
    "prepare: bad metadata": lambda w: (
        [
            "prepare",
            "--data",
            str(w.csv("train.csv", _set_first(sirna="-1"))),
            "--out",
            str(w.tmp / "st"),
        ],
        2,
        ["train.csv", "-1"],
        "st",
    ),
    # --- train ---------------------------------------------------------------------------------
    "train: store of another dataset": lambda w: (
        ["train", *_meta(w), "--store", str(w.store_copy(_edit_index)), "--out", str(w.tmp / "r")],
        2,
        ["does not match"],
        "r/checkpoints/last.pt",
    ),
    "train: half-written store": lambda w: (
        [
            "train",
            *_meta(w),
            "--store",
            str(w.store_copy(lambda s: _edit_json(s / "store.json", complete=False))),
            "--out",
            str(w.tmp / "r"),
        ],
        2,
        ["packing did not finish"],
        "r/checkpoints/last.pt",
    ),
    "train: no such store": lambda w: (
        ["train", *_meta(w), "--store", str(w.tmp / "nostore"), "--out", str(w.tmp / "r")],
        2,
        ["nostore"],
        "r/checkpoints/last.pt",
    ),
    "train: unknown key": lambda w: (
        ["train", *_meta(w), "--store", str(w.store), "--out", str(w.tmp / "r"), "learnrate=1"],
        2,
        ["learnrate"],
        "r/checkpoints/last.pt",
    ),
    "train: lr=abc": lambda w: (
        ["train", *_meta(w), "--store", str(w.store), "--out", str(w.tmp / "r"), "lr=abc"],
        2,
        ["lr", "abc"],
        "r/checkpoints/last.pt",
    ),
    "train: epochs=ten": lambda w: (
        ["train", *_meta(w), "--store", str(w.store), "--out", str(w.tmp / "r"), "epochs=ten"],
        2,
        ["epochs", "ten"],
        "r/checkpoints/last.pt",
    ),
    "train: YAML with a python tag": lambda w: (
        [
            "train",
            *_meta(w),
            "--store",
            str(w.store),
            "--out",
            str(w.tmp / "r"),
            "--config",
            str(_write(w.tmp / "c.yaml", "lr: !!python/object/apply:os.system ['true']\n")),
        ],
        2,
        ["c.yaml"],
        "r/checkpoints/last.pt",
    ),
    "train: broken YAML": lambda w: (
        [
            "train",
            *_meta(w),
            "--store",
            str(w.store),
            "--out",
            str(w.tmp / "r"),
            "--config",
            str(_write(w.tmp / "c.yaml", "lr: [0.1\nepochs: 3\n")),
        ],
        2,
        ["c.yaml"],
        "r/checkpoints/last.pt",
    ),
    "train: bad metadata": lambda w: (
        [
            "train",
            "--data",
            str(w.csv("train.csv", _set_first(well="Z99", id_code=None))),
            "--store",
            str(w.store),
            "--out",
            str(w.tmp / "r"),
        ],
        2,
        ["train.csv", "Z99"],
        "r/checkpoints/last.pt",
    ),
    # --- predict -------------------------------------------------------------------------------
    "predict: no such run": lambda w: (
        [
            "predict",
            "--run",
            str(w.tmp / "norun"),
            *_meta(w),
            "--store",
            str(w.store),
            "--out",
            str(w.tmp / "o.npz"),
        ],
        2,
        ["norun"],
        "o.npz",
    ),
    "predict: checkpoint of random bytes": lambda w: (
        [
            "predict",
            "--run",
            str(_checkpoint(w, b"\x00garbage" * 50)),
            *_meta(w),
            "--store",
            str(w.store),
            "--out",
            str(w.tmp / "o.npz"),
        ],
        2,
        ["best.pt"],
        "o.npz",
    ),
    "predict: checkpoint that is a list": lambda w: (
        [
            "predict",
            "--run",
            str(_checkpoint(w, [1, 2, 3])),
            *_meta(w),
            "--store",
            str(w.store),
            "--out",
            str(w.tmp / "o.npz"),
        ],
        2,
        ["best.pt"],
        "o.npz",
    ),
    "predict: checkpoint of another model": lambda w: (
        [
            "predict",
            "--run",
            str(_checkpoint(w, {"weights": {}})),
            *_meta(w),
            "--store",
            str(w.store),
            "--out",
            str(w.tmp / "o.npz"),
        ],
        2,
        ["best.pt", "not an rcic checkpoint"],
        "o.npz",
    ),
    "predict: fold that does not exist": lambda w: (
        [
            "predict",
            "--run",
            str(w.run),
            *_meta(w),
            "--store",
            str(w.store),
            "--split",
            "9",
            "--out",
            str(w.tmp / "o.npz"),
        ],
        2,
        ["9"],
        "o.npz",
    ),
    "predict: store of another dataset": lambda w: (
        [
            "predict",
            "--run",
            str(w.run),
            *_meta(w),
            "--store",
            str(w.store_copy(_edit_index)),
            "--out",
            str(w.tmp / "o.npz"),
        ],
        2,
        ["does not match"],
        "o.npz",
    ),
    # --- submit --------------------------------------------------------------------------------
    "submit: logits not a .npz": lambda w: (
        [
            "submit",
            "--logits",
            str(_write(w.tmp / "l.npz", "id_code,logits\n")),
            "--data",
            str(w.screen),
            "--out",
            str(w.tmp / "s.csv"),
        ],
        2,
        ["l.npz"],
        "s.csv",
    ),
    "submit: truncated .npz": lambda w: (
        [
            "submit",
            "--logits",
            str(_truncate(w.logits())),
            "--data",
            str(w.screen),
            "--out",
            str(w.tmp / "s.csv"),
        ],
        2,
        ["l.npz"],
        "s.csv",
    ),
    "submit: pickled object arrays": lambda w: (
        [
            "submit",
            "--logits",
            str(_pickled_logits(w)),
            "--data",
            str(w.screen),
            "--out",
            str(w.tmp / "s.csv"),
        ],
        2,
        ["p.npz"],
        "s.csv",
    ),
    "submit: 10 classes": lambda w: (
        [
            "submit",
            "--logits",
            str(_raw_npz(w, n_classes=10)),
            "--data",
            str(w.screen),
            "--out",
            str(w.tmp / "s.csv"),
        ],
        2,
        ["r.npz", "10 classes"],
        "s.csv",
    ),
    "submit: NaN logits": lambda w: (
        [
            "submit",
            "--logits",
            str(_raw_npz(w, nan=True)),
            "--data",
            str(w.screen),
            "--out",
            str(w.tmp / "s.csv"),
        ],
        2,
        ["r.npz", "NaN"],
        "s.csv",
    ),
    "submit: duplicate wells": lambda w: (
        [
            "submit",
            "--logits",
            str(_raw_npz(w, duplicate=True)),
            "--data",
            str(w.screen),
            "--out",
            str(w.tmp / "s.csv"),
        ],
        2,
        ["r.npz", "duplicate"],
        "s.csv",
    ),
    "submit: missing wells": lambda w: (
        [
            "submit",
            "--logits",
            str(w.logits(ids=w.test_ids()[5:])),
            "--data",
            str(w.screen),
            "--out",
            str(w.tmp / "s.csv"),
        ],
        2,
        ["l.npz", w.test_ids()[0]],
        "s.csv",
    ),
    "submit: wells not in test.csv": lambda w: (
        [
            "submit",
            "--logits",
            str(w.logits(ids=np.r_[w.test_ids(), ["HEPG2-99_1_B02"]])),
            "--data",
            str(w.screen),
            "--out",
            str(w.tmp / "s.csv"),
        ],
        2,
        ["HEPG2-99_1_B02"],
        "s.csv",
    ),
    "submit: ensemble of files over other wells": lambda w: (
        [
            "submit",
            "--logits",
            str(w.logits()),
            str(w.logits("m.npz", ids=w.test_ids()[3:])),
            "--data",
            str(w.screen),
            "--out",
            str(w.tmp / "s.csv"),
        ],
        2,
        ["m.npz", "other wells"],
        "s.csv",
    ),
    "submit: weights do not match files": lambda w: (
        [
            "submit",
            "--logits",
            str(w.logits()),
            "--weights",
            "1",
            "2",
            "--data",
            str(w.screen),
            "--out",
            str(w.tmp / "s.csv"),
        ],
        2,
        ["2 weights for 1 logits file"],
        "s.csv",
    ),
    "submit: negative temperature": lambda w: (
        [
            "submit",
            "--logits",
            str(w.logits()),
            "--temperature",
            "-1",
            "--data",
            str(w.screen),
            "--out",
            str(w.tmp / "s.csv"),
        ],
        2,
        ["temperature"],
        "s.csv",
    ),
    "submit: output under a file": lambda w: (
        [
            "submit",
            "--logits",
            str(w.logits()),
            "--data",
            str(w.screen),
            "--out",
            str(w.screen / "test.csv" / "s.csv"),
        ],
        2,
        ["test.csv"],
        None,
    ),
    "submit: metadata folder without test.csv": lambda w: (
        [
            "submit",
            "--logits",
            str(w.logits()),
            "--data",
            str(_without(w, "test.csv")),
            "--out",
            str(w.tmp / "s.csv"),
        ],
        2,
        ["test.csv"],
        "s.csv",
    ),
    # --- evaluate ------------------------------------------------------------------------------
    "evaluate: no such submission": lambda w: (
        [
            "evaluate",
            "--submission",
            str(w.tmp / "nosub.csv"),
            "--labels",
            str(w.screen / "test_labels.csv"),
        ],
        2,
        ["nosub.csv"],
        None,
    ),
    "evaluate: submission without sirna": lambda w: (
        [
            "evaluate",
            "--submission",
            str(_write(w.tmp / "s.csv", "id_code,label\nA,1\n")),
            "--labels",
            str(w.screen / "test_labels.csv"),
        ],
        2,
        ["s.csv", "sirna"],
        None,
    ),
    "evaluate: sirna not a number": lambda w: (
        [
            "evaluate",
            "--submission",
            str(_submission(w, sirna="abc")),
            "--labels",
            str(w.screen / "test_labels.csv"),
        ],
        2,
        ["s.csv", "abc"],
        None,
    ),
    "evaluate: other wells than the labels": lambda w: (
        [
            "evaluate",
            "--submission",
            str(_submission(w, drop=4)),
            "--labels",
            str(w.screen / "test_labels.csv"),
        ],
        2,
        ["s.csv", "4"],
        None,
    ),
    # --- report --------------------------------------------------------------------------------
    "report: nothing to report": lambda w: (
        ["report", str(_mkdir(w.tmp / "empty")), "--out", str(w.tmp / "r.html")],
        2,
        ["empty", "nothing to report"],
        "r.html",
    ),
    "report: no such folder": lambda w: (
        ["report", str(w.tmp / "nofolder"), "--out", str(w.tmp / "r.html")],
        2,
        ["nofolder"],
        "r.html",
    ),
    # --- embed and embed-head ------------------------------------------------------------------
    "embed: run without checkpoints": lambda w: (
        [
            "embed",
            "--run",
            str(_mkdir(w.tmp / "bare")),
            *_meta(w),
            "--store",
            str(w.store),
            "--out",
            str(w.tmp / "e.npz"),
        ],
        2,
        ["bare"],
        "e.npz",
    ),
    "embed: checkpoint of random bytes": lambda w: (
        [
            "embed",
            "--run",
            str(_checkpoint(w, b"junk" * 100)),
            *_meta(w),
            "--store",
            str(w.store),
            "--out",
            str(w.tmp / "e.npz"),
        ],
        2,
        ["best.pt"],
        "e.npz",
    ),
    "features: no store": lambda w: (
        [
            "features",
            *_meta(w),
            "--store",
            str(w.tmp / "nostore"),
            "--out",
            str(w.tmp / "f.parquet"),
        ],
        2,
        ["nostore"],
        "f.parquet",
    ),
    "profiles: a CSV, not a table": lambda w: (
        [
            "profiles",
            "--table",
            str(_write(w.tmp / "t.parquet", "a,b\n1,2\n")),
            "--out",
            str(w.tmp / "p"),
        ],
        2,
        ["t.parquet", "Parquet"],
        "p/metrics.json",
    ),
    "profiles: epsilon not a number": lambda w: (
        [
            "profiles",
            "--table",
            str(w.tmp / "t.parquet"),
            "--correction",
            "spherize",
            "--epsilon",
            "big",
            "--out",
            str(w.tmp / "p"),
        ],
        2,
        ["--epsilon", "big"],
        "p/metrics.json",
    ),
    "embed-head: logits, not embeddings": lambda w: (
        [
            "embed-head",
            "--train",
            str(w.logits()),
            "--apply",
            str(w.logits("m.npz")),
            "--out",
            str(w.tmp / "h.npz"),
        ],
        2,
        ["l.npz", "not an embedding file"],
        "h.npz",
    ),
    "embed-head: no such file": lambda w: (
        [
            "embed-head",
            "--train",
            str(w.tmp / "none.npz"),
            "--apply",
            str(w.logits("m.npz")),
            "--out",
            str(w.tmp / "h.npz"),
        ],
        2,
        ["none.npz"],
        "h.npz",
    ),
    "embed-head: unknown correction": lambda w: (
        [
            "embed-head",
            "--train",
            str(_embedding_file(w, "a.npz")),
            "--apply",
            str(_embedding_file(w, "b.npz")),
            "--correction",
            "magic",
            "--out",
            str(w.tmp / "h.npz"),
        ],
        2,
        ["magic"],
        "h.npz",
    ),
    "embed-head: files from two models": lambda w: (
        [
            "embed-head",
            "--train",
            str(_embedding_file(w, "a.npz", source="one")),
            "--apply",
            str(_embedding_file(w, "b.npz", source="two")),
            "--out",
            str(w.tmp / "h.npz"),
        ],
        2,
        ["different models"],
        "h.npz",
    ),
}


def _set_first(**values):
    """change() for w.csv: set columns of the first row; id_code=None keeps it consistent."""

    def change(f: pd.DataFrame) -> pd.DataFrame:
        f = f.copy()
        for k, v in values.items():
            if v is not None:
                f.loc[f.index[0], k] = v
        if values.get("id_code", "") is None:
            r = f.iloc[0]
            f.loc[f.index[0], "id_code"] = layout.id_code(r.experiment, r.plate, r.well)
        return f

    return change


def _first_train(w: World) -> pd.DataFrame:
    return pd.read_csv(w.screen / "train.csv", dtype=str).iloc[:1].drop(columns="sirna")


def _first_train_id(w: World) -> str:
    return str(_first_train(w)["id_code"].iloc[0])


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _mkdir(path: Path) -> Path:
    path.mkdir()
    return path


def _truncate(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _without(w: World, name: str) -> Path:
    data = w.copy_screen()
    (data / name).unlink()
    return data


def _raw_npz(w: World, n_classes=layout.N_CLASSES, nan=False, duplicate=False) -> Path:
    """A logits file written with numpy directly (write_logits would refuse it)."""
    ids = w.test_ids()
    z = np.zeros((len(ids), n_classes), np.float32)
    if nan:
        z[2, 5] = np.nan
    if duplicate:
        ids = ids.copy()
        ids[1] = ids[0]
    np.savez(w.tmp / "r.npz", id_code=ids.astype(str), logits=z)
    return w.tmp / "r.npz"


def _submission(w: World, sirna=None, drop=0) -> Path:
    sub = pd.read_csv(w.screen / "test_labels.csv")[["id_code", "sirna"]].iloc[drop:]
    if sirna is not None:
        sub = sub.astype({"sirna": object})
        sub.iloc[0, 1] = sirna
    sub.to_csv(w.tmp / "s.csv", index=False)
    return w.tmp / "s.csv"


def test_the_corpus_is_large_and_covers_every_command():
    commands = {name.split(":")[0].split()[0] for name in CASES}
    assert len(CASES) >= 40
    assert commands >= {
        "check",
        "prepare",
        "train",
        "predict",
        "submit",
        "evaluate",
        "report",
        "embed",
        "embed-head",
    }


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_named_without_traceback(
    name, tiny_screen, tiny_store, request, tmp_path, capsys
):
    w = World(tiny_screen, tiny_store, tmp_path, lambda: request.getfixturevalue("trained"))
    argv, code, fragments, output = CASES[name](w)
    capsys.readouterr()
    try:
        got = cli.main(argv)
    except SystemExit as e:  # argparse refusing an argument
        got = e.code
    out = capsys.readouterr()
    text = out.err + out.out
    assert got == code, f"exit {got}, expected {code}: {text[-2000:]}"
    assert "Traceback" not in text
    for fragment in fragments:
        assert fragment in text, f"{fragment!r} not in {text[-2000:]!r}"
    if output:
        target = tmp_path / output
        assert not target.exists(), f"{target} was written"
        leftovers = [p.name for p in target.parent.glob("*.tmp*")] if target.parent.exists() else []
        assert not leftovers, leftovers


def _fill(folder: Path) -> None:
    """Write into `folder` until its file system is full."""
    with open(folder / "filler", "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass


def test_a_full_disk_is_named_and_leaves_no_output(tiny_screen, small_disk, tmp_path, capsys):
    mnt, _ = small_disk
    w = World(tiny_screen, tiny_screen, tmp_path, lambda: None)
    logits = w.logits()
    _fill(mnt)
    code = cli.main(
        [
            "submit",
            "--logits",
            str(logits),
            "--data",
            str(tiny_screen),
            "--out",
            str(mnt / "s.csv"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert f"{mnt / 's.csv'}: cannot be written (No space left on device)" in err
    assert sorted(p.name for p in mnt.iterdir()) == ["filler"]

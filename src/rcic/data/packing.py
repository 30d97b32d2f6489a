"""Packing the image store: every site's 6 PNGs decoded once into a chunked zarr array, resumable
and splittable over machines (the store's layout: rcic.data.store)."""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import zarr
from PIL import Image
from tqdm import tqdm

from rcic import layout
from rcic.data.images import ImageReadError, load_site, site_path
from rcic.data.metadata import SITE_COLUMNS
from rcic.data.store import FAILED, PACKED, TODO
from rcic.errors import InputError, StoreError
from rcic.fileio import atomic_csv, atomic_text, make_dir
from rcic.parallel import ordered_map

log = logging.getLogger(__name__)

COMPRESSIONS = ("none", "zstd", "lz4")
_BATCH = 64


@dataclass
class PackResult:
    packed: int
    failed: int
    skipped: int  # already packed by an earlier run


def _compressors(name: str):
    if name == "none":
        return None
    if name not in COMPRESSIONS:
        raise InputError(f"compression {name!r}: expected one of {COMPRESSIONS}")
    from zarr.codecs import BloscCodec

    return BloscCodec(cname=name, clevel=3, shuffle="bitshuffle")


def pack(
    data_dir: str | Path,
    sites: pd.DataFrame,
    out: str | Path,
    *,
    size: int | None = None,
    workers: int | None = None,
    compression: str = "none",
    strict: bool = False,
    part: tuple[int, int] | None = None,
) -> PackResult:
    """Decode every site listed in `sites` from `data_dir` into the store at `out`.

    Args:
        data_dir: dataset folder holding ``train/`` and ``test/``.
        sites: the site table from :func:`rcic.data.metadata.load_metadata`.
        out: store folder; created, or resumed if it holds the same sites and size.
        size: resize sites to size x size (area averaging); default: the images' own size.
        workers: decoding processes (default: all cores).
        compression: ``none`` (fastest reads), ``zstd`` or ``lz4``.
        strict: raise if any site is unreadable, instead of listing it in ``failed.csv``.
        part: (k, n), 1 <= k <= n: pack only the plates dealt to part k of n (see the module doc).
    """
    out, data_dir = Path(out), Path(data_dir)
    index = sites[SITE_COLUMNS].reset_index(drop=True).rename_axis("idx").reset_index()
    size = size or _native_size(data_dir, index)
    group = _open_or_create(out, index, size, compression, str(data_dir))
    if part is None:
        _fold_parts(out, group, require_all=False)
    tag = _part_tag(part)
    todo, skipped = _todo(out, group, index, part)
    if compression == "none":  # the size is known: refuse before writing what cannot fit
        _check_space(out, len(todo) * len(layout.CHANNELS) * size * size)
    failures = _pack_todo(out, group, data_dir, index, todo, size, workers, tag)
    _write_failed(out, index, failures, tag)
    if failures and strict:
        raise StoreError(_failed_message(out, failures, "and --strict was given"))
    result = PackResult(packed=len(todo) - len(failures), failed=len(failures), skipped=skipped)
    if part is not None:
        atomic_text(out / f"part.{tag}.done", "")
        if not _fold_parts(out, group, require_all=True):
            log.info("%s: part %s done; the store completes when every part is", out, tag)
            return result
    state = group["state"][:]
    if (state == FAILED).all():
        raise StoreError(_failed_message(out, failures, "which is every site"))
    write_stats(out)
    _update_meta(out, complete=True, failed=int((state == FAILED).sum()))
    return result


def _todo(out, group, index: pd.DataFrame, part) -> tuple[np.ndarray, int]:
    """Sites of this part still to pack, and how many of its sites are packed already."""
    state = _known_state(group)
    mine = part_mask(index, part)
    todo = np.flatnonzero((state != PACKED) & mine)
    skipped = int((mine & (state == PACKED)).sum())
    if skipped:
        log.info("resuming %s: %d of %d sites already packed", out, skipped, len(todo) + skipped)
    return todo, skipped


def _failed_message(out: Path, failures: dict[int, str], why: str) -> str:
    first = "; ".join(failures[i] for i in sorted(failures)[:3])
    return (
        f"{len(failures)} site(s) could not be read, {why}: {first} "
        f"(all listed in {out / 'failed.csv'})"
    )


def _pack_todo(out, group, data_dir, index, todo, size, workers, tag) -> dict[int, str]:
    """Pack the `todo` sites; a full disk becomes a StoreError saying how to resume."""
    try:
        return _pack_sites(group, data_dir, index, todo, size, workers or os.cpu_count() or 1, tag)
    except OSError as e:
        if e.errno != errno.ENOSPC:
            raise
        free = shutil.disk_usage(out).free
        raise StoreError(
            f"{out}: the disk is full ({_mb(free)} free); the sites written so far are kept: free "
            f"some space and run `rcic prepare` again to finish (it resumes)"
        ) from None


def parse_part(text: str) -> tuple[int, int]:
    """'K/N' -> (K, N) with 1 <= K <= N."""
    try:
        k, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise InputError(f"--part {text!r}: expected K/N, e.g. 2/8") from None
    if not 1 <= k <= n:
        raise InputError(f"--part {text!r}: K must be between 1 and N")
    return k, n


def part_mask(index: pd.DataFrame, part: tuple[int, int] | None) -> np.ndarray:
    """Sites of the plates dealt to part (k, n): plates in sorted order, every n-th from the k-th."""
    if part is None:
        return np.ones(len(index), bool)
    k, n = part
    plates = index[["split", "experiment", "plate"]].astype(str).agg("/".join, axis=1)
    order = {p: i for i, p in enumerate(sorted(plates.unique()))}
    return (plates.map(order).to_numpy() % n) == k - 1


def part_sites(frame: pd.DataFrame, part: tuple[int, int] | None, of: str) -> pd.DataFrame:
    """The rows of `frame` (sites of `of`: the split, the dataset) on the plates dealt to `part`
    (all of them without one); InputError when no plate is dealt to it."""
    mine = frame[part_mask(frame, part)]
    if mine.empty:
        k, n = part
        plates = frame.groupby(["experiment", "plate"]).ngroups
        raise InputError(f"--part {k}/{n}: no plate dealt to it (the {of} has {plates} plates)")
    return mine


def _part_tag(part: tuple[int, int] | None) -> str | None:
    return None if part is None else f"{part[0]}-of-{part[1]}"


def _part_tags(group) -> list[str]:
    return sorted(name[len("state.") :] for name in group.array_keys() if name.startswith("state."))


def _known_state(group) -> np.ndarray:
    """Per site: packed or failed according to the main state or any part's."""
    state = group["state"][:]
    for tag in _part_tags(group):
        done = group[f"state.{tag}"][:]
        state = np.where(done != TODO, done, state)
    return state


def _fold_parts(out: Path, group, require_all: bool) -> bool:
    """Fold the parts' progress into `state`, `sums` and failed.csv. With `require_all`, only when
    every part of the split has finished; returns whether it folded."""
    tags = _part_tags(group)
    if not tags:
        return not require_all
    if require_all:
        n = int(tags[0].split("-of-")[1])
        if not all((out / f"part.{k}-of-{n}.done").exists() for k in range(1, n + 1)):
            return False
    state, sums = group["state"][:], group["sums"][:]
    for tag in tags:
        done = group[f"state.{tag}"][:]
        got = done != TODO
        state[got], sums[got] = done[got], group[f"sums.{tag}"][:][got]
    group["sums"][:] = sums
    group["state"][:] = state
    failed = [pd.read_csv(f) for f in sorted(out.glob("failed.*-of-*.csv"))]
    if failed:
        atomic_csv(pd.concat(failed, ignore_index=True).sort_values("idx"), out / "failed.csv")
    return True


def _mb(n: float) -> str:
    return f"{n / 2**20:,.1f} MiB"


def _check_space(out: Path, needed: int) -> None:
    """Raise StoreError naming the store, the space needed and the space free, if it cannot fit."""
    free = shutil.disk_usage(out).free
    margin = 1.02 * needed + 2**20  # chunk files have a little overhead
    if margin > free:
        raise StoreError(
            f"{out}: packing needs about {_mb(margin)} but only {_mb(free)} is free on its disk; "
            "free some space (or choose another --out, a smaller --size, or --compression zstd) and "
            "run `rcic prepare` again: it resumes where it stopped"
        )


def _native_size(data_dir: Path, index: pd.DataFrame) -> int:
    for row in index.itertuples():
        path = site_path(data_dir, row.split, row.experiment, row.plate, row.well, row.site, 1)
        if path.exists():
            with Image.open(path) as im:
                return im.size[0]
    raise StoreError(
        f"{data_dir}: none of the listed sites has a w1 PNG; is this the dataset folder?"
    )


def _open_or_create(
    out: Path, index: pd.DataFrame, size: int, compression: str, source: str
) -> zarr.Group:
    meta_path = out / "store.json"
    if not meta_path.exists():
        created = _create_once(out, index, size, compression, source)
        if created is not None:
            return created
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        old = pd.read_csv(out / "index.csv")
        same = (
            meta["size"] == size
            and meta["compression"] == compression
            and old["id_code"].tolist() == index["id_code"].tolist()
            and old["site"].tolist() == index["site"].tolist()
        )
        if not same:
            raise StoreError(
                f"{out} holds a different store (other sites, size or compression); choose another --out or delete it"
            )
        return zarr.open_group(out / "sites.zarr", mode="r+")
    raise StoreError(f"{out}: no store.json after waiting for another rcic prepare to create it")


def _create_once(out: Path, index, size, compression, source, wait_s: float = 120.0):
    """Create the store, unless another process (a part on another machine) is creating it: the
    first to make the folder OUT/.creating creates; the others wait for store.json (None)."""
    import time

    make_dir(out)
    lock = out / ".creating"
    try:
        lock.mkdir()
    except FileExistsError:
        deadline = time.monotonic() + wait_s
        while not (out / "store.json").exists():
            if time.monotonic() > deadline:
                raise StoreError(
                    f"{out}: another rcic prepare began creating this store {wait_s:.0f} s ago and "
                    f"has not finished; if none is running, remove {lock} and run again"
                ) from None
            time.sleep(0.2)
        return None
    try:
        if (out / "store.json").exists():  # created between our check and the lock
            return None
        return _create(out, index, size, compression, source)
    finally:
        lock.rmdir()


def _create(out: Path, index, size, compression, source) -> zarr.Group:
    group = zarr.open_group(out / "sites.zarr", mode="w")
    n, c = len(index), len(layout.CHANNELS)
    group.create_array(
        "images",
        shape=(n, c, size, size),
        chunks=(1, c, size, size),
        dtype="uint8",
        compressors=_compressors(compression),
        fill_value=0,
    )
    group.create_array(
        "state", shape=(n,), chunks=(max(1, min(n, 65536)),), dtype="uint8", fill_value=TODO
    )
    group.create_array(
        "sums",
        shape=(n, c, 2),
        chunks=(max(1, min(n, 8192)), c, 2),
        dtype="float64",
        fill_value=0.0,
    )
    atomic_csv(index, out / "index.csv")
    meta = {
        "format": 1,
        "size": size,
        "channels": list(layout.CHANNELS),
        "compression": compression,
        "source": source,
        "n_sites": n,
        "complete": False,
    }
    atomic_text(out / "store.json", json.dumps(meta, indent=1))
    return group


def _pack_sites(group, data_dir, index, todo, size, workers, tag=None) -> dict[int, str]:
    """Decode the `todo` sites in batches; mark each batch done once written (in the part's own
    progress arrays when `tag` names a part). Return failures."""
    state_name, sums_name = ("state", "sums") if tag is None else _part_arrays(group, tag)
    batches = [todo[i : i + _BATCH] for i in range(0, len(todo), _BATCH)]
    rows = index[["split", "experiment", "plate", "well", "site"]].to_numpy()
    jobs = [(str(group.store.root), str(data_dir), b, rows[b], size) for b in batches]
    failures: dict[int, str] = {}
    with (
        ordered_map(_pack_batch, jobs, workers) as results,
        tqdm(total=len(todo), desc="packing sites", unit="site") as bar,
    ):
        for idx, sums, ok, errors in results:
            span = slice(idx[0], idx[-1] + 1)
            group[sums_name][span] = _fill(group[sums_name][span], idx - idx[0], sums)
            state = np.where(ok, PACKED, FAILED).astype(np.uint8)
            group[state_name][span] = _fill(group[state_name][span], idx - idx[0], state)
            failures.update(errors)
            bar.update(len(idx))
    return failures


def _part_arrays(group, tag: str) -> tuple[str, str]:
    """The progress arrays of one part (created on its first run)."""
    n, c = group["state"].shape[0], len(layout.CHANNELS)
    if f"state.{tag}" not in group:
        group.create_array(
            f"sums.{tag}",
            shape=(n, c, 2),
            chunks=group["sums"].chunks,
            dtype="float64",
            fill_value=0.0,
        )
        group.create_array(
            f"state.{tag}", shape=(n,), chunks=group["state"].chunks, dtype="uint8", fill_value=TODO
        )
    return f"state.{tag}", f"sums.{tag}"


def _fill(block: np.ndarray, where: np.ndarray, values: np.ndarray) -> np.ndarray:
    block[where] = values
    return block


def _pack_batch(job):
    root, data_dir, idx, rows, size = job
    images = zarr.open_array(Path(root) / "images", mode="r+")
    sums = np.zeros((len(idx), len(layout.CHANNELS), 2))
    ok = np.zeros(len(idx), bool)
    errors = {}
    for k, (i, (split, exp, plate, well, site)) in enumerate(zip(idx, rows, strict=True)):
        try:
            arr = _resize(load_site(data_dir, split, exp, plate, well, site), size)
        except ImageReadError as e:
            errors[int(i)] = str(e)
            continue
        images[int(i)] = arr
        flat = arr.reshape(arr.shape[0], -1).astype(np.float64)
        sums[k] = np.stack([flat.sum(1), (flat**2).sum(1)], 1)
        ok[k] = True
    return idx, sums, ok, errors


def _resize(site: np.ndarray, size: int) -> np.ndarray:
    if site.shape[-1] == size and site.shape[-2] == size:
        return site
    return np.stack(
        [np.asarray(Image.fromarray(p).resize((size, size), Image.Resampling.BOX)) for p in site]
    )


def _write_failed(
    out: Path, index: pd.DataFrame, failures: dict[int, str], tag: str | None = None
) -> None:
    frame = index.loc[sorted(failures), ["idx", "id_code", "site"]].assign(
        reason=[failures[i] for i in sorted(failures)]
    )
    atomic_csv(frame, out / ("failed.csv" if tag is None else f"failed.{tag}.csv"))
    for i in sorted(failures)[:10]:
        log.warning("unreadable site left out: %s", failures[i])
    if len(failures) > 10:
        log.warning("... and %d more, listed in %s", len(failures) - 10, out / "failed.csv")


def write_stats(out: str | Path) -> pd.DataFrame:
    """Per-plate, per-channel mean and std from all packed sites and from negative controls."""
    out = Path(out)
    group = zarr.open_group(out / "sites.zarr", mode="r")
    index = pd.read_csv(out / "index.csv")
    sums, state = group["sums"][:], group["state"][:]
    npix = float(np.prod(group["images"].shape[2:]))
    rows = []
    packed = index[state == PACKED]
    for (exp, plate), sub in packed.groupby(["experiment", "plate"]):
        neg = sub[sub["well_type"] == "negative_control"]
        for c, ch in enumerate(layout.CHANNELS):
            row = {"experiment": exp, "plate": plate, "channel": ch}
            for name, part in (("all", sub), ("neg", neg)):
                s = sums[part["idx"].to_numpy(), c]
                n = npix * len(part)
                mean = s[:, 0].sum() / n if n else np.nan
                var = s[:, 1].sum() / n - mean**2 if n else np.nan
                row[f"mean_{name}"], row[f"std_{name}"] = (
                    mean,
                    np.sqrt(max(var, 1e-6)) if n else np.nan,
                )
            rows.append(row)
    stats = pd.DataFrame(rows)
    atomic_csv(stats, out / "stats.csv")
    return stats


def _update_meta(out: Path, **fields) -> None:
    meta = json.loads((out / "store.json").read_text())
    meta.update(fields)
    atomic_text(out / "store.json", json.dumps(meta, indent=1))

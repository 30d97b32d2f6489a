"""Sites per second: reading the packed store against decoding the 6 PNGs, same sites, one process.

Usage: python benchmarks/store_read.py [--work DIR] [--sites N]
Generates a `tiny` screen at the real 512 px size (or reuses one in --work), packs it with each
compression, and times reading the same sites both ways. With ../shared present, the real control
images are timed as well.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from rcic import images, metadata, store, synth

SHARED = Path(__file__).resolve().parents[2] / "shared" / "rxrx1" / "images"


def rate(fn, items) -> float:
    t0 = time.perf_counter()
    for it in items:
        fn(it)
    return len(items) / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", type=Path, default=Path("/tmp/rcic-bench-store"))
    ap.add_argument("--sites", type=int, default=400)
    args = ap.parse_args()
    data = args.work / "screen512"
    if not (data / "test_labels.csv").exists():
        synth.generate(data, "tiny", seed=0, image_size=512)
    sites = metadata.load_metadata(data)
    rows = sites.iloc[: args.sites]
    keys = list(
        rows[["split", "experiment", "plate", "well", "site"]].itertuples(index=False, name=None)
    )
    png = rate(lambda k: images.load_site(data, *k), keys)
    print(f"sites: {len(keys)} synthetic sites of 6 x 512 x 512 uint8")
    print(f"PNG decode (6 files per site):  {png:8.1f} sites/s")
    for comp in store.COMPRESSIONS:
        out = args.work / f"store-{comp}"
        if not (out / "store.json").exists():
            t0 = time.perf_counter()
            store.pack(data, sites, out, compression=comp)
            print(
                f"  packed {len(sites)} sites ({comp}) in {time.perf_counter() - t0:.1f} s with all cores"
            )
        st = store.SiteStore(out)
        idx = st.index["idx"].to_numpy()[: args.sites]
        r = rate(st.read, idx)
        disk = (
            sum(f.stat().st_size for f in (out / "sites.zarr").rglob("*") if f.is_file())
            / len(sites)
            / 1024
        )
        same = all(
            np.array_equal(st.read(i), images.load_site(data, *k))
            for i, k in list(zip(idx, keys, strict=True))[:20]
        )
        print(
            f"store, compression={comp:5}: {r:8.1f} sites/s  {r / png:5.1f}x PNG  {disk:7.1f} KiB/site on disk  identical={same}"
        )
    if SHARED.exists():
        real = [
            ("train", e, 1, "B02", 1) for e in ("HEPG2-01", "HUVEC-01", "RPE-01", "U2OS-01")
        ] * 10
        print(
            f"real RxRx1 control sites (shared/rxrx1/images), PNG decode: {rate(lambda k: images.load_site(SHARED, *k), real):.1f} sites/s"
        )


if __name__ == "__main__":
    main()

"""Sites per second: reading the packed store against decoding the 6 PNGs, same sites, one process.

Usage: python benchmarks/store_read.py [--work DIR] [--sites N] [--sizes 512 256]
Generates a `tiny` screen at the real 512 px size (or reuses one in --work), packs it with each
compression at each store size (256: `rcic prepare --size 256`, area-averaged), and times reading the
same sites both ways; the packing time gives sites/s packed on this machine's 2 cores. With
../shared present, the real control images are timed as well.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from rcic.data import images, metadata, packing, store
from rcic.synthetic import synth

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
    ap.add_argument("--sizes", type=int, nargs="+", default=[512, 256])
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
    for size, comp in [(z, c) for z in args.sizes for c in packing.COMPRESSIONS]:
        out = args.work / f"store-{comp}-{size}"
        if not (out / "store.json").exists():
            t0 = time.perf_counter()
            packing.pack(data, sites, out, compression=comp, size=size)
            took = time.perf_counter() - t0
            print(
                f"  packed {len(sites)} sites ({comp}, {size} px) in {took:.1f} s with all cores: "
                f"{len(sites) / took:.0f} sites/s"
            )
        st = store.SiteStore(out)
        idx = st.index["idx"].to_numpy()[: args.sites]
        r = rate(st.read, idx)
        disk = (
            sum(f.stat().st_size for f in (out / "sites.zarr").rglob("*") if f.is_file())
            / len(sites)
            / 1024
        )
        check = list(zip(idx, keys, strict=True))[:20] if size == 512 else []
        same = all(np.array_equal(st.read(i), images.load_site(data, *k)) for i, k in check)
        print(
            f"store {size} px, compression={comp:5}: {r:8.1f} sites/s  {r / png:5.1f}x PNG  "
            f"{disk:7.1f} KiB/site on disk" + (f"  identical={same}" if check else "")
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

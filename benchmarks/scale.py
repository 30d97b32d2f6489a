"""The whole chain on the full RxRx1 layout, and on 1/8 and 1/2 of it: time and memory per step.

Usage: python benchmarks/scale.py [--size 32] [--fractions 0.125 0.5 1] [--work /tmp/rcic-scale]
                                 [--views 8] [--cache-mb 256] [--small-repeats 3]

The layout is the real one (../shared/rxrx1/kaggle's plate maps: 51 experiments, 125,510 sites,
753,060 PNGs) where present, else the `rxrx1` preset's. A fraction keeps that share of the training
and of the test experiments (spread over the cell types). Images are seeded random pixels at
--size px (`synth.generate(render="noise")`): this measures rcic's chain, not the cell simulator,
whose cost at full size would dominate (its speed is in benchmarks/results/synth_difficulty.txt).

Steps, each its own process (imports included): synth (PNG writing), `check --images`, `prepare`
(2 workers), `train` (one epoch, resnet18, fold 0 held out and validated, cache_mb as given),
`predict` of the test experiments (--views TTA views x both sites), `submit`, `report`. For each:
wall time, sites per second and peak resident memory; the smallest size runs --small-repeats
times and each step's median time is kept (its short, disk-bound steps vary 2x between runs).
Targets (issue 13): per-site time at full
size within 1.3x of the 1/8 size; peak memory of every step bounded by a constant plus cache_mb,
not growing with the dataset's image bytes.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
from pathlib import Path

import pandas as pd
from _measure import timed

from rcic.data import metadata
from rcic.synthetic import synth

HERE = Path(__file__).resolve().parent
SHARED = HERE.parents[1] / "shared" / "rxrx1" / "kaggle"


def pick_experiments(layout_dir: Path | None, fraction: float) -> list[str]:
    """That share of the training and of the test experiments, every k-th of each (sorted by
    cell type, so the cell types stay represented)."""
    if layout_dir is not None:
        wells = metadata.wells_of(metadata.load_metadata(layout_dir))
    else:
        wells, _ = synth.make_layout(synth.PRESETS["rxrx1"], 0)
    chosen = []
    for _, exps in wells.groupby("split")["experiment"]:
        names = sorted(exps.unique())
        k = max(1, math.ceil(len(names) * fraction))
        step = len(names) / k
        chosen += [names[int(i * step)] for i in range(k)]
    return chosen


def run_chain(work: Path, args, fraction: float, layout_dir: Path | None) -> list[dict]:
    exps = pick_experiments(layout_dir, fraction)
    data, store, run = work / "data", work / "store", work / "run"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    py = sys.executable
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    gen = (
        "import sys; from rcic.synthetic import synth; "
        f"synth.generate(sys.argv[1], 'rxrx1', 0, layout_dir={str(layout_dir)!r} if "
        f"{layout_dir is not None} else None, image_size={args.size}, render='noise', "
        f"experiments=sys.argv[2].split(','), workers=2)"
    )
    cli = [py, "-m", "rcic.cli"]
    steps = {
        "synth (noise PNGs)": [py, "-c", gen, str(data), ",".join(exps)],
        "check --images": [*cli, "check", "--images", "--data", str(data), "--workers", "2"],
        "prepare": [*cli, "prepare", "--data", str(data), "--out", str(store), "--workers", "2"],
        "train (1 epoch)": [
            *cli,
            "train",
            "--data",
            str(data),
            "--store",
            str(store),
            "--out",
            str(run),
            "backbone=resnet18",
            f"image_size={args.size}",
            "epochs=1",
            "batch_size=256",
            "embedding_dim=128",
            f"cache_mb={args.cache_mb}",
            "num_workers=1",
            "warmup_epochs=0.1",
        ],
        "predict (test, TTA)": [
            *cli,
            "predict",
            "--run",
            str(run),
            "--data",
            str(data),
            "--store",
            str(store),
            "--views",
            str(args.views),
            "--out",
            str(run / "test.npz"),
            "--batch-size",
            "512",
        ],
        "submit": [
            *cli,
            "submit",
            "--logits",
            str(run / "test.npz"),
            "--data",
            str(data),
            "--out",
            str(run / "submission.csv"),
        ],
        "report": [*cli, "report", str(run), "--out", str(work / "report.html")],
        **_profiling_steps(cli, data, store, run, args),
    }
    rows = []
    for name, cmd in steps.items():
        seconds, mb = timed(cmd, env)
        sites = _sites(data, name)
        rows.append(
            {
                "fraction": fraction,
                "step": name,
                "sites": sites,
                "seconds": round(seconds, 1),
                "sites/s": round(sites / seconds, 1),
                "peak MB": round(mb),
            }
        )
        print(rows[-1], flush=True)
    rows.append({"fraction": fraction, "step": "embed 2 parts == 1 pass", **_parts_equal(run)})
    table_mb = metadata.load_metadata(data).memory_usage(deep=True).sum() / 2**20
    rows.append({"fraction": fraction, "step": "site table MB", "seconds": round(table_mb, 1)})
    size = (work / "report.html").stat().st_size / 2**20
    rows.append({"fraction": fraction, "step": "report size MiB", "seconds": round(size, 2)})
    store_gb = sum(f.stat().st_size for f in store.rglob("*") if f.is_file()) / 2**30
    rows.append({"fraction": fraction, "step": "store GiB", "seconds": round(store_gb, 3)})
    shutil.rmtree(work, ignore_errors=True)
    return rows


def _profiling_steps(cli, data: Path, store: Path, run: Path, args) -> dict[str, list[str]]:
    """Issue 41's steps: embed the test split in one pass and in 2 parts (compared row for row
    afterwards), the hand-crafted statistics of every site, and profiles of those statistics."""
    where = ["--data", str(data), "--store", str(store)]
    embed = [*cli, "embed", "--run", str(run), *where, "--views", str(args.views)]
    embed += ["--split", "test", "--batch-size", "512"]
    return {
        "embed (test)": [*embed, "--out", str(run / "emb.parquet")],
        "embed part 1/2": [*embed, "--part", "1/2", "--out", str(run / "emb.1.parquet")],
        "embed part 2/2": [*embed, "--part", "2/2", "--out", str(run / "emb.2.parquet")],
        "features --kind stats": [*cli, "features", *where, "--out", str(run / "stats.parquet")],
        "profiles (statistics)": [  # every well; the test split's are unlabelled
            *cli,
            "profiles",
            "--table",
            str(run / "stats.parquet"),
            "--correction",
            "standardize",
            "--out",
            str(run / "profiles"),
        ],
    }


def _parts_equal(run: Path) -> dict:
    """Whether the two parts of `embed`, read as one table, equal the one pass bit for bit."""
    one = pd.read_parquet(run / "emb.parquet")
    parts = pd.concat([pd.read_parquet(run / f"emb.{k}.parquet") for k in (1, 2)])
    key = "Metadata_id_code"
    one, parts = (t.sort_values(key).reset_index(drop=True) for t in (one, parts))
    return {"wells": len(one), "equal": bool(one.equals(parts))}


def _median_run(runs: list[list[dict]]) -> list[dict]:
    """Per step, the row of the run with the median time (peak memory: the largest seen); a row
    without a time (the parts' equality, the site table's size) from the first run, the parts
    equal only if they were in every run."""
    out = []
    for rows in zip(*runs, strict=True):
        if "seconds" not in rows[0]:
            row = dict(rows[0])
            if "equal" in row:
                row["equal"] = all(r["equal"] for r in rows)
            out.append(row)
            continue
        ranked = sorted(rows, key=lambda r: r["seconds"])
        row = dict(ranked[len(ranked) // 2])
        if "peak MB" in row:
            row["peak MB"] = max(r["peak MB"] for r in rows)
        out.append(row)
    print(f"smallest size: per step, the median of {len(runs)} runs", flush=True)
    return out


def _sites(data: Path, step: str) -> int:
    """Sites the step works on: all of them, the training sites, or the test sites."""
    sites = metadata.load_metadata(data)
    if step.startswith("train"):
        return int((sites.split == "train").sum())
    test = sites.split == "test"
    if step.startswith(("predict", "submit", "embed (test)")):
        return int(test.sum())
    if step.startswith("embed part"):  # the test split's plates dealt to that part
        from rcic.data.packing import parse_part, part_mask

        part = parse_part(step.split()[-1])
        return int(part_mask(sites[test], part).sum())
    return len(sites)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--fractions", type=float, nargs="+", default=[0.125, 0.5, 1.0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/rcic-scale"))
    ap.add_argument("--views", type=int, default=8)
    ap.add_argument("--cache-mb", type=int, default=256)
    ap.add_argument(
        "--small-repeats",
        type=int,
        default=3,
        help="runs of the smallest size; each step's median time is compared (its short, "
        "disk-bound steps vary 2x from run to run)",
    )
    args = ap.parse_args()
    layout_dir = SHARED if (SHARED / "train.csv").exists() else None
    print(
        f"layout: {'real RxRx1 plate maps' if layout_dir else 'rxrx1 preset'}; {args.size} px noise "
        f"images; cache_mb={args.cache_mb}; predict with {args.views} views x 2 sites; 2 cores"
    )
    rows = []
    for fraction in args.fractions:
        repeats = args.small_repeats if fraction == min(args.fractions) else 1
        runs = [run_chain(args.work, args, fraction, layout_dir) for _ in range(repeats)]
        rows += runs[0] if repeats == 1 else _median_run(runs)
    table = pd.DataFrame(rows)
    pd.set_option("display.width", 200)
    print(table.to_string(index=False))
    if len(set(args.fractions)) > 1:  # repeats of one size have nothing to compare
        _targets(table, min(args.fractions), max(args.fractions), args.cache_mb)


def _targets(table: pd.DataFrame, small: float, full: float, cache_mb: int) -> None:
    steps = table[table["sites"].notna()]
    a = steps[steps.fraction == small].set_index("step")
    b = steps[steps.fraction == full].set_index("step")
    per_site = (b["seconds"] / b["sites"]) / (a["seconds"] / a["sites"])
    memory = b["peak MB"] / a["peak MB"]
    print(f"\nper-site time, full / {small} size (target <= 1.3), and peak memory full / {small}:")
    print(pd.DataFrame({"per-site time ratio": per_site.round(2), "memory ratio": memory.round(2)}))
    print(
        f"per-site target {'MET' if (per_site <= 1.3).all() else 'NOT MET'}; "
        f"largest peak at full size {b['peak MB'].max():.0f} MB (cache_mb {cache_mb})"
    )
    store = table[table.step == "store GiB"].set_index("fraction")["seconds"] * 1024
    image_growth = store[full] - store[small]
    growth = b["peak MB"] - a["peak MB"]
    print(
        f"\nmemory against image bytes: the store grows by {image_growth:.0f} MB from {small} to "
        f"{full}; each step's peak grows by (MB):"
    )
    print(growth.round(0).to_string())
    table_mb = table[table.step == "site table MB"].set_index("fraction")["seconds"]
    print(
        f"growth target (< 300 MB from {small} to {full}): "
        f"{'MET' if (growth < 300).all() else 'NOT MET'}; the site table itself grows by "
        f"{table_mb[full] - table_mb[small]:.0f} MB ({table_mb[full]:.0f} MB at {full})"
    )
    bounded = (growth < image_growth).all() and store[full] > cache_mb
    print(
        f"every step's peak grows by less than the image bytes, with a full-size store larger "
        f"than cache_mb ({store[full]:.0f} > {cache_mb} MB): {'MET' if bounded else 'NOT MET'}"
    )


if __name__ == "__main__":
    main()

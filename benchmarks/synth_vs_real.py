"""Real negative-control images of RxRx1 beside synthetic ones of the `rxrx1` preset (512 px).

Usage: python benchmarks/synth_vs_real.py [--shared ../shared/rxrx1] [--docs docs]

For each real B02 site in ``shared/rxrx1/images`` (HEPG2, HUVEC, RPE, U2OS), renders negative-control
sites of the same cell type with the generator (plate 1, well B02 of 8 experiments) and compares
per channel: mean, std, 99th percentile, foreground fraction (as rcic.synthetic.baselines counts it),
texture (mean absolute Laplacian of the 1-px smoothed image), and the number of nuclei (w1 blobs
above a local background); then says which synthetic means (over the experiments) lie within 2x
of the real figure (issue 23's target) and whether the real nucleus count lies in the synthetic
range. Writes the table to stdout,
a picture (real | synthetic composites) to docs/synth_vs_real.jpg and the statistics side by side
to docs/synth_vs_real_stats.png.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from rcic import layout
from rcic.data.images import composite
from rcic.synthetic import baselines, cellsim, synth

STATS = ("mean", "std", "p99", "foreground", "texture")


def site_stats(site: np.ndarray) -> dict[str, np.ndarray | float]:
    x = site.astype(np.float32)
    flat = x.reshape(6, -1)
    smooth = ndimage.gaussian_filter(x, (0, 1, 1))
    lap = np.abs(np.stack([ndimage.laplace(c) for c in smooth])).reshape(6, -1).mean(1)
    return {
        "mean": flat.mean(1),
        "std": flat.std(1),
        "p99": np.percentile(flat, 99, axis=1),
        "foreground": baselines.site_features(site[None])[0].reshape(6, -1)[
            :, baselines.FEATURES.index("foreground")
        ],
        "texture": lap,
        "nuclei": count_nuclei(x[0]),
    }


def count_nuclei(w1: np.ndarray) -> int:
    """Blobs of the nuclear stain above a local background, larger than 30 px."""
    s = ndimage.gaussian_filter(w1, 2)
    fg = s > ndimage.uniform_filter(s, 61) + 0.15 * s.std() + 1
    lab, n = ndimage.label(fg)
    sizes = np.bincount(lab.ravel())[1:]
    return int((sizes > 30).sum())


def real_sites(shared: Path) -> dict[str, np.ndarray]:
    out = {}
    for ct in layout.CELL_TYPES:
        folder = shared / "images" / "train" / f"{ct}-01" / "Plate1"
        out[ct] = np.stack(
            [np.array(Image.open(folder / f"B02_s1_w{c}.png")) for c in layout.CHANNELS]
        )
    return out


def synthetic_sites(ct: str, n: int, seed: int = 0) -> list[np.ndarray]:
    spec = synth.PRESETS["rxrx1"]
    pheno = cellsim.sirna_phenotypes(spec.strength, spec.n_pathways, seed)
    sites = []
    for k in range(n):
        exp = f"{ct}-{k + 1:02d}"
        batch = cellsim.plate_batch(seed, exp, 1)
        well = cellsim.well_conditions(seed, exp, 1, "B02", layout.NEGATIVE_ID, ct, pheno, batch)
        rng = cellsim.seeded(seed, "site", exp, 1, "B02", 1)
        sites.append(cellsim.render_site(rng, spec.image_size, spec.cell_radius, well, batch))
    return sites


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--shared", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "rxrx1"
    )
    ap.add_argument("--docs", type=Path, default=Path(__file__).resolve().parents[1] / "docs")
    ap.add_argument("--n", type=int, default=8, help="synthetic experiments per cell type")
    args = ap.parse_args()
    real = real_sites(args.shared)
    rows, tiles, table = [], [], {}
    for ct, site in real.items():
        synth_sites = synthetic_sites(ct, args.n)
        r = site_stats(site)
        s = [site_stats(x) for x in synth_sites]
        table[ct] = (r, s)
        tiles.append(np.concatenate([composite(site), composite(synth_sites[0])], axis=1))
        rows.append(
            f"{ct}: nuclei per site real {r['nuclei']}, synthetic {np.mean([x['nuclei'] for x in s]):.0f} "
            f"(range {min(x['nuclei'] for x in s)}-{max(x['nuclei'] for x in s)})"
        )
        for stat in STATS:
            sv = np.stack([x[stat] for x in s])
            digits = 2 if stat == "foreground" else 1
            rows.append(
                f"  {stat:8} real "
                + " ".join(f"{v:6.{digits}f}" for v in r[stat])
                + "   synthetic "
                + " ".join(f"{v:6.{digits}f}" for v in sv.mean(0))
                + "   (synthetic range over experiments "
                + " ".join(
                    f"{a:.{digits - 1}f}-{b:.{digits - 1}f}"
                    for a, b in zip(sv.min(0), sv.max(0), strict=True)
                )
                + ")"
            )
    print(
        "per channel w1..w6; real: one B02 site of <cell type>-01 plate 1; synthetic: B02 of plate 1 in 8 experiments"
    )
    print("\n".join(rows))
    print(_within_2x(table))
    args.docs.mkdir(parents=True, exist_ok=True)
    picture = np.concatenate(tiles, axis=0)
    Image.fromarray(picture).resize(
        (picture.shape[1] // 2, picture.shape[0] // 2), Image.LANCZOS
    ).save(args.docs / "synth_vs_real.jpg", quality=85)
    _plot(table, args.docs / "synth_vs_real_stats.png")


def _within_2x(table) -> str:
    """Which synthetic figures (mean over experiments) lie within 2x of the real one."""
    total, misses = 0, []
    for ct, (r, s) in table.items():
        for stat in STATS:
            synth_mean = np.stack([x[stat] for x in s]).mean(0)
            for c, (a, b) in enumerate(zip(r[stat], synth_mean, strict=True)):
                total += 1
                if not 0.5 <= b / max(a, 1e-9) <= 2.0:
                    misses.append(f"{ct} w{c + 1} {stat} {b / max(a, 1e-9):.2f}x")
        lo, hi = min(x["nuclei"] for x in s), max(x["nuclei"] for x in s)
        if not lo <= r["nuclei"] <= hi:
            misses.append(f"{ct} nuclei: real {r['nuclei']} outside {lo}-{hi}")
    return (
        f"within 2x of the real figure: {total - sum('nuclei' not in m for m in misses)} of {total}"
        f" (channel x statistic x cell type); outside: {', '.join(misses) or 'none'}"
    )


def _plot(table, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(table), len(STATS), figsize=(13, 2.4 * len(table)))
    for i, (ct, (r, s)) in enumerate(table.items()):
        for j, stat in enumerate(STATS):
            ax = axes[i, j]
            sv = np.stack([x[stat] for x in s])
            xs = np.arange(6)
            ax.bar(xs - 0.2, r[stat], 0.4, label="real", color="#444")
            ax.bar(xs + 0.2, sv.mean(0), 0.4, yerr=sv.std(0), label="synthetic", color="#5a9")
            ax.set_xticks(xs, [f"w{c}" for c in layout.CHANNELS])
            ax.set_title(f"{ct}: {stat}", fontsize=9)
            if i == 0 and j == 0:
                ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)


if __name__ == "__main__":
    main()

"""`rcic report`: one self-contained HTML file (images embedded) of a run or a demo folder.

Sections: example images per cell type (RGB composites and the six channels), the nuclei and
cells that segmentation finds on one site of each, training curves, the accuracy after each stage
per cell type and experiment, test plate maps (wells coloured correct / wrong / control / missing,
with the chosen group and its margin), the most confused siRNA pairs and the spread of per-class
accuracy, the profiles of `rcic profiles` (mAP per cell type, the consensus similarity map ordered
by pathway, a 2-D projection of the corrected wells), and the run's configuration and versions.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402

from rcic import layout  # noqa: E402
from rcic.data.images import composite  # noqa: E402
from rcic.data.store import SiteStore  # noqa: E402
from rcic.data.tables import feature_columns
from rcic.errors import MissingFileError
from rcic.fileio import atomic_text
from rcic.metrics import DEMO_STAGES
from rcic.profiling.metrics import cosine_matrix

log = logging.getLogger(__name__)

CSS = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;color:#222}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th{background:#f4f4f4}img{max-width:100%}pre{background:#f7f7f7;padding:.8em;overflow-x:auto;font-size:.85em}
.caption{color:#555;font-size:.9em}"""

# Tells a browser-based test whether every embedded image decoded.
CHECK_JS = """window.addEventListener('load',function(){var im=document.images,ok=0;
for(var i=0;i<im.length;i++){if(im[i].complete&&im[i].naturalWidth>0)ok++;}
document.body.setAttribute('data-images',ok+'/'+im.length);});"""


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return f'<img alt="figure" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def _find(root: Path) -> dict:
    """Locate the pieces of a demo folder or a single run folder."""
    runs = sorted(p.parent.parent for p in root.glob("**/checkpoints/last.pt"))
    env = json.loads((runs[0] / "env.json").read_text()) if runs else {}
    store = (
        root / "store" if (root / "store" / "store.json").exists() else Path(env.get("store", ""))
    )
    data = root / "data" if (root / "data" / "train.csv").exists() else None
    return {
        "runs": runs,
        "store": store if (store / "store.json").exists() else None,
        "data": data,
        "stages": root / "stages.json" if (root / "stages.json").exists() else None,
        "submission": root / "submission.csv" if (root / "submission.csv").exists() else None,
        "demo": root / "demo.json" if (root / "demo.json").exists() else None,
        "profiles": next(
            (d for d in (root / "profiles", root) if (d / "metrics.json").exists()), None
        ),
    }


def example_images(store: SiteStore, per_type: int = 2) -> str:
    index = store.index[store.packed & (store.index["well_type"] == "treatment")]
    parts = []
    for ct, sub in index.groupby("cell_type"):
        rows = sub.drop_duplicates("experiment").head(per_type)
        fig, axes = plt.subplots(len(rows), 7, figsize=(14, 2.1 * len(rows)), squeeze=False)
        for r, (_, row) in enumerate(rows.iterrows()):
            site = store.read(row["idx"])
            axes[r, 0].imshow(composite(site))
            axes[r, 0].set_title(f"{row['id_code']} s{row['site']}", fontsize=8)
            for c in range(6):
                axes[r, c + 1].imshow(
                    site[c], cmap="gray", vmin=0, vmax=max(1, np.percentile(site[c], 99.7))
                )
                axes[r, c + 1].set_title(f"w{c + 1} {layout.CHANNEL_NAMES[c]}", fontsize=7)
            for a in axes[r]:
                a.axis("off")
        parts.append(f"<h3>{html.escape(ct)}</h3>{_png(fig)}")
    return "".join(parts)


def segmentation_overlays(store: SiteStore) -> str:
    """One site of each cell type with the nuclei and cells `rcic features --kind cellprofiler`
    finds on it (rcic.data.segment), outlined over its DNA channel."""
    from rcic.data.segment import Segmenter, overlay

    index = store.index[store.packed & (store.index["well_type"] == "treatment")]
    first = index.drop_duplicates("cell_type").sort_values("cell_type")
    fig, axes = plt.subplots(1, len(first), figsize=(3.2 * len(first), 3.4), squeeze=False)
    for ax, (_, row) in zip(axes[0], first.iterrows(), strict=True):
        site = store.read(row["idx"])
        labels = Segmenter().segment(site)
        ax.imshow(overlay(site, labels), interpolation="nearest")
        ax.set_title(f"{row['cell_type']}: {labels[0].max()} nuclei", fontsize=9)
        ax.axis("off")
    return _png(fig)


def training_curves(runs: list[Path]) -> str:
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 3.6))
    for run in runs:
        path = run / "metrics.jsonl"
        if not path.exists():
            continue
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        epochs = [r["epoch"] for r in rows]
        ax1.plot(epochs, [r["loss"] for r in rows], marker="o", label=run.name)
        scored = [r for r in rows if "val" in r]  # every `val_every`-th epoch and the last
        if scored:
            x, y = [r["epoch"] for r in scored], [r["val"]["overall"] for r in scored]
            ax2.plot(x, y, marker="o", label=run.name)
    ax1.set(xlabel="epoch", ylabel="training loss", title="loss")
    ax2.set(xlabel="epoch", ylabel="accuracy", title="held-out experiments, per well, 1 view")
    for a in (ax1, ax2):
        a.grid(alpha=0.3)
        a.legend(fontsize=8)
    return _png(fig)


def _table(frame: pd.DataFrame, fmt: str = "{:.3f}") -> str:
    head = "".join(
        f"<th>{html.escape(str(c))}</th>" for c in [frame.index.name or "", *frame.columns]
    )
    body = "".join(
        "<tr><th>"
        + html.escape(str(i))
        + "</th>"
        + "".join(
            f"<td>{fmt.format(v) if isinstance(v, (float, np.floating)) else html.escape(str(v))}</td>"
            for v in row
        )
        + "</tr>"
        for i, row in frame.iterrows()
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def stage_tables(stages_path: Path, demo_path: Path | None) -> str:
    report = json.loads(stages_path.read_text())
    parts = []
    if demo_path:
        demo = json.loads(demo_path.read_text())
        columns = {**demo["routes"], "bronze way": demo["bronze"]}
        frame = pd.DataFrame(columns).reindex(DEMO_STAGES).rename_axis("stage")
        parts.append(
            "<h3>Accuracy after each stage: the CNN, the features route (image statistics, a "
            "linear head), both, and the bronze-medal way</h3>"
            + _table(frame.astype(object).fillna("-"))
        )
    if report.get("well_decision"):
        parts.append(
            f"<p>Well decision of this submission (<code>{html.escape(report['well_method'])}</code>): "
            f"{html.escape(report['well_decision'])}.</p>"
        )
    stages = report.get("stages", {})
    if stages:
        per_ct = pd.DataFrame(
            {s: {"overall": t["overall"], **t["cell_type"]} for s, t in stages.items()}
        ).T.rename_axis("stage")
        per_exp = pd.DataFrame({s: t["experiment"] for s, t in stages.items()}).T.rename_axis(
            "stage"
        )
        parts += [
            "<h3>Per cell type</h3>",
            _table(per_ct),
            "<h3>Per experiment</h3>",
            _table(per_exp),
        ]
    return "".join(parts)


def _plate_title(plate: str, groups: pd.DataFrame) -> str:
    """EXP_PLATE, with its chosen group, the order's margin and the plate's posterior if known."""
    exp, p = plate.rsplit("_", 1)
    g = groups[(groups.experiment == exp) & (groups.plate == int(p))] if len(groups) else groups
    if not len(g):
        return plate
    title = f"{plate}  group {int(g.group.iloc[0])}, margin {g.margin.iloc[0]:.1f}"
    if "plate_posterior" in g and np.isfinite(g.plate_posterior.iloc[0]):
        title += f", P {g.plate_posterior.iloc[0]:.3f}"
    return title


def plate_maps(data: Path, submission: Path, stages_path: Path) -> str:
    sub = pd.read_csv(submission)
    labels = pd.read_csv(data / "test_labels.csv") if (data / "test_labels.csv").exists() else None
    controls = (
        pd.read_csv(data / "test_controls.csv")
        if (data / "test_controls.csv").exists()
        else pd.DataFrame(columns=["id_code"])
    )
    groups = pd.DataFrame(json.loads(stages_path.read_text()).get("groups", []))
    merged = (
        sub.merge(labels, on="id_code", how="left", suffixes=("", "_true"))
        if labels is not None
        else sub.assign(sirna_true=np.nan)
    )
    state = {
        row.id_code: (1 if row.sirna == row.sirna_true else 2) if np.isfinite(row.sirna_true) else 1
        for row in merged.itertuples()
    }
    state.update({c: 3 for c in controls["id_code"]})
    plates = sorted({c.rsplit("_", 1)[0] for c in state})
    cmap = ListedColormap(
        ["#eeeeee", "#2e9e44", "#d43d3d", "#4a78c2"]
    )  # missing, correct, wrong, control
    ncol = 4
    nrow = int(np.ceil(len(plates) / ncol))
    fig, axes = plt.subplots(nrow, ncol, figsize=(16, 2.9 * nrow), squeeze=False)
    for ax, plate in zip(axes.flat, plates, strict=False):
        grid = np.zeros(layout.PLATE_SHAPE)
        for code, s in state.items():
            if code.startswith(plate + "_"):
                r, c = layout.well_position(code.rsplit("_", 1)[1])
                grid[r, c] = s
        ax.imshow(grid, cmap=cmap, vmin=0, vmax=3)
        ax.set_title(_plate_title(plate, groups), fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in list(axes.flat)[len(plates) :]:
        ax.axis("off")
    legend = "grey: no well (outside the 308 usable wells, or missing); green: right; red: wrong; blue: control"
    return _png(fig) + f'<p class="caption">{legend}</p>'


def confusion(data: Path, submission: Path, top: int = 15) -> str:
    sub = pd.read_csv(submission).merge(
        pd.read_csv(data / "test_labels.csv"), on="id_code", suffixes=("", "_true")
    )
    wrong = sub[sub.sirna != sub.sirna_true]
    pairs = wrong.groupby(["sirna_true", "sirna"]).size().sort_values(ascending=False).head(top)
    pair_frame = (
        pairs.rename("wells")
        .reset_index()
        .rename(columns={"sirna_true": "true siRNA", "sirna": "predicted"})
    )
    per_class = sub.assign(ok=sub.sirna == sub.sirna_true).groupby("sirna_true")["ok"].mean()
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.hist(per_class, bins=np.linspace(0, 1, 21), color="#4a78c2")
    ax.set(
        xlabel="accuracy of the class",
        ylabel="siRNAs",
        title=f"per-class accuracy ({len(per_class)} siRNAs)",
    )
    table = (
        _table(pair_frame.set_index("true siRNA"), "{}")
        if len(pair_frame)
        else "<p>No mistakes.</p>"
    )
    return "<h3>Most confused pairs (true, predicted)</h3>" + table + _png(fig)


def build_report(root: str | Path, out: str | Path) -> Path:
    """Write the report of a demo or run folder `root` to `out` (written atomically)."""
    root, out = Path(root), Path(out)
    found = _find(root)
    if not found["runs"] and not found["stages"] and not found["profiles"]:
        raise MissingFileError(
            f"{root}: no run (checkpoints/last.pt), no stages.json and no profiles "
            "(metrics.json): nothing to report"
        )
    sections = [f"<h1>rcic report: {html.escape(root.name)}</h1>"]
    if found["store"]:
        sections += [
            "<h2>Images</h2><p class='caption'>Each cell type: RGB composite, then channels w1..w6.</p>",
            example_images(SiteStore(found["store"])),
            "<h2>Segmentation</h2><p class='caption'>What <code>rcic features --kind cellprofiler</code> "
            "measures: nuclei (red) and cells (green) found on one site of each cell type, over "
            "its DNA channel; the cytoplasm is each cell without its nucleus.</p>",
            segmentation_overlays(SiteStore(found["store"])),
        ]
    if found["runs"]:
        sections += ["<h2>Training</h2>", training_curves(found["runs"])]
    if found["stages"]:
        sections += [
            "<h2>Accuracy after each stage</h2>",
            stage_tables(found["stages"], found["demo"]),
        ]
    if found["data"] and found["submission"] and found["stages"]:
        sections += [
            "<h2>Test plates</h2>",
            plate_maps(found["data"], found["submission"], found["stages"]),
        ]
        if (found["data"] / "test_labels.csv").exists():
            sections += ["<h2>Mistakes</h2>", confusion(found["data"], found["submission"])]
    if found["profiles"]:
        sections += ["<h2>Profiles</h2>", profile_section(found["profiles"])]
    sections += ["<h2>Configuration and versions</h2>", _configs(found["runs"])]
    page = (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>rcic report</title><style>{CSS}</style>"
        f"<script>{CHECK_JS}</script></head><body>{''.join(sections)}</body></html>"
    )
    atomic_text(out, page)
    log.info("wrote %s (%.1f MiB)", out, out.stat().st_size / 2**20)
    return out


def _configs(runs: list[Path]) -> str:
    parts = []
    for run in runs:
        text = (run / "config.yaml").read_text() if (run / "config.yaml").exists() else ""
        env = (run / "env.json").read_text() if (run / "env.json").exists() else ""
        parts.append(
            f"<h3>{html.escape(run.name)}</h3><pre>{html.escape(text)}</pre><pre>{html.escape(env)}</pre>"
        )
    return "".join(parts)


def profile_section(folder: Path) -> str:
    """What `rcic profiles` measured: activity and consistency per cell type, recall and the
    true-vs-measured correlation; the consensus similarity map ordered by pathway; the corrected
    wells projected on their first two principal components."""
    metrics = json.loads((folder / "metrics.json").read_text())
    rows = {}
    for key in ("activity", "consistency"):
        for ct, v in metrics.get(key, {}).get("cell_type", {}).items():
            rows.setdefault(ct, {})[f"{key} mAP"] = v["mAP"]
            rows[ct][f"{key} retrieved"] = v["fraction_retrieved"]
    for ct, rho in metrics.get("true_vs_measured_spearman", {}).items():
        rows.setdefault(ct, {})["true vs measured (Spearman)"] = rho
    recall = metrics.get("relationship_recall", {}).get("recall")
    caption = (
        f"Correction: {html.escape(str(metrics.get('correction')))}; wells evaluated: "
        f"{html.escape(str(metrics.get('evaluate')))}; activity mAP "
        f"{metrics['activity']['mAP']:.3f}"
        + (f"; known-relationship recall {recall:.3f} (random: about 0.10)" if recall else "")
    )
    parts = [f"<p class='caption'>{caption}</p>", _table(pd.DataFrame(rows).T)]
    if (folder / "consensus.parquet").exists():
        parts.append(_similarity_map(pd.read_parquet(folder / "consensus.parquet")))
    if (folder / "wells.parquet").exists() and (folder / "consensus.parquet").exists():
        parts.append(_projection(folder))
    return "".join(parts)


def _features(frame: pd.DataFrame) -> np.ndarray:
    return frame[feature_columns(frame)].to_numpy(float)


def _similarity_map(cons: pd.DataFrame) -> str:
    pooled = cons[(cons["Metadata_CellType"] == "all") & (cons["Metadata_pert_type"] == "trt")]
    order = ["Metadata_pathway", "Metadata_sirna_id"] if "Metadata_pathway" in pooled else []
    pooled = pooled.sort_values(order or "Metadata_sirna_id")
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    im = ax.imshow(cosine_matrix(_features(pooled)), cmap="RdBu_r", vmin=-1, vmax=1)
    fig.colorbar(im, ax=ax, label="cosine")
    ax.set_title("consensus profiles (all cell types), ordered by pathway" if order else "")
    ax.set_xticks([])
    ax.set_yticks([])
    return _png(fig)


def _projection(folder: Path) -> str:
    wells = pd.read_parquet(folder / "wells.parquet")
    cons = pd.read_parquet(folder / "consensus.parquet")
    x = _features(wells)
    x = x - x.mean(0)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    xy = x @ vt[:2].T
    pathway = (
        wells["Metadata_sirna"].map(
            cons.drop_duplicates("Metadata_sirna").set_index("Metadata_sirna")["Metadata_pathway"]
        )
        if "Metadata_pathway" in cons
        else pd.Series("", index=wells.index)
    )
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for ax, (title, colour) in zip(
        axes, (("experiment", wells["Metadata_Batch"]), ("pathway", pathway)), strict=True
    ):
        codes, names = pd.factorize(colour.fillna("").astype(str))
        ax.scatter(xy[:, 0], xy[:, 1], c=codes, cmap="tab20", s=6)
        ax.set_title(f"corrected wells, coloured by {title} ({len(names)})")
        ax.set_xlabel("PC 1")
        ax.set_ylabel("PC 2")
    return _png(fig)

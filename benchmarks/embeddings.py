"""The embeddings route on the `demo` screen: CNN head vs heads on (batch-corrected) embeddings.

Usage: python benchmarks/embeddings.py DEMO_DIR
DEMO_DIR is the folder of a finished `rcic demo`. Its model-0 held out fold 0: the embeddings of
those experiments are out of fold and train the heads; the test experiments are scored after each
plate stage through `rcic submit`. The head and correction to recommend are chosen on fold 0
(leave-one-experiment-out accuracy), not on the test experiments.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from rcic.data import metadata
from rcic.inference import embed as embed_pipeline
from rcic.inference.predict import InferenceOptions
from rcic.plates import submit
from rcic.profiling import embed_head

CORRECTIONS = [
    ["none"],
    ["center_neg"],
    ["standardize"],
    ["tvn"],
    ["center_neg", "align_pos"],
    ["tvn", "align_pos"],
]


def stages(logits: list[Path], data: Path, out: Path) -> dict:
    res = submit.run_submit(logits, data, out, labels=data / "test_labels.csv")
    return {k: round(v["overall"], 4) for k, v in res.scores.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("demo", type=Path)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    demo, data, store = args.demo, args.demo / "data", args.demo / "store"
    work = demo / "embeddings"
    work.mkdir(exist_ok=True)
    run = demo / "runs" / "model-0"
    sites = metadata.load_metadata(data)
    for split, name in (("0", "fold.npz"), ("test", "test.npz")):
        if not (work / name).exists():
            embed_pipeline.embed_run(
                run,
                sites,
                store,
                split,
                work / name,
                InferenceOptions(checkpoint="last", progress=False),
            )
    rows = {"CNN head (model-0)": stages([run / "logits-test.npz"], data, work / "cnn.csv")}
    print(
        f"{'method':42} {'ensemble':>9} {'groups':>9} {'wells':>9}   leave-one-experiment-out on fold 0"
    )
    print(
        f"{'CNN head (model-0)':42} "
        + " ".join(f"{rows['CNN head (model-0)'][s]:9.3f}" for s in ("ensemble", "groups", "wells"))
    )
    best, best_cv, best_name = None, -1.0, ""
    for head in ("centroid", "linear"):
        for steps in CORRECTIONS:
            name = f"{head} on {'+'.join(steps)}"
            out = work / f"{head}-{'+'.join(steps)}.npz"
            cv = embed_head.fit_apply(
                work / "fold.npz", work / "test.npz", out, steps, "plate", head
            )["cv_accuracy"]
            rows[name] = stages([out], data, work / "head.csv")
            print(
                f"{name:42} "
                + " ".join(f"{rows[name][s]:9.3f}" for s in ("ensemble", "groups", "wells"))
                + f"   {cv:.3f}",
                flush=True,
            )
            if cv > best_cv:  # chosen on fold 0 (leave one experiment out), never on the test
                best, best_cv, best_name = out, cv, name
    print(
        f"chosen on fold 0 by leave-one-experiment-out: {best_name} (cv {best_cv:.3f}); "
        f"on the test experiments: "
        + " ".join(f"{s} {rows[best_name][s]:.3f}" for s in ("ensemble", "groups", "wells"))
    )
    ens = stages([run / "logits-test.npz", best], data, work / "ens.csv")
    rows[f"CNN + {best.stem}"] = ens
    print(
        f"{'CNN + ' + best.stem:42} "
        + " ".join(f"{ens[s]:9.3f}" for s in ("ensemble", "groups", "wells"))
    )
    (work / "results.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()

"""README's picture: the top of a demo's report.html as Chromium renders it, saved as
docs/report.png (800 px wide, the report's first screens: each cell type's images, then the
segmentation).

Usage: python benchmarks/report_picture.py DEMO_DIR [--out docs/report.png]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SIZE = (800, 1375)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("demo", type=Path, help="a finished `rcic demo --out DIR` folder")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "report.png")
    args = ap.parse_args()
    report = (args.demo / "report.html").resolve()
    browser = next((b for b in ("chromium", "chromium-browser") if shutil.which(b)), None)
    if not report.exists() or browser is None:
        sys.exit(f"needs {report} and Chromium")
    with tempfile.TemporaryDirectory() as tmp:
        shot = Path(tmp) / "report.png"
        flags = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            f"--user-data-dir={tmp}/profile",
            f"--window-size={SIZE[0]},{SIZE[1]}",
        ]
        cmd = [browser, *flags, f"--screenshot={shot}", report.as_uri()]
        subprocess.run(cmd, check=True, capture_output=True, timeout=120)
        shutil.copyfile(shot, args.out)
    print(f"wrote {args.out} from {report}")


if __name__ == "__main__":
    main()

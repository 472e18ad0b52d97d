"""Check that the evaluation HTML report renders in headless Chromium.

Protects the bundled samples with pixelate, evaluates them with --html, then
renders the page with Debian's `chromium` (apt-get install chromium) and
checks the screenshot is a real page (not blank) and the DOM has the summary,
recognizer table and scatter plot.

    python benchmarks/html_report_check.py [--keep DIR]
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

import anonymize

SAMPLES = Path(__file__).resolve().parent.parent / "anonymize" / "data" / "samples"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--keep", type=Path, default=None)
    args = ap.parse_args()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        raise SystemExit("chromium not found: apt-get install chromium")
    with tempfile.TemporaryDirectory() as td:
        root = Path(td)
        anonymize.protect([SAMPLES], method="pixelate", output=root / "prot", device="cpu")
        html = root / "report.html"
        res = anonymize.evaluate(SAMPLES, root / "prot", html=html, recognizers=("dlib-resnet",), device="cpu")
        shot = root / "shot.png"
        common = FLAGS + [f"--user-data-dir={root / 'profile'}"]
        subprocess.run([chromium, *common, "--window-size=1200,1800", f"--screenshot={shot}", html.as_uri()], check=True,
                       capture_output=True, timeout=120)
        dom = subprocess.run([chromium, *common, "--dump-dom", html.as_uri()], check=True, capture_output=True, text=True, timeout=120).stdout
        img = np.asarray(Image.open(shot).convert("L"), dtype=np.float64)
        checks = {
            "screenshot not blank (grey-level std > 10)": img.std() > 10,
            "summary table in DOM": 'id="summary"' in dom,
            "recognizer table in DOM": 'id="recognizers"' in dom,
            "black-box headline in DOM": 'id="black-box"' in dom,
            "scatter plot in DOM": "<svg" in dom,
            "worst-case thumbnails in DOM": dom.count("data:image/jpeg;base64") >= 2,
        }
        for k, v in checks.items():
            print(f"{'PASS' if v else 'FAIL'}  {k}")
        print(f"evaluate: SPR {res.summary['spr']}, SSIM {res.summary['ssim_mean']:.3f}; screenshot {img.shape[1]}x{img.shape[0]}")
        if args.keep:
            args.keep.mkdir(parents=True, exist_ok=True)
            shutil.copy(shot, args.keep / "report.png")
            shutil.copy(html, args.keep / "report.html")
        if not all(checks.values()):
            raise SystemExit(1)


if __name__ == "__main__":
    main()

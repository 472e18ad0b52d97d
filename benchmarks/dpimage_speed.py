"""Images/s of each dpimage variant on this CPU (method stage only; faces detected beforehand).

Photos: the first photo of the first N people of ../shared/corpus/faces (MTCNN faces),
plus the same photos for the whole-image variants. xai needs a weights file from
`anonymize train dpimage-xai` (--xai FILE); it is skipped otherwise.

Usage:
    OMP_NUM_THREADS=1 python benchmarks/dpimage_speed.py --n 50 --xai /tmp/dpimage_xai_bench/s3_code_e0.9.pt
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared/corpus/faces"))
    ap.add_argument("--n", type=int, default=50)
    ap.add_argument("--xai", default=None)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    import torch
    from PIL import Image

    from anonymize.faces.detect import get_detector
    from anonymize.methods.base import MethodContext
    from anonymize.methods.dpimage import DPImage
    from anonymize.types import ImageItem

    torch.set_num_threads(a.threads)
    det = get_detector("mtcnn")
    items = []
    for d in sorted(p for p in Path(a.data).iterdir() if p.is_dir()):
        f = sorted(q for q in d.iterdir() if q.is_file())[0]
        px = np.array(Image.open(f).convert("RGB"))
        items.append(ImageItem(f, Path(d.name) / f.name, px, faces=det([px])[0]))
        if len(items) >= a.n:
            break
    shape = items[0].pixels.shape
    nf = sum(len(i.faces) for i in items)
    print(f"{len(items)} photos ({shape[1]}x{shape[0]} first), {nf} faces; torch threads {a.threads}\n")
    runs = [
        ("idpi pca, faces (sigma 1, T 10)", {"identity": "false"}, "faces"),
        ("idpi pca, whole image", {"identity": "false"}, "image"),
        ("pixel (DP-Pix b16 m16 e0.5), faces", {"variant": "pixel", "identity": "false"}, "faces"),
        ("pixel, whole image", {"variant": "pixel"}, "image"),
    ]
    if a.xai:
        runs += [("xai, faces (native size)", {"variant": "xai", "weights": a.xai}, "faces"),
                 ("xai, whole image (native, max side 1024)", {"variant": "xai", "weights": a.xai}, "image"),
                 ("xai, whole image at the trained size", {"variant": "xai", "weights": a.xai, "size": "trained"}, "image")]
    print("| variant | region | images/s | s/image |\n|---|---|---|---|")
    for label, params, region in runs:
        m = DPImage(params)
        m(items[:2], MethodContext(region=region))  # warm-up
        t0 = time.perf_counter()
        for i in range(0, len(items), 8):
            m(items[i : i + 8], MethodContext(region=region))
        dt = time.perf_counter() - t0
        print(f"| {label} | {region} | {len(items) / dt:.2f} | {dt / len(items):.3f} |", flush=True)


if __name__ == "__main__":
    main()

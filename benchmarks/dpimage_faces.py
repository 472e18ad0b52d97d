"""dpimage on held-out corpus faces: epsilon vs SSIM vs dlib-resnet distance / SPR, and speed.

Photos: the first photo of each *held-out* person of /work/shared/corpus/faces
(people the PCA basis was not fitted on, see fit_pca_basis.py), plus their
second photo as the probe for re-identification. MTCNN finds the face; dpimage
protects it (region=faces, paste-back); dlib-resnet (threshold 0.6) compares

* ``d_orig``: original vs protected (same photo, same box),
* ``SPR``: share of protected faces that dlib-resnet does NOT match to the person's
  *other* photo (distance >= 0.6) - a success rate of protection against re-ID.
  The row "none" gives the recognizer's own miss rate on unprotected faces.

SSIM: whole photo (luma, anonymize.metrics.quality.ssim). epsilon at delta=1e-8.

Run:
    OMP_NUM_THREADS=1 /work/venv/bin/python benchmarks/dpimage_faces.py --n 40
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="/work/shared/corpus/faces")
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--iterations", type=int, default=10)
    ap.add_argument("--sigmas", default="0.25,0.5,1,2,4,8")
    ap.add_argument("--iterations-grid", default="1,10,50", help="T values run at --grid-sigmas")
    ap.add_argument("--grid-sigmas", default="1,4")
    ap.add_argument("--pix-epsilons", default="0.1,0.5,1,5")
    a = ap.parse_args()

    import torch
    from PIL import Image

    from anonymize.faces.detect import get_detector
    from anonymize.faces.alignments import extract_chips
    from anonymize.faces.recognize import get_recognizer
    from anonymize.methods.base import MethodContext
    from anonymize.methods.dpimage import DPImage
    from anonymize.metrics.quality import ssim
    from anonymize.types import ImageItem
    from fit_pca_basis import split_of

    torch.set_num_threads(1)
    det = get_detector("mtcnn", thresh=0.95)
    rec = get_recognizer("dlib-resnet")

    def desc(img: np.ndarray, box) -> torch.Tensor:
        c = extract_chips(rec.alignment, img, [box])
        with torch.no_grad():
            return rec.descriptor(torch.from_numpy(c).permute(0, 3, 1, 2).float() / 255.0)[0]

    items, probes = [], []
    for d in sorted(p for p in Path(a.data).iterdir() if p.is_dir() and split_of(p.name) == "heldout"):
        photos = sorted(p for p in d.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        if len(photos) < 2:
            continue
        im0 = np.array(Image.open(photos[0]).convert("RGB"))
        im1 = np.array(Image.open(photos[1]).convert("RGB"))
        f0, f1 = det([im0])[0], det([im1])[0]
        if not f0 or not f1:
            continue
        items.append(ImageItem(photos[0], Path(d.name) / photos[0].name, im0, faces=f0[:1]))
        probes.append(desc(im1, f1[0].box))
        if len(items) >= a.n:
            break
    print(f"{len(items)} held-out people (first photo protected, second photo as re-ID probe)\n")

    def evaluate(label: str, params: dict, method=None) -> None:
        m = method or DPImage(dict(params, identity="false"))
        t0 = time.time()
        outs = m(items, MethodContext(seed=0))
        dt = (time.time() - t0) / len(items)
        ss, dor, miss = [], [], []
        for it, o, pr in zip(items, outs, probes):
            ss.append(ssim(it.pixels, o.pixels))
            box = it.faces[0].box
            dp = desc(o.pixels, box)
            dor.append(float(rec.distance(desc(it.pixels, box)[None], dp[None])[0]))
            miss.append(float(rec.distance(dp[None], pr[None])[0]) >= rec.threshold)
        info = outs[0].info
        eps = info.get("epsilon", float("nan"))
        print(f"| {label:<22} | {eps:>9.3g} | {info.get('guarantee', '-'):<9} | {np.mean(ss):.3f} | "
              f"{np.mean(dor):.3f} | {np.mean(np.array(dor) >= rec.threshold):5.1%} | {np.mean(miss):5.1%} | {dt:.3f} |",
              flush=True)

    print("| setting | epsilon | guarantee | SSIM | d(orig,prot) | d>=0.6 | SPR (re-ID miss) | s/img |")
    print("|---|---|---|---|---|---|---|---|")
    miss0 = [float(rec.distance(desc(it.pixels, it.faces[0].box)[None], pr[None])[0]) >= rec.threshold
             for it, pr in zip(items, probes)]
    print(f"| {'none (original)':<22} | {'-':>9} | -         | 1.000 | 0.000 | 0.0% | {np.mean(miss0):5.1%} | 0 |")
    from anonymize.methods.baselines import Blur, Pixelate

    evaluate("blur (default)", {}, Blur({}))
    evaluate("pixelate (default)", {}, Pixelate({}))
    for s in (float(v) for v in a.sigmas.split(",")):
        evaluate(f"idpi pca s={s:g} T={a.iterations}", {"sigma": s, "iterations": a.iterations})
    for s in (float(v) for v in a.grid_sigmas.split(",")):
        for t in (int(v) for v in a.iterations_grid.split(",")):
            if t != a.iterations:
                evaluate(f"idpi pca s={s:g} T={t}", {"sigma": s, "iterations": t})
    for e in (float(v) for v in a.pix_epsilons.split(",")):
        evaluate(f"dp-pix b=16 m=16 e={e:g}", {"variant": "pixel", "epsilon": e})
    evaluate("dp-pix b=8 m=1 e=1", {"variant": "pixel", "b": 8, "m": 1, "epsilon": 1.0})


if __name__ == "__main__":
    main()

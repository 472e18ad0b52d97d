"""Face verification accuracy of the ``dlib-resnet`` torch port on the shared LFW photos.

Pipeline: dlib HOG detector (upsample 1; the detection nearest the image
centre), then the ``dlib150`` entry of the alignment table (dlib 5-point
landmarks, ``dlib.get_face_chip(size=150, padding=0.25)``'s geometry and
sampling, reproduced in torch), then the torch port's raw 128-d descriptors. Pairs: every same-person pair
among the sampled people and as many random different-person pairs. Reports
accuracy / TPR / FPR at dlib's threshold 0.6, the best threshold on this set
(optimistic), 10-fold cross-validated accuracy (LFW-style: threshold chosen on
9 folds), detection failures, the torch-vs-dlib descriptor agreement, and
faces/s of the torch port vs dlib-native with one thread.

Not run by CI. Needs ../shared/corpus/faces.

Example:
    OMP_NUM_THREADS=1 python benchmarks/recognizer_verification.py --people 300
"""
from __future__ import annotations

import argparse
import csv
import itertools
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import dlib  # noqa: E402

from anonymize.faces.alignments import extract_chips  # noqa: E402
from anonymize.faces.recognize import get_recognizer  # noqa: E402

HOG = dlib.get_frontal_face_detector()

SHARED = Path(os.environ.get("ANONYMIZE_SHARED", Path(__file__).resolve().parent.parent.parent / "shared"))


def lfw_people(shared: Path, source: str) -> dict[str, list[Path]]:
    """person -> photo paths (only people with >= 2 photos from the chosen source)."""
    people: dict[str, list[Path]] = {}
    with open(shared / "corpus" / "SOURCES.tsv", newline="") as fh:
        for row in csv.DictReader(fh, delimiter="\t"):
            if not row["local_path"].startswith("faces/"):
                continue
            if source == "lfw" and not row["repo"].startswith("umass-vis-lfw/"):
                continue
            person = row["local_path"].split("/")[1]
            people.setdefault(person, []).append(shared / "corpus" / row["local_path"])
    return {p: sorted(v) for p, v in sorted(people.items()) if len(v) >= 2}


def central_box(img: np.ndarray, detector: str) -> tuple[float, ...] | None:
    """The detected face nearest the image centre, as an exclusive-end box."""
    if detector == "hog":
        boxes = [(r.left(), r.top(), r.right() + 1, r.bottom() + 1) for r in HOG(img, 1)]  # dlib's inclusive rectangles
    else:
        from anonymize.faces.detect import get_detector

        boxes = [f.box for f in get_detector(detector)([img])[0]]
    if not boxes:
        return None
    cy, cx = img.shape[0] / 2, img.shape[1] / 2
    return min(boxes, key=lambda b: ((b[0] + b[2]) / 2 - cx) ** 2 + ((b[1] + b[3]) / 2 - cy) ** 2)


def central_face_chip(path: Path, detector: str = "hog") -> np.ndarray | None:
    img = np.asarray(Image.open(path).convert("RGB"))
    box = central_box(img, detector)
    return None if box is None else extract_chips("dlib150", img, [box])[0]


def descriptors(rec, chips: np.ndarray, batch: int = 16) -> np.ndarray:
    out = []
    with torch.no_grad():
        for i in range(0, len(chips), batch):
            x = torch.from_numpy(chips[i : i + batch]).permute(0, 3, 1, 2)
            out.append(rec.descriptor(x).double().numpy())
    return np.concatenate(out)


def best_threshold(d: np.ndarray, same: np.ndarray) -> tuple[float, float]:
    """Threshold (midpoint between sorted distances) maximising accuracy on (d, same)."""
    order = np.argsort(d)
    ds, ss = d[order], same[order]
    # predicting "same" for the first k pairs: correct = same among first k + different among the rest
    tp = np.concatenate([[0], np.cumsum(ss)])
    tn = (~ss).sum() - np.concatenate([[0], np.cumsum(~ss)])
    acc = (tp + tn) / len(d)
    k = int(np.argmax(acc))
    lo = ds[k - 1] if k > 0 else ds[0] - 1e-3
    hi = ds[k] if k < len(ds) else ds[-1] + 1e-3
    return float((lo + hi) / 2), float(acc[k])


def rates(d: np.ndarray, same: np.ndarray, thr: float) -> tuple[float, float, float]:
    pred = d < thr
    acc = float((pred == same).mean())
    tpr = float(pred[same].mean())
    fpr = float(pred[~same].mean())
    return acc, tpr, fpr


def cv_accuracy(d: np.ndarray, same: np.ndarray, folds: int, rng: np.random.Generator) -> tuple[float, float]:
    idx = rng.permutation(len(d))
    accs = []
    for f in np.array_split(idx, folds):
        train = np.setdiff1d(idx, f)
        thr, _ = best_threshold(d[train], same[train])
        accs.append(rates(d[f], same[f], thr)[0])
    return float(np.mean(accs)), float(np.std(accs))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--people", type=int, default=300, help="people to sample (0 = all)")
    ap.add_argument("--source", choices=["lfw", "all"], default="lfw")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timing-chips", type=int, default=64)
    ap.add_argument("--detector", default="hog", help="hog (dlib's, upsample 1) or a registered detector, e.g. mtcnn")
    args = ap.parse_args()
    torch.set_num_threads(1)
    rng = np.random.default_rng(args.seed)

    people = lfw_people(SHARED, args.source)
    names = sorted(people)
    if args.people and args.people < len(names):
        names = sorted(rng.choice(names, args.people, replace=False).tolist())
    n_photos = sum(len(people[n]) for n in names)

    t0 = time.perf_counter()
    chips, owner, failed = [], [], []
    for n in names:
        for p in people[n]:
            c = central_face_chip(p, args.detector)
            if c is None:
                failed.append(p)
            else:
                chips.append(c)
                owner.append(n)
    t_detect = time.perf_counter() - t0
    chips_a = np.stack(chips)
    owner_a = np.array(owner)

    rec = get_recognizer("dlib-resnet")
    native = get_recognizer("dlib-native")
    t0 = time.perf_counter()
    desc = descriptors(rec, chips_a)
    t_torch_all = time.perf_counter() - t0

    # pairs: every same-person pair, and as many random different-person pairs
    by_person: dict[str, list[int]] = {}
    for i, n in enumerate(owner):
        by_person.setdefault(n, []).append(i)
    pos = [pair for idx in by_person.values() for pair in itertools.combinations(idx, 2)]
    neg: set[tuple[int, int]] = set()
    while len(neg) < len(pos):
        i, j = rng.integers(0, len(owner), 2)
        if owner[i] != owner[j]:
            neg.add((int(min(i, j)), int(max(i, j))))
    pairs = np.array(pos + sorted(neg))
    same = np.array([True] * len(pos) + [False] * len(neg))
    dist = np.linalg.norm(desc[pairs[:, 0]] - desc[pairs[:, 1]], axis=1)

    acc06, tpr06, fpr06 = rates(dist, same, 0.6)
    thr, acc_best = best_threshold(dist, same)
    _, tpr_b, fpr_b = rates(dist, same, thr)
    cv_mean, cv_std = cv_accuracy(dist, same, 10, rng)

    # speed and agreement on the same chips, one thread
    k = min(args.timing_chips, len(chips_a))
    sub = chips_a[:k]
    t0 = time.perf_counter()
    d_torch = descriptors(rec, sub)
    t_torch = time.perf_counter() - t0
    t0 = time.perf_counter()
    d_native = native.descriptor(sub).double().numpy()
    t_native = time.perf_counter() - t0
    agree = float(np.abs(d_torch - d_native).max())

    print(f"sample: {len(names)} people ({args.source}, seed {args.seed}), detector {args.detector}, {n_photos} photos, "
          f"{len(chips_a)} faces detected, {len(failed)} detection failures")
    print(f"pairs: {len(pos)} same-person, {len(neg)} different-person")
    print()
    print("| metric | value |")
    print("|---|---|")
    print(f"| accuracy @ 0.6 (dlib's threshold) | {acc06:.4f} |")
    print(f"| TPR / FPR @ 0.6 | {tpr06:.4f} / {fpr06:.4f} |")
    print(f"| best threshold on this set (optimistic) | {thr:.3f} -> acc {acc_best:.4f} (TPR {tpr_b:.4f}, FPR {fpr_b:.4f}) |")
    print(f"| 10-fold CV accuracy (threshold fit on 9 folds) | {cv_mean:.4f} +- {cv_std:.4f} |")
    print(f"| same-person distance median / different-person median | {np.median(dist[same]):.3f} / {np.median(dist[~same]):.3f} |")
    print(f"| detection failures | {len(failed)} of {n_photos} |")
    print(f"| torch port vs dlib-native max abs diff ({k} chips) | {agree:.2e} |")
    print(f"| torch port faces/s (1 thread, batch 16) | {k / t_torch:.1f} |")
    print(f"| dlib-native faces/s (1 call, {k} chips) | {k / t_native:.1f} |")
    print(f"| detect + 5-pt + chip, images/s | {n_photos / t_detect:.1f} |")
    print(f"| torch descriptors for all {len(chips_a)} faces | {t_torch_all:.1f} s |")
    if failed:
        print("\nfirst detection failures:", ", ".join(str(p.relative_to(SHARED)) for p in failed[:8]))


if __name__ == "__main__":
    main()

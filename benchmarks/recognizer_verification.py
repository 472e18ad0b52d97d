"""Face verification accuracy, calibrated thresholds and speed of every recognizer on corpus/faces.

Pipeline per photo: a detector (``--detector``, default MTCNN; the detection
nearest the image centre), then each recognizer's own entry of the alignment
table (``anonymize.faces.alignments.extract_chips``: ``dlib150``, ``facenet160``,
``arcface112``, ``lightcnn128-5pt``, ...), then the recognizer's descriptors and
its own metric. ``--also-alignment NAME=ALIGNMENT`` adds a row for a recognizer
fed another table entry (e.g. ``lightcnn-v4=lightcnn128``, the wheel's own crop).

Pairs: every same-person pair among the sampled people and as many random
different-person pairs (seeded). For each recognizer:

- ``thr@FAR1%``: the distance below which 1 % of the different-person pairs fall
  (same person if ``d < thr``); accuracy, TPR and FAR there. This is how the
  registry's thresholds are set.
- best accuracy and its threshold on this set (optimistic), and the 10-fold
  cross-validated accuracy (threshold fit on 9 folds).
- ``img/s``: descriptors per second on pre-cut chips (batch 16, the torch thread
  count given by ``--threads``), excluding detection and alignment.

Not run by CI. Needs ../shared/corpus/faces and the weights (``anonymize
fetch-weights facenet-casia facenet-ms1m lightcnn-v4`` and ``arcface-mbf
--accept-licence``). Missing recognizers are listed and skipped.

Example:
    OMP_NUM_THREADS=1 nice python benchmarks/recognizer_verification.py --people 0 \\
        --det-cache /tmp/dets.pkl --also-alignment lightcnn-v4=lightcnn128
"""
from __future__ import annotations

import argparse
import itertools
import os
import pickle
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from anonymize.errors import AnonymizeError  # noqa: E402
from anonymize.faces.alignments import extract_chips  # noqa: E402
from anonymize.faces.recognize import RECOGNIZERS, get_recognizer  # noqa: E402
from anonymize.types import Face  # noqa: E402

SHARED = Path(os.environ.get("ANONYMIZE_SHARED", Path(__file__).resolve().parent.parent.parent / "shared"))
DEFAULT = "dlib-resnet,facenet-casia,facenet-ms1m,arcface-mbf,lightcnn-v4"


@dataclass
class Photo:
    person: str
    path: Path
    face: Face | None


def corpus_people(shared: Path) -> dict[str, list[Path]]:
    """person -> photo paths (people with >= 2 photos)."""
    root = shared / "corpus" / "faces"
    out: dict[str, list[Path]] = {}
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        photos = sorted(p for p in d.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        if len(photos) >= 2:
            out[d.name] = photos
    return out


def load_rgb(path: Path) -> np.ndarray:
    return np.array(Image.open(path).convert("RGB"))


def detect(paths: Sequence[Path], cache: Path | None, detector: str = "mtcnn") -> dict[str, Face | None]:
    """The detected face nearest the image centre per photo (cached by path when ``cache`` is given)."""
    from anonymize.faces.detect import get_detector

    known: dict[str, Face | None] = {}
    if cache is not None and cache.is_file():
        known = pickle.loads(cache.read_bytes())
    todo = [p for p in paths if str(p) not in known]
    if todo:
        det = get_detector(detector)
        for p in todo:
            img = load_rgb(p)
            faces = det([img])[0]
            h, w = img.shape[:2]
            known[str(p)] = min(faces, key=lambda f: ((f.box[0] + f.box[2]) / 2 - w / 2) ** 2
                                + ((f.box[1] + f.box[3]) / 2 - h / 2) ** 2) if faces else None
        if cache is not None:
            cache.write_bytes(pickle.dumps(known))
    return {str(p): known[str(p)] for p in paths}


def make_chips(photos: Sequence[Photo], alignment: str) -> np.ndarray:
    """(N, S, S, 3) uint8 chips of every photo's face for one alignment-table entry."""
    return np.stack([extract_chips(alignment, load_rgb(ph.path), [ph.face])[0] for ph in photos])  # type: ignore[list-item]


def descriptors(fn: Callable[[torch.Tensor], torch.Tensor], chips: np.ndarray, batch: int = 16) -> np.ndarray:
    out = []
    with torch.no_grad():
        for i in range(0, len(chips), batch):
            x = torch.from_numpy(chips[i : i + batch]).permute(0, 3, 1, 2).float() / 255.0
            out.append(fn(x).double().numpy())
    return np.concatenate(out)


def pair_distances(desc: np.ndarray, pairs: np.ndarray, metric: str) -> np.ndarray:
    a, b = desc[pairs[:, 0]], desc[pairs[:, 1]]
    if metric == "euclidean":
        return np.linalg.norm(a - b, axis=1)
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return 1.0 - (a * b).sum(1)


def make_pairs(owner: Sequence[str], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Every same-person pair and as many random different-person pairs."""
    by: dict[str, list[int]] = {}
    for i, n in enumerate(owner):
        by.setdefault(n, []).append(i)
    pos = [p for idx in by.values() for p in itertools.combinations(idx, 2)]
    neg: set[tuple[int, int]] = set()
    while len(neg) < len(pos):
        i, j = (int(v) for v in rng.integers(0, len(owner), 2))
        if owner[i] != owner[j]:
            neg.add((min(i, j), max(i, j)))
    return np.array(pos + sorted(neg)), np.array([True] * len(pos) + [False] * len(neg))


def best_threshold(d: np.ndarray, same: np.ndarray) -> tuple[float, float]:
    """Threshold (midpoint between sorted distances) maximising accuracy on (d, same)."""
    order = np.argsort(d)
    ds, ss = d[order], same[order]
    tp = np.concatenate([[0], np.cumsum(ss)])
    tn = (~ss).sum() - np.concatenate([[0], np.cumsum(~ss)])
    acc = (tp + tn) / len(d)
    k = int(np.argmax(acc))
    lo = ds[k - 1] if k > 0 else ds[0] - 1e-3
    hi = ds[k] if k < len(ds) else ds[-1] + 1e-3
    return float((lo + hi) / 2), float(acc[k])


def far_threshold(d: np.ndarray, same: np.ndarray, far: float = 0.01) -> float:
    """Largest threshold with at most ``far`` of the different-person pairs below it (midpoint)."""
    neg = np.sort(d[~same])
    k = int(np.floor(far * len(neg)))  # pairs allowed below the threshold
    lo = neg[k - 1] if k > 0 else neg[0] - 1e-3
    return float((lo + neg[k]) / 2)


def rates(d: np.ndarray, same: np.ndarray, thr: float) -> tuple[float, float, float]:
    pred = d < thr
    return float((pred == same).mean()), float(pred[same].mean()), float(pred[~same].mean())


def cv_accuracy(d: np.ndarray, same: np.ndarray, folds: int, rng: np.random.Generator) -> float:
    idx = rng.permutation(len(d))
    accs = []
    for f in np.array_split(idx, folds):
        train = np.setdiff1d(idx, f)
        thr, _ = best_threshold(d[train], same[train])
        accs.append(rates(d[f], same[f], thr)[0])
    return float(np.mean(accs))


def evaluate(name: str, d: np.ndarray, same: np.ndarray, rng: np.random.Generator) -> dict[str, float]:
    thr = far_threshold(d, same)
    acc, tpr, far = rates(d, same, thr)
    bthr, bacc = best_threshold(d, same)
    return {"thr": thr, "acc": acc, "tpr": tpr, "far": far, "best_thr": bthr, "best_acc": bacc,
            "cv": cv_accuracy(d, same, 10, rng), "same_med": float(np.median(d[same])),
            "diff_med": float(np.median(d[~same]))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--people", type=int, default=0, help="people to sample (0 = all with >= 2 photos)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--recognizers", default=DEFAULT)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--detector", default="mtcnn", help="a registered detector (its landmarks feed the alignments)")
    ap.add_argument("--det-cache", type=Path, default=None, help="pickle file caching the detections (per detector)")
    ap.add_argument("--also-alignment", action="append", default=[], metavar="NAME=ALIGNMENT",
                    help="an extra row: recognizer NAME fed another alignment-table entry")
    ap.add_argument("--timing-chips", type=int, default=64)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)

    people = corpus_people(SHARED)
    names = sorted(people)
    if args.people and args.people < len(names):
        names = sorted(rng.choice(names, args.people, replace=False).tolist())
    paths = [p for n in names for p in people[n]]
    t0 = time.perf_counter()
    dets = detect(paths, args.det_cache, args.detector)
    t_det = time.perf_counter() - t0
    photos = [Photo(n, p, dets[str(p)]) for n in names for p in people[n]]
    found = [ph for ph in photos if ph.face is not None]
    owner = [ph.person for ph in found]
    pairs, same = make_pairs(owner, rng)
    print(f"sample: {len(names)} people (seed {args.seed}), {len(photos)} photos, {len(found)} with a face "
          f"({args.detector}, {len(photos) - len(found)} misses; detection {t_det:.0f} s incl. cache)")
    print(f"pairs: {int(same.sum())} same-person, {int((~same).sum())} different-person")
    print(f"torch threads: {args.threads}; machine shared with other jobs: speeds are lower bounds\n")

    rows = []
    runs = [(r.strip(), "") for r in args.recognizers.split(",") if r.strip()]
    runs += [tuple(a.split("=", 1)) for a in args.also_alignment]  # type: ignore[misc]
    for name, alignment in runs:
        spec = RECOGNIZERS.get(name)
        alignment = alignment or spec.alignment
        try:
            rec = get_recognizer(name)
        except AnonymizeError as exc:
            print(f"{name}: unavailable: {exc}")
            continue
        t0 = time.perf_counter()
        chips = make_chips(found, alignment)
        t_align = time.perf_counter() - t0
        desc = descriptors(rec.descriptor, chips)
        d = pair_distances(desc, pairs, spec.distance)
        r = evaluate(name, d, same, rng)
        k = min(args.timing_chips, len(chips))
        descriptors(rec.descriptor, chips[:16])  # warm-up
        t0 = time.perf_counter()
        descriptors(rec.descriptor, chips[:k])
        r["ips"] = k / (time.perf_counter() - t0)
        r["align_ips"] = len(chips) / t_align
        rows.append((name, alignment, spec, r))

    print("| recognizer | align | metric | dim | thr@FAR1% | acc@FAR1% | TPR@FAR1% | best acc (thr) | 10-fold CV acc "
          "| same / diff median | img/s | align img/s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, alignment, spec, r in rows:
        print(f"| {name} | {alignment} | {spec.distance} | {spec.embedding_dim} | {r['thr']:.3f} | {r['acc']:.4f} | "
              f"{r['tpr']:.4f} | {r['best_acc']:.4f} ({r['best_thr']:.3f}) | {r['cv']:.4f} | "
              f"{r['same_med']:.3f} / {r['diff_med']:.3f} | {r['ips']:.1f} | {r['align_ips']:.1f} |")


if __name__ == "__main__":
    main()

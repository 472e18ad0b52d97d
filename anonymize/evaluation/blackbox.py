"""Face-level protection as an outsider measures it: re-detection, recognizers, gallery.

For each face found in the original image:

- detection in the protected image (matched by IoU >= 0.3): SDR is the share of
  original faces still detected;
- identity distance per recognizer between the original face and the protected
  face (each cut with its recognizer's alignment from the shared table and its
  own landmarks, as an attacker would), the recognizer's match decision, and
  ``protected = not match``;
- SPR (success protection rate): protected faces / all faces, where a face the
  detector no longer finds counts as **not protected** (and is counted
  separately in ``undetected``). ``spr_aligned`` is the same decision for an
  attacker who knows where the face is (undetected faces aligned with the
  original's landmarks);
- face-region SSIM and landmark displacement per region (chin, eyebrows, nose,
  eyes, mouth) from dlib's 68-point model, in units of the inter-ocular distance.

Optional gallery re-identification (``gallery``: folders of other photos per
person): rank-1 identification and verification of each protected face against
the gallery, the realistic threat. The person of an evaluated image is the name
of its parent folder.

The *black-box* summary is the SPR under the recognizers whose weight family the
protect run did not attack (white-box flags from :mod:`.whitebox`): the worst
(minimum) and the mean, and which recognizers those are. With unknown
provenance no recognizer counts as black-box.

Example:
    >>> iou((0, 0, 10, 10), (5, 0, 15, 10))
    0.3333333333333333
    >>> black_box_summary({"a": {"spr": 0.9, "white_box": False}, "b": {"spr": 0.4, "white_box": False},
    ...                    "c": {"spr": 1.0, "white_box": True}})["spr_min"]
    0.4
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import AnonymizeError, UsageError
from ..metrics.quality import ssim
from ..types import Face, ImageItem
from .whitebox import UNKNOWN, WhiteBoxFlag, white_box

LANDMARK_REGIONS = {
    "chin": range(0, 17),
    "eyebrows": range(17, 27),
    "nose": range(27, 36),
    "eyes": range(36, 48),
    "mouth": range(48, 68),
}


def iou(a: tuple[float, ...] | list[float], b: tuple[float, ...] | list[float]) -> float:
    """Intersection over union of two ``(x0, y0, x1, y1)`` boxes."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def default_recognizers() -> tuple[str, ...]:
    """What ``evaluate`` uses when not told: every ``eval_default`` recognizer (those whose
    weights are missing end up in ``recognizers_unavailable``)."""
    from ..faces.recognize import eval_default_names

    return tuple(eval_default_names())


@dataclass
class FaceEvaluator:
    """Runs the face-level metrics; :func:`anonymize.evaluation.evaluate` drives it."""

    detector: str | None = None
    recognizers: tuple[str, ...] = ()  # empty: default_recognizers()
    device: str = "cpu"
    gallery: Path | None = None
    landmarks: bool = True
    iou_match: float = 0.3
    _det: Any = None
    _recs: dict[str, Any] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)
    _gallery: dict[str, tuple[np.ndarray, list[str]]] = field(default_factory=dict)
    _gallery_shas: list[str] = field(default_factory=list)

    def prepare(self) -> None:
        from ..faces.detect import get_detector, resolve_detector
        from ..faces.recognize import RECOGNIZERS, get_recognizer

        self.detector = resolve_detector(self.detector)
        self._det = get_detector(self.detector, device=self.device)
        for name in self.recognizers or default_recognizers():
            RECOGNIZERS.get(name)  # a typo is a usage error naming the valid recognizers
            try:
                self._recs[name] = get_recognizer(name, self.device)
            except AnonymizeError as exc:  # missing weights etc.: reported, not fatal
                self.unavailable[name] = str(exc)
        if not self._recs:
            raise UsageError("no recognizer is available: " + "; ".join(f"{k}: {v}" for k, v in self.unavailable.items()))
        if self.gallery is not None:
            self._build_gallery(self.gallery)

    @property
    def names(self) -> list[str]:
        """The recognizers in use."""
        return list(self._recs)

    # ------------------------------------------------------------------ embeddings
    def _descriptors(self, image: np.ndarray, faces: list[Face]) -> dict[str, np.ndarray]:
        import torch

        from ..faces.alignments import extract_chips

        out: dict[str, np.ndarray] = {}
        for name, rec in self._recs.items():
            chips = extract_chips(rec.alignment, image, faces)
            if len(chips) == 0:
                out[name] = np.zeros((0, rec.embedding_dim), np.float32)
                continue
            t = torch.from_numpy(chips).permute(0, 3, 1, 2).float().div(255.0).to(self.device)
            with torch.no_grad():
                out[name] = rec.descriptor(t).detach().cpu().numpy()
        return out

    def _distance(self, name: str, a: np.ndarray, b: np.ndarray) -> float:
        import torch

        rec = self._recs[name]
        return float(rec.distance(torch.from_numpy(a[None]), torch.from_numpy(b[None]))[0])

    # ------------------------------------------------------------------ gallery
    def _build_gallery(self, root: Path) -> None:
        from ..io.decode import decode_file
        from ..io.discover import discover

        if not root.is_dir():
            raise UsageError(f"--gallery {root} is not a folder of per-person folders")
        per: dict[str, list[tuple[str, dict[str, np.ndarray]]]] = {}
        for job in discover([root]):
            if job.error or len(job.relative.parts) < 2:
                continue
            try:
                item, data = decode_file(job.source, job.relative)
            except Exception:
                continue
            faces = self._det([item.pixels])[0]
            if not faces:
                continue
            f = _central(faces, item.width, item.height)
            desc = self._descriptors(item.pixels, [f])
            per.setdefault(job.relative.parts[0], []).append((hashlib.sha256(data).hexdigest(), {k: v[0] for k, v in desc.items()}))
        for name in self._recs:
            vecs, labels, shas = [], [], []
            for person, entries in per.items():
                for sha, d in entries:
                    vecs.append(d[name])
                    labels.append(person)
                    shas.append(sha)
            self._gallery[name] = (np.asarray(vecs, np.float32), labels)
            self._gallery_shas = shas

    def _gallery_query(self, name: str, desc: np.ndarray, label: str, exclude_sha: str | None) -> dict[str, Any]:
        import torch

        vecs, labels = self._gallery.get(name, (np.zeros((0, 1)), []))
        keep = [i for i, s in enumerate(self._gallery_shas) if s != exclude_sha]
        if not keep or label not in {labels[i] for i in keep}:
            return {"rank1": None, "verified": None, "note": "person not in gallery"}
        rec = self._recs[name]
        g = torch.from_numpy(vecs[keep])
        d = rec.distance(torch.from_numpy(np.repeat(desc[None], len(keep), 0)), g).numpy()
        best = int(np.argmin(d))
        same = [j for j, i in enumerate(keep) if labels[i] == label]
        dmin_same = float(d[same].min())
        return {"rank1": labels[keep[best]] == label, "verified": dmin_same < rec.threshold, "min_distance_same_person": dmin_same}

    # ------------------------------------------------------------------ per pair
    def evaluate_pair(self, orig: ImageItem, prot: ImageItem, original_sha256: str | None = None,
                      attacked: set[str] | None = None) -> dict[str, Any]:
        """Face-level record of one pair; ``attacked``: the models the protect run attacked
        for this file (None: unknown), for the per-face white-box flags."""
        faces_o = self._det([orig.pixels])[0]
        faces_p = self._det([prot.pixels])[0]
        label = orig.relative.parent.name if len(orig.relative.parts) >= 2 else None
        used: set[int] = set()
        matched: list[tuple[Face, Face | None, float]] = []
        for f in faces_o:
            best, best_iou = None, 0.0
            for j, g in enumerate(faces_p):
                if j in used:
                    continue
                v = iou(f.box, g.box)
                if v > best_iou:
                    best, best_iou = j, v
            if best is not None and best_iou >= self.iou_match:
                used.add(best)
                matched.append((f, faces_p[best], best_iou))
            else:
                matched.append((f, None, best_iou))
        # an undetected face is cut at the original's place (the attacker who knows where it is)
        located = [g if g is not None else f for f, g, _ in matched]
        desc_o = self._descriptors(orig.pixels, list(faces_o)) if faces_o else {}
        desc_p = self._descriptors(prot.pixels, located) if located else {}
        central = _central(faces_o, orig.width, orig.height) if faces_o else None
        out_faces = []
        for i, (f, g, v) in enumerate(matched):
            rec: dict[str, Any] = {**f.to_dict(), "detected_in_protected": g is not None, "iou": round(v, 4),
                                   "protected_box": None if g is None else [round(x, 2) for x in g.box]}
            x0, y0, x1, y1 = f.scaled_box(1.0, orig.width, orig.height)
            rec["face_ssim"] = ssim(orig.pixels[y0:y1, x0:x1], prot.pixels[y0:y1, x0:x1]) if x1 > x0 and y1 > y0 else None
            ident: dict[str, Any] = {}
            for name, r in self._recs.items():
                d = self._distance(name, desc_o[name][i], desc_p[name][i])
                match = d < r.threshold
                ident[name] = {
                    "distance": d,
                    "threshold": r.threshold,
                    "match": bool(match),
                    "protected": bool((not match) and g is not None),
                    "protected_if_located": bool(not match),
                    "white_box": white_box(name, attacked),
                }
                if self._gallery and label is not None and f is central:
                    ident[name]["gallery"] = self._gallery_query(name, desc_p[name][i], label, original_sha256)
                    ident[name]["gallery_original"] = self._gallery_query(name, desc_o[name][i], label, original_sha256)
            rec["identity"] = ident
            if self.landmarks:
                rec["landmark_displacement"] = _landmark_displacement(orig.pixels, prot.pixels, f.box, (g.box if g is not None else f.box))
            out_faces.append(rec)
        return {"faces": out_faces, "faces_original": len(faces_o), "faces_protected": len(faces_p), "person": label}

    # ------------------------------------------------------------------ summary
    def summary(self, images: list[dict[str, Any]], white_box_flags: dict[str, WhiteBoxFlag]) -> dict[str, Any]:
        """Run-level face metrics; ``white_box_flags`` per recognizer from :func:`.whitebox.summarise`."""
        from ..faces.recognize import RECOGNIZERS

        faces = [f for r in images if r.get("status") == "ok" for f in r.get("faces", [])]
        n = len(faces)
        det = sum(1 for f in faces if f.get("detected_in_protected"))
        recs: dict[str, Any] = {}
        for name, r in self._recs.items():
            ids = [f["identity"][name] for f in faces if name in f.get("identity", {})]
            gal = [i["gallery"] for i in ids if i.get("gallery") and i["gallery"].get("rank1") is not None]
            gal_o = [i["gallery_original"] for i in ids if i.get("gallery_original") and i["gallery_original"].get("rank1") is not None]
            spec = RECOGNIZERS.get(name) if name in RECOGNIZERS else None
            recs[name] = {
                "threshold": r.threshold,
                "metric": r.metric,
                "faces": len(ids),
                "spr": _rate([i["protected"] for i in ids]),
                "spr_aligned": _rate([i["protected_if_located"] for i in ids]),
                "distance_mean": float(np.mean([i["distance"] for i in ids])) if ids else None,
                "white_box": white_box_flags.get(name, UNKNOWN),
                "gallery_queries": len(gal),
                "gallery_rank1": _rate([g["rank1"] for g in gal]),
                "gallery_verification": _rate([g["verified"] for g in gal]),
                "gallery_rank1_original": _rate([g["rank1"] for g in gal_o]),
                "gallery_verification_original": _rate([g["verified"] for g in gal_o]),
                "family": spec.family if spec else name,
                "alignment": r.alignment,
                "licence": spec.licence if spec else None,
                "non_commercial": bool(spec.non_commercial) if spec else False,
            }
        primary = next((k for k in self._recs if recs[k]["white_box"] is False), next(iter(self._recs)))
        ssims = [f["face_ssim"] for f in faces if f.get("face_ssim") is not None]
        disp: dict[str, float | None] = {}
        for region in LANDMARK_REGIONS:
            vals = [f["landmark_displacement"][region] for f in faces if f.get("landmark_displacement") and f["landmark_displacement"].get(region) is not None]
            disp[region] = float(np.mean(vals)) if vals else None
        notes = []
        for k, v in recs.items():
            if v["white_box"] is True:
                notes.append(f"{k}: white-box — the protection was optimised against this network's weights; its SPR "
                             "overstates protection against other recognizers.")
            if v["non_commercial"]:
                notes.append(f"{k}: weights licensed for non-commercial use only ({v['licence']}).")
        for k, v in self.unavailable.items():
            notes.append(f"{k}: unavailable ({v})")
        if n and n - det:
            notes.append(f"{n - det} of {n} faces are no longer detected by {self.detector}; SPR counts them as not protected "
                         "(an attacker with a better detector may still find them); 'SPR if located' aligns them with the original's landmarks.")
        bb = black_box_summary(recs)
        return {
            "detector": self.detector,
            "faces": n,
            "sdr": det / n if n else None,
            "undetected": n - det,
            "spr": recs[primary]["spr"],
            "spr_recognizer": primary,
            "gallery_rank1": recs[primary]["gallery_rank1"],
            "face_ssim_mean": float(np.mean(ssims)) if ssims else None,
            "landmark_displacement_mean": disp,
            "recognizers": recs,
            "recognizers_unavailable": dict(self.unavailable),
            "white_box": sorted(k for k, v in recs.items() if v["white_box"] is True),
            "black_box": bb,
            "licences": {k: v["licence"] for k, v in recs.items()},
            "non_commercial": sorted(k for k, v in recs.items() if v["non_commercial"]),
            "notes": notes,
        }


def black_box_summary(recs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """SPR over the recognizers that were *not* attacked (``white_box is False``): worst, mean, which.

    Recognizers whose status is "unknown" are never counted as black-box.
    """
    names = [k for k, v in recs.items() if v.get("white_box") is False and v.get("spr") is not None]
    sprs = [float(recs[k]["spr"]) for k in names]
    aligned = [float(recs[k]["spr_aligned"]) for k in names if recs[k].get("spr_aligned") is not None]
    worst = min(names, key=lambda k: recs[k]["spr"]) if names else None
    gal = [recs[k]["gallery_rank1"] for k in names if recs[k].get("gallery_rank1") is not None]
    out: dict[str, Any] = {
        "recognizers": names,
        "white_box": sorted(k for k, v in recs.items() if v.get("white_box") is True),
        "unknown": sorted(k for k, v in recs.items() if v.get("white_box") == UNKNOWN),
        "spr_min": min(sprs) if sprs else None,
        "spr_min_recognizer": worst,
        "spr_mean": float(np.mean(sprs)) if sprs else None,
        "spr_aligned_min": min(aligned) if aligned else None,
        "gallery_rank1_max": max(gal) if gal else None,
    }
    if not names:
        out["note"] = ("no black-box recognizer: every recognizer in use was attacked or its status is unknown; "
                       "add an independent recognizer (fetch-weights) or pass --protect-report")
    return out


def _rate(xs: list[bool]) -> float | None:
    return float(np.mean(xs)) if xs else None


def _central(faces: list[Face], w: int, h: int) -> Face:
    """The largest face, ties broken by closeness to the image centre."""
    def key(f: Face) -> tuple[float, float]:
        cx, cy = (f.box[0] + f.box[2]) / 2, (f.box[1] + f.box[3]) / 2
        return (-f.width * f.height, (cx - w / 2) ** 2 + (cy - h / 2) ** 2)

    return sorted(faces, key=key)[0]


def _landmark_displacement(a: np.ndarray, b: np.ndarray, box_a: tuple[float, ...], box_b: tuple[float, ...]) -> dict[str, float | None]:
    from ..faces.detect import dlib_shape68

    la = dlib_shape68(a, box_a)
    lb = dlib_shape68(b, box_b)
    iod = float(np.linalg.norm(la[36:42].mean(0) - la[42:48].mean(0)))
    if iod <= 1e-6:
        return {k: None for k in LANDMARK_REGIONS}
    d = np.linalg.norm(la - lb, axis=1) / iod
    return {k: float(d[list(idx)].mean()) for k, idx in LANDMARK_REGIONS.items()}

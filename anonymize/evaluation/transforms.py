"""``evaluate --transforms``: does the protection survive everyday processing?

Each transform is applied **once** to each protected image (never on top of
another transform), and every face metric is measured again on the result:
detection (SDR), identity per recognizer (SPR, SPR if located, distances), the
black-box summary, and image/face SSIM. A protection that a JPEG re-save undoes
shows up here instead of after publication.

Transforms (``name:value``):

- ``jpeg:Q`` -- re-encode as JPEG at quality Q (1..100, libjpeg via Pillow, 4:2:0);
- ``resize:S`` -- shrink by factor S (0 < S < 1, area filter), then enlarge back to
  the original size (bicubic): a re-upload at lower resolution, viewed at full size;
- ``crop:F`` -- keep the centre F x F share of each side (0 < F <= 1), enlarged back
  to the full size (bicubic). The original gets the same crop geometry (so faces
  pair by position); only the protected image's pixels are what is being tested;
- ``blur:S`` -- Gaussian blur with sigma S pixels (S > 0).

``DEFAULT_TRANSFORMS`` is the set used when ``--transforms`` is given without a
value. Gates: ``--fail-under spr@jpeg:75=0.9`` (see :mod:`.gates`).

Example:
    >>> [t.name for t in parse_transforms("jpeg:75,resize:0.5")]
    ['jpeg:75', 'resize:0.5']
    >>> parse_transforms("jpeg:75,jpeg:75.0")[1].name  # the same transform once
    Traceback (most recent call last):
    ...
    anonymize.errors.UsageError: --transforms: jpeg:75 is given twice
    >>> import numpy as np
    >>> Transform("blur", 1.0)(np.zeros((8, 8, 3), np.uint8)).shape
    (8, 8, 3)
"""
from __future__ import annotations

import io
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import UsageError

DEFAULT_TRANSFORMS = "jpeg:75,jpeg:50,resize:0.5,crop:0.9,blur:1"
_SYNTAX = re.compile(r"^(jpeg|resize|crop|blur):([0-9]*\.?[0-9]+)$")
TRANSFORM_PATTERN = r"(?:jpeg|resize|crop|blur):[0-9]*\.?[0-9]+"

_HELP = {
    "jpeg": "JPEG re-encode at quality Q (integer 1..100)",
    "resize": "shrink by S (0 < S < 1) and enlarge back",
    "crop": "centre crop keeping F of each side (0 < F <= 1), enlarged back",
    "blur": "Gaussian blur with sigma S pixels (S > 0)",
}


def _fmt(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else repr(float(v))


@dataclass(frozen=True)
class Transform:
    """One everyday transform; ``t(pixels)`` returns new uint8 RGB pixels (the input is not modified)."""

    kind: str
    value: float

    @property
    def name(self) -> str:
        return f"{self.kind}:{_fmt(self.value)}"

    @property
    def geometric(self) -> bool:
        """True when it moves pixels (the original gets the same geometry for pairing)."""
        return self.kind == "crop" and self.value < 1.0

    def check(self) -> None:
        v = self.value
        ok = {"jpeg": float(v).is_integer() and 1 <= v <= 100, "resize": 0 < v < 1, "crop": 0 < v <= 1,
              "blur": v > 0}.get(self.kind)
        if ok is None:
            raise UsageError(f"--transforms: unknown transform {self.kind!r}; choose from {', '.join(_HELP)}")
        if not ok:
            raise UsageError(f"--transforms: {self.name}: {self.kind} is {_HELP[self.kind]}")

    def __call__(self, px: np.ndarray) -> np.ndarray:
        import cv2

        if px.ndim != 3 or px.shape[2] != 3 or px.dtype != np.uint8:
            raise ValueError(f"transforms take uint8 RGB images [H, W, 3], got {px.dtype} {px.shape}")
        h, w = px.shape[:2]
        if self.kind == "jpeg":
            from PIL import Image

            buf = io.BytesIO()
            Image.fromarray(px).save(buf, "JPEG", quality=int(self.value))
            buf.seek(0)
            return np.asarray(Image.open(buf).convert("RGB")).copy()
        if self.kind == "resize":
            sw, sh = max(1, int(round(w * self.value))), max(1, int(round(h * self.value)))
            small = cv2.resize(px, (sw, sh), interpolation=cv2.INTER_AREA)
            return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
        if self.kind == "crop":
            return self.geometry(px)
        return cv2.GaussianBlur(px, (0, 0), sigmaX=float(self.value), sigmaY=float(self.value))

    def geometry(self, px: np.ndarray) -> np.ndarray:
        """The crop geometry alone (identity for non-geometric transforms): applied to the original too."""
        import cv2

        if not self.geometric:
            return px
        h, w = px.shape[:2]
        cw, ch = max(1, int(round(w * self.value))), max(1, int(round(h * self.value)))
        x0, y0 = (w - cw) // 2, (h - ch) // 2
        return cv2.resize(np.ascontiguousarray(px[y0 : y0 + ch, x0 : x0 + cw]), (w, h), interpolation=cv2.INTER_CUBIC)


def parse_transform(spec: str) -> Transform:
    """``"jpeg:75"`` -> Transform; raises UsageError naming the valid forms."""
    s = spec.strip().lower()
    m = _SYNTAX.match(s)
    if not m:
        raise UsageError(f"--transforms: {spec!r} is not NAME:VALUE with NAME one of "
                         + "; ".join(f"{k} ({v})" for k, v in _HELP.items()))
    t = Transform(m.group(1), float(m.group(2)))
    t.check()
    return t


def parse_transforms(spec: str | None) -> tuple[Transform, ...]:
    """Comma-separated transforms; ``"default"`` is :data:`DEFAULT_TRANSFORMS`; empty/None -> ()."""
    if spec is None or not spec.strip() or spec.strip().lower() == "none":
        return ()
    if spec.strip().lower() == "default":
        spec = DEFAULT_TRANSFORMS
    out: list[Transform] = []
    for part in spec.split(","):
        if not part.strip():
            continue
        t = parse_transform(part)
        if t in out:
            raise UsageError(f"--transforms: {t.name} is given twice")
        out.append(t)
    return tuple(out)


# ----------------------------------------------------------------------------- in evaluate


def transformed_pair(t: Transform, orig: np.ndarray, prot: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(reference original, transformed protected): the transform once on the protected pixels, the
    original only given the same geometry."""
    return t.geometry(orig), t(prot)


def summarise_transform(t: Transform, records: list[dict[str, Any]], face_summary: dict[str, Any] | None,
                        applied: int) -> dict[str, Any]:
    """The per-transform block of the report: quality means, face metrics, how often it was applied."""
    from .quality import mean

    ok = [r for r in records if r.get("status") == "ok"]
    out: dict[str, Any] = {
        "transform": t.name,
        "applied": applied,
        "pairs": len(ok),
        "ssim_mean": mean([r.get("ssim") for r in ok]),
        "psnr_mean": mean([r.get("psnr") for r in ok]),
    }
    if face_summary is not None:
        for k in ("faces", "sdr", "undetected", "spr", "spr_recognizer", "face_ssim_mean", "black_box"):
            out[k] = face_summary.get(k)
        out["recognizers"] = {name: {k: r.get(k) for k in ("spr", "spr_aligned", "distance_mean", "white_box")}
                              for name, r in (face_summary.get("recognizers") or {}).items()}
    return out



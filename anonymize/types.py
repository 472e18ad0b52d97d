"""Plain data that flows through the pipeline: faces and decoded images.

Coordinates are in source-image pixels of the *upright* image (after EXIF
orientation was applied), x to the right, y down. A face ``box`` is
``(x0, y0, x1, y1)`` in floats with an exclusive end (``width = x1 - x0``;
``pixels[y0:y1, x0:x1]`` is the face); ``anonymize.faces.align.dlib_rect`` is
the one conversion to dlib's inclusive rectangles.

Landmark conventions:
- ``landmarks5``: (5, 2) float array in MTCNN order: left eye centre, right eye
  centre, nose tip, left mouth corner, right mouth corner, where "left" is the
  image's left (the subject's right eye).
- ``landmarks68``: (68, 2) float array in the iBUG 300-W / dlib order.

Example:
    >>> import numpy as np
    >>> f = Face(box=(10, 20, 50, 70), score=0.99, detector="toy")
    >>> f.width, f.height
    (40.0, 50.0)
    >>> sorted(f.to_dict())
    ['box', 'detector', 'landmarks5', 'landmarks68', 'score']
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# Face boxes are enlarged by this factor (about their centre) before a method protects them:
# detector boxes are tight around the eyes-to-chin area and leave forehead, ears and hair line out.
DEFAULT_MASK_SCALE = 1.3


@dataclass
class Face:
    """One detected face."""

    box: tuple[float, float, float, float]
    score: float
    detector: str
    landmarks5: np.ndarray | None = None
    landmarks68: np.ndarray | None = None

    @property
    def width(self) -> float:
        return float(self.box[2] - self.box[0])

    @property
    def height(self) -> float:
        return float(self.box[3] - self.box[1])

    def scaled_box(self, scale: float, width: int, height: int) -> tuple[int, int, int, int]:
        """The box enlarged about its centre by ``scale`` and clipped to the image (integers)."""
        cx = (self.box[0] + self.box[2]) / 2.0
        cy = (self.box[1] + self.box[3]) / 2.0
        hw = self.width * scale / 2.0
        hh = self.height * scale / 2.0
        x0 = max(0, int(np.floor(cx - hw)))
        y0 = max(0, int(np.floor(cy - hh)))
        x1 = min(width, int(np.ceil(cx + hw)))
        y1 = min(height, int(np.ceil(cy + hh)))
        return x0, y0, x1, y1

    def to_dict(self) -> dict[str, Any]:
        return {
            "box": [round(float(v), 2) for v in self.box],
            "score": round(float(self.score), 5),
            "detector": self.detector,
            "landmarks5": None if self.landmarks5 is None else np.round(self.landmarks5, 2).tolist(),
            "landmarks68": None if self.landmarks68 is None else np.round(self.landmarks68, 2).tolist(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Face":
        lm5 = d.get("landmarks5")
        lm68 = d.get("landmarks68")
        return cls(
            box=tuple(float(v) for v in d["box"]),  # type: ignore[arg-type]
            score=float(d.get("score", 1.0)),
            detector=str(d.get("detector", "external")),
            landmarks5=None if lm5 is None else np.asarray(lm5, dtype=np.float64).reshape(5, 2),
            landmarks68=None if lm68 is None else np.asarray(lm68, dtype=np.float64).reshape(68, 2),
        )


@dataclass
class ImageItem:
    """A decoded image on its way through the pipeline.

    ``pixels`` is always an upright uint8 RGB array (H, W, 3); everything needed
    to write the output faithfully (alpha, mode, bit depth, format, quality,
    ICC, EXIF) is kept beside it.
    """

    source: Path
    relative: Path
    pixels: np.ndarray
    alpha: np.ndarray | None = None
    high_bit: np.ndarray | None = None  # original 16-bit samples (H, W) or (H, W, 3), when the input had them
    format: str = "PNG"
    mode: str = "RGB"
    jpeg_quality: int | None = None
    icc_profile: bytes | None = None
    exif: Any = None  # PIL.Image.Exif of the source, filtered on write
    info: dict[str, Any] = field(default_factory=dict)
    faces: list[Face] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])

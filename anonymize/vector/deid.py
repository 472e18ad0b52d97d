"""Structural de-identification of one image: ``DeI = Rasterize(PosOPE(Vectorize(OI)))`` (paper 001, Eq. 3).

Example:
    >>> import numpy as np
    >>> from anonymize.privacy.ope_keys import PAPER_KEY
    >>> from anonymize.vector.ope_svg import PositionCipher
    >>> img = np.zeros((32, 32, 3), np.uint8); img[8:24, 8:24] = (200, 30, 30)
    >>> r = deidentify(img, PositionCipher(PAPER_KEY), size=20, out_size=(64, 64), keep_vector=True)
    >>> r.dei.shape, r.vec.shape, r.n_paths > 0
    ((64, 64, 3), (64, 64, 3), True)
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from .ope_svg import PositionCipher
from .raster import rasterize

TRACERS = ("imagetracer", "vtracer")
RESIZE_FILTERS = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "nearest": Image.NEAREST, "lanczos": Image.LANCZOS}


@dataclass
class DeidResult:
    dei: np.ndarray
    n_paths: int
    timings: dict[str, float] = field(default_factory=dict)
    vec: np.ndarray | None = None  # Rasterize(Vectorize(OI)) without OPE, same render pipeline
    svg: str | None = None  # plain SVG (secret-adjacent: keep with the data owner)


def resize_square(img: np.ndarray, size: int, resample: str = "bicubic", grayscale: bool = False) -> np.ndarray:
    """Algorithm 1, lines 3-5: resize to ``size`` x ``size`` (aspect ratio not kept), optionally to grey."""
    if resample not in RESIZE_FILTERS:
        raise ValueError(f"resize filter must be one of {sorted(RESIZE_FILTERS)}, not {resample!r}")
    im = Image.fromarray(np.ascontiguousarray(img[..., :3]))
    if grayscale:
        im = im.convert("L").convert("RGB")
    if im.size != (size, size):
        im = im.resize((size, size), RESIZE_FILTERS[resample])
    return np.asarray(im, dtype=np.uint8)


def vectorize(img: np.ndarray, tracer: str = "imagetracer") -> tuple[str, int]:
    """Trace a uint8 RGB image into an SVG string; returns (svg, number of emitted paths)."""
    if tracer == "imagetracer":
        from .imagetracer import DEFAULT_OPTIONS, trace

        tr = trace(img)
        return tr.to_svg(DEFAULT_OPTIONS["strokewidth"], int(DEFAULT_OPTIONS["roundcoords"])), tr.n_paths
    if tracer == "vtracer":
        from .vtracer_backend import vtracer_svg

        return vtracer_svg(img)
    raise ValueError(f"tracer must be one of {TRACERS}, not {tracer!r}")


def deidentify(
    img: np.ndarray,
    cipher: PositionCipher,
    size: int = 50,
    out_size: tuple[int, int] = (224, 224),
    tracer: str = "imagetracer",
    render_scale: float = 1.0,
    resize_filter: str = "bicubic",
    grayscale: bool = False,
    keep_vector: bool = False,
    renderer: str = "resvg",
) -> DeidResult:
    """Resize to ``size``, trace, encrypt positions, render to ``out_size`` = (width, height)."""
    if size < 2:
        raise ValueError(f"size must be >= 2, got {size}")
    t0 = time.perf_counter()
    small = resize_square(img, size, resize_filter, grayscale)
    svg, n_paths = vectorize(small, tracer)
    t1 = time.perf_counter()
    enc = cipher.encrypt_svg(svg)
    t2 = time.perf_counter()
    dei = rasterize(enc, out_size, render_scale, renderer)
    t3 = time.perf_counter()
    res = DeidResult(dei=dei, n_paths=n_paths, timings={"trace_s": t1 - t0, "encrypt_s": t2 - t1, "render_s": t3 - t2})
    if keep_vector:
        res.vec = rasterize(svg, out_size, render_scale, renderer)
        res.svg = svg
    return res

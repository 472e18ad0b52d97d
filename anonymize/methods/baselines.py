"""Simple baselines: blur, pixelate, solid fill.

They apply to each detected face region (the box enlarged by
``ctx.mask_scale``, inside an ellipse) or, with ``ctx.region == "image"``,
to the whole image. Strong defaults: a blur sigma of 15% of the region size
and 8 blocks across for pixelation, which defeat casual recognition (see
``anonymize evaluate`` for what they leave to a recognizer).

Example:
    >>> import numpy as np
    >>> from pathlib import Path
    >>> from anonymize.types import ImageItem
    >>> from anonymize.methods.base import MethodContext
    >>> item = ImageItem(Path("a.png"), Path("a.png"), np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    >>> out = Pixelate({"blocks": 4})([item], MethodContext(region="image"))[0]
    >>> len(np.unique(out.pixels.reshape(-1, 3), axis=0)) <= 16
    True
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import cv2
import numpy as np

from ..errors import UsageError
from ..types import ImageItem
from .base import METHODS, MethodContext, MethodOutput, MethodSpec
from .params import Params, as_params, param

_SHAPE_HELP = "ellipse: only the ellipse inscribed in each region; box: the whole rectangle"


@dataclass(frozen=True)
class BlurParams(Params):
    sigma: float = param(0.15, "Gaussian sigma as a fraction of the region's larger side", gt=0, le=1)
    shape: str = param("ellipse", _SHAPE_HELP, choices=("ellipse", "box"))


@dataclass(frozen=True)
class PixelateParams(Params):
    blocks: int = param(8, "mosaic cells across the region's larger side", ge=1)
    shape: str = param("ellipse", _SHAPE_HELP, choices=("ellipse", "box"))


@dataclass(frozen=True)
class SolidParams(Params):
    color: tuple[int, ...] = param((0, 0, 0), "fill colour: R,G,B or one grey level", ge=0, le=255, type_text="R,G,B|grey")
    shape: str = param("ellipse", _SHAPE_HELP, choices=("ellipse", "box"))

    def check(self) -> None:
        if len(self.color) not in (1, 3):
            raise UsageError(f"--param color must be 'R,G,B' or one grey level, got {','.join(map(str, self.color))!r}")


def _regions(item: ImageItem, ctx: MethodContext) -> list[tuple[int, int, int, int]]:
    if ctx.region == "image":
        return [(0, 0, item.width, item.height)]
    return [f.scaled_box(ctx.mask_scale, item.width, item.height) for f in item.faces]


def _ellipse_mask(h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
    ry, rx = max(h / 2.0, 1.0), max(w / 2.0, 1.0)
    return (((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2) <= 1.0


class _RegionMethod(ABC):
    name = "base"
    params_class: type[Params] = Params

    def __init__(self, params: Params | Mapping[str, Any] | None = None) -> None:
        p: Any = as_params(self.params_class, params, method=self.name)  # this class's Params subclass
        self.params = p
        self.shape: str = p.shape

    @abstractmethod
    def transform(self, patch: np.ndarray) -> np.ndarray:
        """The protected version of one region (same shape)."""

    def __call__(self, items: Sequence[ImageItem], ctx: MethodContext) -> list[MethodOutput]:
        outs: list[MethodOutput] = []
        for item in items:
            px = item.pixels.copy()
            regions = [r for r in _regions(item, ctx) if r[2] > r[0] and r[3] > r[1]]
            for x0, y0, x1, y1 in regions:
                patch = px[y0:y1, x0:x1]
                new = self.transform(patch)
                if ctx.region == "image" or self.shape == "box":
                    px[y0:y1, x0:x1] = new
                else:
                    m = _ellipse_mask(y1 - y0, x1 - x0)
                    patch[m] = new[m]
            info = {"regions": len(regions), "region": ctx.region}
            if not regions:
                info["reason"] = "no face regions to protect"
            outs.append(MethodOutput(pixels=px, protected=bool(regions), info=info))
        return outs


class Blur(_RegionMethod):
    """Gaussian blur with sigma = ``sigma`` (fraction of the region's larger side, default 0.15)."""

    name = "blur"
    params_class = BlurParams

    def transform(self, patch: np.ndarray) -> np.ndarray:
        sigma = max(1.0, self.params.sigma * max(patch.shape[:2]))
        h, w = patch.shape[:2]
        factor = int(sigma // 4)
        if factor >= 2 and min(h, w) // factor >= 4:
            # Large sigma: blur a downsampled copy (sigma / factor) and upsample; same look, O(1) in sigma.
            small = cv2.resize(patch, (max(1, w // factor), max(1, h // factor)), interpolation=cv2.INTER_AREA)
            s = sigma / factor
            small = cv2.GaussianBlur(small, (0, 0), sigmaX=s, sigmaY=s, borderType=cv2.BORDER_REPLICATE)
            return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
        return cv2.GaussianBlur(patch, (0, 0), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_REPLICATE)


class Pixelate(_RegionMethod):
    """Mosaic with ``blocks`` cells across the region's larger side (default 8)."""

    name = "pixelate"
    params_class = PixelateParams

    def transform(self, patch: np.ndarray) -> np.ndarray:
        blocks = self.params.blocks
        h, w = patch.shape[:2]
        cell = max(1, int(np.ceil(max(h, w) / blocks)))
        sh, sw = max(1, int(np.ceil(h / cell))), max(1, int(np.ceil(w / cell)))
        small = cv2.resize(patch, (sw, sh), interpolation=cv2.INTER_AREA)
        return cv2.resize(small, (sw * cell, sh * cell), interpolation=cv2.INTER_NEAREST)[:h, :w]


class Solid(_RegionMethod):
    """Fill with one colour (``color``: 'R,G,B' or a grey level; default black)."""

    name = "solid"
    params_class = SolidParams

    def transform(self, patch: np.ndarray) -> np.ndarray:
        vals = list(self.params.color) * (3 if len(self.params.color) == 1 else 1)
        out = np.empty_like(patch)
        out[...] = np.asarray(vals, dtype=np.uint8)
        return out


for _cls, _summary in (
    (Blur, "Gaussian blur of face regions (baseline)"),
    (Pixelate, "mosaic of face regions (baseline)"),
    (Solid, "solid fill of face regions (baseline)"),
):
    METHODS.register(MethodSpec(name=_cls.name, summary=_summary, factory=_cls, params=_cls.params_class, needs_faces=True,
                                licence="MIT"))

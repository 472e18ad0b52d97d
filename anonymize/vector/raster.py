"""SVG -> uint8 RGB rasterisation on a white background (paper 001, step 3).

The paper ran ImageMagick ``convert -density 288 in.svg -resize 224x224! out.png``:
render supersampled (288 dpi on a 72 dpi base is 4x), then force the target size.
Here resvg (or cairosvg, ``renderer="cairosvg"``, when installed) renders the canvas at ``scale`` times its size and PIL's Lanczos
filter resizes to exactly ``(width, height)``, ignoring aspect ratio. ``scale=4``
mimics density 288 on a 72 dpi base but costs ~16x the pixels; the project
default ``scale=1`` renders the encrypted canvas 1:1 (455 px for size 50, i.e.
already ~2x supersampled for a 224 output); ``scale=0`` renders directly at the
target size. The render is never smaller than the target (a 50 px un-encrypted
canvas is drawn directly at 224 rather than upsampled). ``benchmarks/ope_cifar.py``
reports how much SSIM moves between these settings.

Example:
    >>> svg = ('<svg width="4" height="4" version="1.1" xmlns="http://www.w3.org/2000/svg">'
    ...        '<path fill="rgb(0,0,0)" d="M 0 0 L 2 0 L 2 4 L 0 4 Z " /></svg>')
    >>> img = rasterize(svg, (8, 8))
    >>> img.shape, int(img[4, 1, 0]) < 8, int(img[4, 6, 0]) > 247
    ((8, 8, 3), True, True)
"""
from __future__ import annotations

import io
import re

import numpy as np
from PIL import Image

_WH = re.compile(r'<svg\b[^>]*?\swidth="([^"]+)"[^>]*?\sheight="([^"]+)"', re.S)


def canvas_size(svg: str) -> tuple[float, float]:
    """The root ``width``/``height`` of an SVG string."""
    m = _WH.search(svg)
    if m is None:
        raise ValueError("SVG root has no width/height attributes")
    return float(m.group(1)), float(m.group(2))


RENDERERS = ("resvg", "cairosvg")


def _render_png(svg: str, rw: int, rh: int, renderer: str) -> bytes:
    if renderer == "resvg":
        import resvg_py

        return bytes(
            resvg_py.svg_to_bytes(svg_string=svg, background="#ffffff", width=rw, height=rh, skip_system_fonts=True)
        )
    if renderer == "cairosvg":
        try:
            import cairosvg
        except (ImportError, OSError) as exc:  # OSError: libcairo missing
            from ..errors import MethodUnavailable

            raise MethodUnavailable(f"renderer 'cairosvg' is unavailable ({exc}); use renderer 'resvg'") from None
        return cairosvg.svg2png(bytestring=svg.encode("utf-8"), output_width=rw, output_height=rh, background_color="white")
    raise ValueError(f"renderer must be one of {RENDERERS}, not {renderer!r}")


def rasterize(svg: str, size: tuple[int, int], scale: float = 1.0, renderer: str = "resvg") -> np.ndarray:
    """Render ``svg`` flattened on white and return an HxWx3 uint8 array of ``size`` = (width, height)."""
    tw, th = int(size[0]), int(size[1])
    if tw < 1 or th < 1:
        raise ValueError(f"raster size must be positive, got {size}")
    if scale and scale > 0:
        cw, ch = canvas_size(svg)
        # never render below the target: a small (un-encrypted) canvas is drawn at the target size
        rw, rh = max(tw, int(round(cw * scale))), max(th, int(round(ch * scale)))
    else:
        rw, rh = tw, th
    im = Image.open(io.BytesIO(_render_png(svg, rw, rh, renderer))).convert("RGB")
    if im.size != (tw, th):
        im = im.resize((tw, th), Image.LANCZOS)
    return np.asarray(im, dtype=np.uint8)

"""``vtracer`` as a fast, *non-faithful* alternative vectoriser for ``ope``.

vtracer (visioncortex) uses a different clustering and curve-fitting algorithm
than imagetracer.js, so results differ from the paper's. Its output is rewritten
into the same shape as the imagetracer SVG (absolute coordinates with each path's
``translate`` baked in, space-separated tokens rounded to 1 decimal, fill plus a
1-px stroke of the same colour), so position OPE and rendering are identical for
both tracers. Baking the translation matters: OPE is not additive, so
``E(tx + x) != E(tx) + E(x)``.

Example:
    >>> import numpy as np
    >>> img = np.zeros((8, 8, 3), np.uint8); img[2:6, 2:6] = 200
    >>> svg, n = vtracer_svg(img)
    >>> svg.startswith('<svg width="8" height="8"') and n >= 1
    True
"""
from __future__ import annotations

import re

import numpy as np

from .imagetracer import fmt

_PATH = re.compile(r"<path\b([^>]*)/?>", re.S)
_ATTR = re.compile(r'(\w[\w-]*)="([^"]*)"')
_TOK = re.compile(r"[A-Za-z]|[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")


def _bake(d: str, tx: float, ty: float) -> str:
    out: list[str] = []
    axis = 0
    for tok in _TOK.findall(d):
        if tok.isalpha():
            if tok != tok.upper():
                raise ValueError(f"vtracer emitted a relative command {tok!r}; only absolute ones are supported")
            out.append(tok)
            axis = 0
            continue
        v = float(tok) + (tx if axis == 0 else ty)
        out.append(fmt(v, 1))
        axis ^= 1
    return " ".join(out) + " "


def vtracer_svg(image: np.ndarray, **options: object) -> tuple[str, int]:
    """Trace an HxWx3 uint8 image with vtracer; return (SVG in imagetracer layout, number of paths)."""
    import vtracer

    img = np.asarray(image)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise ValueError(f"vtracer_svg expects uint8 HxWx3, got {img.dtype} {img.shape}")
    h, w = img.shape[:2]
    px = [(int(r), int(g), int(b), 255) for r, g, b in img.reshape(-1, 3)]
    kw = {"colormode": "color", "hierarchical": "stacked", "mode": "spline"}
    kw.update(options)  # type: ignore[arg-type]
    raw = vtracer.convert_pixels_to_svg(px, size=(w, h), **kw)
    parts = [f'<svg width="{w}" height="{h}" version="1.1" xmlns="http://www.w3.org/2000/svg" desc="Created with vtracer" >']
    n = 0
    for m in _PATH.finditer(raw):
        attrs = dict(_ATTR.findall(m.group(1)))
        tx = ty = 0.0
        tr = re.match(r"\s*translate\(\s*([-\d.eE+]+)[ ,]+([-\d.eE+]+)\s*\)", attrs.get("transform", ""))
        if tr:
            tx, ty = float(tr.group(1)), float(tr.group(2))
        fill = attrs.get("fill", "#000000").lstrip("#")
        r, g, b = (int(fill[i : i + 2], 16) for i in (0, 2, 4))
        col = f"rgb({r},{g},{b})"
        parts.append(
            f'<path fill="{col}" stroke="{col}" stroke-width="1" opacity="1" d="{_bake(attrs.get("d", ""), tx, ty)}" />'
        )
        n += 1
    parts.append("</svg>")
    return "".join(parts), n

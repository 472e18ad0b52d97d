"""``ope``: structural de-identification with order-preserving encryption (seed paper 001).

``DeI = Rasterize(PosOPE(Vectorize(OI)))`` (Ko et al., IEEE Access 2020):

1. resize to ``size`` x ``size`` (paper: 50, bicubic) and trace to SVG with the
   imagetracer.js 'default' algorithm (``tracer="imagetracer"``, a clean-room port
   that reproduces imagetracerjs 1.2.6 output) or ``tracer="vtracer"`` (fast,
   different algorithm, labelled non-faithful);
2. replace every path coordinate and the canvas width/height by ``E(v) - E(0)``
   with pyope (Boldyreva OPE), memoised per integer;
3. render on white and resize to ``out_size`` (paper: 224).

Params (all optional): ``tracer`` ('imagetracer'), ``size`` (50), ``out_size`` (224),
``key_file`` (else env ``ANONYMIZE_OPE_KEY``, else a generated default key file,
mode 0600), ``paper_key`` (False; the published key, for reproduction only),
``region`` ('image' | 'faces'; default: the run's ``ctx.region``), ``in_range``
((-9999, 9999)), ``out_range`` ((-99999, 99999)), ``interp`` ('round' | 'linear'),
``render_scale`` (1.0), ``resize_filter`` ('bicubic'), ``grayscale`` (False),
``renderer`` ('resvg' | 'cairosvg').

Output shape: with ``region='image'`` (the paper's setting) the output is
``out_size`` x ``out_size`` whatever the input size; with ``region='faces'`` each
face box (``Face.scaled_box(ctx.mask_scale)``) is de-identified and rendered back
at the box's own size, and the rest of the image is untouched.

Records get the tracer, a key fingerprint (never the key), the offset E(0),
per-stage timings and path counts. The warp is the same for every image under
one key, so learned inversion (ITN-Attack) is a real threat; see ``evaluate``.

Example:
    >>> import numpy as np
    >>> from pathlib import Path
    >>> from anonymize.types import ImageItem
    >>> from anonymize.methods.base import MethodContext
    >>> m = OpeMethod({"paper_key": True, "size": 20, "out_size": 64, "region": "image"})
    >>> img = np.zeros((32, 32, 3), np.uint8); img[8:24, 8:24] = (200, 30, 30)
    >>> out = m([ImageItem(Path("a.png"), Path("a.png"), img)], MethodContext())[0]
    >>> out.pixels.shape, out.protected, out.info["offset"]
    ((64, 64, 3), True, -796)
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..errors import UsageError
from ..privacy.ope_keys import OpeKey, load_key
from ..types import ImageItem
from ..vector.deid import RESIZE_FILTERS, TRACERS, deidentify
from ..vector.ope_svg import PositionCipher
from ..vector.raster import RENDERERS
from .base import METHODS, MethodContext, MethodOutput, MethodSpec

PAPER = "Ko, Choi, Shin, Liu, Choi: Structural Image De-Identification for Privacy-Preserving Deep Learning, IEEE Access 2020"

_KNOWN = {
    "tracer", "size", "out_size", "key_file", "paper_key", "region", "in_range", "out_range",
    "interp", "render_scale", "resize_filter", "grayscale", "renderer",
}


def _range(v: Any, name: str) -> tuple[int, int]:
    if isinstance(v, str):
        parts = v.replace(",", ":").split(":")
    else:
        parts = list(v)
    try:
        lo, hi = int(parts[0]), int(parts[1])
    except (ValueError, IndexError, TypeError):
        raise UsageError(f"ope {name} must be 'LO:HI' integers, got {v!r}") from None
    if lo >= hi:
        raise UsageError(f"ope {name} must have LO < HI, got {v!r}")
    return lo, hi


class OpeMethod:
    """Callable method object; one key and one memoised cipher for the whole run."""

    name = "ope"

    def __init__(self, params: dict[str, Any] | None = None) -> None:
        p = dict(params or {})
        unknown = sorted(set(p) - _KNOWN)
        if unknown:
            raise UsageError(f"unknown ope option(s): {', '.join(unknown)}; known: {', '.join(sorted(_KNOWN))}")
        self.tracer = str(p.get("tracer", "imagetracer"))
        if self.tracer not in TRACERS:
            raise UsageError(f"ope tracer must be one of {', '.join(TRACERS)}, not {self.tracer!r}")
        self.size = int(p.get("size", 50))
        self.out_size = int(p.get("out_size", 224))
        if self.size < 2 or self.out_size < 1:
            raise UsageError(f"ope size must be >= 2 and out_size >= 1 (got {self.size}, {self.out_size})")
        self.region = p.get("region")
        if self.region not in (None, "image", "faces"):
            raise UsageError(f"ope region must be 'image' or 'faces', not {self.region!r}")
        self.interp = str(p.get("interp", "round"))
        if self.interp not in ("round", "linear"):
            raise UsageError(f"ope interp must be 'round' or 'linear', not {self.interp!r}")
        self.render_scale = float(p.get("render_scale", 1.0))
        self.resize_filter = str(p.get("resize_filter", "bicubic"))
        if self.resize_filter not in RESIZE_FILTERS:
            raise UsageError(f"ope resize_filter must be one of {', '.join(RESIZE_FILTERS)}")
        self.grayscale = bool(p.get("grayscale", False))
        self.renderer = str(p.get("renderer", "resvg"))
        if self.renderer not in RENDERERS:
            raise UsageError(f"ope renderer must be one of {', '.join(RENDERERS)}, not {self.renderer!r}")
        in_range = _range(p.get("in_range", (-9999, 9999)), "in_range")
        out_range = _range(p.get("out_range", (-99999, 99999)), "out_range")
        if self.size > in_range[1]:
            raise UsageError(f"ope size {self.size} exceeds the OPE in_range upper bound {in_range[1]}")
        self.key: OpeKey = load_key(p.get("key_file"), paper=bool(p.get("paper_key", False)))
        try:
            self.cipher = PositionCipher(self.key.secret, in_range, out_range, self.interp)
        except ValueError as exc:
            raise UsageError(f"ope: {exc}") from None

    def _info_base(self) -> dict[str, Any]:
        return {
            "tracer": self.tracer,
            "tracer_faithful": self.tracer == "imagetracer",
            "vectorize_preset": "imagetracer 'default'" if self.tracer == "imagetracer" else "vtracer defaults (spline)",
            "key_fingerprint": self.key.fingerprint,
            "key_source": self.key.source,
            "offset": self.cipher.offset,
            "in_range": list(self.cipher.in_range),
            "out_range": list(self.cipher.out_range),
            "interp": self.interp,
            "size": self.size,
            "out_size": self.out_size,
            "render_scale": self.render_scale,
            "resize_filter": self.resize_filter,
            "grayscale": self.grayscale,
            "renderer": self.renderer,
        }

    def _deid(self, img: np.ndarray, out_wh: tuple[int, int]) -> tuple[np.ndarray, int, dict[str, float]]:
        r = deidentify(
            img, self.cipher, size=self.size, out_size=out_wh, tracer=self.tracer,
            render_scale=self.render_scale, resize_filter=self.resize_filter, grayscale=self.grayscale,
            renderer=self.renderer,
        )
        return r.dei, r.n_paths, r.timings

    def __call__(self, items: Sequence[ImageItem], ctx: MethodContext) -> list[MethodOutput]:
        region = self.region or ctx.region
        outs: list[MethodOutput] = []
        for item in items:
            info = self._info_base()
            info["region"] = region
            timings = {"trace_s": 0.0, "encrypt_s": 0.0, "render_s": 0.0}
            if region == "image":
                pix, n_paths, t = self._deid(item.pixels, (self.out_size, self.out_size))
                timings = t
                info.update(n_paths=n_paths, output_shape=list(pix.shape))
                protected = True
            else:
                pix = np.array(item.pixels, dtype=np.uint8, copy=True)
                n_paths, boxes = 0, []
                for face in item.faces:
                    x0, y0, x1, y1 = face.scaled_box(ctx.mask_scale, item.width, item.height)
                    if x1 - x0 < 2 or y1 - y0 < 2:
                        continue
                    crop = item.pixels[y0:y1, x0:x1]
                    dei, n, t = self._deid(crop, (x1 - x0, y1 - y0))
                    pix[y0:y1, x0:x1] = dei
                    n_paths += n
                    boxes.append([x0, y0, x1, y1])
                    for k in timings:
                        timings[k] += t[k]
                info.update(n_paths=n_paths, regions=boxes)
                protected = bool(boxes)
                if not boxes:
                    info["reason"] = "no face regions to protect"
            info["timings"] = {k: round(v, 5) for k, v in timings.items()}
            info["ope_cache_size"] = self.cipher.cache_size
            alpha = None
            if region == "image" and item.alpha is not None:
                # the output canvas is new (out_size x out_size): the source alpha no longer fits, so it is opaque
                alpha = np.full(pix.shape[:2], np.iinfo(item.alpha.dtype).max if item.alpha.dtype.kind in "ui" else 1.0,
                                dtype=item.alpha.dtype)
            outs.append(MethodOutput(pixels=pix, protected=protected, info=info, alpha=alpha))
        return outs


def _factory(params: dict[str, Any]) -> OpeMethod:
    return OpeMethod(params)


SPEC = MethodSpec(
    name="ope",
    summary="structural de-identification: vectorise, order-preserving-encrypt every position, rasterise (seed 001)",
    factory=_factory,
    needs_faces=True,
    licence="MIT",
    paper=PAPER,
)

METHODS.register(SPEC)

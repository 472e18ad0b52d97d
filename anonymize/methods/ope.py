"""``ope``: structural de-identification with order-preserving encryption (seed paper 001).

``DeI = Rasterize(PosOPE(Vectorize(OI)))`` (Ko et al., IEEE Access 2020):

1. resize to ``size`` x ``size`` (paper: 50, bicubic) and trace to SVG with the
   imagetracer.js 'default' algorithm (``tracer="imagetracer"``, a clean-room port
   that reproduces imagetracerjs 1.2.6 output) or ``tracer="vtracer"`` (fast,
   different algorithm, labelled non-faithful);
2. replace every path coordinate and the canvas width/height by ``E(v) - E(0)``
   with pyope (Boldyreva OPE), memoised per integer;
3. render on white and resize to ``out_size`` (paper: 224).

Parameters: :class:`OpeParams` (``protect --list-methods`` prints them).

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

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import UsageError
from ..privacy.ope_keys import OpeKey, load_key
from ..types import ImageItem
from ..vector.deid import RESIZE_FILTERS, TRACERS, deidentify
from ..vector.ope_svg import PositionCipher
from ..vector.raster import RENDERERS
from .base import METHODS, MethodContext, MethodOutput, MethodSpec
from .params import Params, as_params, param

PAPER = "Ko, Choi, Shin, Liu, Choi: Structural Image De-Identification for Privacy-Preserving Deep Learning, IEEE Access 2020"

def _range(v: Any) -> tuple[int, int]:
    """``"LO:HI"`` (or ``"LO,HI"``, or a pair) -> two integers with LO < HI."""
    parts = v.replace(",", ":").split(":") if isinstance(v, str) else list(v)
    try:
        lo, hi = int(parts[0]), int(parts[1])
    except (ValueError, IndexError, TypeError):
        raise ValueError(f"expects 'LO:HI' integers, got {v!r}") from None
    if len(parts) != 2 or lo >= hi:
        raise ValueError(f"expects 'LO:HI' integers with LO < HI, got {v!r}")
    return lo, hi


@dataclass(frozen=True)
class OpeParams(Params):
    tracer: str = param("imagetracer", "imagetracer: port of imagetracer.js 'default' (faithful); vtracer: fast, "
                        "different algorithm", choices=TRACERS)
    size: int = param(50, "trace at SIZE x SIZE pixels (paper: 50)", ge=2)
    out_size: int = param(224, "render at OUT_SIZE x OUT_SIZE (region=image; paper: 224)", ge=1)
    key_file: str | None = param(None, "secret key file (also --key-file); created with mode 0600 when absent",
                                 default_text="ANONYMIZE_OPE_KEY, else a generated default key file")
    paper_key: bool = param(False, "use the published key (reproduction only: no secrecy)")
    region: str | None = param(None, "image: the whole image (the paper); faces: each face box", choices=("image", "faces"),
                               default_text="--region")
    in_range: tuple[int, ...] = param((-9999, 9999), "OPE plaintext range LO:HI", convert=_range, type_text="LO:HI",
                                      default_text="-9999:9999")
    out_range: tuple[int, ...] = param((-99999, 99999), "OPE ciphertext range LO:HI", convert=_range, type_text="LO:HI",
                                       default_text="-99999:99999")
    interp: str = param("round", "how non-integer SVG coordinates are encrypted", choices=("round", "linear"))
    render_scale: float = param(1.0, "rasterise the encrypted SVG at this scale before resizing", gt=0)
    resize_filter: str = param("bicubic", "filter of both resizes", choices=tuple(RESIZE_FILTERS))
    grayscale: bool = param(False, "trace a grey version of the image")
    renderer: str = param("resvg", "SVG rasteriser", choices=RENDERERS)

    def check(self) -> None:
        if self.size > self.in_range[1]:
            raise UsageError(f"ope size {self.size} exceeds the OPE in_range upper bound {self.in_range[1]}")


class OpeMethod:
    """Callable method object; one key and one memoised cipher for the whole run."""

    name = "ope"

    def __init__(self, params: OpeParams | Mapping[str, Any] | None = None) -> None:
        p = self.params = as_params(OpeParams, params, method="ope")
        self.tracer, self.size, self.out_size, self.region = p.tracer, p.size, p.out_size, p.region
        self.interp, self.render_scale, self.resize_filter = p.interp, p.render_scale, p.resize_filter
        self.grayscale, self.renderer = p.grayscale, p.renderer
        self.key: OpeKey = load_key(p.key_file, paper=p.paper_key)
        try:
            self.cipher = PositionCipher(self.key.secret, (p.in_range[0], p.in_range[1]), (p.out_range[0], p.out_range[1]),
                                         self.interp)
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


SPEC = MethodSpec(
    name="ope",
    summary="structural de-identification: vectorise, order-preserving-encrypt every position, rasterise (seed 001)",
    factory=OpeMethod,
    params=OpeParams,
    needs_faces=True,
    licence="MIT",
    paper=PAPER,
)

METHODS.register(SPEC)

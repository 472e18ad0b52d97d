"""``itn``: seed 002's image transformation network (Ito, Kinoshita, Kiya).

A U-Net h trained with ``anonymize train itn`` (the service classifier's
cross-entropy minus alpha times a feature distance to the plain image) turns each
region into a visually protected image that the paired service model psi (stored
in the same weights file) still classifies. ``weights=FILE`` (also ``--weights``)
is required; a missing file exits 2 naming the train command.

``size``: ``trained`` (default; h runs at the training resolution, the result is
resized back to the region, as the service model expects) or ``native`` (h is
fully convolutional and runs at the region's own size, capped at ``max_side``) or
an integer N (square N x N).

Deterministic: the same image and weights give the same output. h is public by
design, so a paired inverse network is the threat to measure
(``anonymize evaluate --attack itn``); records say so and carry the weights'
sha256, the training data, alpha and the feature network used.

Parameters: :class:`ITNParams` (``protect --list-methods`` prints them).

Example:
    >>> ITN({})
    Traceback (most recent call last):
    ...
    anonymize.errors.UsageError: itn needs a trained network: --weights FILE (or --param weights=FILE); train one with `anonymize train itn --data DIR --out FILE`
"""
from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UsageError
from ..types import ImageItem
from .base import METHODS, MethodContext, MethodOutput, MethodSpec
from .params import Params, as_params, param

PAPER = ("Ito, Kinoshita, Kiya: Image Transformation Network for Privacy-Preserving Deep Neural Networks and Its "
         "Security Evaluation (seed 002)")


def _size(v: Any) -> str:
    s = str(v).strip().lower()
    if s in ("native", "trained") or (s.isdigit() and int(s) >= 16):
        return s
    raise ValueError(f"expects trained, native or an integer >= 16, got {v!r}")


@dataclass(frozen=True)
class ITNParams(Params):
    weights: str | None = param(None, "network file from `anonymize train itn` (also --weights); required",
                                default_text="none (required)")
    size: str = param("trained", "trained: run h at the training size; native: at the region's size; or N",
                      convert=_size, type_text="trained|native|N")
    max_side: int = param(1024, "cap of the longer side when size=native", ge=16)


class ITN:
    """The ``itn`` method (see the module docstring)."""

    name = "itn"

    def __init__(self, params: ITNParams | Mapping[str, Any] | None = None) -> None:
        from ..training.itn import build_unet, load_weights

        p = self.params = as_params(ITNParams, params, method="itn")
        if not p.weights:
            raise UsageError("itn needs a trained network: --weights FILE (or --param weights=FILE); "
                             "train one with `anonymize train itn --data DIR --out FILE`")
        meta = load_weights(p.weights)  # MethodUnavailable (exit 2, names the train command) when absent
        self.meta = {k: meta[k] for k in ("config", "metrics", "classes", "features", "data")}
        self.unet = build_unet(meta)
        self.trained_size = int(meta["config"]["size"])
        self.run_size: int | None = None if p.size == "native" else (self.trained_size if p.size == "trained" else int(p.size))
        self.max_side = p.max_side
        with open(p.weights, "rb") as fh:
            self.weights_sha256 = hashlib.sha256(fh.read()).hexdigest()
        self.weights_name = Path(str(p.weights)).name
        self._device: str | None = None

    def _region(self, crop: np.ndarray, device: str) -> tuple[np.ndarray, tuple[int, int]]:
        import cv2
        import torch

        from ..training.itn import quantise

        h, w = crop.shape[:2]
        if self.run_size is not None:
            rh = rw = self.run_size
        else:
            k = min(1.0, self.max_side / max(h, w))
            rh, rw = max(16, int(round(h * k))), max(16, int(round(w * k)))
        src = crop if (rh, rw) == (h, w) else cv2.resize(crop, (rw, rh), interpolation=cv2.INTER_AREA if rh < h else cv2.INTER_CUBIC)
        x = torch.from_numpy(np.ascontiguousarray(src)).permute(2, 0, 1)[None].float().div(255.0).to(device)
        with torch.no_grad():
            y = quantise(torch.sigmoid(self.unet(x)))[0].permute(1, 2, 0).cpu().numpy()
        if (rh, rw) != (h, w):
            y = cv2.resize(y, (w, h), interpolation=cv2.INTER_NEAREST)
        return y, (rh, rw)

    def _info(self, ctx: MethodContext, regions: int) -> dict[str, Any]:
        cfg, m = self.meta["config"], self.meta["metrics"]
        return {
            "region": ctx.region,
            "regions": regions,
            "weights": self.weights_name,
            "weights_sha256": self.weights_sha256,
            "training": {"alpha": cfg["alpha"], "size": cfg["size"], "width": cfg["width"], "feat_norm": cfg["feat_norm"],
                         "epochs_itn": cfg["epochs_itn"], "epochs_service": cfg["epochs_service"],
                         "data": self.meta["data"].get("name"), "images": self.meta["data"].get("images"),
                         "classes": len(self.meta["classes"])},
            "feature_network": {k: self.meta["features"].get(k) for k in ("name", "layer", "sha256", "verified")},
            "training_metrics": {k: m.get(k) for k in ("service_accuracy_plain", "service_accuracy_itn", "ssim_x_hx",
                                                        "psnr_x_hx", "test_images")},
            "deterministic": True,
            "guarantee": "none",
            "guarantee_reason": m.get("guarantee_note"),
        }

    def __call__(self, items: Sequence[ImageItem], ctx: MethodContext) -> list[MethodOutput]:
        if self._device != ctx.device:
            self.unet.to(ctx.device)
            self._device = ctx.device
        outs = []
        for item in items:
            if ctx.region == "image":
                regions = [(0, 0, item.width, item.height)]
            else:
                regions = [f.scaled_box(ctx.mask_scale, item.width, item.height) for f in item.faces]
            regions = [r for r in regions if r[2] > r[0] and r[3] > r[1]]
            px = item.pixels.copy()
            sizes = []
            for x0, y0, x1, y1 in regions:
                px[y0:y1, x0:x1], ran = self._region(item.pixels[y0:y1, x0:x1], ctx.device)
                sizes.append(list(ran))
            info = self._info(ctx, len(regions))
            info["h_input_sizes"] = sizes
            if not regions:
                info["reason"] = "no face regions to protect"
            outs.append(MethodOutput(pixels=px, protected=bool(regions), info=info))
        return outs


SPEC = MethodSpec(
    name="itn",
    summary="seed 002's image transformation network: a U-Net trained with `anonymize train itn` (service "
    "classifier CE minus alpha x feature distance) makes regions visually unrecognisable yet classifiable",
    factory=ITN,
    params=ITNParams,
    needs_faces=True,
    weights=(),
    licence="MIT",
    paper=PAPER,
)


METHODS.register(SPEC)

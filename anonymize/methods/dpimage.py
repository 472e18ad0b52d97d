"""``dpimage``: differentially private faces/images with honest privacy accounting.

Variants (``--param variant=...``):

- ``idpi`` (default; thesis ch. 4, Alg. 6): encode -> clip latent to the box
  [-C, C] -> add N(0, sigma^2) -> decode, T times (see
  :mod:`anonymize.privacy.idpi`). Backends: ``pca`` (offline orthonormal face
  basis, guarantee *rigorous*) and ``psp`` (pSp + StyleGAN2, needs
  ``fetch-weights psp-ffhq-encode``, guarantee *nominal*). Reports rho,
  epsilon (optimised over the Renyi order alpha), delta and alpha.
- ``pixel`` (DP-Pix, Fan 2018): b x b cell means + Laplace noise, pure
  epsilon-DP for images that differ in at most m pixels.
- ``xai`` (seed 000): a conversion network g trained with
  ``anonymize train dpimage-xai`` (``weights=FILE``) turns each region into
  Gaussian-noise-like pixels that a service model trained on g's outputs can
  still classify. Deterministic; the training (epsilon, delta) is reported as a
  training setting, ``guarantee: none`` (it is not an image-level DP release).
  ``size``: ``native`` (default; g is fully convolutional and runs at the
  region's own resolution, capped at ``max_side`` 1024) or ``trained`` / an
  integer (g runs at that square size, resized back).

With ``ctx.region == "faces"`` each face is aligned to a 64 px chip from its
5 landmarks, the mechanism runs on the chip, and the result is pasted back with
a feathered elliptical mask; with ``"image"`` the whole image is processed
(IDPI at the backend's chip size, resized back; DP-Pix at full resolution).

Parameters: :class:`DPImageParams` (``protect --list-methods`` prints them).

Example:
    >>> import numpy as np
    >>> from pathlib import Path
    >>> from anonymize.types import ImageItem
    >>> from anonymize.methods.base import MethodContext
    >>> item = ImageItem(Path("a.png"), Path("a.png"), np.full((32, 32, 3), 128, np.uint8))
    >>> out = DPImage({"variant": "pixel", "b": 8, "m": 1, "epsilon": 1.0})([item], MethodContext(region="image"))[0]
    >>> out.protected, out.info["epsilon"], out.info["guarantee"]
    (True, 1.0, 'rigorous')
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import MethodUnavailable, UsageError, WeightsMissing
from ..types import ImageItem
from .base import METHODS, MethodContext, MethodOutput, MethodSpec
from .params import Params, as_params, param

IDPI = {"variant": ("idpi",)}
PIXEL = {"variant": ("pixel",)}
XAI = {"variant": ("xai",)}


def _xai_size(v: Any) -> str:
    s = str(v).strip().lower()
    if s in ("native", "trained") or (s.isdigit() and int(s) >= 1):
        return s
    raise ValueError(f"expects native, trained or a positive integer, got {v!r}")


@dataclass(frozen=True)
class DPImageParams(Params):
    variant: str = param("idpi", "idpi: latent Gaussian mechanism; pixel: DP-Pix; xai: seed 000's trained generator",
                         choices=("idpi", "pixel", "xai"))
    backend: str = param("pca", "pca: shipped orthonormal face basis (rigorous); psp: pSp + StyleGAN2 (nominal)",
                         choices=("pca", "psp"), applies=IDPI)
    sigma: float = param(1.0, "Gaussian noise std in latent units, per iteration", gt=0, applies=IDPI)
    iterations: int = param(10, "T: encode-clip-noise-decode rounds", ge=1, applies=IDPI)
    clip: float | None = param(None, "latent clip box [-C, C]", gt=0, applies=IDPI,
                               default_text="the basis's per-component 99% box")
    delta: float = param(1e-8, "delta of the reported (epsilon, delta)", gt=0, lt=1, applies=IDPI)
    layers: str | None = param(None, "noise only these latent coordinates, e.g. 0-31,40 (the guarantee becomes nominal)",
                               applies=IDPI, default_text="all")
    basis: str | None = param(None, "a fitted PCA .npz instead of the shipped one", applies=IDPI,
                              default_text="shipped 64 px basis")
    b: int = param(16, "DP-Pix cell size in pixels", ge=1, applies=PIXEL)
    m: int = param(16, "DP-Pix neighbours differ in at most m pixels", ge=1, applies=PIXEL)
    epsilon: float = param(0.5, "DP-Pix epsilon (pure DP)", gt=0, applies=PIXEL)
    feather: float = param(0.15, "feather of the elliptical paste-back mask (fraction of the chip)", gt=0,
                           applies={"variant": ("idpi", "pixel")})
    identity: bool = param(True, "report the dlib-resnet distance between original and protected face",
                           applies={"variant": ("idpi", "pixel")})
    weights: str | None = param(None, "generator file from `anonymize train dpimage-xai` (also --weights)", applies=XAI)
    size: str = param("native", "native: run g at the region's resolution; trained: at the training size; or N",
                      convert=_xai_size, type_text="native|trained|N", applies=XAI)
    max_side: int = param(1024, "cap of the longer side when size=native", ge=1, applies=XAI)


class DPImage:
    """The ``dpimage`` method (see the module docstring)."""

    name = "dpimage"

    def __init__(self, params: DPImageParams | Mapping[str, Any] | None = None) -> None:
        p = self.params = as_params(DPImageParams, params, method="dpimage")
        self.variant = p.variant
        if self.variant == "xai":
            self._init_xai(p)
            return
        self.feather = p.feather
        self.identity = p.identity
        self._recognizer: Any = None
        if self.variant == "pixel":
            self.b, self.m, self.epsilon = p.b, p.m, p.epsilon
            self.backend = None
            return
        self.sigma, self.iterations, self.delta, self.clip = p.sigma, p.iterations, p.delta, p.clip
        from ..privacy import idpi

        if p.backend == "pca":
            self.backend = idpi.PCABackend(clip=self.clip, path=p.basis or None)
            self.layers = idpi.parse_layers(p.layers, self.backend.dims)
        else:
            self.backend = idpi.PSPBackend(clip=self.clip)  # raises WeightsMissing until fetched
            self.layers = idpi.parse_layers(p.layers, 18, group=512, one_based=True)  # pragma: no cover

    def _init_xai(self, p: DPImageParams) -> None:
        from ..training.dpimage_xai import build_generator, load_weights

        weights = p.weights
        if not weights:
            raise UsageError(
                "dpimage variant xai needs a trained generator: --weights FILE (or --param weights=FILE); "
                "train one with `anonymize train dpimage-xai --data DIR --out FILE`"
            )
        meta = load_weights(str(weights))
        self.xai_meta = {k: meta[k] for k in ("config", "metrics", "classes")}
        self.generator = build_generator(meta)
        self.trained_size = int(meta["config"]["size"])
        if p.size == "native":
            self.xai_size: int | None = None
        elif p.size == "trained":
            self.xai_size = self.trained_size
        else:
            self.xai_size = int(p.size)
        self.max_side = p.max_side
        import hashlib

        with open(weights, "rb") as fh:
            self.weights_sha256 = hashlib.sha256(fh.read()).hexdigest()
        self.weights_name = Path(str(weights)).name
        self._device: str | None = None

    def _xai_region(self, crop: np.ndarray, device: str) -> tuple[np.ndarray, tuple[int, int]]:
        """g on one uint8 RGB region; returns the same-sized uint8 result and the size g ran at."""
        import cv2
        import torch

        from ..training.dpimage_xai import to_uint8

        h, w = crop.shape[:2]
        if self.xai_size is not None:
            rh = rw = self.xai_size
        else:
            k = min(1.0, self.max_side / max(h, w))
            rh, rw = max(8, int(round(h * k))), max(8, int(round(w * k)))
        if self.generator.arch == "code":
            rh, rw = -(-rh // 4) * 4, -(-rw // 4) * 4
        src = crop if (rh, rw) == (h, w) else cv2.resize(crop, (rw, rh), interpolation=cv2.INTER_CUBIC if rh > h else cv2.INTER_AREA)
        x = torch.from_numpy(np.array(src)).permute(2, 0, 1)[None].float().div(127.5).sub(1.0).to(device)
        with torch.no_grad():
            y = to_uint8(self.generator(x))[0].permute(1, 2, 0).cpu().numpy()
        if (rh, rw) != (h, w):
            y = cv2.resize(y, (w, h), interpolation=cv2.INTER_NEAREST)
        return y, (rh, rw)

    def _xai(self, item: ImageItem, ctx: MethodContext) -> MethodOutput:
        if self._device != ctx.device:
            self.generator.to(ctx.device)
            self._device = ctx.device
        px = item.pixels.copy()
        if ctx.region == "image":
            regions = [(0, 0, item.width, item.height)]
        else:
            regions = [f.scaled_box(ctx.mask_scale, item.width, item.height) for f in item.faces]
        regions = [r for r in regions if r[2] > r[0] and r[3] > r[1]]
        cfg = self.xai_meta["config"]
        info: dict[str, Any] = {
            "variant": "xai",
            "region": ctx.region,
            "regions": len(regions),
            "weights": self.weights_name,
            "weights_sha256": self.weights_sha256,
            "generator": cfg["generator"],
            "exp_loss": cfg["exp_loss"],
            "training": {k: cfg[k] for k in ("sigma", "epsilon", "delta", "sensitivity", "dp_calibration", "gan_loss", "size")},
            "training_metrics": {k: self.xai_meta["metrics"].get(k) for k in
                                 ("explainer_accuracy", "service_accuracy_on_g", "ssim_x_gx", "ssim_x_noise")},
            "guarantee": "none",
            "guarantee_reason": "g(x) is deterministic: epsilon/delta were the noise settings of the explanation "
            "loss during training (seed 000), not a differential-privacy guarantee of this image",
            "deterministic": True,
        }
        sizes = []
        for x0, y0, x1, y1 in regions:
            px[y0:y1, x0:x1], ran = self._xai_region(item.pixels[y0:y1, x0:x1], ctx.device)
            sizes.append(list(ran))
        info["g_input_sizes"] = sizes
        if not regions:
            info["reason"] = "no face regions to protect"
        return MethodOutput(pixels=px, protected=bool(regions), info=info)

    # ------------------------------------------------------------------ helpers

    def _identity(self, before: np.ndarray, after: np.ndarray, boxes: list[tuple[float, ...]]) -> list[dict[str, Any]] | str:
        """dlib-resnet distance between the original and protected face (same box) per face."""
        if not self.identity or not boxes:
            return "not computed"
        try:
            import torch

            from ..faces.alignments import extract_chips
            from ..faces.recognize import get_recognizer

            if self._recognizer is None:
                self._recognizer = get_recognizer("dlib-resnet")
            rec = self._recognizer
            a = extract_chips(rec.alignment, before, boxes)
            b = extract_chips(rec.alignment, after, boxes)
            with torch.no_grad():
                da = rec.descriptor(torch.from_numpy(a).permute(0, 3, 1, 2).float() / 255.0)
                db = rec.descriptor(torch.from_numpy(b).permute(0, 3, 1, 2).float() / 255.0)
                d = rec.distance(da, db)
            return [
                {"recognizer": "dlib-resnet", "distance": round(float(v), 4), "threshold": float(rec.threshold),
                 "same_person": bool(float(v) < float(rec.threshold))}
                for v in d
            ]
        except (WeightsMissing, MethodUnavailable, ImportError) as exc:
            return f"unavailable: {exc}"

    def _idpi_info(self, rep: Any) -> dict[str, Any]:
        be = self.backend
        subset = self.layers is not None
        guarantee = be.guarantee if not subset else "nominal"
        reason = be.guarantee_reason
        if subset:
            reason = ("noise on a latent subset: the rest of the latent code is released exactly, so the epsilon "
                      "holds only for the perturbed sub-vector, not for the image (backend: " + reason + ")")
        d = rep.to_dict()
        return {
            "variant": "idpi",
            "backend": be.name,
            "epsilon": d["epsilon"],
            "delta": d["delta"],
            "rho": d["rho"],
            "alpha": d["alpha"],
            "sigma": d["sigma"],
            "iterations": d["iterations"],
            "sensitivity": d["sensitivity"],
            "latent_dims": int(be.dims),
            "noised_dims": int(be.dims if not subset else self.layers.sum()),
            "clip": "per-component 99% box of the basis" if self.clip is None else float(self.clip),
            "layers_subset": subset,
            "guarantee": guarantee,
            "guarantee_reason": reason,
            "mechanism": d["mechanism"],
            "notes": d["notes"],
            "basis_sha256": getattr(be, "sha256", None),
        }

    # ------------------------------------------------------------------ variants

    def _pixel(self, item: ImageItem, ctx: MethodContext, rng: np.random.Generator) -> MethodOutput:
        from ..privacy.idpi import dp_pix

        px = item.pixels.copy()
        if ctx.region == "image":
            regions = [(0, 0, item.width, item.height)]
        else:
            regions = [f.scaled_box(ctx.mask_scale, item.width, item.height) for f in item.faces]
        regions = [r for r in regions if r[2] > r[0] and r[3] > r[1]]
        info: dict[str, Any] = {"variant": "pixel", "backend": "dp-pix", "region": ctx.region, "regions": len(regions)}
        for x0, y0, x1, y1 in regions:
            px[y0:y1, x0:x1], pinfo = dp_pix(px[y0:y1, x0:x1], b=self.b, m=self.m, epsilon=self.epsilon, rng=rng)
            info.update(pinfo)
        if not regions:
            info["reason"] = "no face regions to protect"
        elif ctx.region != "image":
            info["neighbouring"] += "; per face box (enlarged by mask_scale); separate faces compose"
            info["identity"] = self._identity(item.pixels, px, [f.box for f in item.faces])
        return MethodOutput(pixels=px, protected=bool(regions), info=info)

    def _idpi_image(self, item: ImageItem, rng: np.random.Generator) -> MethodOutput:
        import cv2

        from ..privacy.idpi import run_idpi

        s = self.backend.size
        small = cv2.resize(item.pixels, (s, s), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0
        out, rep = run_idpi(self.backend, small.reshape(1, -1), sigma=self.sigma, iterations=self.iterations,
                            delta=self.delta, rng=rng, layers=self.layers)
        img = np.clip(np.rint(out.reshape(s, s, 3) * 255.0), 0, 255).astype(np.uint8)
        px = cv2.resize(img, (item.width, item.height), interpolation=cv2.INTER_LINEAR)
        info = self._idpi_info(rep)
        info.update(region="image", regions=1,
                    neighbouring="any two images of the same size (whole image, resized to the backend's "
                    f"{s}x{s} input); only the image size is released exactly")
        return MethodOutput(pixels=px, protected=True, info=info)

    def _idpi_faces(self, item: ImageItem, rng: np.random.Generator) -> MethodOutput:
        import torch

        from ..faces.align import crop_mask, paste_back, warp_faces
        from ..privacy.idpi import chip_transform, run_idpi

        s = self.backend.size
        faces = [f for f in item.faces if f.landmarks5 is not None]
        skipped = len(item.faces) - len(faces)
        info: dict[str, Any] = {"region": "faces", "regions": len(faces)}
        if not faces:
            info["reason"] = "no face with 5 landmarks to align" if item.faces else "no face regions to protect"
            return MethodOutput(pixels=item.pixels.copy(), protected=False, info=info)
        M = np.stack([chip_transform(f.landmarks5, s) for f in faces])
        img = torch.from_numpy(np.array(item.pixels, copy=True)).permute(2, 0, 1)[None].float() / 255.0
        with torch.no_grad():
            chips = warp_faces(img, M, s)  # (K, 3, s, s)
            x = chips.permute(0, 2, 3, 1).reshape(len(faces), -1).numpy()
            out, rep = run_idpi(self.backend, x, sigma=self.sigma, iterations=self.iterations,
                                delta=self.delta, rng=rng, layers=self.layers)
            crops = torch.from_numpy(out.reshape(len(faces), s, s, 3)).permute(0, 3, 1, 2).float()
            mask = crop_mask(s, self.feather, "ellipse")
            pasted = paste_back(img, crops, M, mask=mask)
        px = np.clip(np.rint(pasted[0].permute(1, 2, 0).numpy() * 255.0), 0, 255).astype(np.uint8)
        info.update(self._idpi_info(rep))
        info["neighbouring"] = (
            "per face: two photos with the same face alignment (5 landmarks) that agree everywhere except inside "
            "the aligned chip's inner ellipse, where the feathered paste mask is 1; pixels outside it (including "
            f"the feathered rim, which blends in the original) are released unchanged; {len(faces)} face(s), "
            "each its own mechanism run with independent noise (overlapping faces compose)"
        )
        info["identity"] = self._identity(item.pixels, px, [f.box for f in faces])
        if skipped:
            info["reason"] = f"{skipped} face(s) without landmarks were not protected"
        return MethodOutput(pixels=px, protected=skipped == 0, info=info)

    def __call__(self, items: Sequence[ImageItem], ctx: MethodContext) -> list[MethodOutput]:
        outs: list[MethodOutput] = []
        for item in items:
            if self.variant == "xai":
                outs.append(self._xai(item, ctx))
                continue
            rng = ctx.generator_for(item)
            if self.variant == "pixel":
                outs.append(self._pixel(item, ctx, rng))
            elif ctx.region == "image":
                outs.append(self._idpi_image(item, rng))
            else:
                outs.append(self._idpi_faces(item, rng))
        return outs


SPEC = MethodSpec(
    name="dpimage",
    summary="differentially private images: IDPI (encode-clip-noise-decode, pca|psp backend) with RDP "
    "accounting, DP-Pix (variant=pixel), or seed 000's trained noise generator (variant=xai)",
    factory=DPImage,
    params=DPImageParams,
    needs_faces=True,
    weights=(),
    licence="MIT",
    paper="thesis ch. 4 (IDPI); Fan, DBSec 2018 (DP-Pix); Kim et al., Sensors 2024 (seed 000, xai)",
)


METHODS.register(SPEC)

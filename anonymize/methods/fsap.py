"""FSAP (thesis ch. 5): protect every detected face by a sign-step perturbation of its pSp W+ code.

Per face:

1. FFHQ-align a 256x256 crop from the 68 dlib landmarks (``face.landmarks68``,
   else :func:`anonymize.faces.detect.dlib_shape68`), scaled to [-1, 1].
2. ``W = f_E(x)`` with the pSp encoder (``latent_avg`` added).
3. Algorithm 7 (:mod:`anonymize.methods.fsap_core`) with ArcFace IR-SE50 on
   pSp's ID crop as ``f_I`` (cosine distance), and MSE, LPIPS-Alex and 1-SSIM
   as the three separately-signed attribute losses.
4. Beyond the thesis: paste the synthesised crop back into the photo with a
   feathered elliptical mask (``crop_only=True`` outputs the aligned crops
   instead, side by side). The identity distance is measured again on the
   written (pasted, 8-bit) face; a face counts as protected only when both the
   crop and the pasted face exceed ``tau``.

Parameters: :class:`FSAPParams` (``protect --list-methods`` prints them); ``backend`` may
also be an :class:`FSAPBackend` object (tests, Python API).

Example:
    >>> from anonymize.methods.base import METHODS
    >>> METHODS.get("fsap").weights[:2]
    ('psp-ffhq-encode', 'arcface-ir-se50')
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import UsageError
from ..types import Face, ImageItem
from .base import METHODS, MethodContext, MethodOutput, MethodSpec
from .face_common import check_method_weights, face_landmarks68, image_to_tensor
from .fsap_core import PRESETS, FSAPConfig, FSAPResult, config_from_params, run_fsap
from .params import Params, as_params, param

WEIGHTS = ("psp-ffhq-encode", "arcface-ir-se50", "alexnet-lpips", "lpips-alex-linear")
CROP = 256

__all__ = ["FSAP", "FSAPBackend", "FSAPParams", "WEIGHTS", "build_lpips", "load_psp_backend", "attribute_losses"]


@dataclass
class FSAPBackend:
    """The networks FSAP needs, as callables on 256x256 crops in [-1, 1].

    ``id_embed(x, lm68_crop)`` gives ``f_I`` descriptors (``lm68_crop``: the face's
    68 landmarks in crop pixels, for recognisers that need their own chip);
    ``id_metric`` is ``cosine`` (thesis eq. 5.3) or ``euclidean``. ``lpips`` is
    ``None`` when no LPIPS network is used (then only MSE and 1-SSIM are).
    ``test_configuration`` marks backends that are not the thesis networks.
    """

    name: str
    encode: Callable[[Tensor], Tensor]
    decode: Callable[[Tensor], Tensor]
    id_embed: Callable[[Tensor, Tensor], Tensor]
    id_metric: str = "cosine"
    lpips: Callable[[Tensor, Tensor], Tensor] | None = None
    attacked_models: tuple[str, ...] = ()
    test_configuration: bool = False
    note: str = ""

    def id_distance(self, a: Tensor, b: Tensor) -> Tensor:
        if self.id_metric == "cosine":
            return 1.0 - F.cosine_similarity(a.flatten(1), b.flatten(1), dim=1).mean()
        if self.id_metric == "euclidean":
            return (a - b).flatten(1).norm(dim=1).mean()
        raise UsageError(f"fsap: unknown id_metric {self.id_metric!r}")


@dataclass(frozen=True)
class FSAPParams(Params):
    preset: str = param("medium", "medium: the thesis's settings; low/high: weaker/stronger (extrapolated)",
                        choices=tuple(PRESETS))
    lambda_i: float | None = param(None, "identity step size in W+", gt=0, default_text="preset (medium: 0.02)")
    lambda_p: float | None = param(None, "attribute step size in W+", ge=0, default_text="preset (medium: 0.008)")
    n_iter: int = param(FSAPConfig.n_iter, "maximum iterations", ge=1)
    k: int = param(FSAPConfig.k, "attribute steps per identity step", ge=0)
    tau: float | None = param(None, "ArcFace identity distance (1 - cos) that counts as protected",
                              default_text="preset (medium: 0.8)")
    literal_alg7: bool = param(False, "the stop test exactly as printed in Algorithm 7 (see fsap_core)")
    use_attr: bool = param(True, "false: the 'ID loss solely' ablation (no attribute steps)")
    max_delta: float | None = param(None, "clamp |W' - W| element-wise (extension; off by default)", gt=0)
    seed: int | None = param(None, "seed of the method's own randomness", default_text="--seed")
    crop_only: bool = param(False, "write the aligned 256 px crops side by side instead of pasting back")
    feather: float = param(0.15, "feather of the elliptical paste-back mask (fraction of the crop)", ge=0, le=1)
    backend: str | FSAPBackend = param("psp", "networks: psp (the thesis's; the Python API may pass an FSAPBackend)",
                                       choices=("psp",))


# --------------------------------------------------------------------------- networks


def build_lpips(alexnet_path: str | Path | None, linear_path: str | Path | None,
                device: str | torch.device = "cpu") -> torch.nn.Module:
    """LPIPS v0.1 with the AlexNet trunk, from local files only (never downloads).

    ``alexnet_path``: torchvision's ImageNet AlexNet state dict (``features.*`` used);
    ``linear_path``: the LPIPS linear heads (``alex.pth``). ``None`` leaves that part
    randomly initialised (cost benchmarks only).
    """
    import lpips

    net = lpips.LPIPS(pretrained=False, net="alex", pnet_rand=True, verbose=False)
    if alexnet_path is not None:
        sd = torch.load(alexnet_path, map_location="cpu", weights_only=True)
        slices = {i: s for s, r in enumerate(((0, 2), (2, 5), (5, 8), (8, 10), (10, 12)), 1) for i in range(*r)}
        mapped = {}
        for key, val in sd.items():
            parts = key.split(".")
            if parts[0] == "features" and int(parts[1]) in slices:
                mapped[f"slice{slices[int(parts[1])]}.{parts[1]}.{parts[2]}"] = val
        net.net.load_state_dict(mapped, strict=True)
    if linear_path is not None:
        lin = torch.load(linear_path, map_location="cpu", weights_only=True)
        res = net.load_state_dict(lin, strict=False)
        bad = [k for k in res.missing_keys if k.startswith("lin")]
        if bad or res.unexpected_keys:
            raise UsageError(f"LPIPS linear heads {linear_path}: missing {bad}, unexpected {res.unexpected_keys}")
    return net.eval().requires_grad_(False).to(device)


def load_psp_backend(device: str | torch.device = "cpu") -> FSAPBackend:
    """The thesis networks: pSp FFHQ encoder + StyleGAN2-1024 decoder, ArcFace IR-SE50, LPIPS-Alex."""
    from ..nets.irse import IRSEBackbone, psp_id_crop
    from ..nets.psp import PSP

    paths = check_weights()
    psp = PSP.from_checkpoint(paths["psp-ffhq-encode"]).eval().requires_grad_(False).to(device)
    arc = IRSEBackbone.from_checkpoint(paths["arcface-ir-se50"]).eval().requires_grad_(False).to(device)
    lp = build_lpips(paths["alexnet-lpips"], paths["lpips-alex-linear"], device)

    def decode(w: Tensor) -> Tensor:
        return psp.decode(w, resize=True, randomize_noise=False)

    return FSAPBackend(
        name="psp-ffhq-encode+arcface-ir-se50+lpips-alex",
        encode=psp.encode,
        decode=decode,
        id_embed=lambda x, lm: arc(psp_id_crop(x)),
        id_metric="cosine",
        lpips=lambda a, b: lp(a, b, normalize=False).mean(),
        attacked_models=("arcface-ir-se50",),
    )


def check_weights() -> dict[str, Path]:
    """Local paths of every weights file this method needs, or WeightsMissing naming the fetch command."""
    return check_method_weights(WEIGHTS, "fsap")


def attribute_losses(x: Tensor, lpips_fn: Callable[[Tensor, Tensor], Tensor] | None) -> dict[str, Callable[[Tensor], Tensor]]:
    """The thesis's attribute losses against the fixed original ``x`` (both in [-1, 1]):
    ``mse``, ``lpips`` (when given) and ``ssim`` = 1 - SSIM (Gaussian window 11, sigma 1.5, on [0, 1])."""
    from pytorch_msssim import ssim

    x = x.detach()
    x01 = (x + 1) / 2
    out: dict[str, Callable[[Tensor], Tensor]] = {"mse": lambda xh: F.mse_loss(xh, x)}
    if lpips_fn is not None:
        out["lpips"] = lambda xh: lpips_fn(xh, x)
    out["ssim"] = lambda xh: 1.0 - ssim(((xh + 1) / 2).clamp(0, 1), x01, data_range=1.0, win_size=11, win_sigma=1.5)
    return out


# --------------------------------------------------------------------------- the method




def _to_uint8(x01: Tensor) -> np.ndarray:
    return (x01[0].clamp(0, 1) * 255.0).round().byte().permute(1, 2, 0).cpu().numpy()


class FSAP:
    """The ``fsap`` method (see the module docstring)."""

    name = "fsap"

    def __init__(self, params: FSAPParams | Mapping[str, Any] | None = None) -> None:
        p = self.params = as_params(FSAPParams, params, method="fsap")
        self.config: FSAPConfig = config_from_params(p)
        self.crop_only = p.crop_only
        self.feather = p.feather
        self._backend: FSAPBackend | None = p.backend if isinstance(p.backend, FSAPBackend) else None
        if self._backend is None:
            check_weights()  # before anything is written: exit 2 with the fetch command

    def backend(self, device: str) -> FSAPBackend:
        if self._backend is None:
            self._backend = load_psp_backend(device)
        return self._backend

    def __call__(self, items: Sequence[ImageItem], ctx: MethodContext) -> list[MethodOutput]:
        be = self.backend(ctx.device)
        cfg = self.config if self.params.seed is not None else replace(self.config, seed=ctx.seed)
        return [self._one(item, be, cfg, torch.device(ctx.device)) for item in items]

    def _one(self, item: ImageItem, be: FSAPBackend, cfg: FSAPConfig, device: torch.device) -> MethodOutput:
        from ..faces.align import (
            apply_affine,
            crop_mask,
            ffhq_transform,
            paste_back,
            warp_faces,
        )

        info: dict[str, Any] = {
            "backend": be.name, "attacked_models": list(be.attacked_models), "config": cfg.to_dict(),
            "alignment": f"ffhq{CROP}", "output": "aligned crops" if self.crop_only else
            "paste-back with feathered elliptical mask (beyond thesis)", "faces": [],
        }
        if be.test_configuration:
            info["test_configuration"] = be.note or "test networks, not the thesis's pSp/ArcFace: no privacy claim"
        if not item.faces:
            info["reason"] = "no faces to protect"
            return MethodOutput(pixels=item.pixels.copy(), protected=False, info=info)
        img = image_to_tensor(item.pixels, device)
        mats, crops_out, all_ok = [], [], True
        for face in item.faces:
            lm68 = face_landmarks68(item.pixels, face)
            M = ffhq_transform(lm68, CROP)
            lm_crop = torch.as_tensor(np.asarray(apply_affine(M, lm68)), dtype=torch.float32, device=device)
            with torch.no_grad():
                x = warp_faces(img, M, CROP) * 2 - 1
                w0 = be.encode(x)
                target = be.id_embed(x, lm_crop).detach()

            def id_loss(xh: Tensor, _t: Tensor = target, _lm: Tensor = lm_crop) -> Tensor:
                return be.id_distance(be.id_embed(xh, _lm), _t)

            res = run_fsap(w0, be.decode, id_loss, attribute_losses(x, be.lpips), cfg)
            out01 = ((res.image.clamp(-1, 1) + 1) / 2).detach()
            mats.append(M)
            crops_out.append(out01)
            info["faces"].append(self._face_info(res, face))
        if self.crop_only:
            pixels = np.concatenate([_to_uint8(c) for c in crops_out], axis=1)
            written = [torch.from_numpy(_to_uint8(c)).permute(2, 0, 1).unsqueeze(0).float().to(device) / 255
                       for c in crops_out]
        else:
            mask = crop_mask(CROP, self.feather, "ellipse", device=device)
            with torch.no_grad():
                pasted = paste_back(img, torch.cat(crops_out), np.stack(mats), mask=mask)
            pixels = _to_uint8(pasted)
            back = image_to_tensor(pixels, device)
            with torch.no_grad():
                written = [warp_faces(back, M, CROP) for M in mats]
        # Measure the identity distance again on what is actually written (8-bit, pasted).
        for fi, face, M, w01 in zip(info["faces"], item.faces, mats, written):
            lm68 = face_landmarks68(item.pixels, face)
            lm_crop = torch.as_tensor(np.asarray(apply_affine(M, lm68)), dtype=torch.float32, device=device)
            with torch.no_grad():
                x = warp_faces(img, M, CROP) * 2 - 1
                d = be.id_distance(be.id_embed(w01 * 2 - 1, lm_crop), be.id_embed(x, lm_crop))
            fi["id_loss_written"] = round(float(d), 6)
            fi["protected"] = bool(fi["reached_tau"] and float(d) > cfg.tau)
            all_ok = all_ok and fi["protected"]
        info["iterations"] = [f["iterations"] for f in info["faces"]]
        if not all_ok:
            info["reason"] = "tau was not reached for every face (see faces[].reached_tau / id_loss_written)"
        return MethodOutput(pixels=pixels, protected=all_ok, info=info)

    @staticmethod
    def _face_info(res: FSAPResult, face: Face) -> dict[str, Any]:
        return {
            "box": [round(float(v), 2) for v in face.box],
            "reached_tau": res.protected,
            "iterations": res.iterations,
            "id_loss": round(res.id_loss, 6),
            "final_losses": {"id_loss": round(res.id_loss, 6), **{k: round(v, 6) for k, v in res.attr_losses.items()}},
            "max_abs_delta": round(float(res.trace[-1]["max_abs_delta"]), 6),
            "trace": [{k: (round(v, 6) if isinstance(v, float) else v) for k, v in row.items()} for row in res.trace],
        }






SPEC = MethodSpec(
    name="fsap",
    summary="feature-space adversarial perturbation of pSp W+ codes against ArcFace (thesis ch. 5, Alg. 7)",
    factory=FSAP,
    params=FSAPParams,
    needs_faces=True,
    weights=WEIGHTS,
    licence="code MIT; weights: pSp/StyleGAN2 FFHQ (NVIDIA non-commercial), ArcFace (MS1M, research only)",
    paper="Xue et al., Face image de-identification by feature space adversarial perturbation, CCPE 35(5) e7554, 2023",
)


METHODS.register(SPEC)

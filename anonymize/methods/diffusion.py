"""Diffusion De-ID (thesis ch. 6): regenerate every detected face from an optimised DiffAE semantic code.

Per batch of images:

1. FFHQ-align each face at 256x256 from its 68 dlib landmarks (``face.landmarks68``,
   else :func:`anonymize.faces.detect.dlib_shape68`), resized to the DiffAE resolution, [-1, 1].
2. :mod:`anonymize.methods.diffusion_core`: synthetic pool (latent DDIM, cached on disk under
   ``cache_dir()/diffusion-pools``), FaRL nearest-synthetic pairing, optimisation of the
   semantic code with x_T fixed (ArcFace IR-SE50 ``|cos|`` identity loss, FaRL patch-token L1
   attribute loss), IIS (default) or IRS. Faces of the batch are optimised together.
3. Beyond the thesis (which releases aligned crops): paste the regenerated crop back with a
   feathered elliptical mask (``crop_only=true`` outputs the aligned crops side by side).
   The identity distance (ArcFace: 1 - cos) is measured again on the written 8-bit face;
   a face is protected only when both the crop and the written face exceed ``margin``.

Parameters: :class:`DiffusionParams` (``protect --list-methods`` prints them); ``backend`` may
also be a :class:`DiffusionNets` object (tests, Python API).

Example:
    >>> from anonymize.methods.base import METHODS
    >>> METHODS.get("diffusion").weights[0]
    'diffae-ffhq256-autoenc'
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..types import ImageItem
from .base import METHODS, MethodContext, MethodOutput, MethodSpec
from .diffusion_core import (
    DiffusionConfig,
    DiffusionNets,
    SyntheticPool,
    _init_alpha,
    config_from_params,
    fingerprint_module,
    load_or_generate_pool,
    run_deid,
)
from .face_common import check_method_weights, face_landmarks68, image_to_tensor
from .params import Params, as_params, param

WEIGHTS = ("diffae-ffhq256-autoenc", "diffae-ffhq256-latent", "farl-vitb16", "arcface-ir-se50")
CROP = 256
ARCFACE_MARGIN = 0.8

__all__ = ["SPEC", "WEIGHTS", "DiffusionDeID", "DiffusionParams", "check_weights", "load_backend"]

def _init(v: Any) -> str:
    s = str(v).strip().lower()
    _init_alpha(s)  # raises UsageError with the accepted forms
    return s


@dataclass(frozen=True)
class DiffusionParams(Params):
    variant: str = param(DiffusionConfig.variant, "iis: away from the real face (eq. 6.7, default); irs: toward the paired fake (eq. 6.9, ablation)",
                         choices=("iis", "irs"))
    steps: int = param(DiffusionConfig.steps, "optimisation steps of the semantic code", ge=0)
    lr: float = param(DiffusionConfig.lr, "Adam learning rate", gt=0)
    lambda_id: float = param(DiffusionConfig.lambda_id, "weight of the identity loss", ge=0)
    lambda_attr: float = param(DiffusionConfig.lambda_attr, "weight of the FaRL attribute loss", ge=0)
    id_margin: float = param(DiffusionConfig.id_margin, "m of eq. 6.7: the IIS loss is |cos - m|", ge=0, le=1)
    margin: float | None = param(None, "identity distance (1 - cos) a face must exceed to count as protected",
                                 default_text=f"the networks' own (ArcFace {ARCFACE_MARGIN})")
    pool_size: int = param(DiffusionConfig.pool_size, "synthetic faces generated for pairing", ge=1)
    t_encode: int = param(DiffusionConfig.t_encode, "DDIM steps of the stochastic encoding", ge=1)
    t_eval: int = param(DiffusionConfig.t_eval, "DDIM steps while optimising", ge=1)
    t_final: int = param(DiffusionConfig.t_final, "DDIM steps of the final render", ge=1)
    latent_steps: int = param(DiffusionConfig.latent_steps, "latent-DDIM steps for the synthetic pool", ge=1)
    pair_metric: str = param(DiffusionConfig.pair_metric, "FaRL distance used to pair a face with a synthetic one",
                             choices=("euclidean", "cosine"))
    xt_source: str = param(DiffusionConfig.xt_source, "x_T from the real face or from the paired fake",
                           choices=("real", "fake"))
    init: str = param(DiffusionConfig.init, "initial semantic code: fake, real, or mix:A (A in [0, 1])", convert=_init,
                      type_text="fake|real|mix:A")
    batch_size: int = param(DiffusionConfig.batch_size, "faces optimised together", ge=1)
    checkpoint: bool = param(DiffusionConfig.checkpoint, "gradient checkpointing (less memory, more time)")
    seed: int | None = param(None, "seed of the pool and the optimisation", default_text="--seed")
    crop_only: bool = param(False, "write the aligned 256 px crops side by side instead of pasting back")
    feather: float = param(0.15, "feather of the elliptical paste-back mask (fraction of the crop)", ge=0, le=1)
    pool_dir: str | None = param(None, "folder of the cached synthetic pool", default_text="<cache>/diffusion-pools")
    backend: str | DiffusionNets = param("diffae", "networks: diffae (the thesis's; the Python API may pass "
                                         "DiffusionNets)", choices=("diffae",))


def check_weights() -> dict[str, Path]:
    """Local paths of every weights file this method needs, or WeightsMissing naming the fetch command."""
    return check_method_weights(WEIGHTS, "diffusion")


def load_backend(device: str | torch.device = "cpu") -> DiffusionNets:
    """The thesis networks: DiffAE FFHQ-256 (+ latent DDIM), FaRL ViT-B/16 ep64, ArcFace IR-SE50."""
    from ..nets.diffae import DiffAE, DiffAEConfig
    from ..nets.farl import FaRLVisual, preprocess
    from ..nets.irse import IRSEBackbone, psp_id_crop

    paths = check_weights()
    diffae = DiffAE.from_checkpoint(paths["diffae-ffhq256-autoenc"], DiffAEConfig.ffhq256(),
                                    latent=paths["diffae-ffhq256-latent"], weights_name="diffae-ffhq256-autoenc",
                                    latent_weights_name="diffae-ffhq256-latent")
    diffae = diffae.eval().requires_grad_(False).to(device)
    farl = FaRLVisual.from_checkpoint(paths["farl-vitb16"], "farl-vitb16").eval().requires_grad_(False).to(device)
    arc = IRSEBackbone.from_checkpoint(paths["arcface-ir-se50"]).eval().requires_grad_(False).to(device)

    def features(x: Tensor) -> tuple[Tensor, Tensor]:
        f = farl(preprocess((x + 1) / 2, 224, normalize=True))
        return f.pooled, f.patch_tokens

    return DiffusionNets(
        name="diffae-ffhq256+farl-vitb16+arcface-ir-se50", diffae=diffae,
        id_embed=lambda x, lm: arc(psp_id_crop(x)),
        id_distance=lambda a, b: 1.0 - F.cosine_similarity(a, b, dim=1),
        features=features, fingerprint=fingerprint_module(diffae, fingerprint_module(farl)),
        default_margin=ARCFACE_MARGIN, attacked_models=("arcface-ir-se50",),
    )








def _to_uint8(x01: Tensor) -> np.ndarray:
    return (x01.clamp(0, 1) * 255.0).round().byte().permute(1, 2, 0).cpu().numpy()


def _resize(x: Tensor, size: int) -> Tensor:
    if x.shape[-1] == size:
        return x
    mode = "area" if x.shape[-1] > size else "bilinear"
    return F.interpolate(x, size=size, mode=mode, **({} if mode == "area" else {"align_corners": False}))


class DiffusionDeID:
    """The ``diffusion`` method (see the module docstring)."""

    name = "diffusion"

    def __init__(self, params: DiffusionParams | Mapping[str, Any] | None = None) -> None:
        p = self.params = as_params(DiffusionParams, params, method="diffusion")
        self.config: DiffusionConfig = config_from_params(p)
        self.crop_only = p.crop_only
        self.feather = p.feather
        self.pool_dir = Path(p.pool_dir) if p.pool_dir else None
        self._nets: DiffusionNets | None = p.backend if isinstance(p.backend, DiffusionNets) else None
        self._pool: SyntheticPool | None = None
        if self._nets is None:
            check_weights()  # before anything is written: exit 2 with the fetch command

    def nets(self, device: str) -> DiffusionNets:
        if self._nets is None:
            self._nets = load_backend(device)
        return self._nets

    def pool(self, nets: DiffusionNets, cfg: DiffusionConfig) -> SyntheticPool:
        if self._pool is None or self._pool.settings["seed"] != cfg.seed:
            self._pool = load_or_generate_pool(nets, cfg, self.pool_dir)
        return self._pool

    def __call__(self, items: Sequence[ImageItem], ctx: MethodContext) -> list[MethodOutput]:
        from ..faces.align import apply_affine, ffhq_transform, warp_faces

        nets = self.nets(ctx.device)
        cfg = self.config if self.params.seed is not None else replace(self.config, seed=ctx.seed)
        dev = nets.device
        margin = cfg.margin if cfg.margin is not None else nets.default_margin
        pool = self.pool(nets, cfg)
        # Align every face of the batch, then optimise them together in chunks of batch_size.
        jobs: list[tuple[int, np.ndarray, Tensor, Tensor]] = []  # (item, M, crop01 [3,256,256], lm_crop [68,2])
        imgs = [image_to_tensor(it.pixels, dev) for it in items]
        for k, it in enumerate(items):
            for face in it.faces:
                lm68 = face_landmarks68(it.pixels, face)
                M = ffhq_transform(lm68, CROP)
                lm_crop = torch.as_tensor(np.asarray(apply_affine(M, lm68)), dtype=torch.float32, device=dev)
                with torch.no_grad():
                    crop = warp_faces(imgs[k], M, CROP)[0]
                jobs.append((k, M, crop, lm_crop))
        results: list[dict[str, Any]] = []
        for s in range(0, len(jobs), cfg.batch_size):
            chunk = jobs[s:s + cfg.batch_size]
            crops = torch.stack([j[2] for j in chunk])
            lm = torch.stack([j[3] for j in chunk])
            res = run_deid(nets, _resize(crops, nets.image_size) * 2 - 1, pool, cfg, lm)
            out256 = _resize((res.images + 1) / 2, CROP).clamp(0, 1)
            for i in range(len(chunk)):
                results.append({"crop": out256[i], "e_real": res.extra["e_real"][i:i + 1], "lm": lm[i:i + 1],
                                "info": _face_info(res, i, pool, margin)})
        by_item: dict[int, list[int]] = {}
        for n, j in enumerate(jobs):
            by_item.setdefault(j[0], []).append(n)
        pairs = [r["info"]["pair_index"] for r in results]
        outputs = []
        for k, it in enumerate(items):
            outputs.append(self._write(it, imgs[k], [jobs[n] for n in by_item.get(k, [])],
                                       [results[n] for n in by_item.get(k, [])], nets, cfg, pool, margin,
                                       len(pairs) - len(set(pairs))))
        return outputs

    def _write(self, item: ImageItem, img: Tensor, jobs: list, results: list[dict[str, Any]], nets: DiffusionNets,
               cfg: DiffusionConfig, pool: SyntheticPool, margin: float, shared_pairs: int) -> MethodOutput:
        from ..faces.align import crop_mask, paste_back, warp_faces

        info: dict[str, Any] = {
            "backend": nets.name, "attacked_models": list(nets.attacked_models), "config": cfg.to_dict(),
            "margin": margin, "pool": {"key": pool.key, "size": len(pool), "path": str(pool.path) if pool.path else None,
                                      "from_cache": pool.from_cache, "faces_sharing_a_fake_in_batch": shared_pairs},
            "alignment": f"ffhq{CROP} -> {nets.image_size}",
            "output": "aligned crops" if self.crop_only else "paste-back with feathered elliptical mask (beyond thesis)",
            "faces": [r["info"] for r in results],
        }
        if nets.test_configuration:
            info["test_configuration"] = nets.note or "test networks, not DiffAE/FaRL/ArcFace: no privacy claim"
        if not jobs:
            info["reason"] = "no faces to protect"
            return MethodOutput(pixels=item.pixels.copy(), protected=False, info=info)
        dev = img.device
        crops = torch.stack([r["crop"] for r in results])
        mats = np.stack([j[1] for j in jobs])
        if self.crop_only:
            pixels = np.concatenate([_to_uint8(c) for c in crops], axis=1)
            written = torch.from_numpy(pixels).to(dev).permute(2, 0, 1).float().div(255)
            written = torch.stack(written.split(CROP, dim=2))
        else:
            with torch.no_grad():
                pasted = paste_back(img, crops, mats, mask=crop_mask(CROP, self.feather, "ellipse", device=dev))
            pixels = _to_uint8(pasted[0])
            with torch.no_grad():
                written = warp_faces(image_to_tensor(pixels, dev), mats, CROP)
        all_ok = True
        with torch.no_grad():
            for fi, r, w01 in zip(info["faces"], results, written):
                x = _resize(w01[None], nets.image_size) * 2 - 1
                d = float(nets.id_distance(nets.id_embed(x, r["lm"]), r["e_real"])[0])
                fi["id_distance_written"] = round(d, 6)
                fi["protected"] = bool(fi["id_distance"] > margin and d > margin)
                all_ok = all_ok and fi["protected"]
        if not all_ok:
            info["reason"] = f"identity distance did not exceed margin {margin} for every face (crop and 8-bit written)"
        return MethodOutput(pixels=pixels, protected=all_ok, info=info)


def _face_info(res: Any, i: int, pool: SyntheticPool, margin: float) -> dict[str, Any]:
    r6 = lambda v: round(float(v), 6)
    return {
        "pair_index": int(res.pair_index[i]), "pair_distance": r6(res.pair_distance[i]),
        "id_distance": r6(res.final["id_distance"][i]), "recon_id_distance": r6(res.final["recon_id_distance"][i]),
        "cos": r6(res.final["cos"][i]), "id_loss": r6(res.final["id_loss"][i]), "attr_loss": r6(res.final["attr_loss"][i]),
        "trace": [{"step": t["step"], "loss": r6(t["loss_per_face"][i]), "cos": r6(t["cos"][i]),
                   "id_distance": r6(t["id_distance"][i]), "lr": t["lr"], "seconds": round(t["seconds"], 4)}
                  for t in res.trace],
    }


SPEC = MethodSpec(
    name="diffusion",
    summary="Diffusion De-ID: optimise DiffAE semantic codes from a FaRL-paired synthetic face against ArcFace "
            "(thesis ch. 6; IIS default, IRS ablation)",
    factory=DiffusionDeID,
    params=DiffusionParams,
    needs_faces=True,
    weights=WEIGHTS,
    licence="code MIT; weights: DiffAE (MIT code, FFHQ CC BY-NC-SA data), FaRL (LAION-Face), ArcFace (MS1M, research only)",
    paper="Xue, A Study on Image Privacy Protection in Response to AI Technology (PhD thesis, UTS 2023), ch. 6",
)

METHODS.register(SPEC)

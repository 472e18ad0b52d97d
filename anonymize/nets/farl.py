"""FaRL ViT-B/16 image tower (Zheng et al., CVPR 2022) for face attribute features.

The network is OpenAI CLIP's ViT-B/16 visual tower (QuickGELU, pre-norm blocks,
LayerNorm eps 1e-5). It is built from ``open_clip``'s ``VisionTransformer``, whose
module names equal the ``visual.*`` keys of ``FaRL-Base-Patch16-LAIONFace20M-ep64.pth``
(only the registration order inside a block differs, which does not matter for
loading by name). The forward pass is written here so that the transformer tokens
*before* ``ln_post`` (what FALCO / Diffusion De-ID compare) are exposed.

Example (random weights; needs ``open_clip``):
    >>> import torch
    >>> net = FaRLVisual(width=64, layers=2, heads=2, output_dim=32).eval()
    >>> f = net(torch.rand(1, 3, 224, 224))
    >>> tuple(f.pooled.shape), tuple(f.tokens.shape), tuple(f.patch_grid.shape)
    ((1, 32), (1, 197, 64), (1, 64, 14, 14))
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from anonymize.errors import MethodUnavailable
from anonymize.nets.diffae import CheckpointError, read_checkpoint, strict_load

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

__all__ = ["CLIP_MEAN", "CLIP_STD", "FaRLFeatures", "FaRLVisual", "preprocess"]


@dataclass
class FaRLFeatures:
    """Outputs of :class:`FaRLVisual`.

    ``pooled`` [B, 512]: ``ln_post(CLS) @ proj`` (CLIP ``encode_image``, not L2-normalised;
    used for nearest-neighbour pairing). ``tokens`` [B, 1 + g*g, 768]: output of the last
    block before ``ln_post``; token 0 is CLS and token ``1 + g*r + c`` is patch (r, c).
    """

    pooled: torch.Tensor
    tokens: torch.Tensor

    @property
    def patch_tokens(self) -> torch.Tensor:
        """[B, g*g, 768] patch tokens (CLS removed), row-major over the patch grid."""
        return self.tokens[:, 1:]

    @property
    def patch_grid(self) -> torch.Tensor:
        """[B, 768, g, g] patch tokens as a feature map."""
        p = self.patch_tokens
        g = int(round(p.shape[1] ** 0.5))
        return p.transpose(1, 2).reshape(p.shape[0], p.shape[2], g, g)


def preprocess(images01: torch.Tensor, size: int = 224, normalize: bool = True) -> torch.Tensor:
    """Resize the shorter side to ``size`` (bilinear, antialias), centre-crop, optionally CLIP-normalise.

    ``images01``: [B, 3, H, W] RGB in [0, 1]. FALCO's attribute loss skips the normalisation
    (``normalize=False``); FaRL itself and the pairing embedding use it.
    """
    if images01.ndim != 4 or images01.shape[1] != 3:
        raise ValueError(f"expected [B, 3, H, W] images, got {tuple(images01.shape)}")
    h, w = images01.shape[-2:]
    if (h, w) != (size, size):
        scale = size / min(h, w)
        nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
        x = F.interpolate(images01, size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)
        top, left = (nh - size) // 2, (nw - size) // 2
        x = x[..., top:top + size, left:left + size]
    else:
        x = images01
    if normalize:
        mean = torch.tensor(CLIP_MEAN, dtype=x.dtype, device=x.device)[:, None, None]
        std = torch.tensor(CLIP_STD, dtype=x.dtype, device=x.device)[:, None, None]
        x = (x - mean) / std
    return x


def _open_clip_transformer() -> Any:
    try:
        import open_clip.transformer as oct  # noqa: PLC0415 - heavy optional import
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise MethodUnavailable("FaRL needs the 'open-clip-torch' package (pip install open-clip-torch)") from exc
    return oct


class FaRLVisual(nn.Module):
    """CLIP/FaRL ViT visual tower; defaults are ViT-B/16 at 224x224 (86,192,640 parameters)."""

    def __init__(self, image_size: int = 224, patch_size: int = 16, width: int = 768, layers: int = 12,
                 heads: int = 12, output_dim: int = 512) -> None:
        super().__init__()
        oct = _open_clip_transformer()
        self.image_size = image_size
        self.visual = oct.VisionTransformer(
            image_size=image_size, patch_size=patch_size, width=width, layers=layers, heads=heads,
            mlp_ratio=4.0, output_dim=output_dim, act_layer=oct.QuickGELU,
        )

    @classmethod
    def from_checkpoint(cls, src: str | Path | Mapping[str, Any], weights_name: str | None = None,
                        **kwargs: Any) -> "FaRLVisual":
        """Load the ``visual.*`` tensors of a FaRL/CLIP checkpoint strictly (other keys are ignored).

        ``weights_name``: the ``fetch-weights`` name reported (WeightsMissing) if the file is absent.
        """
        state = read_checkpoint(src, weights_name)
        with torch.device("meta"):  # no random init: every tensor comes from the file
            model = cls(**kwargs)
        strict_load(model.visual, state, "visual.", "FaRL visual tower", assign=True)
        return model.eval()

    def forward(self, x: torch.Tensor, taps: dict[str, torch.Tensor] | None = None) -> FaRLFeatures:
        """Features of already pre-processed images [B, 3, S, S] (see :func:`preprocess`)."""
        v = self.visual
        if x.shape[-2:] != (self.image_size, self.image_size):
            raise CheckpointError(f"FaRL expects {self.image_size}x{self.image_size} input, got {tuple(x.shape[-2:])}")
        h = v.conv1(x)
        b, w = h.shape[:2]
        h = h.reshape(b, w, -1).transpose(1, 2)
        cls_tok = v.class_embedding.to(h.dtype).expand(b, 1, w)
        h = torch.cat([cls_tok, h], dim=1) + v.positional_embedding.to(h.dtype)
        h = v.ln_pre(h)
        if taps is not None:
            taps["ln_pre"] = h
        batch_first = getattr(v.transformer, "batch_first", True)
        if not batch_first:
            h = h.transpose(0, 1)
        for i, blk in enumerate(v.transformer.resblocks):
            h = blk(h)
            if taps is not None:
                taps[f"resblocks.{i}"] = h if batch_first else h.transpose(0, 1)
        tokens = h if batch_first else h.transpose(0, 1)
        pooled = v.ln_post(tokens[:, 0]) @ v.proj
        return FaRLFeatures(pooled=pooled, tokens=tokens)

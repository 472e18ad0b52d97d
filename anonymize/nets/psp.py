"""pixel2style2pixel (pSp): GradualStyleEncoder (IR-SE50 FPN) + StyleGAN2 decoder.

Loads ``psp_ffhq_encode.pt`` (``{'state_dict', 'opts', 'latent_avg'}``), with
``encoder.*``/``decoder.*`` keys checked strictly. Inference path as in pSp:
``codes = encoder(x256) + latent_avg``; ``image = face_pool(decoder(codes))``
with fixed noise.

Example:
    >>> import torch
    >>> net = PSP.tiny().eval()
    >>> w = net.encode(torch.zeros(1, 3, 64, 64))
    >>> tuple(w.shape), tuple(net.decode(w).shape)
    ((1, 8, 32), (1, 3, 16, 16))
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from anonymize.errors import UsageError
from anonymize.nets.checkpoint import CheckpointMismatch, StateLike, load_checked, read_checkpoint, strip_prefix
from anonymize.nets.irse import IR50_STAGES, Stage, make_body, make_stem
from anonymize.nets.stylegan2 import EqualLinear, Generator

WEIGHTS_NAME = "psp-ffhq-encode"
Tap = Callable[[str, Tensor], None]


class GradualStyleBlock(nn.Module):
    """log2(spatial) stride-2 3x3 convs each + LeakyReLU(0.01), then EqualLinear (map2style)."""

    def __init__(self, in_c: int, out_c: int, spatial: int) -> None:
        super().__init__()
        self.out_c = out_c
        layers: list[nn.Module] = []
        for i in range(int(math.log2(spatial))):
            layers += [nn.Conv2d(in_c if i == 0 else out_c, out_c, 3, stride=2, padding=1), nn.LeakyReLU()]
        self.convs = nn.Sequential(*layers)
        self.linear = EqualLinear(out_c, out_c, lr_mul=1.0)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(self.convs(x).reshape(-1, self.out_c))


class GradualStyleEncoder(nn.Module):
    """IR-SE FPN encoder: image ``[B,3,S,S]`` -> W+ offsets ``[B, n_styles, D]``.

    Styles ``0..2`` read c3 (S/16), ``3..6`` read p2 (S/8), the rest read p1 (S/4).
    """

    coarse_ind = 3
    middle_ind = 7

    def __init__(self, n_styles: int = 18, stages: Sequence[Stage] = IR50_STAGES, input_nc: int = 3,
                 input_size: int = 256) -> None:
        super().__init__()
        if len(stages) != 4:
            raise ValueError("GradualStyleEncoder needs 4 IR-SE stages")
        self.input_size = input_size
        self.input_layer = make_stem(input_nc, stages[0][0])
        self.body = make_body(stages)
        ends = [sum(s[2] for s in stages[: k + 1]) - 1 for k in range(4)]
        self.c1_idx, self.c2_idx, self.c3_idx = ends[1], ends[2], ends[3]
        d = stages[3][1]
        self.style_count = n_styles
        self.styles = nn.ModuleList()
        for i in range(n_styles):
            spatial = input_size // (16 if i < self.coarse_ind else 8 if i < self.middle_ind else 4)
            self.styles.append(GradualStyleBlock(d, d, spatial))
        self.latlayer1 = nn.Conv2d(stages[2][1], d, 1, 1, 0)
        self.latlayer2 = nn.Conv2d(stages[1][1], d, 1, 1, 0)

    @staticmethod
    def _upsample_add(x: Tensor, y: Tensor) -> Tensor:
        return F.interpolate(x, size=y.shape[-2:], mode="bilinear", align_corners=True) + y

    def forward(self, x: Tensor, tap: Tap | None = None) -> Tensor:
        x = self.input_layer(x)
        if tap is not None:
            tap("input_layer", x)
        c1 = c2 = c3 = x
        for i, unit in enumerate(self.body):
            x = unit(x)
            if tap is not None:
                tap(f"body.{i}", x)
            if i == self.c1_idx:
                c1 = x
            elif i == self.c2_idx:
                c2 = x
            elif i == self.c3_idx:
                c3 = x
        lat = [self.styles[j](c3) for j in range(min(self.coarse_ind, self.style_count))]
        p2 = self._upsample_add(c3, self.latlayer1(c2))
        lat += [self.styles[j](p2) for j in range(self.coarse_ind, min(self.middle_ind, self.style_count))]
        p1 = self._upsample_add(p2, self.latlayer2(c1))
        lat += [self.styles[j](p1) for j in range(self.middle_ind, self.style_count)]
        if tap is not None:
            tap("p2", p2)
            tap("p1", p1)
        return torch.stack(lat, dim=1)


def _opts_defaults(opts: Mapping[str, Any]) -> dict[str, Any]:
    o = dict(opts)
    o.setdefault("output_size", 1024)
    o.setdefault("learn_in_w", False)
    o.setdefault("encoder_type", "GradualStyleEncoder")
    o.setdefault("input_nc", 3)
    o.setdefault("start_from_latent_avg", True)
    return o


class PSP(nn.Module):
    """pSp inversion model. ``encode`` -> W+ (incl. latent_avg), ``decode`` -> image.

    ``latent_avg`` is a non-persistent buffer ``[n_styles, D]`` (moves with
    ``.to()``, not part of ``state_dict``), so ``state_dict()`` has exactly the
    ``encoder.*``/``decoder.*`` keys of the real file.
    """

    def __init__(self, output_size: int = 1024, encoder: GradualStyleEncoder | None = None,
                 decoder: Generator | None = None, face_pool_size: int = 256,
                 start_from_latent_avg: bool = True) -> None:
        super().__init__()
        n_styles = int(math.log2(output_size)) * 2 - 2
        self.encoder = encoder if encoder is not None else GradualStyleEncoder(n_styles)
        self.decoder = decoder if decoder is not None else Generator(output_size, 512, 8)
        if self.encoder.style_count != self.decoder.n_latent:
            raise ValueError(f"encoder gives {self.encoder.style_count} styles, decoder needs {self.decoder.n_latent}")
        self.face_pool = nn.AdaptiveAvgPool2d((face_pool_size, face_pool_size))
        self.start_from_latent_avg = start_from_latent_avg
        self.register_buffer("latent_avg", torch.zeros(n_styles, self.decoder.style_dim), persistent=False)

    @classmethod
    def tiny(cls, output_size: int = 32, style_dim: int = 32, input_size: int = 64) -> "PSP":
        """Small random-weight pSp for tests (not a real model)."""
        n = int(math.log2(output_size)) * 2 - 2
        stages = ((16, 16, 1), (16, 16, 1), (16, 32, 1), (32, style_dim, 1))
        enc = GradualStyleEncoder(n, stages, input_size=input_size)
        dec = Generator(output_size, style_dim, 2, channel_multiplier=1, max_channels=32)
        return cls(output_size, enc, dec, face_pool_size=output_size // 2)

    def set_latent_avg(self, latent_avg: Tensor) -> None:
        """Accept ``[n_styles, D]`` or ``[D]`` (broadcast to all styles)."""
        la = latent_avg.detach().to(self.latent_avg)
        if la.ndim == 1:
            la = la.expand_as(self.latent_avg)
        if la.shape != self.latent_avg.shape:
            raise CheckpointMismatch("pSp", [], [], [f"latent_avg (file {tuple(latent_avg.shape)} vs net "
                                                     f"{tuple(self.latent_avg.shape)})"])
        self.latent_avg.copy_(la)

    def encode(self, x: Tensor, tap: Tap | None = None) -> Tensor:
        """Image ``[B,3,256,256]`` in [-1,1] -> W+ codes ``[B, n_styles, 512]`` (latent_avg added)."""
        sub = (lambda n, t: tap(f"encoder.{n}", t)) if tap is not None else None
        codes = self.encoder(x, tap=sub)
        if self.start_from_latent_avg:
            codes = codes + self.latent_avg.unsqueeze(0)
        return codes

    def decode(self, w: Tensor, resize: bool = True, randomize_noise: bool = False, tap: Tap | None = None) -> Tensor:
        """W+ -> image (``face_pool``-ed to 256 when ``resize``), not clamped."""
        sub = (lambda n, t: tap(f"decoder.{n}", t)) if tap is not None else None
        img, _ = self.decoder([w], input_is_latent=True, randomize_noise=randomize_noise, tap=sub)
        return self.face_pool(img) if resize else img

    def forward(self, x: Tensor, resize: bool = True, randomize_noise: bool = False,
                return_latents: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        w = self.encode(x)
        img = self.decode(w, resize=resize, randomize_noise=randomize_noise)
        return (img, w) if return_latents else img

    @classmethod
    def from_checkpoint(cls, path_or_state: StateLike, strict: bool = True,
                        weights_name: str = WEIGHTS_NAME, template: "PSP | None" = None) -> "PSP":
        """Load a pSp checkpoint; opts may lack ``output_size``/``learn_in_w`` (defaults 1024/False).

        ``template`` is an already-built (e.g. small test) pSp to load into;
        by default the network is built from ``opts``.
        """
        ckpt = read_checkpoint(path_or_state, weights_name, "the pSp encoder/decoder")
        if "state_dict" not in ckpt:
            raise CheckpointMismatch(f"pSp ({weights_name})", ["state_dict"], [], [])
        opts = _opts_defaults(ckpt.get("opts") or {})
        if opts["encoder_type"] != "GradualStyleEncoder":
            raise UsageError(f"pSp encoder_type {opts['encoder_type']!r} is not supported (GradualStyleEncoder only)")
        if opts["learn_in_w"]:
            raise UsageError("pSp checkpoints with learn_in_w=True are not supported")
        size = int(opts["output_size"])
        n_styles = int(math.log2(size)) * 2 - 2
        if template is None:
            net = cls(size, GradualStyleEncoder(n_styles, input_nc=int(opts["input_nc"])), Generator(size, 512, 8),
                      start_from_latent_avg=bool(opts["start_from_latent_avg"]))
        else:
            net = template
            net.start_from_latent_avg = bool(opts["start_from_latent_avg"])
        sd = ckpt["state_dict"]
        stray = [k for k in sd if not k.startswith(("encoder.", "decoder."))]
        if stray and strict:
            raise CheckpointMismatch("pSp", [], stray, [])
        for part in ("encoder", "decoder"):
            try:
                load_checked(getattr(net, part), strip_prefix(sd, part + "."), what=f"pSp {part}", strict=strict)
            except CheckpointMismatch as e:
                pre = part + "."
                raise CheckpointMismatch("pSp", [pre + k for k in e.missing], [pre + k for k in e.unexpected],
                                         [pre + k for k in e.bad_shape]) from None
        la = ckpt.get("latent_avg")
        if isinstance(la, Tensor):
            net.set_latent_avg(la.float())
        elif net.start_from_latent_avg:
            raise CheckpointMismatch("pSp", ["latent_avg"], [], [])
        return net.eval()

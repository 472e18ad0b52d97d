"""StyleGAN2 generator (config-f) in the rosinality key layout, pure PyTorch.

Loads ``stylegan2-ffhq-config-f.pt`` (``{'g_ema', 'latent_avg'}``) and the
``decoder.*`` part of pSp checkpoints. Noise comes from the registered
``noises.noise_k`` buffers unless ``randomize_noise=True``.

Example:
    >>> import torch
    >>> g = Generator(32, 64, 2, channel_multiplier=1, max_channels=64).eval()
    >>> img, lat = g([torch.randn(2, g.n_latent, 64)], input_is_latent=True,
    ...              randomize_noise=False, return_latents=True)
    >>> tuple(img.shape), tuple(lat.shape)
    ((2, 3, 32, 32), (2, 8, 64))
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from anonymize.nets.checkpoint import StateLike, load_checked, read_checkpoint
from anonymize.nets.ops import Blur, FusedLeakyReLU, Upsample, fused_leaky_relu

BLUR_KERNEL = (1, 3, 3, 1)
WEIGHTS_NAME = "stylegan2-ffhq"

Tap = Callable[[str, Tensor], None]


class PixelNorm(nn.Module):
    """``x / sqrt(mean(x², dim=1) + 1e-8)``."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.rsqrt(torch.mean(x * x, dim=1, keepdim=True) + 1e-8)


class EqualLinear(nn.Module):
    """Linear layer with run-time He scaling (``weight·lr_mul/√in``, ``bias·lr_mul``)."""

    def __init__(
        self, in_dim: int, out_dim: int, bias_init: float = 0.0, lr_mul: float = 1.0, activation: bool = False
    ) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim) / lr_mul)
        self.bias = nn.Parameter(torch.full((out_dim,), float(bias_init)))
        self.scale = lr_mul / math.sqrt(in_dim)
        self.lr_mul = lr_mul
        self.activation = activation

    def forward(self, x: Tensor) -> Tensor:
        if self.activation:
            return fused_leaky_relu(F.linear(x, self.weight * self.scale), self.bias * self.lr_mul)
        return F.linear(x, self.weight * self.scale, self.bias * self.lr_mul)


class ModulatedConv2d(nn.Module):
    """Style-modulated conv; weight stored ``[1, out, in, k, k]``; optional 2x upsampling."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel_size: int,
        style_dim: int,
        demodulate: bool = True,
        upsample: bool = False,
        blur_kernel: Sequence[float] = BLUR_KERNEL,
    ) -> None:
        super().__init__()
        self.in_ch, self.out_ch, self.k = in_ch, out_ch, kernel_size
        self.upsample = upsample
        self.weight = nn.Parameter(torch.randn(1, out_ch, in_ch, kernel_size, kernel_size))
        if upsample:
            factor = 2
            p = (len(blur_kernel) - factor) - (kernel_size - 1)
            self.blur = Blur(blur_kernel, pad=((p + 1) // 2 + factor - 1, p // 2 + 1), upsample_factor=factor)
        self.modulation = EqualLinear(style_dim, in_ch, bias_init=1.0)
        self.scale = 1.0 / math.sqrt(in_ch * kernel_size**2)
        self.padding = kernel_size // 2
        self.demodulate = demodulate

    def forward(self, x: Tensor, style: Tensor) -> Tensor:
        b, c, h, w = x.shape
        s = self.modulation(style).view(b, 1, c, 1, 1)
        wt = self.scale * self.weight * s  # [b, out, in, k, k]
        if self.demodulate:
            wt = wt * torch.rsqrt(wt.pow(2).sum([2, 3, 4]) + 1e-8).view(b, self.out_ch, 1, 1, 1)
        x = x.reshape(1, b * c, h, w)
        if self.upsample:
            wt = wt.transpose(1, 2).reshape(b * c, self.out_ch, self.k, self.k)
            out = F.conv_transpose2d(x, wt, padding=0, stride=2, groups=b)
            out = out.view(b, self.out_ch, out.shape[-2], out.shape[-1])
            return self.blur(out)
        wt = wt.reshape(b * self.out_ch, c, self.k, self.k)
        out = F.conv2d(x, wt, padding=self.padding, groups=b)
        return out.view(b, self.out_ch, h, w)


class NoiseInjection(nn.Module):
    """``x + weight · noise`` (noise [1|B, 1, H, W] broadcast over channels)."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, x: Tensor, noise: Tensor | None = None) -> Tensor:
        if noise is None:
            b, _, h, w = x.shape
            noise = x.new_empty(b, 1, h, w).normal_()
        return x + self.weight * noise


class ConstantInput(nn.Module):
    """Learned constant ``[1, C, 4, 4]`` repeated over the batch (key: ``input``)."""

    def __init__(self, channels: int, size: int = 4) -> None:
        super().__init__()
        self.input = nn.Parameter(torch.randn(1, channels, size, size))

    def forward(self, batch: int) -> Tensor:
        return self.input.repeat(batch, 1, 1, 1)


class StyledConv(nn.Module):
    """Modulated 3x3 conv -> noise -> bias + leaky ReLU(0.2)·√2."""

    def __init__(self, in_ch: int, out_ch: int, style_dim: int, upsample: bool = False,
                 blur_kernel: Sequence[float] = BLUR_KERNEL) -> None:
        super().__init__()
        self.conv = ModulatedConv2d(in_ch, out_ch, 3, style_dim, upsample=upsample, blur_kernel=blur_kernel)
        self.noise = NoiseInjection()
        self.activate = FusedLeakyReLU(out_ch)

    def forward(self, x: Tensor, style: Tensor, noise: Tensor | None = None) -> Tensor:
        return self.activate(self.noise(self.conv(x, style), noise))


class ToRGB(nn.Module):
    """1x1 modulated conv (no demodulation) + bias, plus the upsampled previous skip."""

    def __init__(self, in_ch: int, style_dim: int, upsample: bool = True,
                 blur_kernel: Sequence[float] = BLUR_KERNEL) -> None:
        super().__init__()
        if upsample:
            self.upsample = Upsample(blur_kernel)
        self.conv = ModulatedConv2d(in_ch, 3, 1, style_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))

    def forward(self, x: Tensor, style: Tensor, skip: Tensor | None = None) -> Tensor:
        out = self.conv(x, style) + self.bias
        if skip is not None:
            out = out + self.upsample(skip)
        return out


def default_channels(channel_multiplier: int = 2, max_channels: int = 512) -> dict[int, int]:
    """Channels per resolution of config-f (capped at ``max_channels``)."""
    base = {4: 512, 8: 512, 16: 512, 32: 512, 64: 256 * channel_multiplier, 128: 128 * channel_multiplier,
            256: 64 * channel_multiplier, 512: 32 * channel_multiplier, 1024: 16 * channel_multiplier}
    return {r: min(c, max_channels) for r, c in base.items()}


class Generator(nn.Module):
    """StyleGAN2 generator ``Generator(size, style_dim, n_mlp, channel_multiplier)``.

    ``forward(styles, ...)`` follows the reference call signature: ``styles`` is a
    list of one or two tensors (z or w ``[B, D]``, or W+ ``[B, n_latent, D]``).
    Returns ``(image, latent or None)``. ``tap(name, tensor)`` receives the
    intermediate activations ``conv1``, ``to_rgb1``, ``convs.k``, ``to_rgbs.k``.
    """

    def __init__(
        self,
        size: int = 1024,
        style_dim: int = 512,
        n_mlp: int = 8,
        channel_multiplier: int = 2,
        blur_kernel: Sequence[float] = BLUR_KERNEL,
        lr_mlp: float = 0.01,
        max_channels: int = 512,
    ) -> None:
        super().__init__()
        log_size = int(math.log2(size))
        if 2**log_size != size or size < 8:
            raise ValueError(f"size must be a power of two >= 8, got {size}")
        self.size, self.style_dim, self.log_size = size, style_dim, log_size
        self.style = nn.Sequential(
            PixelNorm(), *[EqualLinear(style_dim, style_dim, lr_mul=lr_mlp, activation=True) for _ in range(n_mlp)]
        )
        ch = default_channels(channel_multiplier, max_channels)
        self.channels = ch
        self.input = ConstantInput(ch[4])
        self.conv1 = StyledConv(ch[4], ch[4], style_dim, blur_kernel=blur_kernel)
        self.to_rgb1 = ToRGB(ch[4], style_dim, upsample=False)
        self.num_layers = (log_size - 2) * 2 + 1
        self.n_latent = log_size * 2 - 2
        self.convs = nn.ModuleList()
        self.to_rgbs = nn.ModuleList()
        self.noises = nn.Module()
        for i in range(self.num_layers):
            r = 2 ** ((i + 5) // 2)
            self.noises.register_buffer(f"noise_{i}", torch.randn(1, 1, r, r))
        in_ch = ch[4]
        for i in range(3, log_size + 1):
            out_ch = ch[2**i]
            self.convs.append(StyledConv(in_ch, out_ch, style_dim, upsample=True, blur_kernel=blur_kernel))
            self.convs.append(StyledConv(out_ch, out_ch, style_dim, blur_kernel=blur_kernel))
            self.to_rgbs.append(ToRGB(out_ch, style_dim, blur_kernel=blur_kernel))
            in_ch = out_ch

    def noise_buffers(self) -> list[Tensor]:
        """The fixed noise maps ``noise_0 .. noise_{num_layers-1}``."""
        return [getattr(self.noises, f"noise_{i}") for i in range(self.num_layers)]

    @torch.no_grad()
    def mean_latent(self, n: int = 4096, generator: torch.Generator | None = None) -> Tensor:
        """Monte-Carlo mean W ``[1, D]`` (for truncation when no ``latent_avg`` is stored)."""
        p = self.input.input
        z = torch.randn(n, self.style_dim, generator=generator).to(p)
        return self.style(z).mean(0, keepdim=True)

    def forward(
        self,
        styles: Sequence[Tensor],
        return_latents: bool = False,
        inject_index: int | None = None,
        truncation: float = 1.0,
        truncation_latent: Tensor | None = None,
        input_is_latent: bool = False,
        noise: Sequence[Tensor | None] | None = None,
        randomize_noise: bool = True,
        tap: Tap | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        if isinstance(styles, Tensor):
            styles = [styles]
        styles = list(styles)
        if not 1 <= len(styles) <= 2:
            raise ValueError(f"styles must hold 1 or 2 tensors, got {len(styles)}")
        if not input_is_latent:
            styles = [self.style(s) for s in styles]
        if noise is None:
            noise = [None] * self.num_layers if randomize_noise else self.noise_buffers()
        if truncation < 1:
            if truncation_latent is None:
                raise ValueError("truncation < 1 needs truncation_latent (e.g. the checkpoint latent_avg)")
            styles = [truncation_latent + truncation * (s - truncation_latent) for s in styles]
        if len(styles) == 1:
            s = styles[0]
            latent = s.unsqueeze(1).repeat(1, self.n_latent, 1) if s.ndim < 3 else s
        else:
            if inject_index is None:
                inject_index = int(torch.randint(1, self.n_latent, ()).item())
            latent = torch.cat(
                [styles[0].unsqueeze(1).repeat(1, inject_index, 1),
                 styles[1].unsqueeze(1).repeat(1, self.n_latent - inject_index, 1)], 1)
        if latent.shape[1] != self.n_latent:
            raise ValueError(f"W+ needs {self.n_latent} styles, got {latent.shape[1]}")
        image = self.synthesis(latent, noise, tap)
        return image, (latent if return_latents else None)

    def synthesis(self, latent: Tensor, noise: Sequence[Tensor | None], tap: Tap | None = None) -> Tensor:
        """Synthesis network on W+ ``[B, n_latent, D]`` with one noise entry per layer."""
        out = self.conv1(self.input(latent.shape[0]), latent[:, 0], noise=noise[0])
        skip = self.to_rgb1(out, latent[:, 1])
        if tap is not None:
            tap("conv1", out)
            tap("to_rgb1", skip)
        i = 1
        for j, to_rgb in enumerate(self.to_rgbs):
            c1, c2 = self.convs[2 * j], self.convs[2 * j + 1]
            out = c1(out, latent[:, i], noise=noise[2 * j + 1])
            if tap is not None:
                tap(f"convs.{2 * j}", out)
            out = c2(out, latent[:, i + 1], noise=noise[2 * j + 2])
            if tap is not None:
                tap(f"convs.{2 * j + 1}", out)
            skip = to_rgb(out, latent[:, i + 2], skip)
            if tap is not None:
                tap(f"to_rgbs.{j}", skip)
            i += 2
        return skip

    @classmethod
    def from_checkpoint(
        cls,
        path_or_state: StateLike,
        strict: bool = True,
        size: int = 1024,
        channel_multiplier: int = 2,
        key: str = "g_ema",
        weights_name: str = WEIGHTS_NAME,
        **kwargs: Any,
    ) -> tuple["Generator", Tensor | None]:
        """Build and strictly load a generator; returns ``(generator.eval(), latent_avg or None)``.

        Accepts the rosinality file ``{'g_ema': ..., 'latent_avg': ...}`` (extra
        ``g``/``d`` keys ignored) or a bare generator state_dict.
        """
        ckpt = read_checkpoint(path_or_state, weights_name, "the StyleGAN2 generator")
        state = ckpt[key] if key in ckpt else ckpt
        g = cls(size, channel_multiplier=channel_multiplier, **kwargs)
        load_checked(g, state, what=f"StyleGAN2 {size}", strict=strict)
        latent_avg = ckpt.get("latent_avg") if key in ckpt else None
        return g.eval(), (latent_avg.float() if isinstance(latent_avg, Tensor) else None)

"""Networks of seed 000 (``dpimage --variant xai``): generator, discriminator, VGG explainer,
guided-backprop explanation maps and the Gaussian noise put on the explainer's scores.

All images are tensors in [-1, 1] (``x = (x01 - 0.5) / 0.5``), shape [B, 3, H, W].

- :class:`Generator` -- ``arch="paper"`` is Table 1 of the paper (conv 7x7, 6 residual
  blocks, a stride-1 transposed conv, conv 7x7, tanh; no resampling; 498,947
  parameters at 64 channels); ``arch="code"`` is the reference code's (two
  stride-2 downsamplings, 9 residual blocks, two upsamplings, global residual).
- :class:`PatchDiscriminator` -- the reference code's PatchGAN, averaged to one
  score per image (no sigmoid).
- :class:`ExplainerVGG` -- Table 2's VGG (conv3-64 x2, M, conv3-128 x2, M,
  conv3-256 x2, conv1-256, conv3-256, M) with BN, global average pooling and
  FC-hidden, FC-hidden, FC-K. Used for the explainer f' and the service model f.
- :func:`guided_backprop` -- the explanation map h of A.2.6: relevance starts at
  softmax(logits) (+ DP noise), goes back through linear layers (bias ignored),
  guided ReLUs (``relu(R) * 1[z >= 0]``), the pooling layers and transposed
  convolutions (BN scale ignored, as in the reference code); then the per-sample
  decimal rescale ``m * 10**-floor(log10 max|m|)`` and clip to [-1, 1].
- :func:`dp_noise_std` -- the Gaussian-mechanism scale, ``textbook``
  ``D*sqrt(2 ln(1.25/delta))/eps`` or the reference ``code``'s
  ``2 ln(1.25/delta) D^2/eps^2``.

Example:
    >>> import torch
    >>> g = Generator(channels=64)
    >>> sum(p.numel() for p in g.parameters())
    498947
    >>> round(dp_noise_std(0.1, 1e-5, calibration="textbook"), 3)
    48.448
    >>> f = ExplainerVGG(classes=10, width=0.25, hidden=32).eval()
    >>> guided_backprop(f, torch.zeros(2, 3, 32, 32)).shape
    torch.Size([2, 3, 32, 32])
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "Generator",
    "PatchDiscriminator",
    "ExplainerVGG",
    "guided_backprop",
    "dp_noise_std",
    "gaussian_noised",
    "TABLE2_LAYERS",
]


def dp_noise_std(epsilon: float, delta: float, *, sensitivity: float = 1.0, calibration: str = "code") -> float:
    """Std of the Gaussian noise added to the explainer's softmax scores.

    ``textbook``: the Gaussian mechanism of Dwork & Roth (valid for 0 < eps < 1);
    ``code``: the seed-000 reference code's formula (a variance used as a std).
    """
    if not (epsilon > 0 and math.isfinite(epsilon)):
        raise ValueError(f"epsilon must be > 0, got {epsilon}")
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta}")
    if sensitivity <= 0:
        raise ValueError(f"sensitivity must be > 0, got {sensitivity}")
    log_term = 2.0 * math.log(1.25 / delta)
    if calibration == "textbook":
        return sensitivity * math.sqrt(log_term) / epsilon
    if calibration == "code":
        return log_term * sensitivity**2 / epsilon**2
    raise ValueError(f"calibration must be 'textbook' or 'code', got {calibration!r}")


def gaussian_noised(x: Tensor, sigma: float, generator: torch.Generator | None = None) -> Tensor:
    """n(x) = clip(x + sigma * Z, -1, 1): the "real" samples the discriminator sees."""
    z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype) if generator is not None else torch.randn_like(x)
    return (x + sigma * z).clamp(-1.0, 1.0)


# ----------------------------------------------------------------------------- generator


class _ResBlock(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(c, c, 3), nn.InstanceNorm2d(c), nn.ReLU(True),
            nn.ReflectionPad2d(1), nn.Conv2d(c, c, 3), nn.InstanceNorm2d(c),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class Generator(nn.Module):
    """The conversion network g: image in [-1, 1] -> noise-like image in (-1, 1).

    ``arch="paper"`` (default, Table 1): no resampling, any input size.
    ``arch="code"``: reference-code ResNet generator with x4 down/up-sampling and a
    global residual ``tanh(x + net(x))``; input sides must be multiples of 4.
    """

    def __init__(self, channels: int = 64, arch: str = "paper", blocks: int | None = None) -> None:
        super().__init__()
        if arch not in ("paper", "code"):
            raise ValueError(f"generator arch must be 'paper' or 'code', got {arch!r}")
        if channels < 1:
            raise ValueError("channels must be >= 1")
        self.arch = arch
        c = channels
        if arch == "paper":
            n = 6 if blocks is None else blocks
            self.net = nn.Sequential(
                nn.Conv2d(3, c, 7, 1, 3), nn.InstanceNorm2d(c), nn.ReLU(True),
                *[_ResBlock(c) for _ in range(n)],
                nn.ConvTranspose2d(c, c, 3, 1, 1), nn.InstanceNorm2d(c), nn.ReLU(True),
                nn.Conv2d(c, 3, 7, 1, 3),
            )
        else:
            n = 9 if blocks is None else blocks
            self.net = nn.Sequential(
                nn.ReflectionPad2d(3), nn.Conv2d(3, c, 7), nn.InstanceNorm2d(c), nn.ReLU(True),
                nn.Conv2d(c, 2 * c, 3, 2, 1), nn.InstanceNorm2d(2 * c), nn.ReLU(True),
                nn.Conv2d(2 * c, 4 * c, 3, 2, 1), nn.InstanceNorm2d(4 * c), nn.ReLU(True),
                *[_ResBlock(4 * c) for _ in range(n)],
                nn.ConvTranspose2d(4 * c, 2 * c, 3, 2, 1, output_padding=1), nn.InstanceNorm2d(2 * c), nn.ReLU(True),
                nn.ConvTranspose2d(2 * c, c, 3, 2, 1, output_padding=1), nn.InstanceNorm2d(c), nn.ReLU(True),
                nn.ReflectionPad2d(3), nn.Conv2d(c, 3, 7),
            )

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"Generator expects [B, 3, H, W], got {tuple(x.shape)}")
        if self.arch == "code":
            if x.shape[-1] % 4 or x.shape[-2] % 4:
                raise ValueError(f"the 'code' generator needs sides divisible by 4, got {tuple(x.shape[-2:])}")
            return torch.tanh(x + self.net(x))
        return torch.tanh(self.net(x))


class PatchDiscriminator(nn.Module):
    """PatchGAN of the reference code; the patch map is averaged to one logit per image."""

    def __init__(self, channels: int = 64) -> None:
        super().__init__()
        c = channels
        self.net = nn.Sequential(
            nn.Conv2d(3, c, 4, 2, 1), nn.LeakyReLU(0.2, True),
            nn.Conv2d(c, 2 * c, 4, 2, 1), nn.InstanceNorm2d(2 * c), nn.LeakyReLU(0.2, True),
            nn.Conv2d(2 * c, 4 * c, 4, 2, 1), nn.InstanceNorm2d(4 * c), nn.LeakyReLU(0.2, True),
            nn.Conv2d(4 * c, 8 * c, 4, 1, 1), nn.InstanceNorm2d(8 * c), nn.LeakyReLU(0.2, True),
            nn.Conv2d(8 * c, 1, 4, 1, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x).mean(dim=(1, 2, 3))


# ----------------------------------------------------------------------------- explainer / service model

# Table 2: (out_channels, kernel) per conv, "M" = 2x2 max-pool.
TABLE2_LAYERS: tuple[Any, ...] = ((64, 3), (64, 3), "M", (128, 3), (128, 3), "M", (256, 3), (256, 3), (256, 1), (256, 3), "M")


class _ConvBNReLU(nn.Module):
    def __init__(self, cin: int, cout: int, k: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, 1, k // 2)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)))


class ExplainerVGG(nn.Module):
    """Table 2 VGG with BN and global average pooling (the CPU configuration of the spec).

    ``width`` scales every conv's channels (1.0 = 64/128/256); ``hidden`` is the
    size of the two hidden FC layers (4096 in the paper).
    """

    def __init__(self, classes: int, width: float = 1.0, hidden: int = 4096, dropout: float = 0.5) -> None:
        super().__init__()
        if classes < 2:
            raise ValueError("classes must be >= 2")
        layers: list[nn.Module] = []
        cin = 3
        for spec in TABLE2_LAYERS:
            if spec == "M":
                layers.append(nn.MaxPool2d(2, 2, return_indices=True))
            else:
                cout = max(1, int(round(spec[0] * width)))
                layers.append(_ConvBNReLU(cin, cout, spec[1]))
                cin = cout
        self.features = nn.ModuleList(layers)
        self.fc1 = nn.Linear(cin, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.fc3 = nn.Linear(hidden, classes)
        self.drop = nn.Dropout(dropout)
        self.classes = classes

    def forward(self, x: Tensor) -> Tensor:
        return self.trace(x)[0]

    def trace(self, x: Tensor) -> tuple[Tensor, list[tuple[str, Any]]]:
        """Logits plus what guided backprop needs: pre-activations, pool indices, shapes."""
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"ExplainerVGG expects [B, 3, H, W], got {tuple(x.shape)}")
        rec: list[tuple[str, Any]] = []
        h = x
        for layer in self.features:
            if isinstance(layer, nn.MaxPool2d):
                size = h.shape
                h, idx = layer(h)
                rec.append(("pool", (idx, size)))
            else:
                z = layer.bn(layer.conv(h))
                rec.append(("conv", (layer.conv, z, h.shape)))
                h = F.relu(z)
        rec.append(("gap", h.shape))
        h = h.mean(dim=(2, 3))
        z1 = self.fc1(h)
        rec.append(("linear_relu", (self.fc1, z1)))
        h = self.drop(F.relu(z1))
        z2 = self.fc2(h)
        rec.append(("linear_relu", (self.fc2, z2)))
        h = self.drop(F.relu(z2))
        logits = self.fc3(h)
        rec.append(("linear", (self.fc3, logits)))
        return logits, rec


def _guided(r: Tensor, z: Tensor) -> Tensor:
    return F.relu(r) * (z >= 0).to(r.dtype)


def guided_backprop(
    model: ExplainerVGG,
    x: Tensor,
    *,
    noise_std: float = 0.0,
    generator: torch.Generator | None = None,
    normalise: bool = True,
) -> Tensor:
    """Explanation map h(N(f'(x))) of A.2.6, shape of ``x``, in [-1, 1] when ``normalise``.

    Gradients flow to ``x`` through the softmax relevance and the linear backward
    pass (the ReLU masks and the decimal rescale are piecewise constant), which is
    what the paper's objective needs. Call with ``model.eval()``.
    """
    logits, rec = model.trace(x)
    r = torch.softmax(logits, dim=1)
    if noise_std > 0:
        noise = torch.randn(r.shape, generator=generator, dtype=r.dtype) if generator is not None else torch.randn_like(r)
        r = r + noise_std * noise.to(r.device)
    for kind, data in reversed(rec):
        if kind == "linear":
            lin, _ = data
            r = r @ lin.weight
        elif kind == "linear_relu":
            lin, z = data
            r = _guided(r, z) @ lin.weight
        elif kind == "gap":
            b, c, hh, ww = data
            r = r[:, :, None, None].expand(b, c, hh, ww) / float(hh * ww)
        elif kind == "pool":
            idx, size = data
            r = F.max_unpool2d(r, idx, 2, 2, output_size=size[-2:])
        elif kind == "conv":
            conv, z, in_shape = data
            r = _guided(r.reshape(z.shape), z)
            pad = conv.padding[0]
            k = conv.kernel_size[0]
            out_pad = in_shape[-1] - ((r.shape[-1] - 1) * conv.stride[0] - 2 * pad + k)
            r = F.conv_transpose2d(r, conv.weight, None, conv.stride, pad, output_padding=max(0, out_pad))
    if not normalise:
        return r
    with torch.no_grad():
        peak = r.detach().abs().flatten(1).amax(dim=1).clamp_min(1e-30)
        scale = torch.pow(10.0, -torch.floor(torch.log10(peak)))
    return (r * scale.view(-1, 1, 1, 1)).clamp(-1.0, 1.0)

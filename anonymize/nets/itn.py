"""Networks of seed 002 (ITN and ITN-Attack): the U-Net, ResNet-20 and the feature trunk phi.

Convention: images are float tensors in [0, 1], shape [B, 3, H, W] (ToTensor, no
normalisation). The classifier and the feature trunk see ImageNet-normalised
input (:func:`imagenet_norm`); the U-Net sees [0, 1] and its output goes through
a sigmoid outside the network (``x_hat = sigmoid(unet(x))``).

- :class:`UNet` -- the common padded U-Net (Ronneberger et al.): five levels of
  (3x3 conv + BN + ReLU) x 2 at widths w, 2w, 4w, 8w, 16w with 2x2 max-pooling,
  decoder steps of upsample x2 + 3x3 conv + BN + ReLU, skip concatenation and a
  conv block, a final 1x1 conv. ``width=64`` is the paper's network (34.53 M
  parameters); ``width=16`` the CPU variant (2.16 M). Sizes that are not a
  multiple of 16 are reflect-padded and cropped back.
- :class:`ResNet20` -- He et al.'s CIFAR ResNet-20 (3 stages x 3 basic blocks at
  16/32/64 channels, option-A zero-padding shortcuts; 0.27 M parameters).
- :class:`VGGRelu22` -- VGG16 up to relu2_2, the layer of the paper's feature
  loss. ``kind="stlpips"``: the shift-tolerant (anti-aliased) VGG16 trunk of
  ST-LPIPS, whose weights ship in the ``stlpips-pytorch`` wheel (max-pool with
  stride 1, then a [1,2,1]x[1,2,1] blur with stride 2 and reflect padding 2);
  ``kind="random"``: the plain VGG16 layout with frozen seeded random weights
  (spec C.5.1's weak offline fallback). Both take [0, 1] images and normalise them.

Example:
    >>> import torch
    >>> sum(p.numel() for p in UNet(width=64).parameters())
    34527171
    >>> sum(p.numel() for p in UNet(width=16).parameters())
    2162163
    >>> sum(p.numel() for p in ResNet20(10).parameters())
    269722
    >>> UNet(width=4)(torch.rand(2, 3, 20, 28)).shape
    torch.Size([2, 3, 20, 28])
    >>> VGGRelu22.random(seed=0)(torch.rand(1, 3, 32, 32)).shape
    torch.Size([1, 128, 16, 16])
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "ResNet20", "UNet", "VGGRelu22", "imagenet_norm"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def imagenet_norm(x: Tensor) -> Tensor:
    """[0, 1] images -> ImageNet-normalised (the paper's ``norm``)."""
    mean = x.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = x.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def _check_images(x: Tensor, where: str) -> None:
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"{where}: expected images [B, 3, H, W], got {tuple(x.shape)}")


# ----------------------------------------------------------------------------- U-Net


class _ConvBlock(nn.Sequential):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        )


class _UpConv(nn.Sequential):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(nn.Upsample(scale_factor=2.0), nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class UNet(nn.Module):
    """Padded U-Net; returns logits (apply ``torch.sigmoid`` for an image in (0, 1))."""

    LEVELS = 5

    def __init__(self, width: int = 16, in_ch: int = 3, out_ch: int = 3) -> None:
        super().__init__()
        if width < 1:
            raise ValueError(f"UNet width must be >= 1, got {width}")
        self.width = width
        ch = [width * 2**i for i in range(self.LEVELS)]
        self.enc = nn.ModuleList([_ConvBlock(in_ch, ch[0])] + [_ConvBlock(ch[i - 1], ch[i]) for i in range(1, self.LEVELS)])
        self.up = nn.ModuleList([_UpConv(ch[i], ch[i - 1]) for i in range(self.LEVELS - 1, 0, -1)])
        self.dec = nn.ModuleList([_ConvBlock(2 * ch[i - 1], ch[i - 1]) for i in range(self.LEVELS - 1, 0, -1)])
        self.head = nn.Conv2d(ch[0], out_ch, 1)

    def forward(self, x: Tensor) -> Tensor:
        _check_images(x, "UNet")
        h, w = x.shape[-2:]
        m = 2 ** (self.LEVELS - 1)
        ph, pw = (-h) % m, (-w) % m
        if ph or pw:
            mode = "reflect" if h > ph and w > pw else "replicate"
            x = F.pad(x, (0, pw, 0, ph), mode=mode)
        skips = []
        for i, block in enumerate(self.enc):
            x = block(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        for up, dec, skip in zip(self.up, self.dec, reversed(skips[:-1])):
            x = dec(torch.cat([skip, up(x)], dim=1))
        return self.head(x)[..., :h, :w]


# ----------------------------------------------------------------------------- ResNet-20


class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.pad = cout - cin
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        short = x
        if self.stride != 1 or self.pad:  # option A: subsample and zero-pad the channels
            short = x[:, :, :: self.stride, :: self.stride]
            short = F.pad(short, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))
        return F.relu(out + short)


class ResNet20(nn.Module):
    """CIFAR ResNet-20 (He et al. 2016, section 4.2); input ImageNet-normalised, output logits."""

    def __init__(self, classes: int, widths: tuple[int, int, int] = (16, 32, 64), blocks: int = 3) -> None:
        super().__init__()
        if classes < 2:
            raise ValueError(f"ResNet20 needs >= 2 classes, got {classes}")
        self.conv = nn.Conv2d(3, widths[0], 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(widths[0])
        layers: list[nn.Module] = []
        cin = widths[0]
        for i, w in enumerate(widths):
            for j in range(blocks):
                layers.append(_BasicBlock(cin, w, 2 if (i > 0 and j == 0) else 1))
                cin = w
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        _check_images(x, "ResNet20")
        h = self.layers(F.relu(self.bn(self.conv(x))))
        return self.fc(h.mean(dim=(2, 3)))


# ----------------------------------------------------------------------------- phi: VGG16 up to relu2_2


class _BlurDown(nn.Module):
    """Anti-aliased stride-2 downsampling: reflect pad 2, depthwise [1,2,1]x[1,2,1]/16 blur, stride 2."""

    filt: Tensor

    def __init__(self, channels: int) -> None:
        super().__init__()
        a = torch.tensor([1.0, 2.0, 1.0])
        k = (a[:, None] * a[None, :]) / 16.0
        self.register_buffer("filt", k[None, None].repeat(channels, 1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(F.pad(x, (2, 2, 2, 2), mode="reflect"), self.filt, stride=2, groups=x.shape[1])


class VGGRelu22(nn.Module):
    """VGG16 conv1_1 .. relu2_2 on [0, 1] images (normalised inside); frozen, eval mode."""

    shift: Tensor
    scale: Tensor

    def __init__(self, kind: str = "stlpips") -> None:
        super().__init__()
        if kind not in ("stlpips", "random"):
            raise ValueError(f"kind must be 'stlpips' or 'random', got {kind!r}")
        self.kind = kind
        self.conv1_1 = nn.Conv2d(3, 64, 3, padding=1)
        self.conv1_2 = nn.Conv2d(64, 64, 3, padding=1)
        self.blur = _BlurDown(64) if kind == "stlpips" else None
        self.conv2_1 = nn.Conv2d(64, 128, 3, padding=1)
        self.conv2_2 = nn.Conv2d(128, 128, 3, padding=1)
        # LPIPS's scaling layer on [-1, 1] input; equal to ImageNet mean/std on [0, 1] input
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1))
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> VGGRelu22:  # always frozen
        return super().train(False)

    def forward(self, x: Tensor) -> Tensor:
        _check_images(x, "VGGRelu22")
        h = ((2.0 * x - 1.0) - self.shift) / self.scale
        h = F.relu(self.conv1_2(F.relu(self.conv1_1(h))))
        if self.blur is not None:
            h = self.blur(F.max_pool2d(h, 2, stride=1))
        else:
            h = F.max_pool2d(h, 2)
        return F.relu(self.conv2_2(F.relu(self.conv2_1(h))))

    @classmethod
    def random(cls, seed: int = 0) -> VGGRelu22:
        """Plain VGG16 layout, Kaiming-initialised from ``seed`` (independent of the global RNG)."""
        m = cls("random")
        gen = torch.Generator().manual_seed(seed)
        for conv in (m.conv1_1, m.conv1_2, m.conv2_1, m.conv2_2):
            fan_out = conv.out_channels * 9
            conv.weight.data = torch.randn(conv.weight.shape, generator=gen) * (2.0 / fan_out) ** 0.5
            if conv.bias is not None:
                conv.bias.data.zero_()
        return m

    @classmethod
    def from_stlpips(cls, state: Mapping[str, Any]) -> VGGRelu22:
        """The relu2_2 trunk out of an ST-LPIPS ``vgg_shift_tolerant.pth`` state dict (``net.slice1/2``)."""
        m = cls("stlpips")
        names = {"conv1_1": "net.slice1.0", "conv1_2": "net.slice1.2", "conv2_1": "net.slice2.6", "conv2_2": "net.slice2.8"}
        try:
            for ours, theirs in names.items():
                conv = getattr(m, ours)
                for p in ("weight", "bias"):
                    t = state[f"{theirs}.{p}"]
                    if tuple(t.shape) != tuple(getattr(conv, p).shape):
                        raise ValueError(f"{theirs}.{p} has shape {tuple(t.shape)}, expected {tuple(getattr(conv, p).shape)}")
                    getattr(conv, p).data.copy_(t)
            filt = state["net.slice2.5.filt"]
            assert m.blur is not None
            if tuple(filt.shape) != (64, 1, 3, 3) or not torch.allclose(filt, m.blur.filt):
                raise ValueError("net.slice2.5.filt is not the [1,2,1] blur of the shift-tolerant VGG")
            m.shift.copy_(state["scaling_layer.shift"].view(1, 3, 1, 1))
            m.scale.copy_(state["scaling_layer.scale"].view(1, 3, 1, 1))
        except KeyError as exc:
            raise ValueError(f"not an ST-LPIPS VGG state dict: missing {exc}") from None
        return m

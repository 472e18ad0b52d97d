"""IR-SE backbones: ArcFace ``Backbone(50, 0.6, 'ir_se')`` and the pSp encoder body.

Key layout follows InsightFace_Pytorch (``input_layer.*``, ``output_layer.*``,
``body.N.shortcut_layer.*`` / ``body.N.res_layer.*``), so ``model_ir_se50.pth``
loads directly (with or without ``num_batches_tracked``).

Example:
    >>> import torch
    >>> net = IRSEBackbone(stages=((16, 16, 1), (16, 32, 1)), input_size=16, embedding_dim=32).eval()
    >>> net(torch.zeros(2, 3, 16, 16)).shape
    torch.Size([2, 32])
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from anonymize.errors import UsageError
from anonymize.nets.checkpoint import StateLike, load_checked, read_checkpoint

Stage = tuple[int, int, int]  # (in_channels, depth, units); first unit has stride 2
IR50_STAGES: tuple[Stage, ...] = ((64, 64, 3), (64, 128, 4), (128, 256, 14), (256, 512, 3))
WEIGHTS_NAME = "arcface-ir-se50"
Tap = Callable[[str, Tensor], None]


class SEModule(nn.Module):
    """Squeeze-excitation: global mean -> 1x1 conv C→C/r -> ReLU -> 1x1 conv -> sigmoid -> scale."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, channels // reduction, 1, bias=False)
        self.fc2 = nn.Conv2d(channels // reduction, channels, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        s = x.mean(dim=(2, 3), keepdim=True)
        return x * torch.sigmoid(self.fc2(F.relu(self.fc1(s))))


class BottleneckIRSE(nn.Module):
    """``res_layer(x) + shortcut(x)``: BN, 3x3 conv, PReLU, 3x3 conv (stride), BN, SE."""

    def __init__(self, in_ch: int, depth: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        if in_ch != depth:
            self.shortcut_layer: nn.Module = nn.Sequential(
                nn.Conv2d(in_ch, depth, 1, stride, bias=False), nn.BatchNorm2d(depth)
            )
        else:
            self.shortcut_layer = nn.MaxPool2d(1, stride)
        self.res_layer = nn.Sequential(
            nn.BatchNorm2d(in_ch),
            nn.Conv2d(in_ch, depth, 3, 1, 1, bias=False),
            nn.PReLU(depth),
            nn.Conv2d(depth, depth, 3, stride, 1, bias=False),
            nn.BatchNorm2d(depth),
            SEModule(depth, 16),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.res_layer(x) + self.shortcut_layer(x)


def make_stem(in_ch: int = 3, width: int = 64) -> nn.Sequential:
    """3x3 conv (no bias) -> BN -> PReLU."""
    return nn.Sequential(nn.Conv2d(in_ch, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.PReLU(width))


def make_body(stages: Sequence[Stage]) -> nn.Sequential:
    """The IR-SE units of all stages, flattened (``body.0 .. body.N-1``)."""
    units: list[nn.Module] = []
    for in_ch, depth, n in stages:
        units.append(BottleneckIRSE(in_ch, depth, 2))
        units.extend(BottleneckIRSE(depth, depth, 1) for _ in range(n - 1))
    return nn.Sequential(*units)


class IRSEBackbone(nn.Module):
    """ArcFace IR-SE backbone: ``[B,3,S,S]`` in [-1,1] -> L2-normalised ``[B, embedding_dim]``.

    Defaults are IR-SE50 at 112x112 (43.8 M parameters). Dropout is inactive in
    eval mode; BatchNorm uses running statistics.
    """

    def __init__(
        self,
        stages: Sequence[Stage] = IR50_STAGES,
        input_size: int = 112,
        embedding_dim: int = 512,
        drop_ratio: float = 0.6,
    ) -> None:
        super().__init__()
        self.input_size = input_size
        last = stages[-1][1]
        side = input_size // 2 ** len(stages)
        self.input_layer = make_stem(3, stages[0][0])
        self.output_layer = nn.Sequential(
            nn.BatchNorm2d(last),
            nn.Dropout(drop_ratio),
            nn.Flatten(),
            nn.Linear(last * side * side, embedding_dim),
            nn.BatchNorm1d(embedding_dim, affine=True),
        )
        self.body = make_body(stages)

    def forward(self, x: Tensor, tap: Tap | None = None) -> Tensor:
        if x.shape[-2:] != (self.input_size, self.input_size):
            raise ValueError(f"IR-SE expects {self.input_size}x{self.input_size} input, got {tuple(x.shape[-2:])}")
        x = self.input_layer(x)
        if tap is not None:
            tap("input_layer", x)
        for i, unit in enumerate(self.body):
            x = unit(x)
            if tap is not None:
                tap(f"body.{i}", x)
        for i, layer in enumerate(self.output_layer):
            x = layer(x)
            if tap is not None and i in (0, 3, 4):
                tap(f"output_layer.{i}", x)
        return x / torch.norm(x, 2, 1, True)

    @classmethod
    def from_checkpoint(
        cls, path_or_state: StateLike, strict: bool = True, weights_name: str = WEIGHTS_NAME
    ) -> "IRSEBackbone":
        """Load ``model_ir_se50.pth`` (a bare state_dict); ``num_batches_tracked`` optional."""
        state = read_checkpoint(path_or_state, weights_name, "the ArcFace IR-SE50 identity network")
        if "state_dict" in state and isinstance(state["state_dict"], dict):
            raise UsageError(f"{weights_name}: expected a bare state_dict, got a wrapper dict with 'state_dict'")
        net = cls()
        load_checked(net, state, what="ArcFace IR-SE50", strict=strict)
        return net.eval()


def psp_id_crop(x256: Tensor) -> Tensor:
    """pSp/FALCO ID-loss preprocessing: crop ``[35:223, 32:220]`` of a 256² image, adaptive-pool to 112².

    Example:
        >>> psp_id_crop(torch.zeros(1, 3, 256, 256)).shape
        torch.Size([1, 3, 112, 112])
    """
    if x256.shape[-2:] != (256, 256):
        raise ValueError(f"psp_id_crop expects 256x256 images, got {tuple(x256.shape[-2:])}")
    return F.adaptive_avg_pool2d(x256[:, :, 35:223, 32:220], (112, 112))

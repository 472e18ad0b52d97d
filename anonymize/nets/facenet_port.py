"""Shared mapping of Sandberg-FaceNet checkpoints onto ``facenet_pytorch.InceptionResnetV1``.

Both ports (:mod:`anonymize.nets.facenet_tf`, a frozen GraphDef, and
:mod:`anonymize.nets.facenet_keras`, a Keras 2 HDF5 file) describe each
convolution by its TF-style scope (``InceptionResnetV1/Repeat_1/block17_3/Branch_1/
Conv2d_0b_1x7``) and a :class:`ConvParams`; :func:`build_state_dict` turns them
into a state dict and checks every shape, stride, padding and residual scale
against the torch module.

Mapping rule (no hand-written table of 132 names): TF scope ``Branch_k`` is the
torch ``branchk``; inside a branch the conv scopes sorted by name
(``Conv2d_0a`` < ``0b`` < ``0c`` < ``1a``) are the Sequential's indices.
Padding: TF ``SAME`` at stride 1 with odd kernels is symmetric, which is what
``InceptionResnetV1`` does; a ``SAME`` stride-2 conv would pad one more pixel at
the bottom/right than at the top/left and is refused (neither FaceNet file has one).

Example:
    >>> torch_prefix("InceptionResnetV1/Repeat_1/block17_3/Branch_1/Conv2d_0b_1x7",
    ...              {"InceptionResnetV1/Repeat_1/block17_3/Branch_1": [
    ...                  "InceptionResnetV1/Repeat_1/block17_3/Branch_1/Conv2d_0a_1x1",
    ...                  "InceptionResnetV1/Repeat_1/block17_3/Branch_1/Conv2d_0b_1x7"]})
    'repeat_2.2.branch1.1'
"""
from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from anonymize.errors import UsageError

__all__ = ["ConvParams", "FacenetPortError", "build_state_dict", "torch_prefix", "inception_resnet_v1"]

ROOT = "InceptionResnetV1/"
_STEM = {"Conv2d_1a_3x3": "conv2d_1a", "Conv2d_2a_3x3": "conv2d_2a", "Conv2d_2b_3x3": "conv2d_2b",
         "Conv2d_3b_1x1": "conv2d_3b", "Conv2d_4a_3x3": "conv2d_4a", "Conv2d_4b_3x3": "conv2d_4b"}
REPEATS = {"Repeat": "repeat_1", "Repeat_1": "repeat_2", "Repeat_2": "repeat_3"}
BN_EPS = 1e-3  # facenet_pytorch's BatchNorm eps, the value Sandberg's slim model uses


class FacenetPortError(UsageError):
    """A checkpoint does not fit InceptionResnetV1 (names the offending layer)."""


@dataclass(frozen=True)
class ConvParams:
    """One convolution: HWIO ``weights``; either a plain ``bias``, or a BatchNorm given as
    ``bn_offset`` (folded: scale already in the weights) or ``bn_beta/mean/var`` (scale 1)."""

    weights: np.ndarray
    strides: tuple[int, int]
    padding: str  # "SAME" | "VALID"
    bias: np.ndarray | None = None
    bn_offset: np.ndarray | None = None
    bn_beta: np.ndarray | None = None
    bn_mean: np.ndarray | None = None
    bn_var: np.ndarray | None = None
    bn_eps: float = BN_EPS

    @property
    def has_bn(self) -> bool:
        return self.bn_offset is not None or self.bn_beta is not None


def inception_resnet_v1(embedding_dim: int = 512) -> nn.Module:
    """An untrained ``facenet_pytorch.InceptionResnetV1`` with an ``embedding_dim`` head (never downloads)."""
    from facenet_pytorch import InceptionResnetV1

    model = InceptionResnetV1(pretrained=None, classify=False)
    if embedding_dim != 512:
        model.last_linear = nn.Linear(1792, embedding_dim, bias=False)
        model.last_bn = nn.BatchNorm1d(embedding_dim, eps=BN_EPS, momentum=0.1, affine=True)
    return model.eval()


def torch_prefix(scope: str, siblings: Mapping[str, list[str]]) -> str:
    """Torch module path of a TF conv scope (see the module docstring)."""
    rel = scope[len(ROOT):] if scope.startswith(ROOT) else scope
    parts = rel.split("/")
    if len(parts) == 1 and parts[0] in _STEM:
        return _STEM[parts[0]]
    if parts[0] in REPEATS and len(parts) > 2:  # Repeat/block35_3/...
        m = re.fullmatch(r"block\d+_(\d+)", parts[1])
        if not m:
            raise FacenetPortError(f"unexpected scope {scope}")
        block = f"{REPEATS[parts[0]]}.{int(m.group(1)) - 1}"
        rest = parts[2:]
    elif parts[0] in ("Mixed_6a", "Mixed_7a", "Block8"):
        block, rest = parts[0].lower(), parts[1:]
    else:
        raise FacenetPortError(f"unexpected scope {scope}")
    if rest == ["Conv2d_1x1"]:
        return f"{block}.conv2d"
    if len(rest) != 2 or not rest[0].startswith("Branch_"):
        raise FacenetPortError(f"unexpected scope {scope}")
    branch = f"{block}.branch{rest[0][len('Branch_'):]}"
    convs = siblings[scope.rsplit("/", 1)[0]]
    return branch if len(convs) == 1 else f"{branch}.{convs.index(scope)}"


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(a, dtype=np.float32, copy=True, order="C"))


def build_state_dict(convs: Mapping[str, ConvParams], scales: Mapping[str, float], bottleneck: np.ndarray,
                     head_bn: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float],
                     model: nn.Module) -> dict[str, torch.Tensor]:
    """State dict for ``model`` from conv scopes, residual ``scales`` (torch block path -> scale),
    the (1792, D) ``bottleneck`` matrix and the head BatchNorm ``(scale, beta, mean, var, eps)``."""
    siblings: dict[str, list[str]] = defaultdict(list)
    for scope in sorted(convs):
        siblings[scope.rsplit("/", 1)[0]].append(scope)
    modules = dict(model.named_modules())
    sd: dict[str, torch.Tensor] = {}
    for scope, c in convs.items():
        prefix = torch_prefix(scope, siblings)
        w = _t(np.asarray(c.weights).transpose(3, 2, 0, 1))
        conv_name = f"{prefix}.conv" if c.has_bn else prefix
        conv = modules.get(conv_name)
        if not isinstance(conv, nn.Conv2d):
            raise FacenetPortError(f"{scope}: no conv {conv_name} in the torch model")
        if tuple(conv.weight.shape) != tuple(w.shape):
            raise FacenetPortError(f"{scope}: weights {tuple(w.shape)} vs {conv_name} {tuple(conv.weight.shape)}")
        if tuple(conv.stride) != tuple(c.strides):
            raise FacenetPortError(f"{scope}: stride {c.strides} vs {conv.stride}")
        kh, kw = w.shape[2], w.shape[3]
        if c.padding == "VALID":
            want = (0, 0)
        elif c.padding == "SAME" and tuple(c.strides) == (1, 1) and kh % 2 and kw % 2:
            want = ((kh - 1) // 2, (kw - 1) // 2)
        else:
            raise FacenetPortError(f"{scope}: TF padding {c.padding} at stride {c.strides} with a {kh}x{kw} kernel "
                                   "is asymmetric; InceptionResnetV1's symmetric padding cannot reproduce it")
        if tuple(conv.padding) != want:
            raise FacenetPortError(f"{scope}: TF padding {c.padding} means {want}, torch has {conv.padding}")
        sd[f"{conv_name}.weight"] = w
        if c.has_bn:
            bn = modules[f"{prefix}.bn"]
            if abs(bn.eps - c.bn_eps) > 1e-7:  # type: ignore[operator]
                raise FacenetPortError(f"{scope}: BatchNorm eps {c.bn_eps} vs torch {bn.eps}")
            n = w.shape[0]
            sd[f"{prefix}.bn.weight"] = torch.ones(n)
            if c.bn_offset is not None:  # folded: (x - 0) / sqrt((1 - eps) + eps) * 1 + offset
                sd[f"{prefix}.bn.bias"] = _t(c.bn_offset)
                sd[f"{prefix}.bn.running_mean"] = torch.zeros(n)
                sd[f"{prefix}.bn.running_var"] = torch.full((n,), 1.0 - c.bn_eps)
            else:
                sd[f"{prefix}.bn.bias"] = _t(c.bn_beta)  # type: ignore[arg-type]
                sd[f"{prefix}.bn.running_mean"] = _t(c.bn_mean)  # type: ignore[arg-type]
                sd[f"{prefix}.bn.running_var"] = _t(c.bn_var)  # type: ignore[arg-type]
            sd[f"{prefix}.bn.num_batches_tracked"] = torch.zeros((), dtype=torch.long)
        else:
            if c.bias is None:
                raise FacenetPortError(f"{scope}: a conv without BatchNorm needs a bias")
            sd[f"{conv_name}.bias"] = _t(c.bias)
    want_scales = {p: float(m.scale) for p, m in modules.items() if hasattr(m, "scale")}
    if set(scales) != set(want_scales):
        raise FacenetPortError(f"residual scales found for {sorted(scales)}, model has {sorted(want_scales)}")
    for path, s in scales.items():
        if abs(want_scales[path] - s) > 1e-6:
            raise FacenetPortError(f"{path}: residual scale {s} in the checkpoint, {want_scales[path]} in the model")
    lin = modules["last_linear"]
    if tuple(lin.weight.shape) != (bottleneck.shape[1], bottleneck.shape[0]):  # type: ignore[union-attr]
        raise FacenetPortError(f"bottleneck {bottleneck.shape} vs last_linear {tuple(lin.weight.shape)}")  # type: ignore[union-attr]
    sd["last_linear.weight"] = _t(np.asarray(bottleneck).T)
    scale, beta, mean, var, eps = head_bn
    if abs(eps - modules["last_bn"].eps) > 1e-7:  # type: ignore[operator]
        raise FacenetPortError(f"head BatchNorm eps {eps} vs torch {modules['last_bn'].eps}")
    sd["last_bn.weight"] = _t(np.broadcast_to(np.asarray(scale, np.float32), np.shape(beta)))
    sd["last_bn.bias"] = _t(beta)
    sd["last_bn.running_mean"] = _t(mean)
    sd["last_bn.running_var"] = _t(var)
    sd["last_bn.num_batches_tracked"] = torch.zeros((), dtype=torch.long)
    return sd


def load_into(model: nn.Module, sd: dict[str, torch.Tensor], what: str) -> nn.Module:
    """``load_state_dict`` that must cover every parameter and buffer."""
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise FacenetPortError(f"{what} does not cover InceptionResnetV1: missing {missing[:6]}, "
                               f"unexpected {unexpected[:6]}")
    return model.eval()

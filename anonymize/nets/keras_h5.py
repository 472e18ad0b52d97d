"""Read a Keras 2 functional model saved as HDF5 (``model.save("x.h5")``) with ``h5py`` only,
and run it in NumPy as a reference.

:func:`read_keras_h5` returns the layer list (class, name, config, inbound layer
names) and each layer's weight arrays by their Keras names (``kernel:0``,
``beta:0``, ...). :func:`run_keras` evaluates the layers this project meets
(InputLayer, Conv2D, BatchNormalization, Activation, MaxPooling2D, Concatenate,
Add, Lambda, GlobalAveragePooling2D, Dropout, Dense) in NumPy with TensorFlow's
conventions (NHWC, ``same`` padding with the extra pixel after). ``Lambda``
layers hold marshalled Python bytecode that is never executed here: a Lambda is
only accepted when its ``arguments`` are exactly ``{"scale": s}`` (the residual
scaling of Inception-ResNet), which is applied as ``x * s``.

Example (not run: needs a Keras .h5 file, e.g. `anonymize fetch-weights facenet-ms1m`):
    >>> m = read_keras_h5(path)                      # doctest: +SKIP
    >>> run_keras(m, x_nhwc)[m.outputs[0]].shape      # doctest: +SKIP
    (1, 128)
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from anonymize.errors import MethodUnavailable, UsageError

from .tf_graph import conv2d_nhwc, pool_nhwc

__all__ = ["KerasLayer", "KerasModel", "KerasFormatError", "read_keras_h5", "run_keras"]


class KerasFormatError(UsageError):
    """Not a Keras 2 HDF5 model this reader understands."""


@dataclass(frozen=True)
class KerasLayer:
    cls: str
    name: str
    config: dict[str, Any]
    inbound: tuple[str, ...]
    weights: dict[str, np.ndarray]


@dataclass(frozen=True)
class KerasModel:
    layers: dict[str, KerasLayer]  # in config order (topological for functional models)
    outputs: tuple[str, ...]
    keras_version: str


def read_keras_h5(path: str | os.PathLike[str]) -> KerasModel:
    """Layers, their inbound connections and weights of a Keras 2 ``.h5`` model (needs ``h5py``)."""
    try:
        import h5py
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise MethodUnavailable("reading Keras .h5 weights needs h5py (pip install h5py)") from exc
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise KerasFormatError(f"{path}: not an HDF5 file ({exc})") from exc
    with f:
        if "model_config" not in f.attrs or "model_weights" not in f:
            raise KerasFormatError(f"{path}: no Keras model_config/model_weights (a weights-only file?)")
        raw = f.attrs["model_config"]
        cfg = json.loads(raw.decode() if isinstance(raw, bytes) else raw)
        if cfg.get("class_name") not in ("Functional", "Model"):
            raise KerasFormatError(f"{path}: a {cfg.get('class_name')} model, expected a functional Model")
        mw = f["model_weights"]
        layers: dict[str, KerasLayer] = {}
        for layer in cfg["config"]["layers"]:
            name = layer["config"]["name"]
            inbound: list[str] = []
            for node in layer.get("inbound_nodes", []):
                inbound += [i[0] for i in node]
            weights: dict[str, np.ndarray] = {}
            if name in mw:
                g = mw[name]
                for wn in g.attrs.get("weight_names", []):
                    wn = wn.decode() if isinstance(wn, bytes) else str(wn)
                    weights[wn.split("/")[-1]] = np.asarray(g[wn])
            layers[name] = KerasLayer(layer["class_name"], name, layer["config"], tuple(inbound), weights)
        outputs = tuple(o[0] for o in cfg["config"]["output_layers"])
        version = f.attrs.get("keras_version", b"")
        version = version.decode() if isinstance(version, bytes) else str(version)
    return KerasModel(layers, outputs, version)


def _same(cfg: dict[str, Any]) -> bytes:
    pad = cfg.get("padding", "valid").upper()
    if pad not in ("SAME", "VALID"):
        raise KerasFormatError(f"padding {pad!r} is not supported")
    return pad.encode()


def _activation(x: np.ndarray, kind: str) -> np.ndarray:
    if kind == "linear":
        return x
    if kind == "relu":
        return np.maximum(x, 0)
    raise KerasFormatError(f"activation {kind!r} is not supported by the reference")


def _layer(layer: KerasLayer, args: list[np.ndarray]) -> np.ndarray:
    c, w = layer.config, layer.weights
    cls = layer.cls
    if cls == "Conv2D":
        if c.get("dilation_rate", [1, 1]) != [1, 1] or c.get("groups", 1) != 1:
            raise KerasFormatError(f"{layer.name}: dilated/grouped Conv2D is not supported")
        s = c["strides"]
        y = conv2d_nhwc(args[0], w["kernel:0"], [1, s[0], s[1], 1], _same(c), None)
        if c.get("use_bias", True):
            y = y + w["bias:0"]
        return _activation(y, c.get("activation", "linear"))
    if cls == "BatchNormalization":
        gamma = w.get("gamma:0", 1.0)
        beta = w.get("beta:0", 0.0)
        return ((args[0] - w["moving_mean:0"]) / np.sqrt(w["moving_variance:0"] + c["epsilon"]) * gamma
                + beta).astype(np.float32)
    if cls == "Activation":
        return _activation(args[0], c["activation"])
    if cls == "MaxPooling2D":
        p, s = c["pool_size"], c["strides"] or c["pool_size"]
        return pool_nhwc(args[0], [1, p[0], p[1], 1], [1, s[0], s[1], 1], _same(c), "max")
    if cls == "Concatenate":
        return np.concatenate(args, axis=c.get("axis", -1))
    if cls == "Add":
        return np.sum(args, axis=0)
    if cls == "Lambda":
        arguments = c.get("arguments") or {}
        if set(arguments) != {"scale"}:
            raise KerasFormatError(f"{layer.name}: only scaling Lambdas ({{'scale': s}}) are supported")
        return args[0] * np.float32(arguments["scale"])
    if cls == "GlobalAveragePooling2D":
        return args[0].mean(axis=(1, 2))
    if cls == "Dropout":
        return args[0]
    if cls == "Dense":
        y = args[0] @ w["kernel:0"]
        if c.get("use_bias", True):
            y = y + w["bias:0"]
        return _activation(y, c.get("activation", "linear"))
    raise KerasFormatError(f"{layer.name}: layer class {cls} is not supported by the reference")


def run_keras(model: KerasModel, x: np.ndarray, keep: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """Evaluate the model on NHWC ``x``; returns the outputs (and the ``keep`` layers' values)."""
    values: dict[str, np.ndarray] = {}
    users: dict[str, int] = {}
    for layer in model.layers.values():
        for i in layer.inbound:
            users[i] = users.get(i, 0) + 1
    for layer in model.layers.values():
        if layer.cls == "InputLayer":
            values[layer.name] = np.asarray(x, np.float32)
            continue
        missing = [i for i in layer.inbound if i not in values]
        if missing:
            raise KerasFormatError(f"{layer.name}: inputs {missing} not computed (layers out of order)")
        values[layer.name] = _layer(layer, [values[i] for i in layer.inbound])
        for i in layer.inbound:  # free what no later layer needs
            users[i] -= 1
            if users[i] == 0 and i not in keep and i not in model.outputs:
                del values[i]
    return {k: values[k] for k in (*model.outputs, *keep)}

"""Read a frozen TensorFlow ``GraphDef`` (``.pb``) without TensorFlow, and run it in NumPy.

:func:`read_graphdef` decodes the nodes (name, op, inputs, attributes and
constant tensors) with the wire-format reader in :mod:`anonymize.nets.protowire`.
:func:`run_graph` is a small reference interpreter for the ops a frozen
FaceNet graph uses (Conv2D, BiasAdd, Relu, MaxPool, AvgPool, ConcatV2, Mul,
Add, Reshape, MatMul, FusedBatchNorm, the L2-normalisation ops, ...), written
to TensorFlow's documented semantics (NHWC, ``SAME`` padding that puts the odd
pixel at the bottom/right). It is slow and exists to check ports such as
:mod:`anonymize.nets.facenet_tf` node by node, not to be used in production.

Example:
    >>> import numpy as np
    >>> g = Graph({"x": Node("x", "Placeholder", [], {}),
    ...            "w": Node("w", "Const", [], {"value": np.full((1, 1, 1, 2), 2.0, np.float32)}),
    ...            "y": Node("y", "Conv2D", ["x", "w"], {"strides": [1, 1, 1, 1], "padding": b"SAME"})})
    >>> run_graph(g, {"x": np.ones((1, 2, 2, 1), np.float32)}, ["y"])["y"][0, 0, 0].tolist()
    [2.0, 2.0]
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .protowire import LEN, ProtoError, fields, floats, group, ints

__all__ = ["Graph", "Node", "GraphError", "conv2d_nhwc", "pool_nhwc", "read_graphdef", "run_graph", "tf_same_padding"]

# tensorflow/core/framework/types.proto
_DTYPES: dict[int, np.dtype] = {
    1: np.dtype("<f4"), 2: np.dtype("<f8"), 3: np.dtype("<i4"), 4: np.dtype("u1"), 5: np.dtype("<i2"),
    6: np.dtype("i1"), 9: np.dtype("<i8"), 10: np.dtype("?"), 19: np.dtype("<f2"),
}


class GraphError(ValueError):
    """The file is not a GraphDef this reader understands, or the graph cannot be evaluated."""


@dataclass(frozen=True)
class Node:
    """One ``NodeDef``: ``attrs`` holds decoded values (ndarray for tensors, list for lists,
    bytes for strings, int/float/bool, a tuple for shapes, ``('type', n)`` for dtypes)."""

    name: str
    op: str
    inputs: list[str]
    attrs: dict[str, Any] = field(default_factory=dict)

    @property
    def data_inputs(self) -> list[str]:
        """Inputs without control dependencies (``^name``) and without output suffixes."""
        return [i.split(":")[0] for i in self.inputs if not i.startswith("^")]


@dataclass
class Graph:
    """Nodes by name (in file order, which is **not** necessarily topological)."""

    nodes: dict[str, Node]

    def const(self, name: str) -> np.ndarray:
        """The value of a ``Const`` node (following ``Identity`` nodes)."""
        node = self.nodes.get(name)
        while node is not None and node.op == "Identity":
            node = self.nodes.get(node.data_inputs[0])
        if node is None or node.op != "Const":
            raise GraphError(f"{name!r} is not a constant")
        return node.attrs["value"]

    def ops(self) -> dict[str, int]:
        """How many nodes of each op type."""
        out: dict[str, int] = {}
        for n in self.nodes.values():
            out[n.op] = out.get(n.op, 0) + 1
        return out

    def consumers(self, name: str) -> list[Node]:
        return [n for n in self.nodes.values() if name in n.data_inputs]


# --------------------------------------------------------------------------- decoding


def _shape(buf: memoryview) -> tuple[int, ...] | None:
    g = group(buf)
    if g.get(3):  # unknown_rank
        return None
    dims = []
    for d in g.get(2, []):
        size = ints(group(d).get(1, [0]))[0]  # type: ignore[arg-type]
        dims.append(size)
    return tuple(dims)


def _tensor(buf: memoryview) -> np.ndarray:
    g = group(buf)
    code = int(g.get(1, [0])[0])  # type: ignore[arg-type]
    if code not in _DTYPES:
        raise GraphError(f"unsupported tensor dtype code {code}")
    dt = _DTYPES[code]
    shape = _shape(g[2][0]) if 2 in g else ()  # type: ignore[arg-type]
    shape = shape or ()
    count = int(np.prod(shape)) if shape else 1
    if g.get(4):  # tensor_content: raw little-endian bytes
        arr = np.frombuffer(bytes(g[4][0]), dtype=dt).copy()  # type: ignore[arg-type]
    elif code == 1:
        arr = floats(g.get(5, []))
    elif code == 2:
        arr = floats(g.get(6, []), double=True)
    elif code in (3, 4, 5, 6):
        arr = np.array(ints(g.get(7, [])), dtype=dt)
    elif code == 9:
        arr = np.array(ints(g.get(10, [])), dtype=dt)
    elif code == 10:
        arr = np.array(ints(g.get(11, [])), dtype=dt)
    else:
        raise GraphError(f"tensor of dtype code {code} without tensor_content is not supported")
    if arr.size != count:
        if arr.size == 0:
            arr = np.zeros(count, dt)
        elif arr.size < count:  # TF repeats the last value to fill the shape
            arr = np.concatenate([arr, np.full(count - arr.size, arr[-1], dt)])
        else:
            raise GraphError(f"tensor has {arr.size} values for shape {shape}")
    return arr.reshape(shape)


def _attr(buf: memoryview) -> Any:
    for num, wt, val in fields(buf):
        if num == 2 and wt == LEN:
            return bytes(val)  # type: ignore[arg-type]
        if num == 3:
            return ints([val])[0]
        if num == 4:
            return float(floats([val])[0])
        if num == 5:
            return bool(val)
        if num == 6:
            return ("type", int(val))  # type: ignore[arg-type]
        if num == 7:
            return _shape(val)  # type: ignore[arg-type]
        if num == 8:
            return _tensor(val)  # type: ignore[arg-type]
        if num == 1:  # ListValue
            g = group(val)  # type: ignore[arg-type]
            if g.get(3):
                return ints(g[3])
            if g.get(4):
                return floats(g[4]).tolist()
            if g.get(2):
                return [bytes(v) for v in g[2]]  # type: ignore[arg-type]
            if g.get(6):
                return [("type", t) for t in ints(g[6])]
            if g.get(7):
                return [_shape(v) for v in g[7]]  # type: ignore[arg-type]
            return []
    return None


def _node(buf: memoryview) -> Node:
    name, op, inputs, attrs = "", "", [], {}
    for num, _, val in fields(buf):
        if num == 1:
            name = bytes(val).decode()  # type: ignore[arg-type]
        elif num == 2:
            op = bytes(val).decode()  # type: ignore[arg-type]
        elif num == 3:
            inputs.append(bytes(val).decode())  # type: ignore[arg-type]
        elif num == 5:  # map<string, AttrValue> entry
            g = group(val)  # type: ignore[arg-type]
            key = bytes(g[1][0]).decode()  # type: ignore[arg-type]
            attrs[key] = _attr(g[2][0]) if 2 in g else None  # type: ignore[arg-type]
    if not name or not op:
        raise GraphError("a node without name or op")
    return Node(name, op, inputs, attrs)


def read_graphdef(src: str | os.PathLike[str] | bytes) -> Graph:
    """Decode a binary ``GraphDef`` file (or its bytes).

    Raises GraphError when the bytes are not a GraphDef (e.g. a truncated download).
    """
    data = Path(src).read_bytes() if not isinstance(src, (bytes, bytearray)) else bytes(src)
    nodes: dict[str, Node] = {}
    try:
        for num, wt, val in fields(data):
            if num == 1 and wt == LEN:
                n = _node(val)  # type: ignore[arg-type]
                nodes[n.name] = n
    except (ProtoError, UnicodeDecodeError, KeyError, IndexError) as exc:
        raise GraphError(f"not a readable TensorFlow GraphDef: {exc}") from exc
    if not nodes:
        raise GraphError("no nodes: not a TensorFlow GraphDef")
    return Graph(nodes)


# --------------------------------------------------------------------------- reference interpreter


def tf_same_padding(size: int, k: int, s: int, d: int = 1) -> tuple[int, int]:
    """TensorFlow ``SAME`` padding (before, after) for one axis: the extra pixel goes after.

    >>> tf_same_padding(160, 3, 2), tf_same_padding(7, 3, 1)
    ((0, 1), (1, 1))
    """
    out = -(-size // s)
    eff = (k - 1) * d + 1
    total = max((out - 1) * s + eff - size, 0)
    return total // 2, total - total // 2


def _pad_nhwc(x: np.ndarray, kh: int, kw: int, sh: int, sw: int, padding: bytes, value: float) -> np.ndarray:
    if padding == b"VALID":
        return x
    if padding != b"SAME":
        raise GraphError(f"padding {padding!r} is not supported")
    ph, pw = tf_same_padding(x.shape[1], kh, sh), tf_same_padding(x.shape[2], kw, sw)
    return np.pad(x, ((0, 0), ph, pw, (0, 0)), constant_values=value)


def _windows(x: np.ndarray, kh: int, kw: int, sh: int, sw: int) -> np.ndarray:
    """(N, Ho, Wo, kh, kw, C) strided view of an NHWC array."""
    v = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(1, 2))  # N, H', W', C, kh, kw
    return v[:, ::sh, ::sw].transpose(0, 1, 2, 4, 5, 3)


def conv2d_nhwc(x: np.ndarray, w: np.ndarray, strides: list[int], padding: bytes, dil: list[int] | None) -> np.ndarray:
    if dil and any(d != 1 for d in dil):
        raise GraphError("dilated Conv2D is not supported by the reference interpreter")
    kh, kw, _, _ = w.shape
    xp = _pad_nhwc(x, kh, kw, strides[1], strides[2], padding, 0.0)
    win = _windows(xp, kh, kw, strides[1], strides[2])
    return np.tensordot(win, w, axes=([3, 4, 5], [0, 1, 2])).astype(x.dtype)


def pool_nhwc(x: np.ndarray, ksize: list[int], strides: list[int], padding: bytes, kind: str) -> np.ndarray:
    kh, kw = ksize[1], ksize[2]
    if kind == "max":
        xp = _pad_nhwc(x, kh, kw, strides[1], strides[2], padding, -np.inf)
        return _windows(xp, kh, kw, strides[1], strides[2]).max(axis=(3, 4))
    # TF's AvgPool divides by the number of real (unpadded) pixels in each window
    xp = _pad_nhwc(x, kh, kw, strides[1], strides[2], padding, 0.0)
    ones = _pad_nhwc(np.ones_like(x[..., :1]), kh, kw, strides[1], strides[2], padding, 0.0)
    s = _windows(xp, kh, kw, strides[1], strides[2]).sum(axis=(3, 4))
    c = _windows(ones, kh, kw, strides[1], strides[2]).sum(axis=(3, 4))
    return (s / c).astype(x.dtype)


def _eval(node: Node, args: list[np.ndarray]) -> np.ndarray:
    op, a = node.op, node.attrs
    if op in ("Identity", "StopGradient", "Snapshot"):
        return args[0]
    if op == "Conv2D":
        if a.get("data_format", b"NHWC") != b"NHWC":
            raise GraphError("only NHWC Conv2D is supported")
        return conv2d_nhwc(args[0], args[1], a["strides"], a["padding"], a.get("dilations"))
    if op == "BiasAdd":
        return args[0] + args[1]
    if op in ("Add", "AddV2"):
        return args[0] + args[1]
    if op == "Sub":
        return args[0] - args[1]
    if op == "Mul":
        return args[0] * args[1]
    if op in ("RealDiv", "Div"):
        return args[0] / args[1]
    if op == "Relu":
        return np.maximum(args[0], 0)
    if op == "Relu6":
        return np.clip(args[0], 0, 6)
    if op == "MaxPool":
        return pool_nhwc(args[0], a["ksize"], a["strides"], a["padding"], "max")
    if op == "AvgPool":
        return pool_nhwc(args[0], a["ksize"], a["strides"], a["padding"], "avg")
    if op == "ConcatV2":
        axis = int(args[-1])
        return np.concatenate(args[:-1], axis=axis)
    if op == "Reshape":
        return args[0].reshape([int(v) for v in np.asarray(args[1]).reshape(-1)])
    if op == "MatMul":
        x, w = args
        if a.get("transpose_a"):
            x = x.T
        if a.get("transpose_b"):
            w = w.T
        return x @ w
    if op in ("FusedBatchNorm", "FusedBatchNormV3"):
        x, scale, offset, mean, var = args
        eps = a.get("epsilon", 1e-3)
        if a.get("is_training", True) and mean.size == 0:
            raise GraphError("training-mode FusedBatchNorm is not supported")
        return ((x - mean) / np.sqrt(var + eps) * scale + offset).astype(x.dtype)
    if op == "Square":
        return args[0] * args[0]
    if op == "Sum":
        axes = tuple(int(v) for v in np.asarray(args[1]).reshape(-1))
        return args[0].sum(axis=axes, keepdims=bool(a.get("keep_dims", False)))
    if op == "Maximum":
        return np.maximum(args[0], args[1])
    if op == "Rsqrt":
        return 1.0 / np.sqrt(args[0])
    if op == "Sqrt":
        return np.sqrt(args[0])
    if op == "Shape":
        return np.array(args[0].shape, np.int32)
    if op == "Pack":
        return np.stack([np.asarray(v) for v in args], axis=int(a.get("axis", 0)))
    if op == "StridedSlice":
        if any(a.get(k, 0) for k in ("ellipsis_mask", "new_axis_mask")):
            raise GraphError("StridedSlice with ellipsis/new-axis masks is not supported")
        x, begin, end, strides = (np.asarray(v) for v in args)
        sl: list[Any] = []
        for i in range(len(begin)):
            b = None if (a.get("begin_mask", 0) >> i) & 1 else int(begin[i])
            e = None if (a.get("end_mask", 0) >> i) & 1 else int(end[i])
            sl.append(slice(b, e, int(strides[i])))
        out = x[tuple(sl)]
        shrink = a.get("shrink_axis_mask", 0)
        if shrink:
            out = out.reshape([d for i, d in enumerate(out.shape) if not (shrink >> i) & 1])
        return out
    raise GraphError(f"op {op!r} ({node.name}) is not supported by the reference interpreter")


def run_graph(graph: Graph, feeds: Mapping[str, np.ndarray], fetches: Iterable[str]) -> dict[str, np.ndarray]:
    """Evaluate ``fetches`` given ``feeds`` (placeholder name -> array), in dependency order.

    Nodes are stored in arbitrary order in a GraphDef; this walks the dependencies
    depth-first (iteratively, so deep graphs do not hit the recursion limit).
    """
    values: dict[str, np.ndarray] = {k: np.asarray(v) for k, v in feeds.items()}
    wanted = list(fetches)
    for target in wanted:
        stack: list[tuple[str, bool]] = [(target, False)]
        active: set[str] = set()
        while stack:
            name, expanded = stack.pop()
            if name in values:
                continue
            node = graph.nodes.get(name)
            if node is None:
                raise GraphError(f"graph has no node {name!r}")
            if node.op == "Const":
                values[name] = node.attrs["value"]
                continue
            if node.op == "Placeholder":
                raise GraphError(f"placeholder {name!r} was not fed")
            deps = node.data_inputs
            if not expanded:
                if name in active:
                    raise GraphError(f"cycle through {name!r}")
                active.add(name)
                stack.append((name, True))
                stack.extend((d, False) for d in deps if d not in values)
                continue
            active.discard(name)
            args = [values[d] for d in deps]
            values[name] = args[0] if node.op == "PlaceholderWithDefault" else _eval(node, args)
    return {k: values[k] for k in wanted}

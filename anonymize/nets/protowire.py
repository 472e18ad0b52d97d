"""A minimal protocol-buffers wire-format reader (no ``protobuf`` package needed).

Enough to read the two model formats this project loads without their
frameworks: TensorFlow ``GraphDef`` (:mod:`anonymize.nets.tf_graph`) and ONNX
``ModelProto`` (:mod:`anonymize.nets.onnx_graph`). A message is a sequence of
``(field_number, wire_type, value)``; length-delimited values are returned as
``memoryview`` slices of the input (no copies), so a 100 MB graph is parsed in
place.

Example:
    >>> msg = bytes([0x08, 0x96, 0x01, 0x12, 0x02, 0x68, 0x69])  # field 1 = 150, field 2 = b"hi"
    >>> [(f, w, bytes(v) if w == 2 else v) for f, w, v in fields(msg)]
    [(1, 0, 150), (2, 2, b'hi')]
    >>> packed_varints(bytes([0x03, 0x8e, 0x02]))
    [3, 270]
"""
from __future__ import annotations

import struct
from collections.abc import Iterator

import numpy as np

__all__ = ["ProtoError", "fields", "group", "packed_varints", "to_signed64", "zigzag"]

Buffer = bytes | bytearray | memoryview

VARINT, FIXED64, LEN, FIXED32 = 0, 1, 2, 5


class ProtoError(ValueError):
    """The bytes are not a well-formed protocol-buffers message."""


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    n = len(buf)
    while True:
        if pos >= n:
            raise ProtoError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ProtoError("varint longer than 10 bytes")


def fields(data: Buffer) -> Iterator[tuple[int, int, int | memoryview]]:
    """Yield ``(field_number, wire_type, value)`` for each field of one message.

    Varints come as unsigned ints, fixed32/fixed64 as raw unsigned ints, and
    length-delimited fields as ``memoryview`` slices. Groups (wire types 3/4)
    are not used by GraphDef or ONNX and raise :class:`ProtoError`.
    """
    buf = memoryview(data).cast("B") if not isinstance(data, memoryview) else data
    pos, n = 0, len(buf)
    while pos < n:
        key, pos = _varint(buf, pos)
        num, wt = key >> 3, key & 7
        if num == 0:
            raise ProtoError("field number 0")
        if wt == VARINT:
            val, pos = _varint(buf, pos)
            yield num, wt, val
        elif wt == LEN:
            ln, pos = _varint(buf, pos)
            if pos + ln > n:
                raise ProtoError(f"field {num}: length {ln} runs past the end of the message")
            yield num, wt, buf[pos : pos + ln]
            pos += ln
        elif wt == FIXED32:
            if pos + 4 > n:
                raise ProtoError("truncated fixed32")
            yield num, wt, struct.unpack_from("<I", buf, pos)[0]
            pos += 4
        elif wt == FIXED64:
            if pos + 8 > n:
                raise ProtoError("truncated fixed64")
            yield num, wt, struct.unpack_from("<Q", buf, pos)[0]
            pos += 8
        else:
            raise ProtoError(f"unsupported wire type {wt} (field {num})")


def group(data: Buffer) -> dict[int, list[int | memoryview]]:
    """All fields of one message grouped by number (repeated fields keep their order)."""
    out: dict[int, list[int | memoryview]] = {}
    for num, _, val in fields(data):
        out.setdefault(num, []).append(val)
    return out


def packed_varints(data: Buffer) -> list[int]:
    """A packed ``repeated int32/int64/enum`` payload as unsigned ints."""
    buf = memoryview(data).cast("B") if not isinstance(data, memoryview) else data
    out, pos = [], 0
    while pos < len(buf):
        v, pos = _varint(buf, pos)
        out.append(v)
    return out


def to_signed64(v: int) -> int:
    """Two's-complement reading of a varint that encodes a negative int32/int64."""
    return v - (1 << 64) if v >= 1 << 63 else v


def zigzag(v: int) -> int:
    """Decode a ``sint32``/``sint64`` zig-zag varint."""
    return (v >> 1) ^ -(v & 1)


def floats(values: list[int | memoryview], *, double: bool = False) -> np.ndarray:
    """A repeated float/double field that may be packed (LEN) or not (fixed32/64 ints)."""
    dt = np.dtype("<f8" if double else "<f4")
    parts: list[np.ndarray] = []
    for v in values:
        if isinstance(v, (bytes, bytearray, memoryview)):
            parts.append(np.frombuffer(v, dtype=dt))
        else:
            parts.append(np.frombuffer(struct.pack("<Q" if double else "<I", v), dtype=dt))
    return np.concatenate(parts) if parts else np.zeros(0, dt)


def ints(values: list[int | memoryview], *, signed: bool = True) -> list[int]:
    """A repeated integer field that may be packed or not."""
    out: list[int] = []
    for v in values:
        out += packed_varints(v) if isinstance(v, (bytes, bytearray, memoryview)) else [v]
    return [to_signed64(v) for v in out] if signed else out

"""Decode one image file into an upright uint8 RGB :class:`ImageItem`.

Handles EXIF orientation (all 8 values), modes RGB, RGBA, L, LA, P (with
transparency), CMYK, 1-bit and 16-bit (grey and RGB PNG); alpha is kept
aside and 16-bit samples are kept so unchanged pixels are written back
losslessly. A pixel limit guards against decompression bombs.

Only regular files are read (FIFOs, sockets and devices are refused without
blocking, see :func:`read_regular_file`) and never more than ``max_bytes``.
Every problem with the file becomes an :class:`~anonymize.errors.ImageError`
with a stable ``code``.

Example:
    >>> import io
    >>> from PIL import Image
    >>> buf = io.BytesIO(); Image.new("RGB", (4, 3)).save(buf, "PNG")
    >>> item = decode_bytes(buf.getvalue(), source=Path("x.png"), relative=Path("x.png"))
    >>> item.pixels.shape, item.format
    ((3, 4, 3), 'PNG')
"""
from __future__ import annotations

import errno
import io
import os
import stat
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, JpegImagePlugin, UnidentifiedImageError

from ..errors import ImageError
from ..types import ImageItem

DEFAULT_MAX_PIXELS = 178_956_970  # Pillow's own default bomb limit (~179 MP)
DEFAULT_MAX_BYTES = 512 * 1024 * 1024  # 512 MiB: far above any real photo, far below what kills a run

# libjpeg's standard luminance quantisation table (ITU-T T.81 Annex K), quality 50.
_STD_LUMA_SUM = 16 + 11 + 10 + 16 + 24 + 40 + 51 + 61 + 12 + 12 + 14 + 19 + 26 + 58 + 60 + 55 + 14 + 13 + 16 + 24 + 40 + 57 + 69 + 56 + 14 + 17 + 22 + 29 + 51 + 87 + 80 + 62 + 18 + 22 + 37 + 56 + 68 + 109 + 103 + 77 + 24 + 35 + 55 + 64 + 81 + 104 + 113 + 92 + 49 + 64 + 78 + 87 + 103 + 121 + 120 + 101 + 72 + 92 + 95 + 98 + 112 + 100 + 103 + 99


def estimate_jpeg_quality(im: Image.Image) -> int | None:
    """Estimate the libjpeg quality (1-100) a JPEG was saved with, from its luminance table."""
    tables = getattr(im, "quantization", None)
    if not tables:
        return None
    luma = tables.get(0)
    if not luma:
        return None
    scale = 100.0 * float(sum(luma)) / _STD_LUMA_SUM
    if scale <= 1.0:
        return 100
    q = (200.0 - scale) / 2.0 if scale <= 100.0 else 5000.0 / scale
    return int(min(100, max(1, round(q))))


def _png_bit_depth(data: bytes) -> tuple[int, int] | None:
    """(bit depth, colour type) from a PNG's IHDR, or None."""
    if len(data) >= 26 and data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR":
        return data[24], data[25]
    return None


def decode_bytes(
    data: bytes,
    *,
    source: Path,
    relative: Path,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> ImageItem:
    """Decode ``data`` (the file's bytes). Raises ImageError on any problem."""
    if len(data) == 0:
        raise ImageError("empty-file", "the file is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
            w, h = im.size
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError("too-large", f"image exceeds the pixel limit ({max_pixels} pixels; raise --max-pixels)") from None
    except UnidentifiedImageError:
        raise ImageError("not-an-image", "the file is not an image in a format this tool reads") from None
    except Exception as exc:  # pragma: no cover - exotic decoder errors
        raise ImageError("unreadable", f"cannot open image: {exc}") from None
    if w * h > max_pixels:
        raise ImageError("too-large", f"{w}x{h} = {w * h} pixels exceeds the limit of {max_pixels} (raise --max-pixels)")
    if w == 0 or h == 0:
        raise ImageError("not-an-image", "image has zero width or height")

    fmt = im.format or "PNG"
    item_warnings: list[str] = []
    suffix = source.suffix.lower().lstrip(".")
    ext_fmt = {"jpg": "JPEG", "jpeg": "JPEG", "jpe": "JPEG", "png": "PNG", "webp": "WEBP", "tif": "TIFF", "tiff": "TIFF", "bmp": "BMP", "gif": "GIF"}.get(suffix)
    if ext_fmt and ext_fmt != fmt and not (ext_fmt == "JPEG" and fmt == "MPO"):
        item_warnings.append(f"extension .{suffix} does not match the content ({fmt}); written as {fmt}")
    if getattr(im, "n_frames", 1) > 1:
        item_warnings.append(f"{im.n_frames} frames; only the first is processed and written")

    try:
        exif = im.getexif()
        quality = estimate_jpeg_quality(im) if fmt in ("JPEG", "MPO") else None
        sampling = JpegImagePlugin.get_sampling(im) if fmt in ("JPEG", "MPO") else -1  # 0 4:4:4, 1 4:2:2, 2 4:2:0
        icc = im.info.get("icc_profile")
        im.load()
    except (Image.DecompressionBombError,):
        raise ImageError("too-large", f"image exceeds the pixel limit ({max_pixels} pixels)") from None
    except OSError as exc:
        msg = str(exc)
        code = "truncated" if "truncated" in msg or "broken" in msg.lower() else "unreadable"
        raise ImageError(code, f"cannot decode image data: {msg}") from None
    except Exception as exc:  # SyntaxError etc. from malformed headers
        raise ImageError("unreadable", f"cannot decode image data: {exc}") from None

    try:
        if exif.get(0x0112, 1) != 1:  # exif_transpose copies the image even when there is nothing to turn
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                im = ImageOps.exif_transpose(im) or im
    except Exception as exc:
        item_warnings.append(f"EXIF orientation could not be applied: {exc}")

    src_mode = im.mode
    alpha: np.ndarray | None = None
    high: np.ndarray | None = None
    pixels: np.ndarray

    depth = _png_bit_depth(data) if fmt == "PNG" else None
    if depth is not None and depth[0] == 16 and depth[1] in (2, 6):
        # Pillow reduces 16-bit colour PNGs to 8 bits; read them with OpenCV instead.
        import cv2

        arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        if arr is None or arr.dtype != np.uint16:
            raise ImageError("unreadable", "cannot decode 16-bit PNG")
        arr = _apply_orientation(arr, exif)
        if arr.shape[2] == 4:
            alpha = arr[:, :, 3].copy()
            arr = arr[:, :, :3]
        high = np.ascontiguousarray(arr[:, :, ::-1])
        pixels = (high >> 8).astype(np.uint8)
        out_mode = "RGB;16"
    elif src_mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(im)
        if src_mode == "I" and arr.max(initial=0) > 65535:
            item_warnings.append("32-bit integer samples reduced to 16 bits")
        high = np.clip(arr, 0, 65535).astype(np.uint16)
        g = (high >> 8).astype(np.uint8)
        pixels = np.repeat(g[:, :, None], 3, axis=2)
        out_mode = "L;16"
    elif src_mode == "F":
        arr = np.asarray(im, dtype=np.float64)
        lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
        g = np.zeros_like(arr, dtype=np.uint8) if hi <= lo else ((arr - lo) / (hi - lo) * 255).round().astype(np.uint8)
        pixels = np.repeat(g[:, :, None], 3, axis=2)
        item_warnings.append("floating-point samples rescaled to 8-bit grey")
        out_mode = "L"
    elif src_mode in ("1", "L"):
        g = np.asarray(im.convert("L"))
        pixels = np.repeat(g[:, :, None], 3, axis=2)
        out_mode = "L"
    elif src_mode == "LA" or src_mode == "La":
        la = np.asarray(im.convert("LA"))
        pixels = np.repeat(la[:, :, :1], 3, axis=2)
        alpha = la[:, :, 1].copy()
        out_mode = "LA"
    elif src_mode in ("P", "PA"):
        has_alpha = src_mode == "PA" or "transparency" in im.info
        if has_alpha:
            rgba = np.asarray(im.convert("RGBA"))
            pixels, alpha = rgba[:, :, :3].copy(), rgba[:, :, 3].copy()
            out_mode = "RGBA"
        else:
            pixels = np.asarray(im.convert("RGB"))
            out_mode = "RGB"
    elif src_mode in ("RGBA", "RGBa"):
        rgba = np.asarray(im.convert("RGBA"))
        pixels, alpha = rgba[:, :, :3].copy(), rgba[:, :, 3].copy()
        out_mode = "RGBA"
    elif src_mode == "CMYK":
        pixels = np.asarray(im.convert("RGB"))
        out_mode = "RGB"
        item_warnings.append("CMYK converted to RGB")
    else:
        pixels = np.asarray(im if src_mode == "RGB" else im.convert("RGB"))
        out_mode = "RGB"

    return ImageItem(
        source=source,
        relative=relative,
        pixels=np.ascontiguousarray(pixels, dtype=np.uint8),
        alpha=alpha,
        high_bit=high,
        format="JPEG" if fmt == "MPO" else fmt,
        mode=out_mode,
        jpeg_quality=quality,
        icc_profile=icc,
        exif=exif,
        info={"source_mode": src_mode, "width": int(pixels.shape[1]), "height": int(pixels.shape[0]),
              **({"jpeg_subsampling": sampling} if sampling in (0, 1, 2) else {})},
        warnings=item_warnings,
    )


def _apply_orientation(arr: np.ndarray, exif: Image.Exif) -> np.ndarray:
    """Apply EXIF orientation to a numpy array (for images not decoded by Pillow)."""
    o = exif.get(0x0112, 1) if exif else 1
    ops = {
        2: lambda a: a[:, ::-1],
        3: lambda a: a[::-1, ::-1],
        4: lambda a: a[::-1, :],
        5: lambda a: np.swapaxes(a, 0, 1),
        6: lambda a: np.rot90(a, -1),
        7: lambda a: np.swapaxes(a, 0, 1)[::-1, ::-1],
        8: lambda a: np.rot90(a, 1),
    }
    f = ops.get(int(o))
    return np.ascontiguousarray(f(arr)) if f else arr


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISDIR, "a folder")):
        if test(mode):
            return name
    return "not a regular file"


def read_regular_file(path: Path, *, max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
    """The bytes of ``path`` if it is a regular file (after resolving links) of at most ``max_bytes``.

    Never blocks and never reads without bound: FIFOs, sockets, devices (a link to
    ``/dev/zero``, ``/dev/null``) and folders raise ``not-a-regular-file`` before any
    read; the file is opened with ``O_NONBLOCK`` and checked again with ``fstat``, so a
    file swapped for a FIFO after the first check cannot hang the run; a file larger
    than ``max_bytes`` (by its size, or by what it turns out to hold) raises
    ``file-too-large``.

    Example:
        >>> read_regular_file(Path("/dev/null"))
        Traceback (most recent call last):
        ...
        anonymize.errors.ImageError: not-a-regular-file: is a character device, not a regular file
    """
    try:
        st = os.stat(path)  # follows symlinks: the check is on what the link points at
    except PermissionError:
        raise ImageError("unreadable", "permission denied") from None
    except OSError as exc:
        code = "symlink-loop" if exc.errno == errno.ELOOP else "unreadable"
        raise ImageError(code, f"cannot read file: {exc.strerror or exc}") from None
    if not stat.S_ISREG(st.st_mode):
        if stat.S_ISDIR(st.st_mode):
            raise ImageError("unreadable", "is a folder, not a file")
        raise ImageError("not-a-regular-file", f"is {_kind(st.st_mode)}, not a regular file")
    _check_size(st.st_size, max_bytes)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0) \
        | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except PermissionError:
        raise ImageError("unreadable", "permission denied") from None
    except OSError as exc:  # e.g. ENXIO: swapped for a socket or a FIFO without writer
        if exc.errno in (errno.ENXIO, errno.ENODEV, errno.EOPNOTSUPP):
            raise ImageError("not-a-regular-file", f"cannot open as a regular file: {exc.strerror or exc}") from None
        code = "symlink-loop" if exc.errno == errno.ELOOP else "unreadable"
        raise ImageError(code, f"cannot read file: {exc.strerror or exc}") from None
    try:
        fst = os.fstat(fd)
        if not stat.S_ISREG(fst.st_mode):  # replaced between stat and open
            raise ImageError("not-a-regular-file", f"is {_kind(fst.st_mode)}, not a regular file")
        _check_size(fst.st_size, max_bytes)
        chunks: list[bytes] = []
        total = 0
        while True:
            try:
                chunk = os.read(fd, min(1 << 20, max_bytes + 1 - total))
            except BlockingIOError:  # cannot happen for a regular file; never wait
                raise ImageError("not-a-regular-file", "reading would block") from None
            except OSError as exc:
                raise ImageError("unreadable", f"cannot read file: {exc.strerror or exc}") from None
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > max_bytes:  # grew while being read
                _check_size(total, max_bytes)
    finally:
        os.close(fd)
    return b"".join(chunks)


def _check_size(size: int, max_bytes: int) -> None:
    if size > max_bytes:
        raise ImageError("file-too-large", f"the file has {size} bytes, more than the limit of {max_bytes} (raise --max-bytes)")


def decode_file(path: Path, relative: Path, *, max_pixels: int = DEFAULT_MAX_PIXELS,
                max_bytes: int = DEFAULT_MAX_BYTES) -> tuple[ImageItem, bytes]:
    """Read (:func:`read_regular_file`) and decode ``path``; returns the item and the raw bytes (for hashing)."""
    data = read_regular_file(path, max_bytes=max_bytes)
    return decode_bytes(data, source=path, relative=relative, max_pixels=max_pixels), data

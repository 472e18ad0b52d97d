"""Encode a processed image in its input's format and write it atomically.

Format-faithful: same container as the input unless ``fmt`` overrides it;
JPEG quality close to the input's (estimated) and its chroma subsampling kept, grey stays grey, alpha is
restored, 16-bit PNGs stay 16-bit (unchanged pixels keep their exact 16-bit
values). Metadata goes through :mod:`anonymize.io.metadata`.

Example:
    >>> import numpy as np
    >>> from pathlib import Path
    >>> from anonymize.types import ImageItem
    >>> item = ImageItem(Path("a.png"), Path("a.png"), np.zeros((2, 2, 3), np.uint8))
    >>> data, ext, meta = encode_image(item, item.pixels)
    >>> data[:4], ext
    (b'\\x89PNG', '.png')
"""
from __future__ import annotations

import errno
import io
import os
import secrets
import time
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import OutputError, UsageError
from ..types import ImageItem
from .discover import TMP_MARK
from .metadata import MetadataPlan, plan_metadata

FORMATS = {"same": None, "jpeg": "JPEG", "jpg": "JPEG", "png": "PNG", "webp": "WEBP", "tiff": "TIFF", "bmp": "BMP"}
EXTENSIONS = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "TIFF": ".tif", "BMP": ".bmp", "GIF": ".gif", "PPM": ".ppm"}
WRITABLE = set(EXTENSIONS)


def resolve_format(name: str | None) -> str | None:
    """``--format`` value -> Pillow format name, or None for 'same as input'."""
    if name is None:
        return None
    key = name.lower()
    if key not in FORMATS:
        raise UsageError(f"unknown --format {name!r}; choose one of: {', '.join(FORMATS)}")
    return FORMATS[key]


def output_format(item: ImageItem, override: str | None) -> str:
    fmt = override or item.format
    return fmt if fmt in WRITABLE else "PNG"


def _merge_high_bit(item: ImageItem, pixels: np.ndarray) -> np.ndarray:
    """16-bit output: exact original samples where the 8-bit pixel is unchanged, else the new value * 257."""
    assert item.high_bit is not None
    if item.mode == "L;16":
        new8 = pixels[:, :, 0] if pixels.ndim == 3 else pixels
        old8 = item.pixels[:, :, 0]
    else:
        new8, old8 = pixels, item.pixels
    if new8.shape != old8.shape:
        return new8.astype(np.uint16) * 257
    return np.where(new8 == old8, item.high_bit, new8.astype(np.uint16) * 257).astype(np.uint16)


def encode_image(
    item: ImageItem,
    pixels: np.ndarray,
    *,
    alpha: np.ndarray | None = None,
    fmt: str | None = None,
    keep: frozenset[str] = frozenset(),
    quality: int | None = None,
) -> tuple[bytes, str, MetadataPlan]:
    """Encode ``pixels`` (uint8 RGB, the processed image) as the output file's bytes.

    Returns (bytes, file extension, metadata plan).
    """
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3:
        raise ValueError(f"expected uint8 (H, W, 3) pixels, got {pixels.dtype} {pixels.shape}")
    out_fmt = output_format(item, fmt)
    alpha = item.alpha if alpha is None else alpha
    if alpha is not None and alpha.shape[:2] != pixels.shape[:2]:
        alpha = np.asarray(Image.fromarray(_to8(alpha)).resize((pixels.shape[1], pixels.shape[0]), Image.BILINEAR))
    meta = plan_metadata(item.exif, item.icc_profile, keep)
    grey = item.mode in ("L", "LA", "L;16")
    can_alpha = out_fmt in ("PNG", "WEBP", "TIFF", "GIF")
    buf = io.BytesIO()
    kwargs: dict[str, object] = {}
    if meta.exif and out_fmt in ("JPEG", "PNG", "WEBP", "TIFF"):
        kwargs["exif"] = meta.exif
    if meta.icc_profile and out_fmt in ("JPEG", "PNG", "WEBP", "TIFF"):
        kwargs["icc_profile"] = meta.icc_profile

    if out_fmt == "PNG" and item.high_bit is not None and fmt in (None, "PNG"):
        hi = _merge_high_bit(item, pixels)
        if item.mode == "L;16" and alpha is None:
            Image.fromarray(hi).save(buf, "PNG", **kwargs)
            return buf.getvalue(), EXTENSIONS[out_fmt], meta
        import cv2

        bgr = hi[:, :, ::-1] if hi.ndim == 3 else np.repeat(hi[:, :, None], 3, axis=2)
        if alpha is not None:
            a16 = alpha.astype(np.uint16) * (257 if alpha.dtype == np.uint8 else 1)
            bgr = np.dstack([bgr, a16])
        ok, enc = cv2.imencode(".png", np.ascontiguousarray(bgr))
        if not ok:
            raise RuntimeError("16-bit PNG encoding failed")
        if meta.kept:
            meta.removed.extend(f"{k} (not written by the 16-bit PNG encoder)" for k in meta.kept)
            meta.kept = []
        return enc.tobytes(), EXTENSIONS[out_fmt], meta

    if grey:
        base = Image.fromarray(np.ascontiguousarray(pixels[:, :, 0]) if _is_grey(pixels) else np.asarray(Image.fromarray(pixels).convert("L")))
    else:
        base = Image.fromarray(np.ascontiguousarray(pixels))
    if alpha is not None and can_alpha:
        base.putalpha(Image.fromarray(_to8(alpha)))
    elif alpha is not None and not can_alpha:
        # Flatten onto white: a format without alpha cannot keep transparency.
        bg = Image.new(base.mode, base.size, 255 if grey else (255, 255, 255))
        bg.paste(base, mask=Image.fromarray(_to8(alpha)))
        base = bg

    if out_fmt == "JPEG":
        q = quality or item.jpeg_quality or 92
        sub = item.info.get("jpeg_subsampling")  # the input JPEG's chroma subsampling, kept; else 4:4:4 from q 90
        sub = sub if sub in (0, 1, 2) else (0 if q >= 90 else 2)
        base.save(buf, "JPEG", quality=int(q), subsampling=sub, optimize=True, **kwargs)
    elif out_fmt == "PNG":
        base.save(buf, "PNG", optimize=False, compress_level=6, **kwargs)
    elif out_fmt == "WEBP":
        base.save(buf, "WEBP", quality=int(quality or 95), method=4, **kwargs)
    elif out_fmt == "TIFF":
        base.save(buf, "TIFF", compression="tiff_deflate", **kwargs)
    elif out_fmt == "GIF":
        if base.mode in ("RGBA", "LA"):
            rgba = base.convert("RGBA")
            pal = rgba.convert("RGB").quantize(255, method=Image.Quantize.MEDIANCUT)
            idx = np.asarray(pal).copy()
            idx[np.asarray(rgba)[:, :, 3] < 128] = 255
            out = Image.frombuffer("P", (idx.shape[1], idx.shape[0]), np.ascontiguousarray(idx).tobytes(), "raw", "P", 0, 1)
            out.putpalette(pal.getpalette()[: 255 * 3] + [0, 0, 0])
            out.save(buf, "GIF", transparency=255)
        else:
            base.convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT).save(buf, "GIF")
    else:
        base.convert("RGB" if not grey else "L").save(buf, out_fmt)
    return buf.getvalue(), EXTENSIONS[out_fmt], meta


def _is_grey(px: np.ndarray) -> bool:
    return bool(np.array_equal(px[:, :, 0], px[:, :, 1]) and np.array_equal(px[:, :, 1], px[:, :, 2]))


def _to8(a: np.ndarray) -> np.ndarray:
    return (a >> 8).astype(np.uint8) if a.dtype == np.uint16 else a.astype(np.uint8)


DISK_FULL_ERRNOS = frozenset(e for e in (errno.ENOSPC, getattr(errno, "EDQUOT", None), errno.EFBIG) if e is not None)
"""Write errors that mean "no more room" (disk full, quota exceeded, file-size limit): they stop the run."""


def is_disk_full(exc: BaseException) -> bool:
    """True for ENOSPC / EDQUOT / EFBIG.

    Example:
        >>> is_disk_full(OSError(errno.ENOSPC, "No space left on device")), is_disk_full(PermissionError())
        (True, False)
    """
    return isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS


class DiskFull(OutputError):
    """A write failed because the disk, a quota or the file-size limit is full (exit 2)."""

    def __init__(self, path: Path, exc: OSError) -> None:
        self.path = Path(path)
        self.errno = exc.errno
        super().__init__(f"cannot write {path}: {exc.strerror or exc} (out of space: disk, quota or file-size limit)")


def ensure_writable_dir(folder: Path, what: str = "output folder") -> None:
    """Create ``folder`` if needed and prove it is writable by creating and removing a probe file.

    Raises :class:`~anonymize.errors.OutputError` (exit 2) with one clear line otherwise.
    A real write is the only honest test: ``os.access`` says yes to root on a read-only
    mount's folders and to everyone on a full disk.

    Example:
        >>> ensure_writable_dir(Path("/dev/null/x"), "--output")
        Traceback (most recent call last):
        ...
        anonymize.errors.OutputError: --output /dev/null/x cannot be created: Not a directory
    """
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{what} {folder} cannot be created: {exc.strerror or exc}") from None
    if not folder.is_dir():
        raise OutputError(f"{what} {folder} is not a folder")
    probe = folder / f".probe{TMP_MARK}{os.getpid()}-{secrets.token_hex(4)}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, b"x")
        finally:
            os.close(fd)
    except OSError as exc:
        raise OutputError(f"{what} {folder} is not writable: {exc.strerror or exc}") from None
    finally:
        try:
            probe.unlink()
        except OSError:
            pass


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder and an atomic rename.

    A crash at any point leaves either the old file (or none) or the complete
    new file, never a partial one under the final name. Temporary files carry
    ``.anonymize-tmp-`` in their name; discovery ignores them and
    :func:`clean_stale_temporaries` removes leftovers from killed runs. A full disk
    (ENOSPC, EDQUOT, EFBIG) removes the temporary and raises :class:`DiskFull`.
    """
    publish(write_temporary(path, data), path)


def write_temporary(path: Path, data: bytes, *, sync: bool = True) -> Path:
    """First half of :func:`atomic_write`: ``data`` in a temporary beside ``path`` (fsynced unless
    ``sync=False``); returns it.

    The protect pipeline stages every output this way, writes its record, and only then
    :func:`publish` es it, so an output never appears without its record. It skips the per-file
    fsync (4 ms of a 2.5 ms image, measured by ``benchmarks/engines.py``) and calls
    :func:`sync_filesystem` once at the end of the run instead: a power cut mid-run can leave an
    output whose bytes do not match its record, which a re-run detects by sha256 and redoes.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        if is_disk_full(exc):
            raise DiskFull(path, exc) from exc
        raise
    tmp = path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}-{secrets.token_hex(4)}")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            if sync:
                fh.flush()
                os.fsync(fh.fileno())
    except BaseException as exc:
        discard(tmp)
        if is_disk_full(exc):
            raise DiskFull(path, exc) from exc  # type: ignore[arg-type]
        raise
    return tmp


def publish(tmp: Path, path: Path) -> None:
    """Second half of :func:`atomic_write`: rename the temporary onto ``path`` (atomic); removes it on failure."""
    try:
        os.replace(tmp, path)
    except BaseException as exc:
        discard(tmp)
        if is_disk_full(exc):
            raise DiskFull(path, exc) from exc  # type: ignore[arg-type]
        raise


def sync_filesystem(folder: Path) -> None:
    """Flush the file system that holds ``folder`` to disk (``syncfs``; ``os.sync`` where it is missing)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(folder, os.O_RDONLY)
        try:
            if libc.syncfs(fd) == 0:
                return
        finally:
            os.close(fd)
    except (OSError, AttributeError):
        pass
    if hasattr(os, "sync"):
        os.sync()


def discard(path: Path) -> None:
    """Remove a temporary (or any file) if it is there."""
    try:
        os.unlink(path)
    except OSError:
        pass


STALE_TEMPORARY_AGE_S = 600.0
"""A temporary older than this is stale even if its writer's pid is alive (pid reuse in containers)."""


def _pid_alive(pid: int) -> bool:
    if os.name == "nt":  # no cheap liveness probe: rely on the age rule
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: exists, owned by someone else
        return True
    return True


def is_stale_temporary(path: Path, *, now: float | None = None) -> bool:
    """True if ``path`` is a temporary left behind by a dead writer (never one still being written).

    Temporaries are named ``.<name>.anonymize-tmp-<pid>-<hex>``; a temporary is stale
    when that pid no longer runs, or when it is older than :data:`STALE_TEMPORARY_AGE_S`.
    A concurrent run (or another writer thread) writing into the same folder keeps its files.

    Example:
        >>> is_stale_temporary(Path(".a.jpg.anonymize-tmp-999999999-00ff"))  # no such pid
        True
    """
    name = path.name
    if TMP_MARK not in name:
        return False
    pid_part = name.split(TMP_MARK, 1)[1].split("-", 1)[0]
    if not pid_part.isdigit() or not _pid_alive(int(pid_part)):
        return True
    try:
        age = (time.time() if now is None else now) - path.stat().st_mtime
    except OSError:
        return False
    return age > STALE_TEMPORARY_AGE_S


def clean_stale_temporaries(folder: Path) -> int:
    """Remove temporaries that killed runs left directly in ``folder`` (not recursive). Returns how many.

    Only stale ones (:func:`is_stale_temporary`): in-flight temporaries of live writers
    (this run's other threads, a concurrent run into the same folder) are kept.
    """
    n = 0
    try:
        with os.scandir(folder) as it:
            for e in it:
                if TMP_MARK in e.name and e.is_file(follow_symlinks=False) and is_stale_temporary(Path(e.path)):
                    try:
                        os.unlink(e.path)
                        n += 1
                    except OSError:
                        pass
    except OSError:  # folder missing or unreadable: nothing to clean
        pass
    return n

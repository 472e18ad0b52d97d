"""Decoding every mode, EXIF orientation, format-faithful encoding and metadata policy."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anonymize.errors import ImageError
from anonymize.io.decode import decode_bytes, decode_file, estimate_jpeg_quality
from anonymize.io.encode import atomic_write, encode_image
from anonymize.io.metadata import parse_keep
from tests.helpers import small_real, write_modes

EXPECTED_MODE = {
    "rgb.jpg": ("RGB", False), "rgba.png": ("RGBA", True), "grey.png": ("L", False), "grey_alpha.png": ("LA", True),
    "palette.png": ("RGB", False), "palette_transparent.png": ("RGBA", True), "bilevel.png": ("L", False),
    "cmyk.jpg": ("RGB", False), "grey16.png": ("L;16", False), "rgb16.png": ("RGB;16", False),
    "rgb.webp": ("RGB", False), "rgb.tif": ("RGB", False), "rgb.bmp": ("RGB", False), "anim.gif": ("RGB", False),
}


@pytest.fixture(scope="module")
def modes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_modes(tmp_path_factory.mktemp("modes"))


@pytest.mark.parametrize("name", sorted(EXPECTED_MODE))
def test_every_mode_decodes_to_rgb_and_round_trips(modes: dict[str, Path], name: str) -> None:
    item, data = decode_file(modes[name], Path(name))
    mode, has_alpha = EXPECTED_MODE[name]
    assert item.pixels.dtype == np.uint8 and item.pixels.shape == (96, 96, 3)
    assert item.mode == mode
    assert (item.alpha is not None) == has_alpha
    # Unchanged pixels written back: same container, same mode, alpha and high bits restored.
    out, ext, _ = encode_image(item, item.pixels)
    back = Image.open(io.BytesIO(out))
    assert back.format == item.format
    if mode in ("L", "LA"):
        assert back.mode == mode
    if has_alpha:
        assert np.array_equal(np.asarray(back.convert("RGBA"))[:, :, 3], item.alpha if item.alpha.dtype == np.uint8 else item.alpha >> 8)
    if name == "grey16.png":
        assert np.array_equal(np.asarray(back), item.high_bit), "16-bit grey samples must survive exactly"
    if name == "rgb16.png":
        import cv2

        arr = cv2.imdecode(np.frombuffer(out, np.uint8), cv2.IMREAD_UNCHANGED)
        assert arr.dtype == np.uint16 and np.array_equal(arr[:, :, ::-1], item.high_bit)


def test_sixteen_bit_changed_pixels_take_new_values(modes: dict[str, Path]) -> None:
    item, _ = decode_file(modes["grey16.png"], Path("g"))
    px = item.pixels.copy()
    px[:10] = 0
    out, _, _ = encode_image(item, px)
    back = np.asarray(Image.open(io.BytesIO(out)))
    assert (back[:10] == 0).all() and np.array_equal(back[10:], item.high_bit[10:])


def _orient(img: np.ndarray, o: int) -> np.ndarray:
    """Stored pixels for orientation o, given the upright image (inverse of what viewers apply)."""
    inv = {1: lambda a: a, 2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
           5: lambda a: np.swapaxes(a, 0, 1), 6: lambda a: np.rot90(a, 1), 7: lambda a: np.swapaxes(a[::-1, ::-1], 0, 1),
           8: lambda a: np.rot90(a, -1)}
    return np.ascontiguousarray(inv[o](img))


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_applied(orientation: int) -> None:
    upright = small_real(64)[:, :48]  # non-square, asymmetric real content
    stored = _orient(upright, orientation)
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    Image.fromarray(stored).save(buf, "PNG", exif=exif.tobytes())
    item = decode_bytes(buf.getvalue(), source=Path("o.png"), relative=Path("o.png"))
    assert np.array_equal(item.pixels, upright)


def _jpeg_with_private_exif() -> bytes:
    exif = Image.Exif()
    exif[0x010F] = "CamMaker"
    exif[0x0110] = "CamModel"
    exif[0x0132] = "2024:01:02 03:04:05"
    exif[0x0112] = 1
    sub = exif.get_ifd(0x8769)
    sub[0xA431] = "SERIAL-123456"  # BodySerialNumber
    sub[0xA430] = "Jane Owner"  # CameraOwnerName
    sub[0x9003] = "2024:01:02 03:04:05"
    gps = exif.get_ifd(0x8825)
    gps[1] = "N"
    gps[2] = (52.0, 22.0, 1.5)
    gps[3] = "E"
    gps[4] = (4.0, 53.0, 2.5)
    buf = io.BytesIO()
    Image.fromarray(small_real(64)).save(buf, "JPEG", exif=exif.tobytes(), quality=90)
    return buf.getvalue()


def _exif_of(data: bytes) -> Image.Exif:
    return Image.open(io.BytesIO(data)).getexif()


def test_metadata_stripped_by_default_gps_never_survives() -> None:
    data = _jpeg_with_private_exif()
    item = decode_bytes(data, source=Path("p.jpg"), relative=Path("p.jpg"))
    assert item.exif.get_ifd(0x8825), "test input must carry GPS"
    out, _, meta = encode_image(item, item.pixels)
    assert len(_exif_of(out)) == 0
    for secret in (b"SERIAL-123456", b"Jane Owner", b"CamMaker"):
        assert secret not in out
    assert "gps" in meta.removed


def test_allow_list_keeps_only_named_groups() -> None:
    data = _jpeg_with_private_exif()
    item = decode_bytes(data, source=Path("p.jpg"), relative=Path("p.jpg"))
    out, _, meta = encode_image(item, item.pixels, keep=parse_keep("datetime,camera"))
    ex = _exif_of(out)
    assert ex.get(0x0132) == "2024:01:02 03:04:05" and ex.get(0x010F) == "CamMaker"
    assert not ex.get_ifd(0x8825), "GPS must never survive without 'all'"
    assert b"SERIAL-123456" not in out and b"Jane Owner" not in out
    assert set(meta.kept) == {"datetime", "camera"}


def test_keep_all_is_explicit_and_reported() -> None:
    data = _jpeg_with_private_exif()
    item = decode_bytes(data, source=Path("p.jpg"), relative=Path("p.jpg"))
    out, _, meta = encode_image(item, item.pixels, keep=parse_keep("all"))
    assert _exif_of(out).get_ifd(0x8825), "with 'all' GPS is kept"
    assert meta.kept == ["all"]


def test_jpeg_quality_estimate_is_close() -> None:
    for q in (50, 75, 90, 95):
        buf = io.BytesIO()
        Image.fromarray(small_real(64)).save(buf, "JPEG", quality=q)
        est = estimate_jpeg_quality(Image.open(io.BytesIO(buf.getvalue())))
        assert est is not None and abs(est - q) <= 2


@pytest.mark.parametrize(
    "payload,code",
    [
        (b"", "empty-file"),
        (b"hello, this is text", "not-an-image"),
    ],
)
def test_bad_bytes_raise_clear_codes(payload: bytes, code: str) -> None:
    with pytest.raises(ImageError) as ei:
        decode_bytes(payload, source=Path("x.jpg"), relative=Path("x.jpg"))
    assert ei.value.code == code


def test_truncated_and_too_large() -> None:
    buf = io.BytesIO()
    Image.fromarray(small_real(96)).save(buf, "JPEG", quality=90)
    data = buf.getvalue()
    with pytest.raises(ImageError) as ei:
        decode_bytes(data[: len(data) // 2], source=Path("t.jpg"), relative=Path("t.jpg"))
    assert ei.value.code == "truncated"
    with pytest.raises(ImageError) as ei:
        decode_bytes(data, source=Path("t.jpg"), relative=Path("t.jpg"), max_pixels=1000)
    assert ei.value.code == "too-large"


def test_atomic_write_replaces_whole_file(tmp_path: Path) -> None:
    p = tmp_path / "a" / "b.bin"
    atomic_write(p, b"1" * 1000)
    atomic_write(p, b"2" * 10)
    assert p.read_bytes() == b"2" * 10
    assert [x.name for x in p.parent.iterdir()] == ["b.bin"]

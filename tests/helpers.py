"""Small utilities shared by tests: real sample photos written in many modes."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def astronaut() -> np.ndarray:
    from skimage import data

    return np.ascontiguousarray(data.astronaut())


def small_real(size: int = 96) -> np.ndarray:
    """The astronaut photo downscaled: a small real RGB image."""
    return np.asarray(Image.fromarray(astronaut()).resize((size, size), Image.LANCZOS))


def write_modes(folder: Path, size: int = 96) -> dict[str, Path]:
    """Write the same real photo as RGB JPEG, RGBA/L/LA/P/P+transparency/1-bit PNG, CMYK JPEG, 16-bit PNGs."""
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    rgb = small_real(size)
    im = Image.fromarray(rgb)
    paths: dict[str, Path] = {}

    def save(name: str, img: Image.Image, fmt: str, **kw: object) -> None:
        p = folder / name
        img.save(p, fmt, **kw)
        paths[name] = p

    save("rgb.jpg", im, "JPEG", quality=85)
    a = np.tile(np.linspace(0, 255, size, dtype=np.uint8), (size, 1))
    rgba = im.copy()
    rgba.putalpha(Image.fromarray(a))
    save("rgba.png", rgba, "PNG")
    save("grey.png", im.convert("L"), "PNG")
    save("grey_alpha.png", rgba.convert("LA"), "PNG")
    save("palette.png", im.convert("P", palette=Image.Palette.ADAPTIVE, colors=64), "PNG")
    pt = im.convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    save("palette_transparent.png", pt, "PNG", transparency=0)
    save("bilevel.png", im.convert("1"), "PNG")
    save("cmyk.jpg", im.convert("CMYK"), "JPEG", quality=90)
    g16 = (np.asarray(im.convert("L")).astype(np.uint16) * 257 + 3).astype(np.uint16)
    Image.fromarray(g16).save(folder / "grey16.png")
    paths["grey16.png"] = folder / "grey16.png"
    rgb16 = rgb.astype(np.uint16) * 257 + 5
    cv2.imwrite(str(folder / "rgb16.png"), np.ascontiguousarray(rgb16[:, :, ::-1]))
    paths["rgb16.png"] = folder / "rgb16.png"
    save("rgb.webp", im, "WEBP", quality=90)
    save("rgb.tif", im, "TIFF")
    save("rgb.bmp", im, "BMP")
    save("anim.gif", im.convert("P"), "GIF")
    return paths


def hog_faces(img: np.ndarray, upsample: int = 1) -> list:
    """dlib HOG detections as Faces (exclusive-end boxes, the package's convention)."""
    import dlib

    from anonymize.types import Face

    rects = dlib.get_frontal_face_detector()(img, upsample)
    return [Face((r.left(), r.top(), r.right() + 1, r.bottom() + 1), 1.0, "dlib-hog") for r in rects]


def dlib_chips(img: np.ndarray, boxes: list | None = None) -> np.ndarray:
    """dlib150 chips (N, 150, 150, 3) uint8 from the alignment table; ``boxes=None`` runs dlib's HOG detector."""
    from anonymize.faces.alignments import extract_chips

    return extract_chips("dlib150", img, hog_faces(img) if boxes is None else boxes)

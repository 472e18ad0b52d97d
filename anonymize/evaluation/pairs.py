"""Which protected file belongs to which original.

Files pair by relative path; a protected file may have another extension (when
``--format`` changed it). A single original file pairs with a protected file,
or with the file of the same name inside a protected folder.

Example:
    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp()); (d / "o").mkdir(); (d / "p").mkdir()
    >>> _ = (d / "o" / "a.png").write_bytes(b""); _ = (d / "p" / "a.webp").write_bytes(b"")
    >>> [(o.name, p.name, str(r)) for o, p, r in pair_files(d / "o", d / "p")]
    [('a.png', 'a.webp', 'a.png')]
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np

from ..errors import UsageError
from ..io.discover import IMAGE_EXTENSIONS, discover


def check_roots(originals: Path, protected: Path) -> None:
    """UsageError (exit 2) when either side does not exist."""
    if not originals.exists():
        raise UsageError(f"originals {originals} do not exist")
    if not protected.exists():
        raise UsageError(f"protected {protected} do not exist")


def pair_files(originals: Path, protected: Path) -> Iterator[tuple[Path, Path | None, Path]]:
    """Yield (original, protected or None, relative) pairs."""
    check_roots(originals, protected)
    if originals.is_file():
        if protected.is_file():
            yield originals, protected, Path(originals.name)
            return
        yield originals, find_protected(protected, Path(originals.name)), Path(originals.name)
        return
    skip = protected if protected.is_dir() and protected.resolve() != originals.resolve() else None
    for job in discover([originals], output=skip):
        if job.error:
            continue
        yield job.source, find_protected(protected, job.relative), job.relative


def find_protected(root: Path, rel: Path) -> Path | None:
    """The protected file for ``rel`` under ``root``: same path, or same stem with any image extension."""
    p = root / rel
    if p.is_file():
        return p
    parent = p.parent
    if parent.is_dir():
        for ext in sorted(IMAGE_EXTENSIONS):
            q = parent / (rel.stem + ext)
            if q.is_file():
                return q
    return None


def resize_to(px: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """``px`` resized to ``shape`` (h, w) for comparison (area when shrinking, cubic when enlarging)."""
    import cv2

    return cv2.resize(px, (shape[1], shape[0]), interpolation=cv2.INTER_AREA if px.shape[0] > shape[0] else cv2.INTER_CUBIC)

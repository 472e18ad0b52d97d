"""OPE (seed 001): the SDIM-minimising input size over the user's originals (``--size-sweep``)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import ImageError, UsageError
from ..io.decode import DEFAULT_MAX_BYTES, decode_file
from ..io.discover import discover


def ope_size_sweep(orig_root: Path, sizes: tuple[int, ...], max_images: int, max_pixels: int,
                   max_bytes: int = DEFAULT_MAX_BYTES) -> dict[str, Any]:
    """Run the seed-001 optimal-size procedure on (up to ``max_images`` of) the originals."""
    from ..metrics.ope import size_sweep

    imgs = []
    for job in discover([orig_root]):
        if job.error:
            continue
        try:
            item, _ = decode_file(job.source, job.relative, max_pixels=max_pixels, max_bytes=max_bytes)
        except ImageError:
            continue
        imgs.append(item.pixels)
        if len(imgs) >= max_images:
            break
    if not imgs:
        raise UsageError("--size-sweep: no readable original images")
    return size_sweep(imgs, sizes=tuple(sizes)).to_dict()

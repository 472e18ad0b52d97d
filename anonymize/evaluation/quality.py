"""Image quality of each protected file against its original (what protection cost).

Example:
    >>> a = np.zeros((16, 16, 3), np.uint8)
    >>> image_quality(a, a)["psnr"] is None  # identical: PSNR is infinite
    True
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..metrics.quality import mse, psnr, ssim


def image_quality(a: np.ndarray, b: np.ndarray) -> dict[str, float | None]:
    """SSIM, PSNR (None when identical) and MSE of two same-sized uint8 RGB images."""
    p = psnr(a, b)
    return {"ssim": ssim(a, b), "psnr": p if math.isfinite(p) else None, "mse": mse(a, b)}


def mean(vals: list[float | None]) -> float | None:
    """Mean of the values that are not None (None when there are none)."""
    xs = [v for v in vals if v is not None]
    return float(np.mean(xs)) if xs else None


def summarise(images: list[dict[str, Any]]) -> dict[str, Any]:
    """Pair counts and mean quality over the pairs that were evaluated."""
    ok = [r for r in images if r["status"] == "ok"]
    return {
        "command": "evaluate",
        "pairs": len(images),
        "ok": len(ok),
        "failed": len(images) - len(ok),
        "ssim_mean": mean([r.get("ssim") for r in ok]),
        "psnr_mean": mean([r.get("psnr") for r in ok]),
        "psnr_identical": sum(1 for r in ok if r.get("psnr") is None),
        "mse_mean": mean([r.get("mse") for r in ok]),
    }

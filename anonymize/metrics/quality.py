"""Image-quality metrics with one fixed, documented configuration.

SSIM: Wang et al. (2004) on luma (ITU-R BT.601 Y from RGB), data range 255,
Gaussian window sigma 1.5 (11x11), K1 0.01, K2 0.03, population covariance —
``skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5,
use_sample_covariance=False, data_range=255)``. PSNR and MSE on all RGB
channels in 0..255. Images smaller than the 11 px window on a side get SSIM None.

Example:
    >>> import numpy as np
    >>> a = np.zeros((16, 16, 3), np.uint8)
    >>> round(ssim(a, a), 3), psnr(a, a)
    (1.0, inf)
"""
from __future__ import annotations

import math

import numpy as np

SSIM_CONFIG = {
    "channel": "luma (BT.601 Y)",
    "data_range": 255,
    "window": "gaussian sigma=1.5 (11x11)",
    "K1": 0.01,
    "K2": 0.03,
    "covariance": "population",
    "implementation": "skimage.metrics.structural_similarity",
}


def luma(rgb: np.ndarray) -> np.ndarray:
    rgb = rgb.astype(np.float64)
    if rgb.ndim == 2:
        return rgb
    return 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]


def ssim(a: np.ndarray, b: np.ndarray) -> float | None:
    """SSIM of two uint8 RGB images of the same shape (see module docstring)."""
    from skimage.metrics import structural_similarity

    _check(a, b)
    if min(a.shape[:2]) < 11:  # the Gaussian window (sigma 1.5, truncate 3.5) is 11 x 11
        return None
    return float(
        structural_similarity(luma(a), luma(b), gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255.0)
    )


def mse(a: np.ndarray, b: np.ndarray) -> float:
    _check(a, b)
    d = a.astype(np.float64) - b.astype(np.float64)
    return float(np.mean(d * d))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    m = mse(a, b)
    return math.inf if m == 0 else float(10.0 * math.log10(255.0**2 / m))


def _check(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape != b.shape:
        raise ValueError(f"images differ in shape: {a.shape} vs {b.shape}")

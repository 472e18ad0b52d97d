"""Seed-001 metrics: SSIM_Vec, SSIM_Dei, SSIM_Pos, L2norm_Dei, DI(alpha), SDIM(alpha), and the size sweep.

Definitions (paper 001, Eqs. 4-6; spec B.3, conventions B.5.7-B.5.9 and S):

- ``SSIM_Vec = SSIM(OI, Rasterize(Vectorize(OI)))`` (no OPE, same render pipeline);
- ``SSIM_Dei = SSIM(OI, DeI)``;
- ``SSIM_Pos = SSIM_Dei - SSIM_Vec`` (Eq. 4; raw value, range [-2, 2]);
- ``L2norm_Dei``: RMSE on [0, 1] pixels, ``||OI - DeI||_2 / sqrt(H W C)`` (default),
  or ``relative = ||OI - DeI||_2 / ||OI||_2``;
- ``DI(a) = a * SSIM_Dei + (1 - a) * L2norm_Dei`` (Eq. 5; paper a = 0.5);
- ``SDIM(a) = SSIM_Pos + DI(a)`` (Eq. 6); lower is better, and the input size
  minimising the mean SDIM is the optimal ``size``.

OI is the original image (before the ``size`` resize), resized bicubic to the
protected image's size. SSIM is ``skimage.metrics.structural_similarity`` on
uint8 RGB, 7x7 uniform window, ``data_range=255`` (:data:`SSIM_CONFIG`, the
project convention); ``ssim_mode="gaussian"`` uses Wang et al.'s 11x11 Gaussian
window (sigma 1.5, population covariance) instead.

Example:
    >>> round(di(0.3355, 0.2510, 0.5), 5), round(sdim(-0.4350, 0.29325), 5)
    (0.29325, -0.14175)
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np
from PIL import Image

SSIM_CONFIG: dict[str, Any] = {
    "impl": "skimage.metrics.structural_similarity",
    "dtype": "uint8",
    "data_range": 255,
    "win_size": 7,
    "gaussian_weights": False,
    "channel_axis": -1,
    "reference": "original resized bicubic to the protected image's size",
}


def _as_ref(original: np.ndarray, like: np.ndarray) -> np.ndarray:
    o = np.asarray(original, dtype=np.uint8)
    if o.ndim == 2:
        o = np.repeat(o[:, :, None], 3, axis=2)
    if o.shape[:2] != like.shape[:2]:
        o = np.asarray(Image.fromarray(o[..., :3]).resize((like.shape[1], like.shape[0]), Image.BICUBIC))
    return o[..., :3]


SSIM_MODES = ("uniform", "gaussian")


def ssim(original: np.ndarray, other: np.ndarray, mode: str = "uniform") -> float:
    """SSIM under :data:`SSIM_CONFIG` (original resized to ``other``'s size first); ``mode`` 'uniform' | 'gaussian'."""
    from skimage.metrics import structural_similarity

    b = np.asarray(other, dtype=np.uint8)[..., :3]
    a = _as_ref(original, b)
    if mode == "uniform":
        return float(structural_similarity(a, b, channel_axis=-1, data_range=255, win_size=7))
    if mode == "gaussian":
        return float(
            structural_similarity(a, b, channel_axis=-1, data_range=255, gaussian_weights=True, sigma=1.5,
                                  use_sample_covariance=False)
        )
    raise ValueError(f"ssim mode must be one of {SSIM_MODES}, not {mode!r}")


def l2norm(original: np.ndarray, other: np.ndarray, mode: str = "rmse") -> float:
    """Normalised L2 distance on [0, 1] pixels: 'rmse' (default) or 'relative'."""
    b = np.asarray(other, dtype=np.float64)[..., :3] / 255.0
    a = _as_ref(original, np.asarray(other)).astype(np.float64) / 255.0
    diff = np.linalg.norm((a - b).ravel())
    if mode == "rmse":
        return float(diff / np.sqrt(a.size))
    if mode == "relative":
        n = np.linalg.norm(a.ravel())
        return float(diff / n) if n > 0 else float("inf")
    raise ValueError(f"l2 mode must be 'rmse' or 'relative', not {mode!r}")


def ssim_pos(ssim_dei: float, ssim_vec: float) -> float:
    """Eq. 4."""
    return ssim_dei - ssim_vec


def di(ssim_dei: float, l2norm_dei: float, alpha: float = 0.5) -> float:
    """Eq. 5, ``0 <= alpha <= 1``."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    return alpha * ssim_dei + (1.0 - alpha) * l2norm_dei


def sdim(ssim_pos_value: float, di_value: float) -> float:
    """Eq. 6."""
    return ssim_pos_value + di_value


@dataclass
class OpeScores:
    ssim_vec: float
    ssim_dei: float
    ssim_pos: float
    l2norm_dei: float
    di: float
    sdim: float
    alpha: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def scores(
    original: np.ndarray, vec: np.ndarray, dei: np.ndarray, alpha: float = 0.5, l2_mode: str = "rmse",
    ssim_mode: str = "uniform",
) -> OpeScores:
    """All seed-001 metrics for one image triple (original, vectorised-only render, de-identified)."""
    sv, sd = ssim(original, vec, ssim_mode), ssim(original, dei, ssim_mode)
    l2 = l2norm(original, dei, l2_mode)
    sp = ssim_pos(sd, sv)
    d = di(sd, l2, alpha)
    return OpeScores(sv, sd, sp, l2, d, sdim(sp, d), alpha)


def mean_scores(rows: Iterable[OpeScores]) -> OpeScores:
    """Average each metric; SSIM_Pos, DI and SDIM of the means equal the means (the equations are linear)."""
    rows = list(rows)
    if not rows:
        raise ValueError("no scores to average")
    m = {k: float(np.mean([getattr(r, k) for r in rows])) for k in ("ssim_vec", "ssim_dei", "l2norm_dei")}
    alpha = rows[0].alpha
    sp = ssim_pos(m["ssim_dei"], m["ssim_vec"])
    d = di(m["ssim_dei"], m["l2norm_dei"], alpha)
    return OpeScores(m["ssim_vec"], m["ssim_dei"], sp, m["l2norm_dei"], d, sdim(sp, d), alpha)


@dataclass
class SweepResult:
    best_size: int
    rows: dict[int, OpeScores]
    n_images: int
    timings: dict[str, float] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def interior_minimum(self) -> bool:
        sizes = sorted(self.rows)
        return sizes[0] < self.best_size < sizes[-1]

    def to_dict(self) -> dict[str, Any]:
        return {
            "best_size": self.best_size,
            "interior_minimum": self.interior_minimum,
            "n_images": self.n_images,
            "rows": {str(k): v.to_dict() for k, v in sorted(self.rows.items())},
            "timings": self.timings,
            "config": self.config,
        }


PAPER_SIZES = (32, 36, 42, 46, 48, 50, 52, 54, 58, 62, 64, 75, 100)


def size_sweep(
    images: Sequence[np.ndarray],
    sizes: Sequence[int] = PAPER_SIZES,
    alpha: float = 0.5,
    key: bytes | None = None,
    tracer: str = "imagetracer",
    out_size: int = 224,
    render_scale: float = 1.0,
    in_range: tuple[int, int] = (-9999, 9999),
    out_range: tuple[int, int] = (-99999, 99999),
    interp: str = "round",
    l2_mode: str = "rmse",
    ssim_mode: str = "uniform",
    progress: Any = None,
) -> SweepResult:
    """The paper's optimal-size procedure: mean SDIM(alpha) per input size, argmin wins.

    ``key`` defaults to a fresh random key (the optimal size is a property of the
    data and of OPE's stretching, not of one key). ``progress`` is an optional
    callable ``progress(size, i, n)``.

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> imgs = [np.kron(rng.integers(0, 255, (8, 8, 3)), np.ones((4, 4, 1))).astype(np.uint8)]
        >>> res = size_sweep(imgs, sizes=(16, 24), out_size=48)
        >>> res.best_size in (16, 24), sorted(res.rows)
        (True, [16, 24])
    """
    from ..privacy.ope_keys import generate_key_text
    from ..vector.deid import deidentify
    from ..vector.ope_svg import PositionCipher

    if not images:
        raise ValueError("size_sweep needs at least one image")
    if not sizes:
        raise ValueError("size_sweep needs at least one size")
    cipher = PositionCipher(key if key is not None else generate_key_text(), in_range, out_range, interp)
    rows: dict[int, OpeScores] = {}
    tim = {"trace_s": 0.0, "encrypt_s": 0.0, "render_s": 0.0, "metrics_s": 0.0}
    for size in sizes:
        per: list[OpeScores] = []
        for i, img in enumerate(images):
            r = deidentify(img, cipher, size=int(size), out_size=(out_size, out_size), tracer=tracer,
                           render_scale=render_scale, keep_vector=True)
            t0 = time.perf_counter()
            assert r.vec is not None
            per.append(scores(img, r.vec, r.dei, alpha, l2_mode, ssim_mode))
            tim["metrics_s"] += time.perf_counter() - t0
            for k, v in r.timings.items():
                tim[k] += v
            if progress is not None:
                progress(size, i, len(images))
        rows[int(size)] = mean_scores(per)
    best = min(rows, key=lambda s: rows[s].sdim)
    cfg = {"alpha": alpha, "tracer": tracer, "out_size": out_size, "render_scale": render_scale,
           "in_range": list(in_range), "out_range": list(out_range), "interp": interp, "l2": l2_mode,
           "ssim": dict(SSIM_CONFIG, mode=ssim_mode), "key": "given" if key is not None else "random per sweep"}
    return SweepResult(best_size=best, rows=rows, n_images=len(images), timings=tim, config=cfg)

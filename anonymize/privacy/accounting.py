"""Privacy accounting for ``dpimage``: Gaussian RDP (IDPI) and Laplace DP-Pix.

IDPI (thesis ch. 4, Alg. 6) iterates ``z <- psi(z) + N(0, sigma^2 I)`` T times
from a start point inside a clip box and releases only the last iterate. If
every per-step map ``psi`` is 1-Lipschitz (contractive), amplification by
iteration (Feldman et al. 2018) bounds the Renyi divergence between the
outputs for two starts at L2 distance ``<= sensitivity``:

    D_alpha <= alpha * rho,   rho = sensitivity^2 / (2 T sigma^2)

which is exactly the bound of *one* Gaussian mechanism with noise
``sigma * sqrt(T)``. Mironov's conversion (Prop. 3) turns (alpha, alpha*rho)-RDP
into ``(alpha*rho + log(1/delta)/(alpha-1), delta)``-DP for any alpha > 1;
minimised over alpha it gives the closed form

    epsilon = rho + 2 sqrt(rho log(1/delta)),  alpha* = 1 + sqrt(log(1/delta)/rho).

There is no pure-DP limit (the bound diverges as alpha -> infinity).

DP-Pix (Fan 2018): b x b cell means plus Laplace noise. Two images are
neighbours when they differ in at most ``m`` pixel positions; a changed pixel
moves one cell mean per channel by at most 255/n (n pixels in its cell), so
per-cell Laplace scale ``c * 255 * m / (n * epsilon)`` (c = channels counted by
the neighbouring relation) gives pure epsilon-DP; ``n = b^2`` for full cells.

Example:
    >>> rep = idpi_report(sigma=0.2, iterations=10_000, sensitivity=3840.0, delta=1e-8)
    >>> round(rep.rho), round(rep.epsilon)
    (18432, 19597)
    >>> round(dp_pix_scale(b=16, m=16, epsilon=0.5), 3)
    31.875
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np

__all__ = [
    "gaussian_rho",
    "rdp_curve",
    "rdp_to_dp",
    "epsilon_from_rdp_curve",
    "box_sensitivity",
    "iterations_for_epsilon",
    "IDPIReport",
    "idpi_report",
    "dp_pix_scale",
    "dp_pix_epsilon",
]


def _check_pos(name: str, v: float) -> float:
    v = float(v)
    if not math.isfinite(v) or v <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {v}")
    return v


def _check_delta(delta: float) -> float:
    delta = float(delta)
    if not 0.0 < delta < 1.0:
        raise ValueError(f"delta must be in (0, 1), got {delta}")
    return delta


def gaussian_rho(sensitivity: float, sigma: float, iterations: int = 1) -> float:
    """RDP slope ``rho = Delta^2 / (2 T sigma^2)``: the mechanism is (alpha, alpha*rho)-RDP for all alpha > 1.

    With ``iterations=1`` this is the plain Gaussian mechanism (Mironov 2017, Prop. 7);
    with T > 1 it is amplification by iteration of a contractive noisy iteration
    (Feldman et al. 2018), valid only when every per-step map is 1-Lipschitz.

    Example:
        >>> gaussian_rho(1.0, 1.0)
        0.5
    """
    _check_pos("sigma", sigma)
    if int(iterations) != iterations or iterations < 1:
        raise ValueError(f"iterations must be an integer >= 1, got {iterations}")
    s = float(sensitivity)
    if not math.isfinite(s) or s < 0:
        raise ValueError(f"sensitivity must be finite and >= 0, got {s}")
    return s * s / (2.0 * int(iterations) * float(sigma) ** 2)


def rdp_curve(rho: float, alphas: Sequence[float]) -> np.ndarray:
    """The RDP curve ``epsilon_RDP(alpha) = alpha * rho`` at the given orders (alpha > 1)."""
    a = np.asarray(alphas, dtype=np.float64)
    if np.any(a <= 1):
        raise ValueError("Renyi orders must be > 1")
    return a * float(rho)


def rdp_to_dp(rho: float, delta: float) -> tuple[float, float]:
    """(epsilon, alpha*) of the best Mironov conversion of a linear RDP curve ``alpha*rho``.

    ``epsilon = rho + 2 sqrt(rho log(1/delta))`` at ``alpha* = 1 + sqrt(log(1/delta)/rho)``.
    ``rho = 0`` (no information released) gives epsilon 0 and alpha* = inf.

    Example:
        >>> eps, a = rdp_to_dp(0.5, math.exp(-2))
        >>> round(eps, 6), round(a, 6)
        (2.5, 3.0)
    """
    delta = _check_delta(delta)
    rho = float(rho)
    if not math.isfinite(rho) or rho < 0:
        raise ValueError(f"rho must be finite and >= 0, got {rho}")
    L = math.log(1.0 / delta)
    if rho == 0:
        return 0.0, math.inf
    return rho + 2.0 * math.sqrt(rho * L), 1.0 + math.sqrt(L / rho)


def epsilon_from_rdp_curve(alphas: Sequence[float], rdp: Sequence[float], delta: float) -> tuple[float, float]:
    """Numerical Mironov conversion for any RDP curve given on a grid: min over alpha of
    ``rdp(alpha) + log(1/delta)/(alpha - 1)``. Returns (epsilon, alpha attaining it).

    Example:
        >>> al = np.linspace(1.01, 100, 20000)
        >>> eps, a = epsilon_from_rdp_curve(al, rdp_curve(0.5, al), math.exp(-2))
        >>> round(eps, 3), round(a, 2)
        (2.5, 3.0)
    """
    delta = _check_delta(delta)
    a = np.asarray(alphas, dtype=np.float64)
    r = np.asarray(rdp, dtype=np.float64)
    if a.shape != r.shape or a.ndim != 1 or a.size == 0:
        raise ValueError("alphas and rdp must be 1-D arrays of the same non-zero length")
    if np.any(a <= 1):
        raise ValueError("Renyi orders must be > 1")
    eps = r + math.log(1.0 / delta) / (a - 1.0)
    i = int(np.argmin(eps))
    return float(eps[i]), float(a[i])


def box_sensitivity(clip: float | Sequence[float] | np.ndarray, dims: int | None = None) -> float:
    """L2 diameter of the clip box ``prod_i [-C_i, C_i]``: ``2 * ||C||_2``.

    A scalar ``clip`` with ``dims`` coordinates gives ``2 C sqrt(d)`` (thesis: C=20,
    d=9216 -> 3840). This bounds ``||f_c(z) - f_c(z')||`` for *any* two inputs.

    Example:
        >>> box_sensitivity(20.0, 18 * 512)
        3840.0
    """
    c = np.asarray(clip, dtype=np.float64)
    if c.ndim == 0:
        if dims is None or dims < 1:
            raise ValueError("a scalar clip needs dims >= 1")
        c = np.full(int(dims), float(c))
    if np.any(~np.isfinite(c)) or np.any(c <= 0):
        raise ValueError("clip bounds must be finite and > 0")
    return float(2.0 * np.sqrt(np.sum(c * c)))


def iterations_for_epsilon(epsilon: float, sensitivity: float, sigma: float, delta: float) -> int:
    """Smallest T whose IDPI bound reaches ``epsilon`` (how costly a meaningful epsilon is).

    Inverts ``eps = rho + 2 sqrt(rho L)``: ``sqrt(rho) = sqrt(L + eps) - sqrt(L)``.

    Example:
        >>> iterations_for_epsilon(10.0, 3840.0, 0.2, 1e-8) > 10**8
        True
    """
    epsilon = _check_pos("epsilon", epsilon)
    L = math.log(1.0 / _check_delta(delta))
    sq = math.sqrt(L + epsilon) - math.sqrt(L)
    rho = sq * sq
    t = float(sensitivity) ** 2 / (2.0 * _check_pos("sigma", sigma) ** 2 * rho)
    return max(1, int(math.ceil(t * (1 - 1e-12))))


@dataclass
class IDPIReport:
    """Everything a user needs to judge an IDPI release (JSON-friendly via :meth:`to_dict`)."""

    sigma: float
    iterations: int
    sensitivity: float
    delta: float
    rho: float
    epsilon: float
    alpha: float
    mechanism: str = "gaussian, amplification by iteration (Feldman et al. 2018), Mironov RDP->DP"
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if not math.isfinite(d["alpha"]):
            d["alpha"] = None
        return d


def idpi_report(*, sigma: float, iterations: int, sensitivity: float, delta: float) -> IDPIReport:
    """RDP slope and optimised (epsilon, delta) of T contractive noisy iterations.

    Example:
        >>> r = idpi_report(sigma=1.0, iterations=2, sensitivity=2.0, delta=1e-5)
        >>> r.rho
        1.0
    """
    rho = gaussian_rho(sensitivity, sigma, iterations)
    eps, alpha = rdp_to_dp(rho, delta)
    return IDPIReport(
        sigma=float(sigma), iterations=int(iterations), sensitivity=float(sensitivity), delta=float(delta),
        rho=rho, epsilon=eps, alpha=alpha,
    )


def dp_pix_scale(*, b: int, m: int, epsilon: float, channels: int = 1, cell_pixels: int | None = None) -> float:
    """Laplace scale of DP-Pix: ``channels * 255 * m / (n * epsilon)`` with ``n = b^2`` (or ``cell_pixels``).

    ``channels`` is how many intensity values one "pixel" of the neighbouring
    relation carries (3 for RGB pixels, 1 for grey): a neighbour changes at most
    m pixel positions, i.e. up to m * channels values, each moving one cell mean by <= 255/n.

    Example:
        >>> dp_pix_scale(b=4, m=1, epsilon=1.0)
        15.9375
    """
    if int(b) != b or b < 1 or int(m) != m or m < 1 or int(channels) != channels or channels < 1:
        raise ValueError("b, m and channels must be integers >= 1")
    n = int(b) * int(b) if cell_pixels is None else int(cell_pixels)
    if n < 1:
        raise ValueError("cell_pixels must be >= 1")
    return int(channels) * 255.0 * int(m) / (n * _check_pos("epsilon", epsilon))


def dp_pix_epsilon(*, b: int, m: int, scale: float, channels: int = 1) -> float:
    """Epsilon of DP-Pix with full b x b cells and Laplace ``scale`` (inverse of :func:`dp_pix_scale`).

    Example:
        >>> dp_pix_epsilon(b=4, m=1, scale=15.9375)
        1.0
    """
    return int(channels) * 255.0 * int(m) / (int(b) * int(b) * _check_pos("scale", scale))

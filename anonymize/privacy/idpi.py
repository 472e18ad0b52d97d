"""IDPI (thesis ch. 4, Alg. 6) with pluggable encoder/decoder backends, and DP-Pix.

IDPI: ``z_0 = f(X)``; for t = 1..T: ``z_t = clip_C(z_{t-1}') + N(0, sigma^2 I)``
where ``z_{t-1}' = f(g(z_{t-1}))`` is the decode/re-encode round trip (the
identity on the first step); release ``g(z_T)``. ``clip_C`` is the Euclidean
projection onto the box ``prod_i [-C_i, C_i]`` (1-Lipschitz), so any two
inputs start at most ``Delta = 2 ||C||_2`` apart (see
:mod:`anonymize.privacy.accounting`).

The (epsilon, delta) bound of the thesis needs every per-step map
``z -> clip_C(f(g(z)))`` to be 1-Lipschitz. A backend states whether it can
prove that (``rigorous``) or whether the number is only nominal.

Backends:

- :class:`PCABackend` (offline, rigorous): ``f(x) = U^T (x - mu)``,
  ``g(z) = clamp(U z + mu, 0, 1)`` with U orthonormal columns (k x D), fitted
  on aligned faces by ``benchmarks/fit_pca_basis.py``. Then
  ``||f(g(z)) - f(g(z'))|| <= ||U^T|| * 1 * ||U|| * ||z - z'|| = ||z - z'||``
  (an orthonormal projection is non-expanding, clamping to the pixel range is a
  projection onto a box), so the per-step map is 1-Lipschitz and the bound holds.
  The spectral norms are *checked numerically* on load, not assumed.
- :class:`PSPBackend`: pSp encoder + StyleGAN2 (W+, 18 x 512); needs the
  ``psp-ffhq-encode`` weights, and its guarantee is nominal (Lip(f o g) <= 1 is
  not established for pSp o StyleGAN2).

Example:
    >>> import numpy as np
    >>> be = LinearBackend(np.eye(4)[:, :2], np.zeros(4), clip=np.ones(2), name="toy")
    >>> be.guarantee
    'rigorous'
    >>> x = np.array([[0.3, 0.9, 0.5, 0.5]])
    >>> out, rep = run_idpi(be, x, sigma=1.0, iterations=4, delta=1e-5, rng=np.random.default_rng(0))
    >>> out.shape, round(rep.rho, 3)
    ((1, 4), 1.0)
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Protocol, Sequence

import numpy as np

from ..errors import MethodUnavailable, UsageError, WeightsMissing
from .accounting import IDPIReport, box_sensitivity, idpi_report

__all__ = [
    "CHIP_TEMPLATE5",
    "chip_transform",
    "Backend",
    "LinearBackend",
    "PCABackend",
    "PSPBackend",
    "load_pca_basis",
    "pca_basis_path",
    "parse_layers",
    "run_idpi",
    "dp_pix",
]

# MTCNN-order 5 points (eye centres, nose tip, mouth corners) in a 112 px chip: the
# widely used ArcFace/InsightFace alignment template, zoomed out by 0.8 about the chip
# centre so the chip covers brow to chin. Our own convention for dpimage PCA chips:
# the fitting script and the backend both use it, so basis and inference agree.
_ARCFACE112 = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]]
)
CHIP_ZOOM = 0.8
CHIP_TEMPLATE5 = 55.5 + CHIP_ZOOM * (_ARCFACE112 - 55.5)


def chip_transform(landmarks5: np.ndarray, size: int) -> np.ndarray:
    """Image -> chip (2, 3) similarity mapping MTCNN-order landmarks onto :data:`CHIP_TEMPLATE5` at ``size`` px.

    Example:
        >>> M = chip_transform((CHIP_TEMPLATE5 + 0.5) * 2 - 0.5, 112)  # a face twice the template size
        >>> (np.round(M[:, :2], 6) + 0.0).tolist()
        [[0.5, 0.0], [0.0, 0.5]]
    """
    from ..faces.align import similarity_transform

    lm = np.asarray(landmarks5, dtype=np.float64).reshape(5, 2)
    dst = (CHIP_TEMPLATE5 + 0.5) * (size / 112.0) - 0.5
    return np.asarray(similarity_transform(lm, dst), dtype=np.float64)


# --------------------------------------------------------------------------- backends


class Backend(Protocol):
    """Encoder/decoder pair for IDPI. ``x`` is (N, D) float in [0, 1] (flattened aligned images)."""

    name: str
    dims: int
    clip: np.ndarray  # (dims,) per-coordinate clip bound C_i > 0
    guarantee: str  # "rigorous" | "nominal"
    guarantee_reason: str

    def encode(self, x: np.ndarray) -> np.ndarray: ...

    def decode(self, z: np.ndarray) -> np.ndarray: ...


class LinearBackend:
    """``f(x) = E^T (x - mu)``, ``g(z) = clamp(E z + mu, 0, 1)`` for a (D, k) matrix E.

    The guarantee is decided by computation: the per-step map ``clip(f(g(z)))`` is
    1-Lipschitz when ``||E^T||_2 * ||E||_2 <= 1`` (clamping and box clipping are
    projections onto convex sets, hence non-expanding), up to float rounding (1e-5).
    """

    def __init__(self, basis: np.ndarray, mean: np.ndarray, *, clip: np.ndarray, name: str = "linear") -> None:
        E = np.asarray(basis, dtype=np.float64)
        if E.ndim != 2:
            raise ValueError("basis must be (D, k)")
        self.E = E.astype(np.float32)
        self.mean = np.asarray(mean, dtype=np.float32).reshape(-1)
        if self.mean.shape[0] != E.shape[0]:
            raise ValueError("mean and basis disagree on D")
        self.dims = int(E.shape[1])
        self.clip = np.broadcast_to(np.asarray(clip, dtype=np.float64), (self.dims,)).copy()
        self.name = name
        # ||E^T||_2 * ||E||_2 = sigma_max(E)^2 = largest eigenvalue of the smaller Gram matrix
        gram = E.T @ E if E.shape[1] <= E.shape[0] else E @ E.T
        self.lipschitz = float(np.linalg.eigvalsh(gram)[-1])
        if self.lipschitz <= 1.0 + 1e-5:
            self.guarantee = "rigorous"
            self.guarantee_reason = (
                f"per-step map clip(f(g(z))) is 1-Lipschitz: ||E||_2^2 = {self.lipschitz:.6f} <= 1 "
                "(orthonormal projection), pixel clamping and latent clipping are projections"
            )
        else:
            self.guarantee = "nominal"
            self.guarantee_reason = (
                f"per-step map may expand distances (||E||_2^2 = {self.lipschitz:.4g} > 1); "
                "amplification by iteration does not apply, epsilon is nominal"
            )

    def encode(self, x: np.ndarray) -> np.ndarray:
        return (np.asarray(x, dtype=np.float32) - self.mean) @ self.E

    def decode(self, z: np.ndarray) -> np.ndarray:
        return np.clip(np.asarray(z, dtype=np.float32) @ self.E.T + self.mean, 0.0, 1.0)


_MODELS = Path(__file__).resolve().parent.parent.parent / "models"
_PKG_DATA = Path(__file__).resolve().parent.parent / "data"
PCA_BASIS_FILE = "pca_faces_64.npz"


def pca_basis_path(name: str = PCA_BASIS_FILE) -> Path:
    """Where the shipped PCA face basis lives: the repo's ``models/``, else ``anonymize/data/``."""
    for folder in (_MODELS, _PKG_DATA):
        p = folder / name
        if p.is_file():
            return p
    raise MethodUnavailable(
        f"the PCA face basis {name} is missing (expected in {_MODELS} or {_PKG_DATA}); "
        "rebuild it with: python benchmarks/fit_pca_basis.py"
    )


def load_pca_basis(path: str | Path | None = None) -> dict[str, Any]:
    """Load a fitted basis: ``basis`` (D, k) re-orthonormalised, ``mean`` (D,), ``clip`` (k,), ``meta``, ``sha256``."""
    p = Path(path) if path is not None else pca_basis_path()
    raw = p.read_bytes()
    with np.load(p, allow_pickle=False) as z:
        comps = z["components"].astype(np.float64)  # (k, D), stored float16
        mean = z["mean"].astype(np.float64)
        clip = z["clip"].astype(np.float64)
        meta = json.loads(str(z["meta"]))
    # float16 storage perturbs orthonormality by ~1e-3; QR restores it exactly (to float64
    # rounding) while keeping the spanned subspace and each direction's sign.
    q, r = np.linalg.qr(comps.T)
    q = q * np.sign(np.diag(r))[None, :]
    return {"basis": q, "mean": mean, "clip": clip, "meta": meta, "sha256": hashlib.sha256(raw).hexdigest(), "path": str(p)}


class PCABackend(LinearBackend):
    """Orthonormal PCA face basis on aligned ``size`` x ``size`` RGB chips (the shipped one: 64 px, k=128).

    ``clip``: None = the per-component 99% box stored with the basis (thesis rule:
    >99% of coefficients inside), or one float C for the uniform box [-C, C]^k.
    """

    def __init__(self, clip: float | None = None, path: str | Path | None = None) -> None:
        b = load_pca_basis(path)
        c = b["clip"] if clip is None else np.full(b["basis"].shape[1], float(clip))
        super().__init__(b["basis"], b["mean"], clip=c, name="pca")
        self.size = int(b["meta"]["size"])
        self.meta = b["meta"]
        self.sha256 = b["sha256"]
        self.path = b["path"]


class PSPBackend:
    """pSp (GradualStyleEncoder, IR-SE50) + StyleGAN2-FFHQ decoder in W+ (18 x 512), thesis ch. 4.

    Its guarantee is nominal: the thesis proves only that latent clipping is
    contractive, not the decode/re-encode round trip pSp(StyleGAN2(z)).
    """

    name = "psp"
    guarantee = "nominal"
    guarantee_reason = (
        "assumes Lip(f o g) <= 1 for f = pSp encoder, g = StyleGAN2, which is not established; "
        "the epsilon is the thesis's nominal value"
    )
    dims = 18 * 512
    size = 256

    def __init__(self, clip: float | None = None) -> None:
        from ..weights import weights_path

        try:
            weights_path("psp-ffhq-encode")
        except WeightsMissing:
            raise WeightsMissing(["psp-ffhq-encode"], "dpimage psp backend") from None
        import torch

        from ..nets.psp import PSP

        self.nets = PSP.from_checkpoint(weights_path("psp-ffhq-encode")).eval()
        for p in self.nets.parameters():
            p.requires_grad_(False)
        self.clip = np.full(self.dims, 20.0 if clip is None else float(clip))
        self._torch = torch

    def encode(self, x: np.ndarray) -> np.ndarray:  # pragma: no cover - needs the real 1.2 GB weights
        t = self._torch.from_numpy(np.asarray(x, np.float32).reshape(-1, self.size, self.size, 3)).permute(0, 3, 1, 2)
        with self._torch.no_grad():
            w = self.nets.encode(t * 2.0 - 1.0)
        return w.reshape(len(t), -1).numpy()

    def decode(self, z: np.ndarray) -> np.ndarray:  # pragma: no cover - needs the real 1.2 GB weights
        w = self._torch.from_numpy(np.asarray(z, np.float32).reshape(-1, 18, 512))
        with self._torch.no_grad():
            img = self.nets.decode(w, resize=True)
        img = ((img.clamp(-1, 1) + 1.0) / 2.0).permute(0, 2, 3, 1)
        return img.reshape(len(w), -1).numpy()


def parse_layers(spec: str | Sequence[int] | None, n: int, *, group: int = 1, one_based: bool = False) -> np.ndarray | None:
    """Latent coordinates selected by ``spec`` ("0-31,40" or a list), as a boolean mask of length ``n * group``.

    For pSp, ``group=512`` and ``one_based=True``: "1-7" = styles 1..7 (the thesis's identity layers).
    ``None`` / "" / "all" select everything (returns None).

    Example:
        >>> parse_layers("1-2", 3, group=2, one_based=True).astype(int).tolist()
        [1, 1, 1, 1, 0, 0]
    """
    if spec is None or (isinstance(spec, str) and spec.strip().lower() in ("", "all")):
        return None
    if isinstance(spec, (int, np.integer)):
        spec = str(int(spec))
    idx: list[int] = []
    parts = spec.split(",") if isinstance(spec, str) else [str(v) for v in spec]
    for part in parts:
        part = part.strip()
        if not part:
            continue
        try:
            if "-" in part:
                a, b = (int(v) for v in part.split("-", 1))
                idx.extend(range(a, b + 1))
            else:
                idx.append(int(part))
        except ValueError:
            raise UsageError(f"--param layers: cannot parse {part!r} (use e.g. 0-31,40)") from None
    off = 1 if one_based else 0
    lo, hi = off, n - 1 + off
    bad = [i for i in idx if i < lo or i > hi]
    if bad or not idx:
        raise UsageError(f"--param layers: indices must lie in {lo}..{hi}, got {bad or 'nothing'}")
    mask = np.zeros(n * group, dtype=bool)
    for i in idx:
        mask[(i - off) * group : (i - off + 1) * group] = True
    return mask


def run_idpi(
    backend: Backend,
    x: np.ndarray,
    *,
    sigma: float,
    iterations: int,
    delta: float,
    rng: np.random.Generator,
    layers: np.ndarray | None = None,
) -> tuple[np.ndarray, IDPIReport]:
    """Run Alg. 6 on a batch ``x`` (N, D) in [0, 1]; returns ``g(z_T)`` and the privacy report.

    ``layers``: boolean mask of the latent coordinates that get noise. Coordinates
    outside it are only clipped and released exactly, so the bound (computed on the
    noised sub-vector) covers only that sub-vector; the report says so and the
    guarantee degrades to nominal.
    """
    if sigma <= 0 or iterations < 1:
        raise UsageError("dpimage: sigma must be > 0 and iterations >= 1")
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError("x must be (N, D)")
    C = np.asarray(backend.clip, dtype=np.float64)
    sel = np.ones(backend.dims, dtype=bool) if layers is None else np.asarray(layers, dtype=bool)
    if sel.shape != (backend.dims,) or not sel.any():
        raise UsageError("dpimage: the layer mask must select at least one latent coordinate")
    z = backend.encode(x).astype(np.float64)
    Cf = C.astype(np.float64)
    for t in range(int(iterations)):
        if t > 0:
            z = backend.encode(backend.decode(z)).astype(np.float64)
        z = np.clip(z, -Cf, Cf)
        noise = rng.standard_normal(size=(z.shape[0], int(sel.sum()))) * float(sigma)
        z[:, sel] += noise
    out = backend.decode(z)
    rep = idpi_report(sigma=sigma, iterations=iterations, sensitivity=box_sensitivity(C[sel]), delta=delta)
    rep.notes.append(f"sensitivity = L2 diameter of the clip box on {int(sel.sum())} noised latent coordinates")
    if not sel.all():
        rep.notes.append(
            f"noise on a latent subset ({int(sel.sum())}/{backend.dims} coordinates): the other coordinates are "
            "released exactly (clipped only), so two images that differ there are perfectly distinguishable; "
            "the bound covers only the perturbed sub-vector"
        )
    return out, rep


# --------------------------------------------------------------------------- DP-Pix


def dp_pix(
    region: np.ndarray, *, b: int, m: int, epsilon: float, rng: np.random.Generator
) -> tuple[np.ndarray, dict[str, Any]]:
    """DP-Pix (Fan 2018) on an (h, w, c) uint8 region: b x b cell means + Laplace noise, clipped to 0..255.

    Each cell gets scale ``c * 255 * m / (n * epsilon)`` with n its pixel count
    (b^2 for full cells; partial cells at the right/bottom border get more noise),
    which makes the release epsilon-DP for images differing in at most m pixel
    positions (any channels) inside the region.

    Example:
        >>> r = np.full((8, 8, 3), 100, np.uint8)
        >>> out, info = dp_pix(r, b=4, m=1, epsilon=1e9, rng=np.random.default_rng(0))
        >>> int(out.min()), int(out.max()), info["laplace_scale"] < 1e-6
        (100, 100, True)
    """
    from .accounting import dp_pix_scale

    a = np.asarray(region)
    if a.ndim == 2:
        a = a[..., None]
    h, w, c = a.shape
    if h < 1 or w < 1:
        raise ValueError("empty region")
    f = a.astype(np.float64)
    r0, c0 = np.arange(0, h, b), np.arange(0, w, b)
    sums = np.add.reduceat(np.add.reduceat(f, r0, axis=0), c0, axis=1)  # (ny, nx, c)
    rows = np.minimum(r0 + b, h) - r0
    cols = np.minimum(c0 + b, w) - c0
    n = np.outer(rows, cols)  # pixels per cell (b*b except at the right/bottom border)
    scale = c * 255.0 * int(m) / (n * float(epsilon))
    noisy = sums / n[..., None] + rng.laplace(0.0, 1.0, size=sums.shape) * scale[..., None]
    out = np.repeat(np.repeat(noisy, rows, axis=0), cols, axis=1)
    full = dp_pix_scale(b=b, m=m, epsilon=epsilon, channels=c)
    res = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    info = {
        "epsilon": float(epsilon),
        "delta": 0.0,
        "b": int(b),
        "m": int(m),
        "laplace_scale": full,
        "channels": int(c),
        "partial_cells": bool(h % b or w % b),
        "neighbouring": (
            f"two images of the same size that differ in at most m={m} pixel positions (all {c} channels) "
            "inside the protected region; pixels outside it are released unchanged"
        ),
        "guarantee": "rigorous",
        "guarantee_reason": "Laplace mechanism on cell means with L1 sensitivity c*255*m/n (Fan 2018); "
        "clipping and rounding are post-processing",
    }
    return (res[..., 0] if np.asarray(region).ndim == 2 else res), info

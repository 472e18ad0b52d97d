"""Diffusion De-ID core (thesis ch. 6, Fig. 6.2), independent of which networks are plugged in.

The algorithm on a batch of aligned real faces ``x_R`` (images in [-1, 1] at the
DiffAE resolution):

1. **Encode** (eq. 6.6): ``z_R = SemEnc(x_R)``; ``x_T = DDIM-invert(x_R; z_R, t_encode)``
   (``xt_source="real"``, the default [R]); ``x_T`` is kept fixed from here on.
2. **Synthetic pool** (section 6.5.2), generated once per settings and cached on disk:
   ``z_F = latent-DDIM(u) * conds_std + conds_mean`` with ``u ~ N(0, I)``,
   ``x_T^F ~ N(0, I)``, ``x_F = Dec(z_F, x_T^F)``. Every fake's noises come from a
   generator seeded by ``(seed, index)`` so any one of them can be rebuilt.
3. **Pairing** (section 6.5.3): nearest synthetic face to each real one in the pooled
   (CLS) feature space of the attribute network (FaRL), Euclidean (or cosine) distance.
   One fake may pair with several reals.
4. **Initialise** ``z_A <- z_F[nn(i)]`` (``init="fake"``; ``"real"`` or ``"mix:a"`` also offered).
5. **Optimise** ``z_A`` only, Adam (lr 0.01, MultiStepLR at 75 % / 90 % of the steps,
   gamma 0.8; FALCO's defaults), for ``steps`` iterations of
   ``L = lambda_id * L_id + lambda_attr * L_att`` with ``x_A = Dec(z_A, x_T)`` rendered
   through ``t_eval`` differentiable DDIM steps:

   * IIS (default, eq. 6.7): ``L_id = |cos(E_A(x_A), E_A(x_R)) - m|`` (thesis: m = 0);
   * IRS (ablation, eq. 6.9): ``L_id = 1 - |cos(E_A(x_A), E_A(x_F[nn(i)]))|``;
   * ``L_att`` (eq. 6.8): per-token mean absolute difference of the attribute network's
     patch tokens, summed over tokens (keeps FALCO's lambda_attr = 0.1 calibrated).

6. **Output** ``x_A = Dec(z_A, x_T)`` with ``t_final`` steps, plus a per-step trace.

Per-image losses are summed over the batch, and Adam acts element-wise, so a batch gives the
same codes as one-image runs (up to float rounding).

Example (toy networks; see tests/test_diffusion.py for a DiffAE one):
    >>> cfg = DiffusionConfig(steps=3)
    >>> (cfg.variant, cfg.lambda_id, cfg.lambda_attr, cfg.lr)
    ('iis', 10.0, 0.1, 0.01)
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import UsageError

__all__ = [
    "DeIDResult",
    "DiffusionConfig",
    "DiffusionNets",
    "SyntheticPool",
    "attribute_loss",
    "config_from_params",
    "fingerprint_module",
    "generate_pool",
    "identity_loss",
    "load_or_generate_pool",
    "pair_nearest",
    "pool_cache_key",
    "pool_dir",
    "run_deid",
]

POOL_FORMAT = "diffusion-pool-v1"


@dataclass(frozen=True)
class DiffusionConfig:
    """Every Diffusion De-ID setting. The thesis gives none of these values (spec section 3.2):

    ``lambda_id`` 10, ``lambda_attr`` 0.1, ``steps`` 50, ``lr`` 0.01, MultiStepLR
    (0.75, 0.9) x 0.8 are FALCO's [X]; ``t_encode`` 250 / ``t_eval`` 20 / ``latent_steps`` 100
    are DiffAE's notebook values [X]; ``id_margin`` 0 is eq. 6.7 [T]; ``pool_size`` 64,
    ``xt_source="real"``, ``init="fake"``, ``farl_normalize=True`` are [R].
    ``margin`` is the protection threshold on the identity *distance* (default: the
    networks' own, see :class:`DiffusionNets`).
    """

    variant: str = "iis"
    steps: int = 50
    lr: float = 0.01
    lr_milestones: tuple[float, ...] = (0.75, 0.9)
    lr_gamma: float = 0.8
    lambda_id: float = 10.0
    lambda_attr: float = 0.1
    id_margin: float = 0.0
    margin: float | None = None
    t_encode: int = 250
    t_eval: int = 20
    t_final: int = 20
    latent_steps: int = 100
    pool_size: int = 64
    pair_metric: str = "euclidean"
    xt_source: str = "real"
    init: str = "fake"
    batch_size: int = 8
    checkpoint: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if self.variant not in ("iis", "irs"):
            raise UsageError(f"diffusion: variant must be 'iis' or 'irs', got {self.variant!r}")
        if self.pair_metric not in ("euclidean", "cosine"):
            raise UsageError(f"diffusion: pair_metric must be 'euclidean' or 'cosine', got {self.pair_metric!r}")
        if self.xt_source not in ("real", "fake"):
            raise UsageError(f"diffusion: xt_source must be 'real' or 'fake', got {self.xt_source!r}")
        _init_alpha(self.init)
        for name in ("steps", "t_encode", "t_eval", "t_final", "latent_steps", "pool_size", "batch_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < (0 if name == "steps" else 1):
                raise UsageError(f"diffusion: {name} must be a positive integer, got {v!r}")
        if self.lr <= 0 or self.lambda_id < 0 or self.lambda_attr < 0:
            raise UsageError("diffusion: lr must be > 0 and lambda_id / lambda_attr >= 0")
        if not 0 <= self.id_margin <= 1:
            raise UsageError("diffusion: id_margin must be in [0, 1]")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["lr_milestones"] = list(self.lr_milestones)
        return d


def _init_alpha(init: str) -> float:
    """Weight of the paired fake's code in the initial z_A: fake 1, real 0, ``mix:a`` a."""
    if init == "fake":
        return 1.0
    if init == "real":
        return 0.0
    if init.startswith("mix:"):
        try:
            a = float(init[4:])
        except ValueError:
            a = -1.0
        if 0.0 <= a <= 1.0:
            return a
    raise UsageError(f"diffusion: init must be 'fake', 'real' or 'mix:A' with A in [0, 1], got {init!r}")


def config_from_params(params: Any, base: DiffusionConfig | None = None) -> DiffusionConfig:
    """``base`` (default: the defaults) with the settings of ``params`` applied.

    ``params`` is a :class:`anonymize.methods.diffusion.DiffusionParams` or a mapping parsed into
    one (then only its keys override ``base``); method-only keys (``crop_only``, ``feather``, ...)
    are not part of the config.

    Example:
        >>> config_from_params({"variant": "IRS", "steps": "3"}).steps
        3
    """
    from .diffusion import DiffusionParams
    from .params import as_params

    names = [f.name for f in fields(DiffusionConfig)]
    if isinstance(params, DiffusionParams):
        kw = {k: getattr(params, k) for k in names if hasattr(params, k)}
        if kw.get("seed") is None:
            kw.pop("seed", None)
    else:
        given = dict(params or {})
        p = as_params(DiffusionParams, given, method="diffusion")
        kw = {k: getattr(p, k) for k in (str(k).strip().replace("-", "_") for k in given) if k in names}
    return replace(base or DiffusionConfig(), **kw)


# --------------------------------------------------------------------------- networks


@dataclass
class DiffusionNets:
    """The networks Diffusion De-ID needs.

    ``diffae``: a :class:`anonymize.nets.diffae.DiffAE` (or anything with ``cfg.image_size``,
    ``encode``, ``encode_stochastic``, ``render`` and ``sample_latent``), images in [-1, 1].
    ``id_embed(x, lm)``: identity features of images in [-1, 1] (``lm``: optional [B, 68, 2]
    landmarks in 256-crop pixels for recognisers that cut their own chip).
    ``id_distance(a, b)``: row-wise identity distance used for the protection decision
    (ArcFace: 1 - cos), compared with ``default_margin`` unless the config sets ``margin``.
    ``features(x)``: ``(pooled [B, D], patch_tokens [B, N, C])`` of the attribute network
    (FaRL) for images in [-1, 1]. ``fingerprint`` identifies the weights (pool cache key).
    """

    name: str
    diffae: Any
    id_embed: Callable[[Tensor, Tensor | None], Tensor]
    id_distance: Callable[[Tensor, Tensor], Tensor]
    features: Callable[[Tensor], tuple[Tensor, Tensor]]
    fingerprint: str
    default_margin: float
    attacked_models: tuple[str, ...] = ()
    test_configuration: bool = False
    note: str = ""

    @property
    def image_size(self) -> int:
        return int(self.diffae.cfg.image_size)

    @property
    def device(self) -> torch.device:
        return next(self.diffae.parameters()).device


def fingerprint_module(module: torch.nn.Module, extra: str = "") -> str:
    """A content fingerprint of a module's tensors (names, shapes, and up to 64 values at each end).

    Cheap even for 170 M parameters, and different whenever the checkpoint differs.
    """
    h = hashlib.sha256(extra.encode())
    for name, t in module.state_dict().items():
        flat = t.detach().reshape(-1).to("cpu", torch.float64)
        h.update(f"{name}:{tuple(t.shape)}:".encode())
        h.update(torch.cat([flat[:64], flat[-64:]]).numpy().tobytes())
        h.update(repr(float(flat.sum())).encode())
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------- synthetic pool


@dataclass
class SyntheticPool:
    """The cached synthetic faces: semantic codes ``z`` [P, D], images ``images`` [P, 3, S, S] uint8,
    pooled pairing features ``pooled`` [P, Dp]; ``path`` is the cache file, ``from_cache`` tells
    whether this call loaded it rather than generating it."""

    key: str
    z: Tensor
    images: Tensor
    pooled: Tensor
    settings: dict[str, Any]
    path: Path | None = None
    from_cache: bool = False

    def __len__(self) -> int:
        return int(self.z.shape[0])

    def image(self, idx: Tensor, device: torch.device) -> Tensor:
        """Fakes ``idx`` as float images in [-1, 1] on ``device``."""
        return self.images[idx.cpu()].to(device).float() / 127.5 - 1.0

    def x_T(self, idx: Sequence[int], shape: tuple[int, ...], device: torch.device) -> Tensor:
        """The stochastic codes the fakes were decoded from (rebuilt from their seeds)."""
        seed = int(self.settings["seed"])
        return torch.stack([_noise(seed, int(i), 1, shape) for i in idx]).to(device)


def _noise(seed: int, index: int, stream: int, shape: tuple[int, ...]) -> Tensor:
    """N(0, I) noise of one fake, independent of batch size and device (CPU generator)."""
    g = torch.Generator().manual_seed((seed * 1_000_003 + index) * 4 + stream)
    return torch.randn(shape, generator=g)


def pool_dir() -> Path:
    """``anonymize.weights.cache_dir() / "diffusion-pools"``."""
    from ..weights import cache_dir

    return cache_dir() / "diffusion-pools"


def pool_settings(nets: DiffusionNets, cfg: DiffusionConfig) -> dict[str, Any]:
    """Everything the pool depends on (hashed into its cache key)."""
    return {"format": POOL_FORMAT, "nets": nets.name, "fingerprint": nets.fingerprint,
            "image_size": nets.image_size, "pool_size": cfg.pool_size, "latent_steps": cfg.latent_steps,
            "render_steps": cfg.t_final, "seed": cfg.seed}


def pool_cache_key(settings: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(dict(settings), sort_keys=True).encode()).hexdigest()[:20]


@torch.no_grad()
def generate_pool(nets: DiffusionNets, cfg: DiffusionConfig) -> SyntheticPool:
    """Sample ``cfg.pool_size`` synthetic faces (latent DDIM -> semantic codes -> decode), in batches."""
    dev, s = nets.device, nets.image_size
    m = nets.diffae
    zdim = int(m.conds_mean.shape[-1])
    zs, imgs, pooled = [], [], []
    for start in range(0, cfg.pool_size, cfg.batch_size):
        idx = range(start, min(start + cfg.batch_size, cfg.pool_size))
        u = torch.stack([_noise(cfg.seed, i, 0, (zdim,)) for i in idx]).to(dev)
        z = m.sample_latent(u, T=cfg.latent_steps)  # de-normalised: u_hat * conds_std + conds_mean
        xT = torch.stack([_noise(cfg.seed, i, 1, (3, s, s)) for i in idx]).to(dev)
        x = m.render(xT, z, T=cfg.t_final).clamp(-1, 1)
        x8 = ((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
        p, _ = nets.features(x8.float() / 127.5 - 1.0)  # pair on what is stored
        zs.append(z.float().cpu())
        imgs.append(x8.cpu())
        pooled.append(p.float().cpu())
    settings = pool_settings(nets, cfg)
    return SyntheticPool(pool_cache_key(settings), torch.cat(zs), torch.cat(imgs), torch.cat(pooled), settings)


def load_or_generate_pool(nets: DiffusionNets, cfg: DiffusionConfig, directory: Path | None = None) -> SyntheticPool:
    """The pool for these settings from ``directory`` (default :func:`pool_dir`), generating and
    writing it atomically (temporary file + ``os.replace``) when absent or unreadable."""
    settings = pool_settings(nets, cfg)
    key = pool_cache_key(settings)
    directory = Path(directory) if directory is not None else pool_dir()
    path = directory / f"{key}.pt"
    if path.is_file():
        try:
            d = torch.load(path, map_location="cpu", weights_only=True)
            if d.get("settings") == settings and int(d["z"].shape[0]) == cfg.pool_size:
                return SyntheticPool(key, d["z"], d["images"], d["pooled"], settings, path, from_cache=True)
        except Exception as exc:  # noqa: BLE001 - a damaged cache file is regenerated
            import warnings

            warnings.warn(f"diffusion pool cache {path} unreadable ({exc}); regenerating", stacklevel=2)
    pool = generate_pool(nets, cfg)
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{key}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save({"settings": settings, "z": pool.z, "images": pool.images, "pooled": pool.pooled}, fh)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    pool.path = path
    return pool


def pair_nearest(real: Tensor, fake: Tensor, metric: str = "euclidean") -> tuple[Tensor, Tensor]:
    """Index of the nearest ``fake`` row for each ``real`` row, and that distance."""
    real, fake = real.float(), fake.float().to(real.device)
    if metric == "cosine":
        d = 1.0 - F.normalize(real, dim=1) @ F.normalize(fake, dim=1).T
    elif metric == "euclidean":
        d = torch.cdist(real, fake)
    else:
        raise UsageError(f"diffusion: unknown pair metric {metric!r}")
    dist, idx = d.min(dim=1)
    return idx, dist


# --------------------------------------------------------------------------- losses


def identity_loss(e_a: Tensor, e_ref: Tensor, variant: str, id_margin: float = 0.0) -> tuple[Tensor, Tensor]:
    """Per-image identity loss and cosine. IIS: ``|cos(e_a, e_ref) - m|`` with ``e_ref`` the real face;
    IRS: ``1 - |cos(e_a, e_ref)|`` with ``e_ref`` the paired fake."""
    cos = F.cosine_similarity(e_a.flatten(1), e_ref.flatten(1), dim=1)
    if variant == "iis":
        return (cos - id_margin).abs(), cos
    return 1.0 - cos.abs(), cos


def attribute_loss(tok_a: Tensor, tok_ref: Tensor) -> Tensor:
    """Per-image L1 between patch tokens [B, N, C]: mean over channels, summed over tokens."""
    return (tok_a - tok_ref).abs().mean(dim=-1).sum(dim=-1)


# --------------------------------------------------------------------------- optimisation


@dataclass
class DeIDResult:
    """Outputs for one batch: ``images`` [B, 3, S, S] in [-1, 1] (final render), ``z`` the optimised
    codes, ``z_init``, ``x_T`` (bit-identical to what was used throughout), ``pair_index`` /
    ``pair_distance``, per-step ``trace`` (batch sums and per-image lists), and per-image
    final ``cos`` / ``id_distance`` / ``attr_loss`` (measured on the returned images) plus the
    reconstruction's ``recon_id_distance`` (how far plain DiffAE round-tripping already moves it)."""

    images: Tensor
    z: Tensor
    z_init: Tensor
    x_T: Tensor
    pair_index: Tensor
    pair_distance: Tensor
    trace: list[dict[str, Any]]
    final: dict[str, list[float]]
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


def _scheduler(opt: torch.optim.Optimizer, cfg: DiffusionConfig) -> torch.optim.lr_scheduler.MultiStepLR:
    miles = sorted({max(1, round(f * cfg.steps)) for f in cfg.lr_milestones})
    return torch.optim.lr_scheduler.MultiStepLR(opt, milestones=miles, gamma=cfg.lr_gamma)


def run_deid(nets: DiffusionNets, x_real: Tensor, pool: SyntheticPool, cfg: DiffusionConfig,
             lm: Tensor | None = None) -> DeIDResult:
    """Diffusion De-ID of a batch of aligned real faces ``x_real`` [B, 3, S, S] in [-1, 1]."""
    t0 = time.perf_counter()
    m = nets.diffae
    dev = nets.device
    x_real = x_real.to(dev).float()
    if x_real.shape[-1] != nets.image_size or x_real.shape[-2] != nets.image_size:
        raise UsageError(f"diffusion: faces must be {nets.image_size}x{nets.image_size}, got {tuple(x_real.shape[-2:])}")
    with torch.no_grad():
        z_real = m.encode(x_real)
        pooled_r, tok_r = nets.features(x_real)
        idx, pdist = pair_nearest(pooled_r, pool.pooled, cfg.pair_metric)
        if cfg.xt_source == "real":
            x_T = m.encode_stochastic(x_real, z_real, T=cfg.t_encode)
        else:
            x_T = pool.x_T(idx.tolist(), tuple(x_real.shape[1:]), dev)
        e_real = nets.id_embed(x_real, lm)
        x_fake = pool.image(idx, dev)
        e_ref = e_real if cfg.variant == "iis" else nets.id_embed(x_fake, lm)
        recon = m.render(x_T, z_real, T=cfg.t_final)
        recon_dist = nets.id_distance(nets.id_embed(recon, lm), e_real)
    x_T = x_T.detach()
    a = _init_alpha(cfg.init)
    z_init = (a * pool.z[idx.cpu()].to(dev) + (1 - a) * z_real).detach()
    z = z_init.clone().requires_grad_(True)
    opt = torch.optim.Adam([z], lr=cfg.lr)
    sched = _scheduler(opt, cfg)
    trace: list[dict[str, Any]] = []

    def losses(x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        e_a = nets.id_embed(x, lm)
        l_id, cos = identity_loss(e_a, e_ref, cfg.variant, cfg.id_margin)
        _, tok = nets.features(x)
        l_att = attribute_loss(tok, tok_r)
        return cfg.lambda_id * l_id + cfg.lambda_attr * l_att, l_id, l_att, cos, e_a

    for step in range(cfg.steps):
        ts = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        x_a = m.render(x_T, z, T=cfg.t_eval, checkpoint=cfg.checkpoint)
        loss, l_id, l_att, cos, e_a = losses(x_a)
        loss.sum().backward()
        with torch.no_grad():
            d_real = nets.id_distance(e_a.detach(), e_real)
        lr = opt.param_groups[0]["lr"]
        opt.step()
        sched.step()
        trace.append({
            "step": step, "loss": float(loss.detach().sum()), "id_loss": float(l_id.detach().sum()),
            "attr_loss": float(l_att.detach().sum()),
            "loss_per_face": [float(v) for v in loss.detach()], "cos": [float(v) for v in cos.detach()],
            "id_distance": [float(v) for v in d_real],
            "lr": lr, "seconds": time.perf_counter() - ts,
        })
    with torch.no_grad():
        z_out = z.detach()
        out = m.render(x_T, z_out, T=cfg.t_final).clamp(-1, 1)
        loss, l_id, l_att, _, e_out = losses(out)
        cos_real = F.cosine_similarity(e_out.flatten(1), e_real.flatten(1), dim=1)
        dist = nets.id_distance(e_out, e_real)
    final = {"loss": [float(v) for v in loss], "id_loss": [float(v) for v in l_id],
             "attr_loss": [float(v) for v in l_att], "cos": [float(v) for v in cos_real],
             "id_distance": [float(v) for v in dist], "recon_id_distance": [float(v) for v in recon_dist]}
    return DeIDResult(out, z_out, z_init, x_T, idx.cpu(), pdist.cpu(), trace, final, time.perf_counter() - t0,
                      extra={"e_real": e_real})

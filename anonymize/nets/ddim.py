"""DDIM schedules, deterministic sampling (decode) and inversion (encode).

Conventions follow the DiffAE release (phizaz/diffae, ``GaussianDiffusionBeatGans``
with the "ddimN" spacing): schedules in float64, eps prediction, eta = 0, and the
network always receives the *original* timestep (0..T-1) of a kept step.

* ``linear`` betas: ``linspace(1e-4 * s, 0.02 * s, T)`` with ``s = 1000 / T``
  (the image DDIM of ``ffhq256_autoenc``).
* ``const0.008``: constant betas (the latent DDIM of ``ffhq256_autoenc_latent``).
* "ddimN" spacing: the smallest stride ``s`` with ``len(range(0, T, s)) == N``;
  kept steps ``0, s, 2s, ...`` and spaced betas ``1 - abar_k / abar_{k-1}``.

Example:
    >>> sched = DiffusionSchedule.from_name("linear").spaced(10)
    >>> sched.timesteps.tolist()[:3]
    [0, 100, 200]
    >>> import torch
    >>> eps_fn = lambda x, t: torch.zeros_like(x)
    >>> xT = ddim_encode(eps_fn, torch.zeros(1, 3, 4, 4), sched)
    >>> bool(torch.all(xT == 0))
    True
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch.utils.checkpoint import checkpoint as _checkpoint

EpsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``eps_fn(x_t, t)`` -> predicted noise; ``t`` is an int64 tensor [B] of original timesteps."""


def linear_betas(T: int = 1000) -> np.ndarray:
    """DDPM linear betas (float64), scaled so that T=1000 gives 1e-4..0.02."""
    scale = 1000 / T
    return np.linspace(scale * 0.0001, scale * 0.02, T, dtype=np.float64)


def space_timesteps(T: int, n_steps: int) -> list[int]:
    """Kept original timesteps for DiffAE's "ddimN" spacing (sorted ascending)."""
    if n_steps < 1 or n_steps > T:
        raise ValueError(f"number of DDIM steps must be in 1..{T}, got {n_steps}")
    for stride in range(1, T + 1):
        if len(range(0, T, stride)) == n_steps:
            return list(range(0, T, stride))
    raise ValueError(f"cannot create exactly {n_steps} DDIM steps with an integer stride over T={T}")


@dataclass(frozen=True)
class SpacedSchedule:
    """A sub-sampled DDIM schedule: kept timesteps and their alpha-bars (float64)."""

    timesteps: np.ndarray
    alphas_cumprod: np.ndarray
    alphas_cumprod_prev: np.ndarray = field(init=False)
    alphas_cumprod_next: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        ac = self.alphas_cumprod
        object.__setattr__(self, "alphas_cumprod_prev", np.append(1.0, ac[:-1]))
        object.__setattr__(self, "alphas_cumprod_next", np.append(ac[1:], 0.0))

    @property
    def num_steps(self) -> int:
        return len(self.timesteps)

    def sqrt_recip(self, k: int) -> float:
        return float(np.sqrt(1.0 / self.alphas_cumprod[k]))

    def sqrt_recipm1(self, k: int) -> float:
        return float(np.sqrt(1.0 / self.alphas_cumprod[k] - 1.0))


@dataclass(frozen=True)
class DiffusionSchedule:
    """Full-length beta schedule (float64)."""

    betas: np.ndarray

    @classmethod
    def from_name(cls, name: str = "linear", T: int = 1000) -> "DiffusionSchedule":
        """``"linear"`` or ``"constX"`` (e.g. ``"const0.008"``)."""
        if name == "linear":
            return cls(linear_betas(T))
        if name.startswith("const"):
            return cls(np.full(T, float(name[len("const"):]), dtype=np.float64))
        raise ValueError(f"unknown beta schedule {name!r} (use 'linear' or 'const<value>')")

    @property
    def T(self) -> int:
        return len(self.betas)

    @property
    def alphas_cumprod(self) -> np.ndarray:
        return np.cumprod(1.0 - self.betas, axis=0)

    def spaced(self, n_steps: int) -> SpacedSchedule:
        """The "ddimN" sub-schedule with ``n_steps`` steps (the official respacing)."""
        keep = space_timesteps(self.T, n_steps)
        ac = self.alphas_cumprod
        last = 1.0
        new_betas = []
        for t in keep:
            new_betas.append(1.0 - ac[t] / last)
            last = ac[t]
        spaced_ac = np.cumprod(1.0 - np.asarray(new_betas, dtype=np.float64), axis=0)
        return SpacedSchedule(np.asarray(keep, dtype=np.int64), spaced_ac)


def _step(
    eps_fn: EpsFn, x: torch.Tensor, t: int, sr: float, srm1: float, ab_target: float, clip: bool
) -> torch.Tensor:
    tt = torch.full((x.shape[0],), t, dtype=torch.int64, device=x.device)
    eps = eps_fn(x, tt)
    x0 = sr * x - srm1 * eps
    if clip:
        x0 = x0.clamp(-1.0, 1.0)
        eps = (sr * x - x0) / srm1
    return x0 * float(np.sqrt(ab_target)) + float(np.sqrt(1.0 - ab_target)) * eps


def _run(eps_fn: EpsFn, x: torch.Tensor, step_args: list[tuple[int, float, float, float]], clip: bool,
         use_checkpoint: bool) -> torch.Tensor:
    for t, sr, srm1, ab in step_args:
        if use_checkpoint and torch.is_grad_enabled():
            x = _checkpoint(_step, eps_fn, x, t, sr, srm1, ab, clip, use_reentrant=False)
        else:
            x = _step(eps_fn, x, t, sr, srm1, ab, clip)
    return x


def ddim_decode(
    eps_fn: EpsFn, x_T: torch.Tensor, sched: SpacedSchedule, *, clip: bool = True, checkpoint: bool = False
) -> torch.Tensor:
    """Deterministic DDIM sampling (eta 0) from ``x_T`` to ``x_0``.

    With ``clip`` the predicted x0 is clipped to [-1, 1] and eps re-derived from it
    (DiffAE's ``clip_denoised=True``); the result is then the clipped x0 of step t=0.
    ``checkpoint`` recomputes each step in backward (``torch.utils.checkpoint``) so
    gradients through many steps fit in memory. Differentiable in ``x_T`` and in
    anything ``eps_fn`` closes over (e.g. the semantic code).
    """
    args = [
        (int(sched.timesteps[k]), sched.sqrt_recip(k), sched.sqrt_recipm1(k), float(sched.alphas_cumprod_prev[k]))
        for k in reversed(range(sched.num_steps))
    ]
    return _run(eps_fn, x_T, args, clip, checkpoint)


def ddim_encode(
    eps_fn: EpsFn, x_0: torch.Tensor, sched: SpacedSchedule, *, clip: bool = True, checkpoint: bool = False
) -> torch.Tensor:
    """Deterministic DDIM inversion from ``x_0`` to ``x_T`` (DiffAE ``encode_stochastic``).

    Same step as :func:`ddim_decode` but moving to the next alpha-bar (0 after the
    last step), so the result is the re-derived eps of the last step.
    """
    args = [
        (int(sched.timesteps[k]), sched.sqrt_recip(k), sched.sqrt_recipm1(k), float(sched.alphas_cumprod_next[k]))
        for k in range(sched.num_steps)
    ]
    return _run(eps_fn, x_0, args, clip, checkpoint)

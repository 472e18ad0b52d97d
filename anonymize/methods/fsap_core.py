"""FSAP core: Algorithm 7 of the thesis (ch. 5), independent of any network.

Feature Space Adversarial Perturbation perturbs a latent code ``W`` (pSp W+,
``[1, 18, 512]``, or any tensor) with plain sign steps:

* ID step:        ``W' <- W' + lambda_I * sign(dL_I/dW')``        (ascent on identity distance)
* attribute step: ``W' <- W' - lambda_P * sum_j sign(dL_j/dW')``  (k times per outer iteration)

where each attribute loss ``L_j`` (MSE, LPIPS, 1 - SSIM) gets its *own*
gradient and sign (three ``autograd.grad`` calls, never the gradient of a
sum), so one attribute step moves each element by ``lambda_P * {-3..3}``.
No optimiser, no learning rate, no projection (``max_delta`` is an opt-in
extension).

Stop test. As printed, Alg. 7 tests ``L_I`` on ``x_n = f_D(W'_n)`` generated
*before* the iteration's updates and returns that image, so the last updates
are thrown away. By default this module re-decodes after the updates, tests
that image and returns it (the decode is reused as the next iteration's first
forward, so it costs nothing extra except once at the end);
``literal_alg7=True`` reproduces the printed version exactly. When ``N`` is
exhausted without ``L_I > tau`` the result has ``protected=False``.

Example:
    >>> import torch
    >>> dec = lambda w: torch.tanh(w.reshape(1, 1, 4, 4))
    >>> x = dec(torch.zeros(1, 16))
    >>> id_loss = lambda xh: (xh - x).mean()       # toy "identity distance"
    >>> mse = lambda xh: (xh - x).square().mean()
    >>> r = run_fsap(torch.zeros(1, 16), dec, id_loss, {"mse": mse},
    ...              FSAPConfig(lambda_i=0.1, lambda_p=0.01, n_iter=50, k=1, tau=0.5))
    >>> r.protected, r.iterations, round(r.id_loss, 3), len(r.trace)
    (True, 7, 0.558, 8)
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Mapping

import torch
from torch import Tensor

from ..errors import UsageError

Decoder = Callable[[Tensor], Tensor]
"""``W' -> x_hat`` (differentiable)."""
ImageLoss = Callable[[Tensor], Tensor]
"""``x_hat -> scalar`` loss against the fixed original ``x`` (closed over)."""
StepHook = Callable[[str, int, Tensor, Tensor], None]
"""``hook(kind, iteration, w_before, w_after)``; kind is ``"id"`` or ``"attr"``."""

__all__ = ["FSAPConfig", "FSAPResult", "PRESETS", "config_from_params", "run_fsap"]


@dataclass(frozen=True)
class FSAPConfig:
    """Algorithm 7 hyperparameters; defaults are the thesis's (section 5.5.1.2).

    ``use_attr=False`` is the "ID loss solely" ablation of Table 5.1.
    ``max_delta`` (extension, off by default) clamps ``|W' - W|`` element-wise.
    """

    lambda_i: float = 0.02
    lambda_p: float = 0.008
    n_iter: int = 100
    k: int = 6
    tau: float = 0.8
    literal_alg7: bool = False
    use_attr: bool = True
    max_delta: float | None = None
    seed: int = 0

    def validate(self) -> "FSAPConfig":
        if not (self.lambda_i > 0 and self.lambda_p >= 0):
            raise UsageError("fsap: lambda_i must be > 0 and lambda_p >= 0")
        if int(self.n_iter) != self.n_iter or self.n_iter < 1:
            raise UsageError("fsap: n_iter must be a positive integer")
        if int(self.k) != self.k or self.k < 0:
            raise UsageError("fsap: k must be an integer >= 0")
        if self.max_delta is not None and self.max_delta <= 0:
            raise UsageError("fsap: max_delta must be > 0 when given")
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# Presets. "medium" is the thesis setting; "low" and "high" are extrapolated from
# the qualitative Fig. 5.4 sweep (stronger steps -> more privacy, less utility),
# not values the thesis reports.
PRESETS: dict[str, dict[str, float]] = {
    "low": {"lambda_i": 0.01, "lambda_p": 0.008, "tau": 0.6},
    "medium": {},
    "high": {"lambda_i": 0.05, "lambda_p": 0.05, "tau": 1.0},
}

_KEYS = ("lambda_i", "lambda_p", "n_iter", "k", "tau", "literal_alg7", "use_attr", "max_delta", "seed")


def config_from_params(params: Any, seed: int = 0) -> FSAPConfig:
    """Preset (``preset``, default ``medium``) then the explicitly set keys override it.

    ``params`` is a :class:`anonymize.methods.fsap.FSAPParams` or a mapping parsed into one.

    Example:
        >>> c = config_from_params({"preset": "high", "n_iter": 30})
        >>> c.lambda_i, c.tau, c.n_iter
        (0.05, 1.0, 30)
    """
    from .fsap import FSAPParams
    from .params import as_params

    p = as_params(FSAPParams, params, method="fsap")
    vals: dict[str, Any] = {"seed": seed, **PRESETS[p.preset]}
    for key in _KEYS:
        v = getattr(p, key)
        if v is not None:
            vals[key] = v
    return FSAPConfig(**vals).validate()


@dataclass
class FSAPResult:
    """Output of :func:`run_fsap`.

    ``image`` is the returned ``x_hat`` (detached) and ``w`` the code that made it;
    ``trace[0]`` holds the losses of the unperturbed reconstruction, ``trace[n]``
    those after outer iteration ``n`` (``id_loss``, each attribute loss,
    ``max_abs_delta``, ``seconds``).
    """

    image: Tensor
    w: Tensor
    protected: bool
    iterations: int
    id_loss: float
    attr_losses: dict[str, float]
    trace: list[dict[str, float]] = field(default_factory=list)
    config: FSAPConfig = field(default_factory=FSAPConfig)

    def summary(self) -> dict[str, Any]:
        return {
            "protected": self.protected,
            "iterations": self.iterations,
            "id_loss": round(self.id_loss, 6),
            "attr_losses": {k: round(v, 6) for k, v in self.attr_losses.items()},
            "config": self.config.to_dict(),
        }


def _sign(g: Tensor | None, like: Tensor) -> Tensor:
    # sign(0) = 0 (thesis 2.2.1.3); an unused latent element has no gradient at all.
    return torch.zeros_like(like) if g is None else torch.sign(g)


def _id_grad(w: Tensor, decoder: Decoder, id_loss: ImageLoss) -> tuple[Tensor, Tensor, Tensor]:
    w = w.detach().requires_grad_(True)
    x = decoder(w)
    li = id_loss(x)
    (g,) = torch.autograd.grad(li, w, allow_unused=True)
    return x.detach(), li.detach(), _sign(g, w)


def run_fsap(
    w0: Tensor,
    decoder: Decoder,
    id_loss: ImageLoss,
    attr_losses: Mapping[str, ImageLoss],
    config: FSAPConfig | None = None,
    *,
    on_step: StepHook | None = None,
) -> FSAPResult:
    """Run Algorithm 7 from the encoded code ``w0`` (see the module docstring).

    ``id_loss(x_hat)`` is ``L_I(x, x_hat; f_I)`` with ``f_I(x)`` precomputed;
    ``attr_losses`` maps names (``mse``, ``lpips``, ``ssim``) to ``L_j(x, x_hat)``.
    The networks behind the callables should be frozen and deterministic (fixed
    StyleGAN noise); the run is seeded with ``config.seed`` in a forked RNG.
    """
    cfg = (config or FSAPConfig()).validate()
    attrs = dict(attr_losses) if cfg.use_attr else {}
    w0 = w0.detach()
    devices = [w0.device] if w0.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(cfg.seed)
        return _run(w0, decoder, id_loss, attrs, cfg, on_step)


def _losses(x: Tensor, li: Tensor, attrs: Mapping[str, ImageLoss]) -> dict[str, float]:
    out = {"id_loss": float(li)}
    with torch.no_grad():
        for name, fn in attrs.items():
            out[name] = float(fn(x))
    return out


def _run(w0: Tensor, decoder: Decoder, id_loss: ImageLoss, attrs: Mapping[str, ImageLoss],
         cfg: FSAPConfig, on_step: StepHook | None) -> FSAPResult:
    t0 = time.perf_counter()
    w = w0.clone()
    # x_n, L_I(x_n) and sign(dL_I/dW') at the current code: step (a) of iteration n,
    # and (fixed stop test) the image tested after iteration n-1.
    x_n, li_n, s_id = _id_grad(w, decoder, id_loss)
    trace = [{"iter": 0, **_losses(x_n, li_n, attrs), "max_abs_delta": 0.0, "seconds": 0.0}]
    out_x, out_w, out_li, out_row = x_n, w.clone(), float(li_n), 0
    protected, iters = False, 0
    for n in range(1, cfg.n_iter + 1):
        iters = n
        w_start, x_start, li_start = w.clone(), x_n, li_n
        # (b) ID step: gradient ascent on the identity distance.
        w_new = _clamp(w + cfg.lambda_i * s_id, w0, cfg.max_delta)
        if on_step is not None:
            on_step("id", n, w, w_new)
        w = w_new
        # (c) k attribute sub-steps, each loss through its own sign.
        if attrs and cfg.lambda_p > 0:
            names = list(attrs)
            for _ in range(cfg.k):
                wg = w.detach().requires_grad_(True)
                x_i = decoder(wg)
                step = torch.zeros_like(w)
                for j, name in enumerate(names):
                    lj = attrs[name](x_i)
                    (g,) = torch.autograd.grad(lj, wg, retain_graph=j < len(names) - 1, allow_unused=True)
                    step = step + _sign(g, w)
                w_new = _clamp(w - cfg.lambda_p * step, w0, cfg.max_delta)
                if on_step is not None:
                    on_step("attr", n, w, w_new)
                w = w_new
        # Decode the updated code: the fixed stop test uses it, and it is step (a) of n+1.
        x_n, li_n, s_id = _id_grad(w, decoder, id_loss)
        trace.append({"iter": n, **_losses(x_n, li_n, attrs),
                      "max_abs_delta": float((w - w0).abs().max()),
                      "seconds": round(time.perf_counter() - t0, 4)})
        if cfg.literal_alg7:
            # (d)/(e) as printed: test, and return, the image made *before* this iteration's updates.
            out_x, out_w, out_li, out_row = x_start, w_start, float(li_start), n - 1
            if float(li_start) > cfg.tau:
                protected = True
                break
        else:
            out_x, out_w, out_li, out_row = x_n, w.clone(), float(li_n), n
            if float(li_n) > cfg.tau:
                protected = True
                break
    skip = ("iter", "id_loss", "max_abs_delta", "seconds")
    attr_final = {k: v for k, v in trace[out_row].items() if k not in skip}
    return FSAPResult(image=out_x, w=out_w.detach(), protected=protected, iterations=iters,
                      id_loss=out_li, attr_losses=attr_final, trace=trace, config=cfg)


def _clamp(w: Tensor, w0: Tensor, max_delta: float | None) -> Tensor:
    if max_delta is None:
        return w
    return w0 + (w - w0).clamp(-max_delta, max_delta)

"""Seed 003's classifier schemes, with the paper's sign and accumulation errors fixed.

- **CRS** (class replacement, minimises ICP): pick a random target class outside
  the clean top-k, then signed *descent* on ``CE(F(x + eta), target)``:
  ``eta <- clip(eta - step * sign(grad), -eta_max, eta_max)``, gradient taken at
  the current perturbed image, image clipped to [0, 255], stop once
  ``p(target) >= score_required`` (0.99) or after ``max_iter`` (100); up to
  ``max_retries`` targets. The paper adds ``+sign`` and re-adds the cumulative
  noise each iteration (both wrong).
- **CIS** (class indistinguishability, maximises ICE): CRS noises for ``n``
  targets, each computed from the clean image, summed (faithful: no clip of the
  sum unless ``cis_total_linf``); the released image's ICE is reported.

All units are gray levels; the perturbation accumulates in float (sub-gray-level steps
add up) while the forward pass sees the uint8 image (perturbation rounded,
straight-through gradient), so ``|out - in| <= floor(eta_max)`` (2 for 1% of 255)
and the reported probabilities are those of the written file.

Example:
    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 10))
    >>> clf = Classifier(net, input_size=None, normalize="none")
    >>> r = crs(clf, torch.full((1, 3, 8, 8), 128.0), gen=torch.Generator().manual_seed(0), k=1)
    >>> r["iterations"] <= 100
    True
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import MethodUnavailable, UsageError, WeightsMissing

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Classifier:
    """A frozen classifier that takes (N, 3, H, W) images in gray levels [0, 255].

    Resizing (bilinear, differentiable, to ``input_size`` if given), scaling to
    [0, 1], optional grayscale and normalisation happen inside, so perturbations
    live at the image's own resolution.
    """

    def __init__(self, model: torch.nn.Module, *, input_size: int | None = 224, normalize: str = "imagenet",
                 grayscale: bool = False, device: str = "cpu") -> None:
        if normalize not in ("imagenet", "none"):
            raise UsageError("--param normalize must be 'imagenet' or 'none'")
        model = model.eval()
        for prm in model.parameters():
            prm.requires_grad_(False)
        self.model = model.to(device)
        self.input_size, self.normalize, self.grayscale = input_size, normalize, grayscale
        self.device = torch.device(device)

    def logits(self, x255: torch.Tensor) -> torch.Tensor:
        x = x255.to(self.device) / 255.0
        if self.grayscale:
            x = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
        if self.input_size is not None and tuple(x.shape[-2:]) != (self.input_size, self.input_size):
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False, antialias=True)
        if self.normalize == "imagenet":
            m = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
            s = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
            x = (x - m) / s
        return self.model(x)


def icp(probs: torch.Tensor, true_class: int) -> float:
    """Image classification probability (003 eq. 1): the softmax probability of the true class."""
    return float(probs[true_class])


def ice(probs: torch.Tensor) -> float:
    """Image classification entropy (003 eq. 2), natural log."""
    p = probs.clamp_min(1e-12)
    return float(-(p * p.log()).sum())


def clip_pass(v: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """``v.clamp(lo, hi)`` in the forward pass, identity gradient in the backward pass.

    ``torch.clamp`` has a zero gradient at (and beyond) the bounds, so a pixel at 0 or
    255 (MNIST backgrounds, highlights) would get ``sign(0) = 0`` forever and never move.
    """
    return v + (v.clamp(lo, hi) - v).detach()


def _quantised(x: torch.Tensor, eta: torch.Tensor, bound: float) -> torch.Tensor:
    q = eta + (eta.round().clamp(-bound, bound) - eta).detach()
    return clip_pass(x + q, 0.0, 255.0)


def crs(clf: Classifier, x: torch.Tensor, *, gen: torch.Generator, true_class: int | None = None, k: int = 5,
        eta_max: float = 2.55, eta_step: float | None = None, score_required: float = 0.99, max_iter: int = 100,
        max_retries: int = 5, exclude: Sequence[int] = (), init: str = "zero") -> dict[str, Any]:
    """CRS on one image ``x`` (1, 3, H, W) in gray levels; returns the best attempt (see the module docstring).

    ``init``: ``zero`` (the paper: eta_0 = 0), ``random`` (uniform in the budget ball) or ``auto``
    (zero for the first target, random for retries). ``x + eta`` is kept inside [0, 255]
    and the range clip passes gradients (:func:`clip_pass`), so saturated pixels (MNIST's
    black background) can move. An attempt stops early once the iterate no longer changes.
    """
    if init not in ("zero", "random", "auto"):
        raise UsageError("--param init must be zero, random or auto")
    eta_step = eta_max / 10.0 if eta_step is None else eta_step
    bound = float(math.floor(eta_max + 1e-9))
    with torch.no_grad():
        p0 = F.softmax(clf.logits(x), -1)[0]
    n_cls = p0.numel()
    y_true = int(p0.argmax()) if true_class is None else int(true_class)
    topk = set(p0.topk(min(k, n_cls)).indices.tolist())
    tried: set[int] = set()
    best: dict[str, Any] | None = None
    t0 = time.perf_counter()
    total_iter = 0
    for attempt in range(max_retries):
        pool = [c for c in range(n_cls) if c not in topk and c not in tried and c not in exclude and c != y_true]
        if not pool:
            break
        y = pool[int(torch.randint(len(pool), (1,), generator=gen))]
        tried.add(y)
        start = "random" if init == "random" or (init == "auto" and attempt > 0) else "zero"
        if start == "random":
            eta = (torch.rand(x.shape, generator=gen, dtype=x.dtype) * 2 - 1).to(x.device) * eta_max
        else:
            eta = torch.zeros_like(x)
        eta = (x + eta).clamp(0, 255) - x  # keep x + eta inside the pixel range (no dead, clipped pixels)
        it = 0
        p = p0
        for it in range(1, max_iter + 1):
            eta.requires_grad_(True)
            logits = clf.logits(_quantised(x, eta, bound))
            p = F.softmax(logits.detach(), -1)[0]
            if float(p[y]) >= score_required:
                eta = eta.detach()
                it -= 1
                break
            g, = torch.autograd.grad(F.cross_entropy(logits, torch.tensor([y], device=logits.device)), eta)
            with torch.no_grad():
                new = (eta - eta_step * g.sign()).clamp(-eta_max, eta_max)  # descent: toward the target
                new = (x + new).clamp(0, 255) - x
                stalled = torch.equal(new, eta)
                eta = new
            if stalled:
                break
        else:
            it = max_iter
        eta = eta.detach()
        with torch.no_grad():  # the probabilities of the released (uint8) image
            p = F.softmax(clf.logits(_quantised(x, eta, bound)), -1)[0]
        total_iter += it
        res = {"target": y, "success": float(p[y]) >= score_required, "iterations": it, "p_target": float(p[y]),
               "p_target_before": float(p0[y]), "init": start,
               "eta": (x + eta.round().clamp(-bound, bound)).clamp(0, 255) - x, "probs": p}
        if best is None or (res["success"], -icp(p, y_true)) > (best["success"], -icp(best["probs"], y_true)):
            best = res
        if res["success"]:
            break
    assert best is not None, "no target class available outside the top-k"
    x_adv = (x + best["eta"]).clamp(0, 255)
    return {
        **best,
        "x_adv": x_adv,
        "true_class": y_true,
        "icp_before": icp(p0, y_true),
        "icp_after": icp(best["probs"], y_true),
        "correct_after": int(best["probs"].argmax()) == y_true,
        "ice_before": ice(p0),
        "ice_after": ice(best["probs"]),
        "targets_tried": sorted(tried),
        "total_iterations": total_iter,
        "seconds": time.perf_counter() - t0,
    }


def cis(clf: Classifier, x: torch.Tensor, *, gen: torch.Generator, n: int = 2, cis_total_linf: float | None = None,
        **kw: Any) -> dict[str, Any]:
    """CIS: sum of ``n`` independent CRS noises (each from the clean ``x``); ICE of the released image."""
    with torch.no_grad():
        p0 = F.softmax(clf.logits(x), -1)[0]
    y_true = int(p0.argmax()) if kw.get("true_class") is None else int(kw["true_class"])
    total = torch.zeros_like(x)
    parts, used = [], []
    for _ in range(n):
        r = crs(clf, x, gen=gen, exclude=used, **kw)
        used.append(r["target"])
        total = total + r["eta"]
        parts.append({"target": r["target"], "success": r["success"], "iterations": r["iterations"]})
    if cis_total_linf is not None:
        total = total.clamp(-cis_total_linf, cis_total_linf)
    x_adv = (x + total).clamp(0, 255).round()
    with torch.no_grad():
        p = F.softmax(clf.logits(x_adv), -1)[0]
    n_cls = p.numel()
    return {"x_adv": x_adv, "targets": parts, "true_class": y_true, "ice_before": ice(p0), "ice_after": ice(p),
            "ice_after_normalised": ice(p) / math.log(n_cls), "icp_before": icp(p0, y_true), "icp_after": icp(p, y_true),
            "max_prob_after": float(p.max()), "top1_after": int(p.argmax())}


# ----------------------------------------------------------------------------- loading


def load_classifier(spec: str, *, device: str = "cpu", input_size: int | None = None, normalize: str = "imagenet",
                    grayscale: bool = False) -> Classifier:
    """``spec``: a TorchScript file (``model.pt``), ``ARCH:STATE_DICT`` (a torchvision architecture and
    a state-dict file), or ``torchvision:ARCH`` (weights fetched with ``anonymize fetch-weights ARCH-imagenet``)."""
    import torchvision

    if ":" in spec and not Path(spec).exists():
        arch, path = spec.split(":", 1)
        if arch == "torchvision":
            arch = path
            name = f"{arch}-imagenet"
            try:
                from ..weights import weights_path

                path = str(weights_path(name, purpose=f"ap classifier target {arch}"))
            except WeightsMissing:
                raise
            except Exception as exc:  # not in the manifest
                raise WeightsMissing([name], purpose=f"ap classifier target {arch} ({exc})") from exc
        if not hasattr(torchvision.models, arch):
            raise UsageError(f"--param classifier: torchvision has no architecture {arch!r}")
        model = getattr(torchvision.models, arch)(weights=None)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            model.load_state_dict(state.get("state_dict", state) if isinstance(state, dict) else state)
        except Exception as exc:
            raise MethodUnavailable(f"--param classifier: cannot load {path!r} into {arch}: {exc}") from exc
        size = input_size or (299 if arch.startswith("inception") else 224)
        return Classifier(model, input_size=size, normalize=normalize, grayscale=grayscale, device=device)
    p = Path(spec)
    if not p.is_file():
        raise UsageError(f"--param classifier: {spec!r} is neither a file nor ARCH:STATE_DICT nor torchvision:ARCH")
    try:
        model = torch.jit.load(str(p), map_location="cpu")
    except Exception as exc:
        raise MethodUnavailable(f"--param classifier: {spec!r} is not a TorchScript model ({exc}); "
                                "for a state dict pass ARCH:PATH") from exc
    return Classifier(model, input_size=input_size, normalize=normalize, grayscale=grayscale, device=device)


def run_classifier_target(items: Sequence[Any], ctx: Any, params: Any) -> list[Any]:
    """The ``target=classifier`` branch of ``protect --method ap`` (whole image, one per item).

    ``params``: an :class:`~anonymize.methods.ap.APParams` with ``target="classifier"`` (or a mapping parsed into one).
    """
    from ..metrics.quality import ssim
    from .ap import APParams
    from .base import MethodOutput
    from .params import as_params

    p = as_params(APParams, params, method="ap")
    scheme = p.scheme
    clf = load_classifier(str(p.classifier), device=ctx.device, input_size=p.input_size, normalize=p.normalize,
                          grayscale=p.grayscale)
    eta_max = p.eta_max if p.eta_max is not None else (p.epsilon if p.epsilon is not None else 2.55)
    kw = {"k": p.k, "eta_max": eta_max, "score_required": p.score_required, "max_iter": p.max_iter,
          "max_retries": p.max_retries, "init": p.init}
    if p.eta_step is not None:
        kw["eta_step"] = p.eta_step
    outs = []
    for item in items:
        g = torch.Generator()
        g.manual_seed(int(ctx.generator_for(item).integers(0, 2**62)))
        x = torch.from_numpy(item.pixels).permute(2, 0, 1)[None].float()
        if scheme == "crs":
            r = crs(clf, x, gen=g, **kw)
            ok = bool(r["success"]) and not r["correct_after"]
        else:
            r = cis(clf, x, gen=g, n=p.n, cis_total_linf=p.cis_total_linf, **kw)
            ok = r["ice_after"] > r["ice_before"] and r["top1_after"] != r["true_class"]
        px = r.pop("x_adv")[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()
        info = {k: v for k, v in r.items() if k not in ("eta", "probs")}
        info.update(target="classifier", scheme=scheme, attacked_models=[str(p.classifier)],
                    linf=int(np.abs(px.astype(np.int16) - item.pixels.astype(np.int16)).max()),
                    noise_mean=float(np.abs(px.astype(np.float64) - item.pixels).mean() / 255.0),
                    ssim=ssim(item.pixels, px),
                    white_box_note="white-box: optimised against and measured on the same classifier (as in 003)")
        if not ok:
            info["reason"] = "target score not reached within the budget" if scheme == "crs" else "entropy did not rise"
        outs.append(MethodOutput(pixels=px, protected=ok, info=info))
    return outs

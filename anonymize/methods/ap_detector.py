"""Thesis ch. 3: hide private objects from an object detector, keep the others.

The detector's clean detections (score >= ``tau``) become pseudo-labels: private
classes are relabelled to background (0), every other detection keeps its class.
Each iteration runs backbone + RPN on the current image, appends the clean boxes to
the proposals (so every object is always scored), gives each proposal the label of
the clean box it overlaps (IoU >= 0.5, else background), and takes a signed step
down the mean cross-entropy of the RoI head (eqs. 3.8-3.10, Alg. 5):
``X <- clip(X - step * sign(grad), 0, 255)``. Steps are in gray levels (thesis:
0.2-0.4); the iterate stays float, so sub-gray-level steps add up, and the result is
rounded to uint8 once and re-detected. Reported: hide ratio of private objects,
keep ratio of the others, ``R = hide + 0.5 keep``, L2, ALD_inf, max |dX|.

Works with torchvision ``GeneralizedRCNN`` detectors (Faster R-CNN): ``transform``,
``backbone``, ``rpn`` and ``roi_heads`` are used directly. Label 0 is background.

Example (the last two lines are skipped: they need ``anonymize fetch-weights fasterrcnn_resnet50_fpn-coco``):
    >>> import torch
    >>> _match(torch.tensor([[0.0, 0, 10, 10]]), torch.tensor([1]), torch.tensor([[1.0, 1, 10, 10]]), torch.tensor([1]))
    [True]
    >>> det = load_detector("torchvision:fasterrcnn_resnet50_fpn")  # doctest: +SKIP
    >>> hide_private(det, torch.full((1, 3, 64, 64), 128.0), private={1})["iterations"] <= 12  # doctest: +SKIP
    True
"""
from __future__ import annotations

import time
from typing import Any, Collection, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import MethodUnavailable, UsageError, WeightsMissing

MASK_MODES = ("global", "private_boxes")


def _iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    from torchvision.ops import box_iou

    if a.numel() == 0 or b.numel() == 0:
        return torch.zeros(a.shape[0], b.shape[0])
    return box_iou(a, b)


class TorchvisionDetector:
    """A frozen torchvision R-CNN detector taking (1, 3, H, W) images in gray levels."""

    def __init__(self, model: torch.nn.Module, *, categories: Sequence[str] | None = None, device: str = "cpu") -> None:
        for attr in ("transform", "backbone", "rpn", "roi_heads"):
            if not hasattr(model, attr):
                raise MethodUnavailable(f"the detector has no {attr!r}: only torchvision R-CNN style detectors are supported")
        self.model = model.eval().to(device)
        for prm in self.model.parameters():
            prm.requires_grad_(False)
        self.device = torch.device(device)
        self.categories = list(categories) if categories else None

    def class_id(self, name: str | int) -> int:
        if isinstance(name, int) or str(name).isdigit():
            return int(name)
        if self.categories and name in self.categories:
            return self.categories.index(name)
        raise UsageError(f"--param private_classes: unknown class {name!r}"
                         + (f" (known: {', '.join(c for c in self.categories if c and c != 'N/A')})" if self.categories else ""))

    @torch.no_grad()
    def detect(self, x255: torch.Tensor, tau: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Boxes (n, 4) in image pixels, labels (n,), scores (n,) with score >= tau."""
        out = self.model([x255[0].to(self.device) / 255.0])[0]
        keep = out["scores"] >= tau
        return out["boxes"][keep].cpu(), out["labels"][keep].cpu(), out["scores"][keep].cpu()

    def proposal_logits(self, x255: torch.Tensor, extra_boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """RoI-head class logits for the RPN proposals plus ``extra_boxes`` (image pixels).

        Returns (boxes in image pixels (m, 4), logits (m, n_classes)); differentiable in ``x255``.
        """
        m = self.model
        h, w = x255.shape[-2:]
        images, _ = m.transform([x255[0] / 255.0])
        feats = m.backbone(images.tensors)
        if isinstance(feats, torch.Tensor):
            from collections import OrderedDict

            feats = OrderedDict([("0", feats)])
        proposals, _ = m.rpn(images, feats)
        th, tw = images.image_sizes[0]
        scale = torch.tensor([tw / w, th / h, tw / w, th / h], device=x255.device)
        props = torch.cat([proposals[0].detach(), extra_boxes.to(x255.device) * scale])
        bf = m.roi_heads.box_roi_pool(feats, [props], images.image_sizes)
        logits, _ = m.roi_heads.box_predictor(m.roi_heads.box_head(bf))
        return props / scale, logits


def _match(dets_boxes: torch.Tensor, dets_labels: torch.Tensor, after_boxes: torch.Tensor, after_labels: torch.Tensor,
           iou: float = 0.5) -> list[bool]:
    """For each clean detection: is there a detection of the same class with IoU >= ``iou`` after protection?"""
    if dets_boxes.numel() == 0:
        return []
    ov = _iou(dets_boxes, after_boxes)
    found = []
    for j in range(dets_boxes.shape[0]):
        same = after_labels == dets_labels[j]
        found.append(bool(((ov[j] >= iou) & same).any()) if ov.shape[1] else False)
    return found


def hide_private(det: TorchvisionDetector, x: torch.Tensor, *, private: Collection[int], step: float = 0.25,
                 iterations: int = 12, tau: float = 0.5, mask_mode: str = "global", early_stop: bool = True,
                 iou: float = 0.5) -> dict[str, Any]:
    """Thesis Alg. 5 on one image ``x`` (1, 3, H, W) float in gray levels; see the module docstring."""
    if mask_mode not in MASK_MODES:
        raise UsageError(f"--param mask_mode must be one of {', '.join(MASK_MODES)}")
    if step <= 0 or iterations < 0:
        raise UsageError("--param step must be > 0 and iterations >= 0")
    t0 = time.perf_counter()
    private = {int(c) for c in private}
    boxes, labels, scores = det.detect(x, tau)
    is_priv = torch.tensor([int(c) in private for c in labels.tolist()], dtype=torch.bool)
    targets = torch.where(is_priv, torch.zeros_like(labels), labels)
    mask = torch.ones_like(x)
    if mask_mode == "private_boxes":
        mask = torch.zeros_like(x)
        H, W = x.shape[-2:]
        for b in boxes[is_priv]:
            bw, bh = float(b[2] - b[0]), float(b[3] - b[1])
            x0, y0 = int(max(0, b[0] - 0.1 * bw)), int(max(0, b[1] - 0.1 * bh))
            x1, y1 = int(min(W, b[2] + 0.1 * bw + 1)), int(min(H, b[3] + 0.1 * bh + 1))
            mask[..., y0:y1, x0:x1] = 1
    xp = x.clone()
    losses: list[float] = []
    used = 0
    if bool(is_priv.any()):
        for n in range(1, iterations + 1):
            xp.requires_grad_(True)
            props, logits = det.proposal_logits(xp, boxes)
            ov = _iou(props.detach().cpu(), boxes)
            best, arg = ov.max(1)
            t = torch.where(best >= iou, targets[arg], torch.zeros_like(arg)).to(logits.device)
            loss = F.cross_entropy(logits, t)
            g, = torch.autograd.grad(loss, xp)
            with torch.no_grad():
                xp = (xp - step * g.sign() * mask).clamp(0, 255)
            losses.append(float(loss.detach()))
            used = n
            if early_stop and n < iterations:
                b2, l2, _ = det.detect(xp.round(), tau)
                found = _match(boxes, labels, b2, l2, iou)
                if all(not f for f, p in zip(found, is_priv.tolist()) if p) and all(f for f, p in zip(found, is_priv.tolist()) if not p):
                    break
    x_out = xp.detach().round().clamp(0, 255)
    b2, l2, s2 = det.detect(x_out, tau)
    found = _match(boxes, labels, b2, l2, iou)
    priv_found = [f for f, p in zip(found, is_priv.tolist()) if p]
    rest_found = [f for f, p in zip(found, is_priv.tolist()) if not p]
    hide = float(np.mean([not f for f in priv_found])) if priv_found else None
    keep = float(np.mean(rest_found)) if rest_found else None
    # confidence of private objects before/after: best same-class score overlapping each private box
    with torch.no_grad():
        out_all = det.model([x_out[0].to(det.device) / 255.0])[0]
    ov_all = _iou(boxes[is_priv], out_all["boxes"].cpu())
    conf_after = []
    for j, lab in enumerate(labels[is_priv].tolist()):
        sel = (ov_all[j] >= iou) & (out_all["labels"].cpu() == lab) if ov_all.shape[1] else torch.zeros(0, dtype=torch.bool)
        conf_after.append(float(out_all["scores"].cpu()[sel].max()) if bool(sel.any()) else 0.0)
    d = x_out - x
    return {
        "x_adv": x_out,
        "objects": [{"box": [round(float(v), 1) for v in b], "label": int(lab), "score": float(s), "private": bool(p),
                     "detected_after": bool(f)} for b, lab, s, p, f in zip(boxes, labels, scores, is_priv.tolist(), found)],
        "n_private": len(priv_found), "n_other": len(rest_found),
        "hide_ratio": hide, "keep_ratio": keep,
        "R": None if hide is None else hide + 0.5 * (keep if keep is not None else 1.0),
        "private_conf_before": [float(s) for s in scores[is_priv]], "private_conf_after": conf_after,
        "iterations": used, "loss_first": losses[0] if losses else None, "loss_last": losses[-1] if losses else None,
        "l2": float(d.norm()), "ald_inf": float(d.abs().max() / x.abs().max().clamp_min(1)), "linf": float(d.abs().max()),
        "seconds": time.perf_counter() - t0,
    }


# ----------------------------------------------------------------------------- loading


def load_detector(spec: str, *, device: str = "cpu", num_classes: int | None = None) -> TorchvisionDetector:
    """``spec``: ``torchvision:ARCH`` (weights fetched with ``anonymize fetch-weights ARCH-coco``) or
    ``ARCH:STATE_DICT`` (a torchvision detection architecture and a state-dict file)."""
    import torchvision.models.detection as tvd

    if ":" not in spec:
        raise UsageError(f"--param detector: {spec!r} must be torchvision:ARCH or ARCH:STATE_DICT "
                         "(TorchScript detectors hide the per-proposal logits this method needs)")
    arch, path = spec.split(":", 1)
    categories = None
    if arch == "torchvision":
        arch = path
        name = f"{arch}-coco"
        try:
            from ..weights import weights_path

            path = str(weights_path(name, purpose=f"ap detector target {arch}"))
        except WeightsMissing:
            raise
        except Exception as exc:  # not in the manifest
            raise WeightsMissing([name], purpose=f"ap detector target {arch} ({exc})") from exc
        categories = list(tvd.FasterRCNN_ResNet50_FPN_Weights.COCO_V1.meta["categories"])
    if not hasattr(tvd, arch):
        raise UsageError(f"--param detector: torchvision has no detection architecture {arch!r}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = state.get("model", state.get("state_dict", state)) if isinstance(state, dict) else state
        if num_classes is None:
            key = next((k for k in state if k.endswith("box_predictor.cls_score.weight")), None)
            num_classes = int(state[key].shape[0]) if key else 91
        model = getattr(tvd, arch)(weights=None, weights_backbone=None, num_classes=num_classes)
        model.load_state_dict(state)
    except Exception as exc:
        raise MethodUnavailable(f"--param detector: cannot load {path!r} into {arch}: {exc}") from exc
    if categories is not None and len(categories) != num_classes:
        categories = None
    return TorchvisionDetector(model, categories=categories, device=device)


def run_detector_target(items: Sequence[Any], ctx: Any, params: Any,
                        detector: TorchvisionDetector | None = None) -> list[Any]:
    """The ``target=detector`` branch of ``protect --method ap`` (whole image, one per item).

    ``params``: an :class:`~anonymize.methods.ap.APParams` with ``target="detector"`` (or a mapping parsed
    into one); ``detector`` an already loaded detector (else ``params.detector`` is loaded).
    """
    from ..metrics.quality import ssim
    from .ap import APParams
    from .base import MethodOutput
    from .params import as_params

    p = as_params(APParams, params, method="ap")
    if detector is None:
        detector = load_detector(str(p.detector), device=ctx.device)
    private = {detector.class_id(n.strip()) for n in p.private_classes if n.strip()}
    kw = {"step": p.step, "iterations": p.iterations, "tau": p.tau, "mask_mode": p.mask_mode,
          "early_stop": p.early_stop}
    outs = []
    for item in items:
        x = torch.from_numpy(np.ascontiguousarray(item.pixels)).permute(2, 0, 1)[None].float()
        r = hide_private(detector, x, private=private, **kw)
        px = r.pop("x_adv")[0].permute(1, 2, 0).to(torch.uint8).numpy()
        ok = r["hide_ratio"] == 1.0
        info = dict(r, target="detector", attacked_models=[str(p.detector or "custom")],
                    private_classes=sorted(private), ssim=ssim(item.pixels, px),
                    white_box_note="white-box: optimised against and measured on the same detector (as in the thesis)")
        if r["n_private"] == 0:
            info["reason"] = "no private object detected"
        elif not ok:
            info["reason"] = "some private objects are still detected"
        outs.append(MethodOutput(pixels=px, protected=ok, info=info))
    return outs

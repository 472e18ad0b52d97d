"""Adversarial perturbation of faces against an ensemble of face recognizers (``protect --method ap``).

Per image, one L-infinity bounded perturbation ``delta`` (gray levels) lives in
the original image's pixels, inside a soft elliptical mask over the faces. Each
attacked recognizer cuts its own chip through its entry of the shared alignment
table (:mod:`anonymize.faces.alignments`), so gradients flow from every
embedding back to the source pixels and ``evaluate`` sees the same chips.

The loss (per face) is :func:`ensemble_loss` over the *normalised* distances
``r_m = d_m / (threshold_m * (1 + margin))`` of the attacked models ``m``: a
softmin, so the model still closest to recognising the face sets the pace and
the attack never stops working on it while the others are already fooled.
Transfer to recognizers that were not attacked comes from the ensemble itself
and from the boosting options, each a parameter (see :data:`LEVELS`):

- ``momentum`` (MI-FGSM, Dong et al. 2018): signed steps of an accumulated,
  L1-normalised gradient;
- ``di_prob`` / ``di_scale`` (DI, Xie et al. 2019): each chip is randomly shrunk
  and zero-padded back to its size before the recognizer sees it;
- ``ti_sigma`` (TI, Dong et al. 2019): the gradient is smoothed with a Gaussian
  whose sigma is a fraction of the face width;
- ``feature_weight``: also push an intermediate feature map of every attacked
  network away from the original's (:data:`FEATURE_LAYERS`, relative L2);
- ``eot`` (expectation over JPEG, resize and alignment jitter).

The iterate is always the *uint8* image (straight-through rounding), passed
through the output's own encoding when that is lossy (the JPEG quality the
pipeline will write, BPDA), so the optimisation sees the written file.

Honest ``protected``: a face counts as protected only when ``evaluate``'s own
decision says so on the file the pipeline will write -- the image encoded with
the run's format and quality and decoded again, the face re-detected there with
the verifier (``evaluate``'s default detector) and every attacked model's chip
re-cut from that detection: distance >= threshold for every attacked model
(:class:`OutputCheck` runs :class:`~anonymize.evaluation.blackbox.FaceEvaluator`
itself). The optimisation keeps going until that view clears
``threshold * (1 + margin)``, or the steps run out.

Example:
    >>> cfg = FaceAttackConfig.from_params({"level": "low", "attack_models": "dlib-resnet"})
    >>> (cfg.epsilon, cfg.attack_models, cfg.momentum > 0)
    (4.0, ('dlib-resnet',), True)
    >>> r = torch.tensor([[0.5, 1.5]])   # model 0 still recognises the face, model 1 is fooled
    >>> w = torch.autograd.functional.jacobian(lambda x: ensemble_loss(x, 0.1), r)[0, 0]
    >>> bool(w[0] < -0.99 and w[1] > -1e-3)   # the gradient is the weakest model's
    True
"""
from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass, field, fields
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import UsageError, WeightsMissing
from ..types import DEFAULT_MASK_SCALE, Face, ImageItem
from .ap_classifier import clip_pass

# The ensemble `ap` attacks when not told otherwise: every registered recognizer that is
# differentiable, available offline and whose weights' licence allows commercial use (one per
# weight family). arcface-mbf (non-commercial) is never attacked unless named.
DEFAULT_ATTACK_MODELS: tuple[str, ...] = ("dlib-resnet", "facenet-casia", "facenet-ms1m", "lightcnn-v4")

LEVELS: dict[str, dict[str, Any]] = {
    # epsilon and step_size in gray levels; margin: the optimisation goal is distance >=
    # threshold * (1 + margin) under every attacked model (evaluate's view of the written file).
    # MI and DI on: both raised transfer to unattacked networks in the option study (README, `ap`);
    # TI and the feature loss lowered it there, so they are off.
    "low": {"epsilon": 4.0, "steps": 15, "step_size": 0.75, "margin": 0.3, "ssim_floor": 0.95,
            "momentum": 1.0, "di_prob": 0.5, "ti_sigma": 0.0, "feature_weight": 0.0, "ensemble_temperature": 0.1},
    "medium": {"epsilon": 8.0, "steps": 30, "step_size": 1.0, "margin": 0.5, "ssim_floor": 0.9,
               "momentum": 1.0, "di_prob": 0.5, "ti_sigma": 0.0, "feature_weight": 0.0, "ensemble_temperature": 0.1},
    "high": {"epsilon": 12.0, "steps": 50, "step_size": 1.5, "margin": 0.8, "ssim_floor": 0.85,
             "momentum": 1.0, "di_prob": 0.5, "ti_sigma": 0.0, "feature_weight": 0.0, "ensemble_temperature": 0.1},
}
EOT_KINDS = ("jpeg", "resize", "jitter")
PRECISIONS = ("fp32", "bf16")

# Intermediate layers for feature_weight (a dotted submodule path of the recognizer's model,
# mid-depth: features there are shared across networks more than embeddings are).
FEATURE_LAYERS: dict[str, str] = {
    "dlib-resnet": "units.6",
    "facenet-casia": "repeat_1",
    "facenet-ms1m": "repeat_1",
    "facenet-vggface2": "repeat_1",
    "lightcnn-v4": "transitions.1",
    "arcface-mbf": "stage4",
}

# The optimised window covers every face's chip footprint and mask box plus WINDOW_CONTEXT pixels on
# each side (the warp's bilinear samples at a footprint's edge read the pixel beyond it; the rest is
# slack); its end gets one more pixel because slice ends are exclusive. Its origin is snapped down to
# a multiple of JPEG_GRID, the 16 px MCU of 4:2:0 JPEG, so a JPEG round trip of the window quantises
# the same blocks as a JPEG of the whole image.
WINDOW_CONTEXT = 4
JPEG_GRID = 16
# When the check of the written file falls short for a face, its required distance is multiplied by
# NEED_GROWTH and the optimisation goes on (overshooting a little beats oscillating at the threshold).
NEED_GROWTH = 1.08
# Perturbation scales tried, largest first, when the face-region SSIM is below ssim_floor.
SHRINK_LADDER = (0.9, 0.8, 0.7, 0.6, 0.5)
WHITE_BOX_NOTE = (
    "white-box: the perturbation was optimised against {models}; distances under these models (and "
    "every recognizer sharing their weights: {family}) overstate protection against other recognizers. "
    "Judge transfer with `anonymize evaluate` on the held-out models ({held_out})."
)


class AttackWarning(UserWarning):
    """``ap`` runs with less than its default ensemble (missing weights): weaker black-box protection."""


# ----------------------------------------------------------------------------- which models


@dataclass(frozen=True)
class AttackSet:
    """The recognizers an ``ap`` run attacks, as resolved from ``attack_models``.

    ``mode``: ``"auto"`` (the default ensemble, those whose weights are present),
    ``"default"`` (all of it, or exit 2) or ``"explicit"`` (the names given).
    ``missing``: members of the default ensemble left out for lack of weights.
    """

    models: tuple[str, ...]
    missing: tuple[str, ...] = ()
    mode: str = "explicit"

    @property
    def held_out(self) -> list[str]:
        """Registered evaluation recognizers of weight families that are not attacked."""
        from ..faces.recognize import RECOGNIZERS, family_of

        fams = {family_of(m) for m in self.models}
        return [s.name for s in RECOGNIZERS if s.eval_default and s.family not in fams]

    def warning(self) -> str | None:
        """The loud note when the default ensemble is incomplete (None when it is not)."""
        if not self.missing:
            return None
        return (f"ap: attacking {', '.join(self.models)} only; {', '.join(self.missing)} of the default ensemble "
                f"{'is' if len(self.missing) == 1 else 'are'} missing, so protection against recognizers that were "
                "not attacked is much weaker (README, `ap`: a dlib-only attack leaves most faces recognisable to the "
                f"other networks). Run: anonymize fetch-weights {' '.join(self.missing)} (or pass --param "
                "attack_models=default to refuse running without them).")


def weights_present(name: str) -> bool:
    """Whether recognizer ``name`` can be built offline (its weights are in the cache or bundled).

    A present but corrupt file raises (``WeightsCorrupt``, naming ``fetch-weights --force``).
    """
    from ..faces.recognize import RECOGNIZERS

    spec = RECOGNIZERS.get(name)
    if not spec.weights:
        return True
    try:
        from ..weights import weights_path
    except ImportError:  # pragma: no cover - the weights registry is part of the package
        return False
    try:
        for w in spec.weights:
            weights_path(w)
    except WeightsMissing:
        return False
    return True


def resolve_attack_models(requested: Sequence[str]) -> AttackSet:
    """``attack_models`` -> :class:`AttackSet`.

    ``auto``: :data:`DEFAULT_ATTACK_MODELS` whose weights are present (dlib-resnet always is);
    ``default``: all of them (WeightsMissing, exit 2, naming the fetch command, otherwise);
    names: exactly those (unknown, non-differentiable or absent: exit 2).

    Example:
        >>> resolve_attack_models(["dlib-resnet"])
        AttackSet(models=('dlib-resnet',), missing=(), mode='explicit')
        >>> resolve_attack_models(["auto"]).models[0]
        'dlib-resnet'
    """
    from ..faces.recognize import RECOGNIZERS

    req = tuple(str(n).strip() for n in requested if str(n).strip())
    if not req:
        raise UsageError("--param attack_models needs at least one recognizer, or auto / default")
    if req in (("auto",), ("default",)):
        present = [n for n in DEFAULT_ATTACK_MODELS if weights_present(n)]
        missing = tuple(n for n in DEFAULT_ATTACK_MODELS if n not in present)
        if req[0] == "default" and missing:
            raise WeightsMissing(list(missing), purpose="ap's default ensemble (attack_models=default)")
        return AttackSet(tuple(present), missing, req[0])
    if {"auto", "default"} & set(req):
        raise UsageError("--param attack_models: auto and default stand alone; otherwise name the recognizers")
    if len(set(req)) != len(req):
        raise UsageError(f"--param attack_models names a recognizer twice: {','.join(req)}")
    absent = []
    for n in req:
        spec = RECOGNIZERS.get(n)  # UsageError naming the registered ones
        if not spec.differentiable:
            raise UsageError(f"ap: recognizer {n!r} is not differentiable and cannot be attacked; "
                             "use dlib-resnet (its torch port) instead")
        if not weights_present(n):
            absent.extend(spec.weights)
    if absent:
        raise WeightsMissing(absent, purpose="the recognizers named in attack_models")
    return AttackSet(req, (), "explicit")


# ----------------------------------------------------------------------------- configuration


@dataclass
class FaceAttackConfig:
    """Settings of the face-identity attack (see :data:`LEVELS` for the presets)."""

    level: str = "medium"
    epsilon: float = 8.0
    steps: int = 20
    step_size: float = 1.0
    margin: float = 0.5
    attack_models: tuple[str, ...] = ("dlib-resnet",)
    attack_request: tuple[str, ...] = ("auto",)
    attack_missing: tuple[str, ...] = ()
    target_identity: str | None = None
    eot: tuple[str, ...] = ()
    jpeg_qualities: tuple[int, ...] = (75, 85, 95)
    ssim_floor: float | None = 0.9
    random_start: bool = True
    mask_scale: float | None = None  # None: the run's --mask-scale
    mask_feather: float = 0.15
    max_faces_per_batch: int = 16
    check_every: int = 5
    momentum: float = 1.0
    di_prob: float = 0.5
    di_scale: float = 0.1
    ti_sigma: float = 0.0
    feature_weight: float = 0.0
    ensemble_temperature: float = 0.1
    precision: str = "fp32"
    verify_detector: str | None = None  # None: evaluate's default detector
    output_codec: bool = True

    @classmethod
    def from_params(cls, params: Any) -> "FaceAttackConfig":
        """The level's preset, then every field of ``params`` (an :class:`~anonymize.methods.ap.APParams`,
        or a mapping parsed into one) that is set and shares a name with this config; ``attack_models``
        resolved (:func:`resolve_attack_models`)."""
        from .ap import APParams
        from .params import as_params

        p = as_params(APParams, params, method="ap")
        cfg = cls(level=p.level, **LEVELS[p.level])
        for f in fields(cls):
            v = getattr(p, f.name, None)
            if v is not None and f.name not in ("level", "attack_models"):
                setattr(cfg, f.name, v)
        if cfg.ssim_floor == 0:  # ssim_floor=none/off/0: no quality floor
            cfg.ssim_floor = None
        aset = resolve_attack_models(p.attack_models)
        cfg.attack_models, cfg.attack_request, cfg.attack_missing = aset.models, tuple(p.attack_models), aset.missing
        return cfg

    @property
    def attack_set(self) -> AttackSet:
        mode = self.attack_request[0] if self.attack_request in (("auto",), ("default",)) else "explicit"
        return AttackSet(tuple(self.attack_models), tuple(self.attack_missing), mode)

    @property
    def budget(self) -> int:
        """The integer L-infinity bound in gray levels actually enforced on the uint8 output."""
        return int(math.floor(self.epsilon + 1e-9))


# ----------------------------------------------------------------------------- losses and boosting


def ensemble_loss(ratios: torch.Tensor, temperature: float) -> torch.Tensor:
    """Per-face loss (to minimise) from normalised distances ``ratios`` (F, M): a softmin.

    ``ratios[f, m] = d_m / required_m``; ``T * logsumexp(-r / T)`` is a smooth ``-min_m r``:
    its gradient goes to the model with the smallest ratio -- the one that still
    recognises the face -- and spreads evenly as ``T`` grows (``T -> inf``: the mean).
    ``temperature <= 0``: the hard minimum.

    Example:
        >>> round(float(ensemble_loss(torch.tensor([[0.2, 2.0]]), 0.05)[0]), 3)
        -0.2
    """
    if ratios.ndim != 2:
        raise ValueError(f"ratios must be (faces, models), got {tuple(ratios.shape)}")
    if temperature <= 0:
        return -ratios.min(dim=1).values
    return temperature * torch.logsumexp(-ratios / temperature, dim=1)


def diverse_input(chips: torch.Tensor, gen: torch.Generator, prob: float, scale: float) -> torch.Tensor:
    """DI: each chip, with probability ``prob``, shrunk to ``s`` in ``[(1 - scale) * size, size]``
    and zero-padded back to ``size`` at a random offset (differentiable).

    Example:
        >>> x = torch.ones(2, 3, 20, 20)
        >>> y = diverse_input(x, torch.Generator().manual_seed(0), 1.0, 0.5)
        >>> y.shape, bool((y == 0).any())
        (torch.Size([2, 3, 20, 20]), True)
    """
    if prob <= 0 or scale <= 0:
        return chips
    n = chips.shape[-1]
    out = []
    for k in range(chips.shape[0]):
        c = chips[k : k + 1]
        if float(torch.rand(1, generator=gen)) < prob:
            lo = max(4, int(round(n * (1 - scale))))
            s = int(torch.randint(lo, n + 1, (1,), generator=gen))
            if s < n:
                c = F.interpolate(c, size=(s, s), mode="bilinear", align_corners=False)
                left = int(torch.randint(0, n - s + 1, (1,), generator=gen))
                top = int(torch.randint(0, n - s + 1, (1,), generator=gen))
                c = F.pad(c, (left, n - s - left, top, n - s - top))
        out.append(c)
    return torch.cat(out)


def gaussian_smooth(g: torch.Tensor, sigma: float) -> torch.Tensor:
    """TI: a (N, C, H, W) gradient smoothed per channel by a Gaussian of ``sigma`` pixels.

    Example:
        >>> g = torch.zeros(1, 1, 9, 9); g[0, 0, 4, 4] = 1
        >>> s = gaussian_smooth(g, 1.0)
        >>> round(float(s.sum()), 4), bool(s[0, 0, 4, 4] < 1)
        (1.0, True)
    """
    if sigma <= 0.3:
        return g
    r = max(1, int(math.ceil(3 * sigma)))
    r = min(r, (min(g.shape[-2:]) - 1) // 2) or 1
    t = torch.arange(-r, r + 1, dtype=g.dtype, device=g.device)
    k1 = torch.exp(-(t**2) / (2 * sigma**2))
    k1 = k1 / k1.sum()
    c = g.shape[1]
    x = F.pad(g, (r, r, r, r), mode="reflect" if min(g.shape[-2:]) > r else "replicate")
    x = F.conv2d(x, k1.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(x, k1.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


# ----------------------------------------------------------------------------- geometry


def chip_matrix(alignment: str, image: np.ndarray, face: Face) -> np.ndarray:
    """Image -> chip matrix of ``face`` for a recognizer's alignment (the shared table)."""
    from ..faces.alignments import matrices

    return matrices(alignment, image, [face])[0]


def _shift(M: np.ndarray, x0: int, y0: int) -> np.ndarray:
    """The same chip transform for a window whose origin is image pixel (x0, y0)."""
    out = M.copy()
    out[:, 2] = out[:, 2] + out[:, 0] * x0 + out[:, 1] * y0
    return out


# ----------------------------------------------------------------------------- encodings


def jpeg_roundtrip(rgb: np.ndarray, quality: int) -> np.ndarray:
    """Real JPEG encode + decode (OpenCV, 4:2:0) of a uint8 RGB array."""
    import cv2

    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(rgb[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:  # pragma: no cover
        raise RuntimeError("JPEG encoding failed")
    return cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1].copy()


def _pil_roundtrip(rgb: np.ndarray, fmt: str, quality: int) -> np.ndarray:
    """Encode + decode as :func:`anonymize.io.encode.encode_image` writes ``fmt`` at ``quality``."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    im = Image.fromarray(np.ascontiguousarray(rgb))
    if fmt == "JPEG":
        im.save(buf, "JPEG", quality=int(quality), subsampling=0 if quality >= 90 else 2)
    else:
        im.save(buf, "WEBP", quality=int(quality), method=4)
    buf.seek(0)
    return np.array(Image.open(buf).convert("RGB"))


def _codec_bpda(x: torch.Tensor, fmt: str, quality: int) -> torch.Tensor:
    """A lossy round trip in the forward pass, identity in the backward pass (BPDA)."""
    arr = x.detach()[0].clamp(0, 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    y = torch.from_numpy(_pil_roundtrip(arr, fmt, quality)).permute(2, 0, 1)[None].to(x)
    return x + (y - x).detach()


def _jpeg_bpda(x: torch.Tensor, quality: int) -> torch.Tensor:
    """JPEG in the forward pass, identity in the backward pass (BPDA)."""
    arr = x.detach()[0].clamp(0, 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    y = torch.from_numpy(jpeg_roundtrip(arr, quality)).permute(2, 0, 1)[None].to(x)
    return x + (y - x).detach()


def _grey(x: torch.Tensor) -> torch.Tensor:
    """PIL's ``convert("L")`` (ITU-R 601-2 luma, rounded) on (1, 3, h, w) gray levels, as RGB;
    straight-through rounding."""
    y = x[:, 0:1] * 0.299 + x[:, 1:2] * 0.587 + x[:, 2:3] * 0.114
    y = y + (y.round() - y).detach()
    return y.expand(-1, 3, -1, -1)


def _resize_roundtrip(x: torch.Tensor, scale: float) -> torch.Tensor:
    h, w = x.shape[-2:]
    small = F.interpolate(x, size=(max(8, round(h * scale)), max(8, round(w * scale))), mode="bilinear",
                          align_corners=False, antialias=True)
    return F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)


def _jitter(M: torch.Tensor, gen: torch.Generator, size: int = 150, px: float = 1.5, scale: float = 0.03,
            angle: float = 0.03) -> torch.Tensor:
    """Compose (K, 2, 3) chip transforms with a random small similarity about the chip centre
    (the alignment noise of landmarks re-fitted on the protected image)."""
    k = M.shape[0]
    r = torch.rand(k, 4, generator=gen, dtype=torch.float64).to(M.dtype) * 2 - 1
    s, a = 1 + scale * r[:, 0], angle * r[:, 1]
    A = torch.stack([torch.stack([s * torch.cos(a), -s * torch.sin(a)], -1),
                     torch.stack([s * torch.sin(a), s * torch.cos(a)], -1)], -2)
    c = torch.full((k, 2, 1), (size - 1) / 2.0, dtype=M.dtype)
    t = c - A @ c + px * r[:, 2:].unsqueeze(-1)
    return torch.cat([A @ M[:, :, :2], A @ M[:, :, 2:] + t], -1)


@dataclass(frozen=True)
class OutputEncoding:
    """How the pipeline will write an image: format, quality, grey. ``lossy`` formats are
    optimised through (BPDA) and always verified on the decoded file."""

    fmt: str
    quality: int | None
    grey: bool

    @property
    def lossy(self) -> bool:
        return self.fmt in ("JPEG", "WEBP")

    @classmethod
    def of(cls, item: ImageItem, fmt: str | None, quality: int | None) -> "OutputEncoding":
        from ..io.encode import output_format

        out = output_format(item, fmt)
        q = None
        if out == "JPEG":
            q = int(quality or item.jpeg_quality or 92)
        elif out == "WEBP":
            q = int(quality or 95)
        return cls(out, q, item.mode in ("L", "LA", "L;16"))


def encode_decode(item: ImageItem, pixels: np.ndarray, fmt: str | None, quality: int | None) -> np.ndarray:
    """The pixels of the file the pipeline writes for ``pixels`` (same encoder, same options), decoded
    the way ``evaluate`` reads it."""
    from ..io.decode import decode_bytes
    from ..io.encode import EXTENSIONS, encode_image, output_format

    data, ext, _ = encode_image(item, pixels, fmt=fmt, quality=quality)
    name = item.relative.with_suffix(EXTENSIONS.get(output_format(item, fmt), ext)).name
    return decode_bytes(data, source=item.source.with_name(name), relative=item.relative.with_name(name)).pixels


# ----------------------------------------------------------------------------- verification


def _iou(a: Sequence[float], b: Sequence[float]) -> float:
    from ..evaluation.blackbox import iou

    return iou(tuple(a), tuple(b))


class OutputCheck:
    """``evaluate``'s decision on the written file, for the attacked models.

    Runs :meth:`FaceEvaluator.evaluate_pair <anonymize.evaluation.blackbox.FaceEvaluator.evaluate_pair>`
    itself (detector: ``evaluate``'s default unless told), with the attacked recognizers, so the
    method's ``protected`` and ``evaluate``'s SPR come from the same code. Detections and
    descriptors of an original are cached while its image is being protected.
    """

    def __init__(self, models: dict[str, Any], detector: str | None, device: str) -> None:
        from ..evaluation.blackbox import FaceEvaluator
        from ..faces.detect import get_detector, resolve_detector

        name = resolve_detector(detector)
        fe = _caching_evaluator_class()(detector=name, recognizers=tuple(models), device=device, landmarks=False)
        fe._det = _CachingDetector(get_detector(name, device=device))
        fe._recs = dict(models)
        assert isinstance(fe, FaceEvaluator)
        self.fe = fe
        self.detector = name

    def remember(self, original: np.ndarray) -> None:
        """Cache the detections and descriptors of ``original`` until :meth:`forget`."""
        self.fe.remember(original)
        self.fe._det.remember(original)  # type: ignore[union-attr]

    def forget(self, original: np.ndarray) -> None:
        self.fe.forget(original)
        self.fe._det.forget(original)  # type: ignore[union-attr]

    def check(self, item: ImageItem, variants: dict[str, np.ndarray], faces: Sequence[Face]) -> list[dict[str, Any]]:
        """Per face of ``faces`` (the method's): per variant the attacked models' distances, whether the
        verifier re-detected it, and evaluate's protected decision (every attacked model)."""
        out: list[dict[str, Any]] = [{"variants": {}} for _ in faces]
        names = list(self.fe._recs)
        for vname, px in variants.items():
            prot = ImageItem(item.source, item.relative, px)
            res = self.fe.evaluate_pair(item, prot)
            recs = res["faces"]
            used: set[int] = set()
            for k, f in enumerate(faces):
                best, best_iou = None, 0.0
                for j, r in enumerate(recs):
                    v = _iou(f.box, r["box"])
                    if j not in used and v > best_iou:
                        best, best_iou = j, v
                if best is None or best_iou < 0.3:
                    out[k]["variants"][vname] = {"seen_on_original": False, "redetected": False,
                                                 "distance": {}, "protected": False}
                    continue
                used.add(best)
                r = recs[best]
                ident = r["identity"]
                out[k]["variants"][vname] = {
                    "seen_on_original": True,
                    "redetected": bool(r["detected_in_protected"]),
                    "distance": {n: round(float(ident[n]["distance"]), 4) for n in names},
                    "protected": all(bool(ident[n]["protected"]) for n in names),
                }
        for o in out:
            o["protected"] = bool(o["variants"]) and all(v["protected"] for v in o["variants"].values())
        return out


class _CachingDetector:
    """A detector that remembers its faces for arrays registered as originals (by identity)."""

    def __init__(self, det: Any) -> None:
        self.det = det
        self.cache: dict[int, tuple[np.ndarray, list[Face]]] = {}

    def forget(self, image: np.ndarray) -> None:
        self.cache.pop(id(image), None)

    def __call__(self, images: list[np.ndarray]) -> list[list[Face]]:
        out: list[list[Face] | None] = [None] * len(images)
        todo = []
        for i, im in enumerate(images):
            hit = self.cache.get(id(im))
            if hit is not None and hit[0] is im:
                out[i] = hit[1]
            else:
                todo.append(i)
        if todo:
            found = self.det([images[i] for i in todo])
            for i, faces in zip(todo, found):
                out[i] = list(faces)
        return out  # type: ignore[return-value]

    def remember(self, image: np.ndarray) -> None:
        self.cache[id(image)] = (image, self([image])[0])


@functools.lru_cache(maxsize=None)
def _caching_evaluator_class() -> type:
    """A :class:`~anonymize.evaluation.blackbox.FaceEvaluator` that caches the descriptors of
    registered originals (built lazily: importing evaluation is not needed to register ``ap``)."""
    from ..evaluation.blackbox import FaceEvaluator

    class _Evaluator(FaceEvaluator):  # type: ignore[misc, valid-type]
        def _slots(self) -> dict[int, tuple[np.ndarray, dict[tuple, dict[str, np.ndarray]]]]:
            if not hasattr(self, "_keep"):
                self._keep: dict[int, tuple[np.ndarray, dict[tuple, dict[str, np.ndarray]]]] = {}
            return self._keep

        def remember(self, image: np.ndarray) -> None:
            self._slots()[id(image)] = (image, {})

        def forget(self, image: np.ndarray) -> None:
            self._slots().pop(id(image), None)

        def _descriptors(self, image: np.ndarray, faces: list[Face]) -> dict[str, np.ndarray]:
            slot = self._slots().get(id(image))
            if slot is None or slot[0] is not image:
                return super()._descriptors(image, faces)
            key = tuple((tuple(f.box), None if f.landmarks5 is None else tuple(np.ravel(f.landmarks5))) for f in faces)
            if key not in slot[1]:
                slot[1][key] = super()._descriptors(image, faces)
            return slot[1][key]

    return _Evaluator


# ----------------------------------------------------------------------------- attack state


@dataclass
class _FaceJob:
    item_index: int
    face_index: int
    face: Face
    M: dict[str, np.ndarray] = field(default_factory=dict)  # per model, window coordinates
    d0: dict[str, torch.Tensor] = field(default_factory=dict)
    f0: dict[str, torch.Tensor] = field(default_factory=dict)  # intermediate features (feature_weight)
    need: float = 1.0  # extra factor on threshold*(1+margin), raised when the check of the file falls short
    done: bool = False
    steps: int = 0
    error: str | None = None


@dataclass
class _ImageJob:
    index: int
    item: ImageItem
    window: tuple[int, int, int, int] = (0, 0, 0, 0)
    x0: torch.Tensor | None = None  # (1, 3, h, w) float gray levels, window of the original
    mask: torch.Tensor | None = None  # (1, 1, h, w)
    delta: torch.Tensor | None = None
    momentum: torch.Tensor | None = None
    ti_sigma_px: float = 0.0
    faces: list[_FaceJob] = field(default_factory=list)
    verified: bool = False
    report: list[dict[str, Any]] | None = None
    gen: torch.Generator | None = None
    enc: OutputEncoding | None = None
    checks: int = 0


class FaceAttack:
    """Runs the face-identity attack on a batch of images (see the module docstring)."""

    def __init__(self, cfg: FaceAttackConfig, device: str = "cpu") -> None:
        from ..faces.recognize import get_recognizer

        self.cfg = cfg
        self.device = torch.device(device)
        self.models = {name: get_recognizer(name, device) for name in cfg.attack_models}
        for name, rec in self.models.items():
            if not getattr(rec, "differentiable", False):
                raise UsageError(f"ap: recognizer {name!r} is not differentiable and cannot be attacked; "
                                 "use dlib-resnet (its torch port) instead")
        self._features: dict[str, torch.Tensor] = {}
        self._hooked: dict[str, bool] = {}
        if cfg.feature_weight > 0:
            self._hook_features()
        self.target: dict[str, torch.Tensor] | None = None
        if cfg.target_identity:
            self.target = self._target_descriptors(cfg.target_identity)
        self._check: OutputCheck | None = None
        self.output_format: str | None = None
        self.output_quality: int | None = None

    @property
    def checker(self) -> OutputCheck:
        if self._check is None:
            self._check = OutputCheck(self.models, self.cfg.verify_detector, str(self.device))
        return self._check

    # ------------------------------------------------------------------ helpers
    def _hook_features(self) -> None:
        for name, rec in self.models.items():
            path = FEATURE_LAYERS.get(name)
            model = getattr(rec, "model", None)
            if path is None or model is None:
                continue
            try:
                mod = model.get_submodule(path)
            except AttributeError:
                continue

            def hook(_m: Any, _i: Any, out: torch.Tensor, name: str = name) -> None:
                self._features[name] = out

            mod.register_forward_hook(hook)
            self._hooked[name] = True

    def _target_descriptors(self, path: str) -> dict[str, torch.Tensor]:
        from PIL import Image

        from ..faces.detect import get_detector

        try:
            img = np.asarray(Image.open(path).convert("RGB"))
        except Exception as exc:
            raise UsageError(f"--param target_identity: cannot read image {path!r}: {exc}") from None
        faces = get_detector(None, device=str(self.device))([img])[0]
        if not faces:
            raise UsageError(f"--param target_identity: no face found in {path!r}")
        face = max(faces, key=lambda f: f.width * f.height)
        x = torch.from_numpy(img).permute(2, 0, 1)[None].float().to(self.device) / 255.0
        out = {}
        for name, rec in self.models.items():
            M = torch.from_numpy(chip_matrix(rec.alignment, img, face)[None])
            with torch.no_grad():
                out[name] = rec.descriptor(self._warp(x, M, rec.alignment))[0]
        return out

    def _warp(self, x01: torch.Tensor, M: torch.Tensor, alignment: str) -> torch.Tensor:
        """Chips as the recognizer's reference extractor cuts them, differentiable in the image."""
        from ..faces.alignments import warp

        return warp(alignment, x01, M.to(self.device))

    def _descriptor(self, rec: Any, chips: torch.Tensor, fast: bool) -> torch.Tensor:
        if fast and self.cfg.precision == "bf16":
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return rec.descriptor(chips).float()
        return rec.descriptor(chips)

    def _prepare(self, idx: int, item: ImageItem, gen: torch.Generator) -> _ImageJob:
        from ..faces.align import soft_face_mask
        from ..faces.alignments import support

        job = _ImageJob(index=idx, item=item, gen=gen)
        job.enc = OutputEncoding.of(item, self.output_format, self.output_quality)
        img = item.pixels
        H, W = img.shape[:2]
        boxes = []
        for fi, face in enumerate(item.faces):
            fj = _FaceJob(idx, fi, face)
            try:
                for name, rec in self.models.items():
                    fj.M[name] = chip_matrix(rec.alignment, img, face)
                    boxes.append(support(rec.alignment, fj.M[name], H, W))  # all pixels the chip reads
            except Exception as exc:  # landmark fitting failed
                fj.error = f"could not align the face for {name}: {exc}"
            job.faces.append(fj)
        scale = self.cfg.mask_scale
        for f in item.faces:
            bw, bh = f.width * (scale or DEFAULT_MASK_SCALE), f.height * (scale or DEFAULT_MASK_SCALE)
            cx, cy = (f.box[0] + f.box[2]) / 2, (f.box[1] + f.box[3]) / 2
            boxes.append((cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2))
        if not boxes:
            return job
        x0 = max(0, int(math.floor(min(b[0] for b in boxes))) - WINDOW_CONTEXT)
        y0 = max(0, int(math.floor(min(b[1] for b in boxes))) - WINDOW_CONTEXT)
        x0, y0 = x0 - x0 % JPEG_GRID, y0 - y0 % JPEG_GRID  # keep the JPEG block grid of the full image
        x1 = min(W, int(math.ceil(max(b[2] for b in boxes))) + WINDOW_CONTEXT + 1)
        y1 = min(H, int(math.ceil(max(b[3] for b in boxes))) + WINDOW_CONTEXT + 1)
        job.window = (x0, y0, x1, y1)
        win = img[y0:y1, x0:x1]
        job.x0 = torch.from_numpy(np.array(win, dtype=np.float32)).permute(2, 0, 1)[None].to(self.device)
        shifted = [Face((f.box[0] - x0, f.box[1] - y0, f.box[2] - x0, f.box[3] - y0), f.score, f.detector) for f in item.faces]
        job.mask = soft_face_mask(y1 - y0, x1 - x0, shifted, kind="ellipse", scale=scale or DEFAULT_MASK_SCALE,
                                  feather=self.cfg.mask_feather, device=self.device)[None]
        eps = float(self.cfg.budget)
        if self.cfg.random_start:
            job.delta = (torch.rand(job.x0.shape, generator=gen, dtype=torch.float32) * 2 - 1).mul(eps / 2).to(self.device)
        else:
            job.delta = torch.zeros_like(job.x0)
        job.momentum = torch.zeros_like(job.x0)
        widths = [f.width for f in item.faces if f.width > 0]
        job.ti_sigma_px = float(self.cfg.ti_sigma * np.mean(widths)) if widths else 0.0
        for fj in job.faces:
            if fj.error:
                continue
            fj.M = {k: _shift(v, x0, y0) for k, v in fj.M.items()}
        x01 = job.x0 / 255.0  # distances are from the original, as evaluate measures them
        for fj in job.faces:
            if fj.error:
                continue
            for name, rec in self.models.items():
                with torch.no_grad():
                    self._features.pop(name, None)
                    fj.d0[name] = rec.descriptor(self._warp(x01, torch.from_numpy(fj.M[name][None]), rec.alignment))[0]
                    if name in self._features:
                        fj.f0[name] = self._features.pop(name)[0].detach()
        return job

    def _image(self, job: _ImageJob, shrink: float = 1.0) -> torch.Tensor:
        """The current quantised window (1, 3, h, w) in gray levels, straight-through in delta."""
        assert job.x0 is not None and job.mask is not None and job.delta is not None
        e = float(self.cfg.budget)
        pert = job.mask * job.delta * shrink
        q = pert + (pert.round().clamp(-e, e) - pert).detach()
        return clip_pass(job.x0 + q, 0.0, 255.0)  # gradient passes at 0 and 255

    def _encoded(self, job: _ImageJob, x: torch.Tensor) -> torch.Tensor:
        """``x`` (gray levels) as the output file will store it: grey when the output is grey, through
        the lossy codec at the output's quality (BPDA) when it is lossy."""
        enc = job.enc
        if enc is None or not self.cfg.output_codec:
            return x
        if enc.grey:
            x = _grey(x)
        if enc.lossy and enc.quality is not None:
            x = _codec_bpda(x, enc.fmt, enc.quality)
        return x

    def _final_pixels(self, job: _ImageJob, shrink: float = 1.0) -> np.ndarray:
        out = job.item.pixels.copy()
        if job.x0 is None:
            return out
        e = float(self.cfg.budget)
        with torch.no_grad():
            pert = (job.mask * job.delta * shrink).round().clamp(-e, e)
            win = (job.x0 + pert).clamp(0, 255).round().to(torch.uint8)[0].permute(1, 2, 0).cpu().numpy()
        x0, y0, x1, y1 = job.window
        out[y0:y1, x0:x1] = win
        return out

    def _required(self, name: str, fj: _FaceJob) -> float:
        return self.models[name].threshold * (1.0 + self.cfg.margin) * fj.need

    # ------------------------------------------------------------------ verification
    def verify(self, job: _ImageJob, pixels: np.ndarray) -> list[dict[str, Any]]:
        """Evaluate's decision per face on the file written for ``pixels`` (and after re-encoding at
        every ``jpeg_qualities`` when EOT has JPEG)."""
        job.checks += 1
        written = encode_decode(job.item, pixels, self.output_format, self.output_quality)
        variants = {"output": written}
        if "jpeg" in self.cfg.eot:
            for q in self.cfg.jpeg_qualities:
                variants[f"jpeg{q}"] = jpeg_roundtrip(written, q)
        faces = [fj.face for fj in job.faces]
        res = self.checker.check(job.item, variants, faces)
        for fj, r in zip(job.faces, res):
            if fj.error:
                r["protected"] = False
        return res

    def _goal_reached(self, r: dict[str, Any]) -> bool:
        """The optimisation's goal on the checked file: every attacked model past threshold*(1+margin)."""
        if not r.get("protected"):
            return False
        for v in r["variants"].values():
            for name, d in v["distance"].items():
                if d < self.models[name].threshold * (1.0 + self.cfg.margin):
                    return False
        return True

    def _shortfall(self, r: dict[str, Any]) -> float:
        """How much further the face must go: max over models/variants of goal / distance (>= 1)."""
        worst = 1.0
        for v in r["variants"].values():
            for name, d in v["distance"].items():
                goal = self.models[name].threshold * (1.0 + self.cfg.margin)
                worst = max(worst, goal / max(d, 1e-6))
        return worst

    # ------------------------------------------------------------------ main loop
    def run(self, items: Sequence[ImageItem], gens: Sequence[torch.Generator], output_format: str | None = None,
            output_quality: int | None = None) -> list[tuple[np.ndarray, bool, dict[str, Any]]]:
        t_start = time.perf_counter()
        self.output_format, self.output_quality = output_format, output_quality
        jobs = [self._prepare(i, it, g) for i, (it, g) in enumerate(zip(items, gens))]
        active_jobs = [j for j in jobs if j.faces and j.x0 is not None and any(not f.error for f in j.faces)]
        for j in active_jobs:
            self.checker.remember(j.item.pixels)
        try:
            chunks: list[list[_ImageJob]] = []
            cur: list[_ImageJob] = []
            n = 0
            for j in active_jobs:
                k = sum(1 for f in j.faces if not f.error)
                if cur and n + k > self.cfg.max_faces_per_batch:
                    chunks.append(cur)
                    cur, n = [], 0
                cur.append(j)
                n += k
            if cur:
                chunks.append(cur)
            for chunk in chunks:
                self._optimise(chunk)
            elapsed = time.perf_counter() - t_start
            n_faces = sum(len(j.faces) for j in jobs)
            return [self._result(j, elapsed / max(n_faces, 1)) for j in jobs]
        finally:
            if self._check is not None:
                for j in active_jobs:
                    self._check.forget(j.item.pixels)

    def _noisy(self) -> bool:
        c = self.cfg
        return bool(c.eot) or (c.di_prob > 0 and c.di_scale > 0) or c.precision == "bf16"

    def _optimise(self, jobs: list[_ImageJob]) -> None:
        cfg = self.cfg
        eot = cfg.eot
        eps = float(cfg.budget)
        noisy = self._noisy()
        for step in range(1, cfg.steps + 1):
            live = [j for j in jobs if not j.verified]
            if not live:
                return
            for j in live:
                j.delta.requires_grad_(True)
            images = {}
            kinds = {}
            for j in live:
                x = self._encoded(j, self._image(j))
                if eot:
                    kind = eot[int(torch.randint(len(eot), (1,), generator=j.gen))]
                    if kind == "jpeg":
                        q = cfg.jpeg_qualities[int(torch.randint(len(cfg.jpeg_qualities), (1,), generator=j.gen))]
                        x = _jpeg_bpda(x, q)
                    elif kind == "resize":
                        x = _resize_roundtrip(x, float(0.7 + 0.25 * torch.rand(1, generator=j.gen)))
                    kinds[j.index] = kind
                images[j.index] = x / 255.0
            faces = [(j, f) for j in live for f in j.faces if not f.error and not f.done]
            if not faces:
                for j in live:
                    j.delta.requires_grad_(False)
                self._check_done(live, step)
                continue
            ratios, feat = [], []
            dists: dict[str, torch.Tensor] = {}
            target_terms = []
            for name, rec in self.models.items():
                chips = []
                for j, f in faces:
                    M = torch.from_numpy(f.M[name][None])
                    if kinds.get(j.index) == "jitter":
                        M = _jitter(M, j.gen, rec.input_size)
                    chips.append(self._warp(images[j.index], M, rec.alignment))
                x = torch.cat(chips)
                if cfg.di_prob > 0:
                    x = diverse_input(x, faces[0][0].gen, cfg.di_prob, cfg.di_scale)
                self._features.pop(name, None)
                desc = self._descriptor(rec, x, fast=True)
                d0 = torch.stack([f.d0[name] for _, f in faces])
                dist = rec.distance(desc, d0)
                dists[name] = dist.detach()
                req = torch.tensor([self._required(name, f) for _, f in faces], dtype=dist.dtype, device=dist.device)
                ratios.append(dist / req)
                if cfg.feature_weight > 0 and name in self._features:
                    fx = self._features.pop(name).float()
                    f0 = torch.stack([f.f0[name] for _, f in faces]).to(fx)
                    feat.append((fx - f0).flatten(1).norm(dim=1) / f0.flatten(1).norm(dim=1).clamp_min(1e-6))
                if self.target is not None:
                    target_terms.append(rec.distance(desc, self.target[name][None].expand_as(desc)) / rec.threshold)
            R = torch.stack(ratios, 1)
            loss_f = ensemble_loss(R, cfg.ensemble_temperature)
            if feat:
                loss_f = loss_f - cfg.feature_weight * torch.stack(feat, 1).mean(1)
            if target_terms:
                loss_f = loss_f + torch.stack(target_terms, 1).mean(1)
            grads = torch.autograd.grad(loss_f.sum(), [j.delta for j in live], allow_unused=True)
            with torch.no_grad():
                for j, g in zip(live, grads):
                    j.delta.requires_grad_(False)
                    if g is None:
                        continue
                    g = g * j.mask
                    if j.ti_sigma_px > 0:
                        g = gaussian_smooth(g, j.ti_sigma_px)
                    if cfg.momentum > 0:
                        j.momentum = cfg.momentum * j.momentum + g / g.abs().mean().clamp_min(1e-12)
                        g = j.momentum
                    j.delta -= cfg.step_size * g.sign()
                    j.delta.clamp_(-eps, eps)
            for j, f in faces:
                f.steps = step
            if not noisy:  # the step's own forward was the clean, encoded image
                for k, (j, f) in enumerate(faces):
                    f.done = bool((R[k].detach() >= 1.0).all())
            elif step % cfg.check_every == 0 or step == cfg.steps:
                self._clean_check(live)
            self._check_done(live, step)

    def _check_done(self, live: list[_ImageJob], step: int) -> None:
        """Images whose faces all reached the goal in the method's view: check the written file."""
        for j in live:
            if j.verified or not all(f.done or f.error for f in j.faces):
                continue
            rep = self.verify(j, self._final_pixels(j))
            if all(self._goal_reached(r) or f.error for f, r in zip(j.faces, rep)):
                j.verified = True
                j.report = rep
                continue
            for f, r in zip(j.faces, rep):
                if f.error or self._goal_reached(r):
                    continue
                f.done = False
                f.need *= min(max(NEED_GROWTH, self._shortfall(r)), 1.5)

    def _clean_check(self, jobs: list[_ImageJob]) -> None:
        with torch.no_grad():
            for j in jobs:
                x = self._encoded(j, self._image(j)) / 255.0
                for f in j.faces:
                    if f.error or f.done:
                        continue
                    ok = True
                    for name, rec in self.models.items():
                        d = rec.descriptor(self._warp(x, torch.from_numpy(f.M[name][None]), rec.alignment))
                        ok = ok and float(rec.distance(d, f.d0[name][None])[0]) >= self._required(name, f)
                    f.done = ok

    # ------------------------------------------------------------------ results
    def _result(self, job: _ImageJob, sec_per_face: float) -> tuple[np.ndarray, bool, dict[str, Any]]:
        from ..faces.recognize import same_family
        from ..metrics.quality import ssim

        item = job.item
        cfg = self.cfg
        aset = cfg.attack_set
        held_out = aset.held_out
        info: dict[str, Any] = {
            "target": "face",
            "level": cfg.level,
            "epsilon": cfg.epsilon,
            "linf_budget": cfg.budget,
            "step_size": cfg.step_size,
            "max_steps": cfg.steps,
            "margin": cfg.margin,
            "momentum": cfg.momentum,
            "di_prob": cfg.di_prob,
            "di_scale": cfg.di_scale,
            "ti_sigma": cfg.ti_sigma,
            "feature_weight": cfg.feature_weight,
            "ensemble_temperature": cfg.ensemble_temperature,
            "precision": cfg.precision,
            "eot": list(cfg.eot),
            "jpeg_qualities": list(cfg.jpeg_qualities) if "jpeg" in cfg.eot else [],
            "attacked_models": list(cfg.attack_models),
            "attack_models_requested": list(cfg.attack_request),
            "attack_models_missing": list(aset.missing),
            "held_out_models": held_out,
            "thresholds": {n: r.threshold for n, r in self.models.items()},
            "mode": "targeted" if self.target is not None else "untargeted",
            "white_box_note": WHITE_BOX_NOTE.format(models=", ".join(cfg.attack_models),
                                                    family=", ".join(same_family(cfg.attack_models)),
                                                    held_out=", ".join(held_out) or "none registered"),
            "seconds_per_face": round(sec_per_face, 3),
        }
        warn = aset.warning()
        if warn:
            info["warnings"] = [warn]
        if job.enc is not None:
            info["output_encoding"] = {"format": job.enc.fmt, "quality": job.enc.quality, "grey": job.enc.grey}
        if not item.faces:
            info["reason"] = "no faces to protect"
            return item.pixels.copy(), False, info
        pixels = self._final_pixels(job)
        rep = job.report
        x0, y0, x1, y1 = job.window
        region_ssim = ssim(item.pixels[y0:y1, x0:x1], pixels[y0:y1, x0:x1]) if x1 > x0 else None
        shrink = 1.0
        if cfg.ssim_floor is not None and region_ssim is not None and region_ssim < cfg.ssim_floor:
            # quality floor: shrink the perturbation until the face region meets it, then re-check
            for s in SHRINK_LADDER:
                cand = self._final_pixels(job, s)
                cs = ssim(item.pixels[y0:y1, x0:x1], cand[y0:y1, x0:x1])
                if cs is not None and cs >= cfg.ssim_floor:
                    pixels, region_ssim, shrink = cand, cs, s
                    rep = None
                    break
            else:
                info["quality_floor_violated"] = True
        if rep is None:
            rep = self.verify(job, pixels) if job.x0 is not None else [{"protected": False, "variants": {}}] * len(job.faces)
        info["shrink"] = shrink
        info["verified_by"] = {"detector": self._check.detector if self._check else None,
                               "file": "encoded as written" + (f" + JPEG {list(cfg.jpeg_qualities)}" if "jpeg" in cfg.eot else ""),
                               "decision": "evaluate's: distance >= threshold under every attacked model, face re-detected",
                               "checks": job.checks}
        faces_info = []
        for fj, r in zip(job.faces, rep):
            d: dict[str, Any] = {"face": fj.face_index, "steps": fj.steps, "protected": bool(r.get("protected"))}
            if fj.error:
                d["reason"] = fj.error
            else:
                d["distance_after"] = {v: x["distance"] for v, x in r["variants"].items()}
                d["redetected"] = all(x["redetected"] for x in r["variants"].values())
                if not all(x["seen_on_original"] for x in r["variants"].values()):
                    d["reason"] = "the verifier's detector does not find this face on the original"
                elif not d["redetected"]:
                    d["reason"] = "not re-detected on the written file (evaluate counts it as not protected)"
            if self.target is not None and not fj.error:
                d["target_distance"] = self._target_distance(pixels, fj)
            faces_info.append(d)
        info["faces"] = faces_info
        info["steps_used"] = max((f.steps for f in job.faces), default=0)
        info["ssim_region"] = None if region_ssim is None else round(float(region_ssim), 5)
        info["ssim"] = ssim(item.pixels, pixels)
        info["linf"] = int(np.abs(pixels.astype(np.int16) - item.pixels.astype(np.int16)).max())
        protected = all(d["protected"] for d in faces_info) and bool(faces_info) and \
            not info.get("quality_floor_violated", False)
        if not protected:
            reasons = [f"face {d['face']}: " + d.get("reason", "did not clear every attacked model's threshold on "
                                                               "the written file within the budget")
                       for d in faces_info if not d["protected"]]
            if info.get("quality_floor_violated"):
                reasons.append(f"face-region SSIM below the floor {cfg.ssim_floor}")
            info["reason"] = "; ".join(reasons)
        return pixels, protected, info

    def _target_distance(self, pixels: np.ndarray, fj: _FaceJob) -> dict[str, float]:
        assert self.target is not None
        x01 = torch.from_numpy(pixels).permute(2, 0, 1)[None].float().to(self.device) / 255.0
        out = {}
        for name, rec in self.models.items():
            M = chip_matrix(rec.alignment, pixels, fj.face)
            with torch.no_grad():
                d = rec.descriptor(self._warp(x01, torch.from_numpy(M[None]), rec.alignment))
            out[name] = round(float(rec.distance(d, self.target[name][None])[0]), 4)
        return out

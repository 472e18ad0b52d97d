"""``protect --method ap``: adversarial perturbation (seed 003, thesis ch. 3, Fawkes-style).

Targets (``--param target=...``):

- ``face`` (default): per-face L-infinity PGD against face recognizers, see
  :mod:`anonymize.methods.ap_face`.
- ``classifier``: 003's CRS / CIS against an image classifier, see
  :mod:`anonymize.methods.ap_classifier`.
- ``detector``: thesis ch. 3, private detections relabelled to background and
  the rest kept, signed steps of ``step`` gray levels, see
  :mod:`anonymize.methods.ap_detector`.

Parameters: :class:`APParams`, one dataclass for all targets; each field says which
target it applies to (``protect --list-methods`` prints them).

Registering happens at import time (``import anonymize.methods.ap``).

Example:
    >>> from anonymize.methods.base import METHODS
    >>> METHODS.get("ap").needs_faces
    True
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch

from ..errors import UsageError
from ..types import ImageItem
from .ap_detector import MASK_MODES
from .ap_face import DEFAULT_ATTACK_MODELS, EOT_KINDS, LEVELS, PRECISIONS, AttackWarning
from .base import METHODS, MethodContext, MethodOutput, MethodSpec
from .params import FALSE_WORDS, NONE_WORDS, TRUE_WORDS, Params, as_params, param

TARGETS = ("face", "classifier", "detector")
FACE = {"target": ("face",)}
CLASSIFIER = {"target": ("classifier",)}
DETECTOR = {"target": ("detector",)}
_EOT_WORDS = {**{w: EOT_KINDS for w in ("all", *TRUE_WORDS)}, **{w: () for w in (*FALSE_WORDS, *NONE_WORDS)}}


def _level(key: str) -> str:
    return "level (" + ", ".join(f"{name} {_num(v[key])}" for name, v in LEVELS.items()) + ")"


def _num(v: Any) -> str:
    return str(int(v)) if isinstance(v, float) and v.is_integer() else str(v)



@dataclass(frozen=True)
class APParams(Params):
    """``ap``'s parameters; each target reads its own (``applies``). Add a field here and, for the face
    target, the same name on :class:`~anonymize.methods.ap_face.FaceAttackConfig`: it is copied over."""

    target: str = param("face", "what the perturbation attacks", choices=TARGETS)
    # ---- target=face
    level: str = param("medium", "preset of epsilon, steps, step_size, margin, ssim_floor and the boosting options",
                       choices=tuple(LEVELS), applies=FACE)
    epsilon: float | None = param(None, "L-inf budget in gray levels (face: 1..64; classifier: same as eta_max)", gt=0,
                                  applies={"target": ("face", "classifier")}, default_text=_level("epsilon"))
    steps: int | None = param(None, "maximum PGD steps", ge=1, applies=FACE, default_text=_level("steps"))
    step_size: float | None = param(None, "gray levels per signed step", gt=0, applies=FACE,
                                    default_text=_level("step_size"))
    margin: float | None = param(None, "goal: distance >= threshold * (1 + margin) under every attacked model, on the "
                                 "written file (protected needs >= threshold)", ge=0, applies=FACE,
                                 default_text=_level("margin"))
    attack_models: tuple[str, ...] = param(("auto",), "recognizers attacked together; auto: the default ensemble ("
                                           + ",".join(DEFAULT_ATTACK_MODELS) + ") whose weights are present, with a "
                                           "warning when some are missing; default: all of it or exit 2",
                                           applies=FACE)
    target_identity: str | None = param(None, "image of another person to move toward (targeted, Fawkes-style)",
                                        applies=FACE, default_text="none (untargeted)")
    momentum: float | None = param(None, "MI-FGSM momentum on the L1-normalised gradient (0: off)", ge=0,
                                   applies=FACE, default_text=_level("momentum"))
    di_prob: float | None = param(None, "input diversity: probability that a chip is shrunk and padded (0: off)", ge=0,
                                  le=1, applies=FACE, default_text=_level("di_prob"))
    di_scale: float = param(0.1, "input diversity: chips shrink by up to this fraction", ge=0, lt=1, applies=FACE)
    ti_sigma: float | None = param(None, "translation invariance: gradient smoothing sigma as a fraction of the face "
                                   "width (0: off)", ge=0, le=0.5, applies=FACE, default_text=_level("ti_sigma"))
    feature_weight: float | None = param(None, "weight of the intermediate-feature distance loss (0: off)", ge=0,
                                         applies=FACE, default_text=_level("feature_weight"))
    ensemble_temperature: float | None = param(None, "softmin temperature over the models' normalised distances (0: "
                                               "hard minimum; large: mean)", ge=0, applies=FACE,
                                               default_text=_level("ensemble_temperature"))
    precision: str = param("fp32", "arithmetic of the attack's forward/backward passes (checks are always fp32)",
                           choices=PRECISIONS, applies=FACE)
    eot: tuple[str, ...] = param((), "expectation over transformations (all, none)", choices=EOT_KINDS,
                                 aliases=_EOT_WORDS, applies=FACE)
    jpeg_qualities: tuple[int, ...] = param((75, 85, 95), "JPEG qualities of the EOT and of the final check", ge=1,
                                            le=100, applies=FACE)
    ssim_floor: float | None = param(None, "face-region SSIM floor; the perturbation shrinks to meet it (none/off: no "
                                     "floor)", ge=0, le=1, aliases={"none": 0.0, "off": 0.0}, applies=FACE,
                                     default_text=_level("ssim_floor"))
    random_start: bool = param(True, "start from uniform noise in half the budget", applies=FACE)
    mask_scale: float | None = param(None, "scale of the elliptical mask around each face box", gt=0, applies=FACE,
                                     default_text="--mask-scale")
    mask_feather: float = param(0.15, "feather of the soft face mask", ge=0, applies=FACE)
    max_faces_per_batch: int = param(16, "faces that share one recognizer batch", ge=1, applies=FACE)
    check_every: int = param(5, "clean re-check period (steps) when EOT/DI make the step's forward pass noisy", ge=1,
                             applies=FACE)
    verify_detector: str | None = param(None, "detector that re-finds each face on the written file for the "
                                        "protected check", applies=FACE, default_text="evaluate's default (yunet)")
    output_codec: bool = param(True, "optimise through the output's own lossy encoding (JPEG/WebP quality)",
                               applies=FACE)
    # ---- target=classifier (seed 003)
    classifier: str | None = param(None, "TorchScript file, ARCH:STATE_DICT or torchvision:ARCH", applies=CLASSIFIER)
    scheme: str = param("crs", "crs: class replacement; cis: class indistinguishability", choices=("crs", "cis"),
                        applies=CLASSIFIER)
    input_size: int | None = param(None, "classifier input size (resized inside)", ge=1, applies=CLASSIFIER,
                                   default_text="224 (299 for inception), a TorchScript file: as is")
    normalize: str = param("imagenet", "input normalisation", choices=("imagenet", "none"), applies=CLASSIFIER)
    grayscale: bool = param(False, "feed the classifier a grey image", applies=CLASSIFIER)
    k: int = param(5, "the replacement class is drawn outside the clean top-k", ge=0, applies=CLASSIFIER)
    eta_max: float | None = param(None, "L-inf budget in gray levels", gt=0, applies=CLASSIFIER,
                                  default_text="epsilon, else 2.55 (1%)")
    eta_step: float | None = param(None, "gray levels per step", gt=0, applies=CLASSIFIER, default_text="eta_max / 10")
    score_required: float = param(0.99, "target-class probability that ends an attempt", gt=0, le=1,
                                  applies=CLASSIFIER)
    max_iter: int = param(100, "iterations per target class", ge=1, applies=CLASSIFIER)
    max_retries: int = param(5, "target classes tried", ge=1, applies=CLASSIFIER)
    init: str = param("zero", "start of each attempt: zero, random, or auto (random for retries)",
                      choices=("zero", "random", "auto"), applies=CLASSIFIER)
    n: int = param(2, "CIS: number of CRS noises summed", ge=1, applies=CLASSIFIER)
    cis_total_linf: float | None = param(None, "CIS: clip the summed noise to this L-inf bound", gt=0,
                                         applies=CLASSIFIER, default_text="none (faithful)")
    # ---- target=detector (thesis ch. 3)
    detector: str | None = param(None, "torchvision:ARCH or ARCH:STATE_DICT (an R-CNN detector)", applies=DETECTOR)
    private_classes: tuple[str, ...] = param(("person",), "classes to hide (names or ids)", applies=DETECTOR)
    step: float = param(0.25, "gray levels per signed step (thesis: 0.2-0.4)", gt=0, le=8, applies=DETECTOR)
    iterations: int = param(12, "maximum iterations", ge=0, applies=DETECTOR)
    tau: float = param(0.5, "detection score threshold", ge=0, le=1, applies=DETECTOR)
    mask_mode: str = param("global", "where the image may change", choices=MASK_MODES, applies=DETECTOR)
    early_stop: bool = param(True, "stop once the private objects are hidden and the others kept", applies=DETECTOR)

    def check(self) -> None:
        if self.target == "face" and not self.attack_models:
            raise UsageError("--param attack_models needs at least one recognizer (e.g. dlib-resnet), or auto / default")
        if self.target == "face" and self.epsilon is not None and not 1 <= self.epsilon <= 64:
            raise UsageError(f"--param epsilon is in gray levels and must be in 1..64, got {self.epsilon}")
        if self.target == "classifier" and not self.classifier:
            raise UsageError("--param target=classifier needs --param classifier=MODEL (TorchScript file, "
                             "ARCH:STATE_DICT or torchvision:ARCH)")
        if self.target == "detector" and not self.detector:
            raise UsageError("--param target=detector needs --param detector=torchvision:ARCH or ARCH:STATE_DICT")


class AdversarialPerturbation:
    """The ``ap`` method object: dispatches on ``params.target``."""

    name = "ap"

    def __init__(self, params: APParams | Mapping[str, Any] | None = None) -> None:
        self.params = as_params(APParams, params, method="ap")
        self.target = self.params.target
        if self.target == "face":
            from .ap_face import FaceAttackConfig

            self.face_cfg = FaceAttackConfig.from_params(self.params)  # exit 2 here when named weights are missing
            note = self.face_cfg.attack_set.warning()
            if note:
                warnings.warn(note, AttackWarning, stacklevel=2)
        self._engine: Any = None
        self._engine_device: str | None = None

    def _face_engine(self, device: str) -> Any:
        from .ap_face import FaceAttack

        if self._engine is None or self._engine_device != device:
            self._engine = FaceAttack(self.face_cfg, device)
            self._engine_device = device
        return self._engine

    def __call__(self, items: Sequence[ImageItem], ctx: MethodContext) -> list[MethodOutput]:
        if self.target == "face":
            if self.face_cfg.mask_scale is None:
                self.face_cfg.mask_scale = ctx.mask_scale
            engine = self._face_engine(ctx.device)
            gens = []
            for it in items:
                g = torch.Generator()
                g.manual_seed(int(ctx.generator_for(it).integers(0, 2**62)))
                gens.append(g)
            results = engine.run(items, gens, output_format=ctx.output_format, output_quality=ctx.quality)
            return [MethodOutput(pixels=px, protected=ok, info=info) for px, ok, info in results]
        if self.target == "classifier":
            from .ap_classifier import run_classifier_target

            return run_classifier_target(items, ctx, self.params)
        from .ap_detector import load_detector, run_detector_target

        if self._engine is None or self._engine_device != ctx.device:
            self._engine = load_detector(str(self.params.detector), device=ctx.device)
            self._engine_device = ctx.device
        return run_detector_target(items, ctx, self.params, detector=self._engine)


SPEC = MethodSpec(
    name="ap",
    summary="adversarial perturbation against face recognizers (default; L-inf PGD through the alignment, "
    "EOT for JPEG), image classifiers (003 CRS/CIS) and object detectors (thesis ch. 3)",
    factory=AdversarialPerturbation,
    params=APParams,
    needs_faces=True,
    weights=(),
    licence="MIT",
    paper="Liu et al. 2019 (seed 003, CRS/CIS); Xue 2023 thesis ch. 3; Shan et al. 2020 (Fawkes)",
)


METHODS.register(SPEC)

"""``protect --method ap``: adversarial perturbation (seed 003, thesis ch. 3, Fawkes-style).

Targets (``--param target=...``):

- ``face`` (default): per-face L-infinity PGD against face recognizers, see
  :mod:`anonymize.methods.ap_face` (params: level, epsilon, steps,
  step_size, margin, attack_models, target_identity, eot, jpeg_qualities,
  ssim_floor).
- ``classifier``: 003's CRS / CIS against an image classifier, see
  :mod:`anonymize.methods.ap_classifier` (params: scheme, classifier, ...).
- ``detector``: thesis ch. 3, private detections relabelled to background and
  the rest kept, signed steps of ``step`` gray levels, see
  :mod:`anonymize.methods.ap_detector` (params: detector, private_classes,
  step, iterations, tau, mask_mode, early_stop).

Registering happens at import time (``import anonymize.methods.ap``).

Example:
    >>> from anonymize.methods.base import METHODS
    >>> METHODS.get("ap").needs_faces
    True
"""
from __future__ import annotations

from typing import Any, Sequence

import torch

from ..errors import UsageError
from ..types import ImageItem
from .base import METHODS, MethodContext, MethodOutput, MethodSpec

TARGETS = ("face", "classifier", "detector")


class AdversarialPerturbation:
    """The ``ap`` method object: dispatches on ``params['target']``."""

    name = "ap"

    def __init__(self, params: dict[str, Any]) -> None:
        self.params = dict(params)
        self.target = str(self.params.get("target", "face")).lower()
        if self.target not in TARGETS:
            raise UsageError(f"--param target must be one of {', '.join(TARGETS)}, got {self.target!r}")
        if self.target == "detector" and not self.params.get("detector"):
            raise UsageError("--param target=detector needs --param detector=torchvision:ARCH or ARCH:STATE_DICT")
        if self.target == "face":
            from .ap_face import FaceAttackConfig

            self.face_cfg = FaceAttackConfig.from_params(self.params)  # validate early (exit 2 on bad params)
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
            return [MethodOutput(pixels=px, protected=ok, info=info) for px, ok, info in engine.run(items, gens)]
        if self.target == "classifier":
            from .ap_classifier import run_classifier_target

            return run_classifier_target(items, ctx, self.params)
        from .ap_detector import load_detector, run_detector_target

        if self._engine is None or self._engine_device != ctx.device:
            self._engine = load_detector(str(self.params["detector"]), device=ctx.device)
            self._engine_device = ctx.device
        return run_detector_target(items, ctx, self.params, detector=self._engine)


def _factory(params: dict[str, Any]) -> AdversarialPerturbation:
    return AdversarialPerturbation(params)


SPEC = MethodSpec(
    name="ap",
    summary="adversarial perturbation against face recognizers (default; L-inf PGD through the alignment, "
    "EOT for JPEG), image classifiers (003 CRS/CIS) and object detectors (thesis ch. 3)",
    factory=_factory,
    needs_faces=True,
    weights=(),
    licence="MIT",
    paper="Liu et al. 2019 (seed 003, CRS/CIS); Xue 2023 thesis ch. 3; Shan et al. 2020 (Fawkes)",
)


METHODS.register(SPEC)

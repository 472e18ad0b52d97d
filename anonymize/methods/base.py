"""The method contract every protection method implements, and its registry.

A method sees batches of decoded images (with their faces already detected
when it declared ``needs_faces``) on one device; it never opens files. It
returns one :class:`MethodOutput` per input item, in order.

Example:
    >>> import numpy as np
    >>> from anonymize.methods.base import METHODS
    >>> "blur" in METHODS
    True
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence

import numpy as np

from ..registry import Registry
from ..types import ImageItem


@dataclass
class MethodContext:
    """Run-wide settings a method may use."""

    device: str = "cpu"
    seed: int = 0
    region: str = "faces"  # "faces": only detected face regions; "image": the whole image
    mask_scale: float = 1.3
    params: dict[str, Any] = field(default_factory=dict)

    def generator_for(self, item: ImageItem) -> np.random.Generator:
        """A NumPy generator seeded from ``--seed`` and the item's relative path (stable across resumes)."""
        import hashlib

        digest = hashlib.sha256(f"{self.seed}:{item.relative.as_posix()}".encode("utf-8", "surrogateescape")).digest()
        return np.random.default_rng(int.from_bytes(digest[:8], "little"))


@dataclass
class MethodOutput:
    """What a method returns for one image.

    ``protected`` must be False whenever the method did not actually protect
    the image (e.g. an optimisation that did not reach its goal); the pipeline
    records it and never labels such an output as protected.
    """

    pixels: np.ndarray
    protected: bool
    info: dict[str, Any] = field(default_factory=dict)
    alpha: np.ndarray | None = None  # set only when the method changes the alpha channel


class Method(Protocol):
    name: str

    def __call__(self, items: Sequence[ImageItem], ctx: MethodContext) -> list[MethodOutput]: ...


@dataclass(frozen=True)
class MethodSpec:
    """Registry entry for a protection method."""

    name: str
    summary: str
    factory: Callable[[dict[str, Any]], Method] | None
    needs_faces: bool = True
    weights: tuple[str, ...] = ()
    licence: str = "MIT"
    paper: str = ""
    # When factory is None the method is planned but not implemented yet; the
    # CLI exits 2 with this message instead of producing anything.
    unavailable_reason: str = ""


METHODS: Registry[MethodSpec] = Registry("method")


def get_method(name: str, params: dict[str, Any] | None = None) -> tuple[MethodSpec, Method]:
    """Look up ``name`` and build the method, or raise ``MethodUnavailable`` (exit 2)."""
    from ..errors import MethodUnavailable

    spec = METHODS.get(name)
    if spec.factory is None:
        raise MethodUnavailable(f"method {name!r} is not available yet: {spec.unavailable_reason}")
    return spec, spec.factory(dict(params or {}))


def _register_builtin() -> None:
    from . import baselines  # noqa: F401  (registers blur, pixelate, solid)
    from . import ap, diffusion, dpimage, fsap, ope  # noqa: F401

    planned = {
        "fsap": "feature-space adversarial perturbation (pSp/StyleGAN2 W+ latent vs ArcFace), thesis ch. 5",
        "dpimage": "differentially private image (IDPI, DP-Pix, XAI variants), thesis ch. 4 / seed 000",
        "ap": "adversarial perturbation against recognizers, classifiers and detectors, seed 003 / thesis ch. 3",
        "ope": "structural de-identification with order-preserving encryption, seed 001",
        "diffusion": "Diffusion De-ID on DiffAE + FaRL + ArcFace, thesis ch. 6",
    }
    for name, summary in planned.items():
        if name not in METHODS:
            METHODS.register(
                MethodSpec(
                    name=name,
                    summary=summary,
                    factory=None,
                    unavailable_reason="it is planned but not implemented in this version; "
                    "no output is written. Use --method blur|pixelate|solid meanwhile.",
                )
            )

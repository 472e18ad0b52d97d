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
from typing import Any, Callable, Mapping, Protocol, Sequence

import numpy as np

from ..registry import Registry
from ..types import DEFAULT_MASK_SCALE, ImageItem
from .params import Params, as_params


@dataclass
class MethodContext:
    """Run-wide settings a method may use."""

    device: str = "cpu"
    seed: int = 0
    region: str = "faces"  # "faces": only detected face regions; "image": the whole image
    mask_scale: float = DEFAULT_MASK_SCALE
    params: dict[str, Any] = field(default_factory=dict)
    output_format: str | None = None  # --format as a Pillow name (None: each input's own), for methods that check the file
    quality: int | None = None  # --quality (None: estimated from the input JPEG)

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
    """Registry entry for a protection method.

    ``params`` is the method's parameter contract (a :class:`Params` dataclass);
    ``factory`` builds the method from an instance of it.
    """

    name: str
    summary: str
    factory: Callable[[Any], Method]
    params: type[Params]
    needs_faces: bool = True
    weights: tuple[str, ...] = ()
    licence: str = "MIT"
    paper: str = ""

    def describe(self) -> dict[str, Any]:
        """JSON-able description, parameters included (``protect --list-methods --json``)."""
        from .params import params_info

        return {"name": self.name, "summary": self.summary, "needs_faces": self.needs_faces,
                "weights": list(self.weights), "licence": self.licence, "paper": self.paper,
                "params": [i.to_dict() for i in params_info(self.params)]}


METHODS: Registry[MethodSpec] = Registry("method")


def parse_params(spec: MethodSpec, raw: Mapping[str, Any] | Params | None) -> Params:
    """``raw`` (``--param`` strings or API values) checked and typed against ``spec.params``.

    Unknown keys, bad values and out-of-range numbers raise UsageError (exit 2).

    Example:
        >>> parse_params(METHODS.get("blur"), {"sigma": "0.3"}).sigma
        0.3
    """
    return as_params(spec.params, raw, method=spec.name)


def get_method(name: str, params: Mapping[str, Any] | Params | None = None) -> tuple[MethodSpec, Method]:
    """Look up ``name``, parse ``params`` against its contract and build the method (UsageError: exit 2)."""
    spec = METHODS.get(name)
    return spec, spec.factory(parse_params(spec, params))


def _register_builtin() -> None:
    from . import baselines  # noqa: F401  (registers blur, pixelate, solid: no torch)

    # The torch-based methods register when first used (``--method``, ``--list-methods``).
    for name in ("ap", "diffusion", "dpimage", "fsap", "itn", "ope"):
        METHODS.defer(name, f"{__package__}.{name}")

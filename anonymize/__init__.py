"""anonymize: batch image anonymization with verifiable protection.

The library mirrors the CLI:

    >>> import anonymize
    >>> sorted(anonymize.list_methods())[:3]
    ['ap', 'blur', 'diffusion']

- ``anonymize.protect(inputs, method="blur", output=Path("out"))`` -> RunResult
- ``anonymize.evaluate(originals, protected)`` -> EvaluateResult
- ``anonymize.detect(inputs)`` -> DetectResult (with the face stack)
"""
from __future__ import annotations

__version__ = "0.1.0"

from typing import Any


def protect(inputs: Any, **options: Any) -> Any:
    """Protect images; see :func:`anonymize.pipeline.protect` and :class:`~anonymize.pipeline.ProtectOptions`."""
    from .pipeline import protect as _protect

    return _protect(inputs if isinstance(inputs, (list, tuple)) else [inputs], **options)


def evaluate(originals: Any, protected: Any, **options: Any) -> Any:
    """Evaluate protection; see :func:`anonymize.evaluation.evaluate`."""
    from .evaluation import evaluate as _evaluate

    return _evaluate(originals, protected, **options)


def detect(inputs: Any, **options: Any) -> Any:
    """Detect faces; see :func:`anonymize.detection.detect`."""
    from .detection import detect as _detect

    return _detect(inputs if isinstance(inputs, (list, tuple)) else [inputs], **options)


def list_methods() -> list[str]:
    from .methods import METHODS

    return METHODS.names()


__all__ = ["__version__", "protect", "evaluate", "detect", "list_methods"]

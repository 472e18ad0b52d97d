"""The stages of a protect run, as named, picklable units over explicit inputs and outputs.

    plan (discover + resume) -> Decode -> Detect -> Protect -> Write -> Record

Each of :class:`Decode`, :class:`Detect`, :class:`Protect` and :class:`Write` is a
top-level class that loads what it needs once in ``__init__`` and maps a batch of
:class:`Task` to the same batch (``__call__(tasks) -> tasks``); finished tasks pass
through untouched. :class:`Plan` turns the inputs into tasks and decides what an
existing output means (resume); :class:`Record` is the single consumer that
writes each record and then publishes the output. The engines
(:mod:`anonymize.engines`) only decide where the stages run: threads on this
machine, or Ray workers.

Example:
    >>> stages = Stages.build(StageConfig(method="blur", region="image"))
    >>> [type(s).__name__ for s in stages]
    ['Decode', 'Protect', 'Write']
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from .base import StageConfig, Task, fail
from .decode import Decode
from .detect import Detect
from .plan import Plan
from .protect import Protect
from .record import Record
from .write import Write


@dataclass
class Stages:
    """The per-image stages of one run, built from its config (models load here, once)."""

    decode: Decode
    detect: Detect | None
    protect: Protect
    write: Write

    @classmethod
    def build(cls, cfg: StageConfig) -> Stages:
        detect = Detect(cfg.detector, thresh=cfg.detector_thresh, min_face=cfg.min_face, device=cfg.device,
                        boxes_from=cfg.boxes_from) if cfg.detects else None
        return cls(Decode(cfg.max_pixels, cfg.max_bytes), detect, Protect(cfg), Write(cfg))

    def __iter__(self) -> Iterator[Any]:
        return iter([s for s in (self.decode, self.detect, self.protect, self.write) if s is not None])


__all__ = ["Decode", "Detect", "Plan", "Protect", "Record", "StageConfig", "Stages", "Task", "Write", "fail"]

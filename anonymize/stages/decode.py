"""Decode stage: each live task's file -> an upright :class:`~anonymize.types.ImageItem`.

Reads only regular files, at most ``max_bytes`` (see :mod:`anonymize.io.decode`);
records the input's sha256, size, format, mode and decoder warnings. Every
problem with a file fails that task with an error code; the run goes on.

Example:
    >>> from importlib.resources import files
    >>> from pathlib import Path
    >>> from anonymize.io.discover import Job
    >>> from anonymize.stages.base import StageConfig, Task
    >>> src = Path(str(files("anonymize") / "data" / "samples" / "astronaut.jpg"))
    >>> t, = Decode()([Task.start(Job(src, Path("a.jpg"), Path("out/a.jpg")), StageConfig(method="blur"))])
    >>> t.item.pixels.shape, t.rec.image["format"]
    ((512, 512, 3), 'JPEG')
"""
from __future__ import annotations

import time

from ..errors import ImageError
from ..io.decode import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, decode_file
from ..records import sha256_bytes
from .base import Task, fail


class Decode:
    """``__call__(tasks) -> tasks``: decode every live task (stateless; cheap to build anywhere)."""

    def __init__(self, max_pixels: int = DEFAULT_MAX_PIXELS, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.max_pixels = max_pixels
        self.max_bytes = max_bytes

    def __call__(self, tasks: list[Task]) -> list[Task]:
        for t in tasks:
            if t.live:
                self.one(t)
        return tasks

    def one(self, task: Task) -> Task:
        job, rec = task.job, task.rec
        if job.error:
            return fail(task, "symlink-loop" if "symlink" in job.error else "unreadable", job.error)
        t0 = time.perf_counter()
        try:
            item, data = decode_file(job.source, job.relative, max_pixels=self.max_pixels, max_bytes=self.max_bytes)
        except ImageError as exc:
            return fail(task, exc.code, exc.message)
        except MemoryError:
            return fail(task, "too-large", "not enough memory to decode this image")
        rec.input_sha256 = sha256_bytes(data)
        rec.warnings.extend(item.warnings)
        rec.image = {"width": item.width, "height": item.height, "format": item.format,
                     "mode": item.info.get("source_mode"), "has_alpha": item.alpha is not None}
        rec.timings["decode_s"] = round(time.perf_counter() - t0, 5)
        task.item = item
        return task

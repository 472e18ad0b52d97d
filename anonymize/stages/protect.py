"""Method stage: the protection method, built once, over a batch of live tasks.

A batch that raises is retried one image at a time, so one bad image fails
alone; a :class:`~anonymize.errors.UsageError` stops the run (exit 2). With
``require_protected``, an image the method did not protect fails with
``not-protected`` and is never written.

Example:
    >>> import numpy as np
    >>> from pathlib import Path
    >>> from anonymize.io.discover import Job
    >>> from anonymize.stages.base import StageConfig, Task
    >>> from anonymize.types import ImageItem
    >>> cfg = StageConfig(method="pixelate", region="image")
    >>> t = Task.start(Job(Path("a.png"), Path("a.png"), Path("o/a.png")), cfg)
    >>> t.item = ImageItem(Path("a.png"), Path("a.png"), np.zeros((8, 8, 3), np.uint8))
    >>> Protect(cfg)([t])[0].rec.protected
    True
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import AnonymizeError, ImageError, UsageError
from ..methods import MethodContext, get_method
from ..records import safe_path
from .base import StageConfig, Task, fail, live


class Protect:
    """``__call__(tasks) -> tasks``: run the method on every live task (``task.result``, ``rec.protected``)."""

    def __init__(self, cfg: StageConfig) -> None:
        self.spec, self.method = get_method(cfg.method, cfg.params)
        self.ctx = MethodContext(device=cfg.device, seed=cfg.seed, region=cfg.region, mask_scale=cfg.mask_scale,
                                 params=dict(cfg.params), output_format=cfg.fmt, quality=cfg.quality)
        self.require_protected = cfg.require_protected

    def __call__(self, tasks: list[Task]) -> list[Task]:
        todo = live(tasks)
        if not todo:
            return tasks
        t0 = time.perf_counter()
        outs = self._run([t.item for t in todo])
        dt = round((time.perf_counter() - t0) / len(todo), 5)
        for t, out in zip(todo, outs):
            t.rec.timings["method_s"] = dt
            if isinstance(out, Exception):
                fail(t, getattr(out, "code", "method-failed"),
                     out.message if isinstance(out, ImageError) else f"{type(out).__name__}: {out}")
                continue
            t.rec.protected = bool(out.protected)
            t.rec.method_info = jsonable(out.info)
            if self.require_protected and not t.rec.protected:
                reason = out.info.get("reason") if isinstance(out.info, dict) else None
                fail(t, "not-protected", "the method did not protect this image"
                     + (f" ({reason})" if reason else "") + "; not written (--require-protected)")
                continue
            t.result = out
        return tasks

    def _run(self, items: list[Any]) -> list[Any]:
        """One output (or the exception) per item; a failing batch is retried one by one."""
        try:
            outs = self.method(items, self.ctx)
            if len(outs) != len(items):
                raise RuntimeError(f"method returned {len(outs)} outputs for {len(items)} images")
            return list(outs)
        except UsageError:
            raise
        except AnonymizeError as exc:
            if not isinstance(exc, ImageError):
                return [exc] * len(items)  # the method cannot run at all (e.g. weights): every image fails
            if len(items) == 1:
                return [exc]
        except Exception as exc:  # noqa: BLE001 - recorded per file
            if len(items) == 1:
                return [exc]
        results: list[Any] = []
        for it in items:
            try:
                results.append(self.method([it], self.ctx)[0])
            except UsageError:
                raise
            except Exception as exc:  # noqa: BLE001 - recorded per file
                results.append(exc)
        return results


def jsonable(obj: Any) -> Any:
    """Method info made JSON-safe (numpy scalars/arrays, paths, non-finite floats -> None).

    Example:
        >>> jsonable({"a": np.float32(0.5), "b": [np.int64(2), float("nan")]})
        {'a': 0.5, 'b': [2, None]}
    """
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, (np.floating, float)):
        v = float(obj)
        return v if np.isfinite(v) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, Path):
        return safe_path(obj)
    return obj

"""``anonymize detect``: faces (boxes, scores, landmarks) for every image, as JSON.

Runs the same Decode and Detect stages as ``protect`` (:mod:`anonymize.stages`):
decode workers feed batches across files to the detector. Returns one document:
``summary`` plus an ``images`` list whose entries each carry a ``faces`` list
(the same contract as ``evaluate --json``).
Optionally writes per-image JSON files (``output``) and preview images with
boxes, scores and landmarks drawn (``preview``).

Example (the two bundled sample portraits):
    >>> from importlib.resources import files
    >>> res = detect([files("anonymize") / "data" / "samples"], detector="haar")
    >>> res.exit_code, res.summary["images"], res.summary["images_with_faces"]
    (0, 2, 2)
"""
from __future__ import annotations

import itertools
import json
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import __version__
from .device import resolve_device
from .engines.local import decoded
from .errors import EXIT_OK, EXIT_SOME_FAILED, UsageError
from .io.decode import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS
from .io.discover import discover
from .io.encode import atomic_write, ensure_writable_dir
from .io.stream import batched
from .records import SCHEMA_VERSION, now_iso, write_json_atomic
from .runtime_threads import plan_threads, using_plan
from .stages import Decode, Detect, StageConfig, Task
from .types import ImageItem


@dataclass
class DetectOptions:
    detector: str | None = None
    thresh: float | None = None
    min_face: int | None = None  # None: the detector's own default
    landmarks68: bool = False
    device: str = "auto"
    batch_size: int = 8
    workers: int | None = None  # None: the thread policy decides (runtime_threads)
    threads: int | None = None  # core budget (--threads)
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_bytes: int = DEFAULT_MAX_BYTES
    output: Path | None = None  # per-image JSON files, mirroring the input tree
    preview: Path | None = None  # images with detections drawn
    report: Path | None = None  # the whole document
    progress: Callable[[int, int | None, dict[str, Any]], None] | None = None


@dataclass
class DetectResult:
    summary: dict[str, Any]
    images: list[dict[str, Any]] = field(default_factory=list)
    report_path: Path | None = None

    @property
    def exit_code(self) -> int:
        return int(self.summary["exit_code"])

    def to_dict(self) -> dict[str, Any]:
        return {"schema_version": SCHEMA_VERSION, "kind": "anonymize-detections", "summary": self.summary, "images": self.images}


def detect(inputs: list[str | Path], opts: DetectOptions | None = None, **kwargs: Any) -> DetectResult:
    """Detect faces in every image of ``inputs``."""
    opts = opts or DetectOptions()
    for k, v in kwargs.items():
        if not hasattr(opts, k):
            raise UsageError(f"unknown option {k!r}")
        setattr(opts, k, v)
    if opts.batch_size < 1 or (opts.workers is not None and opts.workers < 1) or opts.max_bytes < 1:
        raise UsageError("--batch-size, --workers and --max-bytes must be >= 1")
    plan = plan_threads(opts.threads, opts.workers)
    device = resolve_device(opts.device)
    jobs = discover([Path(i) for i in inputs], None)
    first = next(jobs, None)  # raises UsageError for missing inputs before loading models
    stage = Detect(opts.detector, thresh=opts.thresh, min_face=opts.min_face, device=device, landmarks68=opts.landmarks68)
    for folder, what in ((opts.output, "--output"), (opts.preview, "--preview"),
                         (opts.report.parent if opts.report else None, "--report folder")):
        if folder is not None:
            ensure_writable_dir(folder, what)  # exit 2 before any work
    tasks = (Task.start(j, _CFG) for j in itertools.chain([first] if first is not None else [], jobs))
    with using_plan(plan):
        return _run(opts, plan, stage, device, tasks)


_CFG = StageConfig(method="")


def _run(opts: DetectOptions, plan: Any, stage: Detect, device: str, tasks: Iterator[Task]) -> DetectResult:
    """The shared Decode (worker threads) and Detect stages, then per-image JSON and previews."""
    t0 = time.perf_counter()
    images: list[dict[str, Any]] = []
    n_faces = 0
    pending: deque[Any] = deque()
    # A full disk raises OutputError (exit 2) from atomic_write: files already written are complete.
    with ThreadPoolExecutor(max_workers=plan.workers, thread_name_prefix="decode") as pool:
        stream = decoded(tasks, Decode(opts.max_pixels, opts.max_bytes), pool, pending, opts.batch_size * 2)
        for chunk in batched(stream, opts.batch_size):
            for task in stage(chunk):
                rec = _record(task)
                if task.live:
                    n_faces += len(rec["faces"])
                    if opts.output is not None:
                        atomic_write(opts.output / (task.job.relative.as_posix() + ".json"), json.dumps(rec, indent=1).encode())
                    if opts.preview is not None:
                        _write_preview(opts.preview / task.job.relative.with_suffix(".jpg"), task.item, task.item.faces)
                task.release()
                images.append(rec)
                if opts.progress:
                    opts.progress(len(images), None, rec)
    failed = sum(1 for r in images if r["status"] == "failed")
    elapsed = time.perf_counter() - t0
    summary = {
        "command": "detect",
        "detector": stage.name,
        "thresh": opts.thresh if opts.thresh is not None else getattr(stage.detector, "thresh", None),
        "min_face": getattr(stage.detector, "min_face", opts.min_face),
        "landmarks68": opts.landmarks68,
        "device": device,
        "images": len(images),
        "ok": len(images) - failed,
        "failed": failed,
        "faces": n_faces,
        "images_with_faces": sum(1 for r in images if r["faces"]),
        "elapsed_s": round(elapsed, 3),
        "images_per_s": round(len(images) / elapsed, 3) if elapsed > 0 else 0.0,
        "exit_code": EXIT_SOME_FAILED if failed else EXIT_OK,
        "run_id": uuid.uuid4().hex[:12],
        "tool_version": __version__,
        "finished": now_iso(),
        "threads": plan.to_dict(),
        "max_bytes": opts.max_bytes,
        "schema_version": SCHEMA_VERSION,
    }
    res = DetectResult(summary=summary, images=images, report_path=opts.report)
    if opts.report is not None:
        write_json_atomic(opts.report, res.to_dict())
    return res


def _record(task: Task) -> dict[str, Any]:
    """``detect``'s per-image entry from the stages' record."""
    r = task.rec
    out: dict[str, Any] = {"input": r.input, "relative_path": r.relative_path, "status": r.status, "error": r.error,
                           "faces": r.faces}
    if task.live:
        out.update(width=r.image["width"], height=r.image["height"])
        if r.warnings:
            out["warnings"] = r.warnings
        out["detect_s"] = r.timings.get("detect_s")
    return out


def _write_preview(path: Path, item: ImageItem, faces: list) -> None:
    import io

    from PIL import Image

    from .faces.detect import draw_preview

    buf = io.BytesIO()
    Image.fromarray(draw_preview(item.pixels, faces)).save(buf, "JPEG", quality=90)
    atomic_write(path, buf.getvalue())

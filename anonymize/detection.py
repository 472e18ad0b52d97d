"""``anonymize detect``: faces (boxes, scores, landmarks) for every image, as JSON.

Streams inputs through decode workers, batches images across files for the
detector, and returns one document: ``summary`` plus an ``images`` list whose
entries each carry a ``faces`` list (the same contract as ``evaluate --json``).
Optionally writes per-image JSON files (``output``) and preview images with
boxes, scores and landmarks drawn (``preview``).

Example (the two bundled sample portraits):
    >>> from importlib.resources import files
    >>> res = detect([files("anonymize") / "data" / "samples"], detector="haar")
    >>> res.exit_code, res.summary["images"], res.summary["images_with_faces"]
    (0, 2, 2)
"""
from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from . import __version__
from .device import resolve_device
from .errors import EXIT_OK, EXIT_SOME_FAILED, ImageError, UsageError
from .io.decode import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, decode_file
from .io.discover import Job, discover
from .io.encode import atomic_write, ensure_writable_dir
from .io.stream import batched, bounded_map
from .records import SCHEMA_VERSION, now_iso, safe_path, write_json_atomic
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
    from .faces.detect import get_detector, resolve_detector

    opts = opts or DetectOptions()
    for k, v in kwargs.items():
        if not hasattr(opts, k):
            raise UsageError(f"unknown option {k!r}")
        setattr(opts, k, v)
    if opts.batch_size < 1 or (opts.workers is not None and opts.workers < 1) or opts.max_bytes < 1:
        raise UsageError("--batch-size, --workers and --max-bytes must be >= 1")
    from .runtime_threads import plan_threads, using_plan

    plan = plan_threads(opts.threads, opts.workers)
    device = resolve_device(opts.device)
    jobs = discover([Path(i) for i in inputs], None)
    first = next(jobs, None)  # raises UsageError for missing inputs before loading models
    name = resolve_detector(opts.detector)
    det = get_detector(name, thresh=opts.thresh, min_face=opts.min_face, device=device, landmarks68=opts.landmarks68)
    for folder, what in ((opts.output, "--output"), (opts.preview, "--preview"),
                         (opts.report.parent if opts.report else None, "--report folder")):
        if folder is not None:
            ensure_writable_dir(folder, what)  # exit 2 before any work
    with using_plan(plan):
        return _run(opts, plan, name, det, device, first, jobs)


def _run(opts: DetectOptions, plan: Any, name: str, det: Any, device: str, first: Job | None, jobs: Any) -> DetectResult:
    t0 = time.perf_counter()

    def all_jobs():
        if first is not None:
            yield first
        yield from jobs

    def load(job: Job) -> tuple[Job, ImageItem | None, dict[str, Any]]:
        rec: dict[str, Any] = {"input": safe_path(job.source), "relative_path": safe_path(job.relative), "status": "ok", "error": None, "faces": []}
        if job.error:
            rec.update(status="failed", error={"code": "unreadable", "message": job.error})
            return job, None, rec
        try:
            item, _ = decode_file(job.source, job.relative, max_pixels=opts.max_pixels, max_bytes=opts.max_bytes)
        except ImageError as exc:
            rec.update(status="failed", error={"code": exc.code, "message": exc.message})
            return job, None, rec
        rec.update(width=item.width, height=item.height)
        if item.warnings:
            rec["warnings"] = item.warnings
        return job, item, rec

    images: list[dict[str, Any]] = []
    n_faces = 0
    # A full disk raises OutputError (exit 2) from atomic_write: files already written are complete.
    for chunk in batched(bounded_map(load, all_jobs(), workers=plan.workers, prefetch=opts.batch_size * 2), opts.batch_size):
        good = [(j, it, r) for j, it, r in chunk if it is not None]
        if good:
            td = time.perf_counter()
            found = det([it.pixels for _, it, _ in good])
            dt = (time.perf_counter() - td) / len(good)
            for (job, item, rec), faces in zip(good, found):
                rec["faces"] = [f.to_dict() for f in faces]
                rec["detect_s"] = round(dt, 5)
                n_faces += len(faces)
                if opts.output is not None:
                    atomic_write(opts.output / (job.relative.as_posix() + ".json"), json.dumps(rec, indent=1).encode())
                if opts.preview is not None:
                    _write_preview(opts.preview / job.relative.with_suffix(".jpg"), item, faces)
        for _, _, rec in chunk:
            images.append(rec)
            if opts.progress:
                opts.progress(len(images), None, rec)
    failed = sum(1 for r in images if r["status"] == "failed")
    elapsed = time.perf_counter() - t0
    summary = {
        "command": "detect",
        "detector": name,
        "thresh": opts.thresh if opts.thresh is not None else getattr(det, "thresh", None),
        "min_face": getattr(det, "min_face", opts.min_face),
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


def _write_preview(path: Path, item: ImageItem, faces: list) -> None:
    import io

    from PIL import Image

    from .faces.detect import draw_preview

    buf = io.BytesIO()
    Image.fromarray(draw_preview(item.pixels, faces)).save(buf, "JPEG", quality=90)
    atomic_write(path, buf.getvalue())

"""The one pipeline every method runs through.

discover -> decode (worker threads) -> batch -> detect -> method (main thread,
one device) -> encode + atomic write (worker threads) -> record (JSONL).

Memory stays flat whatever the corpus size: at most ``prefetch`` decoded
images wait for the method stage and at most ``2 * workers`` outputs wait to
be written; jobs are produced lazily from the folder walk.

Example:
    >>> from anonymize.pipeline import ProtectOptions
    >>> ProtectOptions(method="blur").batch_size
    8
"""
from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from . import __version__
from .device import resolve_device
from .errors import EXIT_INTERRUPTED, EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE, AnonymizeError, ImageError, OutputError, UsageError
from .io.decode import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, decode_file
from .io.discover import SIDECAR_SUFFIX, Job, OutputPlan, discover
from .io.encode import (
    EXTENSIONS,
    DiskFull,
    atomic_write,
    clean_stale_temporaries,
    encode_image,
    ensure_writable_dir,
    is_disk_full,
    output_format,
    resolve_format,
)
from .io.metadata import parse_keep
from .methods import METHODS, MethodContext, MethodOutput, get_method, parse_params
from .records import (ImageRecord, RecordWriter, RunSummary, now_iso, provenance_roots, safe_path, sha256_bytes,
                      write_json_atomic, write_provenance, write_report)
from .runtime_threads import plan_threads, using_plan
from .types import DEFAULT_MASK_SCALE, Face, ImageItem

ProgressFn = Callable[[int, int | None, ImageRecord], None]
REPORT_NAME = "anonymize-report.json"


@dataclass
class ProtectOptions:
    """All options of a protect run (the CLI maps its flags onto these)."""

    method: str = "blur"
    params: dict[str, Any] = field(default_factory=dict)
    output: Path | None = None
    overwrite: bool = False
    dry_run: bool = False
    device: str = "auto"
    batch_size: int = 8
    workers: int | None = None  # decode threads (and as many writers); None: the thread policy decides
    threads: int | None = None  # core budget (--threads); None: ANONYMIZE_THREADS or the cores available
    seed: int = 0
    region: str = "faces"  # faces | image
    detector: str | None = None  # None: the registry's default
    detector_thresh: float | None = None
    min_face: int | None = None  # None: the detector's own default
    boxes_from: Path | None = None
    mask_scale: float = DEFAULT_MASK_SCALE
    keep_metadata: str | None = None
    format: str | None = None
    quality: int | None = None
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_bytes: int = DEFAULT_MAX_BYTES
    report: Path | None = None
    sidecar: bool = False
    require_protected: bool = False  # do not write outputs the method could not protect (recorded as failed)
    progress: ProgressFn | None = None
    count_first: bool = True  # walk the inputs once to know the total (for ETA)

    def validate(self) -> None:
        if self.batch_size < 1:
            raise UsageError("--batch-size must be >= 1")
        if self.workers is not None and self.workers < 1:
            raise UsageError("--workers must be >= 1")
        if self.threads is not None and self.threads < 1:
            raise UsageError("--threads must be >= 1")
        if self.max_bytes < 1:
            raise UsageError("--max-bytes must be positive")
        if self.region not in ("faces", "image"):
            raise UsageError("--region must be 'faces' or 'image'")
        if not 0.5 <= self.mask_scale <= 4.0:
            raise UsageError("--mask-scale must be between 0.5 and 4")
        if self.max_pixels < 1:
            raise UsageError("--max-pixels must be positive")
        if self.quality is not None and not 1 <= self.quality <= 100:
            raise UsageError("--quality must be in 1..100")


@dataclass
class RunResult:
    """What a run returns to the API caller."""

    summary: RunSummary
    report_path: Path | None
    records_path: Path | None
    records: list[dict[str, Any]]

    @property
    def exit_code(self) -> int:
        return self.summary.exit_code


class _Interrupted(Exception):
    pass


def _output_path(job: Job, fmt_override: str | None) -> Path:
    if fmt_override is None:
        return job.output
    ext = EXTENSIONS[fmt_override]
    if job.output.suffix.lower() in (ext, ".jpeg" if ext == ".jpg" else ext, ".tiff" if ext == ".tif" else ext):
        return job.output
    return job.output.with_suffix(ext)


def _default_report_path(inputs: list[Path], output: Path | None) -> Path:
    if output is not None:
        return output / REPORT_NAME
    first = inputs[0]
    if first.is_dir():
        return OutputPlan(None).output_root_for(first) / REPORT_NAME
    return (first.parent if first.exists() else Path.cwd()) / REPORT_NAME


class FaceSource:
    """Gives each batch its faces: from ``--boxes-from`` or a detector."""

    def __init__(self, opts: ProtectOptions, device: str) -> None:
        self.boxes: dict[str, list[Face]] | None = None
        self.detector = None
        self.name = "none"
        if opts.boxes_from is not None:
            from .faces.detect import load_boxes

            loaded = load_boxes(opts.boxes_from)
            # Also index by bare file name so boxes keyed by another root's path still match.
            self.boxes = dict(loaded)
            for key, faces in loaded.items():
                self.boxes.setdefault(PurePosixPath(key).name, faces)
            self.name = f"boxes-from:{opts.boxes_from.name}"
        else:
            from .faces.detect import get_detector, resolve_detector

            name = resolve_detector(opts.detector)
            self.detector = get_detector(name, thresh=opts.detector_thresh, min_face=opts.min_face, device=device)
            self.name = name

    def __call__(self, items: list[ImageItem]) -> None:
        if self.boxes is not None:
            for it in items:
                rel = it.relative.as_posix()
                it.faces = list(self.boxes.get(rel, self.boxes.get(it.relative.name, [])))
            return
        assert self.detector is not None
        found = self.detector([it.pixels for it in items])
        for it, faces in zip(items, found):
            it.faces = list(faces)


def _record_base(job: Job, opts: ProtectOptions, run_id: str, status: str) -> ImageRecord:
    return ImageRecord(
        input=safe_path(job.source) or "",
        relative_path=safe_path(job.relative) or "",
        status=status,
        output=safe_path(job.output),
        method=opts.method,
        params=dict(opts.params),
        seed=opts.seed,
        tool_version=__version__,
        run_id=run_id,
    )


def _fail(rec: ImageRecord, code: str, message: str) -> ImageRecord:
    rec.status = "failed"
    rec.error = {"code": code, "message": message}
    rec.output = None
    rec.protected = None
    return rec


def protect(inputs: Iterable[str | Path], opts: ProtectOptions | None = None, **kwargs: Any) -> RunResult:
    """Protect every image found in ``inputs`` and write outputs plus a report.

    Keyword arguments override fields of ``opts``. Returns a :class:`RunResult`
    whose ``exit_code`` follows the documented convention (0 all processed, 1 some
    failed). Run-level problems raise :class:`~anonymize.errors.UsageError` before
    anything is written.

    Example (the bundled sample photos, whole images, into a temporary folder):
        >>> import tempfile
        >>> from importlib.resources import files
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     run = protect([files("anonymize") / "data" / "samples"], method="pixelate", region="image",
        ...                   output=Path(tmp))
        ...     run.exit_code, run.summary.ok, run.summary.protected
        (0, 2, 2)
    """
    opts = opts or ProtectOptions()
    for k, v in kwargs.items():
        if not hasattr(opts, k):
            raise UsageError(f"unknown option {k!r}")
        setattr(opts, k, v)
    opts.validate()
    inputs_l = [Path(os.fspath(i)) for i in inputs]
    if not inputs_l:
        raise UsageError("no inputs given")
    params = parse_params(METHODS.get(opts.method), opts.params)  # exit 2 on a bad --param, before any write
    spec, method = get_method(opts.method, params)
    opts = replace(opts, params=params.to_dict(changed_only=True))  # the records hold the typed values
    keep = parse_keep(opts.keep_metadata)
    fmt = resolve_format(opts.format)
    device = resolve_device(opts.device)
    plan = plan_threads(opts.threads, opts.workers)
    workers = plan.workers
    run_id = uuid.uuid4().hex[:12]

    # Fail fast on inputs that do not exist (usage error, exit 2) before writing anything.
    jobs_iter = discover(inputs_l, opts.output)
    first_jobs: list[Job] = []
    try:
        first_jobs.append(next(jobs_iter))
    except StopIteration:
        pass

    needs_faces = spec.needs_faces and opts.region == "faces"
    faces_src = FaceSource(opts, device) if needs_faces else None

    def all_jobs() -> Iterator[Job]:
        yield from first_jobs
        yield from jobs_iter

    total: int | None = None
    if opts.count_first and opts.progress is not None:
        total = sum(1 for _ in discover(inputs_l, opts.output))

    summary = RunSummary(
        command="protect",
        method=opts.method,
        params=dict(opts.params),
        device=device,
        seed=opts.seed,
        started=now_iso(),
        tool_version=__version__,
        run_id=run_id,
        metadata_policy=sorted(keep),
        output=safe_path(opts.output) if opts.output else None,
        threads=plan.to_dict(),
        max_bytes=opts.max_bytes,
    )
    ctx = MethodContext(device=device, seed=opts.seed, region=opts.region, mask_scale=opts.mask_scale, params=dict(opts.params), output_format=fmt, quality=opts.quality)
    t_start = time.perf_counter()

    if opts.dry_run:
        recs = []
        for job in all_jobs():
            out = _output_path(job, fmt)
            rec = _record_base(job, opts, run_id, "dry-run")
            rec.output = safe_path(out)
            if job.error:
                _fail(rec, "unreadable", job.error)
            else:
                rec.method_info = {"action": "skip (output exists)" if out.exists() and not opts.overwrite else "process"}
            summary.add(rec)
            recs.append(rec.to_dict())
            if opts.progress:
                opts.progress(summary.total, total, rec)
        summary.elapsed_s = time.perf_counter() - t_start
        summary.exit_code = EXIT_SOME_FAILED if summary.failed else EXIT_OK
        summary.finished = now_iso()
        return RunResult(summary, None, None, recs)

    report_path = opts.report or _default_report_path(inputs_l, opts.output)
    records_path = report_path.with_suffix(".jsonl")
    summary.report = safe_path(report_path)
    summary.records = safe_path(records_path)

    # Before any work: the output and report folders must take a file (exit 2 otherwise).
    if opts.output is not None:
        ensure_writable_dir(opts.output, "--output")
    ensure_writable_dir(report_path.parent, "--report folder" if opts.report else "report folder")
    try:
        writer = RecordWriter(records_path)
    except OSError as exc:
        raise OutputError(f"cannot write the records file {records_path}: {exc.strerror or exc}") from None
    cleaned_dirs: set[Path] = set()
    clean_lock = threading.Lock()
    prefetch = max(opts.batch_size * 2, workers * 2)
    done_lock = threading.Lock()
    written: dict[int, Path] = {}  # id(record) -> the output file it describes, until the record is written

    def emit(rec: ImageRecord) -> None:
        with done_lock:
            target = written.pop(id(rec), None)
            try:
                writer.write(rec)
            except DiskFull:
                # No record, no output: a re-run redoes this image instead of skipping an unrecorded file.
                if target is not None:
                    _remove_output(target, opts.sidecar)
                raise
            summary.add(rec)
            if opts.progress:
                opts.progress(summary.total, total, rec)

    def decode_job(job: Job) -> tuple[Job, ImageItem | None, bytes | None, ImageRecord]:
        rec = _record_base(job, opts, run_id, "ok")
        t0 = time.perf_counter()
        if job.error:
            code = "symlink-loop" if "symlink" in job.error else "unreadable"
            return job, None, None, _fail(rec, code, job.error)
        try:
            item, data = decode_file(job.source, job.relative, max_pixels=opts.max_pixels, max_bytes=opts.max_bytes)
        except ImageError as exc:
            return job, None, None, _fail(rec, exc.code, exc.message)
        except MemoryError:
            return job, None, None, _fail(rec, "too-large", "not enough memory to decode this image")
        rec.input_sha256 = sha256_bytes(data)
        rec.warnings.extend(item.warnings)
        rec.image = {"width": item.width, "height": item.height, "format": item.format, "mode": item.info.get("source_mode"), "has_alpha": item.alpha is not None}
        rec.timings["decode_s"] = round(time.perf_counter() - t0, 5)
        return job, item, None, rec

    def write_job(job: Job, item: ImageItem, out: MethodOutput, rec: ImageRecord) -> ImageRecord:
        t0 = time.perf_counter()
        try:
            data, ext, meta = encode_image(item, out.pixels, alpha=out.alpha, fmt=fmt, keep=keep, quality=opts.quality)
            out_fmt = output_format(item, fmt)
            target = job.output if out_fmt == item.format and fmt is None else job.output.with_suffix(ext)
            if target.resolve() == job.source.resolve():
                return _fail(rec, "output-is-input", "output path equals the input path; refusing to overwrite an input")
            d = target.parent
            with clean_lock:  # once per folder, before this run's first write there (writers run in threads)
                if d not in cleaned_dirs:
                    clean_stale_temporaries(d)
                    cleaned_dirs.add(d)
            atomic_write(target, data)
            written[id(rec)] = target
            rec.output = safe_path(target)
            rec.output_sha256 = sha256_bytes(data)
            rec.metadata = {"kept": meta.kept, "removed": meta.removed}
            if "all" in meta.kept:
                rec.warnings.append("--keep-metadata all: GPS, serial numbers and maker notes may be kept in the output")
            rec.timings["encode_s"] = round(time.perf_counter() - t0, 5)
            if opts.sidecar:
                side = target.with_name(target.name + SIDECAR_SUFFIX)
                try:
                    write_json_atomic(side, {"schema_version": rec.schema_version, "kind": "anonymize-provenance", **rec.to_dict()})
                except DiskFull:
                    written.pop(id(rec), None)
                    _remove_output(target, False)  # an output never goes without its provenance
                    raise
        except OutputError:
            raise  # disk full: the run stops (exit 2)
        except OSError as exc:
            if is_disk_full(exc):
                raise DiskFull(job.output, exc) from exc
            return _fail(rec, "write-failed", f"cannot write output: {exc.strerror or exc}")
        except Exception as exc:  # encoder errors are per file
            return _fail(rec, "encode-failed", f"cannot encode output: {exc}")
        return rec

    def run_method(batch: list[tuple[Job, ImageItem, ImageRecord]]) -> list[MethodOutput | Exception]:
        items = [b[1] for b in batch]
        try:
            outs = method(items, ctx)
            if len(outs) != len(items):
                raise RuntimeError(f"method returned {len(outs)} outputs for {len(items)} images")
            return list(outs)
        except AnonymizeError as exc:
            if not isinstance(exc, ImageError):
                raise
        except Exception:
            if len(items) == 1:
                raise
        # Isolate the failing image(s): retry one by one.
        results: list[MethodOutput | Exception] = []
        for it in items:
            try:
                results.append(method([it], ctx)[0])
            except (UsageError,):
                raise
            except Exception as exc:  # noqa: BLE001 - recorded per file
                results.append(exc)
        return results

    def process_batch(batch: list[tuple[Job, ImageItem, ImageRecord]], pending: deque[Future[ImageRecord]], pool: ThreadPoolExecutor) -> None:
        items = [b[1] for b in batch]
        if faces_src is not None:
            t0 = time.perf_counter()
            faces_src(items)
            dt = (time.perf_counter() - t0) / len(items)
            for _, it, rec in batch:
                rec.faces = [f.to_dict() for f in it.faces]
                rec.timings["detect_s"] = round(dt, 5)
        t0 = time.perf_counter()
        try:
            outs = run_method(batch)
        except Exception as exc:
            if isinstance(exc, UsageError):
                raise
            outs = [exc] * len(batch)
        dt = (time.perf_counter() - t0) / len(batch)
        for (job, item, rec), out in zip(batch, outs):
            rec.timings["method_s"] = round(dt, 5)
            if isinstance(out, Exception):
                msg = out.message if isinstance(out, ImageError) else f"{type(out).__name__}: {out}"
                emit(_fail(rec, getattr(out, "code", "method-failed"), msg))
                continue
            rec.protected = bool(out.protected)
            rec.method_info = _jsonable(out.info)
            if opts.require_protected and not rec.protected:
                reason = out.info.get("reason") if isinstance(out.info, dict) else None
                emit(_fail(rec, "not-protected", "the method did not protect this image"
                           + (f" ({reason})" if reason else "") + "; not written (--require-protected)"))
                continue
            pending.append(pool.submit(write_job, job, item, out, rec))
            while len(pending) > workers * 2:
                emit(pending.popleft().result())

    old_handler = None
    if threading.current_thread() is threading.main_thread():
        def _on_term(signum: int, frame: object) -> None:
            raise _Interrupted()

        old_handler = signal.signal(signal.SIGTERM, _on_term)

    interrupted = False
    aborted: OutputError | None = None
    threads_ctx = using_plan(plan)
    threads_ctx.__enter__()
    decode_pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode")
    write_pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="write")
    pending_writes: deque[Future[ImageRecord]] = deque()
    decoding: deque[Future[tuple[Job, ImageItem | None, bytes | None, ImageRecord]]] = deque()
    try:
        jobs = all_jobs()
        exhausted = False
        batch: list[tuple[Job, ImageItem, ImageRecord]] = []
        while True:
            while not exhausted and len(decoding) < prefetch:
                try:
                    job = next(jobs)
                except StopIteration:
                    exhausted = True
                    break
                out_path = _output_path(job, fmt)
                if not opts.overwrite and job.error is None and out_path.exists():
                    rec = _record_base(job, opts, run_id, "skipped")
                    rec.output = safe_path(out_path)
                    rec.method_info = {"reason": "output exists (use --overwrite to redo)"}
                    emit(rec)
                    continue
                decoding.append(decode_pool.submit(decode_job, job))
            if not decoding:
                break
            job, item, _, rec = decoding.popleft().result()
            if item is None:
                emit(rec)
            else:
                batch.append((job, item, rec))
            if len(batch) >= opts.batch_size or (exhausted and not decoding and batch):
                process_batch(batch, pending_writes, write_pool)
                batch = []
        if batch:
            process_batch(batch, pending_writes, write_pool)
        while pending_writes:
            emit(pending_writes.popleft().result())
    except (KeyboardInterrupt, _Interrupted):
        interrupted = True
    except OutputError as exc:  # the disk filled up: stop, keep what is finished
        aborted = exc
    finally:
        for f in decoding:
            f.cancel()
        decode_pool.shutdown(wait=True, cancel_futures=True)
        # Let in-flight writes finish (they are atomic) so their records are kept.
        while pending_writes:
            f = pending_writes.popleft()
            try:
                emit(f.result())
            except Exception:
                pass
        write_pool.shutdown(wait=True, cancel_futures=True)
        writer.close()
        if old_handler is not None:
            signal.signal(signal.SIGTERM, old_handler)
        threads_ctx.__exit__(None, None, None)  # a library caller gets its thread counts back

    summary.elapsed_s = round(time.perf_counter() - t_start, 4)
    processed = summary.ok + summary.failed
    summary.images_per_s = round(processed / summary.elapsed_s, 3) if summary.elapsed_s > 0 else 0.0
    summary.exit_code = EXIT_SOME_FAILED if summary.failed else EXIT_OK
    summary.finished = now_iso()
    if aborted is not None:
        summary.exit_code = EXIT_USAGE
        summary.aborted = str(aborted)
        try:
            doc = write_report(report_path, summary, records_path)
            write_provenance(provenance_roots(inputs_l, opts.output), summary.to_dict(), doc["images"], report_path, records_path)
        except (OutputError, OSError):
            pass  # the records file holds every finished image
        raise OutputError(f"{aborted}; stopped after {summary.ok} written image(s), whose outputs and records "
                          f"are kept in {records_path}; free space and re-run to resume") from aborted
    if interrupted:
        summary.exit_code = EXIT_INTERRUPTED
    doc = write_report(report_path, summary, records_path)
    # provenance next to the outputs, whatever --report says (evaluate reads the white-box flags from it)
    write_provenance(provenance_roots(inputs_l, opts.output), summary.to_dict(), doc["images"], report_path, records_path)
    if interrupted:
        raise KeyboardInterrupt("run interrupted; finished outputs and their records are kept, re-run to resume")
    return RunResult(summary, report_path, records_path, doc["images"])


def _remove_output(target: Path, sidecar: bool) -> None:
    """Remove an output (and its sidecar) whose record could not be written."""
    paths = [target] + ([target.with_name(target.name + SIDECAR_SUFFIX)] if sidecar else [])
    for p in paths:
        try:
            p.unlink()
        except OSError:
            pass


def _jsonable(obj: Any) -> Any:
    """Make method info JSON-safe (numpy scalars/arrays, paths, floats)."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, (np.floating, float)):
        v = float(obj)
        return v if np.isfinite(v) else None
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.bool_,)):
        return bool(obj)
    if isinstance(obj, Path):
        return safe_path(obj)
    return obj


__all__ = ["ProtectOptions", "RunResult", "protect", "METHODS"]

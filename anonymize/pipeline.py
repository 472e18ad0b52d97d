"""``anonymize protect``: options in, outputs plus records and a report out.

A run is a plain sequence of stages (:mod:`anonymize.stages`)::

    Plan (discover, resume) -> Decode -> Detect -> Protect -> Write -> Record

run by an engine (:mod:`anonymize.engines`: threads on this machine by default).
This module checks the options (exit 2 before anything is written), builds the
stages, hands them to the engine, and turns what the Record stage counted into
the summary, the report and the provenance file.

Example:
    >>> from anonymize.pipeline import ProtectOptions
    >>> ProtectOptions(method="blur").batch_size
    8
"""
from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from . import __version__
from .device import resolve_device
from .engines import ENGINES
from .engines.local import LocalEngine, Outcome
from .errors import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_SOME_FAILED,
    EXIT_USAGE,
    OutputError,
    UsageError,
)
from .io.decode import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS
from .io.discover import OutputPlan
from .io.encode import ensure_writable_dir, resolve_format, sync_filesystem
from .io.metadata import parse_keep
from .methods import METHODS, parse_params
from .records import (
    ImageRecord,
    RecordWriter,
    RunSummary,
    earlier_records,
    now_iso,
    provenance_roots,
    safe_path,
    write_provenance,
    write_report,
)
from .runtime_threads import plan_threads
from .stages import Plan, Record, StageConfig, Stages
from .stages.plan import planned_output
from .types import DEFAULT_MASK_SCALE

ProgressFn = Callable[[int, int | None, ImageRecord], None]
REPORT_NAME = "anonymize-report.json"


@dataclass
class ProtectOptions:
    """All options of a protect run (the CLI maps its flags onto these)."""

    method: str = "blur"
    params: dict[str, Any] = field(default_factory=dict)
    output: Path | None = None
    overwrite: bool = False  # redo every image, whatever exists
    skip_existing: bool = False  # keep existing outputs even without a trustworthy record (reported as unknown)
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
    engine: str = "local"  # local | ray (see anonymize.engines)
    ray_address: str | None = None  # join this Ray cluster (default: RAY_ADDRESS, else a local Ray)
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
        if self.engine not in ENGINES:
            raise UsageError(f"--engine must be one of {', '.join(ENGINES)}")
        if self.overwrite and self.skip_existing:
            raise UsageError("--overwrite and --skip-existing exclude each other")


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


def _default_report_path(inputs: list[Path], output: Path | None) -> Path:
    if output is not None:
        return output / REPORT_NAME
    first = inputs[0]
    if first.is_dir():
        return OutputPlan(None).output_root_for(first) / REPORT_NAME
    return (first.parent if first.exists() else Path.cwd()) / REPORT_NAME


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
    spec = METHODS.get(opts.method)
    params = parse_params(spec, opts.params)  # exit 2 on a bad --param, before any write
    opts = replace(opts, params=params.to_dict(changed_only=True))  # the records hold the typed values
    keep = parse_keep(opts.keep_metadata)
    run_id = uuid.uuid4().hex[:12]
    fmt = resolve_format(opts.format)
    cfg = StageConfig(method=opts.method, params=dict(opts.params), seed=opts.seed, region=opts.region,
                      mask_scale=opts.mask_scale, device=resolve_device(opts.device), needs_faces=spec.needs_faces,
                      detector=opts.detector, detector_thresh=opts.detector_thresh, min_face=opts.min_face,
                      boxes_from=opts.boxes_from, fmt=fmt, keep=keep, quality=opts.quality,
                      max_pixels=opts.max_pixels, max_bytes=opts.max_bytes, sidecar=opts.sidecar,
                      require_protected=opts.require_protected, run_id=run_id, settings=_settings(opts, spec, fmt, keep))
    threads = plan_threads(opts.threads, opts.workers)
    report_path = opts.report or _default_report_path(inputs_l, opts.output)
    records_path = report_path.with_suffix(".jsonl")
    roots = provenance_roots(inputs_l, opts.output)
    plan = Plan(inputs_l, cfg, output=opts.output, overwrite=opts.overwrite, skip_existing=opts.skip_existing,
                earlier=lambda: earlier_records(roots, records_path, exclude_run=run_id))  # a missing input: exit 2
    stages = Stages.build(cfg)  # models load once; missing weights: exit 2 before any write
    total = plan.count() if opts.count_first and opts.progress is not None else None
    summary = RunSummary(command="protect", method=opts.method, params=dict(opts.params), device=cfg.device,
                         seed=opts.seed, started=now_iso(), tool_version=__version__, run_id=run_id,
                         metadata_policy=sorted(keep), output=safe_path(opts.output) if opts.output else None,
                         threads=threads.to_dict(), max_bytes=opts.max_bytes)
    t_start = time.perf_counter()
    if opts.dry_run:
        return _dry_run(plan, summary, opts, total, t_start)

    summary.report, summary.records = safe_path(report_path), safe_path(records_path)
    # Before any work: the output and report folders must take a file (exit 2 otherwise).
    if opts.output is not None:
        ensure_writable_dir(opts.output, "--output")
    ensure_writable_dir(report_path.parent, "--report folder" if opts.report else "report folder")
    try:
        writer = RecordWriter(records_path)
    except OSError as exc:
        raise OutputError(f"cannot write the records file {records_path}: {exc.strerror or exc}") from None
    engine = _engine(opts, stages, cfg, threads)
    for root in roots:  # the run enters the provenance before its first output: a killed run's records stay findable
        root.mkdir(parents=True, exist_ok=True)
    write_provenance(roots, summary.to_dict(), [], report_path, records_path, status="running")
    try:
        outcome = engine.run(plan, Record(writer, summary, opts.progress, total))
    finally:
        writer.close()
        summary.engine = engine.describe()
        for root in {*roots, records_path.parent}:  # one flush instead of an fsync per output
            sync_filesystem(root)
    return _finish(outcome, summary, t_start, roots, opts, report_path, records_path)


def _engine(opts: ProtectOptions, stages: Stages, cfg: StageConfig, threads: Any) -> Any:
    if opts.engine == "ray":
        from .engines.ray import RayEngine

        del stages  # built on the driver only to fail fast (exit 2); Ray workers build their own
        return RayEngine(cfg, threads, opts.batch_size, opts.ray_address)
    return LocalEngine(stages, threads, opts.batch_size)


def _settings(opts: ProtectOptions, spec: Any, fmt: str | None, keep: frozenset[str]) -> dict[str, Any]:
    """What besides method, params and seed shapes an output (a resumed run compares it)."""
    faces = spec.needs_faces and opts.region == "faces"
    if faces and opts.boxes_from is None:
        from .faces.detect import resolve_detector

        detector: str | None = resolve_detector(opts.detector)
    else:
        detector = f"boxes-from:{Path(opts.boxes_from).name}" if faces and opts.boxes_from else None
    return {"region": opts.region, "mask_scale": opts.mask_scale if faces else None, "detector": detector,
            "format": fmt, "metadata": sorted(keep), "quality": opts.quality}


_ACTIONS = {"ok": "process", "skipped": "skip (output exists, recorded)",
            "unknown": "keep (output exists, no record matches it: unknown)"}


def _dry_run(plan: Plan, summary: RunSummary, opts: ProtectOptions, total: int | None, t_start: float) -> RunResult:
    """What a run would do, per file; nothing is written."""
    recs = []
    for task in plan:
        rec = task.rec
        if rec.status != "failed":
            rec.method_info = {"action": _ACTIONS[rec.status] if not rec.warnings or rec.status != "ok" else
                               "redo (output exists without a record that matches it)"}
            rec.status = "dry-run"
            rec.output = safe_path(planned_output(task.job, plan.cfg.fmt))
        summary.add(rec)
        recs.append(rec.to_dict())
        if opts.progress:
            opts.progress(summary.total, total, rec)
    summary.elapsed_s = time.perf_counter() - t_start
    summary.exit_code = exit_code(summary, False)
    summary.finished = now_iso()
    return RunResult(summary, None, None, recs)


def exit_code(summary: RunSummary, require_protected: bool) -> int:
    """0 when every image of the corpus is accounted for; 1 when some failed, or, with
    ``--require-protected``, when a kept output is not protected or not known to be."""
    bad = summary.failed or (require_protected and (summary.not_protected or summary.unknown))
    return EXIT_SOME_FAILED if bad else EXIT_OK


def _finish(outcome: Outcome, summary: RunSummary, t_start: float, roots: list[Path], opts: ProtectOptions,
            report_path: Path, records_path: Path) -> RunResult:
    """Summary, report and provenance of a finished, interrupted or aborted run; the exit code."""
    summary.elapsed_s = round(time.perf_counter() - t_start, 4)
    processed = summary.ok + summary.failed
    summary.images_per_s = round(processed / summary.elapsed_s, 3) if summary.elapsed_s > 0 else 0.0
    summary.exit_code = exit_code(summary, opts.require_protected)
    summary.finished = now_iso()
    if outcome.aborted is not None:
        summary.exit_code = EXIT_USAGE
        summary.aborted = str(outcome.aborted)
        try:
            doc = write_report(report_path, summary, records_path)
            write_provenance(roots, summary.to_dict(), doc["images"], report_path, records_path, status="aborted")
        except (OutputError, OSError):
            pass  # the records file holds every finished image
        raise OutputError(f"{outcome.aborted}; stopped after {summary.ok} written image(s), whose outputs and records "
                          f"are kept in {records_path}; free space and re-run to resume") from outcome.aborted
    if outcome.interrupted:
        summary.exit_code = EXIT_INTERRUPTED
    doc = write_report(report_path, summary, records_path)
    # provenance next to the outputs, whatever --report says (evaluate reads the white-box flags from it)
    write_provenance(roots, summary.to_dict(), doc["images"], report_path, records_path,
                     status="interrupted" if outcome.interrupted else "finished")
    if outcome.interrupted:
        raise KeyboardInterrupt("run interrupted; finished outputs and their records are kept, re-run to resume")
    return RunResult(summary, report_path, records_path, doc["images"])


__all__ = ["METHODS", "ProtectOptions", "RunResult", "protect"]

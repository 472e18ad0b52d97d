"""Plan stage: the inputs become a lazy stream of tasks, and each existing output gets a decision.

Runs in the driver, before any worker sees a task. A file discovery could not
read fails here. An output that already exists (resume) is:

- kept (``skipped``) when a trustworthy record describes it: the latest record of
  that output in the earlier runs' records (or its ``--sidecar`` file) whose
  ``output_sha256`` is the file's. The skipped record carries that record
  (protected, faces, method, params, hashes, ``written_by``); when the method,
  params, seed or settings differ from this request it lists them in ``stale``;
- redone when no trustworthy record describes it (never counted as protected);
  with ``skip_existing`` (an explicit ``--skip-existing``) it is kept instead and
  reported as ``unknown``;
- redone whatever its record with ``overwrite``.

Stale temporaries that killed runs left in an output folder are removed the
first time a task is planned into that folder, so before this run writes there
and never while one of its writers is busy.

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> d = Path(tempfile.mkdtemp())
    >>> _ = (d / "in").mkdir(), (d / "in" / "a.jpg").write_bytes(b"x")
    >>> [t.rec.status for t in Plan([d / "in"], StageConfig(method="blur"), output=d / "out")]
    ['ok']
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from .. import __version__
from ..io.discover import SIDECAR_SUFFIX, Job, discover
from ..io.encode import EXTENSIONS, clean_stale_temporaries
from ..records import ImageRecord, RecordIndex, safe_path
from .base import StageConfig, Task, fail

STALE = "stale for this request"
UNTRUSTED = "an output existed without a record that matches its content; redone"
UNKNOWN = ("output kept (--skip-existing) but no record matches its content: whether it is protected is "
           "unknown; --overwrite redoes it")


def planned_output(job: Job, fmt: str | None) -> Path:
    """Where ``job``'s output goes when ``--format`` is ``fmt`` (None: the input's own format)."""
    if fmt is None:
        return job.output
    ext = EXTENSIONS[fmt]
    if job.output.suffix.lower() in (ext, ".jpeg" if ext == ".jpg" else ext, ".tiff" if ext == ".tif" else ext):
        return job.output
    return job.output.with_suffix(ext)


class Plan:
    """Iterable of :class:`Task`, one per discovered file, in a stable order.

    Creating it checks the first input (a missing one raises UsageError, exit 2,
    before any model loads or file is written).
    """

    def __init__(self, inputs: list[Path], cfg: StageConfig, *, output: Path | None = None, overwrite: bool = False,
                 skip_existing: bool = False, earlier: Callable[[], RecordIndex] | None = None) -> None:
        self.inputs, self.cfg, self.output = inputs, cfg, output
        self.overwrite, self.skip_existing = overwrite, skip_existing
        self.earlier = earlier  # builds the index of earlier records, on the first existing output
        self._index: RecordIndex | None = None
        self._jobs = discover(inputs, output)
        self._first = next(self._jobs, None)
        self._cleaned: set[Path] = set()

    def jobs(self) -> Iterator[Job]:
        if self._first is not None:
            yield self._first
        yield from self._jobs

    def count(self) -> int:
        """How many files the inputs hold (a second walk, for progress totals)."""
        return sum(1 for _ in discover(self.inputs, self.output))

    def __iter__(self) -> Iterator[Task]:
        for job in self.jobs():
            yield self.decide(job)

    def decide(self, job: Job) -> Task:
        task = Task.start(job, self.cfg)
        if job.error:
            return fail(task, "symlink-loop" if "symlink" in job.error else "unreadable", job.error)
        out = planned_output(job, self.cfg.fmt)
        if not self.overwrite and out.exists():
            earlier = self.trusted_record(out)
            if earlier is not None:
                return self.keep(task, out, earlier)
            if self.skip_existing:
                task.rec.status, task.rec.output = "unknown", safe_path(out)
                task.rec.warnings.append(UNKNOWN)
                return task
            task.rec.warnings.append(UNTRUSTED)
        if out.parent not in self._cleaned:
            clean_stale_temporaries(out.parent)
            self._cleaned.add(out.parent)
        return task

    def trusted_record(self, out: Path) -> dict[str, Any] | None:
        """The record that describes the file ``out`` as it is on disk, or None."""
        if self._index is None:
            self._index = self.earlier() if self.earlier is not None else RecordIndex([])
        cands = [self._index.lookup(out), _sidecar(out)]
        cands = [c for c in cands if c and c.get("output_sha256")]
        if not cands:
            return None
        digest = _sha256_file(out)
        return next((c for c in cands if c["output_sha256"] == digest), None)

    def keep(self, task: Task, out: Path, earlier: dict[str, Any]) -> Task:
        """``task`` becomes the skipped record of ``out``: the earlier record, for this run."""
        rec = ImageRecord.from_dict(earlier)
        rec.input, rec.relative_path, rec.output = task.rec.input, task.rec.relative_path, safe_path(out)
        rec.status, rec.error, rec.timings = "skipped", None, {}
        rec.written_by = earlier.get("written_by") or earlier.get("run_id")
        rec.run_id, rec.tool_version, rec.schema_version = self.cfg.run_id, __version__, task.rec.schema_version
        rec.stale = self.differences(earlier) or None
        rec.warnings = [w for w in rec.warnings if not w.startswith(STALE)]
        if rec.stale:
            note = f"{STALE}: {', '.join(rec.stale)} differ from run {rec.written_by} that wrote it (--overwrite redoes it)"
            rec.warnings = [*rec.warnings, note]
        task.rec = rec
        return task

    def differences(self, earlier: dict[str, Any]) -> list[str]:
        """What the run that wrote an output did differently from this request."""
        now = {"method": self.cfg.method, "params": self.cfg.params, "seed": self.cfg.seed}
        diff = [k for k, v in now.items() if _canon(earlier.get(k)) != _canon(v)]
        then = earlier.get("settings") or {}  # records older than schema 1.2 have none
        return diff + [k for k, v in self.cfg.settings.items() if k in then and _canon(then[k]) != _canon(v)]


def _canon(v: Any) -> str:
    return json.dumps(v, sort_keys=True, default=str)


def _sha256_file(path: Path) -> str | None:
    h = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    except OSError:
        return None
    return h.hexdigest()


def _sidecar(out: Path) -> dict[str, Any] | None:
    """The record a ``--sidecar`` file beside ``out`` carries, if any."""
    side = out.with_name(out.name + SIDECAR_SUFFIX)
    try:
        d = json.loads(side.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return d if isinstance(d, dict) and d.get("kind") == "anonymize-provenance" else None

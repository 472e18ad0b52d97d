"""Plan stage: the inputs become a lazy stream of tasks, and each existing output gets a decision.

Runs in the driver, before any worker sees a task. A file discovery could not
read fails here; an output that already exists is kept (skipped) unless
``overwrite``. Stale temporaries that killed runs left in an output folder are
removed the first time a task is planned into that folder, so before this run
writes there and never while one of its writers is busy.

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> d = Path(tempfile.mkdtemp())
    >>> _ = (d / "in").mkdir(), (d / "in" / "a.jpg").write_bytes(b"x")
    >>> [t.rec.status for t in Plan([d / "in"], StageConfig(method="blur"), output=d / "out")]
    ['ok']
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from ..io.discover import Job, discover
from ..io.encode import EXTENSIONS, clean_stale_temporaries
from ..records import safe_path
from .base import StageConfig, Task, fail

SKIP_REASON = "output exists (use --overwrite to redo)"


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

    def __init__(self, inputs: list[Path], cfg: StageConfig, *, output: Path | None = None,
                 overwrite: bool = False) -> None:
        self.inputs, self.cfg, self.output, self.overwrite = inputs, cfg, output, overwrite
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
            task.rec.status = "skipped"
            task.rec.output = safe_path(out)
            task.rec.method_info = {"reason": SKIP_REASON}
            return task
        if out.parent not in self._cleaned:
            clean_stale_temporaries(out.parent)
            self._cleaned.add(out.parent)
        return task

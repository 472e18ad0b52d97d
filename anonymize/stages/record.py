"""Record stage: the one consumer that finishes every task, in the engine's driver.

For each task: its record line reaches the JSONL (one ``write``, straight to the
file, so it survives the process being killed), then its staged files are
renamed into place, then the run summary counts it. An output therefore never
exists without its record; a kill between the two leaves a record whose output
is missing, and a re-run redoes that image. A record that cannot be written
(disk full) takes its staged output with it and stops the run.

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> from anonymize.io.discover import Job
    >>> from anonymize.records import RecordWriter, RunSummary
    >>> from anonymize.stages.base import StageConfig, Task
    >>> d = Path(tempfile.mkdtemp())
    >>> rec = Record(RecordWriter(d / "r.jsonl"), RunSummary("protect", "blur", {}))
    >>> rec(Task.start(Job(d / "a.jpg", Path("a.jpg"), d / "o.jpg"), StageConfig(method="blur"), status="skipped"))
    >>> rec.summary.skipped, len((d / "r.jsonl").read_text().splitlines())
    (1, 1)
"""
from __future__ import annotations

import os
import signal
from collections.abc import Callable

from ..io.encode import DiskFull, is_disk_full, publish
from ..records import ImageRecord, RecordWriter, RunSummary
from .base import Task, fail

ProgressFn = Callable[[int, "int | None", ImageRecord], None]
FAULT_ENV = "ANONYMIZE_FAULT"
"""Test-only fault seam: ``POINT:N`` kills this process (SIGKILL) at the N-th task reaching ``POINT``,
one of ``staged`` (output staged, record not written), ``recorded`` (record written, output not
yet renamed into place) or ``published`` (both done). Unset in normal use."""


class Record:
    """``__call__(task)``: record, publish, count. Not thread-safe by design: one consumer per run."""

    def __init__(self, writer: RecordWriter, summary: RunSummary, progress: ProgressFn | None = None,
                 total: int | None = None) -> None:
        self.writer, self.summary, self.progress, self.total = writer, summary, progress, total
        point, _, n = os.environ.get(FAULT_ENV, "").partition(":")
        self._fault = (point, int(n or 1)) if point else None
        self._seen: dict[str, int] = {}

    def __call__(self, task: Task) -> None:
        if task.staged:
            self._checkpoint("staged")
        try:
            self.writer.write(task.rec)
        except BaseException:
            task.discard_staged()  # no record, no output: a re-run redoes this image
            raise
        if task.staged:
            self._checkpoint("recorded")
            self._publish(task)
            self._checkpoint("published")
        self.summary.add(task.rec)
        if self.progress is not None:
            self.progress(self.summary.total, self.total, task.rec)

    def _publish(self, task: Task) -> None:
        try:
            for tmp, final in task.staged:
                publish(tmp, final)
        except OSError as exc:  # the rename itself failed: say so in a later record that supersedes the first
            for _, final in task.staged[:-1]:
                try:
                    final.unlink()
                except OSError:
                    pass
            fail(task, "write-failed", f"cannot move the output into place: {exc.strerror or exc}")
            try:
                self.writer.write(task.rec)
            finally:
                if is_disk_full(exc):
                    raise DiskFull(task.job.output, exc) from exc
        task.staged = []

    def _checkpoint(self, point: str) -> None:
        if self._fault is None or self._fault[0] != point:
            return
        self._seen[point] = self._seen.get(point, 0) + 1
        if self._seen[point] >= self._fault[1]:
            os.kill(os.getpid(), signal.SIGKILL)

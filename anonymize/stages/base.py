"""What flows between the stages: a :class:`Task` per input file, and the run's :class:`StageConfig`.

A task carries its :class:`~anonymize.io.discover.Job`, its record (which every
stage fills in), and the data in flight: the decoded item, the method's output,
and finally the staged (written, not yet published) files. A task whose record
is no longer ``ok`` (failed, skipped, unknown, dry-run) is finished: every stage
passes it through untouched. Tasks and the config are plain picklable data, so
the same stages run in threads (``engines.local``) or in Ray workers (``engines.ray``).

Example:
    >>> from pathlib import Path
    >>> from anonymize.io.discover import Job
    >>> t = Task.start(Job(Path("in/a.jpg"), Path("a.jpg"), Path("out/a.jpg")), StageConfig(method="blur"))
    >>> t.live, fail(t, "unreadable", "gone").live, t.rec.error["code"]
    (True, False, 'unreadable')
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import __version__
from ..io.decode import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS
from ..io.discover import Job
from ..io.encode import discard
from ..records import ImageRecord, safe_path
from ..types import DEFAULT_MASK_SCALE, ImageItem


@dataclass(frozen=True)
class StageConfig:
    """Everything the stages need to know about the run (picklable; no callbacks, no open files).

    ``fmt`` is a Pillow format name or None (same as the input); ``keep`` the metadata allow-list;
    ``settings`` what else shapes an output (region, mask scale, detector, format, metadata policy):
    records carry it so a resumed run can tell whether an existing output is stale.
    """

    method: str
    params: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    region: str = "faces"
    mask_scale: float = DEFAULT_MASK_SCALE
    device: str = "cpu"
    needs_faces: bool = True
    detector: str | None = None
    detector_thresh: float | None = None
    min_face: int | None = None
    boxes_from: Path | None = None
    fmt: str | None = None
    keep: frozenset[str] = frozenset()
    quality: int | None = None
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_bytes: int = DEFAULT_MAX_BYTES
    sidecar: bool = False
    require_protected: bool = False
    run_id: str = ""
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def detects(self) -> bool:
        """True when the run needs faces from a detector or ``--boxes-from``."""
        return self.needs_faces and self.region == "faces"


@dataclass
class Task:
    """One input file on its way through the stages."""

    job: Job
    rec: ImageRecord
    item: ImageItem | None = None
    result: Any = None  # the method's MethodOutput
    staged: list[tuple[Path, Path]] = field(default_factory=list)  # (temporary, final name), published in order

    @classmethod
    def start(cls, job: Job, cfg: StageConfig, status: str = "ok") -> Task:
        rec = ImageRecord(input=safe_path(job.source) or "", relative_path=safe_path(job.relative) or "", status=status,
                          output=safe_path(job.output), method=cfg.method, params=dict(cfg.params), seed=cfg.seed,
                          tool_version=__version__, run_id=cfg.run_id, settings=dict(cfg.settings))
        return cls(job, rec)

    @property
    def live(self) -> bool:
        """Still being processed (its record says ``ok``)."""
        return self.rec.status == "ok"

    def release(self) -> None:
        """Drop the pixels once they are encoded: a task travels back to the record stage light."""
        self.item = None
        self.result = None

    def discard_staged(self) -> None:
        """Remove staged files that will never be published."""
        for tmp, _ in self.staged:
            discard(tmp)
        self.staged = []


def fail(task: Task, code: str, message: str) -> Task:
    """Mark ``task`` failed with an error code (its output, if any was staged, is dropped)."""
    rec = task.rec
    rec.status = "failed"
    rec.error = {"code": code, "message": message}
    rec.output = None
    rec.protected = None
    task.discard_staged()
    task.release()
    return task


def live(tasks: list[Task]) -> list[Task]:
    return [t for t in tasks if t.live]

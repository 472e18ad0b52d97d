"""Write stage: encode each live task's output and stage it in a synced temporary beside its final name.

Nothing is published here: the record stage writes the task's record first and
only then renames the staged files into place, so an output on disk always has
its record. Files are not fsynced one by one; the run flushes its output file
systems once at its end (see :func:`~anonymize.io.encode.write_temporary`). Output format, metadata policy and the ``--sidecar`` provenance file
are decided here; encoder errors and unwritable files fail the task
(``encode-failed``, ``write-failed``, ``output-is-input``), a full disk
(:class:`~anonymize.io.encode.DiskFull`) stops the run.

Example:
    >>> import numpy as np, tempfile
    >>> from pathlib import Path
    >>> from anonymize.io.discover import Job
    >>> from anonymize.methods import MethodOutput
    >>> from anonymize.stages.base import StageConfig, Task
    >>> from anonymize.types import ImageItem
    >>> out = Path(tempfile.mkdtemp()) / "a.png"
    >>> t = Task.start(Job(Path("a.png"), Path("a.png"), out), StageConfig(method="solid"))
    >>> t.item = ImageItem(Path("a.png"), Path("a.png"), np.zeros((4, 4, 3), np.uint8))
    >>> t.result = MethodOutput(pixels=t.item.pixels, protected=True)
    >>> t, = Write(StageConfig(method="solid"))([t])
    >>> [final.name for _, final in t.staged], out.exists()
    (['a.png'], False)
"""
from __future__ import annotations

import json
import os
import time

from ..errors import OutputError
from ..io.discover import SIDECAR_SUFFIX
from ..io.encode import (
    DiskFull,
    encode_image,
    is_disk_full,
    output_format,
    write_temporary,
)
from ..records import safe_path, sha256_bytes
from .base import StageConfig, Task, fail


class Write:
    """``__call__(tasks) -> tasks``: every live task ends with ``staged`` files and a complete record."""

    def __init__(self, cfg: StageConfig) -> None:
        self.fmt, self.keep, self.quality, self.sidecar = cfg.fmt, cfg.keep, cfg.quality, cfg.sidecar

    def __call__(self, tasks: list[Task]) -> list[Task]:
        for t in tasks:
            if t.live and t.result is not None:
                self.one(t)
        return tasks

    def one(self, task: Task) -> Task:
        job, item, out, rec = task.job, task.item, task.result, task.rec
        t0 = time.perf_counter()
        try:
            data, ext, meta = encode_image(item, out.pixels, alpha=out.alpha, fmt=self.fmt, keep=self.keep,
                                           quality=self.quality)
            same = output_format(item, self.fmt) == item.format and self.fmt is None
            target = job.output if same else job.output.with_suffix(ext)
            if target.exists() and os.path.samefile(target, job.source):  # stat, not realpath: 0.4 ms an image
                return fail(task, "output-is-input", "output path equals the input path; refusing to overwrite an input")
            rec.output = safe_path(target)
            rec.output_sha256 = sha256_bytes(data)
            rec.written_by = rec.run_id
            rec.metadata = {"kept": meta.kept, "removed": meta.removed}
            if "all" in meta.kept:
                rec.warnings.append("--keep-metadata all: GPS, serial numbers and maker notes may be kept in the output")
            rec.timings["encode_s"] = round(time.perf_counter() - t0, 5)
            if self.sidecar:  # published before the output: an output never goes without its provenance
                side = target.with_name(target.name + SIDECAR_SUFFIX)
                doc = {"schema_version": rec.schema_version, "kind": "anonymize-provenance", **rec.to_dict()}
                text = json.dumps(doc, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
                task.staged.append((write_temporary(side, text.encode("utf-8"), sync=False), side))
            task.staged.append((write_temporary(target, data, sync=False), target))
        except OutputError:
            task.discard_staged()
            raise  # disk full: the run stops (exit 2)
        except OSError as exc:
            task.discard_staged()
            if is_disk_full(exc):
                raise DiskFull(job.output, exc) from exc
            return fail(task, "write-failed", f"cannot write output: {exc.strerror or exc}")
        except Exception as exc:  # noqa: BLE001 - encoder errors are per file
            return fail(task, "encode-failed", f"cannot encode output: {exc}")
        finally:
            task.release()
        return task

"""Detect stage: faces for each live task, from ``--boxes-from`` or a detector loaded once.

Example (boxes given by the caller, no model):
    >>> import json, tempfile
    >>> from pathlib import Path
    >>> boxes = Path(tempfile.mkdtemp()) / "b.json"
    >>> _ = boxes.write_text(json.dumps({"images": [{"relative_path": "a.jpg", "faces": [{"box": [1, 2, 3, 4]}]}]}))
    >>> Detect(boxes_from=boxes).name
    'boxes-from:b.json'
"""
from __future__ import annotations

import time
from pathlib import Path, PurePosixPath
from typing import Any

from ..types import Face
from .base import Task, live


class Detect:
    """``__call__(tasks) -> tasks``: sets ``item.faces`` and the record's ``faces`` on every live task.

    ``boxes_from``: a boxes JSON (ours or COCO), matched by relative path, then by file name;
    otherwise the detector ``detector`` (None: the registry's default) is built once here.
    """

    def __init__(self, detector: str | None = None, *, thresh: float | None = None, min_face: int | None = None,
                 device: str = "cpu", boxes_from: Path | None = None, landmarks68: bool = False) -> None:
        self.boxes: dict[str, list[Face]] | None = None
        self.detector: Any = None
        if boxes_from is not None:
            from ..faces.detect import load_boxes

            loaded = load_boxes(Path(boxes_from))
            self.boxes = dict(loaded)  # also by bare file name, so boxes keyed by another root's path match
            for key, faces in loaded.items():
                self.boxes.setdefault(PurePosixPath(key).name, faces)
            self.name = f"boxes-from:{Path(boxes_from).name}"
        else:
            from ..faces.detect import get_detector, resolve_detector

            self.name = resolve_detector(detector)
            self.detector = get_detector(self.name, thresh=thresh, min_face=min_face, device=device, landmarks68=landmarks68)

    def __call__(self, tasks: list[Task]) -> list[Task]:
        todo = live(tasks)
        if not todo:
            return tasks
        t0 = time.perf_counter()
        if self.boxes is not None:
            found = [self.boxes.get(t.job.relative.as_posix(), self.boxes.get(t.job.relative.name, [])) for t in todo]
        else:
            found = self.detector([t.item.pixels for t in todo])
        dt = round((time.perf_counter() - t0) / len(todo), 5)
        for t, faces in zip(todo, found):
            t.item.faces = list(faces)
            t.rec.faces = [f.to_dict() for f in faces]
            t.rec.timings["detect_s"] = dt
        return tasks

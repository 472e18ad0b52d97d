"""Read face boxes produced elsewhere (``--boxes-from``): our JSON or COCO.

Keys of the returned mapping are relative paths (posix) as written in the
file, and also bare file names, so boxes match whichever the pipeline sees.

Example:
    >>> import json, tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "b.json"
    >>> _ = p.write_text(json.dumps({"images": [{"relative_path": "a.jpg", "faces": [{"box": [1, 2, 3, 4], "score": 0.9}]}]}))
    >>> load_boxes(p)["a.jpg"][0].box
    (1.0, 2.0, 3.0, 4.0)
"""
from __future__ import annotations

import json
from pathlib import Path, PurePosixPath

from ..errors import UsageError
from ..types import Face


def load_boxes(path: Path) -> dict[str, list[Face]]:
    """Parse ``path``; raises UsageError with a clear message when the file is not usable."""
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"--boxes-from {path}: file not found") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise UsageError(f"--boxes-from {path}: not a readable JSON file ({exc})") from None
    out: dict[str, list[Face]] = {}
    try:
        if isinstance(doc, dict) and "annotations" in doc and "images" in doc:
            _from_coco(doc, out)
        elif isinstance(doc, dict) and "images" in doc:
            for img in doc["images"]:
                key = img.get("relative_path") or img.get("path") or img.get("input")
                if not key:
                    raise ValueError("an image entry has no relative_path/path")
                faces = [Face.from_dict({"detector": "boxes-from", **f}) for f in img.get("faces", [])]
                _put(out, str(key), faces)
        else:
            raise ValueError("expected our detect JSON ({'images': [...]}) or COCO ({'images', 'annotations'})")
    except (KeyError, TypeError, ValueError) as exc:
        raise UsageError(f"--boxes-from {path}: {exc}") from None
    return out


def _put(out: dict[str, list[Face]], key: str, faces: list[Face]) -> None:
    posix = PurePosixPath(key.replace("\\", "/")).as_posix()
    out.setdefault(posix, []).extend(faces)
    name = PurePosixPath(posix).name
    if name != posix:
        out.setdefault(name, []).extend(faces)


def _from_coco(doc: dict, out: dict[str, list[Face]]) -> None:
    cats = {c["id"]: str(c.get("name", "")).lower() for c in doc.get("categories", [])}
    wanted = {cid for cid, n in cats.items() if n in ("face", "faces", "human face", "person_face")}
    if not wanted:
        wanted = {cid for cid, n in cats.items() if n in ("person", "head")}
    files = {im["id"]: im["file_name"] for im in doc["images"]}
    per: dict[int, list[Face]] = {}
    for ann in doc["annotations"]:
        if wanted and ann.get("category_id") not in wanted:
            continue
        x, y, w, h = (float(v) for v in ann["bbox"])
        per.setdefault(ann["image_id"], []).append(Face(box=(x, y, x + w, y + h), score=float(ann.get("score", 1.0)), detector="coco"))
    for iid, faces in per.items():
        if iid in files:
            _put(out, files[iid], faces)

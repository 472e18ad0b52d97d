"""Turn the user's inputs (files, folders, globs) into a stream of work.

Folders are walked recursively (directory symlinks followed once, loops
detected); only files with an image extension are taken from folders, while a
file named explicitly is always tried. The tool's own outputs are never
picked up again: anything under the output folder, files named
``*.anonymized.<ext>``, folders named ``*_anonymized`` and temporary files.

Example:
    >>> from pathlib import Path
    >>> plan = plan_outputs([Path("photos")], output=None)
    >>> plan.output_root_for(Path("photos"))
    PosixPath('photos_anonymized')
"""
from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from ..errors import UsageError

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".jpe", ".png", ".webp", ".tif", ".tiff", ".bmp", ".gif", ".ppm", ".pgm", ".pbm"}
OUTPUT_DIR_SUFFIX = "_anonymized"
OUTPUT_FILE_TAG = ".anonymized"
TMP_MARK = ".anonymize-tmp-"
SIDECAR_SUFFIX = ".anonymize.json"


@dataclass(frozen=True)
class Job:
    """One input file and where its output goes.

    ``relative`` is the path inside its input root; it keys resumes, seeds and
    the pairing done by ``evaluate``.
    """

    source: Path
    relative: Path
    output: Path
    error: str | None = None  # discovery-time problem (e.g. symlink loop), recorded per file


def is_own_output(path: Path) -> bool:
    """True for files the tool itself writes (outputs, temporaries, sidecars)."""
    name = path.name
    if TMP_MARK in name or name.endswith(SIDECAR_SUFFIX):
        return True
    stem = Path(name).stem
    if stem.endswith(OUTPUT_FILE_TAG):
        return True
    return any(part.endswith(OUTPUT_DIR_SUFFIX) for part in path.parts[:-1])


@dataclass
class OutputPlan:
    """Maps input roots to output locations."""

    output: Path | None

    def output_root_for(self, root: Path) -> Path:
        if self.output is not None:
            return self.output
        return root.with_name(root.name + OUTPUT_DIR_SUFFIX)

    def output_for_file(self, file: Path) -> Path:
        """Output of a file given directly (not inside a folder input)."""
        if self.output is not None:
            return self.output / file.name
        return file.with_name(file.stem + OUTPUT_FILE_TAG + file.suffix)


def plan_outputs(inputs: list[Path], output: Path | None) -> OutputPlan:
    return OutputPlan(output=output)


def _walk(root: Path, skip: list[Path]) -> Iterator[tuple[Path, str | None]]:
    """Yield (file, error) below root, following dir symlinks once; errors for loops."""
    seen: set[tuple[int, int]] = set()
    stack = [root]
    skip_resolved = [s.resolve() for s in skip]
    while stack:
        d = stack.pop()
        try:
            st = d.stat()
        except OSError as exc:
            yield d, f"unreadable folder: {exc.strerror or exc}"
            continue
        key = (st.st_dev, st.st_ino)
        if key in seen:
            continue  # a directory symlink pointing back up: already walked
        seen.add(key)
        try:
            entries = sorted(os.scandir(d), key=lambda e: e.name)
        except OSError as exc:
            yield d, f"unreadable folder: {exc.strerror or exc}"
            continue
        subdirs: list[Path] = []
        for e in entries:
            p = Path(e.path)
            try:
                is_dir = e.is_dir(follow_symlinks=True)
            except OSError:
                is_dir = False
            if is_dir:
                if p.name.endswith(OUTPUT_DIR_SUFFIX) or p.name.startswith("."):
                    continue
                if any(_same_or_inside(p, s) for s in skip_resolved):
                    continue
                subdirs.append(p)
                continue
            if e.is_symlink():
                try:
                    p.stat()
                except OSError as exc:
                    if p.suffix.lower() in IMAGE_EXTENSIONS:
                        yield p, f"broken or looping symlink: {exc.strerror or exc}"
                    continue
            if p.suffix.lower() not in IMAGE_EXTENSIONS or is_own_output(p):
                continue
            yield p, None
        stack.extend(reversed(subdirs))


def _same_or_inside(p: Path, other: Path) -> bool:
    try:
        rp = p.resolve()
    except OSError:
        return False
    return rp == other or other in rp.parents


def discover(inputs: list[str | Path], output: Path | None = None) -> Iterator[Job]:
    """Expand inputs to jobs, lazily, in a stable order.

    Raises ``UsageError`` when an input matches nothing.
    """
    if not inputs:
        raise UsageError("no inputs given")
    plan = plan_outputs([Path(i) for i in inputs], output)
    skip = [output] if output is not None else []
    seen: set[Path] = set()
    outputs: set[Path] = set()

    def make(source: Path, rel: Path, out: Path, err: str | None) -> Job:
        key = out.absolute()
        if err is None and key in outputs:
            err = f"output collision: another input already writes {out}"
        outputs.add(key)
        return Job(source=source, relative=rel, output=out, error=err)

    for raw in inputs:
        raw_s = os.fspath(raw)
        matches: list[Path]
        p = Path(raw_s)
        if p.exists() or p.is_symlink():
            matches = [p]
        elif glob.has_magic(raw_s):
            matches = [Path(m) for m in sorted(glob.glob(raw_s, recursive=True))]
            if not matches:
                raise UsageError(f"input pattern {raw_s!r} matches no file")
        else:
            raise UsageError(f"input {raw_s!r} does not exist")
        for m in matches:
            if m.is_dir():
                root_out = plan.output_root_for(m)
                if root_out.resolve() == m.resolve():
                    raise UsageError(f"--output {root_out} is the input folder itself; inputs are never overwritten")
                for f, err in _walk(m, skip + [root_out]):
                    rel = f.relative_to(m)
                    key = f.absolute()
                    if key in seen:
                        continue
                    seen.add(key)
                    yield make(f, rel, root_out / rel, err)
            else:
                if glob.has_magic(raw_s) and (is_own_output(m) or m.suffix.lower() not in IMAGE_EXTENSIONS):
                    continue
                key = m.absolute()
                if key in seen:
                    continue
                seen.add(key)
                err = None
                try:
                    m.stat()
                except OSError as exc:
                    err = f"broken or looping symlink: {exc.strerror or exc}"
                out = plan.output_for_file(m)
                if err is None and out.absolute() == m.absolute():
                    err = "output would overwrite the input; choose another --output"
                yield make(m, Path(m.name), out, err)

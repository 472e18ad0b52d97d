"""Per-image records and the run summary; JSONL streaming and the JSON schema.

Records stream to ``<report>.jsonl`` as images finish (one line each,
flushed), so an interrupted run keeps what it did. At the end the summary
document ``<report>`` holds ``summary`` plus the ``images`` of this run.

Example:
    >>> r = ImageRecord(input="a.jpg", relative_path="a.jpg", status="ok")
    >>> r.to_dict()["status"]
    'ok'
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Iterator

SCHEMA_VERSION = "1.1"
"""1.1 added to the run summary: ``threads`` (the thread plan), ``max_bytes`` and ``aborted``."""
STATUSES = ("ok", "skipped", "failed", "dry-run")


def safe_path(p: Path | str | None) -> str | None:
    """A path as a JSON-safe string: undecodable bytes become \\xNN escapes."""
    if p is None:
        return None
    raw = os.fsencode(os.fspath(p))
    return raw.decode("utf-8", "backslashreplace")


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class ImageRecord:
    """Everything the report says about one input image."""

    input: str
    relative_path: str
    status: str
    output: str | None = None
    input_sha256: str | None = None
    output_sha256: str | None = None
    error: dict[str, str] | None = None
    method: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    seed: int | None = None
    protected: bool | None = None
    faces: list[dict[str, Any]] = field(default_factory=list)
    image: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    weights: list[dict[str, str]] = field(default_factory=list)
    method_info: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    tool_version: str = ""
    run_id: str = ""
    schema_version: str = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class RunSummary:
    """The run as a whole."""

    command: str
    method: str | None
    params: dict[str, Any]
    total: int = 0
    ok: int = 0
    skipped: int = 0
    failed: int = 0
    dry_run: int = 0
    faces: int = 0
    protected: int = 0
    not_protected: int = 0
    elapsed_s: float = 0.0
    images_per_s: float = 0.0
    exit_code: int = 0
    output: str | None = None
    report: str | None = None
    records: str | None = None
    device: str = "cpu"
    seed: int = 0
    started: str = ""
    finished: str = ""
    tool_version: str = ""
    run_id: str = ""
    metadata_policy: list[str] = field(default_factory=list)
    errors_by_code: dict[str, int] = field(default_factory=dict)
    threads: dict[str, Any] = field(default_factory=dict)
    max_bytes: int | None = None
    aborted: str | None = None
    schema_version: str = SCHEMA_VERSION

    def add(self, rec: ImageRecord) -> None:
        self.total += 1
        key = rec.status.replace("-", "_")
        setattr(self, key, getattr(self, key) + 1)
        self.faces += len(rec.faces)
        if rec.status == "ok":
            if rec.protected:
                self.protected += 1
            elif rec.protected is False:
                self.not_protected += 1
        if rec.error:
            code = rec.error.get("code", "error")
            self.errors_by_code[code] = self.errors_by_code.get(code, 0) + 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


class RecordWriter:
    """Appends records to a JSONL file, one whole line per record, each written straight to the file.

    A line that cannot be written completely (disk full) is cut back off, so the file
    only ever holds whole records; the error is raised (:class:`~anonymize.io.encode.DiskFull`
    when the disk, a quota or the file-size limit is full).
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._fd: int | None = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
            size = os.fstat(self._fd).st_size
            if size:  # a line torn by a killed run must not swallow this run's first record
                with open(path, "rb") as fh:
                    fh.seek(size - 1)
                    if fh.read(1) != b"\n":
                        os.write(self._fd, b"\n")

    def write(self, rec: ImageRecord) -> None:
        if self._fd is None:
            return
        line = (json.dumps(rec.to_dict(), ensure_ascii=False, allow_nan=False) + "\n").encode("utf-8")
        start = os.fstat(self._fd).st_size
        view = memoryview(line)
        try:
            while view:
                n = os.write(self._fd, view)
                view = view[n:]
        except OSError as exc:
            try:
                os.ftruncate(self._fd, start)  # never leave half a record behind
            except OSError:
                pass
            from .io.encode import DiskFull, is_disk_full

            if is_disk_full(exc):
                raise DiskFull(self.path, exc) from exc  # type: ignore[arg-type]
            raise

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "RecordWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def iter_records(path: Path, run_id: str | None = None) -> Iterator[dict[str, Any]]:
    """Read records back from a JSONL file (optionally only one run's); skips a torn last line."""
    if not path.exists():
        return
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            line = line.strip()
            if not line:
                continue
            try:
                d = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a crash
            if run_id is None or d.get("run_id") == run_id:
                yield d


def write_json_atomic(path: Path, doc: dict[str, Any]) -> None:
    from .io.encode import atomic_write

    atomic_write(path, (json.dumps(doc, indent=2, ensure_ascii=False, allow_nan=False) + "\n").encode("utf-8"))


def write_report(path: Path, summary: RunSummary, records_path: Path | None, images: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Write the summary document; ``images`` default to this run's records from the JSONL."""
    if images is None:
        images = list(iter_records(records_path, summary.run_id)) if records_path else []
    doc = {"schema_version": SCHEMA_VERSION, "kind": "anonymize-run", "summary": summary.to_dict(), "images": images}
    write_json_atomic(path, doc)
    return doc


def load_schema(name: str = "report") -> dict[str, Any]:
    """The JSON schema shipped in the package (``report`` or ``record``)."""
    text = resources.files("anonymize").joinpath(f"schemas/{name}.schema.json").read_text(encoding="utf-8")
    return json.loads(text)

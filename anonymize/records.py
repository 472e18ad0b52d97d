"""Per-image records and the run summary; JSONL streaming and the JSON schema.

Records stream to ``<report>.jsonl`` as images finish (one line each,
written before the image's output is renamed into place), so an interrupted
run keeps what it did and every output has its record. At the end the summary
document ``<report>`` holds ``summary`` plus the ``images`` of this run.

A resumed run reads what earlier runs recorded (:class:`RecordIndex`): an
output kept from an earlier run is reported with that run's record (status
``skipped``), so the summary counts the whole corpus, not only what this run
redid.

Provenance travels with the outputs: every protect run also leaves
``anonymize-provenance.json`` in each output root (method, params, attacked
models, run id, where its report went, tool version; earlier runs that wrote
there are kept under ``runs``), wherever ``--report`` put the report.
:func:`resolve_protect_report` is the one place that finds what a protect run
recorded about a set of protected files.

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
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

SCHEMA_VERSION = "1.2"
"""1.1 added to the run summary: ``threads`` (the thread plan), ``max_bytes`` and ``aborted``.
1.2 added status ``unknown``; records ``settings``, ``written_by``, ``stale``; summary ``unknown``,
``stale`` and ``engine`` (all additions)."""
# The evaluation report and the provenance file: 1.1 added the black-box summary, white-box
# "unknown", recognizer licences and provenance (all additions; nothing renamed).
EVALUATION_SCHEMA_VERSION = "1.1"
STATUSES = ("ok", "skipped", "unknown", "failed", "dry-run")
"""ok: written by this run; skipped: kept from an earlier run, with that run's record; unknown: an
existing output kept (``--skip-existing``) although no trustworthy record describes it."""
PROVENANCE_NAME = "anonymize-provenance.json"
LEGACY_RECORDS_NAME = "anonymize-report.jsonl"  # the default records file next to the outputs
_MAX_RUNS = 200  # earlier runs kept in a provenance file


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
    settings: dict[str, Any] = field(default_factory=dict)  # region, mask scale, detector, format, metadata policy
    written_by: str | None = None  # the run that wrote the output (an earlier one for a skipped output)
    stale: list[str] | None = None  # what differs between this request and the run that wrote the output
    tool_version: str = ""
    run_id: str = ""
    schema_version: str = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        """The record as a plain dict (shallow: nested lists and dicts are shared, not copied)."""
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ImageRecord:
        """A record read back from JSON (fields this version does not know are dropped)."""
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


@dataclass
class RunSummary:
    """The run as a whole."""

    command: str
    method: str | None
    params: dict[str, Any]
    total: int = 0  # images in the corpus (every input file)
    ok: int = 0  # written by this run
    skipped: int = 0  # kept from earlier runs, with their records
    unknown: int = 0  # kept without a trustworthy record (--skip-existing): never counted as protected
    failed: int = 0
    dry_run: int = 0
    faces: int = 0
    protected: int = 0  # of ok + skipped
    not_protected: int = 0  # of ok + skipped
    stale: int = 0  # skipped outputs made with another method, params, seed or settings
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
    engine: dict[str, Any] = field(default_factory=dict)
    schema_version: str = SCHEMA_VERSION

    def add(self, rec: ImageRecord) -> None:
        """Count one image; a skipped image counts as what its earlier record says."""
        self.total += 1
        key = rec.status.replace("-", "_")
        setattr(self, key, getattr(self, key) + 1)
        self.faces += len(rec.faces)
        if rec.status in ("ok", "skipped"):
            if rec.protected:
                self.protected += 1
            elif rec.protected is False:
                self.not_protected += 1
        if rec.stale:
            self.stale += 1
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
        view = memoryview(line)
        try:
            while view:
                n = os.write(self._fd, view)
                view = view[n:]
        except OSError as exc:
            written = len(line) - len(view)
            try:
                if written:  # never leave half a record behind
                    os.ftruncate(self._fd, os.fstat(self._fd).st_size - written)
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

    def __enter__(self) -> RecordWriter:
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


def norm_path(p: str | Path, cwd: str | Path | None = None) -> str:
    """An output path as a lookup key: absolute (relative ones joined to ``cwd``), normalised."""
    p = Path(os.fsdecode(os.fspath(p)))
    if not p.is_absolute():
        p = Path(cwd or Path.cwd()) / p
    return os.path.normcase(os.path.normpath(p))


class RecordIndex:
    """The latest record that describes each output, across the records files of earlier runs.

    Files are read in the order given (later files and later lines win); only records that
    name an output and its sha256 (``ok``, and ``skipped`` ones carrying an earlier record)
    count, and records of ``exclude_run`` (the current run) are ignored. Memory: one small
    entry per output (a hash of its path and where its line is); lines are read back on lookup.
    Relative output paths are resolved against the writing run's working folder (``cwds``).

    Example:
        >>> import tempfile
        >>> d = Path(tempfile.mkdtemp())
        >>> w = RecordWriter(d / "r.jsonl")
        >>> w.write(ImageRecord(input="a", relative_path="a", status="ok", output=str(d / "a.png"), output_sha256="0" * 64))
        >>> w.close()
        >>> RecordIndex([d / "r.jsonl"]).lookup(d / "a.png")["output_sha256"] == "0" * 64
        True
    """

    def __init__(self, files: list[Path], *, cwds: dict[str, str] | None = None, exclude_run: str | None = None) -> None:
        self.files = list(dict.fromkeys(Path(f) for f in files))
        self.cwds = cwds or {}
        self._where: dict[int, tuple[int, int]] = {}
        for i, f in enumerate(self.files):
            self._scan(i, f, exclude_run)

    @staticmethod
    def _key(norm: str) -> int:
        return int.from_bytes(hashlib.blake2b(norm.encode("utf-8", "surrogateescape"), digest_size=8).digest(), "little")

    def _scan(self, i: int, path: Path, exclude_run: str | None) -> None:
        try:
            with open(path, "rb") as fh:
                offset = 0
                for line in fh:
                    here, offset = offset, offset + len(line)
                    try:
                        d = json.loads(line)
                    except ValueError:
                        continue  # a line cut by a crash
                    if not isinstance(d, dict) or d.get("run_id") == exclude_run or not d.get("output") \
                            or not d.get("output_sha256") or d.get("status") not in ("ok", "skipped"):
                        continue
                    self._where[self._key(norm_path(d["output"], self.cwds.get(d.get("run_id", ""))))] = (i, here)
        except OSError:
            return

    def __len__(self) -> int:
        return len(self._where)

    def lookup(self, output: Path) -> dict[str, Any] | None:
        """The latest record of ``output`` (a dict), or None."""
        norm = norm_path(output)
        where = self._where.get(self._key(norm))
        if where is None:
            return None
        with open(self.files[where[0]], "rb") as fh:
            fh.seek(where[1])
            d = json.loads(fh.readline())
        return d if norm_path(d["output"], self.cwds.get(d.get("run_id", ""))) == norm else None


def write_json_atomic(path: Path, doc: dict[str, Any]) -> None:
    from .io.encode import atomic_write

    atomic_write(path, (json.dumps(doc, indent=2, ensure_ascii=False, allow_nan=False) + "\n").encode("utf-8"))


def write_report(path: Path, summary: RunSummary, records_path: Path | None, images: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Write the summary document; ``images`` default to this run's records from the JSONL."""
    if images is None:
        images = list(iter_records(records_path, summary.run_id)) if records_path else []
    doc = {"schema_version": SCHEMA_VERSION, "kind": "anonymize-run", "summary": summary.to_dict(), "images": images}
    # The summary indented for people, one compact line per image (json's indenting encoder is pure
    # Python: it cost more per image than decoding the image).
    head = json.dumps({k: v for k, v in doc.items() if k != "images"}, indent=2, ensure_ascii=False, allow_nan=False)
    lines = ",\n".join(json.dumps(r, ensure_ascii=False, allow_nan=False) for r in images)
    text = head[:-2] + ',\n  "images": [\n' + lines + ("\n" if images else "") + "]\n}\n"
    from .io.encode import atomic_write

    atomic_write(path, text.encode("utf-8"))
    return doc


def load_schema(name: str = "report") -> dict[str, Any]:
    """The JSON schema shipped in the package (``report`` or ``record``)."""
    text = resources.files("anonymize").joinpath(f"schemas/{name}.schema.json").read_text(encoding="utf-8")
    return json.loads(text)


# ----------------------------------------------------------------------------- provenance


def provenance_roots(inputs: list[Path], output: Path | None) -> list[Path]:
    """The output roots of a protect run: ``--output``, else ``<folder>_anonymized`` per
    folder input and the folder of each file input (where its ``.anonymized`` file goes)."""
    from .io.discover import OutputPlan

    if output is not None:
        return [Path(output)]
    plan = OutputPlan(None)
    roots: list[Path] = []
    for i in inputs:
        r = plan.output_root_for(i) if i.is_dir() else (i.parent if i.exists() else None)
        if r is not None and r not in roots:
            roots.append(r)
    return roots


def _run_entry(summary: dict[str, Any], images: list[dict[str, Any]], report: Path, records: Path | None, root: Path,
               status: str = "finished") -> dict[str, Any]:
    attacked: list[str] = []
    for rec in images:
        if rec.get("status") not in ("ok", "skipped"):
            continue
        for m in (rec.get("method_info") or {}).get("attacked_models") or []:
            if str(m) not in attacked:
                attacked.append(str(m))

    def rel(p: Path | None) -> str | None:
        if p is None:
            return None
        try:
            return safe_path(os.path.relpath(p.absolute(), root.absolute()))
        except ValueError:  # another drive (Windows)
            return None

    return {
        "run_id": summary.get("run_id", ""),
        "method": summary.get("method"),
        "params": summary.get("params", {}),
        "attacked_models": attacked,
        "outputs_written": int(summary.get("ok", 0)),
        "status": status,
        "counts": {k: int(summary.get(k, 0)) for k in ("total", "ok", "skipped", "unknown", "failed", "protected",
                                                        "not_protected", "stale", "faces")},
        "exit_code": summary.get("exit_code"),
        "report": safe_path(report.absolute()),
        "records": safe_path(records.absolute()) if records is not None else None,
        "report_relative": rel(report),
        "records_relative": rel(records),
        "cwd": safe_path(Path.cwd()),
        "tool_version": summary.get("tool_version", ""),
        "started": summary.get("started", ""),
        "finished": summary.get("finished", ""),
    }


def write_provenance(roots: list[Path], summary: dict[str, Any], images: list[dict[str, Any]],
                     report: Path, records: Path | None, status: str = "finished") -> list[Path]:
    """Write (or update) ``anonymize-provenance.json`` in each output root; returns the files written.

    The latest run's fields sit at the top level; earlier runs that wrote into the same
    root stay in ``runs`` (so a resumed run that only skipped files does not hide what
    wrote them). A run enters with ``status: running`` before its first output, so even a
    killed run's records can be found; at its end ``status`` says finished, interrupted or
    aborted and ``counts`` holds the summary's counts. A root that cannot be written is
    skipped: evaluate then reports white-box as "unknown" rather than guessing.
    """
    written = []
    for root in roots:
        path = Path(root) / PROVENANCE_NAME
        if not path.parent.is_dir():
            continue
        entry = _run_entry(summary, images, report, records, Path(root), status)
        runs = [r for r in _read_provenance_runs(path) if r.get("run_id") != entry["run_id"]]
        doc = {"schema_version": EVALUATION_SCHEMA_VERSION, "kind": "anonymize-protect-provenance", **entry,
               "runs": (runs + [entry])[-_MAX_RUNS:]}
        try:
            write_json_atomic(path, doc)
        except OSError:
            continue
        written.append(path)
    return written


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _read_provenance_runs(path: Path) -> list[dict[str, Any]]:
    doc = _read_json(path)
    if not isinstance(doc, dict) or doc.get("kind") != "anonymize-protect-provenance":
        return []
    runs = doc.get("runs")
    return [r for r in runs if isinstance(r, dict)] if isinstance(runs, list) else []


@dataclass
class ProtectSources:
    """What protect runs recorded about a set of protected files (see :func:`resolve_protect_report`).

    ``source``: the file found (provenance, report or records), None when nothing was;
    ``runs``: run-level entries (method, params, attacked models, ...), oldest first;
    ``records``: JSONL record files to read, oldest first; ``inline``: records carried by
    a report document whose JSONL is gone.
    """

    source: Path | None = None
    runs: list[dict[str, Any]] = field(default_factory=list)
    records: list[Path] = field(default_factory=list)
    inline: list[dict[str, Any]] = field(default_factory=list)

    def iter_records(self) -> Iterator[dict[str, Any]]:
        """Every record, oldest first (later lines override earlier ones for the same file)."""
        for p in self.records:
            yield from iter_records(p)
        yield from self.inline


def _existing(*cands: Path | None) -> Path | None:
    for c in cands:
        if c is not None and c.is_file():
            return c
    return None


def _run_paths(run: dict[str, Any], base: Path, key: str) -> Path | None:
    raw, rel = run.get(key), run.get(f"{key}_relative")
    cwd = run.get("cwd")
    cands: list[Path | None] = []
    if raw:
        p = Path(raw)
        cands.append(p)
        if not p.is_absolute() and cwd:
            cands.append(Path(cwd) / p)
    if rel:
        cands.append(base / rel)  # the folder was moved together with its report
    return _existing(*cands)


def resolve_protect_report(protected: Path, explicit: Path | None = None) -> ProtectSources:
    """Find what the protect run(s) that wrote ``protected`` (a file or folder) recorded.

    ``explicit`` (``evaluate --protect-report``) may be a report JSON, its records JSONL or a
    provenance file; it must exist (UsageError otherwise). Without it: the nearest
    ``anonymize-provenance.json`` in ``protected``'s folder or its parents (the runs it
    lists and their records); else, for folders written before provenance existed, the
    default ``anonymize-report.jsonl`` next to the outputs. Nothing found: an empty
    :class:`ProtectSources` (evaluate then says white-box "unknown", never false).

    Example:
        >>> import tempfile
        >>> resolve_protect_report(Path(tempfile.mkdtemp())).source is None
        True
    """
    from .errors import UsageError

    protected = Path(protected)
    if explicit is not None:
        explicit = Path(explicit)
        if not explicit.is_file():
            raise UsageError(f"--protect-report {explicit} does not exist")
        if explicit.suffix.lower() == ".jsonl":
            return ProtectSources(source=explicit, records=[explicit])
        doc = _read_json(explicit)
        if isinstance(doc, dict) and doc.get("kind") == "anonymize-protect-provenance":
            return _from_provenance(explicit)
        if not isinstance(doc, dict) or doc.get("kind") != "anonymize-run":
            raise UsageError(f"--protect-report {explicit} is not an anonymize protect report, "
                             "its records (.jsonl) or a provenance file")
        summ = doc.get("summary") or {}
        rec = _run_paths({"records": summ.get("records")}, explicit.parent, "records") or _existing(explicit.with_suffix(".jsonl"))
        images = [r for r in doc.get("images") or [] if isinstance(r, dict)]
        return ProtectSources(source=explicit, runs=[_run_entry(summ, images, explicit, rec, explicit.parent)],
                              records=[rec] if rec else [], inline=[] if rec else images)
    folder = protected if protected.is_dir() else protected.parent
    for d in [folder, *folder.absolute().parents]:
        if (d / PROVENANCE_NAME).is_file():
            return _from_provenance(d / PROVENANCE_NAME)
    legacy = folder / LEGACY_RECORDS_NAME
    if legacy.is_file():
        return ProtectSources(source=legacy, records=[legacy])
    return ProtectSources()


def _from_provenance(path: Path) -> ProtectSources:
    runs = _read_provenance_runs(path)
    out = ProtectSources(source=path, runs=runs)
    for run in runs:
        rec = _run_paths(run, path.parent, "records")
        if rec is None:
            report = _run_paths(run, path.parent, "report")
            doc = _read_json(report) if report else None
            if isinstance(doc, dict):
                out.inline.extend(r for r in doc.get("images") or [] if isinstance(r, dict) and r.get("run_id") == run.get("run_id"))
            continue
        if rec not in out.records:
            out.records.append(rec)
    return out


def earlier_records(roots: list[Path], records: Path | None, exclude_run: str | None = None) -> RecordIndex:
    """Index what earlier protect runs recorded about the outputs in ``roots``.

    Reads the records files that the provenance file of each root lists (oldest run first),
    then ``records`` (this run's own JSONL, which earlier runs with the same ``--report``
    appended to); the latest record of each output wins.
    """
    files: list[Path] = []
    cwds: dict[str, str] = {}
    for root in roots:
        src = _from_provenance(Path(root) / PROVENANCE_NAME)
        files.extend(src.records)
        cwds.update({str(r.get("run_id")): str(r["cwd"]) for r in src.runs if r.get("cwd")})
    if records is not None:
        files = [f for f in files if f.absolute() != records.absolute()] + [records]
    return RecordIndex(files, cwds=cwds, exclude_run=exclude_run)

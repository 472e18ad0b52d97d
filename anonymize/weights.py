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
import tarfile
import time
import tomllib
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


class WeightsCorrupt(UsageError):
    """A weights file exists but failed verification (size, sha256, or it is an HTML page)."""


class FetchError(UsageError):
    """``fetch`` could not provide every requested file; ``results`` holds per-name outcomes."""

    def __init__(self, message: str, results: list[FetchResult] | None = None) -> None:
        super().__init__(message)
        self.results = results or []


# --------------------------------------------------------------------------- manifest


@dataclass(frozen=True)
class Source:
    """One download source: a direct file URL, a tar archive holding the file as ``member``,
    or (``package``, ``NAME==VERSION``) a package archive from the user's package index."""

    url: str
    member: str = ""
    archive_sha256: str = ""
    package: str = ""

    @property
    def is_archive(self) -> bool:
        return bool(self.member)


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

    @property
    def basename(self) -> str:
        return Path(self.filename).name

    @property
    def urls(self) -> tuple[str, ...]:
        return tuple(s.url for s in self.sources)

    @property
    def expected_total(self) -> int | None:
        return self.size or self.size_hint or None


_FIELDS = {"name", "filename", "purpose", "urls", "sha256", "size", "licence", "used_by",
           "sha256_prefix", "size_hint", "manual", "package_file"}
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
        if extra or "member" not in raw or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*==[A-Za-z0-9.+!_-]+",
                                                                str(raw["package"])):
            raise UsageError(f"{where}: a package source needs package = \"NAME==VERSION\" and member "
                             f"(got {sorted(raw)})")
        src = Source(url="", package=str(raw["package"]), member=str(raw["member"]),
                     archive_sha256=str(raw.get("archive_sha256", "")).lower())
        if src.archive_sha256 and not _HEX64.match(src.archive_sha256):
            raise UsageError(f"{where}: archive_sha256 must be 64 hex digits")
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
    return WeightsEntry(
        name=name, filename=fn.as_posix(), purpose=str(raw["purpose"]),
        sources=tuple(_parse_source(u, f"{where} urls[{i}]") for i, u in enumerate(urls)),
        sha256=sha, size=size, licence=str(raw["licence"]), used_by=tuple(used_by),
        sha256_prefix=prefix, size_hint=hint, manual=str(raw.get("manual", "")),
        package_file=str(raw.get("package_file", "")),
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


def select_names(names: Sequence[str] = (), *, method: str | None = None, all_: bool = False,
                 manifest: Manifest | None = None) -> list[str]:
    """Resolve the CLI selection ``NAMES | --method M | --all`` into manifest names (validated)."""
    m = _manifest(manifest)
    chosen: list[str] = list(m.names()) if all_ else []
    if method:
        chosen += names_for_method(method, m)
    for n in names:
        m.get(n)
        chosen.append(n)
    if not chosen:
        raise UsageError("name at least one weights file, or use --method M or --all "
                         f"(known: {', '.join(m.names())})")
    return list(dict.fromkeys(chosen))


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
            out.append(WeightsStatus(name=name, state="missing", filename=entry.filename,
                                     licence=entry.licence, detail=f"run: anonymize fetch-weights {name}"))
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
    """Outcome for one name: ``action`` is present | downloaded | copied | failed; ``exported`` set
    when a copy was written to ``to_dir``."""

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
    want = member.lstrip("./")
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
                   progress: ProgressFn, retries: int, trust_unverified: bool) -> None:
    final = _cache_file(entry)
    part = final.with_name(final.name + ".part")
    if not entry.sources:
        raise _SourceFailed("no direct download URL is published. " + (entry.manual or ""))
    for src in entry.sources:
        if src.package:
            res.attempts.append(f"package {src.package} ({src.member}): package-archive sources are not fetched "
                                "by this build; extract the member yourself and use --from DIR")
            continue
        if not (_verifiable(entry, src, state) or trust_unverified):
            res.attempts.append(f"{src.url}: skipped, no sha256 to verify it against "
                                "(pass --trust-unverified to accept and record it)")
            continue
        try:
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
            res.attempts.append(f"{src.url}: ok")
            return
        except _SourceFailed as exc:
            res.attempts.append(f"{src.url}: {exc}")
            if not exc.keep_partial:
                _drop_part(part)
                if src.is_archive:
                    _drop_part(arch.with_name(arch.name + ".part"))
    tail = f" Manual download: {entry.manual}" if entry.manual else ""
    raise _SourceFailed("every source failed: " + " | ".join(res.attempts) + "." + tail)


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
        if s.package:
            urls.append({"package": s.package, "member": s.member, "archive_sha256": s.archive_sha256})
            continue
        urls.append({"url": s.url, "member": s.member, "archive_sha256": s.archive_sha256}
                    if s.is_archive else s.url)
    d: dict[str, object] = {"name": entry.name, "filename": entry.filename, "purpose": entry.purpose,
                            "urls": urls, "sha256": sha, "size": size, "licence": entry.licence,
                            "used_by": list(entry.used_by)}
    if entry.manual:
        d["manual"] = entry.manual
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
          trust_unverified: bool = False, force: bool = False,
          manifest: Manifest | None = None) -> list[FetchResult]:
    """Make each named file present and verified in the cache; optionally export a bundle.

    * ``source_dir``: copy from a local folder (a ``--to`` bundle or any folder holding the
      files) instead of the network.
    * otherwise: a file shipped in an installed package is copied; anything else is
      downloaded (resumable, HTTP Range, ``.part`` file, sha256 checked before the atomic
      rename), trying each URL in order. Refused when ``offline`` (or ANONYMIZE_OFFLINE=1).
    * ``force``: fetch again even when a verified copy exists; with ``trust_unverified`` it
      also replaces a hash recorded earlier by ``--trust-unverified`` or a bundle.
    * ``to_dir``: also copy every file to ``to_dir/<name>/`` with a ``manifest.toml``
      recording each sha256, for air-gapped machines.

    Raises FetchError (listing every failure) after trying all names; the results of the
    names that succeeded are kept in ``FetchError.results``.

    Example (not run: downloads the file):
        >>> fetch(["facenet-vggface2"], trust_unverified=True, progress=print)  # doctest: +SKIP
    """
    m = _manifest(manifest)
    entries = [m.get(n) for n in dict.fromkeys(names)]
    offline = is_offline(offline)
    progress = progress or _noop
    state = _State()
    src_dir = Path(source_dir).expanduser() if source_dir is not None else None
    if src_dir is not None and not src_dir.is_dir():
        raise UsageError(f"--from folder does not exist: {src_dir}")
    out_dir = Path(to_dir).expanduser() if to_dir is not None else None
    results: list[FetchResult] = []
    tables: list[dict[str, object]] = []
    for entry in entries:
        res = FetchResult(name=entry.name, action="failed")
        results.append(res)
        pin = state.pin(entry.name)
        if force and trust_unverified and pin and pin.get("via") in ("user", "bundle"):
            state.drop_pin(entry.name)  # the user explicitly re-trusts a new copy
        try:
            have = None if force else _locate(entry, (), state)[0]
            if have is not None and src_dir is None:
                res.action, res.path, res.sha256, res.trust = "present", have.path, have.sha256, have.trust
            elif src_dir is not None:
                cands = _folder_candidates(entry, src_dir)
                if not cands:
                    raise _SourceFailed(f"not found in {src_dir} (looked for {entry.name}/{entry.basename}, "
                                        f"{entry.filename})")
                bundle_sha = _bundle_hash(src_dir, entry.name)
                _fetch_local(entry, cands[0], state, res, bundle_sha=bundle_sha, progress=progress,
                             trust_unverified=trust_unverified, action="copied")
            elif (pkg := _package_path(entry.package_file)) is not None:
                _fetch_local(entry, pkg, state, res, bundle_sha="", progress=progress,
                             trust_unverified=trust_unverified, action="copied")
            elif offline:
                raise _SourceFailed(
                    "offline mode (--offline or ANONYMIZE_OFFLINE=1): not downloading. On a connected machine run "
                    f"`anonymize fetch-weights {entry.name} --to DIR`, move DIR here, then run "
                    f"`anonymize fetch-weights {entry.name} --from DIR` or set ANONYMIZE_WEIGHTS=DIR")
            else:
                _fetch_network(entry, state, res, timeout=timeout, progress=progress, retries=retries,
                               trust_unverified=trust_unverified)
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

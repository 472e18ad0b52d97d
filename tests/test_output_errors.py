"""protect/detect/evaluate stop with one clear line and exit 2 when the output cannot be written:
a location that is not writable (checked before any work), or a disk that fills up mid-run
(ENOSPC/EDQUOT/EFBIG). Finished outputs and their records are kept; no partial file remains.

Disk-full runs are real: a child process with RLIMIT_FSIZE, so the kernel refuses writes past the
limit with EFBIG exactly as a full disk refuses them with ENOSPC.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from anonymize.cli import app
from tests.helpers import small_real

ROOT = Path(__file__).resolve().parent.parent
runner = CliRunner()


def _invoke(*args: str):
    return runner.invoke(app, list(args))


def _error_lines(res) -> list[str]:
    return [ln for ln in res.stderr.splitlines() if ln.strip()]


@pytest.fixture()
def photos(tmp_path: Path) -> Path:
    d = tmp_path / "photos"
    d.mkdir()
    Image.fromarray(small_real(64)).save(d / "a.png")
    Image.fromarray(small_real(48)).save(d / "b.jpg", quality=85)
    return d


@pytest.fixture()
def a_file(tmp_path: Path) -> Path:
    """A regular file: nothing can be created 'under' it, whoever runs the tests (root too)."""
    f = tmp_path / "plain.txt"
    f.write_text("a file, not a folder")
    return f


# ----------------------------------------------------------------------------- not writable


def test_protect_unwritable_output_or_report_exits_2_with_one_line(photos: Path, a_file: Path, tmp_path: Path) -> None:
    before = {p.name: p.read_bytes() for p in photos.iterdir()}
    res = _invoke("protect", str(photos), "-m", "blur", "--region", "image", "-o", str(a_file / "out"))
    assert res.exit_code == 2, res.output
    lines = _error_lines(res)
    assert len(lines) == 1 and "--output" in lines[0] and "cannot be created" in lines[0], lines
    out = tmp_path / "ok_out"
    res = _invoke("protect", str(photos), "-m", "blur", "--region", "image", "-o", str(out), "--report", str(a_file / "r.json"))
    assert res.exit_code == 2 and len(_error_lines(res)) == 1 and "--report" in res.stderr
    assert not [p for p in out.rglob("*") if p.is_file()]  # nothing processed, nothing written
    assert {p.name: p.read_bytes() for p in photos.iterdir()} == before


def test_detect_and_evaluate_unwritable_locations_exit_2(photos: Path, a_file: Path, tmp_path: Path) -> None:
    for args in (["detect", str(photos), "--detector", "haar", "-o", str(a_file / "j")],
                 ["detect", str(photos), "--detector", "haar", "--preview", str(a_file / "p")],
                 ["detect", str(photos), "--detector", "haar", "--report", str(a_file / "r.json")],
                 ["evaluate", str(photos), str(photos), "--no-faces", "--report", str(a_file / "e.json")],
                 ["evaluate", str(photos), str(photos), "--no-faces", "--report", str(tmp_path / "e.json"),
                  "--html", str(a_file / "e.html")]):
        res = _invoke(*args)
        assert res.exit_code == 2, (args, res.output)
        lines = _error_lines(res)
        assert len(lines) == 1 and "error:" in lines[0] and str(a_file) in lines[0], (args, lines)
    assert not (tmp_path / "e.json").exists()


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0,
                    reason="root writes into read-only folders; the path-under-a-file cases cover root")
def test_read_only_output_folder_exits_2(photos: Path, tmp_path: Path) -> None:
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o555)
    try:
        res = _invoke("protect", str(photos), "-m", "blur", "--region", "image", "-o", str(out))
        assert res.exit_code == 2 and "not writable" in res.stderr
        assert list(out.iterdir()) == []
    finally:
        out.chmod(0o755)


def test_ensure_writable_dir_probes_with_a_real_write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import anonymize.io.encode as enc
    from anonymize.errors import OutputError

    enc.ensure_writable_dir(tmp_path / "new" / "deep", "--output")
    assert (tmp_path / "new" / "deep").is_dir() and list((tmp_path / "new" / "deep").iterdir()) == []
    real_open = os.open

    def refuse(path, flags, *a):  # a folder whose file system refuses new files (read-only mount, full inode table)
        if "probe" in os.fspath(path):
            raise OSError(errno.EROFS, "Read-only file system")
        return real_open(path, flags, *a)

    monkeypatch.setattr(enc.os, "open", refuse)
    with pytest.raises(OutputError, match="is not writable: Read-only file system"):
        enc.ensure_writable_dir(tmp_path / "new", "--output")
    assert list((tmp_path / "new").iterdir()) == [tmp_path / "new" / "deep"]


# ----------------------------------------------------------------------------- disk full mid-run


def _limited(args: list[str], fsize: int, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run the CLI in a child whose files may not grow past ``fsize`` bytes (EFBIG, like a full disk)."""
    import resource
    import signal

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG instead of being killed
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run([sys.executable, "-m", "anonymize.cli", *args], env=env, capture_output=True, text=True,
                          timeout=timeout, preexec_fn=limit)


needs_rlimit = pytest.mark.skipif(sys.platform == "win32" or not hasattr(os, "fork"), reason="needs RLIMIT_FSIZE")


def _temporaries(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if ".anonymize-tmp-" in p.name]


@needs_rlimit
def test_protect_disk_full_mid_run_keeps_finished_work_and_resumes(tmp_path: Path) -> None:
    d = tmp_path / "in"
    d.mkdir()
    for name in ("a", "b", "d", "e"):
        Image.fromarray(small_real(40)).save(d / f"{name}.png")  # ~5 kB each
    noise = np.random.default_rng(0).integers(0, 256, (200, 200, 3), dtype=np.uint8)
    Image.fromarray(noise).save(d / "c.png")  # ~120 kB of noise: its output cannot fit
    limit = 64 * 1024
    assert max((d / n).stat().st_size for n in ("a.png", "b.png")) < limit < (d / "c.png").stat().st_size
    boxes = tmp_path / "no-faces.json"  # no face anywhere: outputs keep their pixels, so c's stays ~120 kB
    boxes.write_text('{"images": []}')
    out = tmp_path / "out"
    args = ["protect", str(d), "-m", "blur", "--boxes-from", str(boxes), "-o", str(out), "--quiet",
            "--workers", "1", "--batch-size", "1"]
    res = _limited(args, limit)
    assert res.returncode == 2, (res.returncode, res.stderr)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "File too large" in lines[0] and "re-run" in lines[0], lines
    assert not _temporaries(out)  # no partial file anywhere
    assert not (out / "c.png").exists()
    recs = [json.loads(ln) for ln in (out / "anonymize-report.jsonl").read_text().splitlines()]
    ok = {r["relative_path"]: r for r in recs if r["status"] == "ok"}
    assert {"a.png", "b.png"} <= set(ok)  # written before c, and recorded
    written = {p.name for p in out.glob("*.png")}
    assert written == set(ok)  # no output without its record, no record without its output
    for name, r in ok.items():
        data = (out / name).read_bytes()
        assert hashlib.sha256(data).hexdigest() == r["output_sha256"]
        Image.open(out / name).load()
    report = out / "anonymize-report.json"
    if report.exists():  # small enough to be written: it says why the run stopped
        s = json.loads(report.read_text())["summary"]
        assert s["exit_code"] == 2 and "File too large" in s["aborted"]
    # with room again, a re-run finishes the rest and skips what is done
    res = subprocess.run([sys.executable, "-m", "anonymize.cli", *args[:-5], "--json"], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)
    assert res.returncode == 0, res.stderr
    s = json.loads(res.stdout)["summary"]
    assert s["skipped"] == len(ok) and s["ok"] == 5 - len(ok)
    assert {p.name for p in out.glob("*.png")} == {"a.png", "b.png", "c.png", "d.png", "e.png"}


@needs_rlimit
def test_evaluate_and_detect_disk_full_exit_2_without_partial_files(photos: Path, tmp_path: Path) -> None:
    rep = tmp_path / "ev" / "e.json"
    res = _limited(["evaluate", str(photos), str(photos), "--no-faces", "--report", str(rep), "-q"], 1500)
    assert res.returncode == 2, res.stderr
    assert len([ln for ln in res.stderr.splitlines() if ln.strip()]) == 1 and "e.json" in res.stderr
    assert not rep.exists() and not _temporaries(tmp_path / "ev")
    big = tmp_path / "big"
    big.mkdir()
    Image.fromarray(small_real(256)).save(big / "x.png")
    prev = tmp_path / "prev"
    res = _limited(["detect", str(big), "--detector", "haar", "--preview", str(prev), "-q"], 4096)
    assert res.returncode == 2, res.stderr
    assert len([ln for ln in res.stderr.splitlines() if ln.strip()]) == 1 and "x.jpg" in res.stderr
    assert not list(prev.rglob("*.jpg")) and not _temporaries(prev)


def test_records_file_never_keeps_half_a_record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A record that does not fit is cut back off, so the JSONL holds whole lines only."""
    import anonymize.records as records
    from anonymize.io.encode import DiskFull

    path = tmp_path / "r.jsonl"
    w = records.RecordWriter(path)
    w.write(records.ImageRecord(input="a", relative_path="a", status="ok"))
    real_write = os.write
    calls = {"n": 0}

    def short_then_full(fd: int, data) -> int:  # the disk fills half-way through a line
        calls["n"] += 1
        if calls["n"] == 1:
            return real_write(fd, bytes(data[: len(data) // 2]))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(records.os, "write", short_then_full)
    with pytest.raises(DiskFull, match="No space left"):
        w.write(records.ImageRecord(input="b", relative_path="b", status="ok"))
    monkeypatch.undo()
    w.write(records.ImageRecord(input="c", relative_path="c", status="ok"))
    w.close()
    lines = path.read_text().splitlines()
    assert [json.loads(ln)["input"] for ln in lines] == ["a", "c"]
    # a line torn by a killed process does not swallow the next run's first record
    with open(path, "a") as fh:
        fh.write('{"input": "torn')
    w = records.RecordWriter(path)
    w.write(records.ImageRecord(input="d", relative_path="d", status="ok"))
    w.close()
    assert [r["input"] for r in records.iter_records(path)] == ["a", "c", "d"]


def test_record_that_cannot_be_written_takes_its_output_with_it(photos: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Disk full on the records file: the run stops (exit 2) and the image whose record was lost is
    not left behind as an output, so a re-run redoes it instead of skipping an unrecorded file."""
    import anonymize.records as records
    from anonymize.io.encode import DiskFull

    real = records.RecordWriter.write
    calls = {"n": 0}

    def second_fails(self, rec):
        calls["n"] += 1
        if calls["n"] == 2:
            raise DiskFull(self.path, OSError(errno.ENOSPC, "No space left on device"))
        return real(self, rec)

    monkeypatch.setattr(records.RecordWriter, "write", second_fails)
    out = tmp_path / "out"
    res = _invoke("protect", str(photos), "-m", "blur", "--region", "image", "-o", str(out), "--workers", "1",
                  "--batch-size", "1", "--sidecar", "-q")
    assert res.exit_code == 2, res.output
    lines = _error_lines(res)
    assert len(lines) == 1 and "No space left on device" in lines[0] and "stopped after 1" in lines[0], lines
    recs = [json.loads(ln) for ln in (out / "anonymize-report.jsonl").read_text().splitlines()]
    assert [r["relative_path"] for r in recs] == ["a.png"]
    assert sorted(p.name for p in out.iterdir() if p.suffix in (".png", ".jpg")) == ["a.png"]
    assert not (out / "b.jpg.anonymize.json").exists() and not _temporaries(out)

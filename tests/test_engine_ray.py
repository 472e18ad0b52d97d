"""``--engine ray`` on a local Ray: the same files and records as ``--engine local``, and a resume
after the driver is killed. Skipped when Ray Data is not installed (``pip install "anonymize[ray]"``)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from tests.helpers import small_real

pytest.importorskip("ray.data", reason='Ray Data is not installed (pip install "anonymize[ray]")')

ROOT = Path(__file__).resolve().parent.parent
VOLATILE = {"timings", "run_id", "output", "written_by"}


def cli(*args: str, fault: str | None = None) -> subprocess.CompletedProcess[str]:
    """The CLI in its own session, so Ray processes a killed driver leaves behind can be ended with it."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("ANONYMIZE_FAULT", None)
    env.pop("RAY_ADDRESS", None)
    if fault:
        env["ANONYMIZE_FAULT"] = fault
    proc = subprocess.Popen([sys.executable, "-m", "anonymize.cli", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=600)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # only this test's own process group
        except ProcessLookupError:
            pass
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.fixture()
def small(tmp_path: Path) -> Path:
    d = tmp_path / "small"
    (d / "sub").mkdir(parents=True)
    for i in range(6):
        Image.fromarray(small_real(64 + 16 * i)).save(d / ("sub" if i % 3 == 0 else ".") / f"p{i}.{'png' if i % 2 else 'jpg'}")
    (d / "broken.jpg").write_bytes(b"not an image")
    return d


def files(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.suffix in (".jpg", ".png")}


def records(doc: dict) -> dict[str, dict]:
    return {r["relative_path"]: {k: v for k, v in r.items() if k not in VOLATILE} for r in doc["images"]}


@pytest.mark.slow
def test_ray_engine_matches_local_and_resumes_after_a_kill(small: Path, tmp_path: Path) -> None:
    args = ["-m", "blur", "--seed", "3", "--batch-size", "2", "--json"]  # faces from the default detector
    local = cli("protect", str(small), "-o", str(tmp_path / "local"), *args)
    assert local.returncode == 1, local.stderr  # broken.jpg
    ray = cli("protect", str(small), "-o", str(tmp_path / "ray"), "--engine", "ray", *args)
    assert ray.returncode == 1, ray.stderr
    dl, dr = json.loads(local.stdout), json.loads(ray.stdout)
    assert files(tmp_path / "ray") == files(tmp_path / "local")  # byte-identical outputs
    assert records(dr) == records(dl)
    assert dr["summary"]["engine"]["name"] == "ray" and dr["summary"]["engine"]["cluster_cpus"] == 2
    same = {k for k in dl["summary"] if k not in {"elapsed_s", "images_per_s", "started", "finished", "run_id", "output",
                                                   "report", "records", "engine"}}
    assert {k: dr["summary"][k] for k in same} == {k: dl["summary"][k] for k in same}

    out = tmp_path / "resumed"
    killed = cli("protect", str(small), "-o", str(out), "--engine", "ray", *args, fault="recorded:2")
    assert killed.returncode == -9, killed.stderr
    assert len(files(out)) == 1  # the second record was written, its output not yet renamed
    again = cli("protect", str(small), "-o", str(out), "--engine", "ray", *args)
    assert again.returncode == 1, again.stderr
    da = json.loads(again.stdout)
    assert (da["summary"]["skipped"], da["summary"]["ok"]) == (1, 5)
    assert files(out) == files(tmp_path / "local") and not [p for p in out.rglob("*") if ".anonymize-tmp-" in p.name]
    for k in ("total", "failed", "faces", "protected", "not_protected", "unknown", "exit_code", "errors_by_code"):
        assert da["summary"][k] == dl["summary"][k], k
    kept = {k: {kk: v for kk, v in r.items() if kk not in {"status", "stale"}} for k, r in records(da).items()}
    assert kept == {k: {kk: v for kk, v in r.items() if kk not in {"status", "stale"}} for k, r in records(dl).items()}


def test_engine_choice_is_checked_when_parsed() -> None:
    from typer.testing import CliRunner

    from anonymize.cli import app

    res = CliRunner().invoke(app, ["protect", "x", "--engine", "spark"])
    assert res.exit_code == 2 and "spark" in res.output

"""A resumed run tells the whole truth about the corpus (issue 19).

The protect run is killed (SIGKILL, through the test-only ``ANONYMIZE_FAULT`` seam of the Record
stage) at each point of an image's commit: its output staged but not recorded, recorded but not
yet renamed into place, and both done. After a re-run every output has exactly one current record
that matches its bytes, and the summary, the provenance file, the exit code and ``evaluate``'s gates
equal those of one uninterrupted run.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from tests.helpers import small_real

ROOT = Path(__file__).resolve().parent.parent
CORPUS_COUNTS = ("total", "failed", "unknown", "stale", "faces", "protected", "not_protected", "errors_by_code", "exit_code")


def cli(*args: str, fault: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("ANONYMIZE_FAULT", None)
    if fault:
        env["ANONYMIZE_FAULT"] = fault
    return subprocess.run([sys.executable, "-m", "anonymize.cli", *args], env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.fixture()
def corpus(tmp_path: Path) -> tuple[Path, Path]:
    """Eight photos: six with a face box (protected), one without (not protected), one broken (failed)."""
    d = tmp_path / "in"
    d.mkdir()
    boxes = []
    for i in range(7):
        name = f"p{i}.png" if i % 2 else f"p{i}.jpg"
        Image.fromarray(small_real(48 + 8 * i)).save(d / name)
        if i != 3:
            boxes.append({"relative_path": name, "faces": [{"box": [8, 8, 40, 40], "score": 1.0}]})
    (d / "broken.jpg").write_bytes(b"not a jpeg at all")
    b = tmp_path / "boxes.json"
    b.write_text(json.dumps({"images": boxes}))
    return d, b


def protect(src: Path, boxes: Path, out: Path, *extra: str, fault: str | None = None) -> subprocess.CompletedProcess[str]:
    return cli("protect", str(src), "-m", "blur", "--boxes-from", str(boxes), "-o", str(out), "--workers", "1",
               "--batch-size", "1", "--json", *extra, fault=fault)


def sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def outputs(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in out.iterdir() if p.suffix in (".jpg", ".png")}


def assert_whole_truth(run: subprocess.CompletedProcess[str], out: Path, clean: dict) -> dict:
    doc = json.loads(run.stdout)
    s, c = doc["summary"], clean["summary"]
    assert {k: s[k] for k in CORPUS_COUNTS} == {k: c[k] for k in CORPUS_COUNTS}, (s, c)
    assert s["ok"] + s["skipped"] == c["ok"] and run.returncode == c["exit_code"]
    # every output on disk: exactly one current record, which matches its bytes
    recs = doc["images"]
    assert sorted(r["relative_path"] for r in recs) == sorted(r["relative_path"] for r in clean["images"])
    for p in out.iterdir():
        if p.suffix in (".jpg", ".png"):
            mine = [r for r in recs if r["output"] and Path(r["output"]).name == p.name]
            assert len(mine) == 1 and mine[0]["output_sha256"] == sha(p) and mine[0]["status"] in ("ok", "skipped"), mine
            assert mine[0]["protected"] is (p.stem != "p3")
    assert not [p for p in out.iterdir() if ".anonymize-tmp-" in p.name]
    # the summary file and the provenance file say the same
    assert json.loads((out / "anonymize-report.json").read_text())["summary"] == s
    prov = json.loads((out / "anonymize-provenance.json").read_text())
    assert prov["status"] == "finished" and prov["run_id"] == s["run_id"]
    assert {k: prov["counts"][k] for k in ("total", "protected", "not_protected", "failed", "unknown")} == \
        {k: c[k] for k in ("total", "protected", "not_protected", "failed", "unknown")}
    return doc


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["staged:3", "recorded:3", "published:3"])
def test_kill_at_each_commit_point_then_resume_equals_one_clean_run(corpus: tuple[Path, Path], tmp_path: Path,
                                                                    fault: str) -> None:
    src, boxes = corpus
    clean_out = tmp_path / "clean"
    res = protect(src, boxes, clean_out)
    assert res.returncode == 1, res.stderr  # broken.jpg
    clean = json.loads(res.stdout)
    assert (clean["summary"]["protected"], clean["summary"]["not_protected"], clean["summary"]["failed"]) == (6, 1, 1)

    out = tmp_path / "out"
    killed = protect(src, boxes, out, fault=fault)
    assert killed.returncode == -9, killed.stderr
    recs = [json.loads(ln) for ln in (out / "anonymize-report.jsonl").read_text().splitlines()]
    on_disk = set(outputs(out))
    recorded = {Path(r["output"]).name for r in recs if r["status"] == "ok"}
    assert on_disk <= recorded  # never an output without its record
    if fault.startswith("recorded"):
        assert len(recorded - on_disk) == 1  # killed between its record and its rename
    if fault.startswith("staged"):
        assert [p for p in out.iterdir() if ".anonymize-tmp-" in p.name]  # a staged temporary, no record
    assert json.loads((out / "anonymize-provenance.json").read_text())["status"] == "running"

    rerun = protect(src, boxes, out)
    doc = assert_whole_truth(rerun, out, clean)
    assert doc["summary"]["skipped"] == len(on_disk) and doc["summary"]["ok"] == 7 - len(on_disk)
    kept = [r for r in doc["images"] if r["status"] == "skipped"]
    assert all(r["written_by"] != doc["summary"]["run_id"] and r["faces"] and r["input_sha256"] for r in kept)
    assert outputs(out) == outputs(clean_out)  # blur is deterministic: the same bytes as one clean run
    # a second re-run keeps everything and still tells the same truth
    assert_whole_truth(protect(src, boxes, out), out, clean)
    if fault.startswith("recorded"):  # evaluate's gates: the same as after the uninterrupted run
        ev = [json.loads(cli("evaluate", str(src), str(o), "--no-faces", "--json", "--fail-under", "ssim=0.5",
                             "--report", str(tmp_path / f"ev-{o.name}.json")).stdout)["summary"]
              for o in (out, clean_out)]
        assert ev[0]["gates"] == ev[1]["gates"] and ev[0]["ssim_mean"] == ev[1]["ssim_mean"]


def test_output_without_a_matching_record_is_redone_or_unknown(corpus: tuple[Path, Path], tmp_path: Path) -> None:
    src, boxes = corpus
    out = tmp_path / "out"
    first = json.loads(protect(src, boxes, out).stdout)
    # p0.jpg replaced by something no record describes (a stray copy of its input)
    (out / "p0.jpg").write_bytes((src / "p0.jpg").read_bytes())
    res = protect(src, boxes, out, "--skip-existing")
    doc = json.loads(res.stdout)
    s = doc["summary"]
    by = {r["relative_path"]: r for r in doc["images"]}
    assert by["p0.jpg"]["status"] == "unknown" and by["p0.jpg"]["protected"] is None
    assert (s["unknown"], s["skipped"], s["protected"]) == (1, 6, first["summary"]["protected"] - 1)
    assert res.returncode == 1  # broken.jpg failed again; unknown alone does not fail a run ...
    res = protect(src, boxes, out, "--skip-existing", "--require-protected")
    assert json.loads(res.stdout)["summary"]["unknown"] == 1 and res.returncode == 1  # ... but does under --require-protected
    res = protect(src, boxes, out)  # the default redoes it
    doc = json.loads(res.stdout)
    by = {r["relative_path"]: r for r in doc["images"]}
    assert by["p0.jpg"]["status"] == "ok" and by["p0.jpg"]["output_sha256"] == sha(out / "p0.jpg")
    assert doc["summary"]["protected"] == first["summary"]["protected"] and doc["summary"]["unknown"] == 0


def test_kept_outputs_made_otherwise_are_stale(corpus: tuple[Path, Path], tmp_path: Path) -> None:
    src, boxes = corpus
    out = tmp_path / "out"
    first = json.loads(protect(src, boxes, out).stdout)["summary"]
    doc = json.loads(protect(src, boxes, out, "--param", "sigma=0.3", "--keep-metadata", "icc").stdout)
    s = doc["summary"]
    assert s["skipped"] == 7 and s["stale"] == 7 and s["protected"] == first["protected"]
    rec = next(r for r in doc["images"] if r["status"] == "skipped")
    assert rec["stale"] == ["params", "metadata"] and rec["params"] == {} and "stale for this request" in rec["warnings"][-1]
    again = json.loads(protect(src, boxes, out, "--param", "sigma=0.3", "--keep-metadata", "icc").stdout)
    rec2 = next(r for r in again["images"] if r["relative_path"] == rec["relative_path"])
    assert rec2["stale"] == rec["stale"] and sum("stale" in w for w in rec2["warnings"]) == 1
    assert json.loads(protect(src, boxes, out).stdout)["summary"]["stale"] == 0  # same request as the writer: not stale


def test_records_of_a_run_with_another_report_are_found_through_provenance(corpus: tuple[Path, Path],
                                                                          tmp_path: Path) -> None:
    src, boxes = corpus
    out = tmp_path / "out"
    protect(src, boxes, out, "--report", str(tmp_path / "elsewhere" / "r.json"))
    doc = json.loads(protect(src, boxes, out).stdout)
    assert doc["summary"]["skipped"] == 7 and doc["summary"]["unknown"] == 0 and doc["summary"]["protected"] == 6

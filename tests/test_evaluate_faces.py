"""`evaluate` with real detectors and recognizers on real faces (sample photos)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anonymize.evaluation import evaluate
from anonymize.evaluation.blackbox import iou


@pytest.fixture(scope="module")
def pairs(tmp_path_factory: pytest.TempPathFactory, sample_faces: dict) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("eval")
    orig = root / "orig" / "astronaut"
    prot = root / "prot" / "astronaut"
    orig.mkdir(parents=True)
    prot.mkdir(parents=True)
    img = np.asarray(Image.fromarray(sample_faces["astronaut"]).resize((256, 256), Image.LANCZOS))
    Image.fromarray(img).save(orig / "same.png")
    Image.fromarray(img).save(prot / "same.png")  # unprotected copy: must be recognised
    Image.fromarray(img).save(orig / "covered.png")
    covered = img.copy()
    covered[20:140, 70:170] = 0  # the face is gone
    Image.fromarray(covered).save(prot / "covered.png")
    gal = root / "gallery"
    (gal / "astronaut").mkdir(parents=True)
    (gal / "grace").mkdir(parents=True)
    Image.fromarray(sample_faces["astronaut"]).resize((300, 300)).save(gal / "astronaut" / "g1.jpg", quality=85)
    Image.fromarray(sample_faces["grace_hopper"]).save(gal / "grace" / "g1.jpg")
    return {"orig": root / "orig", "prot": root / "prot", "gallery": gal, "root": root}


@pytest.mark.slow
def test_identity_metrics_tell_protected_from_unprotected(pairs: dict[str, Path]) -> None:
    res = evaluate(pairs["orig"], pairs["prot"], recognizers=("dlib-resnet",), gallery=pairs["gallery"], html=pairs["root"] / "r.html", device="cpu")
    by = {r["relative_path"]: r for r in res.images}
    same = by["astronaut/same.png"]["faces"]
    assert len(same) == 1
    ident = same[0]["identity"]["dlib-resnet"]
    assert ident["distance"] < 0.05 and ident["match"] and not ident["protected"]
    assert same[0]["detected_in_protected"] and same[0]["face_ssim"] > 0.99
    assert same[0]["identity"]["dlib-resnet"]["gallery"]["rank1"] is True
    cov = by["astronaut/covered.png"]["faces"][0]
    assert cov["detected_in_protected"] is False
    assert cov["identity"]["dlib-resnet"]["protected"] is False  # undetected counts as not protected
    assert cov["identity"]["dlib-resnet"]["protected_if_located"] is True
    s = res.summary
    assert s["faces"] == 2 and s["sdr"] == 0.5 and s["undetected"] == 1
    assert s["recognizers"]["dlib-resnet"]["spr"] == 0.0 and s["recognizers"]["dlib-resnet"]["spr_aligned"] == 0.5
    assert set(s["recognizers_unavailable"]) == set()
    html = (pairs["root"] / "r.html").read_text()
    assert "<svg" in html and "dlib-resnet" in html
    assert set(same[0]["landmark_displacement"]) == {"chin", "eyebrows", "nose", "eyes", "mouth"}
    assert same[0]["landmark_displacement"]["eyes"] < 0.02


@pytest.mark.slow
def test_white_box_flag_and_unavailable_recognizers(pairs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANONYMIZE_HOME", str(tmp_path / "home"))  # no fetched weights (CI fetches some)
    monkeypatch.delenv("ANONYMIZE_WEIGHTS", raising=False)
    # a records file written before provenance files existed, next to the outputs
    recs = [{"run_id": "x", "status": "ok", "relative_path": f"astronaut/{n}", "method_info": {"attacked_models": ["dlib-resnet"]}}
            for n in ("same.png", "covered.png")]
    (pairs["prot"] / "anonymize-report.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    try:
        res = evaluate(pairs["orig"], pairs["prot"], recognizers=("dlib-resnet", "facenet-casia"), report=tmp_path / "e.json", device="cpu")
    finally:
        (pairs["prot"] / "anonymize-report.jsonl").unlink()
    s = res.summary
    assert s["white_box"] == ["dlib-resnet"] and s["recognizers"]["dlib-resnet"]["white_box"] is True
    assert any("white-box" in n for n in s["notes"])
    assert "facenet-casia" in s["recognizers_unavailable"]
    assert "fetch-weights facenet-casia" in s["recognizers_unavailable"]["facenet-casia"]


def test_iou() -> None:
    assert iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert iou((0, 0, 10, 10), (20, 20, 30, 30)) == 0.0


def test_ssim_of_tiny_regions_is_none_not_an_error() -> None:
    from anonymize.metrics.quality import ssim

    a = np.zeros((9, 40, 3), np.uint8)
    assert ssim(a, a) is None
    assert ssim(np.zeros((11, 11, 3), np.uint8), np.zeros((11, 11, 3), np.uint8)) == pytest.approx(1.0)


def test_a_failing_pair_is_recorded_and_the_run_continues(tmp_path: Path, sample_faces: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    import anonymize.evaluation.run as run_mod

    class Boom:
        names: list[str] = []

        def evaluate_pair(self, a, b, sha, attacked=None):  # noqa: ANN001
            if a.relative.name == "bad.png":
                raise RuntimeError("boom")
            return {"faces": []}

        def summary(self, images, flags):  # noqa: ANN001
            return {"notes": []}

    monkeypatch.setattr(run_mod, "build_face_evaluator", lambda opts: Boom())

    o, p = tmp_path / "o", tmp_path / "p"
    o.mkdir()
    p.mkdir()
    for name in ("bad.png", "good.png"):
        Image.fromarray(sample_faces["astronaut"][:64, :64]).save(o / name)
        Image.fromarray(sample_faces["astronaut"][:64, :64]).save(p / name)
    res = evaluate(o, p, report=tmp_path / "e.json")
    by = {r["relative_path"]: r for r in res.images}
    assert by["bad.png"]["status"] == "failed" and by["bad.png"]["error"]["code"] == "evaluate-failed"
    assert by["good.png"]["status"] == "ok" and res.exit_code == 1

"""CNN detectors (yunet, scrfd, centerface), the tiled pyramid, unions, ``detect --list``,
missing weights, EXIF-rotated inputs and the WIDER benchmark's scoring."""
from __future__ import annotations

import hashlib
import importlib.util
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from anonymize.cli import app
from anonymize.errors import UsageError, WeightsMissing
from anonymize.faces.cnn_detect import nms, plan_levels, tile_origins
from anonymize.faces.detect import (
    DEFAULT_DETECTOR,
    DETECTORS,
    get_detector,
    resolve_detectors,
)

ROOT = Path(__file__).resolve().parent.parent
EXPECTED = {"astronaut": (175, 60, 270, 175), "grace_hopper": (170, 120, 365, 340)}


def _iou(a, b) -> float:
    x0, y0 = max(a[0], b[0]), max(a[1], b[1])
    x1, y1 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x1 - x0) * max(0.0, y1 - y0)
    area = lambda r: (r[2] - r[0]) * (r[3] - r[1])
    return inter / (area(a) + area(b) - inter)


def _detector_or_skip(name: str, **kw):
    try:
        return get_detector(name, **kw)
    except WeightsMissing as exc:
        pytest.skip(f"{name} weights absent ({exc}); set ANONYMIZE_WEIGHTS to a folder holding them")


def _check_sample_faces(names, results, detector):
    for name, faces in zip(names, results):
        assert len(faces) >= 1, name
        f = faces[0]
        assert f.detector == detector
        assert _iou(f.box, EXPECTED[name]) > 0.5, (name, f.box)
        lm = f.landmarks5
        assert lm is not None and lm.shape == (5, 2)
        # MTCNN order: image-left eye, image-right eye, nose, mouth left, mouth right
        assert lm[0, 0] < lm[1, 0] and lm[3, 0] < lm[4, 0]
        assert max(lm[0, 1], lm[1, 1]) < lm[2, 1] < min(lm[3, 1], lm[4, 1])
        x0, y0, x1, y1 = f.box
        assert np.all((lm[:, 0] > x0 - 5) & (lm[:, 0] < x1 + 5) & (lm[:, 1] > y0 - 5) & (lm[:, 1] < y1 + 5))


@pytest.fixture(scope="module")
def samples(sample_faces):
    names = [n for n in ("astronaut", "grace_hopper") if n in sample_faces]
    return names, [sample_faces[n] for n in names]


# --------------------------------------------------------------------------- embedded default


def test_default_is_yunet_and_its_weights_ship_inside_the_package():
    from anonymize import weights

    assert DEFAULT_DETECTOR == "yunet"
    entry = weights.load_manifest().get("yunet")
    embedded = ROOT / "anonymize" / "data" / "detectors" / entry.filename
    assert hashlib.sha256(embedded.read_bytes()).hexdigest() == entry.sha256
    assert embedded.stat().st_size == entry.size
    assert (embedded.parent / "LICENSE-yunet").is_file() and (embedded.parent / "SOURCES.md").is_file()
    assert weights.weights_path("yunet").resolve() == embedded.resolve() or weights.weights_path("yunet").is_file()
    assert not DETECTORS.get(DEFAULT_DETECTOR).non_commercial


# --------------------------------------------------------------------------- each backend


@pytest.mark.parametrize("name", ["yunet", "scrfd", "centerface"])
def test_backend_finds_the_sample_faces_with_landmarks(name, samples):
    names, imgs = samples
    det = _detector_or_skip(name)
    blank = np.full((300, 400, 3), 127, np.uint8)
    res = det(imgs + [blank])
    _check_sample_faces(names, res[: len(imgs)], name)
    assert res[-1] == []
    assert all(f.score >= det.thresh for fs in res for f in fs)


@pytest.mark.parametrize("name", ["yunet", "scrfd", "centerface"])
def test_backend_same_faces_batched_and_alone(name, samples):
    _, imgs = samples
    det = _detector_or_skip(name)
    a = det([imgs[0], imgs[0].copy(), imgs[-1]])
    b = det([imgs[0]])
    assert len(a[0]) == len(a[1]) == len(b[0]) >= 1
    np.testing.assert_allclose(a[0][0].box, b[0][0].box, atol=0.5)
    np.testing.assert_allclose(a[1][0].box, b[0][0].box, atol=0.5)
    # a net that saw another input size before still gives the same faces (CenterFace/OpenCV pitfall)
    c = det([imgs[-1], imgs[0]])
    np.testing.assert_allclose(c[1][0].box, b[0][0].box, atol=0.5)


def test_threshold_and_min_face_filter(samples):
    _, imgs = samples
    assert get_detector("yunet", thresh=0.999)(imgs[:1]) == [[]]
    assert get_detector("yunet", min_face=200)(imgs[:1]) == [[]]
    with pytest.raises(UsageError):
        get_detector("yunet", max_side=32)


def test_missing_weights_name_the_fetch_command(tmp_path, monkeypatch):
    monkeypatch.setenv("ANONYMIZE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("ANONYMIZE_WEIGHTS", str(tmp_path / "empty"))
    with pytest.raises(WeightsMissing, match="anonymize fetch-weights centerface"):
        get_detector("centerface")
    img = tmp_path / "a.png"
    Image.new("RGB", (64, 64)).save(img)
    res = CliRunner().invoke(app, ["detect", str(img), "--detector", "scrfd"])
    assert res.exit_code == 2, res.output
    assert "anonymize fetch-weights scrfd-500m" in " ".join(res.output.split())


def test_detect_list_shows_licences_and_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("ANONYMIZE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("ANONYMIZE_WEIGHTS", str(tmp_path / "empty"))
    monkeypatch.setenv("COLUMNS", "250")
    res = CliRunner().invoke(app, ["detect", "--list"])
    assert res.exit_code == 0, res.output
    lines = {ln.split("│")[1].strip(): ln for ln in res.output.splitlines() if ln.count("│") > 3}
    assert set(DETECTORS.names()) <= set(lines)
    assert "yes" in lines["yunet"] and "embedded" in lines["yunet"] and "MIT" in lines["yunet"]
    assert "NON-COMMERCIAL" in lines["scrfd"] and "fetch-weights scrfd-500m" in lines["scrfd"]
    assert "missing" in lines["centerface"] and "fetch-weights centerface" in lines["centerface"]
    assert "built in" in lines["mtcnn"]
    assert "NAME+NAME" in res.output


# --------------------------------------------------------------------------- union


def test_union_merges_members_and_validates_names(samples):
    names, imgs = samples
    u = get_detector("yunet+haar", min_face=40)
    assert u.name == "yunet+haar"
    res = u(imgs)
    alone = get_detector("yunet", min_face=40)(imgs)
    for faces, ya in zip(res, alone):
        # the same face from both members is kept once; yunet's is kept (higher score scale)
        assert len(faces) == 1 and faces[0].detector in {"yunet", "haar"}
        assert _iou(faces[0].box, ya[0].box) > 0.5
    assert [s.name for s in resolve_detectors("yunet+centerface")] == ["yunet", "centerface"]
    for bad in ("yunet+", "yunet+yunet", "yunet+nope", "+"):
        with pytest.raises(UsageError):
            resolve_detectors(bad)


def test_union_keeps_faces_only_one_member_finds():
    from anonymize.faces.cnn_detect import UnionDetector
    from anonymize.types import Face

    class Fixed:
        def __init__(self, name, boxes, score):
            self.name, self.thresh, self.boxes, self.score = name, 0.5, boxes, score

        def __call__(self, images):
            return [[Face(b, self.score, self.name) for b in self.boxes] for _ in images]

    a = Fixed("a", [(0, 0, 10, 10), (50, 50, 70, 70)], 0.9)
    b = Fixed("b", [(1, 1, 11, 11), (100, 0, 120, 20)], 0.8)
    (faces,) = UnionDetector([a, b])([np.zeros((8, 8, 3), np.uint8)])
    assert sorted((f.detector, f.box) for f in faces) == [
        ("a", (0, 0, 10, 10)), ("a", (50, 50, 70, 70)), ("b", (100, 0, 120, 20))]


# --------------------------------------------------------------------------- pyramid and tiling


def test_tile_and_level_geometry():
    for length, tile, ov in [(4000, 1024, 192), (1025, 1024, 192), (3000, 640, 100), (700, 1024, 192)]:
        starts = tile_origins(length, tile, ov)
        size = min(length, tile)
        assert starts[0] == 0 and starts[-1] + size == length
        assert all(b - a <= size - ov for a, b in zip(starts, starts[1:]))  # neighbours share >= ov px
    assert plan_levels(600, 800, finest=1.0, ratio=3.0, coarse=360) == [1.0, 1 / 3]
    assert plan_levels(300, 200, finest=2.0, ratio=3.0, coarse=360) == [2.0, 2 / 3]
    keep = nms(np.array([[0, 0, 10, 10], [0, 0, 10, 11], [30, 30, 40, 40]]), np.array([0.5, 0.9, 0.1]), 0.5)
    assert keep.tolist() == [1, 2]


def _face_crop(img: np.ndarray, box, h: int) -> np.ndarray:
    x0, y0, x1, y1 = box
    pad = int(0.25 * (y1 - y0))
    crop = Image.fromarray(img[max(0, y0 - pad) : y1 + pad, max(0, x0 - pad) : x1 + pad])
    w = round(crop.width * h / crop.height)
    return np.asarray(crop.resize((w, h), Image.LANCZOS))


def test_tiling_finds_small_faces_in_a_large_image_that_one_pass_misses(samples, monkeypatch):
    names, imgs = samples
    rng = np.random.default_rng(0)
    H, W = 2400, 3600
    canvas = np.clip(rng.normal(128, 20, (H // 8, W // 8, 3)), 0, 255).astype(np.uint8)
    canvas = np.asarray(Image.fromarray(canvas).resize((W, H), Image.BILINEAR)).copy()
    crops = [_face_crop(img, EXPECTED[n], 56) for n, img in zip(names, imgs)]
    truth = []
    # a grid of faces, several straddling the 1,024 px tile borders
    for k, (y, x) in enumerate([(300, 400), (300, 1000), (990, 1700), (1500, 2400), (2100, 3300),
                                (700, 2900), (1800, 900), (1000, 3500)]):
        c = crops[k % len(crops)]
        y, x = min(y, H - c.shape[0]), min(x, W - c.shape[1])
        canvas[y : y + c.shape[0], x : x + c.shape[1]] = c
        truth.append((x, y, x + c.shape[1], y + c.shape[0]))
    shapes: list[tuple[int, int]] = []
    from anonymize.faces import cnn_detect

    orig = cnn_detect.YuNetDetector._infer

    def spy(self, tiles):
        shapes.extend(t.shape[:2] for t in tiles)
        return orig(self, tiles)

    monkeypatch.setattr(cnn_detect.YuNetDetector, "_infer", spy)
    tiled = get_detector("yunet")([canvas])[0]
    assert max(max(s) for s in shapes) <= 1024  # memory: the network never sees more than a tile
    shapes.clear()
    single = get_detector("yunet", tiling=False)([canvas])[0]  # whole image shrunk to 1,024 px
    assert len(shapes) == 1

    def found(faces):  # a pasted crop (face + 25 % margin) holding a detection's centre, at face size
        def inside(f, t):
            cx, cy = (f.box[0] + f.box[2]) / 2, (f.box[1] + f.box[3]) / 2
            return t[0] < cx < t[2] and t[1] < cy < t[3] and f.height > 0.4 * (t[3] - t[1])

        return sum(any(inside(f, t) for f in faces) for t in truth)

    assert found(tiled) >= len(truth) - 1, [f.box for f in tiled]
    assert found(single) <= len(truth) // 2
    assert len(tiled) <= len(truth) + 2  # few duplicates or false positives from the noise


def test_a_face_filling_a_large_photo_is_found_on_a_coarse_level(samples):
    names, imgs = samples
    img = imgs[-1]
    big = np.asarray(Image.fromarray(img).resize((img.shape[1] * 5, img.shape[0] * 5), Image.BILINEAR))
    faces = get_detector("yunet")([big])[0]
    want = tuple(5 * v for v in EXPECTED[names[-1]])
    assert faces and _iou(faces[0].box, want) > 0.5, [(f.box, f.score) for f in faces]


# --------------------------------------------------------------------------- EXIF orientation


def test_exif_rotated_photo_is_detected_upright(samples, tmp_path):
    from anonymize.detection import detect

    names, imgs = samples
    upright = imgs[0]
    stored = Image.fromarray(np.ascontiguousarray(np.rot90(upright, 1)))  # camera held sideways
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise
    buf = io.BytesIO()
    stored.save(buf, "JPEG", quality=95, exif=exif.tobytes())
    (tmp_path / "side.jpg").write_bytes(buf.getvalue())
    res = detect([tmp_path / "side.jpg"])
    rec = res.images[0]
    assert res.summary["detector"] == "yunet"
    assert (rec["height"], rec["width"]) == upright.shape[:2]
    assert len(rec["faces"]) == 1 and _iou(rec["faces"][0]["box"], EXPECTED[names[0]]) > 0.5


# --------------------------------------------------------------------------- benchmark scoring


def _bench():
    spec = importlib.util.spec_from_file_location("detection_wider", ROOT / "benchmarks" / "detection_wider.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_wider_scoring_on_a_hand_made_ground_truth():
    b = _bench()
    gt = [
        np.array([[0, 0, 40, 40], [100, 0, 112, 12], [200, 0, 205, 5], [300, 0, 330, 30]], float),
        np.array([[0, 0, 50, 50]], float),
    ]
    ignore = [np.array([False, False, True, False]), np.array([False])]
    heights = [np.array([40, 12, 5, 30]), np.array([50])]
    preds = [
        (np.array([[0, 0, 40, 40],      # exact: face 0
                   [2, 2, 42, 42],      # duplicate of face 0: a false positive (one-to-one)
                   [100, 0, 112, 12],   # the 12 px face (main set, not >= 20 px)
                   [200, 0, 205, 5],    # an ignored face: neither a hit nor a false positive
                   [306, 6, 336, 36],   # face 3 at IoU 0.47: a hit at 0.3 only
                   [500, 500, 520, 520]], float),  # background: false positive
         np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])),
        (np.array([[0, 0, 50, 50]], float), np.array([0.1])),  # below the threshold
    ]
    r = b.score_set(preds, gt, ignore, heights, thresh=0.3)
    assert (r["n_main"], r["n_big"]) == (4, 3)
    assert r["recall_main_50"] == pytest.approx(2 / 4) and r["recall_big_50"] == pytest.approx(1 / 3)
    assert r["recall_main_30"] == pytest.approx(3 / 4) and r["recall_big_30"] == pytest.approx(2 / 3)
    assert r["fp_30"] == 2 and r["predictions"] == 6
    r0 = b.score_set(preds, gt, ignore, heights, thresh=0.05)
    assert r0["recall_big_50"] == pytest.approx(2 / 3) and r0["fp_30"] == 2
    # greedy by score: the higher-scored prediction takes the box even if a later one fits better
    gm, pm = b.greedy_match(np.array([[0, 0, 10, 12], [0, 0, 10, 10]], float), np.array([0.9, 0.8]),
                            np.array([[0, 0, 10, 10]], float), 0.5)
    assert gm.tolist() == [True] and pm.tolist() == [True, False]
    # a union is scored as UnionDetector merges it
    ub, us = b.union_preds([(np.array([[0, 0, 10, 10]], float), np.array([0.9])),
                            (np.array([[1, 1, 10, 10], [50, 50, 60, 60]], float), np.array([0.95, 0.2]))], [0.5, 0.5])
    assert ub.tolist() == [[1, 1, 10, 10]] and us.tolist() == [0.95]


def test_detect_json_reports_the_new_default(tmp_path, samples):
    names, imgs = samples
    Image.fromarray(imgs[0]).save(tmp_path / "a.png")
    res = CliRunner().invoke(app, ["detect", str(tmp_path / "a.png"), "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    assert doc["summary"]["detector"] == "yunet" and doc["images"][0]["faces"][0]["detector"] == "yunet"

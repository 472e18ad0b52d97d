"""Face detectors: registry, every backend on real photos, batching, box files, previews."""
from __future__ import annotations

import json

import numpy as np
import pytest

from anonymize.errors import UsageError
from anonymize.faces.detect import DETECTORS, draw_preview, get_detector, load_boxes
from anonymize.types import Face


def _iou(a, b) -> float:
    x0, y0 = max(a[0], b[0]), max(a[1], b[1])
    x1, y1 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x1 - x0) * max(0.0, y1 - y0)
    area = lambda r: (r[2] - r[0]) * (r[3] - r[1])  # noqa: E731
    return inter / (area(a) + area(b) - inter)


# rough face boxes (x0, y0, x1, y1) of the two sample photos, by eye
EXPECTED = {"astronaut": (175, 60, 270, 175), "grace_hopper": (170, 120, 365, 340)}


@pytest.fixture(scope="module")
def batch(sample_faces):
    names = [n for n in ("astronaut", "grace_hopper") if n in sample_faces]
    imgs = [sample_faces[n] for n in names]
    blank = np.full((240, 320, 3), 127, np.uint8)
    return names, imgs, blank


def _check_faces(names, results):
    for name, faces in zip(names, results):
        assert len(faces) >= 1, name
        top = faces[0]
        assert _iou(top.box, EXPECTED[name]) > 0.5, (name, top.box)
        lm = top.landmarks5
        assert lm is not None and lm.shape == (5, 2)
        # MTCNN order: image-left eye, image-right eye, nose, mouth left, mouth right
        assert lm[0, 0] < lm[1, 0] and lm[3, 0] < lm[4, 0]
        assert max(lm[0, 1], lm[1, 1]) < lm[2, 1] < min(lm[3, 1], lm[4, 1])
        x0, y0, x1, y1 = top.box
        assert np.all((lm[:, 0] > x0 - 5) & (lm[:, 0] < x1 + 5) & (lm[:, 1] > y0 - 5) & (lm[:, 1] < y1 + 5))


def test_registry_lists_backends_and_rejects_unknown():
    assert set(DETECTORS.names()) >= {"mtcnn", "dlib-hog", "dlib-cnn", "haar"}
    for spec in DETECTORS:
        assert spec.summary and spec.licence and spec.weights_note
    with pytest.raises(UsageError, match="unknown detector"):
        get_detector("nope")


def test_mtcnn_mixed_sizes_and_a_blank_image_in_one_call(batch):
    names, imgs, blank = batch
    det = get_detector("mtcnn", min_face=40)
    # two equal-size images with a face-less one between them (facenet's batch crash #224),
    # plus other sizes in the same call
    small = np.ascontiguousarray(imgs[0][::2, ::2])
    res = det(imgs + [blank, small, blank.copy(), np.full((8, 8, 3), 0, np.uint8)])
    assert len(res) == len(imgs) + 4
    _check_faces(names, res[: len(imgs)])
    assert res[len(imgs)] == [] and res[len(imgs) + 2] == [] and res[-1] == []
    assert len(res[len(imgs) + 1]) == 1 and res[len(imgs) + 1][0].score >= det.thresh
    assert all(f.detector == "mtcnn" for fs in res for f in fs)


def test_mtcnn_same_results_batched_and_alone(batch):
    names, imgs, blank = batch
    det = get_detector("mtcnn", min_face=40)
    a = det([imgs[0], imgs[0].copy(), blank])
    b = det([imgs[0]])
    assert len(a[0]) == len(a[1]) == len(b[0])
    # a twentieth of a pixel: batch size and thread count change the float summation order
    np.testing.assert_allclose(a[0][0].box, b[0][0].box, atol=0.05)


@pytest.mark.parametrize("name", ["dlib-hog", "haar"])
def test_classic_backends_find_the_sample_faces(name, batch):
    names, imgs, blank = batch
    det = get_detector(name, thresh=0.3 if name == "dlib-hog" else 0.0, min_face=80)
    res = det(imgs + [blank])
    _check_faces(names, res[: len(imgs)])
    assert res[-1] == []


@pytest.mark.slow
def test_dlib_cnn_on_a_small_image(sample_faces):
    img = np.ascontiguousarray(sample_faces["astronaut"][::2, ::2]) if "astronaut" in sample_faces else None
    if img is None:
        pytest.skip("astronaut sample missing")
    res = get_detector("dlib-cnn")([img])
    assert len(res[0]) == 1
    assert _iou(res[0][0].box, tuple(v / 2 for v in EXPECTED["astronaut"])) > 0.5


def test_landmarks68_and_thresholds(batch):
    names, imgs, _ = batch
    res = get_detector("mtcnn", landmarks68=True, min_face=40)(imgs[:1])
    f = res[0][0]
    assert f.landmarks68 is not None and f.landmarks68.shape == (68, 2)
    # the 68-point eye centres agree with MTCNN's own eye points within a few pixels
    eyes68 = np.stack([f.landmarks68[36:42].mean(0), f.landmarks68[42:48].mean(0)])
    assert np.abs(eyes68 - f.landmarks5[:2]).max() < 0.15 * f.width
    assert get_detector("mtcnn", min_face=40)(imgs[:1])[0][0].landmarks68 is None
    assert get_detector("mtcnn", thresh=1.01, min_face=40)(imgs[:1]) == [[]]
    # min_face larger than the face removes it
    assert get_detector("haar", min_face=400)(imgs[:1]) == [[]]


def test_bad_input_is_rejected():
    det = get_detector("haar")
    with pytest.raises(ValueError, match="uint8 RGB"):
        det([np.zeros((10, 10), np.uint8)])
    with pytest.raises(ValueError, match="uint8 RGB"):
        det([np.zeros((10, 10, 3), np.float32)])
    assert det([]) == []
    with pytest.raises(UsageError):
        get_detector("haar", min_face=0)


def test_load_boxes_own_json_and_coco(tmp_path):
    faces = [Face((1, 2, 30, 40), 0.9, "mtcnn", landmarks5=np.arange(10.0).reshape(5, 2))]
    own = {"images": [{"relative_path": "sub/a.jpg", "faces": [f.to_dict() for f in faces]},
                      {"path": "b.png", "faces": []}]}
    p = tmp_path / "det.json"
    p.write_text(json.dumps(own))
    got = load_boxes(p)
    assert set(got) == {"sub/a.jpg", "b.png"} and got["b.png"] == []
    assert got["sub/a.jpg"][0].box == (1.0, 2.0, 30.0, 40.0)
    np.testing.assert_allclose(got["sub/a.jpg"][0].landmarks5, faces[0].landmarks5)

    coco = {
        "images": [{"id": 1, "file_name": "x.jpg", "width": 100, "height": 80}, {"id": 2, "file_name": "y.jpg"}],
        "categories": [{"id": 1, "name": "person"}, {"id": 7, "name": "face"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 7, "bbox": [10, 20, 30, 40]},
            {"id": 2, "image_id": 1, "category_id": 1, "bbox": [0, 0, 90, 80]},
            {"id": 3, "image_id": 2, "category_id": 1, "bbox": [5, 5, 10, 10], "score": 0.5},
        ],
    }
    c = tmp_path / "coco.json"
    c.write_text(json.dumps(coco))
    got = load_boxes(c)  # 'face' category by default
    assert [f.box for f in got["x.jpg"]] == [(10.0, 20.0, 40.0, 60.0)] and got["y.jpg"] == []
    got = load_boxes(c, category="person")
    assert len(got["x.jpg"]) == 1 and got["y.jpg"][0].score == 0.5
    with pytest.raises(UsageError, match="no COCO category"):
        load_boxes(c, category="car")
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    with pytest.raises(UsageError):
        load_boxes(bad)
    with pytest.raises(UsageError):
        load_boxes(tmp_path / "missing.json")


def test_draw_preview_marks_faces_without_touching_input(batch):
    names, imgs, _ = batch
    img = imgs[0]
    before = img.copy()
    faces = get_detector("mtcnn", landmarks68=True, min_face=40)([img])[0]
    out = draw_preview(img, faces, scale=1.3)
    assert out.shape == img.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(img, before)
    assert (out != img).any(axis=2).sum() > 200
    np.testing.assert_array_equal(draw_preview(img, []), img)


def test_groups_photo_has_several_faces(shared_dir):
    from PIL import Image

    paths = [shared_dir / "corpus/groups/dlib_2008_004176.jpg", shared_dir / "corpus/groups/dlib_2007_007763.jpg"]
    if not all(p.exists() for p in paths):
        pytest.skip("group photos missing from the corpus")
    imgs = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
    assert imgs[0].shape != imgs[1].shape
    res = get_detector("mtcnn")(imgs)
    for faces in res:
        assert len(faces) >= 5
        boxes = np.array([f.box for f in faces])
        # distinct faces, not duplicates of one box
        assert all(_iou(a, b) < 0.5 for i, a in enumerate(boxes) for b in boxes[i + 1 :])

"""The alignment table, pinned against the code each entry reproduces, on real faces.

dlib150 against dlib's own chip extraction (``get_face_chip_details`` geometry,
``get_face_chip`` pixels) on the bundled samples, on upscaled copies that make
dlib use its image pyramid, and on a few corpus photos when ../shared is there;
facenet160 against facenet-pytorch's ``extract_face``; arcface112 against
InsightFace's template fit + ``cv2.warpAffine``; lightcnn128 against its crop +
``cv2.resize``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from anonymize.errors import UsageError
from anonymize.faces import align
from anonymize.faces.alignments import ALIGNMENTS, ARCFACE_TEMPLATE, extract_chips, get_alignment, matrices, support, warp
from anonymize.types import Face

dlib = pytest.importorskip("dlib")

SAMPLES = Path(__file__).resolve().parent.parent / "anonymize" / "data" / "samples"
CORPUS_PHOTOS = (
    "faces/barack_obama/3.jpg",  # big face: dlib samples from pyramid level 1
    "faces/robert_downey_jr/2.jpeg",  # bigger: level 2
    "faces/aaron_peirsol/1.jpg",  # small LFW crop: the chip enlarges
    "groups/fr_obama_and_biden.jpg",  # several faces in one photo
)
torch.set_num_threads(1)


def _load(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.ascontiguousarray(np.asarray(ImageOps.exif_transpose(im).convert("RGB")))


def _hog_boxes(img: np.ndarray) -> list[tuple[int, int, int, int]]:
    rects = dlib.get_frontal_face_detector()(img, 1)
    return [(r.left(), r.top(), r.right() + 1, r.bottom() + 1) for r in rects]  # exclusive end


@pytest.fixture(scope="module")
def sample_images() -> dict[str, np.ndarray]:
    out = {p.stem: _load(p) for p in sorted(SAMPLES.glob("*.jpg"))}
    if not out:
        pytest.skip("bundled samples missing")
    big = out.get("astronaut")
    if big is not None:  # upscaled copies: dlib extracts their chips from pyramid levels 1 and 2
        for k in (3, 6):
            out[f"astronaut_x{k}"] = np.asarray(Image.fromarray(big).resize((big.shape[1] * k, big.shape[0] * k), Image.BICUBIC))
    return out


def _dlib_reference(img: np.ndarray, box: tuple[int, ...]):  # type: ignore[no-untyped-def]
    shape = align.shape_predictor("5")(img, align.dlib_rect(box))
    return shape, np.asarray(dlib.get_face_chip(img, shape, 150, 0.25)).astype(int)


def _assert_dlib150_exact(images: dict[str, np.ndarray], min_faces: int) -> set[int]:
    depths, n = set(), 0
    for name, img in images.items():
        for box in _hog_boxes(img):
            shape, ref = _dlib_reference(img, box)
            M = matrices("dlib150", img, [box])[0]
            depths.add(align.dlib_chip_plan(M, 150, *img.shape[:2]).depth)
            # geometry: where dlib's own extraction samples (a coordinate ramp through get_face_chip_details)
            det = dlib.get_face_chip_details(shape, 150, 0.25)
            h, w = img.shape[:2]
            xs = np.tile(np.arange(w, dtype=np.float32), (h, 1))
            ys = np.tile(np.arange(h, dtype=np.float32)[:, None], (1, w))
            sx = np.asarray(dlib.extract_image_chip(xs, det), dtype=np.float64)
            sy = np.asarray(dlib.extract_image_chip(ys, det), dtype=np.float64)
            if align.dlib_chip_plan(M, 150, h, w).depth == 0:  # without a pyramid the ramp shows the geometry exactly
                r, c = np.mgrid[0:150, 0:150]
                pts = np.asarray(align.apply_affine(align.invert_affine(M), np.stack([c.ravel(), r.ravel()], 1).astype(float)))
                inside = ((sx > 2) & (sx < w - 3) & (sy > 2) & (sy < h - 3)).ravel()
                assert np.abs(pts[inside, 0] - sx.ravel()[inside]).max() < 1e-3, name
                assert np.abs(pts[inside, 1] - sy.ravel()[inside]).max() < 1e-3, name
            # pixels: the evaluation path and the (float32, differentiable) attack path
            mine = extract_chips("dlib150", img, [box])[0].astype(int)
            d = np.abs(mine - ref)
            assert d.max() <= 1 and (d > 0).mean() < 1e-3, (name, d.max(), (d > 0).mean())
            x = torch.from_numpy(img.copy()).permute(2, 0, 1)[None].float() / 255.0
            t = (warp("dlib150", x, M[None])[0] * 255).round().permute(1, 2, 0).numpy().astype(int)
            d = np.abs(t - ref)
            assert d.max() <= 1 and (d > 0).mean() < 2e-3, (name, d.max(), (d > 0).mean())
            n += 1
    assert n >= min_faces
    return depths


def test_dlib150_equals_dlib_get_face_chip_on_samples(sample_images: dict[str, np.ndarray]) -> None:
    depths = _assert_dlib150_exact(sample_images, min_faces=len(sample_images))
    if "astronaut_x6" in sample_images:
        assert {0, 1, 2} <= depths  # plain, one and two pyramid levels were all exercised


@pytest.mark.shared
def test_dlib150_equals_dlib_get_face_chip_on_corpus_photos(shared_dir: Path) -> None:
    images = {p: _load(shared_dir / "corpus" / p) for p in CORPUS_PHOTOS if (shared_dir / "corpus" / p).is_file()}
    if len(images) < 2:
        pytest.skip("corpus photos missing")
    _assert_dlib150_exact(images, min_faces=len(images))


def test_box_convention_is_one_conversion(sample_images: dict[str, np.ndarray]) -> None:
    from anonymize.faces.detect import dlib_shape5

    img = sample_images["astronaut"]
    r = dlib.get_frontal_face_detector()(img, 1)[0]
    box = (r.left(), r.top(), r.right() + 1, r.bottom() + 1)
    assert align.dlib_rect(box) == r  # a dlib detection round-trips through the exclusive-end box
    shape = align.shape_predictor("5")(img, r)
    assert np.array_equal(dlib_shape5(img, box), [[p.x, p.y] for p in shape.parts()])
    assert align.shape_predictor("5") is align.shape_predictor("5")  # one cache
    with pytest.raises(ValueError):
        align.dlib_rect((1, 2, 3))


def test_facenet160_matches_facenet_pytorch_extract_face(sample_images: dict[str, np.ndarray]) -> None:
    from facenet_pytorch import MTCNN
    from facenet_pytorch.models.utils.detect_face import extract_face

    from anonymize.faces.detect import get_detector

    det = get_detector("mtcnn")
    mtcnn = MTCNN(keep_all=True)
    n = 0
    for name in ("astronaut", "grace_hopper"):
        img = sample_images[name]
        raw = np.asarray(mtcnn.detect(img)[0], dtype=np.float64)  # facenet-pytorch's own boxes
        faces = det([img])[0]
        assert len(faces) == len(raw)
        for f, b in zip(faces, raw):
            assert np.allclose(np.asarray(f.box) - [0, 0, 1, 1], b, atol=1e-3)  # our exclusive end = MTCNN's + 1
            ref = extract_face(img, b, 160, 32).permute(1, 2, 0).numpy().astype(int)
            mine = extract_chips("facenet160", img, [f])[0].astype(int)
            assert np.abs(mine - ref).max() <= 1 and np.abs(mine - ref).mean() < 0.25, name
            n += 1
    assert n >= 2


def test_arcface112_matches_insightface_template_fit(sample_images: dict[str, np.ndarray]) -> None:
    import cv2
    from skimage.transform import SimilarityTransform

    from anonymize.faces.detect import get_detector

    for name in ("astronaut", "grace_hopper"):
        img = sample_images[name]
        f = get_detector("mtcnn")([img])[0][0]
        if hasattr(SimilarityTransform, "from_estimate"):  # InsightFace's estimate_norm (Umeyama)
            ref_t = SimilarityTransform.from_estimate(f.landmarks5, ARCFACE_TEMPLATE)
        else:  # pragma: no cover - older scikit-image
            ref_t = SimilarityTransform()
            assert ref_t.estimate(f.landmarks5, ARCFACE_TEMPLATE)
        M = matrices("arcface112", img, [f])[0]
        np.testing.assert_allclose(M, ref_t.params[:2], atol=1e-6)
        ref = cv2.warpAffine(img, ref_t.params[:2], (112, 112), borderValue=0.0).astype(int)
        d = np.abs(extract_chips("arcface112", img, [f])[0].astype(int) - ref)
        # OpenCV samples at 1/32 px with fixed-point weights; the float warp agrees to a few levels at edges
        assert d.mean() < 0.5 and np.percentile(d, 99.9) <= 4, (name, d.mean(), d.max())
        # without detector landmarks (boxes from a file) dlib fits them: MTCNN's points land near the template
        Mg = matrices("arcface112", img, [Face(f.box, 1.0, "file")])[0]
        assert np.abs(align.apply_affine(Mg, f.landmarks5) - ARCFACE_TEMPLATE).max() < 8, name


def test_lightcnn128_matches_its_preprocessing(sample_images: dict[str, np.ndarray]) -> None:
    import cv2

    from anonymize.faces.detect import get_detector

    img = sample_images["astronaut"]
    f = get_detector("mtcnn")([img])[0][0]
    x, y, x2, y2 = (int(v) for v in np.asarray(f.box) - [0, 0, 1, 1])
    ref = cv2.resize(img[y:y2, x:x2], (128, 128)).astype(int)
    d = np.abs(extract_chips("lightcnn128", img, [f])[0].astype(int) - ref)
    assert d.max() <= 1 and d.mean() < 0.3


def test_every_entry_warps_differentiably_and_locally(sample_images: dict[str, np.ndarray]) -> None:
    from anonymize.faces.detect import get_detector

    img = sample_images["astronaut"]
    f = get_detector("mtcnn")([img])[0][0]
    h, w = img.shape[:2]
    for spec in ALIGNMENTS:
        M = matrices(spec.name, img, [f])
        x = (torch.from_numpy(img.copy()).permute(2, 0, 1)[None].float() / 255.0).requires_grad_(True)
        chips = warp(spec.name, x, M)
        assert chips.shape == (1, 3, spec.size, spec.size) and 0 <= float(chips.detach().min()) and float(chips.detach().max()) <= 1
        chips.mean().backward()
        g = x.grad[0].abs().sum(0)
        ys, xs = np.nonzero(g.numpy())
        x0, y0, x1, y1 = support(spec.name, M[0], h, w)
        assert len(ys) and xs.min() >= x0 and xs.max() < x1 and ys.min() >= y0 and ys.max() < y1, spec.name
        # cutting from a window that holds the support gives the same chip (what ap does)
        win = x.detach()[:, :, y0:y1, x0:x1]
        Mw = M.copy()
        Mw[:, :, 2] += Mw[:, :, 0] * x0 + Mw[:, :, 1] * y0
        assert torch.allclose(warp(spec.name, win, Mw), chips.detach(), atol=1.5 / 255), spec.name


def test_table_rejects_what_it_cannot_do(sample_images: dict[str, np.ndarray]) -> None:
    with pytest.raises(UsageError, match="dlib150"):
        get_alignment("dlib151")
    with pytest.raises(ValueError, match="uint8 RGB"):
        extract_chips("facenet160", np.zeros((10, 10), np.uint8), [(0, 0, 5, 5)])
    assert extract_chips("dlib150", sample_images["astronaut"], []).shape == (0, 150, 150, 3)

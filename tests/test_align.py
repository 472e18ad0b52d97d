"""Alignment, differentiable warping and paste-back on real faces; dlib chip agreement."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from anonymize.faces import align
from anonymize.faces.detect import dlib_shape5, dlib_shape68, get_detector
from anonymize.types import Face


def _t(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(img.copy()).permute(2, 0, 1)[None].float()


def _u8(crop: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(crop.detach().round().clamp(0, 255).byte().permute(1, 2, 0).numpy())


@pytest.fixture(scope="module")
def face(sample_faces):
    if "astronaut" not in sample_faces:
        pytest.skip("astronaut sample missing")
    img = sample_faces["astronaut"]
    f = get_detector("mtcnn", min_face=60)([img])[0][0]
    return img, f


def test_similarity_transform_recovers_a_known_similarity(test_seed):
    rng = np.random.default_rng(test_seed)
    src = rng.uniform(0, 100, (5, 2))
    th, s, t = 0.3, 1.7, np.array([12.0, -4.0])
    R = s * np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])
    dst = src @ R.T + t
    M = align.similarity_transform(src, dst)
    np.testing.assert_allclose(M, np.c_[R, t], atol=1e-9)
    # batched torch, with noise: least squares, and the inverse round-trips
    Mt = align.similarity_transform(torch.tensor(np.stack([src, src])), torch.tensor(np.stack([dst, dst + 1])))
    assert Mt.shape == (2, 2, 3)
    back = align.apply_affine(align.invert_affine(Mt[0]), torch.tensor(dst))
    np.testing.assert_allclose(back.numpy(), src, atol=1e-9)
    # a reflection is not representable: the fit stays a proper rotation
    Mr = align.similarity_transform(src, src * np.array([-1.0, 1.0]))
    assert np.linalg.det(Mr[:, :2]) >= 0
    with pytest.raises(ValueError):
        align.similarity_transform(src, dst[:3])


def test_warp_is_differentiable_and_local(face):
    img, f = face
    x = _t(img).requires_grad_(True)
    M = align.chip_transform_from_landmarks5(f.landmarks5, 150)
    crops = align.warp_faces(x, M[None], 150)
    assert crops.shape == (1, 3, 150, 150)
    crops.mean().backward()
    g = x.grad[0].abs().sum(0)
    assert g.sum() > 0
    ys, xs = np.nonzero(g.numpy())
    # gradient lives around the face only
    assert xs.min() > 100 and xs.max() < 360 and ys.max() < 300
    assert g[400:, :].sum() == 0


def test_align_then_paste_back_reproduces_the_image(face):
    img, f = face
    x = _t(img)
    M = align.chip_transform_from_landmarks5(f.landmarks5, 256)
    crop = align.warp_faces(x, M[None], 256)
    out = align.paste_back(x, crop, M[None], feather=0.1)
    # alpha in image space: where the crop fully replaces the image
    alpha = align.paste_back(torch.zeros(1, 1, *x.shape[2:]), torch.ones(1, 1, 256, 256), M[None], feather=0.1)[0, 0]
    inside = alpha > 0.99
    assert inside.sum() > 6000  # the ~117x117 px footprint minus its feathered rim
    diff = (out - x).abs()[0].mean(0)
    # resampling twice (up, then down) only blurs slightly: a few grey levels on a 0..255 scale
    assert float(diff[inside].mean()) < 3.0
    assert float(diff[inside].quantile(0.99)) < 25.0
    # outside the footprint the image is untouched, bit for bit
    assert float(diff[alpha == 0].max()) == 0.0


def test_paste_back_gradients_several_faces_and_borders(sample_faces):
    img = sample_faces["astronaut"] if "astronaut" in sample_faces else next(iter(sample_faces.values()))
    x = _t(img)[:, :, :200, :300].contiguous().requires_grad_(True)
    # three crops: inside, across the top-left corner, and wholly outside the image
    M = torch.tensor(
        [[[0.5, 0.0, -40.0], [0.0, 0.5, -30.0]], [[1.0, 0.0, 20.0], [0.0, 1.0, 25.0]], [[1.0, 0.0, 900.0], [0.0, 1.0, 0.0]]],
        dtype=torch.float64,
    )
    crops = align.warp_faces(x, M, 64)
    edited = (crops * 0.5).detach().requires_grad_(True)
    out = align.paste_back(x, edited, M, feather=0.1)
    assert out.shape == x.shape
    out.sum().backward()
    assert edited.grad[0].abs().sum() > 0 and edited.grad[1].abs().sum() > 0
    assert edited.grad[2].abs().sum() == 0  # outside the image: no footprint
    assert x.grad.abs().sum() > 0
    # the corner crop covers image pixels (0..43, 0..38) only; far pixels are untouched
    assert torch.equal(out[..., 150:, 250:], x[..., 150:, 250:])
    # pasting an unmodified corner crop back leaves the image unchanged (up to float rounding)
    same = align.paste_back(x.detach(), crops[1:2].detach(), M[1:2], feather=0.1)
    assert float((same - x.detach()).abs().max()) < 1e-3
    # two images, one crop each (index defaults to one per image)
    two = torch.cat([x.detach(), x.detach().flip(-1)])
    c2 = align.warp_faces(two, M[:2], 32)
    assert torch.allclose(c2[1], align.warp_faces(two[1:], M[1:2], 32)[0])
    with pytest.raises(ValueError):
        align.warp_faces(two, M, 32)


def test_dlib_chip_matches_dlib_get_face_chip(sample_faces):
    import dlib
    import face_recognition_models as frm

    rec = dlib.face_recognition_model_v1(frm.face_recognition_model_location())
    hog = dlib.get_frontal_face_detector()
    descs = []
    for name, img in sample_faces.items():
        r = max(hog(img, 0), key=lambda r: r.area())
        s5 = dlib_shape5(img, (r.left(), r.top(), r.right() + 1, r.bottom() + 1))
        shape = dlib.full_object_detection(r, [dlib.point(int(px), int(py)) for px, py in s5])
        ref = np.ascontiguousarray(dlib.get_face_chip(img, shape, 150, 0.25))
        M = align.dlib_chip_transform_exact(s5)
        mine = _u8(align.warp_faces(_t(img), M[None], 150, padding_mode="zeros")[0])
        d = np.abs(mine.astype(int) - ref.astype(int))
        assert d.mean() < 1.5, name
        # the pure-torch template version lands within about a chip pixel of dlib's geometry
        Mt = align.dlib_chip_transform(s5)
        corners = np.array([[0.0, 0.0], [149.0, 0.0], [0.0, 149.0], [149.0, 149.0]])
        a, b = align.apply_affine(align.invert_affine(Mt), corners), align.apply_affine(align.invert_affine(M), corners)
        assert np.abs(a - b).max() < 2.0 * np.sqrt(abs(np.linalg.det(align.invert_affine(M)[:, :2]))), name
        da = np.asarray(rec.compute_face_descriptor(ref))
        db = np.asarray(rec.compute_face_descriptor(mine))
        assert np.linalg.norm(da - db) < 0.05, name  # dlib's same-person threshold is 0.6
        descs.append(da)
    if len(descs) == 2:
        assert np.linalg.norm(descs[0] - descs[1]) > 0.6  # two different people stay apart


def test_ffhq_alignment_256_and_1024(face):
    img, f = face
    lm68 = dlib_shape68(img, f.box)
    for size in (256, 1024):
        M = align.ffhq_transform(lm68, size)
        eyes = align.apply_affine(M, np.stack([lm68[36:42].mean(0), lm68[42:48].mean(0)]))
        assert abs(eyes[0, 1] - eyes[1, 1]) < 0.01 * size  # level eyes
        assert abs(eyes.mean(0)[0] - (size - 1) / 2) < 0.03 * size  # centred
        assert 0.2 * size < eyes[1, 0] - eyes[0, 0] < 0.3 * size
        assert 0.3 * size < eyes[0, 1] < 0.5 * size
    crop = align.warp_faces(_t(img), align.ffhq_transform(lm68, 1024)[None], 1024)
    assert crop.shape == (1, 3, 1024, 1024) and float(crop.std()) > 10


def test_soft_masks(face):
    img, f = face
    h, w = img.shape[:2]
    m = align.soft_face_mask(h, w, [f], scale=1.2)
    assert m.shape == (1, h, w) and float(m.min()) >= 0 and float(m.max()) <= 1
    cx, cy = int((f.box[0] + f.box[2]) / 2), int((f.box[1] + f.box[3]) / 2)
    assert float(m[0, cy, cx]) == 1.0 and float(m[0, 0, 0]) == 0.0
    assert 0 < float(m[0, cy, int(cx + 0.6 * f.width)]) < 1  # soft rim of the 1.2x ellipse
    f68 = Face(f.box, f.score, f.detector, f.landmarks5, dlib_shape68(img, f.box))
    hull = align.soft_face_mask(h, w, [f68], kind="hull")
    nose = f68.landmarks68[30].round().astype(int)
    assert float(hull[0, nose[1], nose[0]]) > 0.99 and float(hull[0, 0, 0]) == 0.0
    cm = align.crop_mask(64, 0.1, "ellipse")
    assert float(cm[0, 32, 32]) == 1.0 and float(cm[0, 0, 0]) == 0.0


def test_chip_from_mtcnn_landmarks_is_near_the_template(face):
    img, f = face
    M = align.chip_transform_from_landmarks5(f.landmarks5)
    pts = align.apply_affine(M, f.landmarks5)
    assert np.abs(pts - align.LANDMARKS5_CHIP_TEMPLATE).max() < 10

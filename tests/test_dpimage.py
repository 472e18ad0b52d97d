"""dpimage: IDPI mechanism and backends, DP-Pix, the method's outputs and privacy reports."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from anonymize.errors import MethodUnavailable, UsageError, WeightsMissing
from anonymize.methods.base import METHODS, MethodContext
from anonymize.methods.dpimage import DPImage
from anonymize.privacy.accounting import box_sensitivity
from anonymize.privacy.idpi import (
    LinearBackend,
    PCABackend,
    PSPBackend,
    dp_pix,
    load_pca_basis,
    parse_layers,
    pca_basis_path,
    run_idpi,
)
from anonymize.types import Face, ImageItem


def _toy(d: int = 1000, scale: float = 1.0, clip: float = 10.0) -> LinearBackend:
    return LinearBackend(np.eye(d) * scale, np.full(d, 0.5), clip=np.full(d, clip), name="toy")


# ------------------------------------------------------------------ mechanism


def test_noise_scale_single_and_iterated(test_seed):
    be = _toy()
    x = np.full((4, be.dims), 0.5, np.float32)
    # 4000 samples: the std estimate's relative standard error is ~1.1%, so 5% is > 4 of them
    out, rep = run_idpi(be, x, sigma=0.02, iterations=1, delta=1e-6, rng=np.random.default_rng(test_seed))
    assert np.std(out - x) == pytest.approx(0.02, rel=0.05)
    # with an inactive clip box, T steps accumulate to sigma * sqrt(T) (the "single-shot equivalent")
    out, rep9 = run_idpi(be, x, sigma=0.02, iterations=9, delta=1e-6, rng=np.random.default_rng(test_seed))
    assert np.std(out - x) == pytest.approx(0.06, rel=0.05)
    assert rep9.rho == pytest.approx(rep.rho / 9)
    assert rep.sensitivity == pytest.approx(box_sensitivity(10.0, be.dims))


def test_clipping_bound_holds(test_seed):
    be = _toy(d=500, clip=0.1)
    x = np.random.default_rng(test_seed + 1).random((3, 500)).astype(np.float32)
    out, _ = run_idpi(be, x, sigma=1e-4, iterations=3, delta=1e-6, rng=np.random.default_rng(test_seed))
    z = be.encode(out)
    assert np.abs(z).max() <= 0.1 + 1e-3  # clipped latent (+ tiny noise)
    # far-apart inputs are pulled into the box: outputs differ by at most the box diameter + noise
    assert np.linalg.norm(out[0] - out[1]) <= box_sensitivity(0.1, 500) + 0.01


def test_guarantee_decided_by_lipschitz_check():
    assert _toy().guarantee == "rigorous"
    expanding = _toy(scale=1.5)
    assert expanding.guarantee == "nominal" and "expand" in expanding.guarantee_reason
    assert PSPBackend.guarantee == "nominal" and "Lip" in PSPBackend.guarantee_reason


def test_layers_subset_reduces_sensitivity_and_warns():
    be = _toy(d=100, clip=1.0)
    mask = parse_layers("0-24", 100)
    x = np.full((1, 100), 0.5, np.float32)
    out, rep = run_idpi(be, x, sigma=0.01, iterations=1, delta=1e-6, rng=np.random.default_rng(0), layers=mask)
    assert np.all(out[0, 25:] == 0.5) and np.any(out[0, :25] != 0.5)
    assert rep.sensitivity == pytest.approx(box_sensitivity(1.0, 25))
    assert any("subset" in n for n in rep.notes)
    assert parse_layers("1-7", 18, group=512, one_based=True).sum() == 7 * 512
    with pytest.raises(UsageError):
        parse_layers("0-200", 100)


# ------------------------------------------------------------------ DP-Pix


def test_dp_pix_cell_means_and_laplace_scale(test_seed):
    rng = np.random.default_rng(test_seed)
    region = rng.integers(0, 256, (32, 48, 3), dtype=np.uint8)
    exact, info = dp_pix(region, b=8, m=1, epsilon=1e12, rng=rng)
    cell = region[8:16, 16:24].reshape(-1, 3).mean(0)
    assert np.all(np.abs(exact[8:16, 16:24].reshape(-1, 3) - cell) <= 0.5 + 1e-9)
    assert info["epsilon"] == 1e12 and info["guarantee"] == "rigorous" and "m=1" in info["neighbouring"]
    # noise std of a Laplace(scale) is sqrt(2) * scale; measured on a mid-grey image far from the
    # clip, with a scale (~4 gray levels) large enough that rounding to uint8 adds only ~0.1% to
    # the std (at epsilon=40 the scale was 0.4 and rounding alone added 7.5% of the 10% allowed);
    # 16384 cells put the estimate's standard error near 0.9%.
    grey = np.full((512, 512, 1), 128, np.uint8)
    noisy, info = dp_pix(grey, b=4, m=1, epsilon=4.0, rng=np.random.default_rng(test_seed + 1))
    scale = 255 * 1 / (16 * 4.0)
    assert info["laplace_scale"] == pytest.approx(scale)
    cells = noisy[::4, ::4, 0].astype(float) - 128
    assert np.std(cells) == pytest.approx(np.sqrt(2) * scale, rel=0.1)
    # partial border cells get more noise (scale uses their pixel count)
    _, info = dp_pix(region[:30], b=8, m=1, epsilon=1.0, rng=rng)
    assert info["partial_cells"]


def test_pixel_variant_whole_image():
    img = np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    item = ImageItem(Path("x.png"), Path("x.png"), img)
    out = DPImage({"variant": "pixel", "b": 8, "m": 2, "epsilon": 0.5})([item], MethodContext(region="image"))[0]
    assert out.protected and out.info["epsilon"] == 0.5 and out.info["delta"] == 0.0
    assert out.info["laplace_scale"] == pytest.approx(3 * 255 * 2 / (64 * 0.5))
    assert np.all(out.pixels[:8, :8] == out.pixels[0, 0])  # one value per cell


# ------------------------------------------------------------------ shipped PCA basis


def test_shipped_basis_small_orthonormal_with_provenance():
    p = pca_basis_path()
    assert p.stat().st_size < 5e6
    b = load_pca_basis(p)
    U = b["basis"]
    assert np.abs(U.T @ U - np.eye(U.shape[1])).max() < 1e-10
    prov = json.loads(p.with_suffix(".json").read_text())
    assert prov["sha256"] == hashlib.sha256(p.read_bytes()).hexdigest() == b["sha256"]
    assert prov["fraction_inside_clip"] >= 0.985  # per-component 99% quantiles
    be = PCABackend()
    assert be.guarantee == "rigorous" and be.size == b["meta"]["size"]


# ------------------------------------------------------------------ the method on real faces


# MTCNN (facenet-pytorch, get_detector("mtcnn")) on the two sample photos, recorded once to keep tests fast
_FACES = {
    "astronaut": ((181.1, 62.2, 268.7, 173.1),
                  [[205.0, 101.7], [246.8, 103.7], [224.7, 129.0], [201.7, 139.2], [245.3, 141.9]]),
    "grace_hopper": ((174.4, 119.6, 356.6, 341.5),
                     [[221.7, 192.2], [309.8, 186.1], [269.4, 239.2], [232.7, 279.6], [306.6, 275.9]]),
}


@pytest.fixture(scope="module")
def face_items(sample_faces):
    items = []
    for name, img in sample_faces.items():
        box, lm5 = _FACES[name]
        face = Face(box, 1.0, "mtcnn", landmarks5=np.array(lm5))
        items.append(ImageItem(Path(f"{name}.png"), Path(f"{name}.png"), img, faces=[face]))
    return items


def test_idpi_faces_report_and_determinism(face_items):
    m = DPImage({"sigma": 1.0, "iterations": 5, "identity": "false"})
    a = m(face_items, MethodContext(seed=1))
    b = m(face_items, MethodContext(seed=1))
    c = m(face_items, MethodContext(seed=2))
    for oa, ob, oc, it in zip(a, b, c, face_items):
        assert oa.protected
        assert np.array_equal(oa.pixels, ob.pixels) and not np.array_equal(oa.pixels, oc.pixels)
        assert oa.pixels.shape == it.pixels.shape
        info = oa.info
        assert info["guarantee"] == "rigorous" and info["backend"] == "pca"
        assert info["epsilon"] > 0 and info["delta"] == 1e-8 and info["alpha"] > 1
        assert "inner ellipse" in info["neighbouring"]
        # outside the face chip the photo is untouched
        x0, y0, x1, y1 = it.faces[0].scaled_box(2.5, it.width, it.height)
        diff = np.any(oa.pixels != it.pixels, axis=2)
        assert diff[y0:y1, x0:x1].any() and not diff[:y0].any() and not diff[y1:].any()


def test_identity_distance_grows_with_sigma(face_items):
    d = {}
    for sigma in (0.05, 20.0):
        outs = DPImage({"sigma": sigma, "iterations": 1})(face_items, MethodContext(seed=0))
        ident = [o.info["identity"] for o in outs]
        if isinstance(ident[0], str):
            pytest.skip(f"dlib-resnet unavailable: {ident[0]}")
        d[sigma] = np.mean([f[0]["distance"] for f in ident])
    assert d[20.0] > d[0.05] + 0.05


def test_face_without_landmarks_is_not_protected():
    img = np.full((64, 64, 3), 120, np.uint8)
    item = ImageItem(Path("a.png"), Path("a.png"), img, faces=[Face((10, 10, 40, 40), 1.0, "toy")])
    out = DPImage({"identity": "false"})([item], MethodContext())[0]
    assert not out.protected and "landmarks" in out.info["reason"]


def test_whole_image_region_and_subset_is_nominal():
    img = np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8)
    item = ImageItem(Path("a.png"), Path("a.png"), img)
    out = DPImage({"layers": "0-15", "identity": "false"})([item], MethodContext(region="image"))[0]
    assert out.protected and out.pixels.shape == img.shape
    assert out.info["guarantee"] == "nominal" and out.info["layers_subset"] and out.info["noised_dims"] == 16
    assert "any two images" in out.info["neighbouring"]


def test_psp_needs_weights_and_xai_needs_a_trained_generator(monkeypatch, tmp_path):
    monkeypatch.setenv("ANONYMIZE_HOME", str(tmp_path))
    monkeypatch.setenv("ANONYMIZE_WEIGHTS", str(tmp_path))
    with pytest.raises(WeightsMissing) as ei:
        DPImage({"backend": "psp"})
    assert "psp-ffhq-encode" in str(ei.value)
    with pytest.raises(UsageError) as ei:
        DPImage({"variant": "xai"})
    assert "anonymize train dpimage-xai" in str(ei.value)
    with pytest.raises(MethodUnavailable) as ei:
        DPImage({"variant": "xai", "weights": str(tmp_path / "nope.pt")})
    assert "anonymize train dpimage-xai" in str(ei.value)
    with pytest.raises(UsageError):
        DPImage({"sigma": -1})


def test_registered():
    spec = METHODS.get("dpimage")
    assert spec.factory is DPImage and spec.needs_faces

"""Tests for the ``ope`` method (seed paper 001): tracer, position OPE, keys, method, metrics."""
from __future__ import annotations

import json
import os
import stat
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anonymize.errors import UsageError
from anonymize.methods.base import METHODS, MethodContext, get_method
from anonymize.methods.ope import OpeMethod
from anonymize.metrics import ope as M
from anonymize.privacy.ope_keys import ENV_KEY, PAPER_KEY, load_key
from anonymize.types import Face, ImageItem
from anonymize.vector.imagetracer import trace, trace_to_svg
from anonymize.vector.ope_svg import PositionCipher
from anonymize.vector.raster import rasterize

SVG_NS = "{http://www.w3.org/2000/svg}"


@pytest.fixture(scope="module")
def paper_cipher() -> PositionCipher:
    return PositionCipher(PAPER_KEY)


def _small(img: np.ndarray, size: int) -> np.ndarray:
    return np.asarray(Image.fromarray(img).resize((size, size), Image.BICUBIC))


# ---------------------------------------------------------------- position OPE


def test_paper_offset_reproduced_exactly(paper_cipher: PositionCipher) -> None:
    assert paper_cipher.offset == -796
    # canvas sizes E(W) - offset under the verified configuration (spec B.2.3)
    expected = {32: 331, 50: 455, 64: 645, 100: 918, -1: -24, 224: 2025}
    assert {w: paper_cipher.shift(w) for w in expected} == expected


def test_decoded_key_or_default_range_do_not_give_the_paper_offset() -> None:
    import base64

    # spec B.5.1 / V: the decoded key gives -277, pyope's default in_range gives -99990
    assert PositionCipher(base64.b64decode(PAPER_KEY)).offset == -277
    assert PositionCipher(PAPER_KEY, in_range=(0, 32767)).offset == -99990


def test_order_preserving_and_interp(paper_cipher: PositionCipher) -> None:
    vals = [paper_cipher.shift(v) for v in range(-1, 121)]
    assert all(b > a for a, b in zip(vals, vals[1:]))
    # round: half-to-even, so 12.5 -> 12 and 13.5 -> 14
    assert paper_cipher.shift(12.5) == paper_cipher.shift(12)
    assert paper_cipher.shift(13.5) == paper_cipher.shift(14)
    lin = PositionCipher(PAPER_KEY, interp="linear")
    xs = np.arange(-1, 60, 0.1)
    ys = [lin.shift(float(x)) for x in xs]
    assert all(b > a for a, b in zip(ys, ys[1:]))
    assert lin.shift(12.5) == pytest.approx((lin.shift(12) + lin.shift(13)) / 2)


def test_memoisation_counts_pyope_calls() -> None:
    c = PositionCipher(PAPER_KEY)
    calls0 = c.calls
    svg = '<svg width="10" height="10"><path d="M 0 0 L 10 0 L 10 10 Q 5 12 0 10 Z " /></svg>'
    c.encrypt_svg(svg)
    after_first = c.calls
    assert after_first - calls0 == 3  # 10, 5, 12 (0 is the offset, already cached)
    c.encrypt_svg(svg)
    c.encrypt_svg(svg)
    assert c.calls == after_first
    assert c.cache_size == 4


def test_encrypt_svg_is_token_wise_and_keeps_attributes(paper_cipher: PositionCipher) -> None:
    svg = (
        '<svg width="12" height="12" version="1.1" xmlns="http://www.w3.org/2000/svg" desc="v 1.2.6" >'
        '<path fill="rgb(1,12,121)" stroke="rgb(1,12,121)" stroke-width="1" opacity="1" d="M 1 12 L 12 1 L 1.5 -1 Z " /></svg>'
    )
    out = paper_cipher.encrypt_svg(svg)
    root = ET.fromstring(out)
    s = paper_cipher.shift
    assert root.get("width") == str(s(12)) and root.get("height") == str(s(12))
    assert root.get("desc") == "v 1.2.6"
    path = root.find(f"{SVG_NS}path")
    assert path is not None
    assert path.get("fill") == "rgb(1,12,121)" and path.get("stroke-width") == "1"
    assert path.get("d") == f"M {s(1)} {s(12)} L {s(12)} {s(1)} L {s(2)} {s(-1)} Z "


def test_out_of_range_coordinate_is_a_clear_error() -> None:
    c = PositionCipher(PAPER_KEY, in_range=(-10, 10))
    with pytest.raises(ValueError, match="in_range"):
        c.shift(11)


# ---------------------------------------------------------------- keys


def test_key_file_generated_with_mode_0600_and_reused(tmp_path: Path) -> None:
    kf = tmp_path / "sub" / "ope.key"
    k1 = load_key(kf, env={})
    assert k1.source == "generated"
    assert stat.S_IMODE(os.stat(kf).st_mode) == 0o600
    k2 = load_key(kf, env={})
    assert k2.source == "file" and k2.secret == k1.secret and k2.fingerprint == k1.fingerprint
    assert k1.secret.decode() not in repr(k1)


def test_key_from_env_and_default_file(tmp_path: Path) -> None:
    k = load_key(None, env={ENV_KEY: "my secret key"})
    assert k.source == "env" and k.secret == b"my secret key"
    env = {"ANONYMIZE_HOME": str(tmp_path / "home")}
    d1 = load_key(None, env=env)
    assert d1.source == "default-generated"
    assert stat.S_IMODE(os.stat(tmp_path / "home" / "keys" / "ope.key").st_mode) == 0o600
    assert load_key(None, env=env).secret == d1.secret


def test_key_never_in_method_output(tmp_path: Path) -> None:
    kf = tmp_path / "k.key"
    m = OpeMethod({"key_file": str(kf), "size": 16, "out_size": 32, "region": "image"})
    secret = kf.read_bytes().strip().decode()
    img = np.random.default_rng(0).integers(0, 255, (20, 20, 3), dtype=np.uint8)
    out = m([ImageItem(Path("x.png"), Path("x.png"), img)], MethodContext())[0]
    blob = json.dumps(out.info)
    assert secret not in blob and secret not in repr(m.key)
    assert out.info["key_fingerprint"] == m.key.fingerprint and len(m.key.fingerprint) == 16
    assert out.pixels.shape == (32, 32, 3) and out.alpha is None
    with_alpha = ImageItem(Path("y.png"), Path("y.png"), img, alpha=np.full((20, 20), 7, np.uint8))
    out = m([with_alpha], MethodContext())[0]
    assert out.alpha is not None and out.alpha.shape == (32, 32) and (out.alpha == 255).all()


# ---------------------------------------------------------------- tracer


def test_tracer_matches_imagetracerjs_reference_output() -> None:
    """Byte-exact against imagetracerjs 1.2.6 'default' output for an image with a hole (incl. its integer-rounded hole)."""
    img = np.full((10, 10, 3), 255, np.uint8)
    img[1:9, 1:9] = (255, 0, 0)
    img[3:6, 3:7] = (0, 0, 255)
    svg = trace_to_svg(img)
    body = svg[svg.index("<path") :]
    assert body == (
        '<path fill="rgb(255,255,255)" stroke="rgb(255,255,255)" stroke-width="1" opacity="1" '
        'd="M 0 0 L 10 0 L 10 10 L 0 10 L 0 0 Z M 1 1 L 1 9 L 9 9 L 9 1 L 1 1 Z " />'
        '<path fill="rgb(255,0,0)" stroke="rgb(255,0,0)" stroke-width="1" opacity="1" '
        'd="M 1 1 L 9 1 L 9 9 L 1 9 L 1 1 Z M 3 3 Q 1 8 7 6 Q 9 1 3 3 Z " />'
        '<path fill="rgb(0,0,255)" stroke="rgb(0,0,255)" stroke-width="1" opacity="1" '
        'd="M 3 3 Q 8.6 1.1 7 6 Q 1.4 7.9 3 3 Z " /></svg>'
    )
    tiny = np.array(
        [[[255, 0, 0], [255, 0, 0], [0, 0, 255]], [[255, 0, 0], [255, 0, 0], [0, 0, 255]], [[0, 255, 0]] * 3],
        np.uint8,
    )
    body = trace_to_svg(tiny)
    assert body[body.index("<path") :] == (
        '<path fill="rgb(255,0,0)" stroke="rgb(255,0,0)" stroke-width="1" opacity="1" '
        'd="M 0 0 Q 3 -1 2 2 Q -1 3 0 0 Z " />'
        '<path fill="rgb(0,255,0)" stroke="rgb(0,255,0)" stroke-width="1" opacity="1" '
        'd="M 0.5 2 L 3 2.5 L 0.5 3 L 0.5 2 Z " /></svg>'
    )


def test_tracer_on_real_image_gives_valid_svg(sample_faces: dict) -> None:
    img = _small(next(iter(sample_faces.values())), 32)
    tr = trace(img)
    assert len(tr.palette) == 16 and tr.n_paths > 10
    svg = tr.to_svg()
    root = ET.fromstring(svg)
    assert root.tag == f"{SVG_NS}svg" and root.get("width") == "32" and root.get("height") == "32"
    paths = root.findall(f"{SVG_NS}path")
    assert len(paths) == tr.n_paths
    colours = {p.get("fill") for p in paths}
    assert 1 < len(colours) <= 16
    for p in paths:
        d = p.get("d", "").split()
        assert d[0] == "M" and d[-1] == "Z"
        assert set(t for t in d if t.isalpha()) <= {"M", "L", "Q", "Z"}
        nums = [float(t) for t in d if not t.isalpha()]
        assert min(nums) >= -8 and max(nums) <= 40  # pixel-edge grid 0..32, spline controls may overshoot
    # deterministic
    assert trace_to_svg(img) == svg


# ---------------------------------------------------------------- method


def test_registered_in_method_registry() -> None:
    assert "ope" in METHODS and METHODS.get("ope").factory is not None
    spec, method = get_method("ope", {"paper_key": True, "size": 16, "out_size": 32})
    assert spec.name == "ope" and isinstance(method, OpeMethod)


def test_method_whole_image_on_real_photo(sample_faces: dict, tmp_path: Path) -> None:
    img = _small(next(iter(sample_faces.values())), 96)
    item = ImageItem(Path("a.png"), Path("a.png"), img)
    m = OpeMethod({"paper_key": True, "size": 40, "out_size": 112, "region": "image"})
    out = m([item], MethodContext())[0]
    assert out.pixels.shape == (112, 112, 3) and out.pixels.dtype == np.uint8 and out.protected
    info = out.info
    assert info["offset"] == -796 and info["tracer"] == "imagetracer" and info["n_paths"] > 10
    assert set(info["timings"]) == {"trace_s", "encrypt_s", "render_s"}
    s_dei = M.ssim(img, out.pixels)
    assert 0.05 < s_dei < 0.75
    # the structural warp lowers SSIM well below the vectorised-only render
    from anonymize.vector.deid import deidentify

    r = deidentify(img, m.cipher, size=40, out_size=(112, 112), keep_vector=True)
    assert r.vec is not None and M.ssim(img, r.vec) > s_dei + 0.1
    # deterministic for a fixed key, different under another key
    again = OpeMethod({"paper_key": True, "size": 40, "out_size": 112, "region": "image"})([item], MethodContext())[0]
    assert np.array_equal(again.pixels, out.pixels)
    other = OpeMethod({"size": 40, "out_size": 112, "region": "image", "key_file": str(tmp_path / "o.key")})
    assert not np.array_equal(other([item], MethodContext())[0].pixels, out.pixels)


def test_faces_region_only_changes_the_box(sample_faces: dict) -> None:
    img = _small(next(iter(sample_faces.values())), 120)
    face = Face(box=(40.0, 30.0, 80.0, 78.0), score=0.99, detector="test")
    item = ImageItem(Path("f.png"), Path("f.png"), img.copy(), faces=[face])
    ctx = MethodContext(region="faces", mask_scale=1.0)
    out = OpeMethod({"paper_key": True, "size": 24})([item], ctx)[0]
    assert out.pixels.shape == img.shape and out.protected
    x0, y0, x1, y1 = face.scaled_box(1.0, img.shape[1], img.shape[0])
    assert out.info["regions"] == [[x0, y0, x1, y1]]
    outside = np.ones(img.shape[:2], bool)
    outside[y0:y1, x0:x1] = False
    assert np.array_equal(out.pixels[outside], img[outside])
    assert np.abs(out.pixels[y0:y1, x0:x1].astype(int) - img[y0:y1, x0:x1]).mean() > 5
    none = OpeMethod({"paper_key": True, "size": 24})([ImageItem(Path("n.png"), Path("n.png"), img)], ctx)[0]
    assert not none.protected and np.array_equal(none.pixels, img)


def test_vtracer_alternative_runs_and_is_labelled(sample_faces: dict) -> None:
    img = _small(next(iter(sample_faces.values())), 64)
    out = OpeMethod({"paper_key": True, "size": 32, "out_size": 64, "tracer": "vtracer", "region": "image"})(
        [ImageItem(Path("v.png"), Path("v.png"), img)], MethodContext()
    )[0]
    assert out.pixels.shape == (64, 64, 3) and out.info["tracer_faithful"] is False and out.info["n_paths"] > 0


def test_bad_options_are_usage_errors() -> None:
    for bad in ({"tracer": "potrace"}, {"region": "body"}, {"interp": "cubic"}, {"colour": 1}, {"renderer": "inkscape"}, {"in_range": "5:1"}):
        with pytest.raises(UsageError):
            OpeMethod({"paper_key": True, **bad})


# ---------------------------------------------------------------- metrics


def test_metrics_on_known_inputs() -> None:
    a = np.zeros((16, 16, 3), np.uint8)
    b = np.full((16, 16, 3), 51, np.uint8)  # 0.2 in [0, 1]
    assert M.l2norm(a, b) == pytest.approx(0.2)
    assert M.l2norm(b, a, "relative") == pytest.approx(1.0)
    rng = np.random.default_rng(1)
    x = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
    assert M.ssim(x, x) == pytest.approx(1.0)
    assert M.ssim(x, 255 - x) < 0
    assert M.ssim(x, x, "gaussian") == pytest.approx(1.0)
    with pytest.raises(ValueError):
        M.ssim(x, x, "box")
    # Table 2, size 50 row satisfies Eqs. 4-6 with alpha 0.5
    sp = M.ssim_pos(0.3355, 0.7705)
    d = M.di(0.3355, 0.2510, 0.5)
    assert sp == pytest.approx(-0.4350) and d == pytest.approx(0.29325) and M.sdim(sp, d) == pytest.approx(-0.14175)
    s = M.scores(x, x, 255 - x)
    assert s.ssim_vec == pytest.approx(1.0) and s.sdim == pytest.approx(s.ssim_pos + 0.5 * s.ssim_dei + 0.5 * s.l2norm_dei)
    with pytest.raises(ValueError):
        M.di(0.1, 0.1, 1.5)


def test_size_sweep_returns_argmin(sample_faces: dict) -> None:
    imgs = [_small(v, 32) for v in sample_faces.values()]
    res = M.size_sweep(imgs, sizes=(16, 24, 32), key=PAPER_KEY, out_size=64)
    assert sorted(res.rows) == [16, 24, 32]
    assert res.best_size == min(res.rows, key=lambda k: res.rows[k].sdim)
    d = res.to_dict()
    assert d["n_images"] == len(imgs) and set(d["rows"]["24"]) >= {"ssim_vec", "ssim_dei", "sdim"}
    assert "given" == d["config"]["key"] and PAPER_KEY.decode() not in json.dumps(d)


def test_rasterize_forces_size_on_white() -> None:
    svg = '<svg width="10" height="5" version="1.1" xmlns="http://www.w3.org/2000/svg"></svg>'
    img = rasterize(svg, (7, 9))
    assert img.shape == (9, 7, 3) and (img == 255).all()


def test_cairosvg_renderer_agrees_with_resvg_when_installed(paper_cipher: PositionCipher) -> None:
    pytest.importorskip("cairosvg")
    img = np.zeros((24, 24, 3), np.uint8)
    img[4:20, 6:18] = (30, 160, 60)
    svg = paper_cipher.encrypt_svg(trace_to_svg(img))
    a = rasterize(svg, (64, 64), renderer="resvg").astype(int)
    b = rasterize(svg, (64, 64), renderer="cairosvg").astype(int)
    assert np.abs(a - b).mean() < 3.0

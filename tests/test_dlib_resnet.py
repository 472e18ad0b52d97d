"""dlib .dat reader and the PyTorch port of dlib's face ResNet, checked against dlib itself."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from anonymize.faces import dlib_dat as dd
from tests.helpers import dlib_chips
from anonymize.nets.dlib_resnet import DlibResNet, load_dlib_resnet, zero_extend_add

dlib = pytest.importorskip("dlib")
frm = pytest.importorskip("face_recognition_models")

TOL = 1e-3  # the acceptance bound; the port is float32-exact in practice (~1e-7)


@pytest.fixture(scope="module")
def parsed() -> dd.DnnFile:
    return dd.read_face_resnet()


@pytest.fixture(scope="module")
def net(parsed: dd.DnnFile) -> DlibResNet:
    return DlibResNet().load_dat(parsed).eval().requires_grad_(False)


@pytest.fixture(scope="module")
def dlib_rec():
    return dlib.face_recognition_model_v1(frm.face_recognition_model_location())


def _torch_descriptors(net: DlibResNet, chips: np.ndarray) -> np.ndarray:
    x = torch.from_numpy(chips).permute(0, 3, 1, 2).float()
    with torch.no_grad():
        return net(x).double().numpy()


def _dlib_descriptors(rec, chips: np.ndarray) -> np.ndarray:
    return np.array([np.asarray(v) for v in rec.compute_face_descriptor(list(chips))])


# --------------------------------------------------------------------------- reader


def test_primitive_encodings() -> None:
    st = dd._Stream(bytes.fromhex("0102 0196 811c 028012 0100") + b"10")
    assert [st.int(), st.int(), st.int(), st.int(), st.int()] == [2, 150, -28, 4736, 0]
    assert st.bool() is True and st.bool() is False
    # mantissa first, then exponent (the serialize.h header comment says the opposite)
    assert dd._Stream(bytes.fromhex("030ad7a3811c")).real() == pytest.approx(0.04, rel=1e-7)
    assert dd._Stream(bytes.fromhex("03 62 90 f5 81 11")).real() == np.float32(122.782)
    assert dd._Stream(bytes.fromhex("0110 8104")).real(np.float64) == 1.0
    assert dd._Stream(bytes.fromhex("0100 010b")).real(np.float64) == 0.0
    assert dd._Stream(bytes.fromhex("0101 02007d")).real() == float("inf")
    t = dd._Stream(bytes.fromhex("0102 0101 0102 0101 0101") + np.array([1.5, -2], "<f4").tobytes()).tensor()
    assert t.shape == (1, 2, 1, 1) and t.ravel().tolist() == [1.5, -2.0]
    assert dd._Stream(b"\x01\x05con_4").string() == "con_4"


@pytest.mark.parametrize(
    "data,method",
    [(b"\x00", "int"), (b"\x09" + b"\0" * 9, "int"), (b"\x81\x01", "uint"), (b"x", "bool"), (b"\x02\x01", "int"), (b"", "int")],
)
def test_primitive_errors(data: bytes, method: str) -> None:
    with pytest.raises(dd.DatFormatError):
        getattr(dd._Stream(data), method)()


def test_reads_whole_model_file(parsed: dd.DnnFile) -> None:
    path = Path(frm.face_recognition_model_location())
    assert parsed.size == path.stat().st_size
    assert parsed.input.means == tuple(float(np.float32(v)) for v in (122.782, 117.001, 104.298))
    assert (parsed.input.rows, parsed.input.cols) == (150, 150)
    assert parsed.loss.distance_threshold == pytest.approx(0.6) and parsed.loss.margin == pytest.approx(0.04)
    kinds = [type(layer).__name__ for layer in parsed.layers]
    assert len(kinds) == 108
    assert {k: kinds.count(k) for k in set(kinds)} == {
        "Conv": 29, "Affine": 29, "ReLU": 29, "AddPrev": 14, "Pool": 6, "FC": 1,
    }
    assert kinds[:4] == ["Conv", "Affine", "ReLU", "Pool"] and kinds[-2:] == ["Pool", "FC"]
    n = sum(l.weight.size + (l.bias.size if l.bias is not None else 0) for l in parsed.layers if isinstance(l, (dd.Conv, dd.FC)))
    n += sum(2 * l.gamma.size for l in parsed.layers if isinstance(l, dd.Affine))
    assert n == 5_614_592
    stem = parsed.layers[0]
    assert isinstance(stem, dd.Conv) and stem.weight.shape == (32, 3, 7, 7) and stem.stride == (2, 2) and stem.padding == (0, 0)
    assert len(dd.face_resnet_schema()) == 130


def test_reader_rejects_damaged_files() -> None:
    data = Path(frm.face_recognition_model_location()).read_bytes()
    schema = dd.face_resnet_schema()
    with pytest.raises(dd.DatFormatError):
        dd.read_dnn(data[:-1], schema)  # truncated
    with pytest.raises(dd.DatFormatError):
        dd.read_dnn(data + b"\x00", schema)  # trailing bytes
    with pytest.raises(dd.DatFormatError):
        dd.read_dnn(data, schema[1:])  # wrong architecture
    with pytest.raises(dd.DatFormatError):
        dd.read_dnn(data[:2] + b"\x01\x05loss_" + data[2:], schema)  # wrong loss


# --------------------------------------------------------------------------- network


def test_zero_extend_add() -> None:
    a = torch.ones(1, 2, 3, 3)
    b = torch.full((1, 4, 4, 4), 10.0)
    out = zero_extend_add(a, b)
    assert out.shape == (1, 4, 4, 4)
    assert out[0, :2, :3, :3].eq(11).all() and out[0, 2:].eq(10).all() and out[0, :, 3].eq(10).all()


def test_shapes_and_input_checks(net: DlibResNet) -> None:
    with pytest.raises(ValueError):
        net(torch.zeros(1, 3, 160, 160))
    x = torch.randint(0, 256, (2, 3, 150, 150), dtype=torch.uint8)
    with torch.no_grad():
        assert torch.equal(net(x), net(x.float()))
        assert net(x).shape == (2, 128)


def test_matches_dlib_on_sample_photos(net: DlibResNet, dlib_rec, sample_faces: dict) -> None:
    """Always runs: astronaut + Grace Hopper, chips from dlib's HOG detector + 5-point predictor."""
    chips = np.concatenate([dlib_chips(img, None) for img in sample_faces.values()])
    assert len(chips) >= len(sample_faces)
    ref = _dlib_descriptors(dlib_rec, chips)
    ours = _torch_descriptors(net, chips)
    assert np.abs(ours - ref).max() <= TOL
    assert np.abs(ours - ref).max() < 1e-5  # in practice float32-exact
    norms = np.linalg.norm(ref, axis=1)
    assert (norms > 0.5).all() and not np.allclose(norms, 1.0)  # raw, not unit length


def _first_faces(shared: Path, n: int) -> np.ndarray:
    from PIL import Image

    chips: list[np.ndarray] = []
    for person in sorted((shared / "corpus" / "faces").iterdir()):
        files = sorted(p for p in person.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        if not files:
            continue
        img = np.asarray(Image.open(files[0]).convert("RGB"))
        c = dlib_chips(img, None)
        if len(c):
            chips.append(c[0])
        if len(chips) == n:
            break
    return np.stack(chips)


def test_matches_dlib_on_50_corpus_faces(net: DlibResNet, dlib_rec, shared_dir: Path) -> None:
    chips = _first_faces(shared_dir, 56)
    assert len(chips) >= 50
    ref = _dlib_descriptors(dlib_rec, chips)
    ours = _torch_descriptors(net, chips)
    diff = np.abs(ours - ref).max()
    assert diff <= TOL, diff


def test_differentiable_wrt_chip(net: DlibResNet, sample_faces: dict) -> None:
    chip = dlib_chips(sample_faces["astronaut"] if "astronaut" in sample_faces else next(iter(sample_faces.values())), None)[:1]
    x = torch.from_numpy(chip).permute(0, 3, 1, 2).float().requires_grad_(True)
    loss = net(x).norm()
    loss.backward()
    g = x.grad
    assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0
    # the gradient is a real descent direction for the descriptor norm
    with torch.no_grad():
        step = net(x - 50.0 * g / g.norm()).norm()
    assert step < loss


def test_load_dlib_resnet_default(net: DlibResNet) -> None:
    m = load_dlib_resnet()
    assert not any(p.requires_grad for p in m.parameters()) and not m.training
    assert m.distance_threshold == pytest.approx(0.6)
    x = torch.rand(1, 3, 150, 150) * 255
    with torch.no_grad():
        assert torch.equal(m(x), net(x))

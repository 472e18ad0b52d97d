"""The package-archive recognizers (facenet-casia, facenet-ms1m, arcface-mbf, lightcnn-v4).

* Readers and structure checks run everywhere (hand-encoded protobuf messages, toy graphs).
* Equivalence tests compare each torch module with an independent reference on real face
  crops: facenet-casia with a NumPy interpreter of the frozen TensorFlow graph, facenet-ms1m
  with a NumPy evaluation of the Keras layers, arcface-mbf with onnxruntime, lightcnn-v4 with
  a NumPy re-implementation from the checkpoint's own tensors. They skip when the weights are
  absent (``anonymize fetch-weights ...``; ``.ci/run`` fetches them for CI).
"""
from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from anonymize import weights as W
from anonymize.errors import WeightsMissing
from anonymize.faces.alignments import get_alignment, extract_chips, lightcnn_5pt_transform
from anonymize.faces.recognize import RECOGNIZERS, get_recognizer
from anonymize.nets import protowire as pw
from anonymize.nets.tf_graph import read_graphdef, run_graph, tf_same_padding

NEW = ("facenet-casia", "facenet-ms1m", "arcface-mbf", "lightcnn-v4")
TOL = 1e-4


# --------------------------------------------------------------------------- a tiny protobuf encoder


def _varint(v: int) -> bytes:
    v &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        out.append(b | (0x80 if v else 0))
        if not v:
            return bytes(out)


def _f(num: int, value: int | bytes | float, wt: int | None = None) -> bytes:
    if isinstance(value, bytes):
        return _varint(num << 3 | 2) + _varint(len(value)) + value
    if isinstance(value, float):
        return _varint(num << 3 | 5) + struct.pack("<f", value)
    return _varint(num << 3 | 0) + _varint(value)


def _tensor_pb(arr: np.ndarray) -> bytes:
    dt = {np.dtype("float32"): 1, np.dtype("int32"): 3}[arr.dtype]
    shape = b"".join(_f(2, _f(1, int(d))) for d in arr.shape)
    return _f(1, dt) + _f(2, shape) + _f(4, np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("<")).tobytes())


def _attr(value: object) -> bytes:
    if isinstance(value, np.ndarray):
        return _f(8, _tensor_pb(value))
    if isinstance(value, bytes):
        return _f(2, value)
    if isinstance(value, list):
        return _f(1, _f(3, b"".join(_varint(v) for v in value)))
    raise TypeError(value)


def _node_pb(name: str, op: str, inputs: list[str], attrs: dict[str, object]) -> bytes:
    body = _f(1, name.encode()) + _f(2, op.encode()) + b"".join(_f(3, i.encode()) for i in inputs)
    for k, v in attrs.items():
        body += _f(5, _f(1, k.encode()) + _f(2, _attr(v)))
    return _f(1, body)


# --------------------------------------------------------------------------- readers (no weights needed)


def test_protowire_fields_and_errors():
    msg = _f(1, 300) + _f(2, b"abc") + _f(3, 1.5) + _f(4, -2)
    got = list(pw.fields(msg))
    assert [(n, w) for n, w, _ in got] == [(1, 0), (2, 2), (3, 5), (4, 0)]
    assert got[0][2] == 300 and bytes(got[1][2]) == b"abc"
    assert pw.floats([got[2][2]])[0] == 1.5 and pw.to_signed64(got[3][2]) == -2
    assert pw.ints([_varint(5) + _varint(7)]) == [5, 7]  # type: ignore[list-item]
    with pytest.raises(pw.ProtoError):
        list(pw.fields(_f(2, b"abc")[:-1]))  # length runs past the end
    with pytest.raises(pw.ProtoError):
        list(pw.fields(b"\x80"))  # truncated varint


def test_graphdef_out_of_order_and_tf_same_padding_stride2():
    """A GraphDef stored out of topological order, with a SAME stride-2 conv (TF pads the odd
    pixel at the bottom/right), evaluated by the reference equals torch with that padding."""
    rng = np.random.default_rng(0)
    w = rng.normal(size=(3, 3, 2, 4)).astype(np.float32)
    b = rng.normal(size=4).astype(np.float32)
    pb = (_node_pb("relu", "Relu", ["add"], {})  # consumers first: not topological
          + _node_pb("add", "BiasAdd", ["conv", "b"], {})
          + _node_pb("conv", "Conv2D", ["x:0", "w"], {"strides": [1, 2, 2, 1], "padding": b"SAME"})
          + _node_pb("w", "Const", [], {"value": w})
          + _node_pb("b", "Const", [], {"value": b})
          + _node_pb("x", "Placeholder", [], {}))
    g = read_graphdef(pb)
    assert list(g.nodes) == ["relu", "add", "conv", "w", "b", "x"] and g.ops()["Const"] == 2
    np.testing.assert_array_equal(g.const("w"), w)
    x = rng.normal(size=(1, 8, 8, 2)).astype(np.float32)
    y = run_graph(g, {"x": x}, ["relu"])["relu"]
    assert tf_same_padding(8, 3, 2) == (0, 1)
    xt = F.pad(torch.from_numpy(x).permute(0, 3, 1, 2), (0, 1, 0, 1))
    ref = F.relu(F.conv2d(xt, torch.from_numpy(w).permute(3, 2, 0, 1), torch.from_numpy(b), stride=2))
    np.testing.assert_allclose(y, ref.permute(0, 2, 3, 1).numpy(), atol=1e-5)
    sym = F.relu(F.conv2d(torch.from_numpy(x).permute(0, 3, 1, 2), torch.from_numpy(w).permute(3, 2, 0, 1),
                          torch.from_numpy(b), stride=2, padding=1))
    assert np.abs(y - sym.permute(0, 2, 3, 1).numpy()).max() > 1e-3  # symmetric padding would differ
    with pytest.raises(Exception, match="not fed"):
        run_graph(g, {}, ["relu"])


def test_facenet_port_refuses_asymmetric_padding_and_wrong_scales():
    from anonymize.nets.facenet_port import ConvParams, FacenetPortError, build_state_dict, inception_resnet_v1

    model = inception_resnet_v1()
    conv = {"InceptionResnetV1/Conv2d_1a_3x3": ConvParams(np.zeros((3, 3, 3, 32), np.float32), (2, 2), "SAME",
                                                          bn_offset=np.zeros(32, np.float32))}
    head = (np.ones(512), np.zeros(512), np.zeros(512), np.ones(512), 1e-3)
    with pytest.raises(FacenetPortError, match="asymmetric"):
        build_state_dict(conv, {}, np.zeros((1792, 512)), head, model)
    conv = {"InceptionResnetV1/Conv2d_1a_3x3": ConvParams(np.zeros((3, 3, 3, 32), np.float32), (2, 2), "VALID",
                                                          bn_offset=np.zeros(32, np.float32))}
    with pytest.raises(FacenetPortError, match="residual scales"):
        build_state_dict(conv, {"block8": 1.0}, np.zeros((1792, 512)), head, model)


def test_mobilefacenet_loader_checks_structure():
    from anonymize.nets.mobilefacenet import MobileFaceNet, MobileFaceNetMismatch, load_mobilefacenet_onnx
    from anonymize.nets.onnx_graph import OnnxGraph, OnnxNode

    g = OnnxGraph(nodes=[OnnxNode("Conv", "c0", ("x", "w", "b"), ("y",), {"strides": [1, 1], "pads": [1, 1, 1, 1],
                                                                        "group": 1, "kernel_shape": [3, 3]})],
                  initializers={"w": np.zeros((128, 3, 3, 3), np.float32), "b": np.zeros(128, np.float32)},
                  inputs=["x"], outputs=["y"], opset=11)
    with pytest.raises(MobileFaceNetMismatch, match="conv attributes"):  # stride 1 where the stem has 2
        load_mobilefacenet_onnx(g)
    assert MobileFaceNet().eval()(torch.zeros(1, 3, 112, 112)).shape == (1, 512)


def test_lightcnn_5pt_alignment_and_registry_entries():
    lm = np.array([[40.0, 50.0], [60.0, 52.0], [50.0, 62.0], [42.0, 72.0], [58.0, 74.0]])
    M = lightcnn_5pt_transform(lm)
    eyes = lm[:2] @ M[:, :2].T + M[:, 2]
    assert abs(eyes[0, 1] - eyes[1, 1]) < 1e-9 and abs(eyes[:, 1].mean() - 40.0) < 1e-9  # level, row 40
    assert abs(eyes[:, 0].mean() - 63.5) < 1e-9 and eyes[0, 0] < eyes[1, 0]  # centred, not mirrored
    mouth = (lm[3:] @ M[:, :2].T + M[:, 2]).mean(0)
    assert abs(mouth[1] - 88.0) < 1e-9  # 48 px below the eyes
    with pytest.raises(ValueError, match="mouth is not below"):
        lightcnn_5pt_transform(lm[[3, 4, 2, 0, 1]])
    for name in NEW:
        spec = RECOGNIZERS.get(name)
        assert get_alignment(spec.alignment).size == spec.input_size
        assert spec.family == name and spec.weights == (name,) and spec.licence and spec.eval_default
        assert spec.non_commercial == (name == "arcface-mbf")
    assert "NON-COMMERCIAL" in RECOGNIZERS.get("arcface-mbf").licence
    assert RECOGNIZERS.get("lightcnn-v4").alignment == "lightcnn128-5pt"


def test_missing_weights_name_the_fetch_command(monkeypatch, tmp_path):
    monkeypatch.setenv("ANONYMIZE_HOME", str(tmp_path))
    monkeypatch.delenv("ANONYMIZE_WEIGHTS", raising=False)
    for name in NEW:
        with pytest.raises(WeightsMissing, match=f"anonymize fetch-weights {name}"):
            get_recognizer(name)


# --------------------------------------------------------------------------- real weights


def _path(name: str):
    try:
        return W.weights_path(name)
    except (WeightsMissing, W.WeightsCorrupt):
        pytest.skip(f"weights {name} absent (anonymize fetch-weights {name})")


@pytest.fixture(scope="module")
def faces(request):
    """Real faces: the sample photos shipped with dependencies, plus corpus photos when ../shared exists."""
    from PIL import Image

    from anonymize.faces.detect import get_detector

    sample = request.getfixturevalue("sample_faces")
    images = list(sample.values())
    root = Path(os.environ.get("ANONYMIZE_SHARED", Path(__file__).resolve().parents[2] / "shared")) / "corpus" / "faces"
    if root.is_dir():
        for person in sorted(p for p in root.iterdir() if p.is_dir())[:300:60]:
            images.append(np.asarray(Image.open(sorted(person.iterdir())[0]).convert("RGB")))
    det = get_detector("mtcnn")
    out = []
    for img in images:
        found = det([img])[0]
        if found:
            out.append((img, max(found, key=lambda f: f.score)))
    assert len(out) >= 2
    return out


def _chips(faces, alignment: str) -> torch.Tensor:
    c = np.concatenate([extract_chips(alignment, img, [f]) for img, f in faces])
    return torch.from_numpy(c).permute(0, 3, 1, 2).float() / 255.0


def _check_recognizer(name: str, faces) -> torch.Tensor:
    rec = get_recognizer(name)
    chips = _chips(faces, rec.alignment)
    d = rec.descriptor(chips)
    assert d.shape == (len(faces), rec.embedding_dim) and torch.isfinite(d).all()
    # the same photo, slightly changed, stays the same person; the two sample people do not match
    same = rec.distance(d, rec.descriptor((chips * 0.9 + 0.05).clamp(0, 1)))
    assert (same < rec.threshold).all(), same
    assert not bool(rec.same_person(d[:1], d[1:2]))
    # differentiable w.r.t. the chips
    x = chips[:1].clone().requires_grad_(True)
    rec.descriptor(x).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    return chips


@pytest.mark.slow
def test_facenet_casia_equals_the_frozen_graph(faces):
    from anonymize.nets.facenet_tf import INPUT, OUTPUT

    g = read_graphdef(_path("facenet-casia"))
    rec = get_recognizer("facenet-casia")
    chips = _check_recognizer("facenet-casia", faces)
    with torch.no_grad():
        ours = rec.descriptor(chips).numpy()
    x = ((chips * 255.0 - 127.5) / 128.0).permute(0, 2, 3, 1).numpy()
    ref = np.concatenate([run_graph(g, {INPUT: x[i : i + 1]}, [OUTPUT])[OUTPUT] for i in range(len(x))])
    err = float(np.abs(ours - ref).max())
    print(f"facenet-casia vs frozen graph (NumPy reference), {len(x)} faces: max |d| = {err:.2e}")
    assert err <= TOL


@pytest.mark.slow
def test_facenet_ms1m_equals_the_keras_model(faces):
    from anonymize.nets.keras_h5 import read_keras_h5, run_keras

    km = read_keras_h5(_path("facenet-ms1m"))
    rec = get_recognizer("facenet-ms1m")
    chips = _check_recognizer("facenet-ms1m", faces)
    x = chips * 255.0
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    std = x.std(dim=(1, 2, 3), keepdim=True, unbiased=False)
    pre = ((x - mean) / std).permute(0, 2, 3, 1).numpy()
    ref = run_keras(km, pre)[km.outputs[0]]
    ref = ref / np.linalg.norm(ref, axis=1, keepdims=True)
    with torch.no_grad():
        ours = rec.descriptor(chips).numpy()
    err = float(np.abs(ours - ref).max())
    print(f"facenet-ms1m vs Keras layers (NumPy reference), {len(x)} faces: max |d| = {err:.2e}")
    assert err <= TOL


@pytest.mark.slow
def test_arcface_mbf_equals_onnxruntime(faces):
    ort = pytest.importorskip("onnxruntime")
    path = _path("arcface-mbf")
    rec = get_recognizer("arcface-mbf")
    chips = _check_recognizer("arcface-mbf", faces)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    x = ((chips * 255.0 - 127.5) / 127.5).numpy()
    ref = np.concatenate([sess.run(None, {sess.get_inputs()[0].name: x[i : i + 1]})[0] for i in range(len(x))])
    with torch.no_grad():
        ours = rec.descriptor(chips).numpy()
    err = float(np.abs(ours - ref).max())
    ref_n = ref / np.linalg.norm(ref, axis=1, keepdims=True)
    ours_n = ours / np.linalg.norm(ours, axis=1, keepdims=True)
    err_n = float(np.abs(ours_n - ref_n).max())
    print(f"arcface-mbf vs onnxruntime, {len(x)} faces: max |d| raw = {err:.2e}, normalised = {err_n:.2e}")
    assert err <= TOL and err_n <= TOL


@pytest.mark.slow
def test_lightcnn_v4_equals_a_numpy_reference(faces):
    from anonymize.nets.tf_graph import conv2d_nhwc

    ck = torch.load(_path("lightcnn-v4"), map_location="cpu", weights_only=True)
    sd = {k.removeprefix("module."): v.numpy() for k, v in ck["state_dict"].items()}

    def mfm(x: np.ndarray, name: str) -> np.ndarray:
        y = conv2d_nhwc(x, sd[f"{name}.filter.weight"].transpose(2, 3, 1, 0), [1, 1, 1, 1], b"SAME", None)
        y = y + sd[f"{name}.filter.bias"]
        c = y.shape[-1] // 2
        return np.maximum(y[..., :c], y[..., c:])

    def pool(x: np.ndarray) -> np.ndarray:
        n, h, w, c = x.shape
        v = x.reshape(n, h // 2, 2, w // 2, 2, c)
        return v.max(axis=(2, 4)) + v.mean(axis=(2, 4))

    def reference(x: np.ndarray) -> np.ndarray:  # written from the checkpoint's tensor names
        x = pool(mfm(x, "conv1"))
        for b, (units, nxt) in enumerate(zip((1, 2, 3, 4), ("conv2", "conv3", "conv4", "conv5")), 1):
            for i in range(units):
                x = x + mfm(mfm(x, f"block{b}.{i}.conv1"), f"block{b}.{i}.conv2")
            x = mfm(x, nxt)
            if nxt != "conv4":
                x = pool(x)
        x = x.transpose(0, 3, 1, 2).reshape(len(x), -1)
        return x @ sd["fc.weight"].T + sd["fc.bias"]

    rec = get_recognizer("lightcnn-v4")
    chips = _check_recognizer("lightcnn-v4", faces)
    ref = reference(chips.permute(0, 2, 3, 1).numpy())
    with torch.no_grad():
        ours = rec.descriptor(chips).numpy()
    err = float(np.abs(ours - ref).max())
    print(f"lightcnn-v4 vs NumPy reference, {len(chips)} faces: max |d| = {err:.2e}")
    assert err <= TOL

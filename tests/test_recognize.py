"""Recognizer registry and interface: dlib-resnet (torch), dlib-native, facenet-* (weights gated)."""
from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

import anonymize
from anonymize.errors import UsageError, WeightsMissing
from anonymize.faces.recognize import RECOGNIZERS, Recognizer, RecognizerSpec, get_recognizer
from tests.helpers import dlib_chips

pytest.importorskip("dlib")


@pytest.fixture(scope="module")
def chips(sample_faces: dict) -> dict[str, torch.Tensor]:
    """One dlib chip per sample photo, plus a second astronaut chip from a re-scaled copy of the photo."""
    from PIL import Image

    out = {name: _to_tensor(dlib_chips(img, None)[:1]) for name, img in sample_faces.items()}
    if "astronaut" in sample_faces:
        img = sample_faces["astronaut"]
        small = np.asarray(Image.fromarray(img).resize((img.shape[1] * 3 // 4, img.shape[0] * 3 // 4), Image.BILINEAR))
        out["astronaut_small"] = _to_tensor(dlib_chips(small, None)[:1])
    return out


def _to_tensor(c: np.ndarray) -> torch.Tensor:
    assert len(c) == 1, "expected a face"
    return torch.from_numpy(c).permute(0, 3, 1, 2).float() / 255.0


@pytest.fixture(scope="module")
def dlib_resnet() -> Recognizer:
    return get_recognizer("dlib-resnet")


def test_registry_entries() -> None:
    assert {"dlib-resnet", "dlib-native", "facenet-vggface2", "facenet-casia"} <= set(RECOGNIZERS.names())
    spec = RECOGNIZERS.get("dlib-resnet")
    assert isinstance(spec, RecognizerSpec)
    assert (spec.embedding_dim, spec.input_size, spec.distance, spec.threshold) == (128, 150, "euclidean", 0.6)
    assert spec.weights == () and spec.differentiable and spec.alignment == "dlib150"
    fn = RECOGNIZERS.get("facenet-vggface2")
    assert (fn.embedding_dim, fn.input_size, fn.threshold, fn.weights, fn.alignment) == (
        512, 160, 1.1, ("facenet-vggface2",), "facenet160",
    )
    assert RECOGNIZERS.get("facenet-casia").weights == ("facenet-casia",)
    assert not RECOGNIZERS.get("dlib-native").differentiable
    for s in RECOGNIZERS:
        assert s.summary and s.licence
    with pytest.raises(UsageError, match="dlib-resnet"):
        get_recognizer("no-such-recognizer")


def test_dlib_resnet_interface(dlib_resnet: Recognizer, chips: dict) -> None:
    assert isinstance(dlib_resnet, Recognizer)
    assert dlib_resnet.alignment == "dlib150" and dlib_resnet.input_size == 150
    batch = torch.cat(list(chips.values()))
    with torch.no_grad():
        d = dlib_resnet.descriptor(batch)
        e = dlib_resnet.embed(batch)
    assert d.shape == (len(batch), 128)
    assert torch.allclose(e.norm(dim=1), torch.ones(len(batch)), atol=1e-5)
    assert not torch.allclose(d.norm(dim=1), torch.ones(len(batch)), atol=0.05)  # raw descriptors
    # uint8 chips give the same result as [0, 1] floats
    u8 = (batch * 255).round().to(torch.uint8)
    with torch.no_grad():
        assert torch.allclose(dlib_resnet.descriptor(u8), d, atol=1e-5)
    with pytest.raises(ValueError):
        dlib_resnet.descriptor(torch.zeros(1, 3, 160, 160))


def test_same_and_different_person(dlib_resnet: Recognizer, chips: dict) -> None:
    if not {"astronaut", "astronaut_small", "grace_hopper"} <= set(chips):
        pytest.skip("needs both sample photos")
    with torch.no_grad():
        a, a2, g = (dlib_resnet.descriptor(chips[k]) for k in ("astronaut", "astronaut_small", "grace_hopper"))
    assert dlib_resnet.same_person(a, a2).item()
    assert not dlib_resnet.same_person(a, g).item()
    assert dlib_resnet.distance(a, a2).item() < 0.6 < dlib_resnet.distance(a, g).item()
    assert torch.allclose(dlib_resnet.distance(a, g), (a - g).norm(dim=1))


def test_dlib_resnet_embed_is_differentiable(dlib_resnet: Recognizer, chips: dict) -> None:
    x = next(iter(chips.values())).clone().requires_grad_(True)
    other = torch.cat(list(chips.values()))[-1:]
    dist = dlib_resnet.distance(dlib_resnet.embed(x), dlib_resnet.embed(other).detach())
    dist.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().max() > 0


def test_dlib_native_matches_torch_port(dlib_resnet: Recognizer, chips: dict) -> None:
    native = get_recognizer("dlib-native")
    assert not native.differentiable and native.threshold == 0.6
    batch = torch.cat(list(chips.values()))
    with torch.no_grad():
        ours = dlib_resnet.descriptor(batch)
    ref = native.descriptor(batch)
    assert ref.shape == ours.shape
    assert (ref - ours).abs().max().item() <= 1e-3
    u8_hwc = (batch * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    assert torch.equal(native.descriptor(u8_hwc), ref)
    assert native.embed(batch).norm(dim=1).sub(1).abs().max() < 1e-5
    with pytest.raises(ValueError):
        native.descriptor(u8_hwc.astype(np.float32))


# --------------------------------------------------------------------------- facenet (weights gated)


def _fake_weights_module(monkeypatch: pytest.MonkeyPatch, lookup) -> None:
    mod = types.ModuleType("anonymize.weights")
    mod.weights_path = lookup  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "anonymize.weights", mod)
    monkeypatch.setattr(anonymize, "weights", mod, raising=False)


@pytest.fixture()
def no_download(monkeypatch: pytest.MonkeyPatch) -> None:
    import facenet_pytorch.models.inception_resnet_v1 as irv1

    def refuse(*a, **k):
        raise AssertionError("facenet-pytorch tried to download weights")

    monkeypatch.setattr(irv1, "load_weights", refuse)


@pytest.mark.parametrize("name", ["facenet-vggface2", "facenet-casia"])
def test_facenet_without_weights_names_what_to_fetch(monkeypatch: pytest.MonkeyPatch, no_download, name: str) -> None:
    def missing(n: str) -> Path:
        raise WeightsMissing([n])

    _fake_weights_module(monkeypatch, missing)
    with pytest.raises(WeightsMissing) as err:
        get_recognizer(name)
    assert err.value.names == [name] and f"fetch-weights {name}" in str(err.value)


def test_facenet_loads_local_state_dict(monkeypatch: pytest.MonkeyPatch, no_download, tmp_path: Path) -> None:
    from facenet_pytorch import InceptionResnetV1

    torch.manual_seed(0)
    ref = InceptionResnetV1(pretrained=None, classify=False).eval()
    state = dict(ref.state_dict())
    state["logits.weight"] = torch.zeros(7, 512)  # the published files carry the classifier; it is dropped
    state["logits.bias"] = torch.zeros(7)
    path = tmp_path / "facenet.pt"
    torch.save(state, path)
    asked: list[str] = []
    _fake_weights_module(monkeypatch, lambda n: (asked.append(n), path)[1])

    rec = get_recognizer("facenet-vggface2")
    assert asked == ["facenet-vggface2"]
    assert rec.alignment == "facenet160" and rec.threshold == 1.1 and rec.embedding_dim == 512
    x = torch.rand(2, 3, 160, 160)
    with torch.no_grad():
        expected = ref((x * 255 - 127.5) / 128)
        got = rec.descriptor(x)
    assert torch.allclose(got, expected, atol=1e-5)
    assert torch.allclose(rec.embed(x).norm(dim=1), torch.ones(2), atol=1e-5)
    xg = x[:1].clone().requires_grad_(True)
    rec.distance(rec.embed(xg), got[1:]).sum().backward()
    assert xg.grad is not None and torch.isfinite(xg.grad).all() and xg.grad.abs().max() > 0
    with pytest.raises(ValueError):
        rec.descriptor(torch.rand(1, 3, 150, 150))


def test_facenet_rejects_mismatched_weights(monkeypatch: pytest.MonkeyPatch, no_download, tmp_path: Path) -> None:
    path = tmp_path / "bad.pt"
    torch.save({"conv2d_1a.conv.weight": torch.zeros(1)}, path)
    _fake_weights_module(monkeypatch, lambda n: path)
    with pytest.raises(UsageError, match="do not fit"):
        get_recognizer("facenet-vggface2")
    # facenet-casia reads Sandberg's frozen graph: a file that is not one is refused clearly
    _fake_weights_module(monkeypatch, lambda n: path)
    with pytest.raises(UsageError, match="could not load weights 'facenet-casia'.*fetch-weights facenet-casia --force"):
        get_recognizer("facenet-casia")


def test_families_eval_defaults_and_alignment_checks() -> None:
    from anonymize.faces.recognize import eval_default_names, family_of, same_family

    assert family_of("dlib-native") == family_of("dlib-resnet") == "dlib-resnet-v1"
    assert family_of("facenet-casia") == "facenet-casia" != family_of("facenet-vggface2")
    assert family_of("not-registered") == "not-registered"
    assert same_family(["dlib-resnet"]) == ["dlib-native", "dlib-resnet"]
    assert "dlib-resnet" in eval_default_names() and "dlib-native" not in eval_default_names()
    base = dict(name="toy", summary="s", embedding_dim=8, input_size=150, distance="euclidean", threshold=1.0,
                weights=(), licence="l", factory=lambda d: None)
    assert RecognizerSpec(**base).family == "toy"  # its own family by default
    with pytest.raises(UsageError, match="dlib150"):
        RecognizerSpec(**{**base, "alignment": "no-such-alignment"})
    with pytest.raises(ValueError, match="input_size"):
        RecognizerSpec(**{**base, "input_size": 151})


def test_facenet_without_weights_module(monkeypatch: pytest.MonkeyPatch) -> None:
    """Before the weights registry exists, facenet still fails with a clear WeightsMissing."""
    monkeypatch.setitem(sys.modules, "anonymize.weights", None)
    monkeypatch.delattr(anonymize, "weights", raising=False)
    with pytest.raises(WeightsMissing, match="fetch-weights facenet-casia"):
        get_recognizer("facenet-casia")

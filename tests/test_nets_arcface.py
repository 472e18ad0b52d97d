"""ArcFace IR-SE50: tiny always-run checks + full-size fixture equivalence."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from anonymize.errors import UsageError, WeightsMissing
from anonymize.nets.checkpoint import CheckpointMismatch
from tests.fixtures.fill import assert_matches_fixture, build_checkpoint, load_schema, make_input
from anonymize.nets.irse import IRSEBackbone, psp_id_crop

TINY = dict(stages=((16, 16, 1), (16, 32, 2)), input_size=16, embedding_dim=32)


def tiny_net() -> IRSEBackbone:
    torch.manual_seed(0)
    net = IRSEBackbone(**TINY)
    for m in net.modules():  # non-trivial BN statistics
        if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(1.0, 1.5)
    return net.eval()


def test_tiny_shapes_norm_determinism_grad() -> None:
    net = tiny_net()
    x = (torch.rand(3, 3, 16, 16) * 2 - 1).requires_grad_(True)
    e = net(x)
    assert e.shape == (3, 32)
    assert torch.allclose(e.norm(dim=1), torch.ones(3), atol=1e-6)
    assert torch.equal(e, net(x))
    assert torch.allclose(net(x[1:2]), e[1:2], atol=1e-6)  # batch independence in eval mode
    (e[0] @ e[1]).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    taps: dict[str, torch.Tensor] = {}
    net(x.detach(), tap=lambda n, t: taps.__setitem__(n, t))
    assert taps["body.2"].shape == (3, 32, 4, 4) and taps["output_layer.0"].shape == (3, 32, 4, 4)
    with pytest.raises(ValueError, match="16x16"):
        net(torch.zeros(1, 3, 20, 20))


def test_unit_structure_matches_reference_layout() -> None:
    with torch.device("meta"):
        net = IRSEBackbone()
    assert len(net.body) == 24
    assert sum(p.numel() for p in net.parameters()) == 43_797_696
    assert isinstance(net.body[0].shortcut_layer, torch.nn.MaxPool2d)  # 64 -> 64, stride 2
    assert isinstance(net.body[3].shortcut_layer, torch.nn.Sequential)  # 64 -> 128
    assert net.body[3].res_layer[1].stride == (1, 1) and net.body[3].res_layer[3].stride == (2, 2)


def test_strict_loading(tmp_path) -> None:
    net = tiny_net()
    sd = net.state_dict()
    fresh = IRSEBackbone(**TINY)
    from anonymize.nets.checkpoint import load_checked

    no_nbt = {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    load_checked(fresh, no_nbt, what="ArcFace")  # legacy files without num_batches_tracked load strictly
    x = torch.rand(2, 3, 16, 16)
    assert torch.equal(fresh.eval()(x), net(x))
    without = {k: v for k, v in sd.items() if k != "body.1.res_layer.5.fc1.weight"}
    with pytest.raises(CheckpointMismatch, match=r"missing keys \(1\): body.1.res_layer.5.fc1.weight"):
        load_checked(IRSEBackbone(**TINY), without, what="ArcFace")
    # the full-size loader names missing/unexpected keys too (a tiny file is all wrong for it)
    with pytest.raises(CheckpointMismatch, match="missing keys.*unexpected keys|shape mismatches"):
        IRSEBackbone.from_checkpoint(sd)
    with pytest.raises(UsageError, match="bare state_dict"):
        IRSEBackbone.from_checkpoint({"state_dict": dict(sd)})
    with pytest.raises(WeightsMissing, match="arcface-ir-se50"):
        IRSEBackbone.from_checkpoint(tmp_path / "missing.pth")


def test_psp_id_crop_is_adaptive_pool() -> None:
    x = torch.arange(256.0).view(1, 1, 1, 256).expand(1, 3, 256, 256)
    c = psp_id_crop(x)
    assert c.shape == (1, 3, 112, 112)
    # columns 32..219 averaged in variable windows: first output column averages cols 32,33
    assert float(c[0, 0, 0, 0]) == pytest.approx(32.5)
    assert float(c[0, 0, 0, -1]) == pytest.approx(218.5)


# ------------------------------------------------------------- fixtures (shared)
@pytest.fixture(scope="module")
def arcface(shared_dir):
    schema = load_schema(shared_dir / "fixtures" / "checkpoints" / "model_ir_se50.schema.json")
    ckpt = build_checkpoint(schema)  # verifies every tensor against its `check`
    net = IRSEBackbone.from_checkpoint(ckpt)
    z = np.load(shared_dir / "fixtures" / "equivalence" / "arcface_ir_se50.npz")
    return schema, ckpt, net, z


def test_full_structure_and_legacy_file(arcface) -> None:
    schema, ckpt, net, z = arcface
    assert [(k, list(v.shape)) for k, v in net.state_dict().items()] == [
        (e["key"], e["shape"]) for e in schema["state_dict"]
    ]
    legacy = {k: v for k, v in ckpt.items() if not k.endswith("num_batches_tracked")}
    assert len(legacy) == 343
    net2 = IRSEBackbone.from_checkpoint(legacy)
    x = torch.from_numpy(z["in.x112"])
    for a, b in zip(net.state_dict().values(), net2.state_dict().values()):
        assert torch.equal(a, b)
    assert torch.equal(make_input(1000001, [2, 3, 112, 112], 2.0), x)


@pytest.mark.parametrize(
    "dtype", [torch.float32, pytest.param(torch.float64, marks=pytest.mark.slow)], ids=["f32", "f64"]
)
def test_full_reproduces_fixture(arcface, dtype) -> None:
    _, _, net, z = arcface
    net = copy.deepcopy(net).to(dtype) if dtype != torch.float32 else net
    res: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        res["out.emb112"] = net(torch.from_numpy(z["in.x112"]).to(dtype),
                                tap=lambda n, t: res.__setitem__(f"tap.{n}", t))
        res["out.crop_pooled"] = psp_id_crop(torch.from_numpy(z["in.x256"]).to(dtype))
        res["out.emb_crop"] = net(res["out.crop_pooled"])
    names = {k.rsplit(".", 1)[0] for k in z.files if k.endswith(".shape")}
    assert names <= set(res), names - set(res)
    for name in sorted(names):
        assert_matches_fixture(z, name, res[name])

"""pSp encoder/decoder: tiny always-run checks + full-size fixture equivalence (slow)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from anonymize.errors import UsageError, WeightsMissing
from anonymize.nets.checkpoint import CheckpointMismatch
from tests.fixtures.fill import assert_matches_fixture, build_checkpoint, load_schema
from anonymize.nets.psp import PSP, GradualStyleEncoder


def tiny(seed: int = 0) -> PSP:
    torch.manual_seed(seed)
    return PSP.tiny().eval()


def tiny_ckpt(net: PSP, **opts) -> dict:
    base = {"encoder_type": "GradualStyleEncoder", "input_nc": 3, "start_from_latent_avg": True,
            "output_size": 32, "learn_in_w": False, "device": "cuda:0", "exp_dir": "x"}
    base.update(opts)
    base = {k: v for k, v in base.items() if v is not None}
    return {"state_dict": net.state_dict(), "opts": base,
            "latent_avg": torch.randn(net.decoder.n_latent, net.decoder.style_dim)}


def test_full_encoder_layout() -> None:
    with torch.device("meta"):  # structure only: no memory, no init cost
        enc = GradualStyleEncoder()
    assert (enc.c1_idx, enc.c2_idx, enc.c3_idx) == (6, 20, 23)
    assert [len(s.convs) // 2 for s in enc.styles] == [4] * 3 + [5] * 4 + [6] * 11
    assert sum(p.numel() for p in enc.parameters()) == 267_136_704
    assert enc.styles[0].convs[1].negative_slope == 0.01


def test_tiny_encode_decode_shapes_grad_and_latent_avg() -> None:
    net = tiny()
    la = torch.randn(net.decoder.n_latent, 32)
    net.set_latent_avg(la)
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        codes = net.encoder(x)
        w = net.encode(x)
    assert codes.shape == (2, 8, 32)
    assert torch.allclose(w, codes + la)  # latent_avg broadcast over the batch, per style row
    w = w.clone().requires_grad_(True)
    img = net.decode(w)
    assert img.shape == (2, 3, 16, 16)
    full = net.decode(w, resize=False)
    assert torch.allclose(img, torch.nn.functional.avg_pool2d(full, 2), atol=1e-6)  # face_pool = block means
    assert torch.equal(img, net.decode(w))  # fixed noise: deterministic
    img.square().mean().backward()
    assert w.grad is not None and torch.isfinite(w.grad).all() and w.grad.abs().sum() > 0
    out, lat = net(x, return_latents=True)
    assert out.shape == (2, 3, 16, 16) and torch.allclose(lat, w.detach())
    net.set_latent_avg(la[0])  # a [512]-style latent_avg broadcasts to every style
    assert torch.equal(net.latent_avg, la[0].expand_as(la))
    with pytest.raises(CheckpointMismatch, match="latent_avg"):
        net.set_latent_avg(torch.zeros(3, 32))


def test_tiny_checkpoint_loading(tmp_path) -> None:
    net = tiny()
    ck = tiny_ckpt(net)
    torch.save(ck, tmp_path / "psp.pt")
    net2 = PSP.from_checkpoint(tmp_path / "psp.pt", template=PSP.tiny())
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(net2(x), net.eval().__class__.forward(_with_la(net, ck["latent_avg"]), x))
    # opts without output_size / learn_in_w are accepted (defaults 1024 / False)
    PSP.from_checkpoint(tiny_ckpt(net, output_size=None, learn_in_w=None), template=PSP.tiny())
    sd = dict(ck["state_dict"])
    del sd["encoder.styles.2.linear.bias"]
    with pytest.raises(CheckpointMismatch, match=r"missing keys \(1\): encoder.styles.2.linear.bias"):
        PSP.from_checkpoint({**ck, "state_dict": sd}, template=PSP.tiny())
    with pytest.raises(CheckpointMismatch, match="unexpected keys.*face_pool.x"):
        PSP.from_checkpoint({**ck, "state_dict": {**ck["state_dict"], "face_pool.x": torch.zeros(1)}},
                            template=PSP.tiny())
    with pytest.raises(CheckpointMismatch, match="latent_avg"):
        PSP.from_checkpoint({k: v for k, v in ck.items() if k != "latent_avg"}, template=PSP.tiny())
    with pytest.raises(UsageError, match="encoder_type"):
        PSP.from_checkpoint(tiny_ckpt(net, encoder_type="BackboneEncoderUsingLastLayerIntoW"),
                            template=PSP.tiny())
    with pytest.raises(WeightsMissing, match="psp-ffhq-encode"):
        PSP.from_checkpoint(tmp_path / "nope.pt")


def _with_la(net: PSP, la: torch.Tensor) -> PSP:
    net.set_latent_avg(la)
    return net


# ------------------------------------------------------------- fixtures (shared)
@pytest.fixture(scope="module")
def psp_full(shared_dir):
    schema = load_schema(shared_dir / "fixtures" / "checkpoints" / "psp_ffhq_encode.schema.json")
    ckpt = build_checkpoint(schema)  # verifies every tensor against its `check`
    # the released file may lack these opts; the loader must supply the defaults
    del ckpt["opts"]["output_size"], ckpt["opts"]["learn_in_w"]
    net = PSP.from_checkpoint(ckpt)
    assert [k for k in net.state_dict()] == [e["key"] for e in schema["state_dict"]]
    z = np.load(shared_dir / "fixtures" / "equivalence" / "psp_ffhq_encode.npz")
    return net, z


@pytest.mark.slow
def test_full_encoder_reproduces_fixture(psp_full) -> None:
    net, z = psp_full
    assert torch.equal(net.latent_avg, torch.from_numpy(z["in.latent_avg"]))
    res: dict[str, torch.Tensor] = {}
    x = torch.from_numpy(z["in.x256"])
    with torch.no_grad():
        res["out.codes_plus_latent_avg"] = net.encode(x, tap=lambda n, t: res.__setitem__(f"tap.{n}", t))
    res["out.encoder_codes"] = res["out.codes_plus_latent_avg"] - net.latent_avg
    for name in ("out.encoder_codes", "out.codes_plus_latent_avg", "tap.encoder.input_layer",
                 "tap.encoder.body.2", "tap.encoder.body.6", "tap.encoder.body.20", "tap.encoder.body.23",
                 "tap.encoder.p2", "tap.encoder.p1"):
        assert_matches_fixture(z, name, res[name])


@pytest.mark.slow
def test_full_decoder_reproduces_fixture(psp_full) -> None:
    net, z = psp_full
    w = torch.from_numpy(z["out.codes_plus_latent_avg.full"]).float()
    res: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        img = net.decode(w, resize=False, tap=lambda n, t: res.__setitem__(f"tap.{n}", t))
    res["out.image1024"] = img
    res["out.image256"] = net.face_pool(img)
    for name in ("out.image1024", "out.image256", "tap.decoder.conv1", "tap.decoder.convs.7",
                 "tap.decoder.to_rgbs.3", "tap.decoder.convs.15"):
        assert_matches_fixture(z, name, res[name])

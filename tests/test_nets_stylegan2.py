"""StyleGAN2 generator: small always-run checks + fixture equivalence (size 64; 1024 slow)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from anonymize.errors import WeightsMissing
from anonymize.nets.checkpoint import CheckpointMismatch
from tests.fixtures.fill import (
    assert_matches_fixture,
    build_checkpoint,
    load_schema,
    make_input,
    schema_entries,
)
from anonymize.nets.ops import Upsample, fused_leaky_relu, make_kernel, upfirdn2d
from anonymize.nets.stylegan2 import Generator


def small_gen(seed: int = 0) -> Generator:
    torch.manual_seed(seed)
    return Generator(32, 64, 2, channel_multiplier=1, max_channels=64).eval()


# ---------------------------------------------------------------- always run
def test_upfirdn2d_impulse_and_constant() -> None:
    k = make_kernel([1, 3, 3, 1]) * 4
    x = torch.zeros(1, 1, 4, 4)
    x[0, 0, 1, 2] = 1.0
    y = upfirdn2d(x, k, up=2, pad=(2, 1))
    assert y.shape == (1, 1, 8, 8)
    # an impulse at (1,2) upsampled to (2,4) and filtered is the (symmetric) kernel placed around it
    assert torch.allclose(y[0, 0, 1:5, 3:7], k)
    assert float(y.sum()) == pytest.approx(float(k.sum()))
    # constant input stays constant in the interior after 2x upsampling
    c = Upsample([1, 3, 3, 1])(torch.ones(1, 2, 6, 6))
    assert torch.allclose(c[:, :, 2:-2, 2:-2], torch.ones(1, 2, 8, 8))
    # downsampling and negative padding (cropping)
    d = upfirdn2d(torch.arange(64.0).view(1, 1, 8, 8), torch.ones(1, 1), down=2, pad=(-1, -1))
    assert torch.equal(d[0, 0], torch.arange(64.0).view(8, 8)[1:7:2, 1:7:2])


def test_fused_leaky_relu() -> None:
    x = torch.tensor([[-1.0, 2.0]])
    out = fused_leaky_relu(x, torch.tensor([0.5, -0.5]))
    assert torch.allclose(out, torch.tensor([[-0.5 * 0.2, 1.5]]) * 2**0.5)


def test_small_generator_shapes_determinism_and_grad() -> None:
    g = small_gen()
    assert g.n_latent == 8 and g.num_layers == 7
    w = torch.randn(2, g.n_latent, 64, requires_grad=True)
    img1, _ = g([w], input_is_latent=True, randomize_noise=False)
    img2, _ = g([w], input_is_latent=True, randomize_noise=False)
    assert img1.shape == (2, 3, 32, 32)
    assert torch.equal(img1, img2)
    # batch elements are independent (grouped conv must not mix them)
    single, _ = g([w[1:]], input_is_latent=True, randomize_noise=False)
    assert torch.allclose(single, img1[1:], atol=1e-5)
    img1.square().mean().backward()
    assert w.grad is not None and torch.isfinite(w.grad).all() and w.grad.abs().sum() > 0
    # random noise changes the output (noise strengths start at 0 in a fresh net)
    for m in g.modules():
        if hasattr(m, "noise"):
            torch.nn.init.constant_(m.noise.weight, 0.5)
    img3, _ = g([w.detach()], input_is_latent=True, randomize_noise=True)
    assert not torch.allclose(img3, img1.detach())


def test_z_path_truncation_and_mixing() -> None:
    g = small_gen()
    z, z2 = torch.randn(2, 64), torch.randn(2, 64)
    with torch.no_grad():
        w = g.style(z)
        _, lat = g([z], randomize_noise=False, return_latents=True)
        assert torch.allclose(lat, w[:, None].expand(-1, 8, -1))
        avg = torch.randn(1, 64)
        _, lat0 = g([z], randomize_noise=False, return_latents=True, truncation=0.0, truncation_latent=avg)
        assert torch.allclose(lat0, avg[:, None].expand(2, 8, -1))
        _, mix = g([z, z2], randomize_noise=False, return_latents=True, inject_index=3)
        assert torch.allclose(mix[:, :3], w[:, None].expand(-1, 3, -1))
        assert torch.allclose(mix[:, 3:], g.style(z2)[:, None].expand(-1, 5, -1))
    with pytest.raises(ValueError, match="truncation_latent"):
        g([z], truncation=0.5)


def test_strict_loading_errors(tmp_path) -> None:
    g = small_gen()
    sd = g.state_dict()
    kw = dict(size=32, channel_multiplier=1, style_dim=64, n_mlp=2, max_channels=64)
    # round trip through a file in the real container layout
    torch.save({"g_ema": sd, "latent_avg": torch.zeros(64)}, tmp_path / "g.pt")
    g2, la = Generator.from_checkpoint(tmp_path / "g.pt", **kw)
    w = torch.randn(1, 8, 64)
    assert torch.equal(g2([w], input_is_latent=True, randomize_noise=False)[0],
                       g([w], input_is_latent=True, randomize_noise=False)[0])
    assert la is not None and la.shape == (64,)
    missing = {k: v for k, v in sd.items() if k != "convs.3.noise.weight"}
    with pytest.raises(CheckpointMismatch, match=r"missing keys \(1\): convs.3.noise.weight"):
        Generator.from_checkpoint({"g_ema": missing}, **kw)
    Generator.from_checkpoint({"g_ema": missing}, strict=False, **kw)  # tolerated when not strict
    with pytest.raises(CheckpointMismatch, match="unexpected keys.*bogus"):
        Generator.from_checkpoint({"g_ema": {**sd, "bogus": torch.zeros(1)}}, **kw)
    bad = dict(sd)
    bad["input.input"] = torch.zeros(1, 64, 4, 5)
    with pytest.raises(CheckpointMismatch, match="shape mismatches.*input.input"):
        Generator.from_checkpoint({"g_ema": bad}, strict=False, **kw)
    with pytest.raises(WeightsMissing, match="fetch-weights stylegan2-ffhq"):
        Generator.from_checkpoint(tmp_path / "absent.pt", **kw)


# ------------------------------------------------------------- fixtures (shared)
CASES = ("wplus", "z", "z_trunc07", "w", "mix_z_z2_inject4")


def _run_cases(g: Generator, z, la: torch.Tensor, dtype: torch.dtype,
               cases: tuple[str, ...] = CASES) -> dict[str, torch.Tensor]:
    """Run the fixture's forward calls (spec.json ``cases``) for the selected cases."""
    g = g.to(dtype)
    inp = {k[3:]: torch.from_numpy(z[k]).to(dtype) for k in z.files if k.startswith("in.")}
    la = la.to(dtype)[None]
    res: dict[str, torch.Tensor] = {}
    tap = lambda n, t: res.__setitem__(f"tap.{n}", t)  # noqa: E731
    kw = dict(randomize_noise=False, return_latents=True)
    with torch.no_grad():
        if "wplus" in cases:
            res["out.wplus.image"] = g([inp["wplus"]], input_is_latent=True, randomize_noise=False, tap=tap)[0]
        if "z" in cases:
            res["out.z.mapped_w"] = g.style(inp["z"])
            res["out.z.image"], res["out.z.latent"] = g([inp["z"]], **kw)
        if "z_trunc07" in cases:
            res["out.z_trunc07.image"], res["out.z_trunc07.latent"] = g(
                [inp["z"]], truncation=0.7, truncation_latent=la, **kw)
        if "w" in cases:
            res["out.w.image"], res["out.w.latent"] = g([inp["w"]], input_is_latent=True, **kw)
        if "mix_z_z2_inject4" in cases:
            res["out.mix_z_z2_inject4.image"], res["out.mix_z_z2_inject4.latent"] = g(
                [inp["z"], inp["z2"]], inject_index=4, **kw)
    pool = torch.nn.functional.adaptive_avg_pool2d
    for case, size in (("wplus", 256), ("z", 64), ("z_trunc07", 64)):
        name = f"out.{case}.image_avgpool{size}"
        if f"{name}.shape" in z.files and case in cases:
            res[name] = pool(res[f"out.{case}.image"], size)
    return res


@pytest.fixture(scope="module")
def g64(shared_dir):
    fx = shared_dir / "fixtures" / "equivalence"
    schema = load_schema(fx / "stylegan2_size64_cm1.schema.json")
    ckpt = build_checkpoint(schema)  # also verifies every tensor against its `check`
    g, la = Generator.from_checkpoint(ckpt, size=64, channel_multiplier=1)
    return schema, g, la, np.load(fx / "stylegan2_size64_cm1.npz")


def test_size64_structure_matches_schema(g64) -> None:
    schema, g, la, z = g64
    entries = schema_entries(schema)
    sd = g.state_dict()
    assert [(k, list(v.shape)) for k, v in sd.items()] == [(e["key"], e["shape"]) for e in entries]
    assert sum(p.numel() for p in g.parameters()) == schema["counts"]["all"]["parameter_elements"]
    assert torch.equal(la, torch.from_numpy(z["in.latent_avg"]))
    assert torch.equal(make_input(1000010, [2, 10, 512], 2 * 3**0.5), torch.from_numpy(z["in.wplus"]))


@pytest.mark.parametrize(
    "dtype", [torch.float64, pytest.param(torch.float32, marks=pytest.mark.slow)], ids=["f64", "f32"]
)
def test_size64_reproduces_fixture(g64, dtype) -> None:
    _, g, la, z = g64
    res = _run_cases(g, z, la, dtype)
    names = {k.rsplit(".", 1)[0] for k in z.files if k.endswith(".shape")}
    assert names == set(res), names ^ set(res)
    for name, t in res.items():
        assert_matches_fixture(z, name, t)


@pytest.fixture(scope="module")
def g1024(shared_dir):
    schema = load_schema(shared_dir / "fixtures" / "checkpoints" / "stylegan2_ffhq_1024.schema.json")
    g, la = Generator.from_checkpoint(build_checkpoint(schema))
    assert [k for k in g.state_dict()] == [e["key"] for e in schema_entries(schema)]
    assert sum(p.numel() for p in g.parameters()) == 30_370_060
    return g, la, np.load(shared_dir / "fixtures" / "equivalence" / "stylegan2_ffhq_1024.npz")


@pytest.mark.slow
@pytest.mark.parametrize("case", ["wplus", "z", "z_trunc07"])
def test_1024_reproduces_fixture(g1024, case) -> None:
    g, la, z = g1024
    res = _run_cases(g, z, la, torch.float32, cases=(case,))
    names = {k.rsplit(".", 1)[0] for k in z.files if k.endswith(".shape")}
    mine = {n for n in names if n.startswith(f"out.{case}.") or (case == "wplus" and n.startswith("tap."))}
    assert mine == set(res), mine ^ set(res)
    for name, t in res.items():
        assert_matches_fixture(z, name, t)

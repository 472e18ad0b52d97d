"""DiffAE networks and DDIM: tiny always-run checks plus the architecture-faithfulness fixtures."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from anonymize.errors import WeightsMissing
from anonymize.nets.ddim import DiffusionSchedule, ddim_decode, ddim_encode, linear_betas, space_timesteps
from anonymize.nets.diffae import (
    BeatGANsAutoencModel,
    CheckpointError,
    DiffAE,
    DiffAEConfig,
    LatentNetConfig,
    timestep_embedding,
)
from tests.fixtures.fill_diffusion import build_state_dict, compare_to_reference, load_schema

TOL = {  # README-diffusion.md section 6: (max ratio, rms ratio)
    "single_pass": (2e-5, 1e-5),
    "temb": (1e-4, None),
    "ddim_encode": (5e-5, 2e-5),
    "ddim_decode": (3e-3, 5e-4),
    "uncond": (1e-3, 1e-4),
}


def _class(name: str) -> str:
    return {
        "out.temb": "temb",
        "out.ddim_encode_xT": "ddim_encode",
        "out.ddim_decode_x0": "ddim_decode",
        "out.uncond_x0": "uncond",
    }.get(name, "single_pass")


def _check(ref: dict, results: dict[str, torch.Tensor]) -> dict[str, dict[str, float]]:
    errs = {}
    for name, val in results.items():
        e = compare_to_reference(ref, name, val)
        max_tol, rms_tol = TOL[_class(name)]
        if name == "out.uncond_x0":  # absolute bound (max|ref| = 1)
            assert e["max_abs"] <= max_tol, (name, e)
        else:
            assert e["max_ratio"] <= max_tol, (name, e)
        if rms_tol is not None:
            assert e["rms_ratio"] <= rms_tol, (name, e)
        errs[name] = e
    return errs


def _inputs(ref: dict, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in ref.items():
        if k.startswith("in."):
            t = torch.from_numpy(np.asarray(v))
            out[k[3:]] = t.to(dtype) if t.is_floating_point() else t
    return out


def _tiny(seed: int = 0) -> DiffAE:
    torch.manual_seed(seed)
    m = DiffAE(DiffAEConfig.tiny()).eval()
    with torch.no_grad():  # the release zero-initialises output convs; give them weight
        for p in m.parameters():
            if p.abs().sum() == 0:
                p.normal_(0, 0.05)
    return m


def _lightning(m: DiffAE, other: DiffAE | None = None) -> dict:
    sd: dict[str, torch.Tensor] = {"x_T": torch.zeros(2, 3, 4, 4), "conds_mean": m.conds_mean.clone(),
                                   "conds_std": m.conds_std.clone()}
    src = other if other is not None else m
    for k, v in src.net.state_dict().items():
        sd["model." + k] = v.clone()
    for k, v in m.net.state_dict().items():
        sd["ema_model." + k] = v
    return {"state_dict": sd, "global_step": 7, "epoch": 1, "pytorch-lightning_version": "1.4.5"}


# --------------------------------------------------------------------------- DDIM schedule


def test_ddim_spacing_and_betas() -> None:
    assert space_timesteps(1000, 10) == list(range(0, 1000, 100))
    for n, stride in [(20, 50), (100, 10), (200, 5), (250, 4), (1000, 1)]:
        steps = space_timesteps(1000, n)
        assert len(steps) == n and steps[1] == stride and steps[0] == 0
    with pytest.raises(ValueError):
        space_timesteps(1000, 600)
    b = linear_betas(1000)
    assert b[0] == pytest.approx(1e-4) and b[-1] == pytest.approx(0.02) and len(b) == 1000
    base = DiffusionSchedule.from_name("linear")
    sp = base.spaced(20)
    np.testing.assert_allclose(sp.alphas_cumprod, base.alphas_cumprod[sp.timesteps], rtol=1e-12)
    assert sp.alphas_cumprod_prev[0] == 1.0 and sp.alphas_cumprod_next[-1] == 0.0
    lat = DiffusionSchedule.from_name("const0.008")
    assert lat.alphas_cumprod[-1] == pytest.approx(0.992**1000)
    with pytest.raises(ValueError):
        DiffusionSchedule.from_name("cosine")


def test_ddim_decode_matches_closed_form_update() -> None:
    """Unclipped decode = eq. 6.1-6.2 written out with the full-schedule alpha-bars."""
    torch.manual_seed(0)
    w = torch.randn(3, 3, dtype=torch.float64) * 0.3

    def eps_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.tanh(torch.einsum("ij,bjhw->bihw", w, x)) * (1 + t.to(x.dtype)[:, None, None, None] / 1000)

    sched = DiffusionSchedule.from_name("linear").spaced(5)
    abar = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    got = ddim_decode(eps_fn, x, sched, clip=False)
    steps = list(range(0, 1000, 200))
    for k in reversed(range(5)):
        t = steps[k]
        e = eps_fn(x, torch.full((2,), t))
        f = (x - math.sqrt(1 - abar[t]) * e) / math.sqrt(abar[t])
        a_prev = abar[steps[k - 1]] if k else 1.0
        x = math.sqrt(a_prev) * f + math.sqrt(1 - a_prev) * e
    torch.testing.assert_close(got, x, rtol=1e-12, atol=1e-12)


def test_ddim_round_trip_gaussian_optimal_eps() -> None:
    """With the exact eps of Gaussian data, inversion then decoding converges to the input as T grows (O(1/T))."""
    s2 = 0.09

    def eps_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = torch.from_numpy(DiffusionSchedule.from_name("linear").alphas_cumprod)[t].to(x.dtype)[:, None, None, None]
        return torch.sqrt(1 - a) * x / (a * s2 + 1 - a)

    x0 = (torch.rand(2, 3, 8, 8, dtype=torch.float64) - 0.5) * 1.2
    errs = []
    for T in (5, 20, 100):
        sched = DiffusionSchedule.from_name("linear").spaced(T)
        xT = ddim_encode(eps_fn, x0, sched)
        errs.append(float((ddim_decode(eps_fn, xT, sched) - x0).abs().max()))
    assert errs[0] > errs[1] > errs[2]
    assert errs[2] < 0.06 and errs[0] / errs[2] > 5  # first-order convergence in 1/T


# --------------------------------------------------------------------------- tiny model


def test_tiny_shapes_and_determinism() -> None:
    m = _tiny()
    cfg = m.cfg
    x = torch.rand(2, 3, cfg.image_size, cfg.image_size) * 2 - 1
    with torch.no_grad():
        z = m.encode(x)
        assert z.shape == (2, cfg.enc_out_channels)
        eps = m.eps(x, torch.tensor([3, 900]), z)
        assert eps.shape == x.shape and torch.isfinite(eps).all()
        xT = m.encode_stochastic(x, z, T=3)
        x_rec = m.render(xT, z, T=3)
        assert x_rec.shape == x.shape and x_rec.abs().max() <= 1.0
        again = m.render(m.encode_stochastic(x, z, T=3), z, T=3)
        assert torch.equal(x_rec, again)
        zl = m.sample_latent(torch.randn(2, cfg.enc_out_channels), T=4)
        assert zl.shape == (2, cfg.enc_out_channels)
        # batch elements are independent
        single = m.eps(x[1:], torch.tensor([900]), z[1:])
        torch.testing.assert_close(single, eps[1:], rtol=1e-5, atol=1e-5)
    emb = timestep_embedding(torch.tensor([0, 5]), 8)
    assert torch.equal(emb[0], torch.tensor([1.0] * 4 + [0.0] * 4))


def test_tiny_round_trip_is_consistent() -> None:
    """DDIM inversion then decoding, with the tiny UNet inside eps, returns to the input and converges with T.

    eps = exact Gaussian-data eps + 0.05 * UNet(x_t, t, z_sem): an untrained UNet alone is not a
    denoiser, so the analytic part keeps the sampler well conditioned while the UNet (and z_sem)
    are in the loop.
    """
    m = _tiny(1).double()
    s2 = 0.09
    abar = torch.from_numpy(DiffusionSchedule.from_name("linear").alphas_cumprod)
    torch.manual_seed(5)
    x0 = (torch.rand(1, 3, 16, 16, dtype=torch.float64) - 0.5) * 1.2
    with torch.no_grad():
        z = m.encode(x0)

        def eps_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            a = abar[t].to(x.dtype)[:, None, None, None]
            return torch.sqrt(1 - a) * x / (a * s2 + 1 - a) + 0.05 * m.net(x, t, z)

        errs, rnd = [], []
        for T in (10, 50):
            sched = m.schedule(T)
            xT = ddim_encode(eps_fn, x0, sched)
            errs.append(float((ddim_decode(eps_fn, xT, sched) - x0).abs().mean()))
            rnd.append(float((ddim_decode(eps_fn, torch.randn_like(xT), sched) - x0).abs().mean()))
    assert errs[1] < 0.5 * errs[0], errs
    assert errs[1] < 0.08 and errs[1] < 0.25 * rnd[1], (errs, rnd)


def test_gradient_flows_to_semantic_code() -> None:
    m = _tiny(2).double().requires_grad_(False)
    cfg = m.cfg
    x = torch.rand(1, 3, cfg.image_size, cfg.image_size, dtype=torch.float64) * 1.6 - 0.8
    with torch.no_grad():
        z0 = m.encode(x)
        xT = m.encode_stochastic(x, z0, T=3)
    z = z0.clone().requires_grad_(True)
    out = m.render(xT, z, T=3, checkpoint=True)
    out.square().mean().backward()
    g_ckpt = z.grad.clone()
    assert torch.isfinite(g_ckpt).all() and g_ckpt.abs().sum() > 0
    z.grad = None
    m.render(xT, z, T=3).square().mean().backward()
    torch.testing.assert_close(z.grad, g_ckpt)
    # directional finite difference through the unclipped sampler
    sched = m.schedule(3)

    def f(zz: torch.Tensor) -> torch.Tensor:
        return ddim_decode(lambda xt, t: m.net(xt, t, zz), xT, sched, clip=False).square().mean()

    z.grad = None
    f(z).backward()
    d = torch.randn_like(z)
    h = 1e-5
    with torch.no_grad():
        fd = (f(z + h * d) - f(z - h * d)) / (2 * h)
    assert float((z.grad * d).sum()) == pytest.approx(float(fd), rel=1e-5, abs=1e-9)


def test_loader_roundtrip_and_errors(tmp_path: Path) -> None:
    m = _tiny(3)
    other = _tiny(4)  # plays the non-EMA copy
    with torch.no_grad():
        m.conds_mean.normal_()
        m.conds_std.uniform_(1, 2)
    ck = _lightning(m, other)
    path = tmp_path / "last.ckpt"
    torch.save(ck, path)
    cfg = DiffAEConfig.tiny()
    loaded = DiffAE.from_checkpoint(path, cfg)
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode(x), m.encode(x), rtol=0, atol=0)
        assert torch.equal(loaded.conds_std, m.conds_std)
        wrong = DiffAE.from_checkpoint(ck, cfg, use_ema=False)
        assert not torch.equal(wrong.encode(x), m.encode(x))
    lat = loaded.net.latent_net.layers[0]
    assert lat.cond_layers[1] is lat.linear_emb
    # either alias key is enough
    sd = {k: v for k, v in ck["state_dict"].items() if ".cond_layers.1." not in k}
    DiffAE.from_checkpoint({"state_dict": sd}, cfg)
    # autoencoder-only file: latent net dropped, statistics neutral
    sd = {k: v for k, v in ck["state_dict"].items() if "latent_net" not in k and not k.startswith("conds_")}
    ae = DiffAE.from_checkpoint({"state_dict": sd}, cfg)
    assert ae.net.latent_net is None and torch.equal(ae.conds_std, torch.ones_like(ae.conds_std))
    # missing, unexpected, mis-shaped keys and a foreign file are clear errors
    sd = dict(ck["state_dict"])
    del sd["ema_model.input_blocks.1.0.in_layers.2.weight"]
    with pytest.raises(CheckpointError, match="missing.*input_blocks.1.0.in_layers.2.weight"):
        DiffAE.from_checkpoint({"state_dict": sd}, cfg)
    sd = dict(ck["state_dict"])
    sd["ema_model.extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match="unexpected.*extra.weight"):
        DiffAE.from_checkpoint({"state_dict": sd}, cfg)
    sd = dict(ck["state_dict"])
    sd["ema_model.out.2.bias"] = torch.zeros(4)
    with pytest.raises(CheckpointError, match="shape"):
        DiffAE.from_checkpoint({"state_dict": sd}, cfg)
    with pytest.raises(CheckpointError, match="no tensors with prefix"):
        DiffAE.from_checkpoint({"state_dict": {"visual.proj": torch.zeros(2, 2)}}, cfg)
    with pytest.raises(CheckpointError, match="shape|missing|unexpected"):
        DiffAE.from_checkpoint(ck, DiffAEConfig.reduced32())
    with pytest.raises(CheckpointError, match="not found"):
        DiffAE.from_checkpoint(tmp_path / "nope.ckpt", cfg)
    with pytest.raises(WeightsMissing, match="fetch-weights diffae-ffhq256-autoenc"):
        DiffAE.from_checkpoint(tmp_path / "nope.ckpt", cfg, weights_name="diffae-ffhq256-autoenc")


# --------------------------------------------------------------------------- fixtures (need ../shared)


@pytest.mark.parametrize(
    "schema,cfg,prefix",
    [
        ("equivalence/diffae_reduced.schema.json", DiffAEConfig.reduced32(), "ema_model."),
        ("checkpoints/diffae_ffhq256_autoenc.schema.json", DiffAEConfig.ffhq256(), "ema_model."),
        ("checkpoints/diffae_ffhq256_latent.schema.json", DiffAEConfig.ffhq256(with_latent=True), "model."),
    ],
)
def test_key_and_shape_lists_match_schemas(shared_dir: Path, schema: str, cfg: DiffAEConfig, prefix: str) -> None:
    d = load_schema(shared_dir / "fixtures" / schema)
    want = [(e["key"][len(prefix):], tuple(e["shape"])) for e in d["state_dict"] if e["key"].startswith(prefix)]
    with torch.device("meta"):
        net = BeatGANsAutoencModel(cfg)
    got = [(k, tuple(v.shape)) for k, v in net.state_dict().items()]
    assert got == want
    counts = d["counts"]["modules_unique_parameters"]
    assert sum(p.numel() for p in net.parameters()) == counts[prefix.rstrip(".")]
    assert sum(p.numel() for p in net.encoder.parameters()) == counts["encoder"]
    top = [e["key"] for e in d["state_dict"] if "." not in e["key"]]
    assert top[0] == "x_T"


@pytest.fixture(scope="module")
def reduced(shared_dir: Path) -> tuple[dict, dict]:
    fx = shared_dir / "fixtures" / "equivalence"
    ref = dict(np.load(fx / "diffae_reduced.npz"))
    sd = build_state_dict(fx / "diffae_reduced.schema.json")  # verifies every 'check'
    return ref, {"state_dict": sd, "global_step": 0, "epoch": 0, "optimizer_states": []}


def test_reduced_fixture_float32(reduced: tuple[dict, dict]) -> None:
    ref, ck = reduced
    m = DiffAE.from_checkpoint(ck, DiffAEConfig.reduced32())
    i = _inputs(ref)
    res: dict[str, torch.Tensor] = {}
    taps: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        res["out.temb"] = timestep_embedding(i["t_eps"], 64)
        z = m.net.encoder(i["x0"], taps=taps)
        res["out.z_sem"] = z
        res["out.eps_unet"] = m.net(i["x_t"], i["t_eps"], i["z_for_eps"], taps=taps)
        xT = m.encode_stochastic(i["x0"], z, T=10)
        res["out.ddim_encode_xT"] = xT
        res["out.ddim_decode_x0"] = m.render(xT, z, T=10)
        res["out.eps_latent"] = m.net.latent_net(i["z_lat"], i["t_lat"], taps=taps)
        zn = m.sample_latent(i["zT_lat"], T=10, normalized=True)
        res["out.latent_z0_normalized"] = zn
        zd = m.sample_latent(i["zT_lat"], T=10)
        res["out.latent_z0_denormalized"] = zd
        res["out.uncond_x0"] = m.render(i["xT_uncond"], zd, T=10)
        not_ema = DiffAE.from_checkpoint(ck, DiffAEConfig.reduced32(), use_ema=False)
        res["out.eps_unet_from_model_not_ema"] = not_ema.net(i["x_t"], i["t_eps"], i["z_for_eps"])
    res.update({"tap." + k: v for k, v in taps.items()})
    stored = {k[: -len(".shape")] for k in ref if k.endswith(".shape")}
    assert stored == set(res), stored ^ set(res)
    _check(ref, res)
    torch.testing.assert_close(zd, zn * m.conds_std + m.conds_mean)
    assert torch.equal(m.conds_mean, torch.from_numpy(ref["in.conds_mean"]))
    for tag, latent in (("img", False), ("lat", True)):
        s = m.schedule(10, latent=latent)
        np.testing.assert_array_equal(s.timesteps, ref[f"sched.{tag}_T10.timestep_map"])
        np.testing.assert_allclose(s.alphas_cumprod, ref[f"sched.{tag}_T10.alphas_cumprod"], rtol=1e-14)
    np.testing.assert_allclose(m.schedule(10).alphas_cumprod_next, ref["sched.img_T10.alphas_cumprod_next"], rtol=1e-14)
    np.testing.assert_allclose(m.schedule(10).alphas_cumprod_prev, ref["sched.img_T10.alphas_cumprod_prev"], rtol=1e-14)


def test_reduced_fixture_float64(reduced: tuple[dict, dict]) -> None:
    ref, ck = reduced
    m = DiffAE.from_checkpoint(ck, DiffAEConfig.reduced32()).double()
    i = _inputs(ref, torch.float64)
    with torch.no_grad():
        z = m.encode(i["x0"])
        xT = m.encode_stochastic(i["x0"], z, T=10)
        zd = m.sample_latent(i["zT_lat"], T=10)
        res = {
            "out.z_sem": z,
            "out.eps_unet": m.eps(i["x_t"], i["t_eps"], i["z_for_eps"]),
            "out.eps_latent": m.net.latent_net(i["z_lat"], i["t_lat"]),
            "out.ddim_encode_xT": xT,
            "out.ddim_decode_x0": m.render(xT, z, T=10),
            "out.latent_z0_denormalized": zd,
            "out.uncond_x0": m.render(i["xT_uncond"], zd, T=10),
        }
    for name, val in res.items():
        tol = 1e-9 if ("ddim" in name or "uncond" in name or "latent_z0" in name) else 1e-10
        assert compare_to_reference(ref, name, val)["max_ratio"] <= tol, name


@pytest.fixture(scope="module")
def full256(shared_dir: Path) -> tuple[dict, DiffAE, DiffAE]:
    """Full-size FFHQ-256 model (EMA and non-EMA copies) from the filled autoencoder + latent schemas."""
    fx = shared_dir / "fixtures"
    ref = dict(np.load(fx / "equivalence" / "diffae_full256.npz"))
    # the latent file has its own fill indices; only its latent part is used (its UNet equals the autoencoder's)
    lat_sd = build_state_dict(fx / "checkpoints" / "diffae_ffhq256_latent.schema.json",
                              keep=lambda k: k.startswith(("conds_", "ema_model.latent_net.")))
    ck = {"state_dict": build_state_dict(fx / "checkpoints" / "diffae_ffhq256_autoenc.schema.json"), "global_step": 0}
    m = DiffAE.from_checkpoint(ck, DiffAEConfig.ffhq256(), latent={"state_dict": lat_sd})
    not_ema = DiffAE.from_checkpoint(ck, DiffAEConfig.ffhq256(), use_ema=False)
    return ref, m, not_ema


@pytest.mark.slow
def test_full256_single_passes(full256: tuple[dict, DiffAE, DiffAE]) -> None:
    """z_sem, one UNet call (EMA and non-EMA), latent net, latent DDIM and every tap at full size."""
    ref, m, not_ema = full256
    i = _inputs(ref)
    res: dict[str, torch.Tensor] = {}
    taps: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        res["out.temb"] = timestep_embedding(i["t_eps"], 128)
        res["out.z_sem"] = m.net.encoder(i["x0"], taps=taps)
        res["out.eps_unet"] = m.net(i["x_t"], i["t_eps"], i["z_for_eps"], taps=taps)
        res["out.eps_unet_from_model_not_ema"] = not_ema.net(i["x_t"], i["t_eps"], i["z_for_eps"])
        res["out.eps_latent"] = m.net.latent_net(i["z_lat"], i["t_lat"], taps=taps)
        res["out.latent_z0_normalized"] = m.sample_latent(i["zT_lat"], T=10, normalized=True)
        res["out.latent_z0_denormalized"] = m.sample_latent(i["zT_lat"], T=10)
    res.update({"tap." + k: v for k, v in taps.items()})
    stored = {k[: -len(".shape")] for k in ref if k.endswith(".shape")}
    assert stored - set(res) == {"out.ddim_encode_xT", "out.ddim_decode_x0"}
    _check(ref, res)


@pytest.mark.slow
def test_full256_ddim_encode(full256: tuple[dict, DiffAE, DiffAE]) -> None:
    """DDIM inversion, 10 UNet calls at 256x256, with this implementation's own z_sem."""
    ref, m, _ = full256
    i = _inputs(ref)
    with torch.no_grad():
        z = m.encode(i["x0"])
        _check(ref, {"out.ddim_encode_xT": m.encode_stochastic(i["x0"], z, T=10)})


@pytest.mark.slow
def test_full256_ddim_decode(full256: tuple[dict, DiffAE, DiffAE]) -> None:
    """DDIM decode, 10 UNet calls, from the reference x_T and z_sem (rounded to float32)."""
    ref, m, _ = full256
    xT = torch.from_numpy(ref["out.ddim_encode_xT.full"]).float()
    z = torch.from_numpy(ref["out.z_sem.full"]).float()
    with torch.no_grad():
        _check(ref, {"out.ddim_decode_x0": m.render(xT, z, T=10)})


def test_latent_config_defaults() -> None:
    c = DiffAEConfig.ffhq256(with_latent=True)
    assert c.latent == LatentNetConfig() and c.latent.beta_schedule == "const0.008"
    assert c.beta_schedule == "linear" and c.T == 1000 and c.T_eval == 20

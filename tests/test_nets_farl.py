"""FaRL ViT-B/16 visual tower: tiny always-run checks plus the architecture-faithfulness fixture."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("open_clip")

from anonymize.nets.diffae import CheckpointError  # noqa: E402
from anonymize.nets.farl import CLIP_MEAN, CLIP_STD, FaRLVisual, preprocess  # noqa: E402
from tests.fixtures.fill_diffusion import build_state_dict, compare_to_reference, load_schema  # noqa: E402

TINY = {"width": 64, "layers": 2, "heads": 2, "output_dim": 32}


def _tiny(seed: int = 0) -> FaRLVisual:
    torch.manual_seed(seed)
    return FaRLVisual(**TINY).eval()


def test_tiny_shapes_token_order_and_determinism() -> None:
    net = _tiny()
    x = torch.rand(2, 3, 224, 224)
    with torch.no_grad():
        f = net(x)
        g = net(x)
    assert f.pooled.shape == (2, 32) and f.tokens.shape == (2, 197, 64)
    assert torch.equal(f.tokens, g.tokens) and torch.equal(f.pooled, g.pooled)
    assert f.patch_tokens.shape == (2, 196, 64)
    r, c = 3, 11
    assert torch.equal(f.patch_grid[:, :, r, c], f.tokens[:, 1 + 14 * r + c])
    # pooled = ln_post(CLS) @ proj
    v = net.visual
    torch.testing.assert_close(f.pooled, v.ln_post(f.tokens[:, 0]) @ v.proj)
    # batch elements are independent
    with torch.no_grad():
        one = net(x[1:])
    torch.testing.assert_close(one.tokens, f.tokens[1:], rtol=1e-5, atol=1e-5)
    with pytest.raises(CheckpointError, match="224x224"):
        net(torch.rand(1, 3, 112, 112))


def test_tiny_patch_locality() -> None:
    """Before any attention, a pixel change only moves its own patch token (row-major patch order)."""
    net = _tiny(1)
    x = torch.rand(1, 3, 224, 224)
    y = x.clone()
    y[0, :, 16 * 5 + 3, 16 * 9 + 7] += 0.5  # patch (row 5, col 9)
    with torch.no_grad():
        tx, ty = {}, {}
        net(x, taps=tx)
        net(y, taps=ty)
    changed = (tx["ln_pre"] - ty["ln_pre"]).abs().amax(dim=-1)[0]
    assert changed.nonzero().flatten().tolist() == [1 + 14 * 5 + 9]


def test_tiny_gradient_to_pixels() -> None:
    net = _tiny(2).requires_grad_(False)
    x = torch.rand(1, 3, 256, 256, requires_grad=True)
    f = net(preprocess(x, normalize=False))
    (f.patch_tokens.abs().mean() + f.pooled.square().mean()).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_preprocess() -> None:
    img = torch.rand(2, 3, 224, 224)
    n = preprocess(img)
    mean = torch.tensor(CLIP_MEAN)[:, None, None]
    std = torch.tensor(CLIP_STD)[:, None, None]
    torch.testing.assert_close(n, (img - mean) / std)
    assert torch.equal(preprocess(img, normalize=False), img)
    wide = torch.rand(1, 3, 300, 600)
    out = preprocess(wide, normalize=False)
    assert out.shape == (1, 3, 224, 224)
    # a constant image stays constant through resize + crop
    assert torch.allclose(preprocess(torch.full((1, 3, 100, 150), 0.25), normalize=False), torch.tensor(0.25))
    with pytest.raises(ValueError):
        preprocess(torch.rand(3, 224, 224))


def test_loader_roundtrip_and_errors(tmp_path: Path) -> None:
    net = _tiny(3)
    sd = {"positional_embedding": torch.zeros(77, 16), "logit_scale": torch.tensor(2.6)}
    sd.update({"visual." + k: v.clone() for k, v in net.visual.state_dict().items()})
    sd["token_embedding.weight"] = torch.zeros(10, 16)
    path = tmp_path / "farl.pth"
    torch.save({"state_dict": sd}, path)
    x = torch.rand(1, 3, 224, 224)
    with torch.no_grad():
        ref = net(x)
        for src in (path, {"state_dict": sd}, sd):
            got = FaRLVisual.from_checkpoint(src, **TINY)(x)
            assert torch.equal(got.tokens, ref.tokens) and torch.equal(got.pooled, ref.pooled)
    bad = dict(sd)
    del bad["visual.transformer.resblocks.1.attn.in_proj_weight"]
    with pytest.raises(CheckpointError, match="missing.*resblocks.1.attn.in_proj_weight"):
        FaRLVisual.from_checkpoint(bad, **TINY)
    bad = dict(sd)
    bad["visual.proj"] = torch.zeros(64, 16)
    with pytest.raises(CheckpointError, match="shape"):
        FaRLVisual.from_checkpoint(bad, **TINY)
    with pytest.raises(CheckpointError, match="no tensors with prefix 'visual.'"):
        FaRLVisual.from_checkpoint({"state_dict": {"ema_model.out.2.bias": torch.zeros(3)}}, **TINY)


# --------------------------------------------------------------------------- fixtures (need ../shared)


def test_visual_keys_match_schema(shared_dir: Path) -> None:
    d = load_schema(shared_dir / "fixtures" / "checkpoints" / "farl_vitb16.schema.json")
    want = {e["key"][len("visual."):]: tuple(e["shape"]) for e in d["state_dict"] if e["key"].startswith("visual.")}
    with torch.device("meta"):
        net = FaRLVisual()
    got = {k: tuple(v.shape) for k, v in net.visual.state_dict().items()}
    assert got == want
    assert sum(p.numel() for p in net.parameters()) == d["counts"]["modules_unique_parameters"]["visual"]


def test_farl_fixture(shared_dir: Path) -> None:
    fx = shared_dir / "fixtures"
    ref = dict(np.load(fx / "equivalence" / "farl_vitb16.npz"))
    sd = build_state_dict(fx / "checkpoints" / "farl_vitb16.schema.json", keep=lambda k: k.startswith("visual."))
    net = FaRLVisual.from_checkpoint({"state_dict": sd})
    pixels = torch.from_numpy(ref["in.pixels01"])
    taps: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        normed = preprocess(pixels)
        torch.testing.assert_close(normed, torch.from_numpy(ref["in.normalized"]), rtol=0, atol=5e-7)
        a = net(torch.from_numpy(ref["in.normalized"]), taps=taps)
        b = net(pixels)
    res = {"out.clipnorm.pooled": a.pooled, "out.clipnorm.tokens": a.tokens,
           "out.raw01.pooled": b.pooled, "out.raw01.tokens": b.tokens}
    res.update({"tap.clipnorm." + k: v for k, v in taps.items() if k != "resblocks.11"})
    stored = {k[: -len(".shape")] for k in ref if k.endswith(".shape")}
    assert stored == set(res)
    for name, val in res.items():
        e = compare_to_reference(ref, name, val)
        assert e["max_ratio"] <= 2e-5 and e["rms_ratio"] <= 1e-5, (name, e)
    torch.testing.assert_close(taps["resblocks.11"], a.tokens, rtol=0, atol=0)

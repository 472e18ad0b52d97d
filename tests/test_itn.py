"""Seed 002: the ITN networks, its training objective, `train itn` and `protect --method itn`."""
from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from anonymize.cli import app
from anonymize.errors import MethodUnavailable, UsageError, WeightsMissing
from anonymize.methods.base import MethodContext
from anonymize.methods.itn import ITN
from anonymize.nets.itn import UNet, VGGRelu22
from anonymize.training.dpimage_xai import load_dataset
from anonymize.training.itn import (
    STLPIPS_VGG_MEMBER,
    STLPIPS_VGG_SHA256,
    ITNTrainConfig,
    accuracy,
    feature_energy,
    load_features,
    load_weights,
    train_service,
    train_transform,
    transform,
)
from anonymize.types import Face, ImageItem

runner = CliRunner()
SAMPLES = Path(__file__).resolve().parent.parent / "anonymize" / "data" / "samples"
WHEEL = Path("/work/pkgs/stlpips_pytorch-0.0.2-py3-none-any.whl")


def test_unet_pads_odd_sizes_and_stays_deterministic():
    torch.manual_seed(0)
    net = UNet(width=4).eval()
    x = torch.rand(1, 3, 21, 35)
    y = net(x)
    assert y.shape == x.shape
    assert torch.equal(y, net(x))
    with pytest.raises(ValueError):
        net(torch.rand(1, 1, 16, 16))


def _fake_stlpips_state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    st = {"scaling_layer.shift": torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1),
          "scaling_layer.scale": torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)}
    for name, cin, cout in (("net.slice1.0", 3, 64), ("net.slice1.2", 64, 64), ("net.slice2.6", 64, 128), ("net.slice2.8", 128, 128)):
        st[f"{name}.weight"] = torch.randn(cout, cin, 3, 3, generator=g) * 0.05
        st[f"{name}.bias"] = torch.randn(cout, generator=g) * 0.01
    a = torch.tensor([1.0, 2.0, 1.0])
    st["net.slice2.5.filt"] = ((a[:, None] * a[None]) / 16)[None, None].repeat(64, 1, 1, 1)
    st["lin0.model.1.weight"] = torch.rand(1, 64, 1, 1)
    return st


def test_stlpips_trunk_maps_the_state_dict_and_rejects_other_files(tmp_path):
    st = _fake_stlpips_state()
    phi = VGGRelu22.from_stlpips(st)
    assert torch.equal(phi.conv2_2.weight, st["net.slice2.8.weight"])
    f = phi(torch.rand(2, 3, 32, 32))
    assert f.shape == (2, 128, 17, 17) and (f >= 0).all()  # anti-aliased pooling: 17 x 17 at 32 px
    assert not any(p.requires_grad for p in phi.parameters())
    p = tmp_path / "vgg_shift_tolerant.pth"
    torch.save(st, p)
    _, rec = load_features("stlpips-vgg", str(p))
    assert rec["verified"] is False and len(rec["sha256"]) == 64 and "ST-LPIPS" in rec["note"]
    bad = dict(st)
    del bad["net.slice2.6.weight"]
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(UsageError, match="not an ST-LPIPS VGG"):
        load_features("stlpips-vgg", str(tmp_path / "bad.pth"))
    (tmp_path / "junk.pth").write_bytes(b"junk")
    with pytest.raises(UsageError):
        load_features("stlpips-vgg", str(tmp_path / "junk.pth"))


def test_missing_stlpips_weights_name_the_fetch_command(tmp_path, monkeypatch):
    monkeypatch.setenv("ANONYMIZE_HOME", str(tmp_path))
    monkeypatch.setenv("ANONYMIZE_WEIGHTS", str(tmp_path / "none"))
    from anonymize import weights as W

    if "stlpips-vgg" in W.load_manifest().names():
        with pytest.raises(WeightsMissing, match="fetch-weights stlpips-vgg"):
            load_features("stlpips-vgg")
    else:  # before the manifest entry exists: still exit 2 with both ways out
        with pytest.raises(MethodUnavailable, match="fetch-weights stlpips-vgg.*--features-file"):
            load_features("stlpips-vgg")


@pytest.mark.skipif(not WHEEL.is_file(), reason="stlpips-pytorch wheel not present on this machine")
def test_real_stlpips_weights_from_the_wheel(tmp_path):
    with zipfile.ZipFile(WHEEL) as z:
        data = z.read(STLPIPS_VGG_MEMBER)
    p = tmp_path / "vgg_shift_tolerant.pth"
    p.write_bytes(data)
    phi, rec = load_features("stlpips-vgg", str(p))
    assert rec["verified"] is True and rec["sha256"] == STLPIPS_VGG_SHA256
    x = torch.rand(1, 3, 32, 32)
    assert phi(x).shape == (1, 128, 17, 17)
    # a trained trunk tells an image from noise far better than from itself shifted by one pixel
    plain = torch.from_numpy(np.array(Image.open(SAMPLES / "astronaut.jpg").convert("RGB").resize((64, 64)))).permute(2, 0, 1)[None].float() / 255
    f = phi(plain)
    d_noise = (phi(torch.rand_like(plain)) - f).pow(2).mean()
    d_shift = (phi(plain.roll(1, -1)) - f).pow(2).mean()
    assert d_noise > 5 * d_shift


# ----------------------------------------------------------------------------- the objective on a handful of images


def _handful(shared_root: Path, tmp: Path) -> Path:
    """4 classes x 10 CIFAR-10 images from ../shared (JPEG re-encodes of the test set)."""
    src = shared_root / "corpus" / "cifar" / "cifar10_test_jpg"
    if not src.is_dir():
        pytest.skip(f"{src} is not present")
    out = tmp / "handful"
    for cls in ("airplane", "automobile", "frog", "ship"):
        (out / cls).mkdir(parents=True)
        for f in sorted((src / cls).iterdir())[:10]:
            shutil.copyfile(f, out / cls / f.name)
    return out


@pytest.fixture(scope="module")
def handful(tmp_path_factory, shared_dir):
    data = _handful(shared_dir, tmp_path_factory.mktemp("itn"))
    x, y, classes = load_dataset(data, 16)
    return x, y, classes


def test_alpha_moves_accuracy_and_feature_distance_the_expected_way(handful):
    """Paper Table I / Fig. 3 in miniature, on 40 CIFAR images (psi memorises them): alpha = 0 keeps psi's
    accuracy on h(x); a large alpha (the feature repulsion dominates) destroys it and pushes h(x) away from x
    in phi's space. Measured here: 0.95 / 0.925 at alpha 0 and 0.25 at alpha 20 with 1 / 2 threads."""
    x, y, classes = handful
    cfg = ITNTrainConfig(data="-", size=16, width=4, batch=10, lr=0.05, epochs_service=30, augment=False)
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    psi, _ = train_service(cfg, len(classes), x, y, x, y, gen, lambda s: None)
    acc_plain = accuracy(psi, x, y)
    assert acc_plain >= 0.9  # psi memorised the handful
    phi = VGGRelu22.random(0)
    energy = feature_energy(phi, x)
    res = {}
    for alpha in (0.0, 20.0):
        c = ITNTrainConfig(data="-", size=16, width=4, batch=10, lr=0.05, epochs_itn=25, alpha=alpha, augment=False)
        torch.manual_seed(0)
        unet, _ = train_transform(c, psi, phi, energy, x, y, x, y, torch.Generator().manual_seed(0), lambda s: None)
        hx = transform(unet, x)
        with torch.no_grad():
            dist = float((phi(hx.float() / 255) - phi(x.float() / 255)).pow(2).mean()) / energy
        res[alpha] = (accuracy(psi, hx, y), dist)
    (acc0, d0), (acc_big, d_big) = res[0.0], res[20.0]
    assert acc0 >= 0.75, res  # CE alone: h(x) stays readable by psi
    assert acc_big <= acc0 - 0.35, res  # the repulsion term dominates: accuracy collapses (chance = 0.25)
    assert d_big >= 2 * d0, res  # and h(x) is pushed away from x in feature space


# ----------------------------------------------------------------------------- CLI: train itn -> protect -m itn


def _tiny_classes(root: Path) -> Path:
    rng = np.random.default_rng(5)
    for cls, col in (("warm", (210, 90, 40)), ("cold", (40, 90, 210))):
        (root / cls).mkdir(parents=True)
        for i in range(12):
            img = np.clip(np.array(col)[None, None] + rng.normal(0, 20, (20, 20, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(root / cls / f"{i:02d}.png")
    return root


@pytest.fixture(scope="module")
def trained_itn(tmp_path_factory):
    root = tmp_path_factory.mktemp("itn_cli")
    data = _tiny_classes(root / "data")
    out = root / "h.pt"
    r = runner.invoke(app, ["train", "itn", "--data", str(data), "--out", str(out), "--features", "random-vgg",
                            "--size", "16", "--width", "4", "--epochs-service", "2", "--epochs-itn", "1", "--batch", "8",
                            "--alpha", "0.1", "--json"])
    assert r.exit_code == 0, r.output
    return out, json.loads(r.stdout.strip().splitlines()[-1])


def test_train_itn_records_what_was_trained_on_what(trained_itn):
    out, res = trained_itn
    m = res["metrics"]
    assert m["train_images"] + m["validation_images"] + m["test_images"] == 24
    assert res["features"]["name"] == "random-vgg" and "not the paper's" in res["features"]["note"]
    assert res["data"]["images"] == 24 and res["data"]["classes"] == 2
    meta = load_weights(out)
    assert meta["config"]["alpha"] == 0.1 and meta["config"]["feat_norm"] == "energy"
    assert meta["metrics"]["feature_energy"] > 0 and meta["classes"] == ["cold", "warm"]
    assert not list(out.parent.glob(".*.tmp"))


def test_protect_itn_cli_on_the_bundled_samples(trained_itn, tmp_path):
    out, _ = trained_itn
    before = {p.name: p.read_bytes() for p in SAMPLES.iterdir()}
    r = runner.invoke(app, ["protect", str(SAMPLES), "-m", "itn", "--weights", str(out), "--region", "image",
                            "--output", str(tmp_path / "o"), "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert {rec["relative_path"] for rec in doc["images"] if rec["relative_path"].endswith(".jpg")} == {"astronaut.jpg", "grace_hopper.jpg"}
    for rec in doc["images"]:
        if not rec["relative_path"].endswith(".jpg"):
            continue
        assert rec["protected"] is True
        info = rec["method_info"]
        assert info["weights_sha256"] and info["training"]["alpha"] == 0.1 and info["feature_network"]["name"] == "random-vgg"
        assert info["guarantee"] == "none" and "ITN-Attack" in info["guarantee_reason"]
        src = np.asarray(Image.open(SAMPLES / rec["relative_path"]).convert("RGB"))
        res = np.asarray(Image.open(tmp_path / "o" / rec["relative_path"]).convert("RGB"))
        assert res.shape == src.shape and np.abs(res.astype(int) - src.astype(int)).mean() > 10
    assert {p.name: p.read_bytes() for p in SAMPLES.iterdir()} == before


def test_itn_is_deterministic_and_only_touches_the_faces(trained_itn):
    out, _ = trained_itn
    img = np.full((60, 80, 3), 120, np.uint8)
    item = ImageItem(Path("f.png"), Path("f.png"), img)
    item.faces = [Face(box=(10.0, 10.0, 30.0, 34.0), score=0.99, detector="test")]
    m = ITN({"weights": str(out)})
    o1 = m([item], MethodContext(region="faces", mask_scale=1.0))[0]
    o2 = m([item], MethodContext(region="faces", mask_scale=1.0, seed=9))[0]
    assert o1.protected and np.array_equal(o1.pixels, o2.pixels) and o1.info["h_input_sizes"] == [[16, 16]]
    changed = np.any(o1.pixels != img, axis=2)
    assert changed[10:34, 10:30].mean() > 0.5 and not changed[40:, :].any() and not changed[:, 35:].any()
    item.faces = []
    o = m([item], MethodContext(region="faces"))[0]
    assert o.protected is False and "no face" in o.info["reason"]
    o = ITN({"weights": str(out), "size": "native"})([ImageItem(Path("g.png"), Path("g.png"), img)], MethodContext(region="image"))[0]
    assert o.info["h_input_sizes"] == [[60, 80]]


def test_itn_without_weights_exits_2_naming_the_train_command(tmp_path):
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "a.png")
    for extra in ([], ["--weights", str(tmp_path / "missing.pt")]):
        r = runner.invoke(app, ["protect", str(tmp_path / "a.png"), "-m", "itn", "--region", "image",
                                "--output", str(tmp_path / "o")] + extra)
        assert r.exit_code == 2, r.output
        assert "anonymize train itn" in r.output
    assert not (tmp_path / "o").exists()
    (tmp_path / "bad.pt").write_bytes(b"garbage")
    with pytest.raises(UsageError, match="not a readable itn weights file"):
        load_weights(tmp_path / "bad.pt")
    with pytest.raises(UsageError):
        ITNTrainConfig(data=".", features="imagenet-vgg").check()
    with pytest.raises(UsageError):
        ITNTrainConfig(data=".", epochs_service=0).check()

"""dpimage --variant xai (seed 000): networks, guided backprop, DP noise scale, training and protect."""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from typer.testing import CliRunner

from anonymize.cli import app
from anonymize.errors import UsageError
from anonymize.methods.base import MethodContext
from anonymize.methods.dpimage import DPImage
from anonymize.nets.dpxai import ExplainerVGG, Generator, PatchDiscriminator, dp_noise_std, guided_backprop
from anonymize.training.dpimage_xai import XAITrainConfig, load_dataset, load_weights, stratified_split, train
from anonymize.types import Face, ImageItem

runner = CliRunner()


@pytest.mark.parametrize(
    "eps,delta,textbook,code",
    [(0.1, 1e-5, 48.448, 2347.21), (0.1, 0.9, 8.106, 65.70), (0.5, 1e-5, 9.690, 93.89),
     (0.5, 0.9, 1.621, 2.628), (0.9, 1e-5, 5.383, 28.98), (0.9, 0.9, 0.9006, 0.8111)],
)
def test_dp_noise_std_matches_spec_table(eps, delta, textbook, code):
    assert dp_noise_std(eps, delta, calibration="textbook") == pytest.approx(textbook, rel=1e-3)
    assert dp_noise_std(eps, delta, calibration="code") == pytest.approx(code, rel=1e-3)
    with pytest.raises(ValueError):
        dp_noise_std(eps, 1.5)


def test_architectures():
    assert sum(p.numel() for p in Generator(64).parameters()) == 498_947  # Table 1, counted correctly
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    for arch in ("paper", "code"):
        y = Generator(8, arch)(x)
        assert y.shape == x.shape and y.abs().max() < 1
    with pytest.raises(ValueError):
        Generator(8, "code")(torch.zeros(1, 3, 30, 30))
    assert PatchDiscriminator(8).net(x).shape == (2, 1, 2, 2)  # 2x2 patch map at 32 px (spec A.6)
    assert ExplainerVGG(10, width=0.25, hidden=16)(x).shape == (2, 10)


class _GuidedReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z):
        ctx.save_for_backward(z)
        return z.clamp_min(0)

    @staticmethod
    def backward(ctx, g):
        (z,) = ctx.saved_tensors
        return g.clamp_min(0) * (z >= 0).to(g.dtype)


def _reference_guided(model: ExplainerVGG, x: torch.Tensor) -> torch.Tensor:
    """Guided backprop through autograd: guided ReLU backward, seed = softmax of the logits."""
    x = x.clone().requires_grad_(True)
    h = x
    for layer in model.features:
        if isinstance(layer, torch.nn.MaxPool2d):
            h = F.max_pool2d(h, 2, 2)
        else:
            h = _GuidedReLU.apply(layer.bn(layer.conv(h)))
    h = h.mean(dim=(2, 3))
    h = _GuidedReLU.apply(model.fc1(h))
    h = _GuidedReLU.apply(model.fc2(h))
    logits = model.fc3(h)
    seed = torch.softmax(logits, 1).detach()
    (grad,) = torch.autograd.grad(logits, x, grad_outputs=seed)
    return grad


def test_guided_backprop_equals_autograd_reference():
    torch.manual_seed(0)
    model = ExplainerVGG(5, width=0.25, hidden=24)
    for m in model.modules():  # BN as identity: our map ignores BN's scale (as the reference code does)
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.zero_()
            m.running_var.fill_(1.0 - m.eps)
            m.weight.data.fill_(1.0)
            m.bias.data.zero_()
    model.eval()
    x = torch.rand(3, 3, 16, 16) * 2 - 1
    ours = guided_backprop(model, x, normalise=False)
    ref = _reference_guided(model, x)
    assert ref.abs().max() > 0
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-9)
    m = guided_backprop(model, x)
    assert m.abs().max() <= 1.0 and m.abs().amax(dim=(1, 2, 3)).min() >= 0.1  # rescaled to [1, 10) then clipped


def test_paper_objective_reaches_the_generator():
    torch.manual_seed(0)
    f = ExplainerVGG(4, width=0.25, hidden=16).eval()
    g = Generator(4)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    target = guided_backprop(f, x).detach()
    loss = (target - guided_backprop(f, g(x), noise_std=0.5, generator=torch.Generator().manual_seed(1))).abs().mean()
    loss.backward()
    assert sum(float(p.grad.abs().sum()) for p in g.parameters() if p.grad is not None) > 0


def _two_class_folder(root: Path, n: int = 20, size: int = 20, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for cls, colour in (("red", (200, 40, 40)), ("blue", (40, 40, 200))):
        (root / cls).mkdir(parents=True)
        for i in range(n):
            img = np.clip(np.array(colour)[None, None] + rng.normal(0, 25, (size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(root / cls / f"{i:02d}.png")
    (root / "red" / "broken.png").write_bytes(b"not an image")
    return root


def test_load_dataset_folder_and_cifar_pickle(tmp_path):
    folder = _two_class_folder(tmp_path / "d", n=5)
    x, y, classes = load_dataset(folder, 16)
    assert classes == ["blue", "red"] and x.shape == (10, 3, 16, 16) and x.dtype == torch.uint8  # broken file skipped
    tr, va = stratified_split(y, 0.2, 0)
    assert len(set(tr) & set(va)) == 0 and sorted(np.concatenate([tr, va])) == list(range(10))
    assert sorted(y[va].tolist()) == [0, 1]
    pk = tmp_path / "cifar-10-batches-py"
    pk.mkdir()
    data = np.random.default_rng(0).integers(0, 255, (6, 3072), dtype=np.uint8)
    with open(pk / "data_batch_1", "wb") as fh:
        pickle.dump({b"data": data, b"labels": [0, 1, 2, 0, 1, 2]}, fh)
    with open(pk / "batches.meta", "wb") as fh:
        pickle.dump({b"label_names": [b"a", b"b", b"c"]}, fh)
    x, y, classes = load_dataset(pk, 32)
    assert classes == ["a", "b", "c"] and y.tolist() == [0, 1, 2, 0, 1, 2]
    assert torch.equal(x[0], torch.from_numpy(data[0].reshape(3, 32, 32)))
    with pytest.raises(UsageError):
        load_dataset(tmp_path / "missing", 16)


def test_config_checks():
    with pytest.raises(UsageError):
        XAITrainConfig(data=".", exp_loss="both").check()
    with pytest.raises(UsageError):
        XAITrainConfig(data=".", epochs_explainer=0).check()
    with pytest.raises(UsageError):
        XAITrainConfig(data=".", delta=1.0).check()


@pytest.fixture(scope="module")
def trained(tmp_path_factory, test_seed):
    root = tmp_path_factory.mktemp("xai")
    data = _two_class_folder(root / "data", seed=test_seed)
    out = root / "g.pt"
    r = runner.invoke(app, [
        "train", "dpimage-xai", "--data", str(data), "--out", str(out), "--size", "24", "--sigma", "3",
        "--g-channels", "4", "--width", "0.125", "--hidden", "16", "--epochs-explainer", "12", "--epochs-g", "1",
        "--epochs-f", "1", "--lr-explainer", "3e-3", "--batch-explainer", "8", "--batch-g", "8", "--batch-f", "8",
        "--val-fraction", "0.25", "--seed", str(test_seed), "--json",
    ])
    assert r.exit_code == 0, r.output
    return out, json.loads(r.stdout.strip().splitlines()[-1])


def test_train_writes_a_checked_weights_file(trained):
    out, res = trained
    m = res["metrics"]
    assert m["held_out_images"] == 10 and m["train_images"] == 30
    # colour classes are trivially separable: the explainer did learn (12 epochs: 1.0 on 12 of 12 seeds;
    # 6 epochs left one seed in 6 at chance)
    assert m["explainer_accuracy"] >= 0.9
    assert m["guarantee"] == "none" and "NOT" in m["guarantee_note"]
    assert m["noise_std"] == pytest.approx(dp_noise_std(0.9, 1e-5))
    assert 0 <= m["ssim_x_noise"] < 0.3  # sigma = 3 noise destroys structure
    meta = load_weights(out)
    assert meta["config"]["exp_loss"] == "code" and meta["classes"] == ["blue", "red"]
    assert not list(out.parent.glob(".*.tmp"))  # atomic write left no temporary


def test_protect_cli_applies_the_trained_generator(trained, tmp_path):
    out, _ = trained
    src = tmp_path / "in"
    src.mkdir()
    rng = np.random.default_rng(3)
    img = rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)
    Image.fromarray(img).save(src / "a.png")
    before = (src / "a.png").read_bytes()
    r = runner.invoke(app, ["protect", str(src), "--method", "dpimage", "--variant", "xai", "--weights", str(out),
                            "--region", "image", "--output", str(tmp_path / "out"), "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    rec = doc["images"][0]
    assert rec["protected"] is True
    info = rec["method_info"]
    assert info["variant"] == "xai" and info["guarantee"] == "none" and info["deterministic"]
    assert info["training"]["epsilon"] == 0.9 and len(info["weights_sha256"]) == 64
    res = np.asarray(Image.open(tmp_path / "out" / "a.png").convert("RGB"))
    assert res.shape == img.shape and not np.array_equal(res, img)
    assert (src / "a.png").read_bytes() == before
    # deterministic: the same generator gives the same pixels
    m = DPImage({"variant": "xai", "weights": str(out)})
    item = ImageItem(src / "a.png", Path("a.png"), img)
    o1 = m([item], MethodContext(region="image"))[0]
    o2 = m([item], MethodContext(region="image", seed=5))[0]
    assert np.array_equal(o1.pixels, o2.pixels) and np.array_equal(o1.pixels, res)


def test_xai_faces_region_changes_only_the_boxes(trained):
    out, _ = trained
    img = np.full((60, 80, 3), 120, np.uint8)
    item = ImageItem(Path("f.png"), Path("f.png"), img)
    item.faces = [Face(box=(10.0, 10.0, 30.0, 34.0), score=0.99, detector="test")]
    o = DPImage({"variant": "xai", "weights": str(out), "size": "trained"})([item], MethodContext(region="faces", mask_scale=1.0))[0]
    assert o.protected and o.info["g_input_sizes"] == [[24, 24]]
    changed = np.any(o.pixels != img, axis=2)
    assert changed[10:34, 10:30].mean() > 0.5 and not changed[40:, :].any() and not changed[:, 35:].any()
    item.faces = []
    o = DPImage({"variant": "xai", "weights": str(out)})([item], MethodContext(region="faces"))[0]
    assert o.protected is False and "no face" in o.info["reason"]


def test_bad_weights_file_is_a_usage_error(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"garbage")
    r = runner.invoke(app, ["protect", str(tmp_path), "--method", "dpimage", "--variant", "xai", "--weights", str(bad), "--region", "image"])
    assert r.exit_code == 2 and "not a readable dpimage-xai weights file" in r.output
    torch.save({"format": "something-else"}, tmp_path / "other.pt")
    with pytest.raises(UsageError):
        load_weights(tmp_path / "other.pt")

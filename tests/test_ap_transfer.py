"""protect --method ap against several recognizers: the ensemble loss, the transfer boosting
options on a small pair of real networks, and the protected flag against ``evaluate``.

The real-model tests need the cached weights of facenet-casia (``anonymize fetch-weights
facenet-casia``) and skip cleanly without them; dlib-resnet is built in.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import anonymize.methods.ap  # noqa: F401  (registers the method)
from anonymize.methods.ap_face import ensemble_loss, weights_present
from anonymize.types import Face, ImageItem


def _need(*names: str) -> None:
    missing = [n for n in names if not weights_present(n)]
    if missing:
        pytest.skip(f"weights not cached: {', '.join(missing)} (anonymize fetch-weights {' '.join(missing)})")


# ----------------------------------------------------------------------------- the loss


def test_ensemble_loss_follows_the_weakest_model():
    r = torch.tensor([[0.4, 1.3, 2.0], [1.6, 0.9, 1.1]], requires_grad=True)
    loss = ensemble_loss(r, 0.05)
    # a smooth -min: close to minus the smallest ratio of each face
    assert torch.allclose(loss, -torch.tensor([0.4, 0.9]), atol=0.01)
    (g,) = torch.autograd.grad(loss.sum(), r)
    # the gradient pushes the model that still recognises the face, almost nothing else
    assert g[0, 0] < -0.95 and g[0, 1:].abs().max() < 0.01
    assert g[1, 1] < -0.8 and g[1, 0].abs() < 0.01
    # hard minimum at temperature 0; the mean at a large temperature
    assert torch.equal(ensemble_loss(r, 0.0), -torch.tensor([0.4, 0.9]))
    (gm,) = torch.autograd.grad(ensemble_loss(r, 1e4).sum(), r)
    assert torch.allclose(gm, torch.full_like(gm, -1 / 3), atol=1e-3)
    with pytest.raises(ValueError):
        ensemble_loss(torch.ones(3), 0.1)


# ----------------------------------------------------------------------------- real faces


def _item(name: str, img: np.ndarray, det) -> ImageItem:
    faces = det([img])[0]
    assert faces, f"no face in {name}"
    f = max(faces, key=lambda f: f.width * f.height)
    it = ImageItem(Path(name), Path(name + ".png"), np.ascontiguousarray(img))
    it.faces = [Face(f.box, f.score, f.detector)]  # ap fits each recognizer's landmarks itself
    return it


@pytest.fixture(scope="module")
def real_faces(sample_faces):
    """Two public-domain photos (always present) and two corpus faces when ../shared is there."""
    from anonymize.faces.detect import get_detector
    from tests.conftest import SHARED

    det = get_detector("yunet")
    imgs = {}
    if "astronaut" in sample_faces:
        imgs["astronaut"] = sample_faces["astronaut"]
    if "grace_hopper" in sample_faces:
        imgs["grace_hopper"] = np.ascontiguousarray(sample_faces["grace_hopper"][::2, ::2])
    root = SHARED / "corpus" / "faces"
    if root.is_dir():
        from PIL import Image

        for name in ("aaron_peirsol", "abdullah_gul"):
            photos = sorted((root / name).iterdir()) if (root / name).is_dir() else []
            if photos:
                imgs[name] = np.asarray(Image.open(photos[0]).convert("RGB"))
    if len(imgs) < 2:
        pytest.skip("fewer than two real face photos available")
    return [_item(k, v, det) for k, v in imgs.items()]


def _ratios(items, pixels, names):
    """distance / threshold under each of ``names``, per face (chips cut from the same box)."""
    from anonymize.faces.alignments import extract_chips
    from anonymize.faces.recognize import get_recognizer

    out = []
    for it, px in zip(items, pixels):
        row = {}
        for n in names:
            rec = get_recognizer(n)
            a = extract_chips(rec.alignment, it.pixels, it.faces)
            b = extract_chips(rec.alignment, px, it.faces)
            x = torch.from_numpy(np.concatenate([a, b])).permute(0, 3, 1, 2).float() / 255.0
            with torch.no_grad():
                d = rec.descriptor(x)
            row[n] = float(rec.distance(d[:1], d[1:])[0]) / rec.threshold
        out.append(row)
    return out


def _attack(items, params, seed=0):
    """Run the attack engine for a fixed number of steps (an unreachable margin: no early stop)."""
    from anonymize.methods.ap_face import FaceAttack, FaceAttackConfig

    cfg = FaceAttackConfig.from_params(params)
    gens = [torch.Generator().manual_seed(seed + i) for i in range(len(items))]
    return [px for px, _, _ in FaceAttack(cfg).run(items, gens)]


@pytest.mark.slow
def test_ensemble_attack_fools_every_member_where_a_single_model_attack_does_not(real_faces):
    """White-box: dlib-resnet + facenet-casia attacked together clear both thresholds; an attack on
    dlib-resnet alone leaves facenet-casia recognising most faces (the reason for ensembles)."""
    _need("facenet-casia")
    items = real_faces[:2]
    base = {"epsilon": 8, "steps": 30, "step_size": 1.0, "margin": 0.3, "ssim_floor": 0, "output_codec": False,
            "di_prob": 0, "momentum": 0}
    ens = _ratios(items, _attack(items, {**base, "attack_models": "dlib-resnet,facenet-casia"}),
                  ["dlib-resnet", "facenet-casia"])
    one = _ratios(items, _attack(items, {**base, "attack_models": "dlib-resnet"}), ["dlib-resnet", "facenet-casia"])
    print("ensemble", ens, "dlib only", one)
    for r in ens:
        assert min(r.values()) >= 1.0, r  # the weakest member was pushed past its threshold too
    assert all(r["dlib-resnet"] >= 1.0 for r in one)
    assert np.mean([r["facenet-casia"] for r in one]) < np.mean([r["facenet-casia"] for r in ens]) - 0.2


# ----------------------------------------------------------------------------- boosting options

# The option study (README, `ap`): facenet-casia attacked alone for a fixed 20 steps at epsilon 8
# (no early stop), transfer measured as distance / threshold under two networks it never saw.
# Measured on these four faces (mean of the two evaluators): base 0.54; momentum 0.60; DI 0.62;
# EOT jpeg+resize 0.63; TI (sigma 0.04 face widths) 0.42; feature loss (weight 1) 0.48.
STUDY_BASE = {"attack_models": "facenet-casia", "epsilon": 8, "steps": 20, "step_size": 1.0, "margin": 20,
              "momentum": 0, "di_prob": 0, "ti_sigma": 0, "feature_weight": 0, "ssim_floor": 0, "output_codec": False}
STUDY_EVAL = ("dlib-resnet", "lightcnn-v4")
OPTIONS = {
    "momentum": {"momentum": 1.0},
    "input_diversity": {"di_prob": 0.7, "di_scale": 0.15},
    "eot": {"eot": "jpeg,resize"},
    "translation_invariance": {"ti_sigma": 0.04},
    "feature_loss": {"feature_weight": 1.0},
}
HELPS = ("momentum", "input_diversity", "eot")  # on in the levels (EOT: a user option, verified on JPEG)
HURTS = ("translation_invariance", "feature_loss")  # off in the levels


@pytest.fixture(scope="module")
def study(real_faces):
    _need("facenet-casia", "lightcnn-v4")
    if len(real_faces) < 4:
        pytest.skip("the option study needs the two corpus faces (../shared)")
    cache: dict[str, float] = {}

    def transfer(option: str | None) -> float:
        if option not in cache:
            params = {**STUDY_BASE, **(OPTIONS[option] if option else {})}
            rows = _ratios(real_faces, _attack(real_faces, params), STUDY_EVAL)
            cache[option] = float(np.mean([[r[n] for n in STUDY_EVAL] for r in rows]))
            print(option or "base", round(cache[option], 3))
        return cache[option]

    return transfer


@pytest.mark.slow
@pytest.mark.parametrize("option", HELPS)
def test_boosting_option_improves_transfer_to_unseen_networks(study, option):
    base, boosted = study(None), study(option)
    assert boosted > base + 0.02, (option, base, boosted)  # measured +0.06..+0.09


@pytest.mark.slow
@pytest.mark.parametrize("option", HURTS)
def test_options_left_off_in_the_levels_do_not_improve_transfer(study, option):
    """TI and the feature loss are implemented and measured, but they lowered transfer here, so the
    levels keep them off; this guards that decision."""
    from anonymize.methods.ap_face import LEVELS

    base, boosted = study(None), study(option)
    assert boosted < base - 0.02, (option, base, boosted)  # measured -0.06..-0.12
    key = next(iter(OPTIONS[option]))
    assert all(lv[key] == 0 for lv in LEVELS.values())


# ----------------------------------------------------------------------------- protected == evaluate


def test_protected_flag_agrees_with_evaluate_on_real_faces(real_faces, tmp_path):
    """The method's per-face ``protected`` is evaluate's decision on the written (JPEG) file: a strong
    and a hopeless run, every face compared with ``anonymize.evaluate`` under the attacked model."""
    from PIL import Image

    from anonymize import evaluate, protect

    src = tmp_path / "in"
    src.mkdir()
    for it in real_faces[:3]:
        Image.fromarray(it.pixels).save(src / f"{it.source.name}.jpg", quality=90)
    flags: list[tuple[bool, bool]] = []
    for tag, params in (("strong", {"level": "medium"}), ("hopeless", {"epsilon": 1, "steps": 1})):
        out = tmp_path / tag
        run = protect([src], method="ap", params={**params, "attack_models": "dlib-resnet"}, output=out,
                      report=tmp_path / f"{tag}.json", seed=3)
        assert run.exit_code in (0, 1)
        res = evaluate(src, out, recognizers=("dlib-resnet",), report=tmp_path / f"{tag}-eval.json", device="cpu")
        by_path = {r["relative_path"]: r for r in res.images}
        for rec in run.records:
            assert rec["status"] == "ok", rec
            mfaces = rec["method_info"]["faces"]
            efaces = by_path[rec["relative_path"]]["faces"]
            for k, box in enumerate(f["box"] for f in rec["faces"]):
                from anonymize.evaluation.blackbox import iou

                match = [e for e in efaces if iou(tuple(e["box"]), tuple(box)) >= 0.5]
                e_ok = bool(match) and bool(match[0]["identity"]["dlib-resnet"]["protected"])
                flags.append((bool(mfaces[k]["protected"]), e_ok))
            assert rec["protected"] == all(f["protected"] for f in mfaces)
    print(flags)
    assert all(m == e for m, e in flags), flags
    assert any(m for m, _ in flags) and not all(m for m, _ in flags)  # both outcomes were exercised

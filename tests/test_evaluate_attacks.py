"""evaluate --transforms (everyday transforms, per-transform gates) and --attack itn (ITN-Attack, seed 002)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import anonymize
from anonymize.cli import app
from anonymize.errors import UsageError
from anonymize.evaluation import check_gates, parse_gates
from anonymize.evaluation.attack_itn import (
    AttackBudget,
    AttackOptions,
    baselines,
    box_stats,
    invert,
    metric_block,
    split_attacker,
    train_inverse,
)
from anonymize.evaluation.transforms import (
    DEFAULT_TRANSFORMS,
    Transform,
    parse_transforms,
)

runner = CliRunner()
SAMPLES = Path(__file__).resolve().parent.parent / "anonymize" / "data" / "samples"


# ----------------------------------------------------------------------------- transforms


def test_transform_parsing_and_errors():
    assert [t.name for t in parse_transforms("default")] == DEFAULT_TRANSFORMS.split(",")
    assert parse_transforms(None) == () and parse_transforms("none") == ()
    assert parse_transforms("JPEG:75.0")[0] == Transform("jpeg", 75.0)
    for bad in ("jpeg:0", "jpeg:75.5", "resize:1", "crop:0", "blur:0", "rotate:5", "jpeg", "jpeg:abc"):
        with pytest.raises(UsageError, match="--transforms"):
            parse_transforms(bad)


def test_transforms_do_what_they_say():
    rng = np.random.default_rng(0)
    img = np.clip(rng.normal(128, 60, (48, 64, 3)), 0, 255).astype(np.uint8)
    before = img.copy()
    j75, j50 = Transform("jpeg", 75)(img), Transform("jpeg", 50)(img)
    assert j75.shape == img.shape and not np.array_equal(j75, img)
    assert np.abs(j50.astype(int) - img).mean() > np.abs(j75.astype(int) - img).mean()  # lower quality, more loss
    r = Transform("resize", 0.5)(img)
    assert r.shape == img.shape and np.abs(r.astype(int) - img).mean() > 5
    c = Transform("crop", 0.5)
    assert c.geometric and not Transform("jpeg", 75).geometric
    flat = np.zeros((40, 40, 3), np.uint8)
    flat[10:30, 10:30] = 255  # a centred square fills the frame after a 0.5 centre crop
    assert c(flat)[5:35, 5:35].min() > 200
    b = Transform("blur", 2)(img)
    assert b.std() < img.std()
    assert np.array_equal(img, before)  # inputs are never modified


def _protected_samples(tmp: Path) -> Path:
    out = tmp / "blurred"
    run = anonymize.protect([SAMPLES], method="blur", output=out)
    assert run.exit_code == 0
    return out


def test_each_transform_applied_exactly_once_and_reported(tmp_path, monkeypatch):
    prot = _protected_samples(tmp_path)
    calls: dict[str, list[int]] = {}
    real = Transform.__call__

    def counting(self, px):
        calls.setdefault(self.name, []).append(int(px.sum()))
        return real(self, px)

    monkeypatch.setattr(Transform, "__call__", counting)
    res = anonymize.evaluate(SAMPLES, prot, faces=False, transforms="jpeg:75,jpeg:50,blur:1", report=tmp_path / "r.json")
    s = res.summary
    ok = [r for r in res.images if r["status"] == "ok"]
    assert set(s["transforms"]) == {"jpeg:75", "jpeg:50", "blur:1"}
    for name, block in s["transforms"].items():
        assert block["applied"] == len(ok) == 2 and len(calls[name]) == 2
    # never on top of another transform: every call saw an untouched protected image
    prot_sums = sorted(int(np.asarray(Image.open(r["protected"]).convert("RGB"), np.int64).sum()) for r in ok)
    for name in calls:
        assert sorted(calls[name]) == prot_sums
    # the reported jpeg:50 numbers are those of one JPEG-50 encode of the protected image
    from anonymize.metrics.quality import psnr

    for r in ok:
        a = np.asarray(Image.open(r["original"]).convert("RGB"))
        b = np.asarray(Image.open(r["protected"]).convert("RGB"))
        assert r["transforms"]["jpeg:50"]["psnr"] == pytest.approx(psnr(a, real(Transform("jpeg", 50), b)), abs=1e-9)
    doc = json.loads((tmp_path / "r.json").read_text())
    assert "transforms_note" in doc["summary"] and "jpeg:75" in doc["images"][0]["transforms"]


def test_per_transform_gates_parse_and_fail():
    assert parse_gates("spr@jpeg:75=0.9,black_box_spr@JPEG:50=0.5,ssim=0.1") == {
        "spr@jpeg:75": 0.9, "black_box_spr@jpeg:50": 0.5, "ssim": 0.1}
    for bad, msg in (("spr@rotate:5=0.9", "--transforms"), ("rank1_max@jpeg:75=0.1", "per-transform"),
                     ("sppr@jpeg:75=0.9", "unknown gate"), ("spr@jpeg:75=high", "needs a number")):
        with pytest.raises(UsageError, match=msg):
            parse_gates(bad)
    summary = {"spr": 1.0, "transforms": {"jpeg:75": {"spr": 0.39, "black_box": {"spr_min": 0.2}}}}
    g = check_gates(summary, parse_gates("spr=0.9,spr@jpeg:75=0.9,black_box_spr@jpeg:75=0.1,spr@blur:1=0.5"))
    assert g["spr"]["passed"] and not g["spr@jpeg:75"]["passed"] and g["black_box_spr@jpeg:75"]["passed"]
    assert g["spr@jpeg:75"]["metric"] == "transforms.jpeg:75.spr"
    assert g["spr@blur:1"]["value"] is None and not g["spr@blur:1"]["passed"]  # not measured: fails


def test_evaluate_cli_transforms_on_the_bundled_samples(tmp_path):
    prot = _protected_samples(tmp_path)
    # bare --transforms: the default set, even with the positional arguments after it
    r = runner.invoke(app, ["evaluate", "--transforms", str(SAMPLES), str(prot), "--report", str(tmp_path / "a.json"),
                            "--recognizers", "dlib-resnet", "--html", str(tmp_path / "a.html")])
    assert r.exit_code == 0, r.output
    s = json.loads((tmp_path / "a.json").read_text())["summary"]
    assert list(s["transforms"]) == DEFAULT_TRANSFORMS.split(",")
    for block in s["transforms"].values():
        assert block["applied"] == 2 and block["faces"] >= 2
        assert set(block["recognizers"]) == {"dlib-resnet"} and "spr_aligned" in block["recognizers"]["dlib-resnet"]
    assert "after everyday transforms" in r.output
    assert "id='transforms'" in (tmp_path / "a.html").read_text()
    # a gate on a transform that was not listed adds it; a gate that cannot pass exits 3
    r = runner.invoke(app, ["evaluate", str(SAMPLES), str(prot), "--report", str(tmp_path / "b.json"), "--recognizers",
                            "dlib-resnet", "--transforms", "blur:1", "--fail-under", "spr@jpeg:75=1.01"])
    assert r.exit_code == 3, r.output
    s = json.loads((tmp_path / "b.json").read_text())["summary"]
    assert list(s["transforms"]) == ["blur:1", "jpeg:75"]
    assert s["gates"]["spr@jpeg:75"]["passed"] is False and "FAIL" in r.output
    r = runner.invoke(app, ["evaluate", str(SAMPLES), str(prot), "--report", str(tmp_path / "c.json"), "--no-faces",
                            "--fail-under", "ssim@jpeg:75=0.01"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["evaluate", str(SAMPLES), str(prot), "--transforms", "jpeg:101"])
    assert r.exit_code == 2 and "jpeg" in r.output


# ----------------------------------------------------------------------------- the inverse network


def _smooth_images(n: int, size: int, seed: int) -> torch.Tensor:
    """Random smooth colour images (low-frequency): a stand-in for natural images, uint8 [N, 3, S, S]."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 4, 4, generator=g)
    x = torch.nn.functional.interpolate(low, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)
    return torch.round(x * 255).to(torch.uint8)


def _attack_gain(protect, seed: int = 0) -> tuple[float, float]:
    plain_tr, plain_te = _smooth_images(64, 16, 1), _smooth_images(24, 16, 2)
    budget = AttackBudget(epochs=30, width=8, batch=16, lr=5e-3, size=16, seed=seed)
    torch.manual_seed(seed)
    net, info = train_inverse(protect(plain_tr, 10), plain_tr, budget)
    assert info["train_pairs"] + info["validation_pairs"] == 64
    rec = invert(net, protect(plain_te, 20))
    hwc = lambda t: t.permute(0, 2, 3, 1).numpy()
    att = metric_block(hwc(plain_te), hwc(rec))
    base = baselines(hwc(plain_tr), hwc(plain_te))
    return att["psnr"]["median"], base["mean_image"]["psnr"]["median"]


def test_inverse_network_undoes_an_invertible_transform_and_not_noise():
    """The ITN-Attack works where information survives (colour inversion + channel swap) and gains
    nothing over the mean image where none does (protected = independent noise)."""
    invertible = lambda x, s: (255 - x).flip(1)
    noise = lambda x, s: torch.randint(0, 256, x.shape, generator=torch.Generator().manual_seed(s), dtype=torch.uint8)
    att_inv, base = _attack_gain(invertible)
    att_noise, base2 = _attack_gain(noise)
    assert base == base2
    assert att_inv >= base + 8.0, (att_inv, base)  # recovered
    assert att_noise <= base + 1.0, (att_noise, base)  # no better than knowing nothing


def test_attack_helpers():
    assert box_stats([]) == {"n": 0, "mean": None, "median": None, "q1": None, "q3": None, "whisker_low": None,
                             "whisker_high": None}
    s = box_stats([10.0, 11.0, 12.0, 13.0, 50.0])
    assert s["median"] == 12.0 and s["whisker_high"] == 13.0  # 50 is an outlier beyond 1.5 IQR
    rels = [Path(f"p{i}/{j}.jpg") for i in range(6) for j in range(2)]
    att, how = split_attacker(rels)
    assert "person" in how and len(att) == 6
    assert all(({f"p{i}/0.jpg", f"p{i}/1.jpg"} <= att) or not ({f"p{i}/0.jpg", f"p{i}/1.jpg"} & att) for i in range(6))
    assert split_attacker(list(reversed(rels)))[0] == att  # order does not matter
    flat = [Path(f"{i}.png") for i in range(7)]
    att2, how2 = split_attacker(flat)
    assert "by file" in how2 and len(att2) == 4
    with pytest.raises(UsageError):
        AttackBudget(recipe="gpu").check()
    with pytest.raises(UsageError):
        AttackOptions(region="hands").check()
    assert AttackBudget(recipe="paper").resolved()["epochs"] == 200 and AttackBudget(recipe="paper", epochs=3).resolved()["epochs"] == 3


def _folder_of_people(root: Path, people: int = 6, per: int = 2, size: int = 40) -> Path:
    x = _smooth_images(people * per, size, 7).permute(0, 2, 3, 1).numpy()
    for i in range(people):
        (root / f"person{i}").mkdir(parents=True)
        for j in range(per):
            Image.fromarray(x[i * per + j]).save(root / f"person{i}" / f"{j}.png")
    return root


def test_evaluate_attack_itn_split_by_person(tmp_path):
    orig = _folder_of_people(tmp_path / "orig")
    run = anonymize.protect([orig], method="pixelate", region="image", params={"blocks": 4}, output=tmp_path / "prot")
    assert run.exit_code == 0
    r = runner.invoke(app, ["evaluate", str(orig), str(tmp_path / "prot"), "--no-faces", "--attack", "itn",
                            "--attack-epochs", "2", "--attack-width", "4", "--attack-size", "16",
                            "--report", str(tmp_path / "r.json"), "--html", str(tmp_path / "r.html")])
    assert r.exit_code == 0, r.output
    doc = json.loads((tmp_path / "r.json").read_text())
    at = doc["summary"]["attack_itn"]
    assert at["region"] == "image" and at["attacker_data"]["kind"] == "split" and "person" in at["attacker_data"]["how"]
    roles = {im["relative_path"]: im.get("attack_role") for im in doc["images"]}
    attacker = {k.split("/")[0] for k, v in roles.items() if v == "attacker"}
    evaluated = {k.split("/")[0] for k, v in roles.items() if v == "evaluated"}
    assert attacker and evaluated and not attacker & evaluated  # disjoint people
    assert at["train_samples"] + at["evaluated_samples"] == 12
    assert at["budget"]["epochs"] == 2 and at["budget"]["width"] == 4 and at["budget"]["optimizer"] == "adam"
    for key in ("reconstruction", "baseline", "protected"):
        assert at[key]["psnr"]["n"] == at["evaluated_samples"] if key != "baseline" else at[key]["mean_image"]["psnr"]["n"]
    assert at["verdict"]["robust"] in (True, False) and "our criterion" in at["verdict"]["criterion"]
    assert all("psnr" in im["attack_itn"] for im in doc["images"] if im.get("attack_role") == "evaluated")
    assert "ITN-Attack" in r.output and "id='attack'" in (tmp_path / "r.html").read_text()


def test_evaluate_attack_itn_with_attack_data_uses_the_same_ope_key(tmp_path):
    orig = _folder_of_people(tmp_path / "orig", people=2, per=2)
    other = _folder_of_people(tmp_path / "other", people=3, per=2)
    key = tmp_path / "k.key"
    params = {"key_file": str(key), "size": 12, "out_size": 32, "tracer": "vtracer"}
    run = anonymize.protect([orig], method="ope", region="image", params=params, output=tmp_path / "prot")
    assert run.exit_code == 0, run.records
    res = anonymize.evaluate(orig, tmp_path / "prot", faces=False, attack="itn", report=tmp_path / "r.json",
                             attack_options=AttackOptions(data=other, budget=AttackBudget(epochs=1, width=4, size=16)))
    at = res.summary["attack_itn"]
    src = at["attacker_data"]
    assert src["kind"] == "attack-data" and src["method"] == "ope" and src["params"]["key_file"] == str(key)
    assert "same OPE key" in src["key_note"] and src["protected_ok"] == 6
    assert at["train_samples"] == 6 and at["evaluated_samples"] == 4  # every original is evaluated
    assert key.read_bytes().strip() not in (tmp_path / "r.json").read_bytes()  # the key itself is never reported
    with pytest.raises(UsageError, match="attack-method"):
        anonymize.evaluate(orig, SAMPLES, faces=False, attack="itn", report=tmp_path / "s.json",
                           attack_options=AttackOptions(data=other))

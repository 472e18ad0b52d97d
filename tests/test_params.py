"""One parameter contract per method: ``--param`` parsed once against each method's Params dataclass,
and CLI choices rejected when the command line is parsed (before anything is written)."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from anonymize.cli import app
from anonymize.errors import UsageError
from anonymize.methods import METHODS, get_method, parse_params
from anonymize.methods.params import Params, param, params_info, parse, parse_bool, split_assignments

runner = CliRunner()


def _folded(res) -> str:  # rich may wrap messages: compare on folded whitespace
    return " ".join(res.output.split())


@pytest.fixture()
def photos(tmp_path: Path) -> Path:
    d = tmp_path / "in"
    d.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(d / "a.png")
    return d


# ----------------------------------------------------------------------------- the contract


def test_every_method_declares_a_params_dataclass_with_help_for_every_field():
    assert {"blur", "pixelate", "solid", "ap", "dpimage", "ope", "fsap", "diffusion"} <= set(METHODS.names())
    for spec in METHODS:
        assert issubclass(spec.params, Params) and dataclasses.is_dataclass(spec.params), spec.name
        infos = params_info(spec.params)
        assert infos, spec.name
        for i in infos:
            assert i.help and i.type and i.default_text, (spec.name, i.name)
        parse_params(spec, {})  # the defaults are valid


@pytest.mark.parametrize("name", ["blur", "pixelate", "solid", "ap", "dpimage", "ope", "fsap", "diffusion"])
def test_a_typo_in_any_method_names_the_valid_keys_and_the_close_match(name):
    spec = METHODS.get(name)
    key = params_info(spec.params)[-1].name
    typo = key[:-2] + key[-1] + key[-2] if len(key) > 3 else key + "x"
    with pytest.raises(UsageError) as ei:
        parse_params(spec, {typo: "1"})
    msg = str(ei.value)
    assert ei.value.exit_code == 2
    assert f"did you mean {key!r}" in msg and "valid keys:" in msg and key in msg.split("valid keys:")[1]


def test_bad_values_and_ranges_are_usage_errors_before_the_method_is_built():
    bad = [
        ("blur", {"sigma": "0"}), ("blur", {"sigma": "1.5"}), ("blur", {"sigma": "abc"}), ("blur", {"shape": "star"}),
        ("pixelate", {"blocks": "0"}), ("pixelate", {"blocks": "2.5"}),
        ("solid", {"color": "1,2"}), ("solid", {"color": "0,0,300"}),
        ("ap", {"epsilon": "100"}), ("ap", {"steps": "0"}), ("ap", {"random_start": "maybe"}),
        ("ap", {"jpeg_qualities": "75,101"}), ("ap", {"eot": "jpeg,rotate"}),
        ("ap", {"target": "classifier", "classifier": "m.pt", "scheme": "xyz"}),
        ("dpimage", {"delta": "1"}), ("dpimage", {"variant": "pixel", "m": "-1"}),
        ("ope", {"in_range": "5:1"}), ("ope", {"size": "20000"}),
        ("fsap", {"k": "-1"}), ("fsap", {"feather": "2"}),
        ("diffusion", {"init": "mix:2"}), ("diffusion", {"steps": "-1"}),
    ]
    for name, raw in bad:
        with pytest.raises(UsageError):
            get_method(name, raw)


def test_values_are_typed_once_and_behave_like_before():
    p = parse_params(METHODS.get("ap"), {"eot": "all", "jpeg_qualities": "75", "attack_models": "dlib-resnet",
                                          "random_start": "off", "ssim_floor": "none", "level": "LOW"})
    assert p.eot == ("jpeg", "resize", "jitter") and p.jpeg_qualities == (75,) and p.random_start is False
    assert p.level == "low"
    from anonymize.methods.ap_face import LEVELS, FaceAttackConfig

    cfg = FaceAttackConfig.from_params(p)
    low = LEVELS["low"]
    assert (cfg.epsilon, cfg.steps, cfg.ssim_floor, cfg.eot) == (low["epsilon"], low["steps"], None, ("jpeg", "resize", "jitter"))
    assert FaceAttackConfig.from_params({"eot": "false"}).eot == ()
    assert parse_params(METHODS.get("solid"), {"color": "128"}).color == (128,)
    assert parse_params(METHODS.get("dpimage"), {"clip": "auto"}).clip is None
    ope = parse_params(METHODS.get("ope"), {"in_range": "-50,50", "region": "FACES"})
    assert ope.in_range == (-50, 50) and ope.region == "faces"
    # the Python API passes values, not strings
    assert parse_params(METHODS.get("ap"), {"eot": True, "jpeg_qualities": [80, 90]}).jpeg_qualities == (80, 90)
    assert parse_params(METHODS.get("pixelate"), {"blocks": 4.0}).blocks == 4


def test_keys_that_do_not_apply_to_the_chosen_variant_are_rejected():
    with pytest.raises(UsageError, match="applies only with variant=pixel"):
        parse_params(METHODS.get("dpimage"), {"b": "8"})  # variant defaults to idpi
    assert parse_params(METHODS.get("dpimage"), {"variant": "pixel", "b": "8"}).b == 8
    with pytest.raises(UsageError, match="applies only with target=classifier"):
        parse_params(METHODS.get("ap"), {"scheme": "cis"})
    with pytest.raises(UsageError, match="needs --param detector"):
        parse_params(METHODS.get("ap"), {"target": "detector"})


def test_one_boolean_parser():
    for v in ("1", "true", "YES", "on", True, 1):
        assert parse_bool(v) is True
    for v in ("0", "false", "No", "off", False, 0):
        assert parse_bool(v) is False
    for v in ("maybe", 2, ""):
        with pytest.raises(UsageError):
            parse_bool(v)


def test_list_params_and_new_fields_are_one_line_each():
    @dataclasses.dataclass(frozen=True)
    class Grown(Params):
        attack_models: tuple[str, ...] = param(("dlib-resnet",), "recognizers")
        eot: tuple[str, ...] = param((), "transformations", choices=("jpeg", "resize"))
        momentum: float = param(0.0, "MI-FGSM decay", ge=0, le=1)

    p = parse(Grown, {"attack-models": "a, b", "eot": "JPEG,resize", "momentum": "0.9"})
    assert p.attack_models == ("a", "b") and p.eot == ("jpeg", "resize") and p.momentum == 0.9
    with pytest.raises(UsageError, match="momentum"):
        parse(Grown, {"momentum": "2"})


def test_split_assignments_rejects_a_key_given_twice_with_two_values():
    assert split_assignments(["a=1", "a=1"]) == {"a": "1"}
    with pytest.raises(UsageError, match="twice"):
        split_assignments(["sigma=0.1", "sigma=0.2"])
    with pytest.raises(UsageError, match="KEY=VALUE"):
        split_assignments(["sigma"])


# ----------------------------------------------------------------------------- command line


def test_cli_typo_exits_2_naming_the_key_and_writes_nothing(photos: Path, tmp_path: Path):
    out = tmp_path / "out"
    for method, kv in (("blur", "sigam=0.3"), ("ap", "levl=low"), ("dpimage", "sigmaa=1")):
        res = runner.invoke(app, ["protect", str(photos), "-m", method, "--param", kv, "-o", str(out)])
        assert res.exit_code == 2, res.output
        assert "did you mean" in _folded(res) and "valid keys" in _folded(res)
        assert not out.exists()


def test_cli_shortcut_options_are_method_params(photos: Path, tmp_path: Path):
    out = tmp_path / "out"
    res = runner.invoke(app, ["protect", str(photos), "-m", "blur", "--key-file", str(tmp_path / "k"), "-o", str(out)])
    assert res.exit_code == 2 and "--key-file does not apply to --method blur (it does to: ope)" in _folded(res)
    res = runner.invoke(app, ["protect", str(photos), "-m", "dpimage", "--variant", "pixel", "--region", "image",
                              "-p", "b=4", "-o", str(out), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["summary"]["params"] == {"variant": "pixel", "b": 4}
    assert not (tmp_path / "k").exists()


def test_cli_params_reach_the_method_typed_and_are_recorded(photos: Path, tmp_path: Path):
    out = tmp_path / "out"
    res = runner.invoke(app, ["protect", str(photos), "-m", "solid", "--region", "image", "-p", "color=10,20,30",
                              "-p", "shape=box", "-o", str(out), "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    assert doc["summary"]["params"] == {"color": [10, 20, 30], "shape": "box"}
    assert doc["images"][0]["params"] == {"color": [10, 20, 30], "shape": "box"}
    px = np.asarray(Image.open(out / "a.png"))
    assert (px == (10, 20, 30)).all()


def test_list_methods_shows_every_parameter_from_the_dataclass():
    res = runner.invoke(app, ["protect", "--list-methods", "--json"])
    assert res.exit_code == 0
    listed = {m["name"]: m for m in json.loads(res.output)["methods"]}
    assert set(listed) == set(METHODS.names())
    for spec in METHODS:
        want = [i.to_dict() for i in params_info(spec.params)]
        assert listed[spec.name]["params"] == want
    blur = {p["name"]: p for p in listed["blur"]["params"]}
    assert blur["sigma"]["default"] == 0.15 and blur["sigma"]["bounds"] == {"gt": 0, "le": 1}
    assert blur["shape"]["choices"] == ["ellipse", "box"]
    text = runner.invoke(app, ["protect", "--list-methods"], env={"COLUMNS": "200"}).output
    for spec in METHODS:
        assert f"--method {spec.name}" in text
    assert "jpeg_qualities" in text and "list[int]" in text and "target=detector" in text


@pytest.mark.parametrize("option, choices", [
    ("--region", "faces|image"),
    ("--format", "same|jpeg|jpg|png|webp|tiff|bmp"),
    ("--device", "auto|cpu|cuda|cuda:N"),
    ("--detector", "mtcnn|dlib-hog|dlib-cnn|haar|yunet|scrfd|centerface"),
])
def test_help_shows_the_choices(option, choices):
    text = runner.invoke(app, ["protect", "--help"], env={"COLUMNS": "240"}).output
    line = next(ln for ln in text.splitlines() if f" {option} " in ln)
    assert choices in line


@pytest.mark.parametrize("args, message", [
    (["--region", "face"], "'face' is not one of"),
    (["--format", "gif"], "'gif' is not one of"),
    (["--device", "gpu"], "'gpu' is not one of auto, cpu, cuda, cuda:N"),
    (["--device", "cuda:x"], "is not one of"),
    (["--detector", "mtcn"], "did you mean 'mtcnn'"),
    (["--detector", "mtcnn+nope"], "'nope' is not one of"),
])
def test_bad_choices_are_rejected_at_parse_time(photos: Path, tmp_path: Path, args, message):
    out = tmp_path / "out"
    res = runner.invoke(app, ["protect", str(photos), "-o", str(out), *args])
    assert res.exit_code == 2 and message in _folded(res), res.output
    assert not out.exists()


def test_choices_are_case_insensitive_and_detector_reads_the_live_registry(photos: Path, tmp_path: Path):
    from anonymize.faces.detect import DETECTORS

    res = runner.invoke(app, ["protect", str(photos), "--region", "IMAGE", "--format", "PNG", "--device", "CPU",
                              "-o", str(tmp_path / "o"), "-q"])
    assert res.exit_code == 0, res.output
    spec = DETECTORS.get("haar")
    DETECTORS.register(dataclasses.replace(spec, name="haar-later"))  # registered after the CLI was imported
    try:
        res = runner.invoke(app, ["detect", str(photos), "--detector", "haar-later", "--json"])
        assert res.exit_code == 0, res.output
    finally:
        DETECTORS._entries.pop("haar-later")
    for cmd in (["detect", str(photos)], ["evaluate", str(photos), str(photos)]):
        res = runner.invoke(app, [*cmd, "--device", "tpu"])
        assert res.exit_code == 2 and "'tpu' is not one of" in _folded(res)

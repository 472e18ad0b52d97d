"""White-box vs black-box in `evaluate`: provenance that travels with the outputs, families, gates.

The toy recognizers here are built and registered by the tests only (tiny seeded
torch nets under fake names and families); nothing of them ships in the package.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from anonymize.cli import app
from anonymize.evaluation import evaluate
from anonymize.faces.recognize import RECOGNIZERS, RecognizerSpec, TorchRecognizer
from anonymize.records import PROVENANCE_NAME

runner = CliRunner()
torch.set_num_threads(1)


def run(*args: str) -> tuple[int, str]:
    res = runner.invoke(app, list(args))
    return res.exit_code, res.output


@pytest.fixture(scope="module")
def originals(tmp_path_factory: pytest.TempPathFactory, sample_faces: dict) -> Path:
    if "astronaut" not in sample_faces:
        pytest.skip("astronaut sample missing")
    d = tmp_path_factory.mktemp("bb") / "orig"
    d.mkdir()
    img = np.asarray(Image.fromarray(sample_faces["astronaut"]).resize((256, 256), Image.LANCZOS))
    Image.fromarray(img).save(d / "astronaut.png")
    return d


@pytest.fixture(scope="module")
def ap_run(originals: Path) -> dict[str, Path]:
    """`protect -m ap --report elsewhere/...`: the report is NOT next to the outputs."""
    root = originals.parent
    out, elsewhere = root / "ap_out", root / "elsewhere" / "r.json"
    code, text = run("protect", str(originals), "-m", "ap", "-p", "steps=1", "-p", "epsilon=2", "-p", "step_size=1",
                     "-p", "attack_models=dlib-resnet", "-o", str(out), "--report", str(elsewhere), "-q")
    assert code in (0, 1), text
    assert (out / "astronaut.png").is_file() and elsewhere.is_file()
    assert not (out / "anonymize-report.json").exists() and (out / PROVENANCE_NAME).is_file()
    return {"out": out, "report": elsewhere}


def _summary(text: str) -> dict:
    return json.loads(text)["summary"]


def test_protect_leaves_provenance_next_to_outputs(ap_run: dict[str, Path]) -> None:
    prov = json.loads((ap_run["out"] / PROVENANCE_NAME).read_text())
    assert prov["kind"] == "anonymize-protect-provenance" and prov["method"] == "ap"
    assert prov["attacked_models"] == ["dlib-resnet"] and prov["params"]["steps"] == 1
    assert Path(prov["report"]) == ap_run["report"].absolute() and prov["tool_version"] and prov["run_id"]
    assert [r["run_id"] for r in prov["runs"]] == [prov["run_id"]]


def test_report_elsewhere_still_marks_dlib_white_box(originals: Path, ap_run: dict[str, Path], tmp_path: Path) -> None:
    code, text = run("evaluate", str(originals), str(ap_run["out"]), "--recognizers", "dlib-resnet,dlib-native",
                     "--report", str(tmp_path / "e.json"), "--json")
    assert code == 0, text
    s = _summary(text)
    # dlib-native shares dlib-resnet's weights (one family): attacking one is white-box for both
    assert s["recognizers"]["dlib-resnet"]["white_box"] is True and s["recognizers"]["dlib-native"]["white_box"] is True
    assert s["white_box"] == ["dlib-native", "dlib-resnet"] and s["white_box_known"] is True
    assert s["attacked_models"] == ["dlib-resnet"]
    assert s["black_box"]["recognizers"] == [] and s["black_box"]["spr_min"] is None
    img = json.loads(text)["images"][0]
    assert img["provenance"]["method"] == "ap" and img["faces"][0]["identity"]["dlib-resnet"]["white_box"] is True
    # a resumed run that skips everything keeps the earlier run in the provenance
    code, _ = run("protect", str(originals), "-m", "ap", "-p", "steps=1", "-p", "attack_models=dlib-resnet",
                  "-o", str(ap_run["out"]), "-q",
                  "--report", str(tmp_path / "second.json"))
    assert code == 0
    prov = json.loads((ap_run["out"] / PROVENANCE_NAME).read_text())
    assert len(prov["runs"]) == 2 and prov["outputs_written"] == 0
    code, text = run("evaluate", str(originals), str(ap_run["out"]), "--recognizers", "dlib-resnet",
                     "--report", str(tmp_path / "e2.json"), "--json")
    assert _summary(text)["recognizers"]["dlib-resnet"]["white_box"] is True


def test_no_provenance_says_unknown_never_false(originals: Path, ap_run: dict[str, Path], tmp_path: Path) -> None:
    copied = tmp_path / "copied"
    copied.mkdir()
    shutil.copy(ap_run["out"] / "astronaut.png", copied / "astronaut.png")  # outputs moved without their provenance
    code, text = run("evaluate", str(originals), str(copied), "--recognizers", "dlib-resnet", "--json",
                     "--fail-under", "black_box_spr=0.5")
    assert code == 3  # an unknown black-box SPR fails its gate
    s = _summary(text)
    assert s["recognizers"]["dlib-resnet"]["white_box"] == "unknown" and s["white_box_known"] is False
    assert s["black_box"]["unknown"] == ["dlib-resnet"] and s["black_box"]["spr_min"] is None
    assert s["gates"]["black_box_spr"]["value"] is None and not s["gates"]["black_box_spr"]["passed"]
    assert any("--protect-report" in n for n in s["notes"])
    assert json.loads(text)["images"][0]["faces"][0]["identity"]["dlib-resnet"]["white_box"] == "unknown"
    # naming the report brings the answer back (matched by the output's content hash)
    code, text = run("evaluate", str(originals), str(copied), "--recognizers", "dlib-resnet", "--json",
                     "--protect-report", str(ap_run["report"]))
    assert _summary(text)["recognizers"]["dlib-resnet"]["white_box"] is True
    code, text = run("evaluate", str(originals), str(copied), "--protect-report", str(tmp_path / "nope.json"))
    assert code == 2 and "does not exist" in " ".join(text.split())


def test_method_that_attacks_nothing_is_black_box_and_gates(originals: Path, tmp_path: Path) -> None:
    out = tmp_path / "blurred"
    code, _ = run("protect", str(originals), "-m", "blur", "-o", str(out), "-q")
    assert code == 0
    res = evaluate(originals, out, recognizers=("dlib-resnet",), device="cpu", fail_under={"black_box_spr": 0.0},
                   html=tmp_path / "r.html")
    s = res.summary
    assert s["recognizers"]["dlib-resnet"]["white_box"] is False and s["white_box_known"] is True
    assert s["black_box"]["recognizers"] == ["dlib-resnet"]
    assert s["black_box"]["spr_min"] == s["recognizers"]["dlib-resnet"]["spr"] == s["black_box"]["spr_mean"]
    assert s["gates"]["black_box_spr"]["passed"] and res.exit_code == 0
    assert s["recognizers"]["dlib-resnet"]["licence"] and s["recognizers"]["dlib-resnet"]["non_commercial"] is False
    html = (tmp_path / "r.html").read_text()
    assert "id='black-box'" in html and "worst SPR" in html
    if s["black_box"]["spr_min"] < 1.0:
        res = evaluate(originals, out, recognizers=("dlib-resnet",), device="cpu", fail_under={"black_box_spr": 1.0},
                       report=tmp_path / "e.json")
        assert res.exit_code == 3


# ----------------------------------------------------------------------------- toy recognizers


class _Toy(torch.nn.Module):
    """A tiny seeded conv net: 112 px chip -> 16-d embedding."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 7, stride=4)
        self.fc = torch.nn.Linear(8 * 16, 16)
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv(x))
        return self.fc(torch.nn.functional.adaptive_avg_pool2d(h, 4).flatten(1))


def _register(monkeypatch: pytest.MonkeyPatch, name: str, family: str, seed: int, non_commercial: bool = False) -> None:
    holder: dict[str, RecognizerSpec] = {}

    def factory(device: str) -> TorchRecognizer:
        return TorchRecognizer(holder["spec"], _Toy(seed), lambda x: x - 0.5, device)

    spec = RecognizerSpec(name=name, summary="test-only toy", embedding_dim=16, input_size=112, distance="cosine",
                          threshold=0.01, weights=(), licence=f"test licence {name}", factory=factory,
                          alignment="arcface112", family=family, non_commercial=non_commercial)
    holder["spec"] = spec
    monkeypatch.setitem(RECOGNIZERS._entries, name, spec)


@pytest.mark.slow
def test_black_box_summary_counts_only_families_not_attacked(originals: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    _register(monkeypatch, "toy-a", "toy-family", 1)
    _register(monkeypatch, "toy-a-twin", "toy-family", 1)  # same weights under another name
    _register(monkeypatch, "toy-b", "toy-other", 2, non_commercial=True)
    out = tmp_path / "ap_toy"
    code, text = run("protect", str(originals), "-m", "ap", "-p", "attack_models=toy-a", "-p", "steps=2",
                     "-p", "epsilon=3", "-o", str(out), "--report", str(tmp_path / "r.json"), "-q")
    assert code in (0, 1), text
    recs = ("dlib-resnet", "toy-a", "toy-a-twin", "toy-b")
    res = evaluate(originals, out, recognizers=recs, device="cpu", report=tmp_path / "e.json", html=tmp_path / "e.html",
                   fail_under={"black_box_spr": 0.0})
    s = res.summary
    flags = {k: v["white_box"] for k, v in s["recognizers"].items()}
    assert flags == {"dlib-resnet": False, "toy-a": True, "toy-a-twin": True, "toy-b": False}
    bb = s["black_box"]
    assert bb["recognizers"] == ["dlib-resnet", "toy-b"] and bb["white_box"] == ["toy-a", "toy-a-twin"]
    sprs = [s["recognizers"][k]["spr"] for k in ("dlib-resnet", "toy-b")]
    assert bb["spr_min"] == min(sprs) and bb["spr_mean"] == pytest.approx(np.mean(sprs))
    assert bb["spr_min_recognizer"] in ("dlib-resnet", "toy-b")
    assert s["spr_recognizer"] == "dlib-resnet"  # the headline SPR is never a white-box one
    assert s["non_commercial"] == ["toy-b"] and any("non-commercial" in n for n in s["notes"])
    assert s["licences"]["toy-b"] == "test licence toy-b"
    assert res.exit_code == 0 and s["gates"]["black_box_spr"]["passed"]
    html = (tmp_path / "e.html").read_text()
    assert html.count("class='whitebox'") == 2 and "(non-commercial)" in html

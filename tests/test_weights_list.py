"""``anonymize fetch-weights --list``: readable when piped (tab-separated) and on a narrow terminal (table)."""
from __future__ import annotations

import io
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from anonymize import weights as W
from anonymize.cli import WEIGHTS_LIST_COLUMNS, app, print_weights_list

LONG = "a-rather-long-weights-file-name_with_a_version_2024-03-01_and_more.checkpoint.pth.tar"


def _statuses(cache: Path) -> list[W.WeightsStatus]:
    root = cache / "weights"
    return [
        W.WeightsStatus("fasterrcnn_resnet50_fpn-coco", "present", path=root / "fasterrcnn" / LONG,
                        licence="BSD-3-Clause (pytorch/vision); trained on COCO " * 3),
        W.WeightsStatus("outside", "present", path=Path("/opt/site-packages/some/package/data") / LONG, licence="MIT"),
        W.WeightsStatus("gone", "missing", detail="run: anonymize fetch-weights gone", licence="MIT"),
        W.WeightsStatus("bad", "corrupt", path=root / "bad" / "w.onnx",
                        detail="sha256 0123 does not match the expected 4567 (manifest)", licence="NON-COMMERCIAL"),
    ]


def test_list_piped_is_tab_separated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Not a terminal: a header and one line per entry, five tab-separated cells, nothing cut or wrapped."""
    sts = _statuses(tmp_path)
    monkeypatch.setattr(W, "status", lambda names=None, search_dirs=(): sts)
    res = CliRunner().invoke(app, ["fetch-weights", "--list"], env={"ANONYMIZE_HOME": str(tmp_path), "COLUMNS": "80"})
    assert res.exit_code == 0, res.output
    lines = res.stdout.splitlines()
    assert lines[0].split("\t") == list(WEIGHTS_LIST_COLUMNS)
    rows = [ln.split("\t") for ln in lines[1:]]
    assert len(rows) == len(sts) and all(len(r) == 5 for r in rows)
    by = {r[0]: r for r in rows}
    assert by["fasterrcnn_resnet50_fpn-coco"][2] == str(sts[0].path)  # the full path on one line
    assert by["gone"][1:4] == ["missing", "-", "run: anonymize fetch-weights gone"]
    assert by["bad"][1] == "corrupt" and "does not match" in by["bad"][3]
    assert by["fasterrcnn_resnet50_fpn-coco"][4] == " ".join(sts[0].licence.split())  # not truncated


def test_list_piped_real_manifest(tmp_path: Path) -> None:
    """The real manifest on an empty cache: every entry listed once, as missing or present."""
    res = CliRunner().invoke(app, ["fetch-weights", "--list"], env={"ANONYMIZE_HOME": str(tmp_path), "ANONYMIZE_WEIGHTS": ""})
    assert res.exit_code == 0, res.output
    rows = [ln.split("\t") for ln in res.stdout.splitlines()[1:]]
    assert sorted(r[0] for r in rows) == sorted(W.load_manifest().names())
    assert all(len(r) == 5 and r[1] in ("present", "missing", "unverified", "corrupt") for r in rows)


@pytest.mark.parametrize("width", [80, 100])
def test_list_terminal_table_fits(tmp_path: Path, width: int) -> None:
    """A narrow terminal: every line fits, paths are relative to the cache and folded, not one character a line."""
    sts = _statuses(tmp_path)
    buf = io.StringIO()
    console = Console(file=buf, width=width, force_terminal=True, color_system=None)
    print_weights_list(console, sts, tmp_path)
    lines = buf.getvalue().splitlines()
    assert all(len(ln) <= width for ln in lines)
    assert len(lines) <= 3 * len(sts) + 8  # the old table spent one line per character of the path
    text = "".join(ln.replace("│", "").replace(" ", "") for ln in lines)
    assert f"fasterrcnn/{LONG}" in text  # relative to the cache, folded across lines
    assert str(Path("/opt/site-packages/some/package/data") / LONG) in text  # outside the cache: absolute
    assert "licence" not in lines[2] and "--list --json" in buf.getvalue()


def test_list_wide_terminal_has_licences(tmp_path: Path) -> None:
    buf = io.StringIO()
    print_weights_list(Console(file=buf, width=160, force_terminal=True, color_system=None), _statuses(tmp_path), tmp_path)
    out = buf.getvalue()
    assert "licence" in out and "NON-COMMERCIAL" in out and all(len(ln) <= 160 for ln in out.splitlines())

"""The README's two fresh-machine commands stay true."""
from __future__ import annotations

import json
import re
from pathlib import Path

from typer.testing import CliRunner

from anonymize.cli import app

ROOT = Path(__file__).resolve().parent.parent


def _commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Fresh machine", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.*?)\n```", section, flags=re.S)


def test_exactly_two_fresh_machine_commands_and_ci_runs_the_second() -> None:
    cmds = _commands()
    assert len(cmds) == 2, cmds
    assert "anonymize protect" in cmds[0] and "pytest" in cmds[1]
    assert cmds[1].strip() in (ROOT / ".ci" / "run").read_text()


def test_first_command_runs_on_bundled_samples(tmp_path: Path) -> None:
    cmd = _commands()[0]
    args = cmd.split(".venv/bin/anonymize ", 1)[1].split()
    assert args[:2] == ["protect", "anonymize/data/samples"]
    args[1] = str(ROOT / "anonymize" / "data" / "samples")
    out = tmp_path / "samples"
    args[args.index("--output") + 1] = str(out)
    res = CliRunner().invoke(app, [*args, "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    assert doc["summary"]["ok"] == 2 and doc["summary"]["faces"] >= 2 and doc["summary"]["protected"] == 2
    assert (out / "astronaut.jpg").exists() and (out / "anonymize-report.json").exists()

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


# ----------------------------------------------------------------------------- method parameter tables

BEGIN = "<!-- method-params:begin"
END = "<!-- method-params:end -->"


def method_params_block() -> str:
    """The README's parameter tables, rendered from each method's Params dataclass."""
    from anonymize.methods import METHODS
    from anonymize.methods.params import markdown_table, params_info

    parts = []
    for spec in METHODS:
        n = len(params_info(spec.params))
        parts.append(f"<details><summary><code>{spec.name}</code>: {n} parameters</summary>\n\n"
                     f"{markdown_table(spec.params)}\n\n</details>")
    return "\n\n".join(parts)


def _readme_block(text: str) -> str:
    start = text.index(BEGIN)
    start = text.index("\n", start) + 1
    return text[start:text.index(END)].strip("\n")


def test_readme_parameter_tables_are_the_params_dataclasses() -> None:
    text = (ROOT / "README.md").read_text()
    assert _readme_block(text) == method_params_block(), (
        "README's method parameter tables disagree with the Params dataclasses; "
        "regenerate them with `python -m tests.test_readme`")


def test_readme_method_table_names_real_parameters() -> None:
    from anonymize.methods import METHODS
    from anonymize.methods.params import params_info

    text = (ROOT / "README.md").read_text()
    table = text.split("#### Methods", 1)[1].split("\n\n", 2)[1]
    rows = [r for r in table.splitlines() if r.startswith("| `")]
    seen = set()
    for row in rows:
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", row)[1:-1]]
        methods = re.findall(r"`([a-z]+)`", cells[0])
        keys = {k.split("=", 1)[0] for k in re.findall(r"`([a-z_0-9]+(?:=[^`]*)?)`", cells[-1])}
        assert methods and keys, row
        valid = set().union(*({i.name for i in params_info(METHODS.get(m).params)} for m in methods))
        assert keys <= valid, (methods, keys - valid)
        seen.update(methods)
    assert seen == set(METHODS.names())


if __name__ == "__main__":  # python -m tests.test_readme: rewrite the README's parameter tables
    path = ROOT / "README.md"
    text = path.read_text()
    start = text.index("\n", text.index(BEGIN)) + 1
    new = text[:start] + "\n" + method_params_block() + "\n\n" + text[text.index(END):]
    path.write_text(new)
    print("README.md: method parameter tables", "unchanged" if new == text else "rewritten")

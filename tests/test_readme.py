"""The README's two fresh-machine commands stay true.

The first is one line that installs the package and runs the real job on the bundled samples:
``protect --method ap`` (embedded dlib weights, no downloads) and ``evaluate`` of the result.
Here its run part is executed as written (paths mapped into a temporary folder).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from typer.testing import CliRunner

from anonymize.cli import app

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = "anonymize/data/samples"


def _commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Fresh machine", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.*?)\n```", section, flags=re.S)


def _anonymize_steps(cmd: str) -> list[list[str]]:
    """The ``.venv/bin/anonymize ...`` steps of a ``&&`` chain, as argument lists."""
    return [step.split(".venv/bin/anonymize ", 1)[1].split() for step in (s.strip() for s in cmd.split("&&"))
            if ".venv/bin/anonymize " in step]


def test_exactly_two_fresh_machine_commands_and_ci_runs_the_second() -> None:
    cmds = _commands()
    assert len(cmds) == 2, cmds
    assert "\n" not in cmds[0].strip(), "the first command is one copy-paste line"
    assert cmds[0].startswith("python3 -m venv .venv && .venv/bin/pip install")
    assert [s[0] for s in _anonymize_steps(cmds[0])] == ["protect", "evaluate"]
    assert "pytest" in cmds[1]
    assert cmds[1].strip() in (ROOT / ".ci" / "run").read_text()


def test_first_command_runs_the_real_job_on_bundled_samples(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("ANONYMIZE_HOME", str(tmp_path / "home"))  # a fresh machine: no fetched weights (CI has some)
    protect, evaluate = _anonymize_steps(_commands()[0])
    assert protect[:2] == ["protect", SAMPLES] and protect[protect.index("--method") + 1] == "ap"
    out_rel = protect[protect.index("--output") + 1]
    assert evaluate[1:3] == [SAMPLES, out_rel]
    out = tmp_path / "samples"

    def mapped(args: list[str]) -> list[str]:
        return [str(ROOT / SAMPLES) if a == SAMPLES else str(out) if a == out_rel else a for a in args]

    res = CliRunner().invoke(app, [*mapped(protect), "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    s = doc["summary"]
    assert s["ok"] == 2 and s["faces"] >= 2 and s["protected"] + s["not_protected"] == 2, s
    by = {r["relative_path"]: r for r in doc["images"]}
    # what the README promises: without fetched weights the default ensemble shrinks to dlib-resnet,
    # loudly (a warning naming the fetch command in every record); both faces clear dlib's 0.6 on the
    # written file at the default level (0.98 and 0.87 measured)
    assert by["astronaut.jpg"]["protected"] is True and by["grace_hopper.jpg"]["protected"] is True
    for r in doc["images"]:
        info = r["method_info"]
        assert info["attacked_models"] == ["dlib-resnet"] and "arcface-mbf" in info["held_out_models"]
        assert "anonymize fetch-weights facenet-casia" in info["warnings"][0]
    assert (out / "astronaut.jpg").exists() and (out / "anonymize-report.json").exists()
    res = CliRunner().invoke(app, [*mapped(evaluate), "--json"])
    assert res.exit_code == 0, res.output
    ev = json.loads(res.stdout)["summary"]
    assert ev["pairs"] == 2 and ev["ok"] == 2 and ev["faces"] >= 2
    dlib = ev["recognizers"]["dlib-resnet"]
    assert dlib["white_box"] is True  # ap attacked that network: evaluate says so
    assert (out / "anonymize-evaluation.json").exists()


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

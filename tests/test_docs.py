"""The documentation that is generated or quoted must match the code."""

import re
from pathlib import Path

from dagster_project.config_reference import render

ROOT = Path(__file__).resolve().parents[1]


def test_configuration_reference_is_current():
    written = (ROOT / "docs" / "configuration.md").read_text()
    assert written == render(), "regenerate: python -m dagster_project.config_reference > docs/configuration.md"


def test_readme_commands_exist():
    readme = (ROOT / "README.md").read_text()
    makefile = (ROOT / "Makefile").read_text()
    for target in re.findall(r"^make (\w[\w-]*)", readme, flags=re.M):
        assert re.search(rf"^{target}:", makefile, flags=re.M), target
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci and "make test" in readme


def test_every_command_has_help_with_an_example():
    # The README promises it; a new command without one fails here.
    import click

    from dagster_project.cli import main

    def commands(group: click.Group, prefix: str):
        for name, command in group.commands.items():
            if isinstance(command, click.Group):
                yield from commands(command, f"{prefix} {name}")
            else:
                yield f"{prefix} {name}", command

    missing = [name for name, command in commands(main, "pixelsift") if "Example:" not in (command.help or "")]
    assert missing == []


def test_eval_column_reference_is_current():
    from evals.column_reference import DOC, render, section

    assert section(DOC.read_text()) == render(), "regenerate: python -m evals.column_reference"


def test_eval_column_reference_follows_the_schemas(tmp_path, monkeypatch):
    # The generator must pick up a schema change, and rewrite only its own section.
    import pyarrow as pa

    from evals import column_reference
    from resources.warehouse import column

    doc = tmp_path / "evaluation.md"
    doc.write_text(f"# before\n\n{column_reference.BEGIN}\nstale\n{column_reference.END}\n\n# after\n")
    schema = pa.schema([column("answer", pa.int32(), "what it means")])
    monkeypatch.setattr(column_reference, "EVAL_SCHEMAS", {"toy_eval": schema})
    column_reference.update(doc)
    written = doc.read_text()
    assert written.startswith("# before\n\n") and written.endswith("\n\n# after\n") and "stale" not in written
    assert "### `toy_eval`" in written and "| `answer` | `int32` | what it means |" in written

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

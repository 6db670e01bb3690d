"""What the Dagster UI shows: the code location's name, descriptions as Markdown."""

import os
import subprocess
import sys
from pathlib import Path

from dagster_project.cli import WORKSPACE, ui_argv

ROOT = Path(__file__).resolve().parents[1]


def test_pixelsift_ui_starts_dagster_dev_on_the_shipped_workspace():
    argv = ui_argv("127.0.0.1", 3001)
    assert Path(argv[0]) == Path(sys.executable).with_name("dagster")
    assert argv[1:] == ["dev", "-w", str(WORKSPACE), "-h", "127.0.0.1", "-p", "3001"]
    assert "-m" not in argv  # -m would name the location after the module


def test_the_workspace_loads_as_the_pixelsift_code_location(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "dagster", "definitions", "validate", "-w", str(WORKSPACE)],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, "DAGSTER_HOME": str(tmp_path)},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Validation successful for code location pixelsift." in result.stdout + result.stderr


def ui_descriptions():
    """(what, text) for every description the UI renders as Markdown."""
    from dagster_project.definitions import build_definitions
    from dagster_project.profiles import model_resources

    defs = build_definitions(models=model_resources("hub"))  # builds resources only; downloads nothing
    for assets_def in defs.assets:
        for key, text in assets_def.descriptions_by_key.items():
            yield f"asset {key.to_user_string()}", text
        for spec in assets_def.check_specs:
            yield f"check {spec.name}", spec.description
    for checks_def in defs.asset_checks:
        for spec in checks_def.check_specs:
            yield f"check {spec.name}", spec.description
    for name, resource in defs.resources.items():
        yield f"resource {name}", type(resource).__doc__
        for field, info in type(resource).model_fields.items():
            yield f"resource {name}.{field}", info.description
    for sensor in defs.sensors:
        yield f"sensor {sensor.name}", sensor.description
    for job in defs.get_repository_def().get_all_jobs():
        yield f"job {job.name}", job.description
        for node in job.graph.node_defs:
            fields = getattr(node.config_schema.config_type, "fields", None) if node.config_schema else None
            for field_name, field in (fields or {}).items():
                yield f"config {node.name}.{field_name}", field.description


def test_descriptions_use_markdown_backticks():
    # Docstrings in RST style (``name``) show their doubled backticks literally in the UI.
    assert [what for what, text in ui_descriptions() if text and "``" in text] == []

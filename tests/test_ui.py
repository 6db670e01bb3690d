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

"""The house rules: imports run one way, and the model seam needs no torch.

Layers, bottom first: ``resources`` (settings, the warehouse, the model backends and the shared
vocabulary: batch keys, partitions, concurrency tags) <- ``assets`` <- ``evals`` <-
``dagster_project`` (the composition root) <- ``benchmarks``. A module may import its own layer
and the layers below it, never one above. The one exception is the entry point, the
``pixelsift`` command, which gathers every layer's subcommands.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ["resources", "assets", "evals", "dagster_project", "benchmarks"]
ENTRY_POINTS = {"dagster_project/cli.py"}


def imported_packages(path: Path) -> set[str]:
    """Top-level names of everything ``path`` imports, at module level or inside functions."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def upward_imports() -> list[str]:
    wrong = []
    for rank, layer in enumerate(LAYERS):
        for path in sorted((ROOT / layer).rglob("*.py")):
            relative = path.relative_to(ROOT).as_posix()
            if relative in ENTRY_POINTS:
                continue
            for name in imported_packages(path):
                if name in LAYERS and LAYERS.index(name) > rank:
                    wrong.append(f"{relative} imports {name}")
    return wrong


def test_imports_run_from_the_top_down_only():
    assert upward_imports() == []


def test_the_rule_catches_an_upward_import(tmp_path, monkeypatch):
    # The check itself must be able to fail: a resources module importing the composition root.
    fake = tmp_path / "resources"
    fake.mkdir()
    (fake / "oops.py").write_text("def f():\n    from dagster_project.definitions import defs\n")
    for layer in LAYERS[1:]:
        (tmp_path / layer).mkdir()
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert upward_imports() == ["resources/oops.py imports dagster_project"]


def test_assets_and_the_backend_seam_do_not_import_torch():
    # A backend that calls a model server must not pay for (or need) torch and transformers.
    modules = ["resources.backends", "resources.openai_backends", "assets.structured_output", "assets.per_image",
               "assets.image_metadata", "assets.cluster_labels", "assets.captions", "assets.clip_embeddings",
               "assets.clusters", "assets.near_duplicates", "resources.search", "resources.warehouse"]
    code = (f"import sys; import {', '.join(modules)}; "
            "heavy = sorted(m for m in ('torch', 'transformers', 'open_clip') if m in sys.modules); print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_code_location_loads_without_the_model_libraries():
    # The UI's run worker and fork server, and `pixelsift run` before its first step, load the
    # definitions; torch, transformers, open_clip, sklearn and matplotlib are for the steps that use
    # them (they were ~33 s of every UI run's start on a loaded machine).
    heavy = ("torch", "transformers", "open_clip", "sklearn", "scipy", "matplotlib", "sentence_transformers")
    code = ("import sys; import dagster_project.definitions as d; assert d.defs.resolve_job_def('process_batch'); "
            f"print(sorted(m for m in {heavy!r} if m in sys.modules))")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIXELSIFT_")} | {"PIXELSIFT_MODELS": "hub"}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"

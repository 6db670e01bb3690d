"""What the eval package adds to the Dagster definitions (wired in ``dagster_project/definitions.py``)."""

from __future__ import annotations

from pathlib import Path

from evals.assets import eval_assets
from evals.checks import eval_asset_checks
from evals.semantic import SentenceEncoder
from evals.settings import EvalSettings


def eval_resources(warehouse_dir: str | None = None) -> dict[str, object]:
    """With a warehouse, sentence vectors are cached beside it (``.cache/``, hidden from the SQL views)."""
    cache = str(Path(warehouse_dir) / ".cache" / "sentence_vectors.parquet") if warehouse_dir else None
    return {"eval_settings": EvalSettings(), "sentence_encoder": SentenceEncoder(cache_file=cache)}


__all__ = ["eval_assets", "eval_asset_checks", "eval_resources"]

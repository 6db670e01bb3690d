"""What the eval package adds to the Dagster definitions (wired in ``dagster_project/definitions.py``)."""

from __future__ import annotations

from evals.assets import eval_assets
from evals.checks import eval_asset_checks
from evals.semantic import SentenceEncoder
from evals.settings import EvalSettings


def eval_resources() -> dict[str, object]:
    return {"eval_settings": EvalSettings(), "sentence_encoder": SentenceEncoder()}


__all__ = ["eval_assets", "eval_asset_checks", "eval_resources"]

"""Saying that a step ran a random-weight model: in the step's log and in its run's tags.

Done by the step itself, so runs from `pixelsift run`, the sensor and the UI's "Materialize" all
carry it. The eval report says it too (``evals/report.py``).
"""

from __future__ import annotations

from dagster import AssetExecutionContext

from resources.model_names import has_random_weights, portable_model_name

RANDOM_WEIGHTS_TAG = "pixelsift/random_weights"


def random_weights_tag(task: str) -> str:
    """The run tag naming the random-weight model of ``task`` (one per task: steps run side by side)."""
    return f"{RANDOM_WEIGHTS_TAG}_{task}"


def note_random_weights(context: AssetExecutionContext, task: str, model_id: str) -> bool:
    """Warn and tag the run when ``model_id`` has random weights; whether it has."""
    if not has_random_weights(model_id):
        return False
    name = portable_model_name(model_id)
    context.log.warning(f"{task} uses {name}: RANDOM WEIGHTS, its outputs are meaningless")
    context.instance.add_run_tags(context.run_id, {RANDOM_WEIGHTS_TAG: "true", random_weights_tag(task): name})
    return True

"""The Dagster code location `pixelsift`: `pixelsift ui` (through dagster_project/workspace.yaml), or
`dagster dev -m dagster_project.definitions`."""

from __future__ import annotations

import warnings

from dagster import Definitions

from assets import build_collection_assets, build_pipeline_assets
from evals.definitions import eval_asset_checks, eval_assets, eval_resources
from dagster_project.execution import executor
from dagster_project.jobs import collection_automation, process_batch_job, refresh_collection_job
from dagster_project.profiles import model_resources
from dagster_project.schedules import stale_batches_backfill
from dagster_project.sensors import batch_folder_sensor
from resources.settings import PixelsiftSettings
from resources.warehouse import ParquetWarehouse

# The pipeline assets run a backfill over many batches in one run (single-run policy, one model load);
# the evaluation assets, one run per batch. A backfill launched from the process_batch job's page
# therefore runs a batch per run, which Dagster warns of each time the job is resolved.
warnings.filterwarnings("ignore", message="Asset job process_batch materializes assets with varying BackfillPolicies")


def build_definitions(settings: PixelsiftSettings | None = None, models: dict | None = None) -> Definitions:
    """All assets and checks, the job and the sensor, with the warehouse and the configured models
    (``dagster_project/profiles.py``).

    The executor is every job's, the implicit asset job's included: the UI's "Materialize" and
    backfills run that one, and must keep to the same limits as ``process_batch``."""
    settings = settings or PixelsiftSettings()
    models = models if models is not None else model_resources()
    # A model step whose model is on a server does not take the large-model slot (resources/concurrency.py).
    in_process = {key: getattr(type(resource), "runs_in_process", True) for key, resource in models.items()}
    return Definitions(
        assets=[*build_pipeline_assets(in_process, settings.batches_per_run), *build_collection_assets(in_process),
                *eval_assets],
        asset_checks=eval_asset_checks,
        jobs=[process_batch_job, refresh_collection_job],
        sensors=[batch_folder_sensor, collection_automation, stale_batches_backfill],
        executor=executor,
        resources={
            "settings": settings,
            "io_manager": ParquetWarehouse(root=settings.warehouse_dir),
            **eval_resources(settings.warehouse_dir),
            **models,
        },
    )


defs = build_definitions()

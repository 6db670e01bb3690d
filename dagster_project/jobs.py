"""The one job: every asset of a batch, pipeline and evaluation."""

from dagster import AssetSelection, define_asset_job

from dagster_project.execution import executor
from resources.partitions import batch_partitions

process_batch_job = define_asset_job(
    "process_batch",
    selection=AssetSelection.all(),
    partitions_def=batch_partitions,
    executor_def=executor,
    description="Materialize every pipeline and evaluation asset for one batch of images.",
)

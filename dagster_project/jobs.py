"""The one job: every asset of a batch, pipeline and evaluation."""

from dagster import AssetSelection, define_asset_job, multiprocess_executor

from resources.concurrency import LARGE_MODEL_TAG
from resources.partitions import batch_partitions

executor = multiprocess_executor.configured(
    {"max_concurrent": 2, "tag_concurrency_limits": [{"key": LARGE_MODEL_TAG, "limit": 1}]}
)

process_batch_job = define_asset_job(
    "process_batch",
    selection=AssetSelection.all(),
    partitions_def=batch_partitions,
    executor_def=executor,
    description="Materialize every pipeline and evaluation asset for one batch of images.",
)

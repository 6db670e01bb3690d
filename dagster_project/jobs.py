"""The jobs: every asset of a batch (pipeline and evaluation), and the assets of the whole collection."""

from dagster import AssetSelection, AutomationConditionSensorDefinition, DefaultSensorStatus, define_asset_job

from dagster_project.execution import executor
from resources.partitions import batch_partitions

COLLECTION = "collection"  # the group of assets over every batch (near_duplicates, collection_clusters, ...)
PIPELINE = "pipeline"  # the group of the per-batch pipeline assets, which take ranges of batches

process_batch_job = define_asset_job(
    "process_batch",
    selection=AssetSelection.all() - AssetSelection.groups(COLLECTION),
    partitions_def=batch_partitions,
    executor_def=executor,
    description="Materialize every pipeline and evaluation asset for one batch of images.",
)

refresh_collection_job = define_asset_job(
    "refresh_collection",
    selection=AssetSelection.groups(COLLECTION),
    executor_def=executor,
    description="Materialize the assets over every batch (near_duplicates, collection_clusters and their labels), "
    "after batches changed.",
)

# Evaluates the collection assets' automation conditions; on by default, unlike Dagster's own default sensor.
collection_automation = AutomationConditionSensorDefinition(
    "collection_automation",
    target=AssetSelection.groups(COLLECTION),
    default_status=DefaultSensorStatus.RUNNING,
    description="Refreshes near_duplicates and the collection's clusters after a batch's images, embeddings or "
    "captions change.",
)

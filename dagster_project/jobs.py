"""The one job: every asset of a batch, pipeline and evaluation."""

from dagster import AssetSelection, define_asset_job, multiprocess_executor

from dagster_project.partitions import batch_partitions

# Steps that hold a multi-GB model (BLIP-2, Phi-3.5-mini: 9-14 GiB each at the benchmarked batch
# sizes) carry this tag; only one of them runs at a time so two never share 24 GiB of memory.
# CLIP, palettes, clustering and the evals run beside them.
LARGE_MODEL = {"pixelsift/large_model": "true"}

executor = multiprocess_executor.configured(
    {"max_concurrent": 2, "tag_concurrency_limits": [{"key": "pixelsift/large_model", "limit": 1}]}
)

process_batch_job = define_asset_job(
    "process_batch",
    selection=AssetSelection.all(),
    partitions_def=batch_partitions,
    executor_def=executor,
    description="Materialize every pipeline and evaluation asset for one batch of images.",
)

"""How ``pixelsift run`` runs several batches: as a backfill does, one run over a range of batches.

Each model step of that run loads its model once for every batch of the range (the pipeline assets
take ranges: assets/batch_range.py), where a run per batch loaded BLIP-2 and Phi-3.5-mini again for
each batch. The evaluation assets and their checks stay one run per batch (they hold no large model,
and a check's result belongs to one batch). Should a range's run fail, its batches are run one by
one as before, so one bad batch costs only itself; what the range run finished is reused.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from dagster import AssetKey, AssetSelection, DagsterInstance, Definitions

from dagster_project.jobs import PIPELINE, process_batch_job
from resources.partitions import batch_partitions, batch_ranges

# Dagster's own run tags for a run over a range of partitions (what a single-run backfill sets).
RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"


@dataclass
class BatchOutcome:
    """What became of the batches: done (batch, run id) and failed (batch, why), in the order they ended."""

    done: list[tuple[str, str]] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)


def range_tags(batches: list[str]) -> dict[str, str]:
    return {RANGE_START_TAG: batches[0], RANGE_END_TAG: batches[-1]}


def run_batches(defs: Definitions, instance: DagsterInstance, batches: list[str], *, tags: dict[str, str],
                batches_per_run: int = 0, warn: Callable[[str], None] = print) -> BatchOutcome:
    """Materialize every asset of ``batches`` (registered as partitions here if new), in process."""
    for key in batches:
        if not instance.has_dynamic_partition(batch_partitions.name, key):
            instance.add_dynamic_partitions(batch_partitions.name, [key])
    job = defs.resolve_job_def(process_batch_job.name)
    pipeline = AssetSelection.groups(PIPELINE).resolve(defs.resolve_asset_graph())
    evals = sorted(set(job.asset_layer.executable_asset_keys) - pipeline)
    outcome = BatchOutcome()
    order = list(instance.get_dynamic_partitions(batch_partitions.name))
    for batch_range in batch_ranges(order, batches, batches_per_run):
        if len(batch_range) == 1:
            _run_one(job, instance, batch_range[0], tags, outcome, warn)
            continue
        result = _attempt(lambda: job.execute_in_process(
            instance=instance, asset_selection=sorted(pipeline), tags={**tags, **range_tags(batch_range)},
            raise_on_error=False), warn, f"batches {batch_range[0]!r} to {batch_range[-1]!r}")
        if result is None or not result.success:
            where = f" (run {result.run_id})" if result is not None else ""
            warn(f"the run over batches {batch_range[0]!r} to {batch_range[-1]!r} failed{where}; "
                 "running them one by one (what it finished is reused)")
            for key in batch_range:
                _run_one(job, instance, key, tags, outcome, warn)
            continue
        for key in batch_range:
            _run_one(job, instance, key, tags, outcome, warn, asset_selection=evals, pipeline_run=result.run_id)
    return outcome


def _run_one(job, instance: DagsterInstance, key: str, tags: dict[str, str], outcome: BatchOutcome,
             warn: Callable[[str], None], asset_selection: list[AssetKey] | None = None,
             pipeline_run: str | None = None) -> None:
    result = _attempt(lambda: job.execute_in_process(partition_key=key, instance=instance, raise_on_error=False,
                                                     tags=tags, asset_selection=asset_selection), warn, f"batch {key!r}")
    if result is None:
        outcome.failed.append((key, "crashed outside its run; see the log above"))
    elif result.success:
        outcome.done.append((key, pipeline_run or result.run_id))
    else:
        outcome.failed.append((key, f"run {result.run_id}"))


def _attempt(launch: Callable, warn: Callable[[str], None], what: str):
    """The run's result; None if it crashed outside its run (one batch must not cost the others)."""
    try:
        return launch()
    except Exception as exc:  # noqa: BLE001 - said, and the batches after it still run
        warn(f"error: {what}: {type(exc).__name__}: {exc}")
        return None

"""The scheduled backfill: on a cron schedule, one Dagster backfill over exactly the stale batches.

Dagster 1.13's schedules can only launch runs of a job (its schedule daemon has no path for a
backfill request); sensors can launch backfills (``RunRequest.for_asset_graph_subset``, the way
Dagster's own declarative-automation sensor does). So the schedule is a sensor that acts once per
tick of ``backfill_cron``: it finds the stale batches (dagster_project/stale_batches.py) and
requests one backfill of every batch asset over them. The backfill's single-run policy
(resources/partitions.py) then runs them in as few runs as their partition order allows, each
model loaded once per run.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from dagster import (
    AssetSelection,
    DefaultSensorStatus,
    ResourceParam,
    RunRequest,
    SensorEvaluationContext,
    SensorResult,
    sensor,
)
from dagster._core.definitions.assets.graph.asset_graph_subset import AssetGraphSubset
from dagster._core.definitions.events import AssetKeyPartitionKey
from dagster._core.execution.backfill import BulkActionsFilter, BulkActionStatus
from dagster._utils.schedules import get_latest_completed_cron_tick, get_next_cron_tick, is_valid_cron_string

from dagster_project.jobs import COLLECTION
from dagster_project.sensors import find_batch_folders
from dagster_project.stale_batches import CurrentFingerprints, StaleBatch, stale_batches
from resources.backends import Captioner, ImageEmbedder, StructuredGenerator
from resources.partitions import batch_partitions
from resources.settings import PixelsiftSettings

SCHEDULED_BACKFILL_TAG = "pixelsift/scheduled_backfill"  # the cron tick that launched it
STALE_BATCHES_TAG = "pixelsift/stale_batches"  # why each batch was picked
_LISTED = 20  # batches named in the tag before "and N more" (the tick's log names them all)
CRON_TIMEZONE = "UTC"
BATCH_ASSETS = AssetSelection.all() - AssetSelection.groups(COLLECTION)

DESCRIPTION = """Once per tick of `backfill_cron` (setting `PIXELSIFT_BACKFILL_CRON`, default `0 3 * * *`, UTC), \
launches **one backfill** over exactly the batches whose results are stale: a new batch, new or changed images, \
a changed model, prompt or model setting (the fingerprints stored with the rows), or results missing. \
The backfill's `pixelsift/stale_batches` tag, which its runs carry too, says why each batch was picked; the tick's \
log lists them all. Off by default: turn it on here. It launches nothing while its previous backfill is still \
running, and nothing when no batch is stale."""


def _listed(stale: list[StaleBatch]) -> str:
    shown = "; ".join(map(str, stale[:_LISTED]))
    return shown + (f"; and {len(stale) - _LISTED} more batches (see the tick's log)" if len(stale) > _LISTED else "")


def _running(instance) -> list[str]:
    """The scheduled backfills still in progress."""
    active = [BulkActionStatus.REQUESTED, BulkActionStatus.CANCELING, BulkActionStatus.FAILING]
    return [b.backfill_id for b in instance.get_backfills(filters=BulkActionsFilter(statuses=active))
            if SCHEDULED_BACKFILL_TAG in b.tags]


@sensor(name="stale_batches_backfill", minimum_interval_seconds=60, default_status=DefaultSensorStatus.STOPPED,
        asset_selection=BATCH_ASSETS, description=DESCRIPTION)
def stale_batches_backfill(
    context: SensorEvaluationContext,
    settings: PixelsiftSettings,
    captioner: ResourceParam[Captioner],
    metadata_llm: ResourceParam[StructuredGenerator],
    clip_embedder: ResourceParam[ImageEmbedder],
) -> SensorResult:
    """See DESCRIPTION, which the UI shows. The cursor is the timestamp of the last cron tick handled."""
    cron = settings.backfill_cron
    if not is_valid_cron_string(cron):
        return SensorResult(skip_reason=f"backfill_cron {cron!r} is not a cron string (e.g. '0 3 * * *'); "
                            "set PIXELSIFT_BACKFILL_CRON and reload the code location")
    now = datetime.now(timezone.utc)
    due = get_latest_completed_cron_tick(cron, now, CRON_TIMEZONE)
    upcoming = get_next_cron_tick(cron, now, CRON_TIMEZONE).isoformat()
    if context.cursor is None:  # like a schedule, it acts from the first tick after it was turned on
        return SensorResult(skip_reason=f"Turned on: the first backfill of stale batches is at {upcoming}.",
                            cursor=str(due.timestamp()))
    if due.timestamp() <= float(context.cursor):
        return SensorResult(skip_reason=f"Next backfill of stale batches at {upcoming} ({cron}, {CRON_TIMEZONE}).")
    cursor = str(due.timestamp())
    running = _running(context.instance)
    if running:
        return SensorResult(skip_reason=f"The previous scheduled backfill ({', '.join(running)}) is still running; "
                            f"next look at {upcoming}.", cursor=cursor)

    root = Path(settings.images_root)
    keys, skipped = find_batch_folders(root)
    for folder in skipped:
        context.log.warning(f"skipping folder {folder.name} in {root}: {folder.reason}")
    current = CurrentFingerprints.of(captioner, clip_embedder, metadata_llm)
    stale = stale_batches(context.instance, root, settings.warehouse_dir, keys, current)
    if not stale:
        return SensorResult(skip_reason=f"Tick {due.isoformat()}: none of the {len(keys)} batches is stale.",
                            cursor=cursor)
    for batch in stale:
        context.log.info(f"stale: {batch}")
    known = set(context.instance.get_dynamic_partitions(batch_partitions.name))
    new = [s.batch for s in stale if s.batch not in known]
    graph = context.repository_def.asset_graph
    subset = AssetGraphSubset.from_asset_partition_set(
        {AssetKeyPartitionKey(key, s.batch) for key in BATCH_ASSETS.resolve(graph) for s in stale}, graph)
    tags = {SCHEDULED_BACKFILL_TAG: due.isoformat(), STALE_BATCHES_TAG: _listed(stale)}
    return SensorResult(
        run_requests=[RunRequest.for_asset_graph_subset(subset, tags)],
        dynamic_partitions_requests=[batch_partitions.build_add_request(new)] if new else [],
        cursor=cursor,
    )

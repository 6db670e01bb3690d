"""Watching the images root: a new subfolder becomes a batch partition, a changed one is re-run;
a changed reference file re-runs only that batch's evaluation."""

import json
from dataclasses import dataclass
from pathlib import Path

from dagster import DefaultSensorStatus, RunRequest, SensorEvaluationContext, SensorResult, sensor

from assets.batch_files import BatchOutsideRoot, check_batch_folder, files_signature, folder_signature
from dagster_project.jobs import process_batch_job
from resources.batch_keys import InvalidBatchKey, validate_batch_key
from resources.partitions import batch_partitions
from evals.assets import eval_assets
from evals.baseline import BASELINE_SUFFIXES
from resources.settings import PixelsiftSettings

EVAL_ASSET_KEYS = [key for definition in eval_assets for key in definition.keys]


def baseline_signature(baselines_dir: Path, batch: str) -> str:
    """Changes when the batch's reference file appears, disappears or is rewritten."""
    candidates = (baselines_dir / f"{batch}{suffix}" for suffix in BASELINE_SUFFIXES)
    return files_signature({p.name: p.stat() for p in candidates if p.is_file()})


@dataclass(frozen=True)
class SkippedFolder:
    name: str  # as repr: it may hold a newline or bytes that are not text
    reason: str

    def __str__(self) -> str:
        return f"{self.name} ({self.reason})"


def find_batch_folders(root: Path) -> tuple[list[str], list[SkippedFolder]]:
    """The batch keys under ``root`` (its subfolders with valid names), and the folders skipped
    with why: invalid names and links that lead out of the root. Hidden folders are not listed."""
    keys, skipped = [], []
    if not root.is_dir():
        return keys, skipped
    for folder in sorted(p for p in root.iterdir() if not p.name.startswith(".")):
        try:
            check_batch_folder(folder)  # before is_dir(), which would look at a link's target
            if folder.is_dir():
                keys.append(validate_batch_key(folder.name))
        except (InvalidBatchKey, BatchOutsideRoot) as exc:
            skipped.append(SkippedFolder(repr(folder.name), str(exc)))
    return keys, skipped


def batch_folders(root: Path, log=None) -> list[str]:
    """The batch keys under ``root``; each skipped folder is a warning on ``log`` (anything with a
    ``warning`` method)."""
    keys, skipped = find_batch_folders(root)
    for folder in skipped:
        if log:
            log.warning(f"skipping folder {folder.name} in {root}: {folder.reason}")
    return keys


SKIPPED_FOLDERS_TAG = "pixelsift/skipped_folders"
_LISTED = 10  # names listed in a skip reason or tag before "and N more"

SENSOR_DESCRIPTION = """Watches the images root (`PIXELSIFT_IMAGES_ROOT`, default `data/images`): each subfolder \
with a valid name is a partition of `batch`.

- A folder that appears, or whose files change, runs `process_batch` for that batch.
- A new or changed reference file (`<baselines_dir>/<batch>.jsonl`) re-runs only that batch's evaluation.
- The first tick registers the folders already there **without running them** (with the default hub models a \
first run downloads about 24 GB): materialize them here, run `pixelsift run --batch <name>`, or start with \
`PIXELSIFT_RUN_EXISTING_BATCHES=1` to have them run.
- Folders it skips (invalid names such as `Summer 2024`, links out of the root) are named in the tick's skip \
reason, or in the `pixelsift/skipped_folders` tag of the runs it starts. Partitions whose folder is gone are \
named too; `pixelsift batches prune` removes them."""


def _listed(items: list) -> str:
    shown = ", ".join(map(str, items[:_LISTED]))
    return shown + (f" and {len(items) - _LISTED} more" if len(items) > _LISTED else "")


@sensor(job=process_batch_job, minimum_interval_seconds=30, default_status=DefaultSensorStatus.RUNNING,
        description=SENSOR_DESCRIPTION)
def batch_folder_sensor(context: SensorEvaluationContext, settings: PixelsiftSettings) -> SensorResult:
    """See SENSOR_DESCRIPTION, which the UI shows."""
    root = Path(settings.images_root)
    first_tick = context.cursor is None
    seen: dict[str, list[str]] = json.loads(context.cursor) if context.cursor else {}
    keys, skipped = find_batch_folders(root)
    for folder in skipped:
        context.log.warning(f"skipping folder {folder.name} in {root}: {folder.reason}")
    current = {k: [folder_signature(root / k), baseline_signature(Path(settings.baselines_dir), k)] for k in keys}
    known = set(context.instance.get_dynamic_partitions(batch_partitions.name))
    new_keys = [k for k in current if k not in known]
    # Left to `pixelsift batches prune`, not deleted here: a folder gone for a moment (a drive not
    # yet mounted) would otherwise lose its partition and be run again in full when it returns.
    orphans = sorted(known - set(current)) if root.is_dir() else []
    if orphans:
        context.log.warning(f"partitions without a folder in {root}: {_listed(orphans)}; "
                            "remove them with `pixelsift batches prune`")
    runs = []
    # The first tick only takes stock: a run of every folder, unasked, would start with a ~24 GB download.
    to_compare = {} if first_tick and not settings.run_existing_batches else current
    for key, (images, baseline) in to_compare.items():
        before = seen.get(key)
        if isinstance(before, str):  # a cursor from before reference files were watched
            before = [before, baseline]
        run_key = f"{key}:{images}:{baseline}"
        if before is None or before[0] != images:
            runs.append(RunRequest(partition_key=key, run_key=run_key))
        elif before[1] != baseline:
            # The pipeline's results are unchanged: re-score them against the new reference.
            runs.append(RunRequest(partition_key=key, run_key=run_key, asset_selection=EVAL_ASSET_KEYS))
    if skipped:
        # A skip reason is shown only on ticks without runs; a run carries the skipped folders as a tag.
        runs = [run.with_replaced_attrs(tags={**run.tags, SKIPPED_FOLDERS_TAG: _listed(skipped)}) for run in runs]
    return SensorResult(
        run_requests=runs,
        skip_reason=None if runs else _skip_reason(root, first_tick, current, skipped, orphans),
        dynamic_partitions_requests=[batch_partitions.build_add_request(new_keys)] if new_keys else [],
        cursor=json.dumps(current, sort_keys=True),
    )


def _skip_reason(root: Path, first_tick: bool, current: dict, skipped: list[SkippedFolder], orphans: list[str]) -> str:
    if not root.is_dir():
        return f"The images root {root} does not exist: create it and put each batch in a subfolder."
    if first_tick and current:
        parts = [f"First tick: registered the {len(current)} batch folder(s) already in {root} "
                 f"({_listed(list(current))}) without running them. Materialize them from the UI, or set "
                 "PIXELSIFT_RUN_EXISTING_BATCHES=1 before starting to have them run; folders that appear or "
                 "change from now on run."]
    else:
        parts = [f"No new or changed batch folders in {root}."]
    if skipped:
        parts.append(f"Skipped folders: {_listed(skipped)}.")
    if orphans:
        parts.append(f"Partitions without a folder: {_listed(orphans)} (remove them with `pixelsift batches prune`).")
    return " ".join(parts)

"""Watching the images root: a new subfolder becomes a batch partition, a changed one is re-run."""

import hashlib
import json
from pathlib import Path

from dagster import DefaultSensorStatus, RunRequest, SensorEvaluationContext, SensorResult, sensor

from assets.image_files import list_batch_files
from dagster_project.jobs import process_batch_job
from dagster_project.partitions import InvalidBatchKey, batch_partitions, validate_batch_key
from resources.settings import PixelsiftSettings


def folder_signature(folder: Path) -> str:
    """Changes when a file is added, removed, renamed or rewritten (size or mtime)."""
    digest = hashlib.sha256()
    for path in list_batch_files(folder):
        stat = path.stat()
        digest.update(f"{path.relative_to(folder).as_posix()}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def scan_batches(root: Path, log=None) -> dict[str, str]:
    """Valid batch folders under ``root`` with their signatures; invalid names are skipped with a warning."""
    found: dict[str, str] = {}
    if not root.is_dir():
        return found
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        try:
            key = validate_batch_key(folder.name)
        except InvalidBatchKey as exc:
            if log:
                log.warning(f"skipping folder {folder}: {exc}")
            continue
        found[key] = folder_signature(folder)
    return found


@sensor(job=process_batch_job, minimum_interval_seconds=30, default_status=DefaultSensorStatus.RUNNING)
def batch_folder_sensor(context: SensorEvaluationContext, settings: PixelsiftSettings) -> SensorResult:
    """Registers each new subfolder of the images root as a batch and runs it; re-runs a batch whose files changed."""
    seen: dict[str, str] = json.loads(context.cursor) if context.cursor else {}
    current = scan_batches(Path(settings.images_root), context.log)
    known = set(context.instance.get_dynamic_partitions(batch_partitions.name))
    new_keys = [k for k in current if k not in known]
    changed = [k for k, sig in current.items() if seen.get(k) != sig]
    return SensorResult(
        run_requests=[RunRequest(partition_key=k, run_key=f"{k}:{current[k]}") for k in changed],
        dynamic_partitions_requests=[batch_partitions.build_add_request(new_keys)] if new_keys else [],
        cursor=json.dumps(current, sort_keys=True),
    )
